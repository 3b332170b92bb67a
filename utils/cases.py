"""The assignments' test inputs and rules: generators and blocked-function lists shared by notebooks and grader.

Each assignment's notebook shows its tests' inputs being made by these functions, and the grader's hidden
tests make theirs with the same functions (with seeds, sizes and cases of their own), so what a student
tests against and what the grader tests against are drawn the same way. Every function takes its seed as
an argument and draws from its own generator: the global random state is left alone.

Each section also holds the assignment's list of library functions its graded code may not call
(``NMS_FORBIDDEN``, ``BATCHNORM_FORBIDDEN``, ...): the notebook prints it and its tests block it, and the
grader blocks the same list, so the two cannot drift apart.

    >>> from utils.cases import random_boxes, random_scores
    >>> boxes, scores = random_boxes(5, seed=0), random_scores(5, seed=0)    # Tensor[5, 4], Tensor[5]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .convmath import conv_output_size

__all__ = [
    "CONV_BACKPROP_FORBIDDEN",
    "CONV_BACKPROP_AUTOGRAD",
    "CONV_ARITHMETIC_FORBIDDEN",
    "random_conv_case",
    "random_pool_case",
    "random_transpose_case",
    "NMS_FORBIDDEN",
    "random_boxes",
    "random_scores",
    "clustered_boxes",
    "MAP_FORBIDDEN",
    "random_targets",
    "simulate_detections",
    "make_scores_distinct",
    "RESNET_BLOCKS_FORBIDDEN",
    "randomise_batchnorm_",
    "BATCHNORM_FORBIDDEN",
    "random_bn_case",
    "random_norm_case",
    "random_fold_case",
    "batchnorm2d_reference",
    "batchnorm2d_steps",
    "record_training_steps",
]

Detections = list[dict[str, Tensor]]  # per image: "boxes" Tensor[K, 4] xyxy, "scores" Tensor[K], "labels" Tensor[K]
Targets = list[dict[str, Tensor]]  # per image: "boxes" Tensor[M, 4] xyxy, "labels" Tensor[M]


# ----------------------------------------------------------------------------- conv_backprop
# The library versions of what the conv_backprop assignment's functions implement, blocked while the student's code
# runs: by the notebook's tests (utils.testing.forbid) and by the grader (grading/hidden/conv_backprop.py, which also
# refuses the operators behind them however they are reached), one list for both. Tensor.unfold stays allowed.
CONV_BACKPROP_FORBIDDEN: tuple[str, ...] = (
    "torch.nn.functional.conv1d",
    "torch.nn.functional.conv2d",
    "torch.nn.functional.conv3d",
    "torch.nn.functional.conv_transpose2d",
    "torch.convolution",
    "torch.nn.functional.unfold",
    "torch.nn.functional.fold",
    "torch.nn.functional.max_pool2d",
    "torch.nn.functional.max_pool2d_with_indices",
    "torch.max_pool2d",
    "torch.nn.grad.conv2d_input",
    "torch.nn.grad.conv2d_weight",
    "torch.nn.Conv2d",
    "torch.nn.ConvTranspose2d",
    "torch.nn.MaxPool2d",
    "torch.nn.Unfold",
    "torch.nn.Fold",
)
# The public autograd entry points, blocked in conv_backprop's hand-written backward passes by the notebook's tests and
# the grader alike (the grader also refuses any autograd inside them), one list for both.
CONV_BACKPROP_AUTOGRAD: tuple[str, ...] = (
    "torch.autograd.grad",
    "torch.autograd.backward",
    "torch.Tensor.backward",
    "torch.func.vjp",
    "torch.func.grad",
)

# What conv_arithmetic may not call: the course's own cost helpers (its answer, ready-made) and torch's FLOP
# counter (the MACs of a layer built with the given shapes, measured instead of derived).
CONV_ARITHMETIC_FORBIDDEN: tuple[str, ...] = (
    "utils.convmath.conv_cost",
    "utils.convmath.conv_output_size",
    "utils.train.count_flops",
    "utils.train.flops_by_module",
    "torch.utils.flop_counter.FlopCounterMode",
)


def random_conv_case(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: int,
    padding: int,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A convolution's inputs: x Tensor[N, C, H, W], w Tensor[F, C, KH, KW], b Tensor[F] and an upstream
    gradient Tensor[N, F, H', W'] of the output's shape, drawn in this order from one generator seeded with
    ``seed`` (H' and W' from :func:`utils.conv_output_size`)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(x_shape), generator=g, dtype=dtype)
    w = torch.randn(tuple(w_shape), generator=g, dtype=dtype)
    b = torch.randn(w_shape[0], generator=g, dtype=dtype)
    h_out = conv_output_size(x_shape[2], w_shape[2], stride, padding)
    w_out = conv_output_size(x_shape[3], w_shape[3], stride, padding)
    dout = torch.randn((x_shape[0], w_shape[0], h_out, w_out), generator=g, dtype=dtype)
    return x, w, b, dout


def random_pool_case(
    x_shape: Sequence[int], kernel_size: int, stride: int, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A max pooling's inputs (square windows, no padding): x Tensor[N, C, H, W] and an upstream gradient
    Tensor[N, C, H', W'] of the output's shape, drawn in this order from one generator seeded with ``seed``
    (H' and W' from :func:`utils.conv_output_size`)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(x_shape), generator=g, dtype=dtype)
    h_out = conv_output_size(x_shape[2], kernel_size, stride, 0)
    w_out = conv_output_size(x_shape[3], kernel_size, stride, 0)
    dout = torch.randn((x_shape[0], x_shape[1], h_out, w_out), generator=g, dtype=dtype)
    return x, dout


def random_transpose_case(
    x_shape: Sequence[int], w_shape: Sequence[int], dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A transposed convolution's inputs: x Tensor[N, C_in, H, W] and w Tensor[C_in, C_out, KH, KW] (the layout of
    ``F.conv_transpose2d``), drawn in this order from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(x_shape), generator=g, dtype=dtype)
    w = torch.randn(tuple(w_shape), generator=g, dtype=dtype)
    return x, w


# ----------------------------------------------------------------------------- nms
# The library functions the nms assignment re-implements, blocked while the student's code runs: by the notebook's
# tests (utils.testing.forbid) and by the grader (grading/hidden/nms.py), one list for both. The public functions,
# the private helpers they are built from, and the NMS operator as Python reaches it (the grader blocks that
# operator by its dispatcher name, torchvision::nms, however it is reached).
NMS_FORBIDDEN: tuple[str, ...] = (
    "torchvision.ops.box_area",
    "torchvision.ops.box_iou",
    "torchvision.ops.box_convert",
    "torchvision.ops.nms",
    "torchvision.ops.batched_nms",
    "torchvision.ops.boxes._box_inter_union",
    "torchvision.ops.boxes._batched_nms_coordinate_trick",
    "torchvision.ops.boxes._batched_nms_vanilla",
    "torchvision.ops._box_convert._box_xyxy_to_xywh",
    "torchvision.ops._box_convert._box_xywh_to_xyxy",
    "torchvision.ops._box_convert._box_xyxy_to_cxcywh",
    "torchvision.ops._box_convert._box_cxcywh_to_xyxy",
    "torch.ops.torchvision.nms",
)


def random_boxes(
    n: int, seed: int, dtype: torch.dtype = torch.float32, canvas: float = 100.0, max_size: float = 40.0
) -> Tensor:
    """Tensor[n, 4] of random (x1, y1, x2, y2) boxes: corners uniform in a ``canvas`` square, sides uniform in
    [0, ``max_size``)."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g, dtype=dtype) * canvas  # Tensor[n, 2]
    size = torch.rand(n, 2, generator=g, dtype=dtype) * max_size  # Tensor[n, 2]
    return torch.cat([corner, corner + size], dim=1)


