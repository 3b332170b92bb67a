"""Trusted tests of the assignment ``nms`` (IoU, box formats, NMS, batched NMS, Soft-NMS).

Instructor-only: this module runs in the grader's process (see :mod:`grading.trusted`) and is never
shipped. Every input and every expected value is made here, with ``torchvision.ops`` or with the
plain-Python Soft-NMS reference below; the student's functions are only *called* through the
:class:`~grading.trusted.Student` proxy. The random boxes come from :mod:`utils.cases`, whose
generators the notebook's setup cell uses too (the visible tests), so that a case here and the same case
in the notebook see the same boxes, but nothing of the kernel is used to build a case.

Inputs that must not be modified are checked with a probe that calls the student's function in the
kernel and sends back its arguments as they are after the call (:func:`_call_keeping_inputs`); the
comparison with the originals happens here.

One bug, one function's points: each test runs the student's function on torchvision's version of the
functions it builds on (``student.using``): ``box_area`` in the ``box_iou`` test, ``box_iou`` in the NMS and
Soft-NMS tests, ``nms`` in the ``batched_nms`` test.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torchvision
from torch import Tensor

from grading.trusted import KernelFailure, Student, grades
from utils.cases import NMS_FORBIDDEN, clustered_boxes, random_boxes, random_scores
from utils.testing import assert_close

# The library functions the assignment re-implements (utils.cases.NMS_FORBIDDEN, the list the notebook's tests
# block too), blocked in every call of the student's code: the Python functions and the private helpers they are
# built from, and the NMS operator however it is reached (torch.ops.torchvision.nms, batched_nms, a captured
# reference) by its dispatcher name.
FORBID = dict(
    ops=["torchvision::nms"],
    python=[path for path in NMS_FORBIDDEN if not path.startswith("torch.ops.")],
)

INT64_EMPTY = torch.zeros(0, dtype=torch.int64)


# ----------------------------------------------------------------------------- trusted reference
def soft_nms_reference(
    boxes: Tensor, scores: Tensor, iou_threshold: float, sigma: float, score_threshold: float, method: str
) -> tuple[Tensor, Tensor]:
    """Soft-NMS as a plain Python loop over Python floats (IoUs from ``torchvision.ops.box_iou``).

    Args:
        boxes: Tensor[N, 4] of (x1, y1, x2, y2).
        scores: Tensor[N].
        iou_threshold, sigma, score_threshold, method: as in the notebook's ``soft_nms``.

    Returns:
        keep Tensor[K] int64 (in the order kept) and new_scores Tensor[K] with the dtype of scores.
    """
    iou = torchvision.ops.box_iou(boxes, boxes).nan_to_num(0.0).tolist()
    current = scores.tolist()
    left = [i for i in range(len(current)) if current[i] >= score_threshold]
    keep: list[int] = []
    kept: list[float] = []
    while left:
        best = max(left, key=lambda i: (current[i], -i))
        keep.append(best)
        kept.append(current[best])
        left.remove(best)
        for i in left:
            u = iou[best][i]
            if method == "gaussian":
                current[i] *= math.exp(-u * u / sigma)
            elif u > iou_threshold:
                current[i] *= 1 - u
        left = [i for i in left if current[i] >= score_threshold]
    return torch.tensor(keep, dtype=torch.int64), torch.tensor(kept, dtype=scores.dtype)


# ----------------------------------------------------------------------------- calling the student
_KEEPING_INPUTS = "result = ({name}(*args, **kwargs), list(args), dict(kwargs))"
_RAISES = """
try:
    {name}(*args, **kwargs)
    result = None
except Exception as error:
    result = [klass.__name__ for klass in type(error).__mro__]
"""
_FRESH_RESULT = """
out = {name}(*args, **kwargs)
out += 1.0
result = args[0]
"""


def _call_keeping_inputs(
    student: Student, name: str, *args: Any, **kwargs: Any
) -> tuple[Any, list[Any], dict[str, Any]]:
    """Call the student's ``name(*args, **kwargs)`` in the kernel; returns its result and the arguments
    *as they are after the call* (to check that the function did not write into its inputs)."""
    value = student.exec(_KEEPING_INPUTS.format(name=name), args=list(args), kwargs=dict(kwargs))
    if not (
        isinstance(value, tuple)
        and len(value) == 3
        and isinstance(value[1], list)
        and len(value[1]) == len(args)
        and isinstance(value[2], dict)
    ):
        raise KernelFailure(f"{name}: the kernel's answer is not the result of the call")
    return value[0], value[1], value[2]


def _raised(student: Student, name: str, *args: Any, **kwargs: Any) -> list[str]:
    """The class names (MRO) of the exception ``name(*args, **kwargs)`` raised; [] when it returned."""
    value = student.exec(_RAISES.format(name=name), args=list(args), kwargs=dict(kwargs))
    if value is None:
        return []
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise KernelFailure(f"{name}: the kernel's answer is not an exception's class names")
    return value


def _unchanged(name: str, after: Tensor, before: Tensor) -> None:
    """``after`` must equal ``before`` to the last bit (an input the function must not modify)."""
    if before.is_floating_point():
        assert_close(name, after, before, rtol=0, atol=0)
    else:
        assert_close(name, after, before)


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    """A result that must be a pair ``(keep, new_scores)``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        kind = type(value).__name__ + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
        raise AssertionError(f"{name}: expected a pair (keep, new_scores), got {kind}")
    return value[0], value[1]


