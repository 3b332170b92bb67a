"""Trusted tests of the assignment ``conv_backprop`` (instructor-only: never in a release or the student edition).

Every function below is the verdict of one test cell of ``solutions/conv_backprop/conv_backprop.ipynb``. It
re-checks the cell's visible cases and the cases that used to be the cell's hidden region, and computes
every input and every expected value here, in the grader's process: inputs with the generators and seeds
of the notebook's tests (:func:`utils.cases.random_conv_case`, :func:`~utils.cases.random_pool_case` and
:func:`~utils.cases.random_transpose_case`, the same functions), expected values with ``F.conv2d``,
``F.max_pool2d``, ``F.conv_transpose2d``, torch's autograd,
``torch.autograd.gradcheck`` and ``utils.conv_cost``. The student's kernel only runs the student's
functions (through the :class:`~grading.trusted.Student` proxy and fixed probes that drive them) and
hands back their results as data.

What the student may not use while their code runs (the notebook's rules):

* the library versions of what they write - blocked at the dispatcher (:data:`LIBRARY_OPS`, however the
  operator is reached) and by Python code object (:data:`LIBRARY`);
* autograd in the hand-written backward passes: ``autograd=True`` (any operator that runs inside a
  backward computed by torch's engine) plus the public autograd entry points (:data:`AUTOGRAD`). For
  ``Conv2dFunction`` the engine calls the student's backward (a probe calls its C++ entry point, so the
  public autograd functions stay blocked for the student's code); which node sits on the output is not
  checked, and the graph is retained, so ``ctx.save_for_backward`` is as good as ``ctx.cache``.

One bug, one function's points (issue 23):

* a backward pass gets the student's own forward's cache, so a wrong gradient counts only on a case where
  that forward's output is right (:func:`check_conv`, :func:`check_maxpool`);
* ``Conv2dFunction`` and ``conv_transpose2d_forward`` run with the student's conv functions replaced by
  trusted tables for their cases (:func:`_conv_stand_ins`, :mod:`grading.hidden._substitutes`); the
  separate end-to-end cell (gradcheck, one SGD step of a tiny CNN) uses the student's whole chain.

The *vectorized* check of the notebook (it counts executed Python lines on N = H' = W' = 120 with
``sys.settrace``, which the grading agent refuses during a graded call) is here the CPU seconds of the
sandbox, measured from outside, of one call on inputs that are long along one axis each (N, H' or
W' = 16384, 1x1 kernel) and on the notebook's x[120, 1, 120, 120]; a loop over the batch or the output
positions costs seconds there, the vectorized layer milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import utils
from grading.hidden import _substitutes as sub
from grading.trusted import ForbiddenUse, KernelFailure, Remote, Student, StudentError, grades
from utils.cases import (
    CONV_ARITHMETIC_FORBIDDEN,
    CONV_BACKPROP_AUTOGRAD,
    CONV_BACKPROP_FORBIDDEN,
    random_conv_case,
    random_pool_case,
    random_transpose_case,
)
from utils.testing import assert_close  # names the case, expected vs got at the worst element

# Library functions a graded function may not call, by Python path (utils.cases holds the one list, which the
# notebook's tests block too) ...
LIBRARY: tuple[str, ...] = CONV_BACKPROP_FORBIDDEN
# ... and the operators behind them, however they are reached (torch.ops.aten.*, captured references, ...):
# every convolution kernel and its backward, im2col/col2im (F.unfold/F.fold) and every max-pooling kernel.
# Tensor.unfold (aten::unfold) stays allowed, as the notebook says.
LIBRARY_OPS: tuple[str, ...] = (
    "aten::*conv*",
    "aten::im2col",
    "aten::col2im",
    "aten::*max_pool*",
    "mkldnn::*",
    "mkldnn_prepacked::*",
    "quantized::*conv*",
    "_quantized::*conv*",
    "onednn::*conv*",
    "quantized::*max_pool*",
)
# The public autograd entry points (utils.cases' list, the notebook's AUTOGRAD).
AUTOGRAD: tuple[str, ...] = CONV_BACKPROP_AUTOGRAD
# conv_arithmetic must do its own arithmetic (the notebook's BLOCK).
ARITHMETIC_HELPERS: tuple[str, ...] = CONV_ARITHMETIC_FORBIDDEN

ConvCase = tuple[Any, ...]  # (x_shape, w_shape, stride, padding) or (x_shape, w_shape, stride, padding, dtype)
PoolCase = tuple[tuple[int, int, int, int], int, int]  # (x_shape, kernel, stride)

# Vectorization check (the notebook's check_vectorized, measured from outside the kernel): CPU seconds of one
# call (after an untimed warm-up call) on each input; allowed max(CPU_FLOOR_SECONDS, CPU_FACTOR x the trusted
# im2col reference). Measured through the agent: the solution 0.00-0.08 s, the reference 0.3 ms (long inputs)
# and 0.1 s (the cube); a loop over N or H' of 4096 iterations 4-10 s, so 16384 iterations take 15 s or more.
LONG_AXIS = 16384
VECTORIZED_INPUTS: tuple[tuple[str, tuple[int, int, int, int]], ...] = (
    ("the batch", (LONG_AXIS, 1, 1, 1)),
    ("the output rows", (1, 1, LONG_AXIS, 1)),
    ("the output columns", (1, 1, 1, LONG_AXIS)),
    ("N, H' and W' (the notebook's input)", (120, 1, 120, 120)),
)
CPU_FLOOR_SECONDS = 1.0
CPU_FACTOR = 20.0


# ----------------------------------------------------------------------------- trusted inputs and references
def conv_reference(x: Tensor, w: Tensor, b: Tensor, stride: int, padding: int, dout: Tensor | None) -> tuple[Any, ...]:
    """PyTorch's answer: out Tensor[N, F, H', W'] (F.conv2d), then dx, dw, db (autograd with ``dout``; None
    without it)."""
    x, w, b = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    out = F.conv2d(x, w, b, stride=stride, padding=padding)
    if dout is None:
        return out.detach(), None, None, None
    dx, dw, db = torch.autograd.grad(out, (x, w, b), dout)
    return out.detach(), dx, dw, db


def conv2d_fast_reference(
    x: Tensor, w: Tensor, b: Tensor, stride: int, padding: int, dout: Tensor | None = None
) -> Any:
    """An im2col convolution (and its backward when ``dout`` is given), timed as the speed reference."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    h_out, w_out = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    xpad = x.new_zeros(n, c, h + 2 * padding, wd + 2 * padding)  # [N, C, H + 2P, W + 2P]
    xpad[:, :, padding : padding + h, padding : padding + wd] = x
    s_n, s_c, s_h, s_w = xpad.stride()
    cols = xpad.as_strided((n, c, kh, kw, h_out, w_out), (s_n, s_c, s_h, s_w, stride * s_h, stride * s_w)).reshape(
        n, c * kh * kw, -1
    )
    out = (w.reshape(f, -1) @ cols + b.view(1, f, 1)).view(n, f, h_out, w_out)  # [N, F, H', W']
    if dout is None:
        return out
    g = dout.reshape(n, f, -1)  # [N, F, H'*W']
    db, dw = g.sum(dim=(0, 2)), (g @ cols.transpose(1, 2)).sum(0).reshape(w.shape)
    dcols = (w.reshape(f, -1).t() @ g).view(n, c, kh, kw, h_out, w_out)
    dxpad = torch.zeros_like(xpad)
    for p in range(kh):
        for q in range(kw):
            rows = slice(p, p + stride * (h_out - 1) + 1, stride)
            columns = slice(q, q + stride * (w_out - 1) + 1, stride)
            dxpad[:, :, rows, columns] += dcols[:, :, p, q]
    return dxpad[:, :, padding : padding + h, padding : padding + wd], dw, db


