"""Tests of utils.detectors, the chapter-6 one-stage detector shared with chapter 7 (about 10 s on a CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou, sigmoid_focal_loss

import utils
from utils.detectors import (
    ANCHORS,
    IMAGE_SIZE,
    NUM_CLASSES,
    TinyDetector,
    decode_boxes,
    detect,
    encode_boxes,
    focal_loss,
    make_anchors,
    match_anchors,
    train_one_stage,
)


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    return torch.cat([corner, corner + 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30], dim=1)


def test_anchor_layout_sizes_ratios_and_centres():
    anchors = make_anchors(4, 16, sizes=(32, 48), ratios=(0.5, 1.0, 2.0))
    assert anchors.shape == (4 * 4 * 2 * 3, 4)
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    areas = torch.tensor([32.0**2] * 3 + [48.0**2] * 3).repeat(16)
    assert torch.allclose(w * h, areas), "an anchor of size a has area a^2 whatever its ratio"
    assert torch.allclose(w / h, torch.tensor([0.5, 1.0, 2.0]).repeat(2 * 16))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.allclose(centres[:6], torch.tensor([8.0, 8.0]).expand(6, 2)), "cell (0, 0) is centred at s/2"
    assert torch.allclose(centres[6], torch.tensor([24.0, 8.0])), "the next cell is one stride to the right (x)"
    assert ANCHORS.shape == (8 * 8 * 3, 4)


def test_encode_decode_match_torchvision_box_coder():
    boxes = _random_boxes(500, seed=0)
    anchors = make_anchors(10, 6.4, sizes=(8, 16, 32, 48, 64), ratios=(0.5, 1.0)).double()[:500]
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    deltas = encode_boxes(boxes, anchors)
    torch.testing.assert_close(deltas, coder.encode_single(boxes, anchors), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(decode_boxes(deltas, anchors), coder.decode_single(deltas, anchors))
    torch.testing.assert_close(decode_boxes(deltas, anchors), boxes, rtol=1e-12, atol=1e-10)


def test_matching_on_a_hand_made_case():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # the object itself: IoU 1
            [1.0, 0.0, 11.0, 10.0],  # IoU 9/11 = 0.82: positive
            [3.0, 0.0, 13.0, 10.0],  # IoU 7/13 = 0.54: positive
            [4.5, 0.0, 14.5, 10.0],  # IoU 5.5/14.5 = 0.38: background
            [4.0, 0.0, 14.0, 10.0],  # IoU 6/14 = 0.43: ignored
            [40.0, 40.0, 50.0, 50.0],  # far away: background
        ]
    )
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}
    labels, deltas = match_anchors(target, anchors)
    assert labels.tolist() == [2, 2, 2, 0, -1, 0]
    assert torch.allclose(deltas[0], torch.zeros(4)), "an anchor equal to its object encodes to zeros"
    assert torch.allclose(deltas[1], torch.tensor([-0.1, 0.0, 0.0, 0.0])), "the object lies 1 px (0.1 w) left"


def test_every_object_claims_its_best_anchor_even_below_the_threshold():
    anchors = make_anchors(2, 32, sizes=(40,))  # four big anchors
    target = {"boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0]]), "labels": torch.tensor([3])}
    iou = box_iou(anchors, target["boxes"])[:, 0]
    assert iou.max() < 0.4, "the case needs an object that no anchor overlaps well"
    labels, _ = match_anchors(target, anchors)
    assert labels.tolist() == [3 if i == int(iou.argmax()) else 0 for i in range(4)]


def test_image_without_objects_is_all_background():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    labels, deltas = match_anchors(empty, ANCHORS)
    assert labels.eq(0).all() and deltas.shape == ANCHORS.shape


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_loss_matches_torchvision(gamma: float):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(300, 3, generator=g, dtype=torch.float64) * 4
    y = (torch.rand(300, 3, generator=g) < 0.2).double()
    expected = sigmoid_focal_loss(z, y, alpha=0.25, gamma=gamma, reduction="none")
    torch.testing.assert_close(focal_loss(z, y, gamma=gamma), expected, rtol=1e-10, atol=1e-12)


def test_short_training_lowers_both_losses_and_detect_format():
    dataset = utils.ShapesDataset(64, image_size=IMAGE_SIZE, seed=3)
    images, targets = utils.detection_collate([dataset[i] for i in range(len(dataset))])
    utils.set_seed(0)
    model = TinyDetector(width=16)
    history = train_one_stage(model, images, targets, epochs=4, batch_size=16, lr=3e-3, seed=0)
    for name, values in history.items():
        assert len(values) == 4 and math.isfinite(values[-1])
        assert values[-1] < 0.7 * values[0], f"{name}: {values}"
    preds = detect(model, images[:5], score_threshold=0.05, max_detections=7)
    assert len(preds) == 5
    for pred in preds:
        assert set(pred) == {"boxes", "scores", "labels"}
        d = len(pred["scores"])
        assert d <= 7 and pred["boxes"].shape == (d, 4) and pred["labels"].dtype == torch.int64
        assert bool((pred["scores"] > 0.05).all()) and bool((pred["scores"][:-1] >= pred["scores"][1:]).all())
        assert bool(((pred["labels"] >= 1) & (pred["labels"] <= NUM_CLASSES)).all())
        assert bool(((pred["boxes"] >= 0) & (pred["boxes"] <= IMAGE_SIZE)).all()), "boxes are clipped to the image"


def test_training_is_deterministic_for_a_seed():
    dataset = utils.ShapesDataset(16, image_size=IMAGE_SIZE, seed=4)
    images, targets = utils.detection_collate([dataset[i] for i in range(len(dataset))])
    runs = []
    for _ in range(2):
        utils.set_seed(0)
        model = TinyDetector(width=8)
        runs.append(train_one_stage(model, images, targets, epochs=1, batch_size=8, seed=5))
    assert runs[0] == runs[1]
