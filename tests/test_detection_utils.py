"""Unit tests of utils.detection (the pycocotools bridge: coco_evaluate, coco_matches; fast)."""

from __future__ import annotations

import pytest
import torch

from utils.detection import COCO_STAT_NAMES, coco_average_precision, coco_evaluate, coco_matches, coco_precision_recall


def _targets() -> list:
    return [
        {"boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0], [30.0, 30.0, 50.0, 44.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
    ]


def _perfect(targets: list) -> list:
    return [
        {
            "boxes": t["boxes"].clone(),
            "scores": torch.linspace(0.9, 0.6, len(t["labels"])),
            "labels": t["labels"].clone(),
        }
        for t in targets
    ]


def test_perfect_predictions_score_one():
    targets = _targets()
    result = coco_evaluate(_perfect(targets), targets)
    for key in ("map", "map_50", "map_75"):
        assert result[key] == pytest.approx(1.0), key
    assert result["ap_per_class"] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    assert set(result["stats"]) == set(COCO_STAT_NAMES)


def test_shifted_boxes_lower_the_map_more_at_strict_thresholds():
    targets = _targets()
    shifted = _perfect(targets)
    for pred in shifted:
        pred["boxes"] = pred["boxes"] + torch.tensor([3.0, 3.0, 3.0, 3.0])  # IoU about 0.6-0.8
    result = coco_evaluate(shifted, targets)
    assert result["map"] < 1.0 and result["map_75"] < result["map_50"], result
    assert result["map_50"] == pytest.approx(1.0), "every shifted box still overlaps its object by IoU > 0.5"


def test_empty_predictions_give_zero_and_iou_thresholds():
    targets = _targets()
    empty = [
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
        for _ in targets
    ]
    result = coco_evaluate(empty, targets)
    assert result["map"] == result["map_50"] == result["map_75"] == 0.0
    shifted = _perfect(targets)
    shifted[1]["boxes"] = shifted[1]["boxes"] + 6.0  # IoU 0.42 with its object: a miss at 0.5
    full = coco_evaluate(shifted, targets)
    only_50 = coco_evaluate(shifted, targets, iou_thresholds=[0.5])
    assert only_50["map"] == pytest.approx(full["map_50"]) and only_50["map_75"] == pytest.approx(full["map_75"])
    with pytest.raises(ValueError):
        coco_evaluate(shifted[:1], targets)


def _strips(*spans) -> torch.Tensor:
    """Boxes spanning y in [0, 10]: their IoU is the overlap of the x-intervals over their union."""
    return torch.tensor([[x1, 0.0, x2, 10.0] for x1, x2 in spans])


def test_coco_matches_follows_cocos_greedy_rule():
    gt = _strips((3, 13), (0, 10), (30, 40), (60, 70), (100, 110), (103, 113))
    pred = _strips((1, 11), (0, 10), (30, 35), (31, 41), (80, 90), (105, 115), (103, 113))
    scores = torch.tensor([0.80, 0.90, 0.70, 0.60, 0.95, 0.50, 0.55])
    # by score: background FP; exact GT1 TP; GT1 taken so GT0 (IoU 2/3) TP; IoU exactly 0.5 with GT2 TP
    # (COCO's >=); duplicate on GT2 FP; exact GT5 TP; GT5 taken and GT4 only 1/3: FP
    assert coco_matches(pred, scores, gt, 0.5).tolist() == [True, True, True, False, False, False, True]
    # at 0.75 the half-overlapping box misses, which leaves GT2 to the duplicate (IoU 9/11)
    assert coco_matches(pred, scores, gt, 0.75).tolist() == [False, True, False, True, False, False, True]
    assert coco_matches(pred, scores, gt[:0], 0.5).tolist() == [False] * 7
    assert coco_matches(pred[:0], scores[:0], gt, 0.5).tolist() == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_accumulate_steps_reproduce_cocoeval_class_by_class(seed):
    """coco_matches -> coco_precision_recall -> coco_average_precision equals COCOeval's AP of each class at
    each single threshold (ties in score included), on random scenes with misses, duplicates and empty images."""
    g = torch.Generator().manual_seed(seed)
    targets, preds = [], []
    for image in range(6):
        m = int(torch.randint(0, 5, (1,), generator=g)) if image else 0
        corner = torch.rand(m, 2, generator=g) * 60
        gt = torch.cat([corner, corner + 8 + 20 * torch.rand(m, 2, generator=g)], dim=1)
        targets.append({"boxes": gt, "labels": torch.randint(1, 3, (m,), generator=g)})
        copies = gt.repeat(2, 1) + 3 * torch.randn(2 * m, 4, generator=g)
        copies = torch.cat([copies[:, :2].minimum(copies[:, 2:]), copies[:, :2].maximum(copies[:, 2:]) + 1], 1)
        noise = torch.rand(3, 2, generator=g) * 60
        boxes = torch.cat([copies, torch.cat([noise, noise + 10], 1)])
        scores = (torch.rand(len(boxes), generator=g) * 10).round() / 10  # ties
        labels = torch.cat([targets[-1]["labels"].repeat(2), torch.randint(1, 3, (3,), generator=g)])
        preds.append({"boxes": boxes, "scores": scores, "labels": labels})
    for threshold in (0.5, 0.75):
        official = coco_evaluate(preds, targets, iou_thresholds=[threshold])["ap_per_class"]
        for c, expected in official.items():
            flags, scores, num_gt = [], [], 0
            for p, t in zip(preds, targets):
                mine = p["labels"] == c
                flags.append(coco_matches(p["boxes"][mine], p["scores"][mine], t["boxes"][t["labels"] == c], threshold))
                scores.append(p["scores"][mine])
                num_gt += int((t["labels"] == c).sum())
            precision, recall = coco_precision_recall(torch.cat(flags), torch.cat(scores), num_gt)
            assert coco_average_precision(precision, recall) == pytest.approx(expected, abs=1e-12), (threshold, c)


def _square_masks(boxes: torch.Tensor, size: int = 64) -> torch.Tensor:
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
        masks[k, y1:y2, x1:x2] = True
    return masks


def test_mask_ap_is_mask_iou_not_box_iou():
    targets = [{**t, "masks": _square_masks(t["boxes"])} for t in _targets()]
    preds = _perfect(targets)
    for pred, target in zip(preds, targets):
        pred["masks"] = target["masks"].clone()
    assert coco_evaluate(preds, targets, iou_type="segm")["map"] == pytest.approx(1.0)
    # the same boxes with masks of the top third only: mask IoU 1/3 (a miss at 0.5), box IoU still 1
    for pred in preds:
        thin = torch.zeros_like(pred["masks"])
        for k, (x1, y1, x2, y2) in enumerate(pred["boxes"].int().tolist()):
            thin[k, y1 : y1 + (y2 - y1) // 3, x1:x2] = True
        pred["masks"] = thin
    assert coco_evaluate(preds, targets, iou_type="segm")["map_50"] == pytest.approx(0.0)
    assert coco_evaluate(preds, targets)["map"] == pytest.approx(1.0), "box AP ignores the masks"


def test_soft_masks_are_thresholded_like_mask_rcnn_output():
    targets = [{**t, "masks": _square_masks(t["boxes"])} for t in _targets()]
    preds = _perfect(targets)
    for pred, target in zip(preds, targets):
        pred["masks"] = (0.3 + 0.4 * target["masks"].float())[:, None]  # Tensor[N, 1, H, W]: 0.7 inside, 0.3 outside
    assert coco_evaluate(preds, targets, iou_type="segm")["map"] == pytest.approx(1.0)
    assert coco_evaluate(preds, targets, iou_type="segm", mask_threshold=0.8)["map"] == 0.0
    with pytest.raises(ValueError):
        coco_evaluate(preds, targets, iou_type="keypoints")
