"""Seeding, devices, a small training loop with progress bars, a mini-batch loop with a custom loss, and model
accounting."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "set_seed",
    "get_device",
    "History",
    "fit",
    "train_minibatches",
    "evaluate",
    "count_parameters",
    "count_flops",
    "flops_by_module",
]


def set_seed(seed: int = 0, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; on a GPU, also make torch pick deterministic algorithms.

    PyTorch's CPU kernels give the same result on every run for a fixed seed and thread count, so
    the CPU needs nothing more. On a GPU, ``deterministic=True`` calls
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an op without a deterministic
    version warns instead of failing) and sets ``CUBLAS_WORKSPACE_CONFIG``. That call is skipped on
    the CPU on purpose: it imports the torch compiler's configuration, 1.5 s added to every kernel
    start and every graded notebook.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False


def get_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``mps`` on Apple silicon, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class History:
    """Per-epoch metrics recorded by :func:`fit` (accuracies are ``nan`` for non-classification losses)."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def best_epoch(self, metric: str = "val_loss") -> int:
        """Index of the best epoch (lowest loss, highest accuracy)."""
        values = np.asarray(getattr(self, metric), dtype=float)
        return int(np.nanargmax(values) if metric.endswith("acc") else np.nanargmin(values))


def _accuracy_count(output: Tensor, target: Tensor) -> tuple[int, bool]:
    """Correct predictions in a batch, and whether accuracy makes sense for it."""
    if output.ndim == 2 and target.ndim == 1 and not target.is_floating_point():
        return int((output.argmax(dim=1) == target).sum()), True
    return 0, False


def _run_epoch(model, loader, loss_fn, device, optimizer=None, bar=None) -> tuple[float, float]:
    training = optimizer is not None
    model.train(training)
    total_loss, correct, seen, classify = 0.0, 0, 0, True
    with torch.set_grad_enabled(training):
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            batch = inputs.shape[0]
            total_loss += float(loss.detach()) * batch
            hits, is_classification = _accuracy_count(outputs.detach(), targets)
            correct += hits
            classify = classify and is_classification
            seen += batch
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    accuracy = correct / seen if classify and seen else float("nan")
    return total_loss / max(seen, 1), accuracy