def random_scores(n: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Tensor[n] of random scores in [0, 1) (distinct in practice), from a generator of its own for ``seed``."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed + 10_000), dtype=dtype)


def clustered_boxes(
    n: int, n_objects: int, seed: int, dtype: torch.dtype = torch.float32, canvas: float = 1000.0
) -> Tensor:
    """Tensor[n, 4]: jittered copies of ``n_objects`` object boxes, like the raw output of a detector (each box
    is one of the objects with its centre moved by 10% of its size and its sides scaled by about 15%)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n_objects, 2, generator=g, dtype=dtype) * canvas  # Tensor[O, 2]
    size = 20 + 150 * torch.rand(n_objects, 2, generator=g, dtype=dtype)  # Tensor[O, 2]
    obj = torch.randint(0, n_objects, (n,), generator=g)  # Tensor[n]
    c = centre[obj] + 0.1 * size[obj] * torch.randn(n, 2, generator=g, dtype=dtype)  # Tensor[n, 2]
    s = size[obj] * torch.exp(0.15 * torch.randn(n, 2, generator=g, dtype=dtype))  # Tensor[n, 2]
    return torch.cat([c - s / 2, c + s / 2], dim=1)


# ----------------------------------------------------------------------------- mean_average_precision
# What the mean_average_precision assignment's functions may not call, blocked while the student's code runs: by the
# notebook's tests (utils.testing.forbid) and by the grader (grading/hidden/mean_average_precision.py), one list for
# both. pycocotools' methods first (blocking them also stops a COCOeval imported under another name), then its
# classes, the course's own bridge to pycocotools (utils.detection) and the sklearn shortcuts.
MAP_FORBIDDEN: tuple[str, ...] = (
    "pycocotools.cocoeval.COCOeval.evaluate",
    "pycocotools.cocoeval.COCOeval.accumulate",
    "pycocotools.cocoeval.COCOeval.evaluateImg",
    "pycocotools.cocoeval.COCOeval.computeIoU",
    "pycocotools.cocoeval.COCOeval.summarize",
    "pycocotools.cocoeval.COCOeval.__init__",
    "pycocotools.cocoeval.COCOeval",
    "pycocotools.coco.COCO.__init__",
    "pycocotools.coco.COCO.loadRes",
    "pycocotools.coco.COCO.createIndex",
    "pycocotools.coco.COCO",
    "pycocotools.mask.iou",
    "utils.detection.coco_evaluate",
    "utils.detection.coco_matches",
    "sklearn.metrics.average_precision_score",
    "sklearn.metrics.precision_recall_curve",
    "sklearn.metrics.auc",
    "utils.detection.coco_precision_recall",
    "utils.detection.coco_average_precision",
)


def random_targets(
    num_images: int,
    num_classes: int = 3,
    seed: int = 0,
    max_objects: int = 6,
    image_size: int = 64,
    crowded: bool = False,
    empty_fraction: float = 0.0,
) -> Targets:
    """Random ground truth of ``num_images`` images: boxes Tensor[M, 4] float32 xyxy, labels Tensor[M] int64 in
    1..num_classes; 1 to ``max_objects`` objects per image (none with probability ``empty_fraction``),
    ``crowded`` packing them around two centres so that neighbouring boxes overlap a lot."""
    rng = np.random.default_rng(seed)
    targets = []
    for _ in range(num_images):
        count = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
        if crowded:  # objects packed around a few centres: neighbouring boxes overlap a lot
            centres = rng.uniform(0.3, 0.7, (2, 2)) * image_size
            xy = centres[rng.integers(0, 2, count)] + rng.normal(0, image_size * 0.05, (count, 2))
            wh = rng.uniform(0.15, 0.3, (count, 2)) * image_size
            xy = xy - wh / 2
        else:
            wh = rng.uniform(0.08, 0.35, (count, 2)) * image_size
            xy = rng.uniform(0, 1, (count, 2)) * (image_size - wh)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(rng.integers(1, num_classes + 1, count), dtype=torch.int64),
            }
        )
    return targets


def simulate_detections(
    targets: Targets,
    num_classes: int = 3,
    seed: int = 0,
    box_noise: float = 0.08,
    miss_rate: float = 0.1,
    duplicates: float = 1.0,
    false_positives: float = 1.0,
    label_noise: float = 0.05,
    image_size: int = 64,
) -> Detections:
    """A stand-in detector: noisy copies of the ground truth plus background boxes.

    For every object: missed with probability ``miss_rate``; otherwise 1 + Poisson(``duplicates``) boxes,
    each the true box with every side moved by N(0, ``box_noise`` x box size), labelled wrongly with
    probability ``label_noise``, scored higher the better it fits. Plus Poisson(``false_positives``)
    random background boxes per image with lower scores. All scores in the returned list are distinct
    (:func:`make_scores_distinct`).
    """
    rng = np.random.default_rng(seed)
    preds = []
    for target in targets:
        boxes, scores, labels = [], [], []
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            if rng.random() < miss_rate:
                continue
            size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
            for _ in range(1 + rng.poisson(duplicates)):
                noisy = np.array(box) + rng.normal(0.0, box_noise, 4) * size
                noisy[2:] = np.maximum(noisy[2:], noisy[:2] + 1.0)
                overlap = np.clip(np.minimum(noisy[2:], box[2:]) - np.maximum(noisy[:2], box[:2]), 0, None).prod()
                fit = overlap / ((noisy[2:] - noisy[:2]).prod() + size[:2].prod() - overlap)  # IoU with the object
                boxes.append(noisy)
                scores.append(1.0 / (1.0 + np.exp(-(6.0 * (fit - 0.6) + rng.normal(0.0, 1.0)))))
                labels.append(label if rng.random() >= label_noise else int(rng.integers(1, num_classes + 1)))
        for _ in range(rng.poisson(false_positives)):
            wh = rng.uniform(0.08, 0.35, 2) * image_size
            xy = rng.uniform(0, 1, 2) * (image_size - wh)
            boxes.append(np.concatenate([xy, xy + wh]))
            scores.append(rng.uniform(0.0, 0.6))
            labels.append(int(rng.integers(1, num_classes + 1)))
        preds.append(
            {
                "boxes": torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
    return make_scores_distinct(preds)


def make_scores_distinct(preds: Detections) -> Detections:
    """Nudge equal float32 scores apart, in place, over all images (a tie would make the ranking depend on the
    sort algorithm): a score already seen moves down to the next float32 until it is new. Returns ``preds``."""
    seen = set()
    for pred in preds:
        values = pred["scores"].numpy().copy()
        for i, v in enumerate(values):
            while float(v) in seen:
                v = np.nextafter(v, np.float32(-1.0))
            values[i] = v
            seen.add(float(v))
        pred["scores"] = torch.from_numpy(values)
    return preds


# ----------------------------------------------------------------------------- resnet_blocks
# torchvision's ResNet code, which the resnet_blocks assignment has the student write, blocked while the student's
# code runs: by the notebook's tests (utils.testing.forbid) and by the grader (grading/hidden/resnet_blocks.py, in
# every call, except the torchvision stand-ins a test puts in place of the student's upstream classes), one list
# for both.
RESNET_BLOCKS_FORBIDDEN: tuple[str, ...] = (
    "torchvision.models.resnet.conv3x3",
    "torchvision.models.resnet.conv1x1",
    "torchvision.models.resnet.BasicBlock",
    "torchvision.models.resnet.Bottleneck",
    "torchvision.models.resnet.ResNet",
    "torchvision.models.resnet.resnet18",
    "torchvision.models.resnet.resnet34",
    "torchvision.models.resnet.resnet50",
    "torchvision.models.resnet18",
    "torchvision.models.resnet34",
    "torchvision.models.resnet50",
)


def randomise_batchnorm_(model: nn.Module, seed: int) -> nn.Module:
    """Random statistics and affine parameters for every ``nn.BatchNorm2d`` of ``model`` (in place), so that
    every BN matters in a comparison: weight in [0.5, 1.5), bias and running mean N(0, 0.2²), running variance
    in [0.5, 1.5). Returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model


# ----------------------------------------------------------------------------- batchnorm
# What the batchnorm assignment's tests block while a student's code runs: the notebook's test cells pass it to
# utils.testing.forbid (which blocks every alias of each, e.g. torch.nn.modules.batchnorm.BatchNorm2d) and the
# hidden tests refuse it in the grader's sandbox, next to torch's internal decompositions (their LIBRARY_INTERNALS).
# The hidden tests report a method that several of these classes share under the last class listed that has it,
# so nn.BatchNorm2d, the layer the assignment builds, comes last.
BATCHNORM_FORBIDDEN: tuple[str, ...] = (
    "torch.nn.functional.batch_norm",
    "torch.nn.functional.layer_norm",
    "torch.nn.functional.group_norm",
    "torch.nn.functional.instance_norm",
    "torch.batch_norm",
    "torch.layer_norm",
    "torch.group_norm",
    "torch.instance_norm",
    "torch.native_batch_norm",
    "torch.native_layer_norm",
    "torch.native_group_norm",
    "torch.nn.LayerNorm",
    "torch.nn.GroupNorm",
    "torch.nn.InstanceNorm2d",
    "torch.nn.BatchNorm1d",
    "torch.nn.BatchNorm3d",
    "torch.nn.BatchNorm2d",
)


def _bn_parameters(
    g: torch.Generator, C: int, dtype: torch.dtype, var_offset: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(gamma, beta, running_mean, running_var)``, each ``Tensor[C]``, drawn from ``g`` in this order: N(0, 1)
    but the variance, uniform in [var_offset, var_offset + 1)."""
    gamma = torch.randn(C, generator=g, dtype=dtype)
    beta = torch.randn(C, generator=g, dtype=dtype)
    running_mean = torch.randn(C, generator=g, dtype=dtype)
    running_var = torch.rand(C, generator=g, dtype=dtype) + var_offset
    return gamma, beta, running_mean, running_var


def random_bn_case(
    x_shape: Sequence[int],
    seed: int = 0,
    *,
    scale: float,
    shift: float,
    steps: int = 1,
    x_first: bool = False,
    var_offset: float = 0.5,
    with_dout: bool = False,
    constant_feature: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
    """A batch-norm layer's inputs for ``steps`` calls: ``(gamma, beta, running_mean, running_var, xs, douts)``.

    gamma, beta, running_mean and running_var are ``Tensor[C]`` for ``x_shape = (N, C, ...)`` (N(0, 1) but the
    variance, uniform in [var_offset, var_offset + 1)); xs are ``steps`` inputs ``Tensor[x_shape]`` drawn
    N(shift, scale²), with feature 0 set to ``constant_feature`` in every one if given (variance 0); douts are
    ``steps`` upstream gradients of that shape, N(0, 1), with ``with_dout`` (else an empty list). All come from
    one generator seeded with ``seed``, in this order: the four parameters (after the inputs with ``x_first``),
    the inputs, the upstream gradients."""
    g = torch.Generator().manual_seed(seed)
    if not x_first:
        parameters = _bn_parameters(g, x_shape[1], dtype, var_offset)
    xs = [torch.randn(tuple(x_shape), generator=g, dtype=dtype) * scale + shift for _ in range(steps)]
    if constant_feature is not None:
        for x in xs:
            x[:, 0] = constant_feature
    if x_first:
        parameters = _bn_parameters(g, x_shape[1], dtype, var_offset)
    douts = [torch.randn(tuple(x_shape), generator=g, dtype=dtype) for _ in range(steps if with_dout else 0)]
    return (*parameters, xs, douts)


def random_norm_case(
    x_shape: Sequence[int], seed: int = 0, *, scale: float, shift: float, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A layer or group norm's inputs: x ``Tensor[x_shape]`` drawn N(shift, scale²) for ``x_shape = (N, C, ...)``,
    gamma and beta ``Tensor[C]`` and an upstream gradient dout of x's shape, N(0, 1), drawn in this order from one
    generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(x_shape), generator=g, dtype=dtype) * scale + shift
    gamma = torch.randn(x_shape[1], generator=g, dtype=dtype)
    beta = torch.randn(x_shape[1], generator=g, dtype=dtype)
    dout = torch.randn(tuple(x_shape), generator=g, dtype=dtype)
    return x, gamma, beta, dout


def random_fold_case(
    in_ch: int,
    out_ch: int,
    k: int,
    seed: int = 0,
    *,
    groups: int = 1,
    with_bias: bool = True,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A convolution followed by a batch norm, to fold: ``(conv_weight, conv_bias, bn_weight, bn_bias,
    running_mean, running_var, x)``, drawn in this order from one generator seeded with ``seed``.

    conv_weight ``Tensor[out_ch, in_ch // groups, k, k]`` and conv_bias ``Tensor[out_ch]`` (None without
    ``with_bias``, and not drawn), N(0, 1); the BN's weight, bias, running mean ``Tensor[out_ch]`` N(0, 1) and
    running variance uniform in [0.1, 1.1); an input x ``Tensor[2, in_ch, 7, 6]``, N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    conv_weight = torch.randn(out_ch, in_ch // groups, k, k, generator=g, dtype=dtype)
    conv_bias = torch.randn(out_ch, generator=g, dtype=dtype) if with_bias else None
    bn_weight, bn_bias, running_mean, running_var = _bn_parameters(g, out_ch, dtype, var_offset=0.1)
    x = torch.randn(2, in_ch, 7, 6, generator=g, dtype=dtype)
    return conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, x


def batchnorm2d_reference(C: int, eps: float, momentum: float, seed: int) -> nn.BatchNorm2d:
    """``nn.BatchNorm2d(C, eps, momentum)`` in float64 with weight and bias drawn N(0, 1) from torch's global
    generator seeded with ``seed`` (its state is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = nn.BatchNorm2d(C, eps=eps, momentum=momentum).double()
        with torch.no_grad():
            reference.weight.normal_()
            reference.bias.normal_()
    return reference


def batchnorm2d_steps(C: int, shape: tuple[int, int, int], steps: int, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs of ``steps + 1`` steps of a ``BatchNorm2d(C)``: xs Tensor[N, C, H, W] float64 (mean 0.7, std 1.5)
    for ``shape = (N, H, W)`` and upstream gradients douts of the same shapes, drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape[0], C, *shape[1:], generator=g, dtype=torch.float64) * 1.5 + 0.7 for _ in range(steps + 1)]
    douts = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in xs]
    return xs, douts


def record_training_steps(
    module: nn.Module, xs: Sequence[Tensor], douts: Sequence[Tensor], steps: int, lr: float
) -> list[dict[str, Tensor]]:
    """Drive a batch-norm module: ``steps`` SGD steps in training mode, then eval for the remaining inputs.
    After each forward/backward, records the output, the input's gradient, ``weight.grad``, ``bias.grad`` and
    every state_dict entry (copies), before the optimizer steps."""
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    records = []
    for step, (x, dout) in enumerate(zip(xs, douts)):
        module.train(step < steps)
        x = x.clone().requires_grad_()
        out = module(x)
        out.backward(dout)
        records.append(
            {
                "output": out.detach(),
                "gradient of the input": x.grad,
                "weight.grad": module.weight.grad.clone(),
                "bias.grad": module.bias.grad.clone(),
                **{key: value.clone() for key, value in module.state_dict().items()},
            }
        )
        optimizer.step()
        optimizer.zero_grad()
    return records
