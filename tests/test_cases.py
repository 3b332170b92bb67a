"""Unit tests of utils.cases, the generators of the assignments' test inputs (fast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import utils
from utils import cases


def test_all_is_literal_and_exported_by_utils():
    tree = ast.parse(Path(cases.__file__).read_text())
    [node] = [n for n in tree.body if isinstance(n, ast.Assign) and any(t.id == "__all__" for t in n.targets)]
    names = ast.literal_eval(node.value)
    assert names == cases.__all__
    for name in names:
        assert getattr(utils, name) is getattr(cases, name)


@pytest.mark.parametrize(
    "call",
    [
        lambda: cases.random_conv_case((2, 3, 7, 9), (4, 3, 3, 3), stride=2, padding=1, seed=5),
        lambda: cases.random_pool_case((2, 3, 7, 9), kernel_size=3, stride=2, seed=5),
        lambda: cases.random_transpose_case((2, 3, 4, 5), (3, 2, 3, 3), seed=5),
        lambda: cases.random_boxes(7, seed=3),
        lambda: cases.random_scores(7, seed=3),
        lambda: cases.clustered_boxes(50, 4, seed=3),
        lambda: cases.random_targets(4, seed=3, crowded=True),
        lambda: cases.simulate_detections(cases.random_targets(4, seed=3), seed=4),
        lambda: cases.batchnorm2d_steps(3, (4, 5, 5), steps=2, seed=3),
        lambda: cases.random_bn_case((6, 4), seed=3, scale=2.0, shift=3.0, steps=3, constant_feature=0.5),
        lambda: cases.random_bn_case((2, 3, 4, 5), seed=3, scale=2.0, shift=1.0, x_first=True, with_dout=True),
        lambda: cases.random_norm_case((2, 6, 4, 4), seed=3, scale=2.0, shift=-1.0),
        lambda: cases.random_fold_case(6, 9, 3, seed=3, groups=3),
        lambda: cases.random_fold_case(2, 5, 1, seed=3, with_bias=False),
    ],
)
def test_same_seed_same_values_and_global_generator_untouched(call):
    state = torch.random.get_rng_state()
    first, second = call(), call()
    assert torch.equal(torch.random.get_rng_state(), state), "the global generator was used"

    def flat(v):
        if v is None:  # random_fold_case's conv bias, without one
            return []
        if isinstance(v, torch.Tensor):
            return [v]
        if isinstance(v, dict):
            return [t for k in sorted(v) for t in flat(v[k])]
        return [t for x in v for t in flat(x)]

    assert all(torch.equal(a, b) for a, b in zip(flat(first), flat(second), strict=True))


def test_random_conv_case_shapes_follow_conv_output_size():
    x, w, b, dout = cases.random_conv_case((2, 3, 7, 9), (4, 3, 3, 2), stride=2, padding=1, dtype=torch.float32)
    assert x.shape == (2, 3, 7, 9) and w.shape == (4, 3, 3, 2) and b.shape == (4,)
    assert dout.shape == torch.nn.functional.conv2d(x, w, b, stride=2, padding=1).shape == (2, 4, 4, 5)
    assert {t.dtype for t in (x, w, b, dout)} == {torch.float32}
    with pytest.raises(ValueError):
        cases.random_conv_case((1, 1, 2, 2), (1, 1, 3, 3), stride=1, padding=0)  # the kernel does not fit


def test_boxes_are_well_formed():
    for boxes in (cases.random_boxes(100, seed=0), cases.clustered_boxes(100, 5, seed=0)):
        assert boxes.shape == (100, 4) and boxes.dtype == torch.float32
        assert bool((boxes[:, 2:] >= boxes[:, :2]).all())
    assert cases.random_boxes(3, seed=0, dtype=torch.float64).dtype == torch.float64
    scores = cases.random_scores(100, seed=0)
    assert scores.shape == (100,) and bool(((scores >= 0) & (scores < 1)).all())
    assert not torch.equal(scores, torch.rand(100, generator=torch.Generator().manual_seed(0)))  # its own stream


FORBIDDEN_LISTS = [
    "NMS_FORBIDDEN",
    "MAP_FORBIDDEN",
    "CONV_BACKPROP_FORBIDDEN",
    "CONV_BACKPROP_AUTOGRAD",
    "CONV_ARITHMETIC_FORBIDDEN",
    "RESNET_BLOCKS_FORBIDDEN",
    "BATCHNORM_FORBIDDEN",
]


@pytest.mark.parametrize("name", FORBIDDEN_LISTS)
def test_forbidden_lists_name_existing_functions_and_block_them(name):
    # a library upgrade that renames one of them must show here, not as a guard that blocks nothing
    from utils.testing import ForbiddenFunctionError, _resolve, forbid

    paths = getattr(cases, name)

    assert len(set(paths)) == len(paths)
    for path in paths:
        owner, attr = _resolve(path)
        assert callable(getattr(owner, attr)), path
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    blocked = {
        "torchvision.ops.nms": lambda: torchvision.ops.nms(box, torch.ones(1), 0.5),
        "torch.ops.torchvision.nms": lambda: torch.ops.torchvision.nms(box, torch.ones(1), 0.5),
        "utils.detection.coco_matches": lambda: utils.detection.coco_matches(box, torch.ones(1), box, 0.5),
        "torch.nn.functional.conv2d": lambda: torch.nn.functional.conv2d(
            torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2)
        ),
        "torch.autograd.grad": lambda: torch.autograd.grad(torch.ones(1, requires_grad=True).sum(), []),
        "utils.train.flops_by_module": lambda: utils.flops_by_module(nn.Conv2d(1, 1, 3), (1, 1, 5, 5)),
        "torch.utils.flop_counter.FlopCounterMode": lambda: torch.utils.flop_counter.FlopCounterMode(display=False),
        "torchvision.models.resnet.conv3x3": lambda: torchvision.models.resnet.conv3x3(2, 2),
        "torch.nn.functional.batch_norm": lambda: torch.nn.functional.batch_norm(
            torch.ones(2, 3), None, None, training=True
        ),
    }
    assert any(path in paths for path in blocked), f"{name}: no example call of the list is checked"
    with forbid(*paths):
        for path, call in blocked.items():
            if path in paths:
                with pytest.raises(ForbiddenFunctionError):
                    call()
    assert torchvision.ops.nms(box, torch.ones(1), 0.5).tolist() == [0]  # restored


def test_targets_and_detections():
    targets = cases.random_targets(30, num_classes=4, seed=1, max_objects=5, empty_fraction=0.3)
    counts = [len(t["boxes"]) for t in targets]
    assert 0 in counts and max(counts) <= 5
    for t in targets:
        assert t["boxes"].shape == (len(t["labels"]), 4) and t["boxes"].dtype == torch.float32
        assert t["labels"].dtype == torch.int64 and bool(((t["labels"] >= 1) & (t["labels"] <= 4)).all())
    preds = cases.simulate_detections(targets, num_classes=4, seed=2)
    assert len(preds) == len(targets)
    scores = torch.cat([p["scores"] for p in preds])
    assert len(set(scores.tolist())) == len(scores), "scores must be distinct over all images"
    for p in preds:
        assert p["boxes"].shape == (len(p["scores"]), 4) == (len(p["labels"]), 4)


def test_make_scores_distinct_moves_ties_down():
    preds = [{"scores": torch.tensor([0.5, 0.5], dtype=torch.float32)}, {"scores": torch.tensor([0.5])}]
    out = cases.make_scores_distinct(preds)
    values = [float(v) for p in out for v in p["scores"]]
    assert values[0] == 0.5 and len(set(values)) == 3 and max(values[1:]) < 0.5


def test_randomise_batchnorm_changes_every_bn():
    model = torchvision.models.resnet.BasicBlock(4, 4)
    cases.randomise_batchnorm_(model, seed=0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert not torch.equal(m.running_var, torch.ones(4)) and not torch.equal(m.weight, torch.ones(4))
            assert bool((m.running_var >= 0.5).all())


def test_batchnorm2d_reference_and_recorded_steps():
    reference = cases.batchnorm2d_reference(3, eps=1e-5, momentum=0.1, seed=0)
    assert reference.weight.dtype == torch.float64 and not torch.equal(reference.weight, torch.ones(3))
    xs, douts = cases.batchnorm2d_steps(3, (4, 5, 5), steps=2, seed=0)
    assert len(xs) == len(douts) == 3 and xs[0].shape == douts[0].shape == (4, 3, 5, 5)
    records = cases.record_training_steps(reference, xs, douts, steps=2, lr=0.1)
    assert len(records) == 3 and not reference.training
    assert {"output", "gradient of the input", "weight.grad", "bias.grad", "running_mean"} <= set(records[0])
    assert int(records[1]["num_batches_tracked"]) == 2 and int(records[2]["num_batches_tracked"]) == 2  # eval step


def test_random_bn_case_shapes_order_and_constant_feature():
    gamma, beta, mean, var, xs, douts = cases.random_bn_case(
        (5, 3, 2, 2), seed=0, scale=2.0, shift=0.5, steps=2, var_offset=0.2, with_dout=True, dtype=torch.float32
    )
    assert [t.shape for t in (gamma, beta, mean, var)] == [(3,)] * 4
    assert [x.shape for x in xs + douts] == [(5, 3, 2, 2)] * 4
    assert {t.dtype for t in (gamma, beta, mean, var, *xs, *douts)} == {torch.float32}
    assert bool(((var >= 0.2) & (var < 1.2)).all())
    *_, xs_only, none = cases.random_bn_case((4, 2), seed=0, scale=1.0, shift=0.0, steps=3)
    assert len(xs_only) == 3 and none == []
    # x_first draws the input before the parameters, from the same stream: the two orders differ
    g1, *_, [x1], _ = cases.random_bn_case((4, 2), seed=0, scale=1.0, shift=0.0, x_first=True)
    g2, *_, [x2], _ = cases.random_bn_case((4, 2), seed=0, scale=1.0, shift=0.0)
    assert torch.equal(x1.flatten()[:2], g2) and torch.equal(x2.flatten()[:2], g1)
    *_, [x], _ = cases.random_bn_case((6, 3), seed=0, scale=2.0, shift=1.0, constant_feature=0.75)
    assert bool((x[:, 0] == 0.75).all()) and bool((x[:, 1:].var(dim=0) > 0).all())


def test_random_norm_and_fold_case_shapes():
    x, gamma, beta, dout = cases.random_norm_case((2, 6, 3, 3), seed=0, scale=2.0, shift=-1.0)
    assert x.shape == dout.shape == (2, 6, 3, 3) and gamma.shape == beta.shape == (6,)
    assert x.dtype == torch.float64
    conv_weight, conv_bias, bn_weight, bn_bias, mean, var, x = cases.random_fold_case(6, 9, 3, seed=0, groups=3)
    assert conv_weight.shape == (9, 2, 3, 3) and x.shape == (2, 6, 7, 6)
    assert [t.shape for t in (conv_bias, bn_weight, bn_bias, mean, var)] == [(9,)] * 5
    assert bool(((var >= 0.1) & (var < 1.1)).all())
    without = cases.random_fold_case(6, 9, 3, seed=0, groups=3, with_bias=False)
    assert without[1] is None and torch.equal(without[0], conv_weight)  # no bias drawn: the rest move up
    assert torch.equal(without[2], conv_bias)
