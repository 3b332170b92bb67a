"""Trusted tests of the ``batchnorm`` assignment (instructor-only, never shipped).

Every test makes its inputs here, in the grader's process, with the seeds, shapes, dtypes and
tolerances of the notebook's test cells (the visible cases and the ones that used to be hidden in
them), and takes its expected values from PyTorch itself, run here: ``F.batch_norm``,
``F.layer_norm``, ``F.group_norm``, autograd through them, ``nn.BatchNorm2d`` trained with SGD and
``F.conv2d``. The student's functions run in the sandboxed kernel through the
:class:`~grading.trusted.Student` proxy, with the normalisation layers blocked (:data:`FORBID`) and,
for the hand-written backward passes, torch's autograd refused as well.

Several checks need the student's functions to act on tensors that stay in the kernel (the running
buffers updated in place, a cache handed from a forward to a backward pass, a module trained for
several steps, inputs that must stay unmodified). They go through the fixed probes below, which only
call the student's code in the order the notebook's tests did and hand back the raw tensors; every
comparison happens here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from grading.hidden import _substitutes as sub
from grading.trusted import ForbiddenUse, KernelFailure, Student, StudentError, grades
from utils.cases import (
    BATCHNORM_FORBIDDEN,
    batchnorm2d_reference,
    batchnorm2d_steps,
    random_bn_case,
    random_fold_case,
    random_norm_case,
    record_training_steps,
)
from utils.testing import assert_close  # names the case; expected vs got at the worst element

F64 = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-10}  # float64 comparisons with PyTorch (the notebook's TOL)
TOL32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 comparisons (the notebook's TOL32)
EXACT = {"rtol": 0.0, "atol": 0.0}

# What the notebook's tests block (utils.cases.BATCHNORM_FORBIDDEN, the one list both use; every alias is one code
# object or builtin, so a captured reference is caught too; a method the layers share with their base classes is
# reported under the last class listed that has it, nn.BatchNorm2d), then library internals that compute the same
# normalisations in Python (torch's decompositions and reference implementations), then the dispatcher operators
# all of them end in, however reached (torch.ops.aten.native_batch_norm, torch._C._nn..., a module's forward).
LIBRARY_INTERNALS = (
    "torch._decomp.decompositions.native_batch_norm_helper",
    "torch._decomp.decompositions.native_batch_norm",
    "torch._decomp.decompositions.native_batch_norm_backward",
    "torch._decomp.decompositions.batch_norm_backward",
    "torch._decomp.decompositions._native_batch_norm_legit",
    "torch._decomp.decompositions._native_batch_norm_legit_no_training",
    "torch._decomp.decompositions._native_batch_norm_legit_functional",
    "torch._decomp.decompositions._batch_norm_with_update",
    "torch._decomp.decompositions._batch_norm_no_update",
    "torch._decomp.decompositions.native_layer_norm_backward",
    "torch._decomp.decompositions.native_group_norm_backward",
    "torch._refs.native_layer_norm",
    "torch._refs.native_group_norm",
    "torch._refs.nn.functional.layer_norm",
    "torch._refs.nn.functional.group_norm",
)
FORBID = dict(
    ops=["aten::*batch_norm*", "aten::*layer_norm*", "aten::*group_norm*", "aten::*instance_norm*"],
    python=[*BATCHNORM_FORBIDDEN, *LIBRARY_INTERNALS],
)


# ----------------------------------------------------------------------------- probes (run in the kernel)
# Each probe only calls the student's functions and returns what they produced, as the notebook's tests
# did; nothing is compared or decided there. Names starting with an underscore are the grader's bindings.

# training-mode steps of batchnorm_forward on the same buffers: outputs and the buffers after each step
_FORWARD_STEPS = """
result = []
for _x in _xs:
    _out, _ = batchnorm_forward(_x, _gamma, _beta, _running_mean, _running_var, training=True,
                                momentum=_momentum, eps=_eps)
    result.append((_out, _running_mean.clone(), _running_var.clone()))
"""

# one evaluation-mode call: the output and the buffers afterwards
_FORWARD_EVAL = """
_out, _ = batchnorm_forward(_x, _gamma, _beta, _running_mean, _running_var, training=False, momentum=0.1, eps=_eps)
result = (_out, _running_mean, _running_var)
"""

# batchnorm_forward, then the backward function under test on its cache: the forward's output (which decides
# whether a wrong backward result counts) and what the backward returned
_FORWARD_BACKWARD = """
_out, _cache = batchnorm_forward(_x, _gamma, _beta, _running_mean, _running_var, training=_training, momentum=0.1,
                                 eps=_eps)
result = (_out, {backward}(_dout, _cache))
"""

# steps of spatial_batchnorm_forward + spatial_batchnorm_backward on the same buffers
_SPATIAL_STEPS = """
result = []
for _x, _dout in zip(_xs, _douts):
    _out, _cache = spatial_batchnorm_forward(_x, _gamma, _beta, _running_mean, _running_var, training=_training,
                                             momentum=_momentum, eps=_eps)
    result.append((_out, _running_mean.clone(), _running_var.clone(), spatial_batchnorm_backward(_dout, _cache)))
