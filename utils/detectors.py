"""The course's one-stage detector on the 64-pixel shapes (chapter 6), shared so that other chapters can train it.

Chapter 6 teaches these pieces; chapter 7 trains the same detector as the baseline of its DETR. The API is stable
(additions only)::

    >>> from utils.detectors import TinyDetector, detect, train_one_stage      # doctest: +SKIP
    >>> model = TinyDetector()                                                 # doctest: +SKIP
    >>> history = train_one_stage(model, images, targets, epochs=12, seed=0)   # doctest: +SKIP
    >>> preds = detect(model, test_images)     # list of {"boxes", "scores", "labels"}, ready for coco_evaluate

Constants: :data:`IMAGE_SIZE` (64), :data:`SHAPE_CLASSES` (``utils.data``'s names, index 0 is background),
:data:`NUM_CLASSES` (3 object classes), :data:`STRIDE` (8 pixels per feature cell), :data:`FEATURE_SIZE` (8),
:data:`ANCHOR_SIZES` (three square anchors per cell) and :data:`ANCHORS` (``Tensor[192, 4]``, the detector's anchors).

Functions and classes:

* :func:`make_anchors` ``(feature_size, stride, sizes, ratios) -> Tensor[A, 4]`` xyxy anchors, cell by cell;
* :func:`encode_boxes` / :func:`decode_boxes`: ``(dx, dy, log w/wa, log h/ha)`` relative to the anchors (the same
  code as torchvision's ``BoxCoder`` with weights ``(1, 1, 1, 1)``);
* :func:`match_anchors` ``(target, anchors) -> (labels Tensor[A], deltas Tensor[A, 4])``, RetinaNet's rule:
  IoU >= 0.5 positive (label 1..C), < 0.4 background (0), in between ignored (-1), plus each object's best anchor;
* :func:`focal_loss` (element-wise, equal to ``torchvision.ops.sigmoid_focal_loss``) and :func:`detection_loss`;
* :class:`TinyDetector`: ``Tensor[B, 3, 64, 64] -> (logits Tensor[B, A, C], deltas Tensor[B, A, 4])``;
* :func:`train_one_stage`: AdamW + one-cycle, random horizontal flips; returns the per-epoch losses;
* :func:`raw_detections`, :func:`postprocess` and :func:`detect`: sigmoid scores, decoding, clipping,
  score threshold and per-class NMS (``torchvision.ops.batched_nms``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert, box_iou

from utils.data import SHAPE_CLASSES
from utils.train import train_minibatches

__all__ = [
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "STRIDE",
    "FEATURE_SIZE",
    "ANCHOR_SIZES",
    "ANCHORS",
    "make_anchors",
    "box_centre_size",
    "encode_boxes",
    "decode_boxes",
    "match_anchors",
    "hflip_targets",
    "focal_loss",
    "detection_loss",
    "conv_bn_relu",
    "TinyDetector",
    "train_one_stage",
    "raw_detections",
    "postprocess",
    "detect",
]

IMAGE_SIZE = 64
NUM_CLASSES = len(SHAPE_CLASSES) - 1  # 3 object classes; label 0 is background
STRIDE = 8
FEATURE_SIZE = IMAGE_SIZE // STRIDE
# square anchors only: the shapes are about as wide as tall, 11-27 pixels across
ANCHOR_SIZES = (12.0, 19.0, 28.0)


def make_anchors(
    feature_size: int,
    stride: float,
    sizes: Sequence[float],
    ratios: Sequence[float] = (1.0,),
    device: torch.device | str | None = None,
) -> Tensor:
    """The anchors of a square ``F x F`` feature map: ``Tensor[F * F * len(sizes) * len(ratios), 4]`` xyxy.

    Anchor ``(a, r)`` has width ``a * sqrt(r)`` and height ``a / sqrt(r)`` (area ``a**2``) and is centred on its
    cell's centre ``((j + 0.5) * stride, (i + 0.5) * stride)``. Order: cell by cell (row-major), then size, then
    ratio, the order of a head's output channels after ``permute(0, 2, 3, 1)``.
    """
    shapes = torch.tensor([(a * math.sqrt(r), a / math.sqrt(r)) for a in sizes for r in ratios], device=device)
    centres = (torch.arange(feature_size, dtype=torch.float32, device=device) + 0.5) * stride  # [F]
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # [F, F] each
    centre = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)  # [F*F, 1, 2]
    half = shapes.reshape(1, -1, 2) / 2  # [1, K, 2]
    return torch.cat([centre - half, centre + half], dim=-1).reshape(-1, 4)  # [F*F*K, 4]


ANCHORS = make_anchors(FEATURE_SIZE, STRIDE, ANCHOR_SIZES)  # [192, 4]


def box_centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``Tensor[N, 4]`` xyxy -> centre x, centre y, width, height, each ``Tensor[N]``."""
    return tuple(box_convert(boxes, "xyxy", "cxcywh").unbind(dim=1))


