"""Trusted tests of the ``mean_average_precision`` assignment (instructor-only, never shipped).

Every test builds its scenes here, in the grader's process, with the same generators, seeds and
shapes as the notebook's provided cell (:func:`utils.cases.random_targets` and
:func:`utils.cases.simulate_detections`, the functions the notebook calls), takes its expected values from
the official ``pycocotools`` evaluation (:func:`utils.detection.coco_evaluate`,
:func:`utils.detection.coco_matches`, run here) or from small references written below, and calls the
student's functions through the :class:`~grading.trusted.Student` proxy with ``pycocotools`` and
``sklearn.metrics`` blocked (:data:`FORBID`).

The student's functions are called through one fixed probe (:data:`_PLAIN_CALL`) that turns what
they return into built-in data while the grader's guards are still active: tensors and arrays into
flat lists (rebuilt here), NumPy scalars and ``float``/``int`` subclasses into Python numbers, NumPy
integer dict keys into ``int``, any other object into its type name. So no student code runs after
the guarded window (a tensor subclass or a patched ``Tensor.clone`` cannot compute anything while the
agent encodes the answer), an ``np.float64`` AP is accepted as the notebook's tests accepted it (the
agent alone cannot send it: it is a ``float`` subclass that ``weights_only`` loading refuses), and
every value is judged here. (Threads, processes and profiler changes during a graded call are refused
by the agent itself, :mod:`grading.agent`.)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor

from grading.trusted import ForbiddenUse, Student, StudentError, grades
from utils.cases import MAP_FORBIDDEN, make_scores_distinct, random_targets, simulate_detections
from utils.detection import coco_evaluate, coco_matches
from utils.testing import assert_close  # names the failing case, reports expected vs got

Preds = list[dict[str, Tensor]]
Targets = list[dict[str, Tensor]]

# blocked in every call of a student's function: utils.cases.MAP_FORBIDDEN, the list the notebook's tests block too
# (pycocotools' methods and classes, the course's own bridge to pycocotools, the sklearn shortcuts)
FORBID = dict(python=list(MAP_FORBIDDEN))

# One bug, one function's points: the tests of mean_average_precision run it on the pycocotools-based steps
# of utils.detection (public: the course ships them) instead of the student's three functions above.
TRUSTED_STEPS = dict(
    match_detections="utils.detection.coco_matches",
    precision_recall="utils.detection.coco_precision_recall",
    average_precision="utils.detection.coco_average_precision",
)

# Runs in the kernel: calls ``_name(*_args, **_kwargs)`` and converts its result to built-in data (see the
# module docstring). Decides nothing.
_PLAIN_CALL = """
import numpy as _np, torch as _torch
if _name not in globals():
    raise NameError(f"{_name} is not defined: run the cell that defines it")

def _plain(value, depth=0):
    if depth > 32:
        raise ValueError("the result is nested too deeply")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, _torch.Tensor):
        t = value.detach()
        flat = _plain(t.reshape(-1).tolist(), depth + 1)
        return (_mark, str(t.dtype).replace("torch.", ""), [int(n) for n in t.shape], flat)
    if isinstance(value, _np.ndarray):
        flat = _plain(value.reshape(-1).tolist(), depth + 1)
        return (_mark + "nd", str(value.dtype), [int(n) for n in value.shape], flat)
    if isinstance(value, _np.generic):
        return _plain(value.item(), depth + 1)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        out = {}
        for k, v in list(value.items()):
            key = _plain(k, depth + 1)
            out[key if isinstance(key, (int, str)) else f"{type(k).__name__}({k!r})"[:80]] = _plain(v, depth + 1)
        return out
    return (_mark + "obj", str(type(value).__name__)[:100])

result = {"value": _plain(globals()[_name](*_args, **_kwargs))}
"""

_DTYPES = {
    name: getattr(torch, name)
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")
}


class Opaque:
    """Stands for an object the student's function returned that is not data (only its type name came back)."""


def _opaque(type_name: Any) -> Opaque:
    return type(str(type_name)[:100] or "object", (Opaque,), {})()