"""

# a forward function, then its backward on the cache: (out, what the backward returned)
_NORM_FORWARD_BACKWARD = """
_out, _cache = {forward}(_x, _gamma, _beta, *_extra, eps=_eps)
result = (_out, {backward}(_dout, _cache))
"""

# fold_batchnorm, and its tensor inputs after the call (they must be untouched)
_FOLD = """
_returned = fold_batchnorm(_conv_weight, _conv_bias, _bn_weight, _bn_bias, _running_mean, _running_var, _eps)
result = (_returned, [_conv_weight, _conv_bias, _bn_weight, _bn_bias, _running_mean, _running_var])
"""

# the module's class hierarchy, as "module.qualname" strings
_MODULE_CLASSES = """
result = [f"{_k.__module__}.{_k.__qualname__}" for _k in BatchNorm2d.__mro__]
"""

# build BatchNorm2d(C, eps, momentum).double(); it stays in the kernel inside a namespace (a handle)
_MODULE_BUILD = """
import types as _types
result = _types.SimpleNamespace(module=BatchNorm2d(*_args, **_kwargs).double())
"""

_MODULE_STATE = """
result = {str(_key): _value for _key, _value in _state.module.state_dict().items()}
"""

# load the reference's initial state and make the optimizer, as the notebook's run() did
_MODULE_LOAD = """
import torch as _torch
_state.module.load_state_dict(_initial_state)
_state.optimizer = _torch.optim.SGD(_state.module.parameters(), lr=_lr)
result = None
"""

# one step, first half: mode, forward; whether a torch.autograd.Function node is anywhere in the output's graph
# (not necessarily on the output itself: a view or a copy after the Function is fine)
_MODULE_FORWARD = """
import torch as _torch
_state.module.train(_training)
_state.x = _x.clone().requires_grad_()
_state.out = _state.module(_state.x)
_todo, _seen, result = [getattr(_state.out, "grad_fn", None)], 0, False
while _todo and _seen < 200 and not result:
    _node = _todo.pop()
    _seen += 1
    if _node is None:
        continue
    result = isinstance(_node, _torch.autograd.function.BackwardCFunction)
    _todo.extend(_next for _next, _ in getattr(_node, "next_functions", ()))
"""

# one step, second half: backward through the student's Function, the record, the SGD step
_MODULE_BACKWARD = """
import torch as _torch
_state.out.backward(_dout)
_module = _state.module
_copy = lambda _t: _t.clone() if isinstance(_t, _torch.Tensor) else _t
result = {"output": _state.out.detach(), "gradient of the input": _state.x.grad,
          "weight.grad": _copy(_module.weight.grad), "bias.grad": _copy(_module.bias.grad)}
result.update({str(_key): _copy(_value) for _key, _value in _module.state_dict().items()})
_state.optimizer.step()
_state.optimizer.zero_grad()
"""


# ----------------------------------------------------------------------------- helpers
def _run(student: Student, case: str, what: str, probe: str, **bindings: Any) -> Any:
    """``student.exec(probe)``; a failure of the student's code is reported with the case and ``what`` was called."""
    try:
        return student.exec(probe, **bindings)
    except (StudentError, ForbiddenUse, KernelFailure) as exc:
        message = str(exc)
        if message.startswith("your code"):
            message = what + message[len("your code") :]
        raise type(exc)(f"{case}: {message}") from None


def _run_steps(student: Student, case: str, what: str, probe: str, function: str, steps: int, **bindings: Any) -> list:
    """:func:`_run` of a probe that calls ``function`` once a step and returns a list of what each step gave:
    that list, or a failure naming the case when it does not hold ``steps`` of them."""
    got = _run(student, case, what, probe, **bindings)
    if not isinstance(got, list) or len(got) != steps:
        raise AssertionError(f"{case}: {function} did not run {steps} time(s)")
    return got


def _triple(case: str, function: str, grads: Any) -> tuple[Any, Any, Any]:
    """``(dx, dgamma, dbeta)`` from what a backward function returned, or a failure naming the case."""
    if not isinstance(grads, (tuple, list)) or len(grads) != 3:
        got = type(grads).__name__ + (f" of length {len(grads)}" if isinstance(grads, (tuple, list)) else "")
        raise AssertionError(f"{case}: {function} must return (dx, dgamma, dbeta), got {got}")
    return grads[0], grads[1], grads[2]


def _assert_bn_result(
    name: str,
    got: Any,
    expected: Tensor,
    running: tuple[Tensor, Tensor],
    tol: dict[str, float],
    buffers: tuple[str, str] = ("running_mean", "running_var"),
    buffer_tol: dict[str, float] | None = None,
) -> None:
    """A batch-norm forward's ``(out, running_mean, running_var)`` against the reference output and buffers;
    ``buffers`` are the buffers' names in the failure, ``buffer_tol`` their tolerance (default ``tol``)."""
    out, mean_after, var_after = got
    assert_close(f"{name}: out", out, expected, **tol)
    assert_close(f"{name}: {buffers[0]}", mean_after, running[0], **(buffer_tol or tol))
    assert_close(f"{name}: {buffers[1]}", var_after, running[1], **(buffer_tol or tol))


def _assert_grads(name: str, backward: str, grads: Any, expected: Sequence[Tensor], tol: dict[str, float]) -> None:
    """What ``backward`` returned against the reference ``(dx, dgamma, dbeta)``, each named in the failure."""
    for label, got, want in zip(("dx", "dgamma", "dbeta"), _triple(name, backward, grads), expected):
        assert_close(f"{name}: {label}", got, want, **tol)