# ----------------------------------------------------------------------------- 1 box geometry
@grades("test_box_area")
def test_box_area(student: Student) -> None:
    """box_area: three hand-made boxes, random float32 / float64 boxes, no boxes."""
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 4.0, 5.0], [10.0, 10.0, 10.0, 30.0]])
    assert_close(
        "box_area of three boxes", student.call("box_area", boxes), torch.tensor([2.0 * 3.0, 3.0 * 4.0, 0.0 * 20.0])
    )
    for seed, dtype in [(1, torch.float32), (2, torch.float64)]:
        boxes = random_boxes(37, seed, dtype)
        assert_close(
            f"box_area of 37 random {dtype} boxes",
            student.call("box_area", boxes),
            torchvision.ops.box_area(boxes),
            rtol=1e-6,
        )
    assert_close("box_area of no boxes", student.call("box_area", torch.zeros(0, 4)), torch.zeros(0))
    # every dtype torchvision accepts, with areas that overflow int8 and round in float16
    grid = torch.tensor([[0, 0, 20, 30], [5, 7, 100, 90], [10, 10, 10, 40], [3, 1, 120, 127]])
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16):
        boxes = grid.to(dtype)
        assert_close(
            f"box_area of {dtype} boxes (computed and returned in {torchvision.ops.box_area(boxes).dtype})",
            student.call("box_area", boxes),
            torchvision.ops.box_area(boxes),
        )


@grades("test_box_iou")
def test_box_iou(student: Student) -> None:
    """box_iou (on torchvision's box_area): hand-made pairs, boxes apart or touching, random sets (inputs
    unchanged), zero-area boxes, every dtype torchvision accepts."""
    with student.using(box_area="torchvision.ops.box_area"):
        _box_iou_cases(student)


def _box_iou_cases(student: Student) -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [2.0, 2.0, 4.0, 4.0]])
    assert_close(
        "box_iou of one box against four",
        student.call("box_iou", a, b),
        torch.tensor([[1.0, 50 / 150, 0.0, 4 / 100]]),
        rtol=1e-6,
    )
    boxes1, boxes2 = random_boxes(6, seed=0), random_boxes(9, seed=1)
    assert_close(
        "box_iou of 6 x 9 random boxes, vs torchvision.ops.box_iou",
        student.call("box_iou", boxes1, boxes2),
        torchvision.ops.box_iou(boxes1, boxes2),
        rtol=1e-6,
        atol=1e-7,
    )
    # apart in both directions, apart in one direction, touching edges: all 0
    far = torch.tensor(
        [[20.0, 20.0, 30.0, 30.0], [20.0, 0.0, 30.0, 10.0], [-15.0, -15.0, -5.0, -5.0], [10.0, 0.0, 20.0, 10.0]]
    )
    assert_close(
        "box_iou of boxes that do not overlap (apart in x and y, in x only, touching)",
        student.call("box_iou", a, far),
        torch.zeros(1, 4),
    )
    for n, m, seed, dtype, canvas in [
        (50, 30, 3, torch.float64, 100.0),
        (200, 300, 4, torch.float32, 500.0),
        (1, 40, 5, torch.float32, 50.0),
        (40, 1, 6, torch.float64, 50.0),
    ]:
        boxes1, boxes2 = random_boxes(n, seed, dtype, canvas), random_boxes(m, seed + 1, dtype, canvas)
        got, (after1, after2), _ = _call_keeping_inputs(student, "box_iou", boxes1, boxes2)
        assert_close(
            f"box_iou of {n} x {m} random {dtype} boxes",
            got,
            torchvision.ops.box_iou(boxes1, boxes2),
            rtol=1e-6,
            atol=1e-7,
        )
        _unchanged("box_iou must not modify boxes1", after1, boxes1)
        _unchanged("box_iou must not modify boxes2", after2, boxes2)
    zero_area = torch.tensor([[5.0, 5.0, 5.0, 5.0], [2.0, 0.0, 2.0, 8.0]])
    assert_close(
        "box_iou of zero-area boxes against a normal box", student.call("box_iou", zero_area, a), torch.zeros(2, 1)
    )
    assert_close(
        "box_iou against no boxes", student.call("box_iou", random_boxes(5, 7), torch.zeros(0, 4)), torch.zeros(5, 0)
    )
    grid1 = torch.tensor([[0, 0, 20, 30], [5, 7, 100, 90], [3, 1, 120, 127]])
    grid2 = torch.tensor([[10, 10, 60, 40], [0, 0, 20, 30], [50, 50, 127, 127], [1, 2, 3, 4]])
    # not uint8: torchvision subtracts the corners before it upcasts, so disjoint uint8 boxes wrap around
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16):
        b1, b2 = grid1.to(dtype), grid2.to(dtype)
        expected = torchvision.ops.box_iou(b1, b2)
        assert_close(
            f"box_iou of {dtype} boxes (computed in a wider type, returned as {expected.dtype})",
            student.call("box_iou", b1, b2),
            expected,
            rtol=1e-6,
        )