def _rebuild(value: Any, mark: str) -> Any:
    """The inverse of the probe's ``_plain``: marked tuples back to tensors / arrays, the rest as it is."""
    if isinstance(value, tuple) and len(value) >= 2 and isinstance(value[0], str) and value[0].startswith(mark):
        kind = value[0][len(mark) :]
        if kind == "obj":
            return _opaque(value[1])
        try:
            _, dtype, shape, flat = value
            if kind == "":
                return torch.tensor(flat, dtype=_DTYPES[dtype]).reshape([int(n) for n in shape])
            if kind == "nd":
                return np.array(flat, dtype=np.dtype(str(dtype))).reshape([int(n) for n in shape])
        except Exception:  # noqa: BLE001 - malformed data: whatever it was, it is no tensor
            pass
        return _opaque(f"Tensor of dtype {value[1]}" if kind == "" else "ndarray")
    if isinstance(value, list):
        return [_rebuild(v, mark) for v in value]
    if isinstance(value, tuple):
        return tuple(_rebuild(v, mark) for v in value)
    if isinstance(value, dict):
        return {k: _rebuild(v, mark) for k, v in value.items()}
    return value


def _shape(value: Any) -> str:
    """``Tensor[37, 4] float32``, ``list of 6 dict``, ``0.5``: what an argument is, for messages (no values)."""
    if isinstance(value, Tensor):
        return f"Tensor{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, (list, tuple)):
        kinds = {type(v).__name__ for v in value}
        return f"{type(value).__name__} of {len(value)} {kinds.pop() if len(kinds) == 1 else 'items'}"
    return repr(value)[:40]


def call(student: Student, name: str, *args: Any, **kwargs: Any) -> Any:
    """``student.call(name, *args, **kwargs)`` through :data:`_PLAIN_CALL`: the result as data, errors
    naming the function and its arguments' shapes."""
    label = f"{name}({', '.join([_shape(a) for a in args] + [f'{k}={_shape(v)}' for k, v in kwargs.items()])})"
    mark = f"__dlcv_{uuid.uuid4().hex}__"
    try:
        answer = student.exec(_PLAIN_CALL, _name=name, _args=list(args), _kwargs=dict(kwargs), _mark=mark)
    except (StudentError, ForbiddenUse) as exc:
        message = str(exc)
        if message.startswith("your code"):
            message = label + message[len("your code") :]
        raise type(exc)(message) from None
    if not isinstance(answer, dict) or set(answer) != {"value"}:
        raise AssertionError(f"{label}: the kernel's answer was tampered with")
    return _rebuild(answer["value"], mark)


def check_against_coco(
    student: Student, name: str, preds: Preds, targets: Targets, iou_thresholds: Sequence[float] | None = None
) -> dict[str, Any]:
    """The notebook's ``check_against_coco``: the student's ``mean_average_precision`` against pycocotools
    (``map``, ``map_50``, ``map_75`` and every entry of ``ap_per_class`` to 1e-6). Returns the student's dict."""
    expected = coco_evaluate(preds, targets, iou_thresholds=iou_thresholds)
    kwargs = {} if iou_thresholds is None else {"iou_thresholds": list(iou_thresholds)}
    got = call(student, "mean_average_precision", preds, targets, **kwargs)
    if not isinstance(got, dict) or not {"map", "map_50", "map_75", "ap_per_class"} <= set(got):
        shown = sorted(map(str, got)) if isinstance(got, dict) else type(got).__name__
        raise AssertionError(f"{name}: expected a dict with keys map, map_50, map_75, ap_per_class; got {shown}")
    for key in ("map", "map_50", "map_75"):
        assert_close(f"{name}: {key}", got[key], expected[key], rtol=0, atol=1e-6)
    per_class = got["ap_per_class"]
    if not isinstance(per_class, dict):
        raise AssertionError(
            f"{name}: ap_per_class should be a dict {{label (int): AP}}, got {type(per_class).__name__}"
        )
    if set(per_class) != set(expected["ap_per_class"]):
        raise AssertionError(
            f"{name}: ap_per_class has classes {sorted(per_class, key=repr)}, "
            f"expected {sorted(expected['ap_per_class'])} (the classes with ground truth)"
        )
    for c, value in expected["ap_per_class"].items():
        assert_close(f"{name}: ap_per_class[{c}]", per_class[c], value, rtol=0, atol=1e-6)
    return got