def _reference_grads(forward: Any, dout: Tensor, *leaves: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``forward()`` with autograd here, backward with ``dout``: (output, gradients of ``leaves``)."""
    for leaf in leaves:
        leaf.grad = None
    out = forward()
    out.backward(dout)
    return out.detach(), [leaf.grad for leaf in leaves]


# ----------------------------------------------------------------------------- Part 2: forward, training
def _check_forward_train(
    student: Student,
    case: str,
    N: int,
    D: int,
    momentum: float = 0.1,
    eps: float = 1e-5,
    steps: int = 1,
    dtype: torch.dtype = F64,
    seed: int = 0,
    constant_feature: bool = False,
) -> None:
    """``steps`` training-mode calls of batchnorm_forward on ``Tensor[N, D]`` against F.batch_norm, with the
    running statistics updated in place (``constant_feature``: feature 0 has variance 0)."""
    gamma, beta, running_mean, running_var, xs, _ = random_bn_case(
        (N, D),
        seed,
        scale=2.0,
        shift=3.0,
        steps=steps,
        constant_feature=-1.25 if constant_feature else None,
        dtype=dtype,
    )
    ref_mean, ref_var = running_mean.clone(), running_var.clone()
    tol = TOL if dtype == F64 else TOL32
    got = _run_steps(
        student,
        case,
        "batchnorm_forward",
        _FORWARD_STEPS,
        "batchnorm_forward",
        steps,
        _xs=xs,
        _gamma=gamma,
        _beta=beta,
        _running_mean=running_mean,
        _running_var=running_var,
        _momentum=momentum,
        _eps=eps,
    )
    for step, (x, result) in enumerate(zip(xs, got), start=1):
        expected = F.batch_norm(x, ref_mean, ref_var, gamma, beta, training=True, momentum=momentum, eps=eps)
        _assert_bn_result(
            f"{case}, step {step}",
            result,
            expected,
            (ref_mean, ref_var),
            tol,
            ("running_mean (must be updated in place)", "running_var (in place, unbiased batch variance)"),
        )


@grades("test_batchnorm_forward_train")
def test_batchnorm_forward_train(student: Student) -> None:
    """Training mode: output and running statistics, one step and several, odd and tiny shapes, float32."""
    _check_forward_train(student, "batchnorm_forward, training, N=8, D=5", 8, 5)
    _check_forward_train(student, "batchnorm_forward, training, N=16, D=4, three steps", 16, 4, steps=3, seed=1)
    _check_forward_train(
        student,
        "batchnorm_forward, training, odd shape N=3, D=7, momentum=0.3, eps=1e-3, five steps",
        3,
        7,
        momentum=0.3,
        eps=1e-3,
        steps=5,
        seed=11,
    )
    _check_forward_train(student, "batchnorm_forward, training, smallest batch N=2, D=1", 2, 1, seed=12)
    _check_forward_train(
        student,
        "batchnorm_forward, training, N=50, D=3, momentum=0.01, four steps",
        50,
        3,
        momentum=0.01,
        steps=4,
        seed=13,
    )
    _check_forward_train(student, "batchnorm_forward, training, float32 N=10, D=6", 10, 6, dtype=torch.float32, seed=14)
    _check_forward_train(
        student,
        "batchnorm_forward, training, a constant feature (variance 0), N=5, D=3, two steps",
        5,
        3,
        steps=2,
        seed=15,
        constant_feature=True,
    )


# ----------------------------------------------------------------------------- Part 2: forward, evaluation
def _check_forward_eval(student: Student, case: str, N: int, D: int, eps: float = 1e-5, seed: int = 0) -> None:
    """Evaluation mode: normalise ``Tensor[N, D]`` with the running statistics and leave them untouched."""
    gamma, beta, running_mean, running_var, [x], _ = random_bn_case(
        (N, D), seed, scale=2.0, shift=-1.0, x_first=True, var_offset=0.2
    )
    got = _run(
        student,
        case,
        "batchnorm_forward",
        _FORWARD_EVAL,
        _x=x,
        _gamma=gamma,
        _beta=beta,
        _running_mean=running_mean,
        _running_var=running_var,
        _eps=eps,
    )
    expected = F.batch_norm(x, running_mean.clone(), running_var.clone(), gamma, beta, training=False, eps=eps)
    _assert_bn_result(
        case,
        got,
        expected,
        (running_mean, running_var),
        TOL,
        ("running_mean must not change in eval mode", "running_var must not change in eval mode"),
        EXACT,
    )


@grades("test_batchnorm_forward_eval")
def test_batchnorm_forward_eval(student: Student) -> None:
    """Evaluation mode, including a single sample."""
    _check_forward_eval(student, "batchnorm_forward, eval, N=6, D=4", 6, 4)
    _check_forward_eval(
        student, "batchnorm_forward, eval with a single sample, N=1, D=9, eps=1e-2", 1, 9, eps=1e-2, seed=21
    )
    _check_forward_eval(student, "batchnorm_forward, eval, N=7, D=2", 7, 2, seed=22)


# ----------------------------------------------------------------------------- Parts 3 and 4: backward
def _check_norm_backward(
    student: Student,
    case: str,
    backward: str,
    N: int,
    D: int,
    training: bool = True,
    eps: float = 1e-5,
    seed: int = 0,
    dtype: torch.dtype = F64,
    constant_feature: bool = False,
) -> bool:
    """The student's batchnorm_forward + ``backward`` (by name) against autograd through F.batch_norm (the
    notebook's ``check_norm_backward``); torch's autograd is refused while the student's code runs.

    The backward gets the student's own forward's cache, so a wrong backward result counts only when that
    forward's output is right on the case (a forward bug, which may spoil the cache, costs the forward's
    cell); returns whether the case was judged (False: both were wrong, nothing can be said)."""
    # constant_feature: feature 0 has variance 0, so xhat is 0 and the gradient goes through eps alone
    gamma, beta, running_mean, running_var, [x], [dout] = random_bn_case(
        (N, D),
        seed,
        scale=2.0,
        shift=1.0,
        x_first=True,
        with_dout=True,
        constant_feature=0.75 if constant_feature else None,
        dtype=dtype,
    )
    x, gamma, beta = x.requires_grad_(), gamma.requires_grad_(), beta.requires_grad_()
    tol = TOL if dtype == F64 else TOL32
    with student.forbid(autograd=True):
        got = _run(
            student,
            case,
            f"batchnorm_forward / {backward}",
            _FORWARD_BACKWARD.format(backward=backward),
            _x=x.detach(),
            _gamma=gamma.detach(),
            _beta=beta.detach(),
            _running_mean=running_mean.clone(),
            _running_var=running_var.clone(),
            _training=training,
            _eps=eps,
            _dout=dout,
        )
    expected_out, expected_grads = _reference_grads(
        lambda: F.batch_norm(x, running_mean.clone(), running_var.clone(), gamma, beta, training, 0.1, eps),
        dout,
        x,
        gamma,
        beta,
    )
    out, grads = got if isinstance(got, tuple) and len(got) == 2 else (None, got)
    try:
        _assert_grads(case, backward, grads, expected_grads, tol)
    except AssertionError:
        forward_right = (
            isinstance(out, Tensor)
            and out.shape == expected_out.shape
            and out.dtype == expected_out.dtype
            and bool(torch.allclose(out, expected_out, **tol))
        )
        if forward_right:
            raise
        return False
    return True


def _backward_cases(student: Student, backward: str, cases: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """:func:`_check_norm_backward` on every ``(case, kwargs)``; fails if not one case could be judged."""
    judged = [_check_norm_backward(student, case, backward, **kwargs) for case, kwargs in cases]
    if not any(judged):
        raise AssertionError(
            f"{backward}: on every case both batchnorm_forward and {backward} are wrong, so {backward} could not "
            "be judged on the cache your forward returns: fix batchnorm_forward first"
        )


@grades("test_batchnorm_backward")
def test_batchnorm_backward(student: Student) -> None:
    """The staged backward pass: training and evaluation caches, odd shapes, N=2, N=1 in eval, a constant
    feature (variance 0), float32."""
    _backward_cases(
        student,
        "batchnorm_backward",
        [
            ("batchnorm_backward, training, N=5, D=3", dict(N=5, D=3)),
            ("batchnorm_backward, training, N=32, D=10", dict(N=32, D=10, seed=1)),
            ("batchnorm_backward, eval-mode cache, N=4, D=6", dict(N=4, D=6, training=False, seed=2)),
            ("batchnorm_backward, odd shape N=3, D=7, eps=1e-3", dict(N=3, D=7, eps=1e-3, seed=31)),
            ("batchnorm_backward, smallest batch N=2, D=4", dict(N=2, D=4, seed=32)),
            ("batchnorm_backward, N=64, D=1", dict(N=64, D=1, seed=33)),
            ("batchnorm_backward, eval-mode cache, N=1, D=5", dict(N=1, D=5, training=False, seed=34)),
            (
                "batchnorm_backward, a constant feature (variance 0), N=6, D=3",
                dict(N=6, D=3, seed=35, constant_feature=True),
            ),
            ("batchnorm_backward, float32, N=8, D=4", dict(N=8, D=4, seed=36, dtype=torch.float32)),
        ],
    )


@grades("test_batchnorm_backward_alt")
def test_batchnorm_backward_alt(student: Student) -> None:
    """The closed-form backward pass: training and evaluation caches, odd shapes, N=2, N=100, a constant
    feature, float32."""
    _backward_cases(
        student,
        "batchnorm_backward_alt",
        [
            ("batchnorm_backward_alt, training, N=5, D=3", dict(N=5, D=3)),
            ("batchnorm_backward_alt, eval-mode cache, N=4, D=6", dict(N=4, D=6, training=False)),
            ("batchnorm_backward_alt, odd shape N=9, D=5, eps=1e-2", dict(N=9, D=5, eps=1e-2, seed=41)),
            ("batchnorm_backward_alt, smallest batch N=2, D=3", dict(N=2, D=3, seed=42)),
            ("batchnorm_backward_alt, N=100, D=2", dict(N=100, D=2, seed=43)),
            (
                "batchnorm_backward_alt, a constant feature (variance 0), N=7, D=2",
                dict(N=7, D=2, seed=44, constant_feature=True),
            ),
            ("batchnorm_backward_alt, float32, N=10, D=3", dict(N=10, D=3, seed=45, dtype=torch.float32)),
            (
                "batchnorm_backward_alt, float32, eval-mode cache, N=3, D=4",
                dict(N=3, D=4, seed=46, dtype=torch.float32, training=False),
            ),
        ],
    )


# ----------------------------------------------------------------------------- Part 6: spatial batch norm
BN_PARAMS = ["x", "gamma", "beta", "running_mean", "running_var", "training", "momentum", "eps"]
BN_DEFAULTS = {"momentum": 0.1, "eps": 1e-5}


def _rows(t: Tensor) -> Tensor:
    """``Tensor[N, C, H, W]`` -> ``Tensor[N*H*W, C]``, rows ordered by (n, h, w): what spatial BN hands the 2-D one."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _bn_tables(calls: Sequence[dict[str, Any]], offset: int = 0, spatial: bool = False) -> dict[str, dict]:
    """Trusted tables (see :mod:`._substitutes`) for ``batchnorm_forward`` and both backward passes - and, with
    ``spatial``, for ``spatial_batchnorm_forward``/``_backward`` - answering exactly the given calls. A call is
    ``dict(x, gamma, beta, running_mean, running_var, training, momentum, eps, dout)`` with 4-D x and dout;
    the answers come from F.batch_norm and autograd here, the running buffers are updated in place."""
    forward_rows, backward_rows, forward_4d, backward_4d = [], [], [], []
    for k, c in enumerate(calls):
        x = c["x"].detach().clone().requires_grad_()
        gamma = c["gamma"].detach().clone().requires_grad_()
        beta = c["beta"].detach().clone().requires_grad_()
        mean, var = c["running_mean"].clone(), c["running_var"].clone()
        out = F.batch_norm(x, mean, var, gamma, beta, c["training"], c["momentum"], c["eps"])
        dx, dgamma, dbeta = torch.autograd.grad(out, (x, gamma, beta), c["dout"])
        inplace = {"running_mean": mean, "running_var": var} if c["training"] else {}
        common = {
            key: c[key] for key in ("gamma", "beta", "running_mean", "running_var", "training", "momentum", "eps")
        }
        common = {key: (value.detach() if isinstance(value, Tensor) else value) for key, value in common.items()}
        rows_token, token_4d = sub.token(offset + 2 * k), sub.token(offset + 2 * k + 1)
        forward_rows.append(sub.entry(dict(common, x=_rows(c["x"])), (_rows(out.detach()), rows_token), inplace))
        backward_rows.append(sub.entry(dict(dout=_rows(c["dout"]), cache=rows_token), (_rows(dx), dgamma, dbeta)))
        forward_4d.append(sub.entry(dict(common, x=c["x"].detach()), (out.detach(), token_4d), inplace))
        backward_4d.append(sub.entry(dict(dout=c["dout"], cache=token_4d), (dx, dgamma, dbeta)))
    tables = {
        "batchnorm_forward": sub.table(BN_PARAMS, forward_rows, BN_DEFAULTS),
        "batchnorm_backward": sub.table(["dout", "cache"], backward_rows),
        "batchnorm_backward_alt": sub.table(["dout", "cache"], backward_rows),
    }
    if spatial:
        tables["spatial_batchnorm_forward"] = sub.table(BN_PARAMS, forward_4d, BN_DEFAULTS)
        tables["spatial_batchnorm_backward"] = sub.table(["dout", "cache"], backward_4d)
    return tables