@grades("test_box_convert")
def test_box_convert(student: Student) -> None:
    """box_convert: one box, all nine conversions of random boxes (input unchanged), a new tensor for
    in_fmt == out_fmt, a round trip, no boxes, ValueError for an unknown format."""
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # 20 wide, 40 tall, centred at (20, 40)
    xywh = student.call("box_convert", box, "xyxy", "xywh")
    cxcywh = student.call("box_convert", box, "xyxy", "cxcywh")
    assert_close("box_convert xyxy -> xywh", xywh, torch.tensor([[10.0, 20.0, 20.0, 40.0]]))
    assert_close("box_convert xyxy -> cxcywh", cxcywh, torch.tensor([[20.0, 40.0, 20.0, 40.0]]))
    back = student.call("box_convert", torch.tensor([[20.0, 40.0, 20.0, 40.0]]), "cxcywh", "xyxy")  # box in cxcywh
    assert_close("box_convert cxcywh -> xyxy", back, box)
    formats = ("xyxy", "xywh", "cxcywh")
    for seed, dtype in [(11, torch.float32), (12, torch.float64)]:
        boxes = random_boxes(25, seed, dtype)
        for in_fmt in formats:
            for out_fmt in formats:
                got, (after, _, _), _ = _call_keeping_inputs(student, "box_convert", boxes, in_fmt, out_fmt)
                assert_close(
                    f"box_convert {in_fmt} -> {out_fmt}, 25 random {dtype} boxes",
                    got,
                    torchvision.ops.box_convert(boxes, in_fmt, out_fmt),
                    rtol=1e-6,
                    atol=1e-4,
                )
                _unchanged(f"box_convert {in_fmt} -> {out_fmt} must not modify its input", after, boxes)
    # the result of a same-format conversion is changed in place in the kernel; the input must not follow
    box_after = student.exec(_FRESH_RESULT.format(name="box_convert"), args=[box, "xywh", "xywh"], kwargs={})
    assert_close(
        "box_convert with in_fmt == out_fmt must return a new tensor, not the input",
        box_after,
        torch.tensor([[10.0, 20.0, 30.0, 60.0]]),
    )
    # the round trip xyxy -> cxcywh -> xywh, from the (checked) cxcywh of box, made here
    round_trip = student.call("box_convert", torchvision.ops.box_convert(box, "xyxy", "cxcywh"), "cxcywh", "xywh")
    assert_close("box_convert xyxy -> cxcywh -> xywh", round_trip, torch.tensor([[10.0, 20.0, 20.0, 40.0]]))
    assert_close(
        "box_convert of no boxes", student.call("box_convert", torch.zeros(0, 4), "xyxy", "cxcywh"), torch.zeros(0, 4)
    )
    raised = _raised(student, "box_convert", box, "xyxy", "yxyx")
    if "ValueError" not in raised:
        got = f"it raised {raised[0]}" if raised else "it returned a result"
        raise AssertionError(f"box_convert(boxes, 'xyxy', 'yxyx'): expected a ValueError (unknown format), but {got}")