# ----------------------------------------------------------------------------- match_detections
def strip(*xs: Sequence[float]) -> Tensor:
    """Boxes Tensor[K, 4] spanning y in [0, 10], one per (x1, x2): IoU is the overlap of the x-intervals."""
    return torch.tensor([[x1, 0.0, x2, 10.0] for x1, x2 in xs])


@grades("test_match_detections")
def test_match_detections(student: Student) -> None:
    gt = strip((3, 13), (0, 10), (30, 40), (60, 70), (100, 110), (103, 113))
    pred = strip((1, 11), (0, 10), (30, 35), (31, 41), (80, 90), (105, 115), (103, 113))
    scores = torch.tensor([0.80, 0.90, 0.70, 0.60, 0.95, 0.50, 0.55])
    expected = torch.tensor([True, True, True, False, False, False, True])
    assert_close("match_detections, strip scene vs pycocotools", expected, coco_matches(pred, scores, gt, 0.5))
    got = call(student, "match_detections", pred, scores, gt, 0.5)
    assert_close("match_detections, crowded strip scene at IoU 0.5", got, expected)
    # at 0.75 the box with IoU 0.5 misses, so GT2 is still free for the 0.60 box (IoU 0.82)
    expected_75 = torch.tensor([False, True, False, True, False, False, True])
    assert_close(
        "match_detections, same scene at IoU 0.75",
        call(student, "match_detections", pred, scores, gt, 0.75),
        expected_75,
    )
    got = call(student, "match_detections", pred, scores, gt[:0], 0.5)
    assert_close(
        "match_detections, image without ground truth: all false positives", got, torch.zeros(7, dtype=torch.bool)
    )
    assert_close(
        "match_detections, no detections",
        call(student, "match_detections", pred[:0], scores[:0], gt, 0.5),
        torch.zeros(0, dtype=torch.bool),
    )
    for seed in range(6):
        target = random_targets(1, num_classes=1, seed=100 + seed, max_objects=8, crowded=True)
        det = simulate_detections(
            target, num_classes=1, seed=200 + seed, box_noise=0.15, duplicates=2.0, label_noise=0.0
        )[0]
        for threshold in (0.5, 0.65, 0.8):
            got = call(student, "match_detections", det["boxes"], det["scores"], target[0]["boxes"], threshold)
            assert_close(
                f"match_detections, crowded random scene {seed}, {len(det['boxes'])} detections, "
                f"IoU {threshold} (vs pycocotools)",
                got,
                coco_matches(det["boxes"], det["scores"], target[0]["boxes"], threshold),
            )


# ----------------------------------------------------------------------------- precision_recall
def reference_precision_recall(tp: np.ndarray, scores: np.ndarray, num_gt: int) -> dict[str, Tensor]:
    """Precision and recall (float64 Tensor[D]) after each detection, ranked by score with a stable sort."""
    order = np.argsort(-scores, kind="mergesort")
    tp_cum, fp_cum = np.cumsum(tp[order]), np.cumsum(~tp[order])
    return {"precision": torch.from_numpy(tp_cum / (tp_cum + fp_cum)), "recall": torch.from_numpy(tp_cum / num_gt)}


def check_precision_recall(
    student: Student, name: str, tp: Tensor, scores: Tensor, num_gt: int, precision: Tensor, recall: Tensor
) -> None:
    """The student's ``precision_recall(tp, scores, num_gt)`` against (precision, recall), rtol 1e-6."""
    got = call(student, "precision_recall", tp, scores, num_gt)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise AssertionError(
            f"{name}: expected a pair (precision, recall), got {type(got).__name__}"
            + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
        )
    assert_close(f"{name}: precision", got[0], precision, rtol=1e-6, check_dtype=False)
    assert_close(f"{name}: recall", got[1], recall, rtol=1e-6, check_dtype=False)