def _check_spatial(
    student: Student,
    case: str,
    shape: tuple[int, int, int, int],
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    steps: int = 1,
    seed: int = 0,
) -> None:
    """spatial_batchnorm_forward/backward on ``Tensor[N, C, H, W]`` against F.batch_norm and autograd, over
    ``steps`` steps on the same running buffers. The student's 2-D ``batchnorm_forward`` and backward passes
    are replaced by trusted tables for the (n, h, w)-ordered rows of these inputs (a bug there costs their
    own cells); a spatial version that calls them with anything else runs the student's own."""
    gamma, beta, running_mean, running_var, xs, douts = random_bn_case(
        shape, seed, scale=2.0, shift=0.5, steps=steps, with_dout=True
    )
    gamma, beta = gamma.requires_grad_(), beta.requires_grad_()
    ref_mean, ref_var = running_mean.clone(), running_var.clone()
    calls, mean, var = [], ref_mean.clone(), ref_var.clone()
    for x, dout in zip(xs, douts):
        calls.append(
            dict(
                x=x,
                gamma=gamma,
                beta=beta,
                running_mean=mean.clone(),
                running_var=var.clone(),
                training=training,
                momentum=momentum,
                eps=eps,
                dout=dout,
            )
        )
        F.batch_norm(x, mean, var, training=training, momentum=momentum, eps=eps)  # the buffers of the next step
    with sub.substituted(student, _bn_tables(calls)), student.forbid(autograd=True):
        got = _run_steps(
            student,
            case,
            "spatial_batchnorm_forward / spatial_batchnorm_backward",
            _SPATIAL_STEPS,
            "spatial_batchnorm_forward",
            steps,
            _xs=xs,
            _douts=douts,
            _gamma=gamma.detach(),
            _beta=beta.detach(),
            _running_mean=running_mean,
            _running_var=running_var,
            _training=training,
            _momentum=momentum,
            _eps=eps,
        )
    for step, (x, dout, (out, mean_after, var_after, grads)) in enumerate(zip(xs, douts, got), start=1):
        x = x.clone().requires_grad_()
        expected, expected_grads = _reference_grads(
            lambda x=x: F.batch_norm(x, ref_mean, ref_var, gamma, beta, training, momentum, eps), dout, x, gamma, beta
        )
        name = f"{case}, step {step}"
        _assert_bn_result(name, (out, mean_after, var_after), expected, (ref_mean, ref_var), TOL)
        _assert_grads(name, "spatial_batchnorm_backward", grads, expected_grads, TOL)