def encode_boxes(boxes: Tensor, anchors: Tensor) -> Tensor:
    """boxes, anchors ``Tensor[N, 4]`` xyxy -> deltas ``Tensor[N, 4]`` ``(dx, dy, log w/wa, log h/ha)``."""
    x, y, w, h = box_centre_size(boxes)
    xa, ya, wa, ha = box_centre_size(anchors)
    return torch.stack([(x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)], dim=1)


def decode_boxes(deltas: Tensor, anchors: Tensor) -> Tensor:
    """The inverse of :func:`encode_boxes`: deltas, anchors ``Tensor[N, 4]`` -> boxes ``Tensor[N, 4]`` xyxy."""
    xa, ya, wa, ha = box_centre_size(anchors)
    x = xa + deltas[:, 0] * wa
    y = ya + deltas[:, 1] * ha
    w = wa * torch.exp(deltas[:, 2])
    h = ha * torch.exp(deltas[:, 3])
    return box_convert(torch.stack([x, y, w, h], dim=1), "cxcywh", "xyxy")


def match_anchors(
    target: dict[str, Tensor], anchors: Tensor = ANCHORS, positive: float = 0.5, negative: float = 0.4
) -> tuple[Tensor, Tensor]:
    """Training targets of every anchor for one image (RetinaNet's rule).

    Args:
        target: ``{"boxes": Tensor[M, 4] xyxy, "labels": Tensor[M] in 1..C}`` (M may be 0).
        anchors: ``Tensor[A, 4]`` xyxy.
        positive, negative: IoU >= positive is a positive of its best object, IoU < negative is background,
            in between is ignored; besides, every object claims its best-overlapping anchor.

    Returns:
        labels ``Tensor[A]`` int64 (-1 ignored, 0 background, 1..C the class) and deltas ``Tensor[A, 4]`` (the
        encoded box of the anchor's object; meaningful for positives only, zeros when M = 0).
    """
    boxes = target["boxes"].to(anchors)
    object_labels = target["labels"].to(anchors.device)
    labels = torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
    if len(boxes) == 0:
        return labels, torch.zeros_like(anchors)
    iou = box_iou(anchors, boxes)  # [A, M]
    best_iou, best_object = iou.max(dim=1)  # [A], [A]
    labels[best_iou >= negative] = -1
    labels[best_iou >= positive] = object_labels[best_object[best_iou >= positive]]
    forced = iou.argmax(dim=0)  # [M] best anchor of each object
    best_object[forced] = torch.arange(len(forced), device=anchors.device)
    labels[forced] = object_labels
    deltas = encode_boxes(boxes[best_object], anchors)  # [A, 4]
    return labels, deltas