# ----------------------------------------------------------------------------- 2 greedy NMS
@grades("test_nms")
def test_nms(student: Student) -> None:
    """nms (on torchvision's box_iou) against torchvision.ops.nms: the lecture's four boxes, random boxes of
    many sizes, thresholds (0 and 1 included) and both float dtypes."""
    with student.using(box_iou="torchvision.ops.box_iou"):
        _nms_cases(student)


def _nms_cases(student: Student) -> None:
    boxes = torch.tensor(
        [[20.0, 30.0, 90.0, 110.0], [28.0, 29.0, 93.0, 117.0], [82.0, 40.0, 150.0, 120.0], [78.0, 33.0, 156.0, 130.0]]
    )
    scores = torch.tensor([0.90, 0.80, 0.75, 0.70])
    assert_close(
        "nms on the lecture's four dog boxes, threshold 0.7 (keeps blue and purple)",
        student.call("nms", boxes, scores, 0.7),
        torchvision.ops.nms(boxes, scores, 0.7),
    )
    boxes, scores = random_boxes(300, seed=20), random_scores(300, seed=20)
    assert_close(
        "nms of 300 random boxes, threshold 0.5, vs torchvision.ops.nms",
        student.call("nms", boxes, scores, 0.5),
        torchvision.ops.nms(boxes, scores, 0.5),
    )
    for n, seed, threshold, dtype, canvas in [
        (1, 21, 0.5, torch.float32, 100.0),
        (2, 22, 0.5, torch.float32, 10.0),
        (50, 23, 0.3, torch.float32, 100.0),
        (257, 24, 0.5, torch.float32, 100.0),
        (700, 25, 0.7, torch.float32, 200.0),
        (400, 26, 0.0, torch.float32, 300.0),
        (300, 27, 1.0, torch.float32, 50.0),
        (600, 28, 0.5, torch.float64, 150.0),
        (1000, 29, 0.4, torch.float32, 100.0),
    ]:
        boxes, scores = random_boxes(n, seed, dtype, canvas), random_scores(n, seed, dtype)
        assert_close(
            f"nms of {n} random {dtype} boxes, threshold {threshold}",
            student.call("nms", boxes, scores, threshold),
            torchvision.ops.nms(boxes, scores, threshold),
        )


@grades("test_nms_edge_cases")
def test_nms_edge_cases(student: Student) -> None:
    """nms edge cases (on torchvision's box_iou): IoU exactly at the threshold, thresholds float32 cannot
    represent, ties between equal scores, no boxes, identical boxes, zero-area boxes (nan IoU), clustered
    detector-like boxes, float64, inputs unchanged."""
    with student.using(box_iou="torchvision.ops.box_iou"):
        _nms_edge_cases(student)