@grades("test_spatial_batchnorm")
def test_spatial_batchnorm(student: Student) -> None:
    """Spatial BN: training and eval, one image, 1x1 maps, odd shapes, several steps."""
    _check_spatial(student, "spatial batchnorm, training, x [2, 3, 4, 5]", (2, 3, 4, 5))
    _check_spatial(student, "spatial batchnorm, eval, x [4, 2, 3, 3]", (4, 2, 3, 3), training=False, seed=1)
    _check_spatial(
        student,
        "spatial batchnorm, one image x [1, 4, 3, 3], momentum=0.3, three steps",
        (1, 4, 3, 3),
        momentum=0.3,
        steps=3,
        seed=51,
    )
    _check_spatial(student, "spatial batchnorm, 1x1 maps x [5, 2, 1, 1]", (5, 2, 1, 1), seed=52)
    _check_spatial(
        student,
        "spatial batchnorm, odd shape x [3, 5, 7, 2], eps=1e-3, two steps",
        (3, 5, 7, 2),
        eps=1e-3,
        steps=2,
        seed=53,
    )
    _check_spatial(student, "spatial batchnorm, eval, x [2, 6, 5, 1]", (2, 6, 5, 1), training=False, seed=54)


# ----------------------------------------------------------------------------- Part 7: layer and group norm
def _check_forward_backward(
    student: Student,
    case: str,
    forward: str,
    backward: str,
    inputs: tuple[Tensor, Tensor, Tensor, Tensor],
    extra: Sequence[Any],
    eps: float,
    reference: Any,
) -> None:
    """``forward(x, gamma, beta, *extra, eps=eps)`` then ``backward(dout, cache)`` in the kernel, against
    ``reference(x, gamma, beta)`` and autograd through it here; ``inputs`` are ``(x, gamma, beta, dout)`` of
    :func:`utils.cases.random_norm_case` (x ``Tensor[N, C, ...]``, gamma and beta ``Tensor[C]``, dout x's shape)."""
    x, gamma, beta, dout = inputs
    x, gamma, beta = x.requires_grad_(), gamma.requires_grad_(), beta.requires_grad_()
    with student.forbid(autograd=True):
        got = _run(
            student,
            case,
            f"{forward} / {backward}",
            _NORM_FORWARD_BACKWARD.format(forward=forward, backward=backward),
            _x=x.detach(),
            _gamma=gamma.detach(),
            _beta=beta.detach(),
            _dout=dout,
            _extra=list(extra),
            _eps=eps,
        )
    expected, expected_grads = _reference_grads(lambda: reference(x, gamma, beta), dout, x, gamma, beta)
    out, grads = got
    assert_close(f"{case}: out", out, expected, **TOL)
    _assert_grads(case, backward, grads, expected_grads, TOL)


