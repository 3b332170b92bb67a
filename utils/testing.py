"""Helpers for autograded tests: readable failures, forbidden functions, warnings that do not zero a cell.

nbgrader gives a test cell zero points when it raises *or* writes to stderr, so the messages here
say exactly what went wrong (which case, expected vs got, the worst element), and
:func:`warnings_to_stdout` keeps a harmless library warning from costing points.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["assert_close", "forbid", "ForbiddenFunctionError", "warnings_to_stdout"]


def _fmt(t: Tensor, limit: int = 6) -> str:
    flat = t.reshape(-1)
    body = ", ".join(f"{v:.6g}" if t.is_floating_point() else str(v) for v in flat[:limit].tolist())
    return f"[{body}{', ...' if flat.numel() > limit else ''}]"


def assert_close(
    name: str, got: Any, expected: Any, rtol: float = 1e-7, atol: float = 1e-9, check_dtype: bool = True
) -> None:
    """Raise ``AssertionError`` with a student-readable message unless ``got`` matches ``expected``.

    The message names the case, then reports the first problem found: wrong type, wrong shape,
    wrong dtype, or the worst element (its index, expected and got values) and how many elements
    are off. Tolerance as in ``torch.isclose``: ``|got - expected| <= atol + rtol * |expected|``.

    Args:
        name: the case being checked, e.g. ``"conv2d_forward_naive, stride 2, padding 1: out"``.
        got: the student's value (tensor, number, bool, or a sequence of them).
        expected: the reference value.
        rtol, atol: tolerances.
        check_dtype: also require the same dtype.
    """
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            raise AssertionError(
                f"{name}: expected a sequence of {len(expected)} values, got {type(got).__name__}"
                + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
            )
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_close(f"{name}[{i}]", g, e, rtol, atol, check_dtype)
        return
    if not isinstance(expected, Tensor):
        if not isinstance(got, (int, float, bool, Tensor)) or (isinstance(got, Tensor) and got.numel() != 1):
            raise AssertionError(f"{name}: expected a number ({expected!r}), got {type(got).__name__}: {got!r}")
        got_v, exp_v = float(got), float(expected)
        if not abs(got_v - exp_v) <= atol + rtol * abs(exp_v):
            raise AssertionError(
                f"{name}: expected {exp_v:.10g}, got {got_v:.10g} (difference {abs(got_v - exp_v):.3g})"
            )
        return
    if got is None:
        raise AssertionError(f"{name}: got None - did the function forget to return its result?")
    if not isinstance(got, Tensor):
        raise AssertionError(f"{name}: expected a torch.Tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(expected.shape):
        raise AssertionError(f"{name}: wrong shape, expected {tuple(expected.shape)}, got {tuple(got.shape)}")
    if check_dtype and got.dtype != expected.dtype:
        raise AssertionError(f"{name}: wrong dtype, expected {expected.dtype}, got {got.dtype}")
    if expected.dtype == torch.bool or not expected.is_floating_point():
        bad = got.to(expected.dtype) != expected
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise AssertionError(
                f"{name}: {int(bad.sum())} of {expected.numel()} elements differ; first at index {index}: "
                f"expected {expected[index].item()}, got {got[index].item()}\n"
                f"  expected {_fmt(expected)}\n  got      {_fmt(got.to(expected.dtype))}"
            )
        return
    g, e = got.detach().to(torch.float64).cpu(), expected.detach().to(torch.float64).cpu()
    finite_mismatch = torch.isnan(g) != torch.isnan(e)
    diff = (g - e).abs().nan_to_num(nan=0.0, posinf=float("inf"))
    bad = (diff > atol + rtol * e.abs()) | finite_mismatch
    if bool(bad.any()):
        score = torch.where(
            bad, diff.nan_to_num(posinf=1e300) + finite_mismatch.double() * 1e300, torch.zeros_like(diff)
        )
        flat = int(score.argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), e.shape)) if e.ndim else ()
        worst_diff, worst_expected = float(diff.reshape(-1)[flat]), float(e.abs().reshape(-1)[flat])
        error = (
            f"relative error {worst_diff / worst_expected:.2e}"
            if worst_expected > 0
            else f"absolute error {worst_diff:.2e}"
        )
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {e.numel()} elements are off (rtol={rtol:g}, atol={atol:g}); "
            f"worst at index {index}: expected {e.reshape(-1)[flat].item():.10g}, "
            f"got {g.reshape(-1)[flat].item():.10g} "
            f"({error})"
        )


class ForbiddenFunctionError(RuntimeError):
    """Raised when graded code calls a function the assignment asks you to write yourself."""


def _resolve(path: str) -> tuple[Any, str]:
    """``"torch.nn.functional.conv2d"`` -> (the module or class object, ``"conv2d"``)."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:-1]:
            owner = getattr(owner, attr)
        return owner, parts[-1]
    raise ValueError(f"cannot resolve {path!r}")


# namespaces where one function object often has several names (F.conv2d is torch.conv2d, ...)
_ALIAS_HOMES = (
    "torch",
    "torch.nn.functional",
    "torch.nn",
    "torch.nn.grad",
    "torch.autograd",
    "torchvision.ops",
    "torchvision.ops.boxes",
)


@contextlib.contextmanager
def forbid(*paths: str) -> Iterator[None]:
    """Make library functions raise :class:`ForbiddenFunctionError` inside the ``with`` block.

    Each path names a function or class (``"torch.nn.functional.conv2d"``, ``"torch.nn.Conv2d"``);
    every other public name bound to the same object in torch's and torchvision's main namespaces
    is blocked too, so ``torch.conv2d`` cannot stand in for ``F.conv2d``. Everything is restored on exit.

        with forbid("torch.nn.functional.conv2d", "torch.nn.functional.unfold"):
            out, cache = conv2d_forward_fast(x, w, b)
    """
    patched: list[tuple[Any, str, Any]] = []

    def blocker(label: str) -> Callable[..., Any]:
        def _blocked(*args: Any, **kwargs: Any) -> Any:
            raise ForbiddenFunctionError(
                f"{label} is not allowed in this exercise: the point is to implement it yourself."
            )

        return _blocked

    # resolve everything before patching anything, so the order of the paths does not matter
    # (e.g. "pkg.Class.method" listed after "pkg.Class")
    targets = [(path, *_resolve(path)) for path in paths]
    targets = [(path, owner, attr, getattr(owner, attr)) for path, owner, attr in targets]
    try:
        for path, owner, _attr, original in targets:
            homes = [owner] + [sys.modules[m] for m in _ALIAS_HOMES if m in sys.modules]
            for home in homes:
                for name in dir(home):
                    if name.startswith("__"):
                        continue
                    try:
                        value = getattr(home, name)
                    except Exception:
                        continue
                    if value is original and not any(p[0] is home and p[1] == name for p in patched):
                        patched.append((home, name, value))
                        setattr(home, name, blocker(path))
        yield
    finally:
        for home, name, value in reversed(patched):
            setattr(home, name, value)


def warnings_to_stdout() -> None:
    """Print Python warnings to stdout instead of stderr, for the rest of the session.

    nbgrader scores a test cell with *any* stderr output as failed, so a harmless ``UserWarning``
    from torch inside correct code would cost the student the cell's points. The warning is still
    shown, just on the other stream. Assignment notebooks call this in their locked setup cell.
    """

    def _show(message, category, filename, lineno, file=None, line=None):  # same signature as warnings.showwarning
        # line="" leaves out the source line, which could quote a hidden test
        sys.stdout.write(warnings.formatwarning(message, category, filename, lineno, line=""))

    warnings.showwarning = _show