def _nms_edge_cases(student: Student) -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
    assert_close(
        "nms, IoU exactly 0.5 at threshold 0.5: both kept",
        student.call("nms", boxes, torch.tensor([0.9, 0.8]), 0.5),
        torch.tensor([0, 1]),
    )
    assert_close("nms of no boxes", student.call("nms", torch.zeros(0, 4), torch.zeros(0), 0.5), INT64_EMPTY)
    # integer boxes on a coarse grid: many IoUs hit a (binary-exact) threshold exactly
    g = torch.Generator().manual_seed(30)
    corner = torch.randint(0, 8, (400, 2), generator=g)
    size = torch.randint(1, 6, (400, 2), generator=g)
    grid_boxes = torch.cat([corner, corner + size], dim=1).float()
    grid_scores = random_scores(400, seed=30)
    for threshold in (0.5, 0.25, 0.75):
        assert_close(
            f"nms of 400 integer grid boxes, IoU often exactly {threshold}, threshold {threshold}",
            student.call("nms", grid_boxes, grid_scores, threshold),
            torchvision.ops.nms(grid_boxes, grid_scores, threshold),
        )
    # thresholds that are not binary fractions: the float32 IoU nearest to 1/3 or 0.3 lies above the
    # threshold in float64 (torchvision suppresses) but equals it once the threshold is rounded to float32
    for threshold in (1 / 3, 0.3, 0.6, 0.1, 0.2):
        assert_close(
            f"nms of 400 integer grid boxes, threshold {threshold} (compared in float64)",
            student.call("nms", grid_boxes, grid_scores, threshold),
            torchvision.ops.nms(grid_boxes, grid_scores, threshold),
        )
    # ties: scores on a coarse grid, so many boxes share a score (the lower index comes first)
    tied_scores = (random_scores(400, seed=35) * 4).floor() / 4
    for threshold in (0.5, 1.0):
        assert_close(
            f"nms of 400 grid boxes with only 4 distinct scores (ties: lower index first), threshold {threshold}",
            student.call("nms", grid_boxes, tied_scores, threshold),
            torchvision.ops.nms(grid_boxes, tied_scores, threshold),
        )
    # identical boxes: only the best survives, unless the threshold is 1 (IoU 1 is not > 1)
    same = torch.cat([torch.tensor([[10.0, 10.0, 30.0, 40.0]]).repeat(6, 1), torch.tensor([[50.0, 50.0, 60.0, 60.0]])])
    same_scores = torch.tensor([0.3, 0.9, 0.5, 0.95, 0.1, 0.7, 0.2])
    for threshold in (0.5, 1.0):
        assert_close(
            f"nms of 6 identical boxes and another, threshold {threshold}",
            student.call("nms", same, same_scores, threshold),
            torchvision.ops.nms(same, same_scores, threshold),
        )
    # zero-area boxes: IoU with a normal box is 0, with another zero-area box nan: nothing is suppressed
    degenerate = torch.tensor(
        [
            [5.0, 5.0, 5.0, 5.0],
            [5.0, 5.0, 5.0, 5.0],
            [0.0, 0.0, 10.0, 10.0],
            [2.0, 2.0, 2.0, 8.0],
            [1.0, 1.0, 9.0, 1.0],
            [0.0, 0.0, 10.0, 10.0],
        ]
    )
    degenerate_scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert_close(
        "nms with zero-area boxes (their IoU is 0 or nan: never > threshold)",
        student.call("nms", degenerate, degenerate_scores, 0.5),
        torchvision.ops.nms(degenerate, degenerate_scores, 0.5),
    )
    # clustered boxes, like a detector's output, in float32 and float64
    for n, objects, seed, threshold, dtype in [
        (1500, 40, 31, 0.5, torch.float32),
        (800, 10, 32, 0.7, torch.float64),
        (600, 3, 33, 0.3, torch.float32),
    ]:
        boxes, scores = clustered_boxes(n, objects, seed, dtype), random_scores(n, seed, dtype)
        assert_close(
            f"nms of {n} {dtype} boxes around {objects} objects, threshold {threshold}",
            student.call("nms", boxes, scores, threshold),
            torchvision.ops.nms(boxes, scores, threshold),
        )
    # float64 empty input, and the inputs must not change
    assert_close(
        "nms of no float64 boxes",
        student.call("nms", torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), 0.5),
        INT64_EMPTY,
    )
    boxes, scores = clustered_boxes(300, 5, 34), random_scores(300, 34)
    got, (boxes_after, scores_after, _), _ = _call_keeping_inputs(student, "nms", boxes, scores, 0.5)
    assert_close("nms of 300 boxes around 5 objects, threshold 0.5", got, torchvision.ops.nms(boxes, scores, 0.5))
    _unchanged("nms must not modify boxes", boxes_after, boxes)
    _unchanged("nms must not modify scores", scores_after, scores)


# ----------------------------------------------------------------------------- 3 NMS per category
@grades("test_batched_nms")
def test_batched_nms(student: Student) -> None:
    """batched_nms (on torchvision's nms) against torchvision.ops.batched_nms: both of torchvision's paths
    (offset trick up to 1,000 boxes, loop above), many categories, odd category ids, one category, negative
    coordinates (against the per-category loop), no boxes, inputs unchanged."""
    with student.using(nms="torchvision.ops.nms"):
        _batched_nms_cases(student)