def _check_layernorm(
    student: Student,
    case: str,
    N: int,
    D: int,
    eps: float = 1e-5,
    shift: float = 1.0,
    seed: int = 0,
) -> None:
    """layernorm_forward/backward on ``Tensor[N, D]`` against F.layer_norm and autograd."""
    _check_forward_backward(
        student,
        case,
        "layernorm_forward",
        "layernorm_backward",
        random_norm_case((N, D), seed, scale=3.0, shift=shift),
        (),
        eps,
        lambda x_, w_, b_: F.layer_norm(x_, (D,), w_, b_, eps),
    )


@grades("test_layernorm")
def test_layernorm(student: Student) -> None:
    """Layer norm: a single sample, two features, large offsets."""
    _check_layernorm(student, "layernorm, N=4, D=6", 4, 6)
    _check_layernorm(student, "layernorm, a single sample N=1, D=9", 1, 9, seed=61)
    _check_layernorm(student, "layernorm, two features N=7, D=2, eps=1e-3", 7, 2, eps=1e-3, seed=62)
    _check_layernorm(student, "layernorm, N=5, D=33, inputs offset by 50", 5, 33, shift=50.0, seed=63)


def _check_groupnorm(
    student: Student,
    case: str,
    shape: tuple[int, int, int, int],
    num_groups: int,
    eps: float = 1e-5,
    seed: int = 0,
) -> None:
    """groupnorm_forward/backward on ``Tensor[N, C, H, W]`` against F.group_norm and autograd."""
    _check_forward_backward(
        student,
        case,
        "groupnorm_forward",
        "groupnorm_backward",
        random_norm_case(shape, seed, scale=2.0, shift=-1.0),
        (num_groups,),
        eps,
        lambda x_, w_, b_: F.group_norm(x_, num_groups, w_, b_, eps),
    )