def _label(name: str, x: Tensor, w: Tensor, stride: int, padding: int) -> str:
    return f"{name}, x{list(x.shape)} {x.dtype}, w{list(w.shape)}, stride {stride}, padding {padding}"


def _tolerance(dtype: torch.dtype) -> dict:
    return dict(rtol=1e-7, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- probes (kernel side: drive, not decide)
# forward (and backward) of one conv case; the cache never leaves the kernel; x and w come back to show
# whether the student's code modified its inputs.
_CONV_PROBE = """
out, cache = {forward}(x, w, b, stride, padding)
grads = {backward}(dout, cache) if with_backward else None
result = (out, grads, x, w)
"""

_MAXPOOL_PROBE = """
out, cache = maxpool2d_forward(x, kernel_size, stride)
result = (out, maxpool2d_backward(dout, cache) if with_backward else None)
"""

# calls timed for the vectorization check: the forward's cache stays in the kernel behind a handle
_FAST_FORWARD_PROBE = """
import types as _types
_out, _cache = conv2d_forward_fast(x, w, b, 1, 0)
result = _types.SimpleNamespace(cache=_cache)
"""
_FAST_BACKWARD_PROBE = """
conv2d_backward_fast(dout, state.cache)
result = None
"""

# Conv2dFunction: forward through .apply on fresh leaves; the output and its graph stay in the kernel behind
# a handle. Backward: either the student's node called directly (outside the engine), or the engine on the
# kernel's graph through its C++ entry point (the public autograd functions stay blocked), keeping the graph:
# gradcheck calls a backward more than once, which a correct Function using ctx.save_for_backward allows
# only on a retained graph.
_FUNCTION_FORWARD_PROBE = """
import types as _types
_inputs = tuple(t.detach().requires_grad_(True) for t in (x, w, b))
_out = Conv2dFunction.apply(*_inputs, stride, padding)
_node = getattr(_out, "grad_fn", None)
result = (_out, _types.SimpleNamespace(out=_out, inputs=_inputs), None if _node is None else type(_node).__name__)
"""
_FUNCTION_ENGINE_BACKWARD_PROBE = """
import torch as _torch
result = tuple(_torch.autograd.Variable._execution_engine.run_backward(
    (state.out,), (dout,), True, False, state.inputs, True, False))
"""


def _function_forward(
    student: Student, label: str, x: Tensor, w: Tensor, b: Tensor, stride: int, padding: int
) -> tuple[Any, Any]:
    """``Conv2dFunction.apply(x, w, b, stride, padding)`` in the kernel: (out, a handle on its graph). Which node
    sits on the output is not checked (a view or a copy after the Function is fine): the gradients are."""
    with student.forbid(ops=LIBRARY_OPS, python=LIBRARY + AUTOGRAD, autograd=True):
        out, state, _node = _run(student, label, _FUNCTION_FORWARD_PROBE, x=x, w=w, b=b, stride=stride, padding=padding)
    return out, state


def _function_backward(student: Student, label: str, state: Any, dout: Tensor) -> tuple[Any, ...]:
    """torch's engine on the kernel's graph with upstream gradient ``dout``: (dx, dw, db) of x, w, b."""
    with student.forbid(ops=LIBRARY_OPS, python=LIBRARY + AUTOGRAD):
        return _run(student, label, _FUNCTION_ENGINE_BACKWARD_PROBE, state=state, dout=dout)


def _run(student: Student, label: str, probe: str, **bindings: Any) -> Any:
    """``student.exec(probe, **bindings)``, with the case's label in front of the student's error or violation."""
    try:
        return student.exec(probe, **bindings)
    except (StudentError, ForbiddenUse) as error:
        raise type(error)(f"{label}: {error}") from None


# ----------------------------------------------------------------------------- shared checks
# Canaries: calls that the kernel-side guards must refuse. The guards live in the student's process; if
# the student's code switched them off (for instance by editing the grading agent), a canary goes through
# and the test fails instead of trusting that library functions were blocked.
_CANARY_PROBES: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "import torch as _torch\n"
        "result = _torch.ops.aten.convolution(_torch.zeros(1, 1, 2, 2), _torch.zeros(1, 1, 1, 1), None, [1, 1], [0, 0],"
        " [1, 1], False, [0, 0], 1).sum().item()\n",
        dict(ops=("aten::convolution",)),
    ),
    (
        "import utils.convmath as _convmath\nresult = _convmath.conv_output_size(5, 3)\n",
        dict(python=("utils.convmath.conv_output_size",)),
    ),
    (
        "import torch as _torch\n_leaf = _torch.ones(2, requires_grad=True)\n"
        "result = _torch.autograd.Variable._execution_engine.run_backward(((_leaf * 2).sum(),), (_torch.ones(()),),"
        " False, False, (_leaf,), True, False)[0]\n",
        dict(autograd=True),
    ),
)