def hflip_targets(target: dict[str, Tensor], image_size: int = IMAGE_SIZE) -> dict[str, Tensor]:
    """The boxes of a target mirrored left-right in an image ``image_size`` pixels wide (labels unchanged)."""
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = image_size - target["boxes"][:, [2, 0]]
    return {"boxes": boxes, "labels": target["labels"]}


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al., 2017): logits, targets (0/1) ``Tensor[...]`` -> ``Tensor[...]``.

    ``-alpha_t (1 - p_t)**gamma log p_t`` with ``log p_t = logsigmoid(+-z)`` (stable for large ``|z|``).
    """
    sign = 2 * targets - 1  # +1 for positives, -1 for negatives
    log_pt = F.logsigmoid(sign * logits)
    pt = log_pt.exp()
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return -alpha_t * (1 - pt) ** gamma * log_pt


def detection_loss(
    logits: Tensor, deltas: Tensor, anchor_labels: Tensor, anchor_deltas: Tensor
) -> tuple[Tensor, Tensor]:
    """(classification, box) losses of a batch, each divided by the number of positive anchors.

    Args:
        logits: ``Tensor[B, A, C]``; deltas: ``Tensor[B, A, 4]`` (the model's output).
        anchor_labels: ``Tensor[B, A]`` (-1, 0, 1..C) and anchor_deltas ``Tensor[B, A, 4]`` from
            :func:`match_anchors`.

    Returns:
        the focal loss summed over the non-ignored anchors and the smooth-L1 loss (beta 1/9) of the positives'
        deltas.
    """
    num_classes = logits.shape[-1]
    valid = anchor_labels >= 0  # [B, A]
    positive = anchor_labels > 0  # [B, A]
    one_hot = F.one_hot(anchor_labels.clamp(min=0), num_classes + 1)[..., 1:].to(logits.dtype)  # [B, A, C]
    num_positive = positive.sum().clamp(min=1)
    cls_loss = focal_loss(logits[valid], one_hot[valid]).sum() / num_positive
    box_loss = F.smooth_l1_loss(deltas[positive], anchor_deltas[positive], beta=1 / 9, reduction="sum") / num_positive
    return cls_loss, box_loss


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias) + BatchNorm + ReLU, spatial size kept."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyDetector(nn.Module):
    """A RetinaNet-style one-stage detector with one stride-8 feature map.

    ``Tensor[B, 3, 64, 64] -> (class logits Tensor[B, A, C], box deltas Tensor[B, A, 4])`` with
    ``A = 8 * 8 * anchors_per_cell`` in the order of :data:`ANCHORS`.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, anchors_per_cell: int = len(ANCHOR_SIZES), width: int = 32):
        super().__init__()
        self.num_classes, self.anchors_per_cell = num_classes, anchors_per_cell
        self.backbone = nn.Sequential(
            conv_bn_relu(3, width // 2),
            nn.MaxPool2d(2),  # 32x32
            conv_bn_relu(width // 2, width),
            nn.MaxPool2d(2),  # 16x16
            conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),  # 8x8
            conv_bn_relu(2 * width, 2 * width),
            conv_bn_relu(2 * width, 2 * width),
        )
        self.cls_head = nn.Conv2d(2 * width, anchors_per_cell * num_classes, 3, padding=1)
        self.box_head = nn.Conv2d(2 * width, anchors_per_cell * 4, 3, padding=1)
        # RetinaNet's prior: start at p = 0.01 everywhere, so that the many background anchors do not swamp the loss
        nn.init.constant_(self.cls_head.bias, -math.log(99))
        nn.init.zeros_(self.box_head.weight)
        nn.init.zeros_(self.box_head.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        features = self.backbone(x)  # [B, 2w, 8, 8]
        logits = self.cls_head(features)  # [B, K*C, 8, 8]
        logits = logits.permute(0, 2, 3, 1)  # [B, 8, 8, K*C]
        logits = logits.reshape(b, -1, self.num_classes)  # [B, 8*8*K, C]
        deltas = self.box_head(features)  # [B, K*4, 8, 8]
        deltas = deltas.permute(0, 2, 3, 1)  # [B, 8, 8, K*4]
        deltas = deltas.reshape(b, -1, 4)  # [B, 8*8*K, 4]
        return logits, deltas


def _match_all(targets: Sequence[dict[str, Tensor]], anchors: Tensor) -> tuple[Tensor, Tensor]:
    matched = [match_anchors(t, anchors) for t in targets]
    return torch.stack([m[0] for m in matched]), torch.stack([m[1] for m in matched])  # [N, A], [N, A, 4]


def train_one_stage(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[dict[str, Tensor]],
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    anchors: Tensor = ANCHORS,
    flip: bool = True,
) -> dict[str, list[float]]:
    """Train a :class:`TinyDetector` (or any model with its outputs) in place, on the device of its parameters.

    AdamW with a one-cycle learning rate, batches drawn by a generator seeded with ``seed``, and (``flip``) random
    horizontal flips of image and boxes (the square anchors are left-right symmetric, so the flipped boxes are simply
    matched again). The model's initialisation is the caller's: seed before building it.

    Args:
        images: ``Tensor[N, 3, 64, 64]``; targets: N dicts with ``"boxes"`` and ``"labels"``.

    Returns:
        ``{"classification (focal)": [...], "box (smooth L1)": [...]}``, the mean training losses of each epoch.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    anchors = anchors.to(device)
    labels, deltas = _match_all(targets, anchors)
    flip_labels, flip_deltas = _match_all([hflip_targets(t, images.shape[-1]) for t in targets], anchors)
    n = len(images)
    steps_per_epoch = math.ceil(n / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    parts: list[tuple[float, float]] = []  # each step's (focal, smooth L1) share of its epoch's mean

    def batch_loss(idx: Tensor) -> Tensor:
        mirrored = ((torch.rand(len(idx), generator=generator) < 0.5) & flip).to(device)  # [B]
        x = images[idx].to(device)  # [B, 3, H, W]
        x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
        y_labels = torch.where(mirrored[:, None], flip_labels[idx.to(device)], labels[idx.to(device)])  # [B, A]
        y_deltas = torch.where(mirrored[:, None, None], flip_deltas[idx.to(device)], deltas[idx.to(device)])
        logits, predicted = model(x)  # [B, A, C], [B, A, 4]
        cls_loss, box_loss = detection_loss(logits, predicted, y_labels, y_deltas)
        parts.append((cls_loss.item() * len(idx) / n, box_loss.item() * len(idx) / n))
        return cls_loss + box_loss

    train_minibatches(model, n, batch_loss, optimizer, epochs, batch_size, generator, scheduler)
    history: dict[str, list[float]] = {"classification (focal)": [], "box (smooth L1)": []}
    for epoch in range(epochs):
        epoch_parts = parts[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
        for k, key in enumerate(history):
            history[key].append(sum(part[k] for part in epoch_parts))
    return history


@torch.no_grad()
def raw_detections(
    model: nn.Module, images: Tensor, anchors: Tensor = ANCHORS, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """Every anchor's class scores and decoded box, before any threshold (model in eval mode).

    Returns:
        scores ``Tensor[B, A, C]`` (sigmoids) and boxes ``Tensor[B, A, 4]`` xyxy clipped to the image, on the CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    size = images.shape[-1]
    all_scores, all_boxes = [], []
    for chunk in images.split(batch_size):
        logits, deltas = model(chunk.to(device))
        flat_anchors = anchors.to(deltas).repeat(len(chunk), 1)  # [b*A, 4]
        boxes = decode_boxes(deltas.reshape(-1, 4), flat_anchors).clamp(0, size)
        all_scores.append(logits.sigmoid().cpu())
        all_boxes.append(boxes.reshape(len(chunk), -1, 4).cpu())
    return torch.cat(all_scores), torch.cat(all_boxes)


def postprocess(
    scores: Tensor, boxes: Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5, max_detections: int = 100
) -> dict[str, Tensor]:
    """One image: scores ``Tensor[A, C]``, boxes ``Tensor[A, 4]`` -> ``{"boxes", "scores", "labels"}``.

    Keeps the (anchor, class) pairs scoring above ``score_threshold``, then per-class NMS at ``iou_threshold``
    (``iou_threshold=1.0`` keeps every box), then the ``max_detections`` best; sorted by decreasing score; labels
    are 1..C.
    """
    anchor_idx, class_idx = torch.nonzero(scores > score_threshold, as_tuple=True)
    kept_scores = scores[anchor_idx, class_idx]
    kept_boxes = boxes[anchor_idx]
    labels = class_idx + 1
    keep = batched_nms(kept_boxes, kept_scores, labels, iou_threshold)[:max_detections]  # sorted by score
    return {"boxes": kept_boxes[keep], "scores": kept_scores[keep], "labels": labels[keep]}


def detect(
    model: nn.Module,
    images: Tensor,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    anchors: Tensor = ANCHORS,
) -> list[dict[str, Tensor]]:
    """Detections of a trained :class:`TinyDetector` on ``Tensor[N, 3, 64, 64]``: one dict per image with
    ``"boxes"`` ``Tensor[D, 4]`` xyxy, ``"scores"`` ``Tensor[D]`` and ``"labels"`` ``Tensor[D]`` int64 (CPU), the
    format of ``utils.detection.coco_evaluate``."""
    scores, boxes = raw_detections(model, images, anchors)
    return [postprocess(s, b, score_threshold, iou_threshold, max_detections) for s, b in zip(scores, boxes)]
