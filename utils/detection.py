"""Detection evaluation shared by the chapters: the official COCO mAP (box, or mask with ``iou_type="segm"``)
through ``pycocotools``.

The ``mean_average_precision`` assignment grades students against these functions (and judges its mAP
function on ``coco_matches``, ``coco_precision_recall`` and ``coco_average_precision``, the steps of
``COCOeval.evaluate`` and ``COCOeval.accumulate`` for one class at one threshold); chapters use
``coco_evaluate`` to score their detectors::

    >>> from utils.detection import coco_evaluate
    >>> result = coco_evaluate(preds, targets)     # doctest: +SKIP
    >>> result["map"], result["map_50"], result["map_75"]   # doctest: +SKIP

Data format (torchvision's / torchmetrics'): ``preds`` is a list with one dict per image,
``{"boxes": Tensor[N, 4] (x1, y1, x2, y2), "scores": Tensor[N], "labels": Tensor[N] int64}``; ``targets`` is a
list of the same length, ``{"boxes": Tensor[M, 4], "labels": Tensor[M] int64}`` (other keys are ignored).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["coco_evaluate", "coco_matches", "coco_precision_recall", "coco_average_precision", "COCO_STAT_NAMES"]

#: the twelve numbers of ``COCOeval.summarize()`` for boxes, in order
COCO_STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def _rle(mask: Tensor) -> dict[str, Any]:
    """pycocotools' compressed run-length encoding of one ``Tensor[H, W]`` bool mask."""
    from pycocotools import mask as mask_util

    return mask_util.encode(np.asfortranarray(mask.detach().cpu().numpy().astype(np.uint8)))


def _binary_masks(masks: Tensor, threshold: float) -> Tensor:
    """``Tensor[N, H, W]`` or ``Tensor[N, 1, H, W]`` (bool, or soft in [0, 1]) -> ``Tensor[N, H, W]`` bool."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    return masks if masks.dtype == torch.bool else masks > threshold


def _coco_objects(
    preds: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    iou_type: str = "bbox",
    mask_threshold: float = 0.5,
) -> tuple[Any, Any]:
    """COCO ground truth and results built in memory (no files): boxes xyxy -> COCO's ``[x, y, w, h]``,
    image and annotation ids from 1 (pycocotools uses 0 for "unmatched"). Results are ``None`` when there
    is no detection at all (``loadRes`` cannot take an empty list). With ``iou_type="segm"`` the targets'
    and predictions' ``"masks"`` become run-length encodings (the predictions' thresholded at
    ``mask_threshold`` unless bool), and the detections carry no box (pycocotools derives it from the mask)."""
    from pycocotools.coco import COCO

    segm = iou_type == "segm"

    images, annotations, detections, categories = [], [], [], set()
    for image_id, (pred, target) in enumerate(zip(preds, targets), start=1):
        gt_masks = _binary_masks(target["masks"], mask_threshold) if segm else None
        # pycocotools' mask evaluation reads the image size (annToRLE), the box evaluation does not
        images.append(
            {"id": image_id, "height": gt_masks.shape[-2], "width": gt_masks.shape[-1]} if segm else {"id": image_id}
        )
        for k, ((x1, y1, x2, y2), label) in enumerate(zip(target["boxes"].tolist(), target["labels"].tolist())):
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            if segm:
                annotation["segmentation"] = _rle(gt_masks[k])
                annotation["area"] = float(gt_masks[k].sum())
            annotations.append(annotation)
            categories.add(int(label))
        dt_masks = _binary_masks(pred["masks"], mask_threshold) if segm else None
        for k, ((x1, y1, x2, y2), score, label) in enumerate(
            zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist())
        ):
            detection = {"image_id": image_id, "category_id": int(label), "score": float(score)}
            if segm:
                detection["segmentation"] = _rle(dt_masks[k])
            else:
                detection["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            detections.append(detection)
            categories.add(int(label))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress messages
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c} for c in sorted(categories)],
        }
        gt.createIndex()
        dt = gt.loadRes(detections) if detections else None
    return gt, dt


def _mean_ap(precision: np.ndarray) -> float:
    """pycocotools' summary of a precision array: mean over the valid (> -1) entries, -1 if none."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