def check_guards(student: Student, name: str) -> None:
    """Fail unless every canary of :data:`_CANARY_PROBES` is refused by the kernel-side guards."""
    for code, forbid in _CANARY_PROBES:
        try:
            with student.forbid(**forbid):
                student.exec(code)
        except ForbiddenUse:
            continue
        except StudentError:
            pass
        raise AssertionError(
            f"{name}: the grader could not confirm that library functions are blocked in your "
            "notebook (a call that must be refused was not): did your code change the grading "
            "agent or torch's dispatch machinery?"
        )


def _as_layout(t: Tensor, contiguous: bool) -> Tensor:
    """``t`` itself, or an equal tensor that is not contiguous (a transposed copy, transposed back: same values,
    strides of a transposed tensor - what ``x.transpose(2, 3)`` hands a layer)."""
    return t if contiguous else t.transpose(-1, -2).contiguous().transpose(-1, -2)


def _matches(got: Any, expected: Tensor, tol: dict) -> bool:
    """Whether the student's forward output equals the reference (shape, dtype and values within ``tol``)."""
    return (
        isinstance(got, Tensor)
        and got.shape == expected.shape
        and got.dtype == expected.dtype
        and bool(torch.allclose(got.detach(), expected, **tol))
    )


def check_conv(
    student: Student, name: str, forward: str, backward: str | None, cases: Sequence[ConvCase], check_out: bool = True
) -> None:
    """The notebook's ``check_conv``: run the student's ``forward`` (and ``backward``) on every case with the
    library and autograd blocked; compare with :func:`conv_reference`; the inputs must not be modified.

    A case is ``(x_shape, w_shape, stride, padding[, dtype[, "non-contiguous"]])``. The backward pass gets the
    student's own forward's cache, so a wrong backward result counts only on a case where that forward's
    output is right (a forward bug, which may spoil the cache, costs the forward's cell, not the backward's
    too); when both are wrong on every case the backward cannot be judged and the test fails saying so (the
    release states this rule)."""
    probe = _CONV_PROBE.format(forward=forward, backward=backward or "None")
    judged = 0
    skipped: list[str] = []
    for case in cases:
        x_shape, w_shape, stride, padding = case[:4]
        dtype = case[4] if len(case) > 4 else torch.float64
        contiguous = "non-contiguous" not in case[5:]
        x, w, b, dout = random_conv_case(x_shape, w_shape, stride, padding, dtype)
        expected = conv_reference(x, w, b, stride, padding, dout)
        x, dout = _as_layout(x, contiguous), _as_layout(dout, contiguous)
        label = _label(name, x, w, stride, padding) + ("" if contiguous else ", non-contiguous x and dout")
        tol = _tolerance(x.dtype)
        with student.forbid(ops=LIBRARY_OPS, python=LIBRARY + AUTOGRAD, autograd=True):
            out, grads, x_after, w_after = _run(
                student,
                label,
                probe,
                x=x,
                w=w,
                b=b,
                dout=dout,
                stride=stride,
                padding=padding,
                with_backward=backward is not None,
            )
        assert_close(f"{label}: x must not be modified", x_after, x)
        assert_close(f"{label}: w must not be modified", w_after, w)
        if check_out:
            assert_close(f"{label}: out", out, expected[0], **tol)
        if backward is not None:
            try:
                if not isinstance(grads, (tuple, list)) or len(grads) != 3:
                    raise AssertionError(
                        f"{label}: the backward pass must return (dx, dw, db), got "
                        f"{type(grads).__name__ if not isinstance(grads, Remote) else grads.type_name}"
                    )
                for part, got, exp in zip(("dx", "dw", "db"), grads, expected[1:]):
                    assert_close(f"{label}: {part}", got, exp, **tol)
            except AssertionError:
                if _matches(out, expected[0], tol):
                    raise  # the forward was right here: the backward is wrong
                skipped.append(label)  # the forward was wrong too: its cache may be what is wrong
                continue
            judged += 1
    if backward is not None and cases and not judged:
        raise AssertionError(
            f"{name}: on every case both {forward} and {backward} are wrong ({skipped[0]}, ...), so {backward} "
            f"could not be judged on the cache your forward returns: fix {forward} first"
        )


