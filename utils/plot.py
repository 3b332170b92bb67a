"""Plot helpers. Each takes ``ax=None`` (a new figure is made when omitted) and returns the Axes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .data import SHAPE_CLASSES

__all__ = [
    "show_images",
    "plot_history",
    "draw_boxes",
    "draw_detections",
    "plot_layer_stats",
    "record_layer_stats",
    "plot_layer_log_hist",
]


def _axes(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _to_hwc(image: Tensor) -> np.ndarray:
    """``Tensor[C, H, W]`` (float in [0, 1] or uint8) -> ``ndarray[H, W, C]`` or ``[H, W]`` for imshow."""
    img = image.detach().cpu()
    if img.dtype == torch.uint8:
        img = img.float() / 255.0
    img = img.float().clamp(0, 1)
    if img.ndim == 3:
        img = img.permute(1, 2, 0)
        if img.shape[-1] == 1:
            img = img[..., 0]
    return img.numpy()


def show_images(
    images: Tensor | Sequence[Tensor],
    labels: Sequence | None = None,
    ncols: int = 8,
    ax=None,
    title: str | None = None,
    cmap: str = "gray",
    padding: int = 2,
):
    """Draw a grid of images ``Tensor[B, C, H, W]`` (or a list of ``Tensor[C, H, W]`` of one size) on one Axes.

    ``labels`` (one per image) are written in the top-left corner of each tile.
    """
    from torchvision.utils import make_grid

    batch = torch.stack(list(images)) if not isinstance(images, Tensor) else images
    if batch.dtype == torch.uint8:
        batch = batch.float() / 255.0
    ncols = min(ncols, batch.shape[0])
    grid = make_grid(batch.detach().cpu().float(), nrow=ncols, padding=padding, pad_value=1.0)
    nrows = (batch.shape[0] + ncols - 1) // ncols
    ax = _axes(ax, figsize=(1.2 * ncols, 1.2 * nrows + 0.3))
    ax.imshow(_to_hwc(grid) if batch.shape[1] == 3 else grid[0].numpy(), cmap=cmap, vmin=0, vmax=1)
    if labels is not None:
        h, w = batch.shape[-2:]
        for i, label in enumerate(labels):
            r, c = divmod(i, ncols)
            ax.text(
                c * (w + padding) + padding + 1,
                r * (h + padding) + padding + 1,
                str(label),
                color="yellow",
                fontsize=8,
                va="top",
                ha="left",
                bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0),
            )
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_history(history, ax=None, metric: str = "loss", label: str | None = None):
    """Train (solid) and validation (dashed) curves of a :class:`utils.train.History` per epoch.

    ``metric`` is ``"loss"`` or ``"acc"``; ``label`` prefixes the legend (to overlay several runs).
    """
    ax = _axes(ax)
    epochs = np.arange(1, history.epochs + 1)
    prefix = f"{label} " if label else ""
    train = getattr(history, f"train_{metric}")
    (line,) = ax.plot(epochs, train, "-o", ms=3, label=f"{prefix}train")
    val = np.asarray(getattr(history, f"val_{metric}"), dtype=float)
    if np.isfinite(val).any():
        ax.plot(epochs, val, "--", color=line.get_color(), label=f"{prefix}validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy" if metric == "acc" else "loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def draw_boxes(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor | None = None,
    scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    ax=None,
    colors: Sequence | None = None,
    linestyle: str = "-",
    title: str | None = None,
):
    """Draw ``boxes`` ``Tensor[K, 4]`` (x1, y1, x2, y2 pixels) on ``image`` ``Tensor[C, H, W]``.

    Each box is captioned with its class name (or label) and score when given; boxes of one
    class share a colour. Pass ``image=None`` to draw on an existing Axes.
    """
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    ax = _axes(ax, figsize=(4, 4))
    if image is not None:
        ax.imshow(_to_hwc(image), cmap="gray")
    palette = colors or plt.get_cmap("tab10").colors
    boxes = torch.as_tensor(boxes).detach().cpu().reshape(-1, 4)
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cls = int(labels[k]) if labels is not None else 0
        color = palette[cls % len(palette)]
        # pixel (i, j) covers [j, j+1) x [i, i+1); imshow centres it at (j, i), hence the -0.5
        ax.add_patch(
            patches.Rectangle(
                (x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.8, edgecolor=color, linestyle=linestyle
            )
        )
        caption = []
        if labels is not None:
            caption.append(class_names[cls] if class_names is not None else str(cls))
        if scores is not None:
            caption.append(f"{float(scores[k]):.2f}")
        if caption:
            ax.text(
                x1 - 0.5,
                y1 - 1.0,
                " ".join(caption),
                color="white",
                fontsize=7,
                va="bottom",
                bbox=dict(facecolor=color, alpha=0.8, pad=1, lw=0),
            )
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def draw_detections(
    image: Tensor | None,
    target: dict[str, Tensor],
    detections: dict[str, Tensor],
    score_threshold: float = 0.5,
    ax=None,
    title: str | None = None,
    class_names: Sequence[str] | None = SHAPE_CLASSES,
):
    """One image's ground truth and the detections scoring above ``score_threshold``, with :func:`draw_boxes`.

    Args:
        image: ``Tensor[C, H, W]``, or None to draw on ``ax`` as it is.
        target: ``{"boxes": Tensor[M, 4]}`` (x1, y1, x2, y2 pixels), drawn dashed white, without captions.
        detections: ``{"boxes": Tensor[N, 4], "scores": Tensor[N], "labels": Tensor[N] int64}``; those with
            score > ``score_threshold`` are drawn solid, one colour per class, captioned with class name and score.
        class_names: the captions' names of the labels (default :data:`utils.SHAPE_CLASSES`); None: the labels.

    Returns:
        the Axes (a new one when ``ax`` is None).
    """
    ax = draw_boxes(image, target["boxes"], ax=ax, colors=["white"], linestyle="--")
    shown = torch.as_tensor(detections["scores"]) > score_threshold  # Tensor[N] bool
    return draw_boxes(
        None,
        torch.as_tensor(detections["boxes"])[shown],
        torch.as_tensor(detections["labels"])[shown],
        torch.as_tensor(detections["scores"])[shown],
        class_names=class_names,
        ax=ax,
        title=title,
    )


def record_layer_stats(
    model: nn.Module,
    x: Tensor,
    layer_types: tuple[type[nn.Module], ...] = (nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.Sigmoid),
    loss_fn=None,
) -> dict[str, list[Tensor]]:
    """Run ``model(x)`` (and a backward pass of ``loss_fn(out)``, default ``out.pow(2).mean()``) and record,
    for every sub-module of one of ``layer_types`` in order, its output activations and their gradients.

    Returns:
        ``{"names": [...], "activations": [Tensor, ...], "gradients": [Tensor, ...]}`` (flattened, detached).
    """
    names, acts, outputs = [], [], []
    hooks = []

    def hook(name):
        def _fn(_module, _inp, out):
            out.retain_grad()
            names.append(name)
            outputs.append(out)

        return _fn

    for name, module in model.named_modules():
        if isinstance(module, layer_types):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        x = x.detach().requires_grad_(False)
        out = model(x)
        loss = loss_fn(out) if loss_fn is not None else out.pow(2).mean()
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    acts = [o.detach().flatten() for o in outputs]
    grads = [(o.grad if o.grad is not None else torch.zeros_like(o)).detach().flatten() for o in outputs]
    return {"names": names, "activations": acts, "gradients": grads}


def plot_layer_stats(
    values: Sequence[Tensor],
    names: Sequence[str] | None = None,
    ax=None,
    bins: int = 60,
    title: str | None = None,
    value_range: tuple[float, float] | None = None,
):
    """Per-layer histograms of activations (or gradients), one outline per layer, coloured from first
    (dark) to last (light) layer; the legend gives each layer's standard deviation.

    Args:
        values: one tensor per layer (any shape; flattened).
        names: layer names for the legend (default ``layer 1``, ``layer 2``, ...).
        value_range: histogram range; default symmetric around 0 covering every layer.
    """
    import matplotlib.pyplot as plt

    ax = _axes(ax)
    flat = [torch.as_tensor(v).detach().float().flatten().cpu() for v in values]
    if value_range is None:
        bound = max((float(v.abs().max()) for v in flat if v.numel()), default=1.0) or 1.0
        value_range = (-bound, bound)
    cmap = plt.get_cmap("viridis")
    for i, v in enumerate(flat):
        label = names[i] if names is not None else f"layer {i + 1}"
        ax.hist(
            v.numpy(),
            bins=bins,
            range=value_range,
            histtype="step",
            density=True,
            lw=1.2,
            color=cmap(i / max(len(flat) - 1, 1)),
            label=f"{label} (std {float(v.std()):.2g})",
        )
    ax.set_xlabel("value")
    ax.set_ylabel("density")
    if len(flat) <= 12:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def plot_layer_log_hist(
    values: Sequence[Tensor],
    ax=None,
    bins: int = 60,
    title: str | None = None,
    xlabel: str = "log10 |value|",
    colorbar: bool = True,
):
    """Per-layer histograms of ``log10 |v|``, for layers whose scales differ by orders of magnitude.

    One outline per layer, coloured from the first (dark) to the last (light) layer, with a colourbar that
    names the layer. Exact zeros (half of every ReLU output) have no logarithm: they are left out (the y axis
    says "non-zero values"). The x range covers every non-zero value of every layer.

    Args:
        values: one tensor per layer (any shape; flattened).
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    ax = _axes(ax)
    logs = []
    for v in values:
        flat = torch.as_tensor(v).detach().double().flatten().cpu().abs()
        logs.append(torch.log10(flat[flat > 0]).numpy())
    filled = [lv for lv in logs if lv.size]
    low = min((float(lv.min()) for lv in filled), default=-1.0)
    high = max((float(lv.max()) for lv in filled), default=1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    cmap = plt.get_cmap("viridis")
    norm = Normalize(vmin=1, vmax=max(len(logs), 2))
    for i, lv in enumerate(logs):
        if lv.size:
            ax.hist(lv, bins=bins, range=(low, high), histtype="step", density=True, lw=1.2, color=cmap(norm(i + 1)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density (non-zero values)")
    if colorbar:
        ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layer")
    if title:
        ax.set_title(title)
    return ax