@grades("test_groupnorm")
def test_groupnorm(student: Student) -> None:
    """Group norm: several groups, one group (LN), one channel per group (IN), one image, 1x1 maps."""
    _check_groupnorm(student, "groupnorm, x [2, 6, 4, 4], 3 groups", (2, 6, 4, 4), 3)
    _check_groupnorm(student, "groupnorm, x [2, 4, 3, 3], 1 group (layer norm)", (2, 4, 3, 3), 1, seed=1)
    _check_groupnorm(
        student, "groupnorm, one group per channel (instance norm), x [3, 5, 4, 2]", (3, 5, 4, 2), 5, seed=71
    )
    _check_groupnorm(student, "groupnorm, x [1, 8, 5, 3], 2 groups, eps=1e-3", (1, 8, 5, 3), 2, eps=1e-3, seed=72)
    _check_groupnorm(student, "groupnorm, x [4, 12, 1, 1], 4 groups", (4, 12, 1, 1), 4, seed=73)
    _check_groupnorm(student, "groupnorm, x [2, 9, 3, 7], 3 groups", (2, 9, 3, 7), 3, seed=74)


# ----------------------------------------------------------------------------- Part 8: the module
def _build_module(student: Student, case: str, C: int, eps: float, momentum: float) -> Any:
    """The student's ``BatchNorm2d(C, eps=eps, momentum=momentum).double()``, kept in the kernel (a handle)."""
    classes = _run(student, case, "BatchNorm2d", _MODULE_CLASSES)
    if not isinstance(classes, list) or "torch.nn.modules.batchnorm._NormBase" in classes:
        raise AssertionError(f"{case}: BatchNorm2d must not subclass torch's batch-norm layers")
    return _run(
        student,
        case,
        f"BatchNorm2d({C}, eps={eps}, momentum={momentum}).double()",
        _MODULE_BUILD,
        _args=[C],
        _kwargs={"eps": eps, "momentum": momentum},
    )