def check_vectorized(student: Student, name: str, backward: bool) -> None:
    """The notebook's ``check_vectorized``, timed from outside the kernel: on inputs long along N, H' or W' (and
    the notebook's x[120, 1, 120, 120]) with a 1x1 kernel, one call must stay within a generous CPU-time limit,
    which only a version without Python loops over the batch or the output positions meets."""
    g = torch.Generator().manual_seed(120)
    w = torch.randn(1, 1, 1, 1, generator=g)
    b = torch.randn(1, generator=g)
    for axis, shape in VECTORIZED_INPUTS:
        x = torch.randn(shape, generator=g)
        dout = torch.randn(shape, generator=g)  # 1x1 kernel, stride 1, no padding: out has x's shape
        start = time.process_time()
        conv2d_fast_reference(x, w, b, 1, 0, dout if backward else None)
        reference = time.process_time() - start
        limit = max(CPU_FLOOR_SECONDS, CPU_FACTOR * reference)
        label = f"{name}, x{list(shape)}, w[1, 1, 1, 1] (vectorization)"
        seconds = []
        for _ in range(2):  # the first call is a warm-up (lazy imports, allocator)
            with student.forbid(ops=LIBRARY_OPS, python=LIBRARY + AUTOGRAD, autograd=True):
                if backward:
                    state = _run(student, label, _FAST_FORWARD_PROBE, x=x, w=w, b=b)
                    with student.cpu_time() as t:
                        _run(student, label, _FAST_BACKWARD_PROBE, state=state, dout=dout)
                else:
                    with student.cpu_time() as t:
                        _run(student, label, _FAST_FORWARD_PROBE, x=x, w=w, b=b)
            seconds.append(t["seconds"])
            if t["seconds"] > 10 * limit:  # hopeless: no second call
                break
        if min(seconds) > limit:
            raise AssertionError(
                f"{name}: one call on x{list(shape)} with a 1x1 kernel took {min(seconds):.1f} CPU seconds (allowed: "
                f"{limit:.1f} s; a vectorized version needs about {max(reference, 0.01):.2f} s), so the function "
                f"loops in Python over {axis}. Vectorize it: build the im2col matrix with as_strided (or indexing) "
                "and use one matmul; a loop over the KH*KW kernel offsets is fine."
            )


