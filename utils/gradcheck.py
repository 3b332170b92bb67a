"""Numerical gradient checking in float64, with a report of the worst element."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["rel_error", "numeric_gradient", "gradient_report", "GradientReport"]


def rel_error(x: Tensor, y: Tensor, eps: float = 1e-12) -> float:
    """Largest element-wise relative error ``|x - y| / max(eps, |x| + |y|)`` (CS231n's measure).

    Around 1e-7 or below is a pass for float64 gradients; above 1e-2 means something is wrong.
    """
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.numel() == 0:
        return 0.0
    return float(((x - y).abs() / (x.abs() + y.abs()).clamp_min(eps)).max())


def numeric_gradient(f: Callable[[Tensor], Tensor], x: Tensor, dout: Tensor, h: float = 1e-6) -> Tensor:
    """Centred-difference gradient of ``sum(f(x) * dout)`` with respect to ``x``.

    ``x`` is perturbed in place one element at a time (and restored), so ``f`` must read ``x`` afresh
    on every call. Use float64: with float32 the differences drown in rounding error.

    Args:
        f: function of ``x`` returning a tensor of ``dout``'s shape.
        x: the input, ``Tensor[...]`` (float64 recommended).
        dout: upstream gradient, same shape as ``f(x)``.
        h: step size.

    Returns:
        ``Tensor`` of ``x``'s shape: ``(f(x + h e_i) - f(x - h e_i)) . dout / 2h`` for every element i.
    """
    grad = torch.zeros_like(x)
    if not x.is_contiguous():
        raise ValueError("numeric_gradient perturbs x in place through a flat view: pass a contiguous tensor")
    flat_x, flat_grad = x.view(-1), grad.view(-1)
    with torch.no_grad():
        for i in range(flat_x.numel()):
            old = flat_x[i].item()
            flat_x[i] = old + h
            plus = f(x).clone()
            flat_x[i] = old - h
            minus = f(x).clone()
            flat_x[i] = old
            flat_grad[i] = ((plus - minus) * dout).sum() / (2 * h)
    return grad


@dataclass
class GradientReport:
    """Where an analytic gradient and a numeric one disagree most."""

    name: str
    max_rel_error: float
    index: tuple[int, ...]
    analytic: float
    numeric: float

    def __str__(self) -> str:
        return (
            f"{self.name}: max relative error {self.max_rel_error:.2e} at index {self.index} "
            f"(analytic {self.analytic:.6g}, numeric {self.numeric:.6g})"
        )


def gradient_report(analytic: Tensor, numeric: Tensor, name: str = "grad", eps: float = 1e-12) -> GradientReport:
    """Compare two gradients element by element and point at the worst one."""
    a, n = torch.as_tensor(analytic, dtype=torch.float64), torch.as_tensor(numeric, dtype=torch.float64)
    if a.shape != n.shape:
        raise ValueError(f"{name}: shapes differ, analytic {tuple(a.shape)} vs numeric {tuple(n.shape)}")
    if a.numel() == 0:
        return GradientReport(name, 0.0, (), float("nan"), float("nan"))
    err = (a - n).abs() / (a.abs() + n.abs()).clamp_min(eps)
    flat = int(err.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    return GradientReport(
        name, float(err.reshape(-1)[flat]), index, float(a.reshape(-1)[flat]), float(n.reshape(-1)[flat])
    )