def coco_evaluate(
    preds: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    iou_thresholds: Sequence[float] | None = None,
    iou_type: str = "bbox",
    mask_threshold: float = 0.5,
) -> dict[str, Any]:
    """The official COCO box (or mask) evaluation (``pycocotools.cocoeval.COCOeval``) of a detector's output.

    Args:
        preds: one dict per image, ``{"boxes": Tensor[N, 4] xyxy, "scores": Tensor[N], "labels": Tensor[N]}``.
        targets: one dict per image, ``{"boxes": Tensor[M, 4] xyxy, "labels": Tensor[M]}``, same length.
        iou_thresholds: the IoU thresholds averaged in ``"map"``; default COCO's ten, 0.50:0.05:0.95.
            ``"map_50"`` and ``"map_75"`` are always AP at IoU 0.5 and 0.75 whatever this is.
        iou_type: ``"bbox"`` (default: box IoU) or ``"segm"`` (mask IoU, COCO's mask AP): then every target
            needs ``"masks"`` ``Tensor[M, H, W]`` bool and every prediction ``"masks"`` ``Tensor[N, H, W]`` or
            ``Tensor[N, 1, H, W]``, bool or soft (Mask R-CNN's output), binarised at ``mask_threshold``.

    Returns:
        ``{"map", "map_50", "map_75"}`` (Python floats: mean AP over the classes that have ground truth, at
        area "all" and at most 100 detections per image), ``"ap_per_class"`` ``{label: AP over
        iou_thresholds}``, and ``"stats"`` ``{name: value}`` with all twelve numbers of
        ``COCOeval.summarize()`` (see :data:`COCO_STAT_NAMES`; these use COCO's default thresholds unless
        ``iou_thresholds`` is given, in which case they cover the evaluated thresholds). With no detection
        at all every AP is 0 (or -1 when there is no ground truth either, pycocotools' "undefined").
    """
    from pycocotools.cocoeval import COCOeval

    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} images")
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    gt, dt = _coco_objects(preds, targets, iou_type, mask_threshold)
    gt_classes = sorted({int(c) for t in targets for c in t["labels"].tolist()})
    if dt is None:  # no detections anywhere: every class with ground truth has recall 0, hence AP 0
        value = 0.0 if gt_classes else -1.0
        stats = {name: value for name in COCO_STAT_NAMES}
        return {
            "map": value,
            "map_50": value,
            "map_75": value,
            "ap_per_class": {c: 0.0 for c in gt_classes},
            "stats": stats,
        }

    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(gt, dt, iou_type)
        wanted = coco_eval.params.iouThrs if iou_thresholds is None else np.asarray(iou_thresholds, dtype=np.float64)
        # always evaluate 0.5 and 0.75 too, so that map_50 and map_75 exist
        extra = [t for t in (0.5, 0.75) if not np.isclose(wanted, t).any()]
        coco_eval.params.iouThrs = np.sort(np.concatenate([wanted, extra]))
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    thresholds = coco_eval.params.iouThrs
    chosen = np.array([np.isclose(wanted, t).any() for t in thresholds])
    at = lambda value: np.flatnonzero(np.isclose(thresholds, value))[:1]
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # [T, R, K]: area "all", maxDets 100
    ap_per_class = {}
    for k, c in enumerate(coco_eval.params.catIds):
        value = _mean_ap(precision[chosen][:, :, k])
        if value > -1:
            ap_per_class[int(c)] = value
    return {
        "map": _mean_ap(precision[chosen]),
        "map_50": _mean_ap(precision[at(0.5)]),
        "map_75": _mean_ap(precision[at(0.75)]),
        "ap_per_class": ap_per_class,
        "stats": {name: float(v) for name, v in zip(COCO_STAT_NAMES, coco_eval.stats)},
    }