def check_maxpool(student: Student, name: str, cases: Sequence[Any], backward: bool = True) -> None:
    """The notebook's ``check_maxpool``: compare with F.max_pool2d (+ autograd for dx) on ``(x_shape, k, s)`` cases
    (``(x_shape, k, s, "non-contiguous")`` hands in a transposed-layout x). The backward is judged on the cases
    where the student's own forward is right or the backward is right anyway, as in :func:`check_conv`."""
    judged = 0
    for x_shape, k, s, *flags in cases:
        x, dout = random_pool_case(x_shape, k, s, seed=1)
        x_ref = x.clone().requires_grad_(True)
        expected = F.max_pool2d(x_ref, k, s)
        (dx_expected,) = torch.autograd.grad(expected, x_ref, dout)
        contiguous = "non-contiguous" not in flags
        x = _as_layout(x, contiguous)
        label = f"{name}, x{list(x_shape)}, kernel {k}, stride {s}" + ("" if contiguous else ", non-contiguous x")
        with student.forbid(ops=LIBRARY_OPS, python=LIBRARY + AUTOGRAD, autograd=True):
            out, dx = _run(
                student, label, _MAXPOOL_PROBE, x=x, dout=dout, kernel_size=k, stride=s, with_backward=backward
            )
        if backward:
            try:
                assert_close(f"{label}: dx", dx, dx_expected)
            except AssertionError:
                if _matches(out, expected.detach(), dict(rtol=0.0, atol=0.0)):
                    raise  # the forward was right here: the backward is wrong
                continue  # the forward was wrong too: its cache may be what is wrong
            judged += 1
        else:
            assert_close(f"{label}: out", out, expected.detach())
    if backward and not judged:
        raise AssertionError(
            f"{name}: on every case both maxpool2d_forward and maxpool2d_backward are wrong, so the backward could "
            "not be judged on the cache your forward returns: fix maxpool2d_forward first"
        )


def _transpose_step4_input(x: Tensor, w: Tensor, stride: int, padding: int) -> tuple[Tensor, Tensor]:
    """What the recipe hands the stride-1 convolution of step 4: the zero-inserted, padded (or cropped) input
    Tensor[N, C_in, H'', W''] and the flipped, channel-swapped kernel Tensor[C_out, C_in, KH, KW]."""
    n, c_in, h, wd = x.shape
    kh, kw = w.shape[2:]
    z = x.new_zeros(n, c_in, (h - 1) * stride + 1, (wd - 1) * stride + 1)
    z[:, :, ::stride, ::stride] = x
    ph, pw = kh - 1 - padding, kw - 1 - padding
    z = F.pad(z, (max(pw, 0), max(pw, 0), max(ph, 0), max(ph, 0)))
    z = z[:, :, max(-ph, 0) : z.shape[2] - max(-ph, 0), max(-pw, 0) : z.shape[3] - max(-pw, 0)]
    return z, w.flip(2, 3).transpose(0, 1)


def check_transpose(student: Student, cases: Sequence[ConvCase]) -> None:
    """The notebook's ``check_transpose``: conv_transpose2d_forward against F.conv_transpose2d. The student's
    ``conv2d_forward_fast`` (step 4 of the recipe) is replaced by a trusted table for the convolutions the
    recipe asks for, so a bug there costs its own cell; any other call goes to the student's own."""
    prepared = []
    for x_shape, w_shape, stride, padding in cases:
        prepared.append((*random_transpose_case(x_shape, w_shape, seed=2), stride, padding))
    step4 = []
    for x, w, stride, padding in prepared:
        z, w_conv = _transpose_step4_input(x, w, stride, padding)
        step4.append((z.contiguous(), w_conv.contiguous(), x.new_zeros(w_conv.shape[0]), 1, 0, None))
    tables = _conv_stand_ins(step4)
    with sub.substituted(student, {"conv2d_forward_fast": tables["conv2d_forward_fast"]}):
        for x, w, stride, padding in prepared:
            expected = F.conv_transpose2d(x, w, stride=stride, padding=padding)
            label = f"conv_transpose2d_forward, x{list(x.shape)}, w{list(w.shape)}, stride {stride}, padding {padding}"
            with student.forbid(ops=LIBRARY_OPS, python=LIBRARY + AUTOGRAD, autograd=True):
                try:
                    out = student.call("conv_transpose2d_forward", x, w, stride, padding)
                except (StudentError, ForbiddenUse) as error:
                    raise type(error)(f"{label}: {error}") from None
            assert_close(label, out, expected)