def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``loader`` in eval mode, without gradients.

    Returns:
        ``(loss, accuracy)``; accuracy is ``nan`` unless the outputs are logits ``Tensor[B, K]`` and the
        targets class indices ``Tensor[B]``.
    """
    device = device or next(model.parameters()).device
    return _run_epoch(model, loader, loss_fn, device)


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    scheduler=None,
    progress: bool = True,
    device: torch.device | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs and record loss/accuracy per epoch.

    Args:
        model: the network; it is moved to ``device`` (default: the device of its parameters).
        train_loader, val_loader: iterables of ``(inputs, targets)`` batches; ``val_loader`` may be None.
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        epochs: number of passes over ``train_loader``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar Tensor``.
        scheduler: optional LR scheduler, stepped once per epoch.
        progress: show ``tqdm.auto`` bars (a widget in JupyterLab, text in a terminal/CI).

    Returns:
        a :class:`History` with one entry per epoch.
    """
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    model.to(device)
    history = History()
    try:
        steps = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps = None
    for epoch in range(epochs):
        start = time.perf_counter()
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False) if progress else None
        train_loss, train_acc = _run_epoch(model, train_loader, loss_fn, device, optimizer, bar)
        if bar is not None:
            bar.close()
        val_loss, val_acc = (
            _run_epoch(model, val_loader, loss_fn, device) if val_loader is not None else (float("nan"),) * 2
        )
        history.lr.append(optimizer.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
        history.train_loss.append(train_loss)
        history.train_acc.append(train_acc)
        history.val_loss.append(val_loss)
        history.val_acc.append(val_acc)
        history.seconds.append(time.perf_counter() - start)
        if progress:
            tqdm.write(
                f"epoch {epoch + 1:>3}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
                f"val loss {val_loss:.4f} acc {val_acc:.3f}"
            )
    return history


def train_minibatches(
    model: nn.Module,
    n: int,
    batch_loss: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip_grad_norm: float | None = None,
) -> list[float]:
    """Train on shuffled mini-batches of the indices ``0 .. n-1`` with a loss the caller computes per batch.

    For training data that is not ``(inputs, targets)`` batches (lists of target dicts, random flips of
    precomputed features, triplets mined inside the batch), where :func:`fit` does not apply. Each epoch:
    ``model.train()``, then for each ``idx`` of ``torch.randperm(n, generator=generator).split(batch_size)``:
    ``loss = batch_loss(idx)``, ``optimizer.zero_grad()``, ``loss.backward()``, clip the gradient norm to
    ``clip_grad_norm`` if given, ``optimizer.step()``, then ``scheduler.step()`` if given (once per step, e.g. a
    ``OneCycleLR`` over ``epochs * ceil(n / batch_size)`` steps).

    The epoch's permutation is drawn from ``generator`` before the epoch's first batch, and ``batch_loss`` may
    draw from the same generator (random flips, sampled triplets): the random numbers are consumed in the order
    of the loop written out, so a run is reproduced exactly from the generator's seed.

    Args:
        model: the network being trained (put in training mode, and the parameters whose gradient is clipped).
        n: the number of training examples.
        batch_loss: ``batch_loss(idx) -> scalar Tensor``, the loss of the examples ``idx`` (``Tensor[B]``, int64,
            on the CPU; ``B = batch_size`` except in the last batch of an epoch).
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        epochs: number of passes over the ``n`` examples.
        batch_size: examples per step.
        generator: the CPU ``torch.Generator`` of the permutations.
        scheduler: optional LR scheduler, stepped after every optimizer step.
        clip_grad_norm: optional ``max_norm`` of ``torch.nn.utils.clip_grad_norm_`` before every step.

    Returns:
        the mean training loss of each epoch, weighted by batch size (``sum(loss * B / n)``, so a short last
        batch counts for its size).
    """
    history = []
    for _epoch in range(epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            loss = batch_loss(idx)
            optimizer.zero_grad()
            loss.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(idx) / n
        history.append(total)
    return history


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int] | Tensor) -> int:
    """Forward-pass FLOPs of ``model`` on one input, counted by ``torch.utils.flop_counter``.

    A multiply-accumulate counts as 2 FLOPs (so a conv costs ``2 * C_out * C_in * K * K * H' * W'``
    per image); papers that quote "FLOPs" usually mean MACs, i.e. half of this number.

    Args:
        model: the network, run in eval mode under ``torch.no_grad``.
        input_shape: a full shape including the batch dimension (e.g. ``(1, 3, 224, 224)``) or a tensor.
    """
    return flops_by_module(model, input_shape)[""]


def flops_by_module(model: nn.Module, input_shape: Sequence[int] | Tensor) -> dict[str, int]:
    """Forward-pass FLOPs of ``model`` and of each sub-module that does any, in one counted forward pass.

    The pass runs in eval mode under ``torch.no_grad`` (the training mode is restored afterwards), so forward
    hooks registered on the sub-modules beforehand see it too (e.g. to record output shapes).

    Args:
        model: the network.
        input_shape: a full shape including the batch dimension (e.g. ``(1, 3, 224, 224)``) or a tensor.

    Returns:
        ``{name: FLOPs}`` keyed by the names of ``model.named_modules()``: ``""`` is the whole model (always
        present, the number :func:`count_flops` returns), ``"layer1.0.conv1"`` a sub-module's own calls
        including its children's; a sub-module that does no counted operation is absent.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(iter(model.parameters()), torch.empty(0)).device
    x = input_shape if isinstance(input_shape, Tensor) else torch.zeros(tuple(input_shape), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    root = type(model).__name__  # the counter names modules "<root class>.<name in named_modules()>"
    flops = {
        key[len(root) + 1 :]: sum(ops.values())
        for key, ops in counter.get_flop_counts().items()
        if key.startswith(f"{root}.")
    }
    flops[""] = int(counter.get_total_flops())
    return flops