@grades("test_precision_recall")
def test_precision_recall(student: Student) -> None:
    f64 = torch.float64
    check_precision_recall(
        student,
        "precision_recall, 7 detections, 4 objects",
        torch.tensor([True, True, False, False, False, True, True]),
        torch.tensor([0.30, 0.95, 0.60, 0.90, 0.40, 0.80, 0.70]),
        4,
        torch.tensor([1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 3 / 6, 4 / 7], dtype=f64),
        torch.tensor([1 / 4, 1 / 4, 2 / 4, 3 / 4, 3 / 4, 3 / 4, 4 / 4], dtype=f64),
    )
    # a missed object (recall stops at 2/3) and the first detection a false positive
    check_precision_recall(
        student,
        "precision_recall, FP first, 3 objects",
        torch.tensor([True, False, False, True]),
        torch.tensor([0.2, 0.9, 0.1, 0.5]),
        3,
        torch.tensor([0, 1 / 2, 2 / 3, 2 / 4], dtype=f64),
        torch.tensor([0, 1 / 3, 2 / 3, 2 / 3], dtype=f64),
    )
    # equal scores keep their input order (stable ranking, as pycocotools does)
    tp, scores = torch.tensor([False, True, True, False]), torch.tensor([0.5, 0.5, 0.9, 0.5])
    got = call(student, "precision_recall", tp, scores, 2)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise AssertionError(
            "precision_recall, tied scores keep input order: expected a pair (precision, recall), "
            f"got {type(got).__name__}"
        )
    assert_close(
        "precision_recall, tied scores keep input order: precision",
        got[0],
        torch.tensor([1, 1 / 2, 2 / 3, 2 / 4], dtype=f64),
        rtol=1e-6,
        check_dtype=False,
    )
    # 300 random detections against a NumPy reference
    rng = np.random.default_rng(7)
    tp_np, scores_np = rng.random(300) < 0.4, rng.permutation(300).astype(np.float32) / 300
    ref = reference_precision_recall(tp_np, scores_np, 150)
    check_precision_recall(
        student,
        "precision_recall, 300 random detections",
        torch.from_numpy(tp_np),
        torch.from_numpy(scores_np),
        150,
        ref["precision"],
        ref["recall"],
    )


# ----------------------------------------------------------------------------- average_precision
def reference_coco101(precision: np.ndarray, recall: np.ndarray) -> float:
    """pycocotools' ``accumulate()``: the envelope, sampled at ``np.linspace(0, 1, 101)`` (first index with
    recall >= r, 0 beyond the curve), averaged."""
    pr = precision.tolist()
    for i in range(len(pr) - 1, 0, -1):
        pr[i - 1] = max(pr[i - 1], pr[i])
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([pr[i] if i < len(pr) else 0.0 for i in idx]))


def reference_voc_all(precision: np.ndarray, recall: np.ndarray) -> float:
    """The VOC devkit (2010+): the envelope, summed where the recall changes."""
    mrec, mpre = np.concatenate([[0.0], recall, [1.0]]), np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