class StudentConv2dFunction(torch.autograd.Function):
    """The student's ``Conv2dFunction`` as a node of the grader's autograd graph: its forward and backward run in
    the kernel (the forward's graph stays there between the two), everything around it runs here. This is
    what lets ``gradcheck`` and the tiny CNN run in the grader's process."""

    @staticmethod
    def forward(
        ctx: Any, student: Student, label: str, x: Tensor, w: Tensor, b: Tensor, stride: int, padding: int
    ) -> Tensor:
        out, state = _function_forward(student, label, x, w, b, stride, padding)
        if not isinstance(out, Tensor):
            raise AssertionError(f"{label}: Conv2dFunction.apply must return a tensor, got {type(out).__name__}")
        ctx.student, ctx.state, ctx.label = student, state, label
        ctx.shapes = [(tuple(t.shape), t.dtype) for t in (x, w, b)]
        return out.detach().clone()

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        grads = _function_backward(ctx.student, ctx.label, ctx.state, dout.contiguous())
        checked: list[Tensor] = []
        for part, got, (shape, dtype) in zip(("dx", "dw", "db"), grads, ctx.shapes):
            if not isinstance(got, Tensor) or tuple(got.shape) != shape:
                raise AssertionError(
                    f"{ctx.label}: {part} from Conv2dFunction.backward has the wrong shape "
                    f"or is missing: expected {shape}, got "
                    f"{tuple(got.shape) if isinstance(got, Tensor) else got!r}"
                )
            checked.append(got.detach().to(dtype))
        return (None, None, *checked, None, None)


def _conv_stand_ins(cases: Sequence[tuple[Tensor, Tensor, Tensor, int, int, Tensor]]) -> dict[str, dict]:
    """Tables for ``conv2d_forward_fast``/``conv2d_forward_naive`` and their backward passes on exactly these
    ``(x, w, b, stride, padding, dout)`` cases, answered by F.conv2d and autograd (see :mod:`._substitutes`).
    Each forward's cache is a token that only its own backward accepts (the fast and naive caches differ)."""
    tables: dict[str, dict] = {}
    for offset, kind in ((0, "fast"), (10_000, "naive")):
        forward, backward = [], []
        for k, (x, w, b, stride, padding, dout) in enumerate(cases):
            out, dx, dw, db = conv_reference(x, w, b, stride, padding, dout)
            args = dict(x=x, w=w, b=b, stride=stride, padding=padding)
            forward.append(sub.entry(args, (out, sub.token(offset + k))))
            if dout is not None:
                backward.append(sub.entry(dict(dout=dout, cache=sub.token(offset + k)), (dx, dw, db)))
        tables[f"conv2d_forward_{kind}"] = sub.table(
            ["x", "w", "b", "stride", "padding"], forward, dict(stride=1, padding=0)
        )
        tables[f"conv2d_backward_{kind}"] = sub.table(["dout", "cache"], backward)
    return tables


def check_function(student: Student, cases: Sequence[ConvCase]) -> None:
    """The autograd glue alone: ``Conv2dFunction.apply`` and torch's engine on it, with the student's conv
    functions replaced by trusted tables for these cases (a bug in them costs their own cells). The engine
    itself checks the contract of ``backward`` (one gradient per input of forward, None for stride, padding)."""
    prepared = []
    for x_shape, w_shape, stride, padding in cases:
        x, w, b, dout = random_conv_case(x_shape, w_shape, stride, padding)
        prepared.append((x, w, b, stride, padding, dout))
    with sub.substituted(student, _conv_stand_ins(prepared)):
        for x, w, b, stride, padding, dout in prepared:
            label = f"Conv2dFunction, x{list(x.shape)}, w{list(w.shape)}, stride {stride}, padding {padding}"
            expected = conv_reference(x, w, b, stride, padding, dout)
            out, state = _function_forward(student, label, x, w, b, stride, padding)
            assert_close(f"{label}: out", out, expected[0])
            for part, got, exp in zip(
                ("dx", "dw", "db"), _function_backward(student, label, state, dout), expected[1:]
            ):
                assert_close(f"{label}: {part} through autograd", got, exp)


def check_end_to_end(student: Student, cases: Sequence[ConvCase]) -> None:
    """The student's whole chain (Conv2dFunction on their fast conv): ``torch.autograd.gradcheck`` (fast mode),
    run here on the student's Function as a node of the grader's graph, then one SGD step of a tiny CNN."""
    for x_shape, w_shape, stride, padding in cases:
        label = f"Conv2dFunction (your whole chain), x{list(x_shape)}, w{list(w_shape)}, stride {stride}"
        x, w, b, _ = random_conv_case(x_shape, w_shape, stride, padding)
        inputs = tuple(t.clone().requires_grad_(True) for t in (x, w, b))
        try:
            torch.autograd.gradcheck(
                lambda *t, _l=label, _s=stride, _p=padding: StudentConv2dFunction.apply(student, _l, *t, _s, _p),
                inputs,
                fast_mode=True,
            )
        except (AssertionError, KernelFailure):  # the student's failure, or a dead or stuck kernel
            raise
        except Exception as error:  # GradcheckError and the engine's complaints about the returned gradients
            raise AssertionError(f"{label}: torch.autograd.gradcheck failed: {error}") from None