def coco_matches(pred_boxes: Tensor, pred_scores: Tensor, gt_boxes: Tensor, iou_threshold: float) -> Tensor:
    """pycocotools' true-positive flags for the detections of one class in one image.

    Args:
        pred_boxes: Tensor[N, 4] detections (x1, y1, x2, y2).
        pred_scores: Tensor[N] their scores.
        gt_boxes: Tensor[M, 4] ground-truth boxes (x1, y1, x2, y2); M may be 0.
        iou_threshold: the single IoU threshold to match at.

    Returns:
        Tensor[N] bool, in the input order of the detections: True where ``COCOeval.evaluate`` matched the
        detection to a ground-truth box (all N detections are kept, even beyond COCO's 100).
    """
    from pycocotools.cocoeval import COCOeval

    flags = np.zeros(len(pred_boxes), dtype=bool)
    if len(pred_boxes) == 0:
        return torch.from_numpy(flags)
    pred = {"boxes": pred_boxes, "scores": pred_scores, "labels": torch.ones(len(pred_boxes), dtype=torch.int64)}
    target = {"boxes": gt_boxes, "labels": torch.ones(len(gt_boxes), dtype=torch.int64)}
    gt, dt = _coco_objects([pred], [target])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(gt, dt, "bbox")
        coco_eval.params.iouThrs = np.array([iou_threshold], dtype=np.float64)
        coco_eval.params.maxDets = [max(100, len(pred_boxes))]
        coco_eval.params.areaRng, coco_eval.params.areaRngLbl = [[0, 1e10]], ["all"]
        coco_eval.evaluate()
    result = next(e for e in coco_eval.evalImgs if e is not None)
    matched = np.asarray(result["dtMatches"][0]) > 0  # [N] in COCO's (score) order
    flags[np.asarray(result["dtIds"]) - 1] = matched  # detection ids are 1 + input index
    return torch.from_numpy(flags)


def coco_precision_recall(tp: Tensor, scores: Tensor, num_gt: int) -> tuple[Tensor, Tensor]:
    """Precision and recall after each ranked detection, as ``COCOeval.accumulate`` computes them.

    Args:
        tp: Tensor[D] bool, the true positives of one class (all images).
        scores: Tensor[D] their scores; ranked from the highest, equal scores in input order (pycocotools'
            ``np.argsort(-scores, kind="mergesort")``).
        num_gt: number of ground-truth objects of the class (> 0).

    Returns:
        (precision, recall), two float64 Tensor[D]. (pycocotools adds ``np.spacing(1)`` to the precision's
        denominator, which changes nothing here; it is left out, as in the assignment's definition.)
    """
    order = np.argsort(-scores.detach().cpu().numpy().astype(np.float64), kind="mergesort")
    flags = tp.detach().cpu().numpy().astype(bool)[order]
    tp_sum = np.cumsum(flags).astype(np.float64)
    fp_sum = np.cumsum(~flags).astype(np.float64)
    return torch.from_numpy(tp_sum / (tp_sum + fp_sum)), torch.from_numpy(tp_sum / num_gt)


def coco_average_precision(precision: Tensor, recall: Tensor, method: str = "coco101") -> float:
    """COCO's 101-point AP of one precision-recall curve, the lines of ``COCOeval.accumulate``: the
    precision made non-increasing from the right, sampled at the first rank whose recall reaches each of
    ``np.linspace(0, 1, 101)`` (0 beyond the end of the curve), averaged.

    Args:
        precision, recall: Tensor[D] as :func:`coco_precision_recall` returns them (may be empty).
        method: only ``"coco101"`` (the VOC variants are not pycocotools').

    Returns:
        AP as a Python float.
    """
    if method != "coco101":
        raise ValueError(f"coco_average_precision computes COCO's 101-point AP only, not {method!r}")
    pr = np.asarray(precision.detach().cpu().numpy(), dtype=np.float64).tolist()
    rc = np.asarray(recall.detach().cpu().numpy(), dtype=np.float64)
    for i in range(len(pr) - 1, 0, -1):
        if pr[i] > pr[i - 1]:
            pr[i - 1] = pr[i]
    q = np.zeros(101)
    for ri, pi in enumerate(np.searchsorted(rc, np.linspace(0.0, 1.0, 101), side="left")):
        if pi < len(pr):
            q[ri] = pr[pi]
    return float(q.mean())