@grades("test_average_precision")
def test_average_precision(student: Student) -> None:
    f64 = torch.float64
    # the curve of test_precision_recall. envelope: 1 up to recall 1/4, 3/4 up to 3/4, 4/7 up to 1
    P = torch.tensor([1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 3 / 6, 4 / 7], dtype=f64)
    R = torch.tensor([1 / 4, 1 / 4, 2 / 4, 3 / 4, 3 / 4, 3 / 4, 4 / 4], dtype=f64)
    got = {m: call(student, "average_precision", P, R, m) for m in ("voc_all", "voc11", "coco101")}
    assert_close("average_precision voc_all: 1/4 * 1 + 1/2 * 3/4 + 1/4 * 4/7", got["voc_all"], 43 / 56)
    assert_close("average_precision voc11: (3 * 1 + 5 * 3/4 + 3 * 4/7) / 11", got["voc11"], (3 + 15 / 4 + 12 / 7) / 11)
    assert_close(
        "average_precision coco101: (26 * 1 + 50 * 3/4 + 25 * 4/7) / 101", got["coco101"], (26 + 75 / 2 + 100 / 7) / 101
    )
    # FP first and recall stopping at 2/3 (3 objects): envelope 2/3 up to recall 2/3, nothing beyond
    P = torch.tensor([0, 1 / 2, 2 / 3, 2 / 4, 2 / 5], dtype=f64)
    R = torch.tensor([0, 1 / 3, 2 / 3, 2 / 3, 2 / 3], dtype=f64)
    got = {m: call(student, "average_precision", P, R, m) for m in ("voc_all", "voc11", "coco101")}
    assert_close("average_precision voc_all, curve stopping at recall 2/3", got["voc_all"], 4 / 9)
    assert_close("average_precision voc11, curve stopping at recall 2/3", got["voc11"], 7 * (2 / 3) / 11)
    assert_close(
        "average_precision coco101, curve stopping at recall 2/3 (0 beyond)", got["coco101"], 67 * (2 / 3) / 101
    )
    # a perfect ranking, and false positives after the last true positive, do not cost anything
    P = torch.tensor([1, 1, 1, 3 / 4, 3 / 5], dtype=f64)
    R = torch.tensor([1 / 3, 2 / 3, 1, 1, 1], dtype=f64)
    empty = torch.zeros(0, dtype=f64)
    for m in ("voc_all", "voc11", "coco101"):
        assert_close(
            f"average_precision {m}, all objects found first", call(student, "average_precision", P, R, m), 1.0
        )
        assert_close(
            f"average_precision {m}, empty curve (no detections)",
            call(student, "average_precision", empty, empty.clone(), m),
            0.0,
        )
    # the default method is coco101; a long random curve against pycocotools' accumulate() and the VOC devkit
    rng = np.random.default_rng(3)
    hits = rng.random(400) < np.linspace(0.9, 0.1, 400)
    tp_cum, fp_cum = np.cumsum(hits), np.cumsum(~hits)
    num_gt = int(hits.sum()) + 17
    P_np, R_np = tp_cum / (tp_cum + fp_cum), tp_cum / num_gt
    got_default = call(student, "average_precision", torch.from_numpy(P_np), torch.from_numpy(R_np))
    got_voc = call(student, "average_precision", torch.from_numpy(P_np), torch.from_numpy(R_np), "voc_all")
    assert_close(
        "average_precision default (coco101), 400 random detections vs pycocotools",
        got_default,
        reference_coco101(P_np, R_np),
        rtol=1e-9,
    )
    assert_close(
        "average_precision voc_all, 400 random detections vs VOC devkit",
        got_voc,
        reference_voc_all(P_np, R_np),
        rtol=1e-9,
    )


# ----------------------------------------------------------------------------- mean_average_precision
@grades("test_map_matching")
def test_map_matching(student: Student) -> None:
    """mean_average_precision (on the trusted steps): perfect detections, noisy scenes against pycocotools."""
    with student.using(**TRUSTED_STEPS):
        _map_matching(student)