# ----------------------------------------------------------------------------- the test cells
@grades("test_conv_arithmetic")
def test_conv_arithmetic(student: Student) -> None:
    check_guards(student, "test_conv_arithmetic")
    for args in [
        (3, 10, (32, 32), (5, 5), 1, 2),  # the lecture's example
        (3, 96, (227, 227), (11, 11), 4, 0),  # AlexNet's first layer
        (5, 7, (13, 9), (3, 2), 3, 3),
        (16, 32, (10, 21), (1, 1), 2, 0),
        (1, 4, (6, 5), (6, 5), 1, 0),
        (8, 2, (20, 11), (4, 3), 2, 1),
    ]:
        with student.forbid(python=ARITHMETIC_HELPERS):
            got = student.call("conv_arithmetic", *args)
        cost = utils.conv_cost(args[0], args[1], args[2], args[3], stride=args[4], padding=args[5])
        assert_close(f"conv_arithmetic{args}", got, [cost.out_shape, cost.params, cost.macs])


VISIBLE_CASES: list[ConvCase] = [((2, 3, 6, 6), (4, 3, 3, 3), 1, 1), ((3, 2, 7, 7), (2, 2, 3, 3), 2, 0)]
# The hidden cases of the four conv tests (each test's list is built from these, in this order).
CONV_CASES: list[ConvCase] = [
    ((1, 2, 9, 6), (3, 2, 2, 4), 3, 2),  # non-square input and kernel, stride 3
    ((2, 3, 5, 7), (4, 3, 1, 1), 2, 0),  # 1x1 kernel
    ((1, 1, 4, 5), (2, 1, 3, 3), 1, 3),  # padding 3: outputs that see only zeros
    ((2, 2, 8, 7), (3, 2, 3, 2), 2, 1),  # the last rows/columns are not covered by any window
]
CONV_LARGE_KERNEL: ConvCase = ((1, 4, 11, 10), (5, 4, 5, 3), 3, 3)  # the fast layer's tests
CONV_STRIDE_OVER_KERNEL: ConvCase = ((3, 2, 5, 5), (2, 2, 2, 2), 3, 1)  # the backward tests: pixels no window sees
CONV_FLOAT32: ConvCase = ((2, 3, 6, 5), (2, 3, 3, 3), 2, 1, torch.float32)  # keeps the input's dtype
CONV_NON_CONTIGUOUS: list[ConvCase] = [  # the fast layer's tests (the naive loops index any layout)
    ((2, 3, 7, 5), (4, 3, 3, 2), 1, 0, torch.float64, "non-contiguous"),
    ((1, 2, 6, 6), (2, 2, 3, 3), 2, 1, torch.float64, "non-contiguous"),
]


@grades("test_conv2d_forward_naive")
def test_conv2d_forward_naive(student: Student) -> None:
    check_guards(student, "test_conv2d_forward_naive")
    check_conv(
        student,
        "conv2d_forward_naive",
        "conv2d_forward_naive",
        None,
        [*VISIBLE_CASES, *CONV_CASES, CONV_FLOAT32],
    )


@grades("test_conv2d_backward_naive")
def test_conv2d_backward_naive(student: Student) -> None:
    check_guards(student, "test_conv2d_backward_naive")
    check_conv(
        student,
        "conv2d_backward_naive",
        "conv2d_forward_naive",
        "conv2d_backward_naive",
        [*VISIBLE_CASES, *CONV_CASES, CONV_STRIDE_OVER_KERNEL, CONV_FLOAT32],
        check_out=False,
    )


@grades("test_conv2d_forward_fast")
def test_conv2d_forward_fast(student: Student) -> None:
    check_guards(student, "test_conv2d_forward_fast")
    check_conv(student, "conv2d_forward_fast", "conv2d_forward_fast", None, VISIBLE_CASES)
    check_vectorized(student, "conv2d_forward_fast", backward=False)
    check_conv(
        student,
        "conv2d_forward_fast",
        "conv2d_forward_fast",
        None,
        [*CONV_CASES, CONV_LARGE_KERNEL, CONV_FLOAT32, *CONV_NON_CONTIGUOUS],
    )


@grades("test_conv2d_backward_fast")
def test_conv2d_backward_fast(student: Student) -> None:
    check_guards(student, "test_conv2d_backward_fast")
    check_conv(
        student, "conv2d_backward_fast", "conv2d_forward_fast", "conv2d_backward_fast", VISIBLE_CASES, check_out=False
    )
    check_vectorized(student, "conv2d_backward_fast", backward=True)
    check_conv(
        student,
        "conv2d_backward_fast",
        "conv2d_forward_fast",
        "conv2d_backward_fast",
        [*CONV_CASES, CONV_LARGE_KERNEL, CONV_STRIDE_OVER_KERNEL, CONV_FLOAT32, *CONV_NON_CONTIGUOUS],
        check_out=False,
    )