def _batched_nms_cases(student: Student) -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 1.0, 10.0, 11.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    idxs = torch.tensor([0, 1, 0])
    assert_close(
        "batched_nms of three boxes in two categories",
        student.call("batched_nms", boxes, scores, idxs, 0.5),
        torch.tensor([0, 1]),
    )
    boxes, scores = random_boxes(300, seed=40).round(), random_scores(300, seed=40)
    idxs = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(40))
    assert_close(
        "batched_nms of 300 boxes in 5 categories, vs torchvision.ops.batched_nms",
        student.call("batched_nms", boxes, scores, idxs, 0.5),
        torchvision.ops.batched_nms(boxes, scores, idxs, 0.5),
    )
    # non-negative integer coordinates, so that shifted coordinates are exact and both paths agree to the last bit
    for n, categories, seed, threshold, dtype in [
        (600, 50, 41, 0.5, torch.float32),
        (2000, 80, 42, 0.5, torch.float32),
        (900, 200, 43, 0.3, torch.float32),
        (700, 20, 44, 0.7, torch.float64),
        (1, 3, 45, 0.5, torch.float32),
    ]:
        boxes = clustered_boxes(n, max(1, n // 20), seed, dtype, canvas=300.0).round()
        boxes = boxes - boxes.min()
        scores = random_scores(n, seed, dtype)
        idxs = torch.randint(0, categories, (n,), generator=torch.Generator().manual_seed(seed))
        got, (boxes_after, scores_after, idxs_after, _), _ = _call_keeping_inputs(
            student, "batched_nms", boxes, scores, idxs, threshold
        )
        assert_close(
            f"batched_nms of {n} {dtype} boxes in up to {categories} categories, threshold {threshold}",
            got,
            torchvision.ops.batched_nms(boxes, scores, idxs, threshold),
        )
        _unchanged("batched_nms must not modify boxes", boxes_after, boxes)
        _unchanged("batched_nms must not modify scores", scores_after, scores)
        _unchanged("batched_nms must not modify idxs", idxs_after, idxs)
    # category ids that are not 0..C-1, and IoU exactly at the threshold within a category
    odd_boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 5.0],
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 6.0],
            [2.0, 2.0, 4.0, 4.0],
        ]
    )
    odd_scores = torch.tensor([0.9, 0.8, 0.85, 0.7, 0.95])
    odd_idxs = torch.tensor([7, 7, 90, 90, 3])
    assert_close(
        "batched_nms with categories 3, 7, 90 and an IoU of exactly 0.5",
        student.call("batched_nms", odd_boxes, odd_scores, odd_idxs, 0.5),
        torchvision.ops.batched_nms(odd_boxes, odd_scores, odd_idxs, 0.5),
    )
    # one category: the same as nms
    one_boxes, one_scores = clustered_boxes(500, 10, 46), random_scores(500, 46)
    assert_close(
        "batched_nms with a single category equals nms",
        student.call("batched_nms", one_boxes, one_scores, torch.full((500,), 2), 0.5),
        torchvision.ops.nms(one_boxes, one_scores, 0.5),
    )
    # negative coordinates (boxes that stick out of the image on the left and top): the offsets must
    # separate the categories whatever the sign; the reference is torchvision's per-category loop
    for n, categories, seed, shift in [(300, 4, 47, -400.0), (200, 30, 48, -150.0), (150, 3, 49, -1000.0)]:
        boxes = clustered_boxes(n, max(1, n // 15), seed, canvas=300.0).round() + shift
        scores = random_scores(n, seed)
        idxs = torch.randint(0, categories, (n,), generator=torch.Generator().manual_seed(seed))
        assert_close(
            f"batched_nms of {n} boxes with negative coordinates (from {boxes.min().item():g} to "
            f"{boxes.max().item():g}) in {categories} categories",
            student.call("batched_nms", boxes, scores, idxs, 0.5),
            torchvision.ops.boxes._batched_nms_vanilla(boxes, scores, idxs, 0.5),
        )
    assert_close(
        "batched_nms of no boxes",
        student.call("batched_nms", torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5),
        INT64_EMPTY,
    )


# ----------------------------------------------------------------------------- 4 Soft-NMS
def _soft_nms(student: Student, name: str, boxes: Tensor, scores: Tensor, **kwargs: Any) -> tuple[Any, Any]:
    """The student's ``soft_nms(boxes, scores, **kwargs)`` as ``(keep, new_scores)``."""
    return _pair(name, student.call("soft_nms", boxes, scores, **kwargs))


@grades("test_soft_nms")
def test_soft_nms(student: Student) -> None:
    """soft_nms (on torchvision's box_iou): hand-computed Gaussian and linear cases, the score threshold, a
    float64 chain, sigma, random float64 boxes against the plain-Python reference (inputs unchanged), ties,
    zero-area boxes, nothing left."""
    with student.using(box_iou="torchvision.ops.box_iou"):
        _soft_nms_cases(student)


def _soft_nms_cases(student: Student) -> None:
    # two clusters of float32 boxes, worked by hand (the notebook's visible case is another scene). IoUs:
    # (0, 1) = 64/136 = 8/17, (1, 2) = 56/144 = 7/18, (0, 2) = 50/150 = 1/3, (3, 4) = 50/100 = 1/2, 0 across
    scene = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [2.0, 2.0, 12.0, 12.0],
            [5.0, 0.0, 15.0, 10.0],
            [30.0, 30.0, 40.0, 40.0],
            [30.0, 30.0, 40.0, 35.0],
        ]
    )
    values = [0.6, 0.95, 0.7, 0.5, 0.55]
    scene_scores = torch.tensor(values)  # float32 (the setup check below runs in float64)
    # Gaussian, sigma 0.3, w(u) = exp(-u^2 / 0.3) (iou_threshold 0.45 must not matter):
    #   keep 1 (0.95): box 0 -> 0.6 w(8/17) = 0.287, box 2 -> 0.7 w(7/18) = 0.423
    #   keep 4 (0.55): box 3 -> 0.5 w(1/2) = 0.217
    #   keep 2 (0.423): box 0 -> 0.6 w(8/17) w(1/3) = 0.198; then keep 3 (0.217), then 0 (0.198)
    gaussian = [
        0.95,
        0.55,
        0.7 * math.exp(-((7 / 18) ** 2) / 0.3),
        0.5 * math.exp(-((1 / 2) ** 2) / 0.3),
        0.6 * math.exp(-((8 / 17) ** 2 + (1 / 3) ** 2) / 0.3),
    ]
    # linear, N_t = 0.4: 8/17 and 1/2 are above it, 7/18 and 1/3 are not (sigma 0.3 must not matter):
    #   keep 1 (0.95): box 0 -> 0.6 (1 - 8/17) = 0.318, box 2 keeps 0.7; keep 2 (0.7): box 0 keeps 0.318 (IoU 1/3)
    #   keep 4 (0.55): box 3 -> 0.5 (1 - 1/2) = 0.25; then keep 0 (0.318), then 3 (0.25)
    linear = [0.95, 0.7, 0.55, 0.6 * 9 / 17, 0.25]
    for method, iou_threshold, expected_keep, expected_scores in [
        ("gaussian", 0.45, [1, 4, 2, 3, 0], gaussian),
        ("linear", 0.4, [1, 2, 4, 0, 3], linear),
    ]:
        name = f"soft_nms {method}, iou_threshold {iou_threshold}, sigma 0.3, two clusters of five boxes"
        # setup check: the numbers worked by hand are the plain-Python reference's (in float64)
        ref_keep, ref_scores = soft_nms_reference(
            scene.double(), torch.tensor(values, dtype=torch.float64), iou_threshold, 0.3, 0.001, method
        )
        if ref_keep.tolist() != expected_keep or not torch.allclose(
            ref_scores, torch.tensor(expected_scores, dtype=torch.float64), rtol=1e-9, atol=0
        ):
            raise RuntimeError(f"test setup: {name}: the hand-worked numbers disagree with soft_nms_reference")
        keep, new_scores = _soft_nms(
            student, name, scene, scene_scores, iou_threshold=iou_threshold, sigma=0.3, method=method
        )
        assert_close(f"{name}: keep", keep, torch.tensor(expected_keep))
        assert_close(f"{name}: new_scores", new_scores, torch.tensor(expected_scores), rtol=1e-6)
    # the notebook's three boxes (IoU(0, 1) = 1/3, box 2 apart) under other parameters
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # the linear method: IoU 1/3 is above N_t = 0.3 (decay by 2/3) but not above 0.5
    keep, new_scores = _soft_nms(
        student, "soft_nms linear N_t = 0.3", boxes, scores, iou_threshold=0.3, method="linear"
    )
    assert_close("soft_nms linear N_t = 0.3: keep", keep, torch.tensor([0, 2, 1]))
    assert_close(
        "soft_nms linear N_t = 0.3: new_scores", new_scores, torch.tensor([0.9, 0.7, 0.8 * (1 - 1 / 3)]), rtol=1e-6
    )
    keep, new_scores = _soft_nms(
        student, "soft_nms linear N_t = 0.5", boxes, scores, iou_threshold=0.5, method="linear"
    )
    assert_close("soft_nms linear N_t = 0.5: keep", keep, torch.tensor([0, 1, 2]))
    assert_close("soft_nms linear N_t = 0.5: new_scores", new_scores, torch.tensor([0.9, 0.8, 0.7]), rtol=1e-6)
    # the score threshold drops box 1 once its score decayed to 0.64 < 0.65
    keep, new_scores = _soft_nms(
        student, "soft_nms gaussian, score_threshold 0.65", boxes, scores, sigma=0.5, score_threshold=0.65
    )
    assert_close("soft_nms gaussian, score_threshold 0.65: keep", keep, torch.tensor([0, 2]))
    assert_close("soft_nms gaussian, score_threshold 0.65: new_scores", new_scores, torch.tensor([0.9, 0.7]), rtol=1e-6)
    # a chain: box 1 overlaps box 0 and box 2 (IoU 1/3 each), box 0 and box 2 do not overlap: box 1 decays twice
    chain = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [10.0, 0.0, 20.0, 10.0]], dtype=torch.float64)
    chain_scores = torch.tensor([0.9, 0.8, 0.75], dtype=torch.float64)
    w = math.exp(-((1 / 3) ** 2) / 0.5)
    keep, new_scores = _soft_nms(student, "soft_nms gaussian, float64 chain of three", chain, chain_scores, sigma=0.5)
    assert_close("soft_nms gaussian, float64 chain of three: keep", keep, torch.tensor([0, 2, 1]))
    assert_close(
        "soft_nms gaussian, float64 chain of three: new_scores",
        new_scores,
        torch.tensor([0.9, 0.75, 0.8 * w * w], dtype=torch.float64),
        rtol=1e-12,
    )
    keep, new_scores = _soft_nms(
        student, "soft_nms linear, float64 chain of three", chain, chain_scores, iou_threshold=0.3, method="linear"
    )
    assert_close("soft_nms linear, float64 chain of three: keep", keep, torch.tensor([0, 2, 1]))
    assert_close(
        "soft_nms linear, float64 chain of three: new_scores",
        new_scores,
        torch.tensor([0.9, 0.75, 0.8 * (2 / 3) ** 2], dtype=torch.float64),
        rtol=1e-12,
    )
    # the sigma parameter: a narrower Gaussian decays more
    _, new_scores = _soft_nms(student, "soft_nms gaussian sigma 0.1", boxes, scores, sigma=0.1)
    assert_close(
        "soft_nms gaussian sigma 0.1: new_scores",
        new_scores,
        torch.tensor([0.9, 0.7, 0.8 * math.exp(-((1 / 3) ** 2) / 0.1)]),
        rtol=1e-6,
    )
    # random boxes in float64 against the reference loop; the inputs must not change
    for n, seed, method, canvas in [(40, 50, "gaussian", 60.0), (60, 51, "linear", 60.0), (25, 52, "gaussian", 20.0)]:
        boxes_r, scores_r = random_boxes(n, seed, torch.float64, canvas), random_scores(n, seed, torch.float64)
        expected_keep, expected_scores = soft_nms_reference(boxes_r, scores_r, 0.3, 0.5, 0.05, method)
        got, (boxes_after, scores_after), _ = _call_keeping_inputs(
            student, "soft_nms", boxes_r, scores_r, iou_threshold=0.3, sigma=0.5, score_threshold=0.05, method=method
        )
        keep, new_scores = _pair(f"soft_nms {method} of {n} random float64 boxes", got)
        assert_close(f"soft_nms {method} of {n} random float64 boxes: keep", keep, expected_keep)
        assert_close(
            f"soft_nms {method} of {n} random float64 boxes: new_scores", new_scores, expected_scores, rtol=1e-9
        )
        _unchanged("soft_nms must not modify boxes", boxes_after, boxes_r)
        _unchanged("soft_nms must not modify scores", scores_after, scores_r)
    # ties between equal scores (lower index first) and zero-area boxes (IoU nan counts as 0)
    tie_boxes = torch.tensor(
        [[0.0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 5, 5], [5, 5, 5, 5], [1, 0, 11, 10], [40, 40, 50, 45]],
        dtype=torch.float64,
    )
    tie_scores = torch.tensor([0.5, 0.9, 0.9, 0.7, 0.9, 0.5], dtype=torch.float64)
    for method in ("gaussian", "linear"):
        expected_keep, expected_scores = soft_nms_reference(tie_boxes, tie_scores, 0.3, 0.5, 0.05, method)
        keep, new_scores = _soft_nms(
            student,
            f"soft_nms {method}, ties and zero-area boxes",
            tie_boxes,
            tie_scores,
            method=method,
            iou_threshold=0.3,
            sigma=0.5,
            score_threshold=0.05,
        )
        assert_close(
            f"soft_nms {method}, equal scores (lower index first) and zero-area boxes: keep", keep, expected_keep
        )
        assert_close(
            f"soft_nms {method}, equal scores and zero-area boxes: new_scores", new_scores, expected_scores, rtol=1e-12
        )
    # nothing left: no boxes, or every score below the threshold
    keep, new_scores = _soft_nms(student, "soft_nms of no boxes", torch.zeros(0, 4), torch.zeros(0))
    assert_close("soft_nms of no boxes: keep", keep, INT64_EMPTY)
    assert_close("soft_nms of no boxes: new_scores", new_scores, torch.zeros(0))
    keep, _ = _soft_nms(student, "soft_nms with every score below score_threshold", boxes, scores, score_threshold=0.95)
    assert_close("soft_nms with every score below score_threshold: keep", keep, INT64_EMPTY)