def _map_matching(student: Student) -> None:
    # a detector that returns exactly the ground truth: AP 1 everywhere
    targets = random_targets(5, num_classes=3, seed=1)
    perfect = [
        {
            "boxes": t["boxes"].clone(),
            "scores": torch.linspace(1.0, 0.5, len(t["labels"])),
            "labels": t["labels"].clone(),
        }
        for t in targets
    ]
    result = call(student, "mean_average_precision", perfect, targets)
    if not isinstance(result, dict) or not {"map", "map_50", "map_75"} <= set(result):
        raise AssertionError(
            "mean_average_precision, perfect detections: expected a dict with keys map, map_50, "
            f"map_75, ap_per_class; got {type(result).__name__}"
        )
    for key in ("map", "map_50", "map_75"):
        assert_close(f"mean_average_precision, perfect detections: {key}", result[key], 1.0)
    # noisy scenes against pycocotools
    targets = random_targets(6, num_classes=3, seed=2)
    check_against_coco(
        student, "mean_average_precision, 6 images, 3 classes", simulate_detections(targets, seed=3), targets
    )
    targets = random_targets(15, num_classes=3, seed=10)
    check_against_coco(
        student,
        "mean_average_precision, many duplicates (no NMS)",
        simulate_detections(targets, seed=11, duplicates=3.0),
        targets,
    )
    targets = random_targets(15, num_classes=2, seed=12, max_objects=10, crowded=True)
    check_against_coco(
        student,
        "mean_average_precision, crowded scenes",
        simulate_detections(targets, num_classes=2, seed=13, box_noise=0.12, duplicates=1.5),
        targets,
    )
    targets = random_targets(20, num_classes=4, seed=14, max_objects=8)
    check_against_coco(
        student,
        "mean_average_precision, loose boxes, 4 classes",
        simulate_detections(targets, num_classes=4, seed=15, box_noise=0.2, false_positives=3.0, label_noise=0.2),
        targets,
    )


@grades("test_map_conventions")
def test_map_conventions(student: Student) -> None:
    """mean_average_precision (on the trusted steps): empty images, classes never detected or never present,
    no ground truth at all, no detections at all, custom IoU thresholds (map_50 and map_75 unchanged)."""
    with student.using(**TRUSTED_STEPS):
        _map_conventions(student)


def _map_conventions(student: Student) -> None:
    # images without any ground truth (their detections are all false positives)
    targets = random_targets(10, num_classes=3, seed=20, empty_fraction=0.4)
    check_against_coco(
        student,
        "mean_average_precision, 40% of images without ground truth",
        simulate_detections(targets, seed=21, false_positives=2.0),
        targets,
    )
    # class 4 has ground truth but no detections (AP 0); class 5 is only detected, never present (left out)
    targets = random_targets(12, num_classes=4, seed=22)
    preds = simulate_detections(targets, num_classes=3, seed=23, label_noise=0.0)
    for i, pred in enumerate(preds):
        pred["labels"] = torch.where(pred["labels"] == 4, torch.full_like(pred["labels"], 1), pred["labels"])
        if i % 3 == 0 and len(pred["labels"]):
            pred["labels"][-1] = 5
    if not (any((t["labels"] == 4).any() for t in targets) and any((p["labels"] == 5).any() for p in preds)):
        raise RuntimeError("test setup: the scene has no class 4 ground truth or no class 5 detection")
    result = check_against_coco(
        student, "mean_average_precision, class 4 never detected, class 5 never present", preds, targets
    )
    assert_close("mean_average_precision, class 4 never detected: ap_per_class[4]", result["ap_per_class"][4], 0.0)
    # several classes without ground truth, a single class with
    targets = random_targets(8, num_classes=1, seed=24)
    preds = simulate_detections(targets, num_classes=6, seed=25, label_noise=0.5, false_positives=3.0)
    check_against_coco(student, "mean_average_precision, one class with ground truth, five without", preds, targets)
    # no ground truth at all: every mAP is -1 (pycocotools' "undefined"), ap_per_class empty
    nothing = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(4)]
    detections = simulate_detections(random_targets(4, num_classes=2, seed=28), num_classes=2, seed=29)
    check_against_coco(student, "mean_average_precision, no ground truth in any image", detections, nothing)
    # no detections at all: AP 0 for every class with ground truth
    targets = random_targets(5, num_classes=3, seed=30)
    empty = [
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
        for _ in targets
    ]
    check_against_coco(student, "mean_average_precision, no detections at all", empty, targets)
    # custom thresholds: map averages them, map_50 and map_75 stay AP at 0.5 and 0.75
    targets = random_targets(10, num_classes=3, seed=34)
    preds = simulate_detections(targets, seed=35, box_noise=0.12)
    for thresholds in ([0.6, 0.7], [0.75, 0.85, 0.95], [0.5]):
        check_against_coco(
            student, f"mean_average_precision(iou_thresholds={thresholds})", preds, targets, iou_thresholds=thresholds
        )
    # other IoU thresholds
    targets = random_targets(10, num_classes=3, seed=26)
    preds = simulate_detections(targets, seed=27, box_noise=0.12)
    reference = coco_evaluate(preds, targets)
    for thresholds, key in (([0.5], "map_50"), ([0.75], "map_75")):
        result = call(student, "mean_average_precision", preds, targets, iou_thresholds=thresholds)
        if not isinstance(result, dict) or "map" not in result:
            raise AssertionError(
                f"mean_average_precision(iou_thresholds={thresholds}): expected a dict with key "
                f"map, got {type(result).__name__}"
            )
        assert_close(
            f"mean_average_precision(iou_thresholds={thresholds})['map'] equals {key}",
            result["map"],
            reference[key],
            rtol=0,
            atol=1e-6,
        )