def _check_module_state(student: Student, case: str, C: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
    """A new module holds what nn.BatchNorm2d holds: the same state_dict entries (in any order: the order in
    which a module registers its buffers is not part of the contract), with the same initial values."""
    state = _build_module(student, case, C, eps, momentum)
    got = _run(student, case, "BatchNorm2d.state_dict", _MODULE_STATE, _state=state)
    expected = torch.nn.BatchNorm2d(C, eps=eps, momentum=momentum).double().state_dict()
    if not isinstance(got, dict) or set(got) != set(expected):
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise AssertionError(f"{case}: state_dict keys {keys}, expected {sorted(expected)} (in any order)")
    for key, value in expected.items():
        assert_close(f"{case}: initial {key}", got[key], value, **EXACT)


def _check_module(
    student: Student,
    case: str,
    C: int,
    shape: tuple[int, int, int],
    eps: float = 1e-5,
    momentum: float = 0.1,
    steps: int = 2,
    lr: float = 0.1,
    seed: int = 0,
) -> None:
    """The student's BatchNorm2d against nn.BatchNorm2d: the reference's initial state loaded, ``steps`` SGD
    steps in training mode, then one in eval mode; outputs, gradients and the whole state after each step.

    The module is judged on its own: the student's spatial (and 2-D) batch-norm functions are replaced by
    trusted tables for exactly the calls a correct module makes (a bug in them costs their own cells). The
    backward pass must be the hand-written one (a backward stand-in is called, or a torch.autograd.Function
    node is somewhere in the output's graph): which node sits on the output itself is not checked."""
    reference = batchnorm2d_reference(C, eps, momentum, seed)
    initial_state = copy.deepcopy(reference.state_dict())
    xs, douts = batchnorm2d_steps(C, shape, steps, seed)
    expected = record_training_steps(reference, xs, douts, steps, lr)
    calls = []
    for step, (x, dout) in enumerate(zip(xs, douts)):
        before = initial_state if step == 0 else expected[step - 1]
        calls.append(
            dict(
                x=x,
                gamma=expected[step]["weight"],
                beta=expected[step]["bias"],
                running_mean=before["running_mean"],
                running_var=before["running_var"],
                training=step < steps,
                momentum=momentum,
                eps=eps,
                dout=dout,
            )
        )
    state = _build_module(student, case, C, eps, momentum)
    _run(student, case, "BatchNorm2d.load_state_dict", _MODULE_LOAD, _state=state, _initial_state=initial_state, _lr=lr)
    got: list[dict[str, Any]] = []
    with sub.substituted(student, _bn_tables(calls, spatial=True)):
        for step, (x, dout) in enumerate(zip(xs, douts)):
            training = step < steps
            mode = f"training step {step + 1}" if training else "eval after training"
            has_function = _run(
                student,
                f"{case}, {mode}",
                "BatchNorm2d.forward",
                _MODULE_FORWARD,
                _state=state,
                _training=training,
                _x=x,
            )
            sub.reset_calls(student)
            with student.forbid(python=["torch.autograd.grad"]):
                record = _run(
                    student,
                    f"{case}, {mode}",
                    "the backward pass of BatchNorm2dFunction",
                    _MODULE_BACKWARD,
                    _state=state,
                    _dout=dout,
                )
            backward_calls = sub.calls(student)
            hand_written = any(
                backward_calls.get(name)
                for name in ("spatial_batchnorm_backward", "batchnorm_backward_alt", "batchnorm_backward")
            )
            if not (hand_written or has_function is True):
                raise AssertionError(
                    f"{case}, {mode}: the gradient was not computed by a hand-written backward pass (no "
                    "torch.autograd.Function in the output's graph, and none of your backward functions was "
                    "called): build the module on BatchNorm2dFunction"
                )
            got.append(record if isinstance(record, dict) else {})
    for step, (mine, theirs) in enumerate(zip(got, expected)):
        name = f"{case}, {'training step ' + str(step + 1) if step < steps else 'eval after training'}"
        for key, value in theirs.items():
            if key not in mine:
                raise AssertionError(f"{name}: {key} is missing (not in the module's state_dict)")
            assert_close(f"{name}: {key}", mine[key], value, **TOL)


@grades("test_batchnorm2d_module_state")
def test_batchnorm2d_module_state(student: Student) -> None:
    """Construction: parameters and buffers of nn.BatchNorm2d, initial values, other eps/momentum."""
    _check_module_state(student, "BatchNorm2d(4)", 4)
    _check_module_state(student, "BatchNorm2d(7, eps=1e-3, momentum=0.3)", 7, eps=1e-3, momentum=0.3)


@grades("test_batchnorm2d_module")
def test_batchnorm2d_module(student: Student) -> None:
    """The module at work: training steps, eval; other eps/momentum, 1x1 maps, one image."""
    _check_module(student, "BatchNorm2d(3), x [4, 3, 5, 5]", 3, (4, 5, 5))
    _check_module(
        student,
        "BatchNorm2d(5, eps=1e-3, momentum=0.3), four steps, x [2, 5, 3, 4]",
        5,
        (2, 3, 4),
        eps=1e-3,
        momentum=0.3,
        steps=4,
        seed=81,
    )
    _check_module(
        student, "BatchNorm2d(2), 1x1 maps, x [6, 2, 1, 1], three steps", 2, (6, 1, 1), steps=3, lr=0.5, seed=82
    )
    _check_module(student, "BatchNorm2d(7), one image x [1, 7, 4, 3]", 7, (1, 4, 3), steps=2, seed=83)


# ----------------------------------------------------------------------------- Part 9: folding
def _expect_tensor(name: str, value: Any, shape: Sequence[int]) -> Tensor:
    """``value`` as a float64 ``Tensor[shape]``, or a failure naming the case (checked before it is used here)."""
    if not isinstance(value, Tensor):
        raise AssertionError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    assert_close(f"{name} shape", torch.tensor(value.shape), torch.tensor(list(shape)))
    if value.dtype != F64:
        raise AssertionError(f"{name}: wrong dtype, expected {F64}, got {value.dtype}")
    return value.detach()


def _check_fold(
    student: Student,
    case: str,
    in_ch: int,
    out_ch: int,
    k: int,
    with_bias: bool = True,
    eps: float = 1e-5,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    seed: int = 0,
) -> None:
    """A convolution with the folded parameters equals the convolution followed by BN (eval), computed here;
    the inputs stay untouched."""
    conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, x = random_fold_case(
        in_ch, out_ch, k, seed, groups=groups, with_bias=with_bias
    )
    returned, after = _run(
        student,
        case,
        "fold_batchnorm",
        _FOLD,
        _conv_weight=conv_weight,
        _conv_bias=conv_bias,
        _bn_weight=bn_weight,
        _bn_bias=bn_bias,
        _running_mean=running_mean,
        _running_var=running_var,
        _eps=eps,
    )
    if not isinstance(returned, (tuple, list)) or len(returned) != 2:
        raise AssertionError(f"{case}: fold_batchnorm must return (weight, bias), got {type(returned).__name__}")
    weight = _expect_tensor(f"{case}: folded weight", returned[0], conv_weight.shape)
    bias = _expect_tensor(f"{case}: folded bias", returned[1], [out_ch])
    conv_out = F.conv2d(x, conv_weight, conv_bias, stride=stride, padding=padding, groups=groups)
    expected = F.batch_norm(conv_out, running_mean, running_var, bn_weight, bn_bias, training=False, eps=eps)
    got = F.conv2d(x, weight, bias, stride=stride, padding=padding, groups=groups)
    assert_close(f"{case}: conv with folded parameters vs conv + BN", got, expected, **TOL)
    names = ["conv_weight", "conv_bias", "bn_weight", "bn_bias", "running_mean", "running_var"]
    for name, before, now in zip(names, (conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var), after):
        if before is not None:
            assert_close(f"{case}: {name} must not be modified", now, before, **EXACT)


@grades("test_fold_batchnorm")
def test_fold_batchnorm(student: Student) -> None:
    """Folding: with and without bias, 1x1, stride and padding, grouped and depthwise convolutions."""
    _check_fold(student, "fold_batchnorm, conv 3->4, 3x3, with bias", 3, 4, 3)
    _check_fold(student, "fold_batchnorm, conv 2->5, 1x1, no bias", 2, 5, 1, with_bias=False, seed=1)
    _check_fold(
        student,
        "fold_batchnorm, conv 4->6 5x5, stride 2, padding 2, eps=1e-3",
        4,
        6,
        5,
        eps=1e-3,
        stride=2,
        padding=2,
        seed=91,
    )
    _check_fold(student, "fold_batchnorm, grouped conv 6->9, groups=3, with bias", 6, 9, 3, groups=3, seed=92)
    _check_fold(
        student, "fold_batchnorm, depthwise 4->4, no bias", 4, 4, 3, with_bias=False, groups=4, padding=1, seed=93
    )