# (x shape, kernel, stride[, "non-contiguous"]) of both max-pooling tests; the backward test adds one case
MAXPOOL_CASES = [
    ((2, 3, 8, 8), 2, 2),
    ((2, 2, 7, 7), 3, 2),
    ((1, 3, 9, 6), 3, 1),
    ((2, 2, 5, 7), 1, 1),
    ((1, 2, 10, 7), 2, 3),
    ((3, 1, 6, 9), 3, 3),
    ((1, 1, 4, 4), 4, 1),
]
MAXPOOL_NON_CONTIGUOUS = [((2, 3, 7, 6), 2, 2, "non-contiguous"), ((1, 2, 9, 8), 3, 2, "non-contiguous")]


@grades("test_maxpool2d_forward")
def test_maxpool2d_forward(student: Student) -> None:
    check_guards(student, "test_maxpool2d_forward")
    check_maxpool(
        student,
        "maxpool2d_forward",
        [*MAXPOOL_CASES, *MAXPOOL_NON_CONTIGUOUS],
        backward=False,
    )


@grades("test_maxpool2d_backward")
def test_maxpool2d_backward(student: Student) -> None:
    check_guards(student, "test_maxpool2d_backward")
    check_maxpool(
        student,
        "maxpool2d_backward",
        [*MAXPOOL_CASES, ((2, 2, 11, 8), 3, 2), *MAXPOOL_NON_CONTIGUOUS],
    )


@grades("test_conv_transpose2d_forward")
def test_conv_transpose2d_forward(student: Student) -> None:
    check_guards(student, "test_conv_transpose2d_forward")
    check_transpose(
        student,
        [
            ((2, 3, 4, 4), (3, 2, 3, 3), 2, 1),
            ((1, 2, 3, 3), (2, 4, 3, 3), 1, 0),
            ((1, 2, 3, 5), (2, 3, 3, 3), 3, 2),  # non-square input, stride 3
            ((2, 2, 4, 3), (2, 3, 1, 1), 2, 0),  # 1x1 kernel
            ((1, 2, 4, 4), (2, 2, 1, 1), 3, 1),  # K - P - 1 < 0: crop instead of pad
            ((2, 3, 5, 4), (3, 2, 4, 4), 2, 3),  # padding 3
            ((1, 1, 2, 6), (1, 2, 2, 2), 3, 0),
            ((1, 2, 4, 3), (2, 3, 2, 3), 2, 1),  # KH != KW
            ((2, 1, 3, 4), (1, 2, 3, 1), 3, 1),  # KH != KW, a 3x1 kernel: crop along W only
        ],
    )


@grades("test_conv2d_function")
def test_conv2d_function(student: Student) -> None:
    check_guards(student, "test_conv2d_function")
    check_function(
        student,
        VISIBLE_CASES
        + [((1, 2, 9, 6), (3, 2, 2, 4), 3, 2), ((2, 3, 5, 7), (4, 3, 1, 1), 2, 0), ((2, 2, 8, 7), (3, 2, 3, 2), 2, 1)],
    )


@grades("test_conv2d_end_to_end")
def test_conv2d_end_to_end(student: Student) -> None:
    check_guards(student, "test_conv2d_end_to_end")
    check_end_to_end(student, [((2, 3, 6, 6), (4, 3, 3, 3), 1, 1), ((1, 2, 9, 6), (3, 2, 2, 4), 3, 2)])
    # one SGD step of a tiny float64 net on the student's Conv2dFunction equals the same step with F.conv2d
    g = torch.Generator().manual_seed(3)
    images = torch.randn(4, 1, 10, 10, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    w1 = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64) * 0.3
    b1 = torch.randn(5, generator=g, dtype=torch.float64) * 0.1
    head = torch.randn(3, 5 * 5 * 5, generator=g, dtype=torch.float64) * 0.1
    reference_params = [t.clone().requires_grad_(True) for t in (w1, b1, head)]
    student_params = [t.clone().requires_grad_(True) for t in (w1, b1, head)]
    logits = (
        F.relu(F.conv2d(images, reference_params[0], reference_params[1], stride=2, padding=1)).flatten(1)
        @ reference_params[2].T
    )
    reference_grads = torch.autograd.grad(F.cross_entropy(logits, labels), reference_params)
    label = "Conv2dFunction inside a tiny CNN (your whole chain)"
    hidden = F.relu(StudentConv2dFunction.apply(student, label, images, student_params[0], student_params[1], 2, 1))
    loss = F.cross_entropy(hidden.flatten(1) @ student_params[2].T, labels)
    student_grads = torch.autograd.grad(loss, student_params)
    assert_close(f"{label}: gradients of (w1, b1, head)", list(student_grads), list(reference_grads))