@grades("test_map_max_detections")
def test_map_max_detections(student: Student) -> None:
    """mean_average_precision (on the trusted steps): COCO's cap of 100 detections per image and class."""
    with student.using(**TRUSTED_STEPS):
        _map_max_detections(student)


def _map_max_detections(student: Student) -> None:
    # one image, one class: 3 objects, found only by detections ranked 101st to 103rd; above them 100 false positives
    gt = torch.tensor([[2.0, 2.0, 20.0, 20.0], [30.0, 30.0, 60.0, 60.0], [5.0, 40.0, 25.0, 60.0]])
    rng = np.random.default_rng(30)
    xy = rng.uniform(0, 40, (400, 2))
    noise = torch.tensor(np.concatenate([xy, xy + rng.uniform(3, 20, (400, 2))], axis=1), dtype=torch.float32)
    noise = noise[torchvision.ops.box_iou(noise, gt).max(dim=1).values < 0.3][:100]  # none of them fits an object
    if len(noise) != 100:
        raise RuntimeError(f"test setup: only {len(noise)} background boxes")
    boxes = torch.cat([noise, gt + 0.5])
    scores = torch.cat([torch.linspace(0.9, 0.5, len(noise)), torch.tensor([0.3, 0.2, 0.1])])
    preds = [{"boxes": boxes, "scores": scores, "labels": torch.ones(len(boxes), dtype=torch.int64)}]
    targets = [{"boxes": gt, "labels": torch.ones(3, dtype=torch.int64)}]
    check_against_coco(
        student,
        f"mean_average_precision, {len(boxes)} detections in one image, the good ones beyond rank 100",
        preds,
        targets,
    )
    # images flooded with 220-300 low- and mid-scoring boxes of both classes
    targets = random_targets(6, num_classes=2, seed=31)
    preds = simulate_detections(targets, num_classes=2, seed=32)
    rng = np.random.default_rng(33)
    for i in (0, 2, 3):
        n = int(rng.integers(220, 300))
        xy = rng.uniform(0, 50, (n, 2))
        extra = torch.tensor(np.concatenate([xy, xy + rng.uniform(4, 25, (n, 2))], axis=1), dtype=torch.float32)
        preds[i] = {
            "boxes": torch.cat([preds[i]["boxes"], extra]),
            "scores": torch.cat([preds[i]["scores"], torch.tensor(rng.uniform(0.05, 0.8, n), dtype=torch.float32)]),
            "labels": torch.cat([preds[i]["labels"], torch.tensor(rng.integers(1, 3, n), dtype=torch.int64)]),
        }
    preds = make_scores_distinct(preds)
    if not max(int((p["labels"] == c).sum()) for p in preds for c in (1, 2)) > 100:
        raise RuntimeError("test setup: no image has more than 100 detections of a class")
    check_against_coco(
        student, "mean_average_precision, images with more than 100 detections of a class", preds, targets
    )
