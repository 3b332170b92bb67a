"""Trusted tests of the assignment ``resnet_blocks`` (instructor-only, never shipped).

Every ``@grades`` function below runs in the grader's process. It builds torchvision's modules here
(``torchvision.models.resnet`` is the reference of every case), gives their BatchNorms random
statistics with :func:`utils.cases.randomise_batchnorm_`, sends their ``state_dict`` (tensors) to the student's kernel,
loads it into the student's module there with ``load_state_dict(strict=True)``, runs the student's
forward pass there and compares the result here with torchvision's output computed here.

The student's modules never leave the kernel: they are :class:`~grading.trusted.Remote` handles.
Their structure (sub-module names, classes, convolution strides, channel counts, parameter counts,
state_dict keys) comes back as plain data from one fixed probe, :data:`DESCRIBE`, and every
decision about it is made here. torchvision's ResNet code is refused in every call (:data:`FORBIDDEN`,
see :func:`graded`), except the torchvision stand-ins a test puts in place of the student's upstream
classes (:data:`STAND_INS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from grading.hidden import _substitutes as sub
from grading.trusted import ForbiddenUse, Remote, Student, StudentError, grades
from utils.cases import RESNET_BLOCKS_FORBIDDEN, randomise_batchnorm_
from utils.testing import assert_close

TV = torchvision.models.resnet
FORBIDDEN: tuple[str, ...] = RESNET_BLOCKS_FORBIDDEN  # torchvision's ResNet code (the notebook's list too)
# Refused in every call of every test (see :func:`graded`), except the torchvision code a test injects.

# Stand-ins for the student's upstream code (one bug, one function's points): torchvision's own, under the
# student's names, so that e.g. the ResNet test does not fail because the student's Bottleneck is wrong.
STAND_INS: dict[str, tuple[str, dict]] = {
    "conv3x3": (
        "torchvision.models.resnet.conv3x3",
        sub.library_function("conv3x3", "torchvision.models.resnet.conv3x3"),
    ),
    "conv1x1": (
        "torchvision.models.resnet.conv1x1",
        sub.library_function("conv1x1", "torchvision.models.resnet.conv1x1"),
    ),
    "BasicBlock": (
        "torchvision.models.resnet.BasicBlock",
        sub.library_class("BasicBlock", "BasicBlock", "torchvision.models.resnet"),
    ),
    "Bottleneck": (
        "torchvision.models.resnet.Bottleneck",
        sub.library_class("Bottleneck", "Bottleneck", "torchvision.models.resnet"),
    ),
    "ResNet": ("torchvision.models.resnet.ResNet", sub.library_class("ResNet", "ResNet", "torchvision.models.resnet")),
}
HELPERS = ("conv3x3", "conv1x1")
BLOCKS = (*HELPERS, "BasicBlock", "Bottleneck")


def graded(cell_id: str, inject: Sequence[str] = ()) -> Any:
    """Register the decorated function as the trusted test of ``cell_id``, run with :data:`FORBIDDEN` refused
    in every call and the student's names ``inject`` replaced by torchvision's (:data:`STAND_INS`), whose
    code alone is then allowed."""

    def register(func: Any) -> Any:
        allowed = {STAND_INS[name][0] for name in inject}

        def run_test(student: Student) -> None:
            with student.forbid(python=[p for p in FORBIDDEN if p not in allowed]):
                if not inject:
                    func(student)
                    return
                with sub.substituted(student, {name: STAND_INS[name][1] for name in inject}):
                    func(student)

        run_test.__doc__ = func.__doc__
        grades(cell_id)(run_test)
        return func

    return register


# ----------------------------------------------------------------------------- kernel probes (drive, never decide)
# The structure of the module ``model``: for every named sub-module its name, id, the (module, qualname)
# of every class of its type's MRO, plain-data attributes and child names; the parameters (name, numel,
# requires_grad) and the state_dict keys. Raw data only: every check is made on the trusted side.
DESCRIBE = """
import builtins as _b
import torch as _torch
_PLAIN = (int, float, bool, str)
_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
          "num_features", "in_features", "out_features", "output_size", "in_planes", "out_planes")

def _plain(v):
    if v is None or _b.isinstance(v, _PLAIN):
        return v
    if _b.isinstance(v, (_b.tuple, _b.list)) and _b.all(v_ is None or _b.isinstance(v_, _PLAIN) for v_ in v):
        return _b.tuple(v)
    return "<" + _b.type(v).__name__ + ">"

_modules = []
for _name, _m in model.named_modules():
    _attrs = {}
    for _a in _ATTRS:
        try:
            _v = _b.getattr(_m, _a)
        except Exception:
            continue
        _attrs[_a] = _plain(_v)
    _bias = _m._parameters.get("bias", "absent") if _b.isinstance(_m._parameters, _b.dict) else "absent"
    _attrs["bias"] = "absent" if _b.isinstance(_bias, _b.str) else ("none" if _bias is None else "parameter")
    _length = _b.len(_m) if _b.hasattr(_b.type(_m), "__len__") else None
    _modules.append((_name, _b.id(_m), [(_b.str(_c.__module__), _b.str(_c.__qualname__)) for _c in _b.type(_m).__mro__],
                     _attrs, [_n for _n, _ in _m.named_children()], _length))
result = {"modules": _modules,
          "params": [(_n, _b.int(_p.numel()), _b.bool(_p.requires_grad)) for _n, _p in model.named_parameters()],
          "state": [_b.str(_k) for _k in model.state_dict().keys()]}
"""

# Run ``model`` in float64, eval mode unless ``train``, without autograd, on ``x``.
FORWARD = """
import torch as _torch
model.double().train(train)
with _torch.no_grad():
    result = model(x)
"""

# Call ``model`` in eval mode without autograd, then return ``x`` as it is afterwards (modified in place?).
INPUT_AFTER_CALL = """
import torch as _torch
with _torch.no_grad():
    model.eval()(x)
result = x
"""

# Zero the last BatchNorm's gamma and beta of a residual branch (``bn`` is "bn2" or "bn3").
ZERO_BRANCH = """
import torch as _torch
with _torch.no_grad():
    getattr(model, bn).weight.zero_()
    getattr(model, bn).bias.zero_()
result = None
"""

# Selected entries of the module's state_dict (``keys``; absent keys are left out).
STATE_ENTRIES = """
_sd = model.state_dict()
result = {_k: _sd[_k] for _k in keys if _k in _sd}
"""

SEED = """
import torch as _torch
_torch.manual_seed(seed)
result = None
"""


# ----------------------------------------------------------------------------- the trusted side
@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generator seeded with ``seed`` inside the block, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def randn(seed: int, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Tensor[shape] of standard normal values from a generator seeded with ``seed``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def tv_downsample(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """torchvision's projection shortcut: Sequential(conv1x1(c_in, c_out, stride), BatchNorm2d(c_out))."""
    return nn.Sequential(TV.conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))


def run(student: Student, case: str, code: str, **bindings: Any) -> Any:
    """``student.exec(code, **bindings)``, with the case's name in front of any error of the student's code."""
    try:
        return student.exec(code, **bindings)
    except (StudentError, ForbiddenUse) as exc:
        raise type(exc)(f"{case}: {exc}") from None


def build(student: Student, expression: str, **bindings: Any) -> Remote:
    """Evaluate ``expression`` (e.g. ``"BasicBlock(16, 16)"``) with the notebook's names; the module it makes."""
    value = run(student, expression, f"result = {expression}", **bindings)
    if not isinstance(value, Remote):
        raise AssertionError(f"{expression}: expected an nn.Module, got {type(value).__name__}: {str(value)[:100]}")
    return value


def seed_kernel(student: Student, seed: int) -> None:
    """Seed torch's generator in the kernel (the student's initialisation then does not change between runs)."""
    student.exec(SEED, seed=seed)


def tensor(case: str, value: Any) -> Tensor:
    """``value`` if it is a tensor, else a failure that names the case."""
    if not isinstance(value, Tensor):
        raise AssertionError(f"{case}: expected a torch.Tensor, got {type(value).__name__}")
    return value


class ModuleInfo:
    """What :data:`DESCRIBE` reports about one sub-module of the student's model: its dotted name, id,
    the (module, qualname) of each class of its type's MRO, plain-data attributes, child names, ``len``."""

    def __init__(
        self,
        name: str,
        ident: int,
        mro: list[tuple[str, str]],
        attrs: dict[str, Any],
        children: list[str],
        length: int | None,
    ) -> None:
        self.name, self.ident, self.mro, self.attrs, self.children, self.length = (
            name,
            ident,
            mro,
            attrs,
            children,
            length,
        )

    def is_a(self, cls: type) -> bool:
        """Whether the module's type is (a subclass of) the library class ``cls``, e.g. ``nn.Conv2d``."""
        return (cls.__module__, cls.__qualname__) in [tuple(c) for c in self.mro]

    def is_students(self, name: str) -> bool:
        """Whether the module's type is (a subclass of) the notebook's class ``name``, e.g. ``"BasicBlock"``."""
        return any(q == name and m.split(".")[0] not in ("torch", "torchvision") for m, q in self.mro)

    @property
    def module_of_type(self) -> str:
        return self.mro[0][0] if self.mro else ""

    @property
    def type_name(self) -> str:
        return self.mro[0][1] if self.mro else "?"


class Structure:
    """The student's module as plain data: sub-modules by dotted name, parameters (name, numel,
    requires_grad), state_dict keys."""

    def __init__(
        self, modules: dict[str, ModuleInfo], params: list[tuple[str, int, bool]], state_keys: list[str]
    ) -> None:
        self.modules, self.params, self.state_keys = modules, params, state_keys

    def module(self, case: str, name: str) -> ModuleInfo:
        """The sub-module ``name`` (``"layer2.0.downsample"``; ``""`` is the model), or a failure naming the case."""
        if name not in self.modules:
            raise AssertionError(f"{case}: the model has no sub-module {name!r}")
        return self.modules[name]

    def has(self, name: str) -> bool:
        return name in self.modules

    def count_parameters(self, trainable_only: bool = True) -> int:
        """As ``utils.count_parameters``: the number of (trainable) parameters."""
        return sum(n for _, n, trainable in self.params if trainable or not trainable_only)


def describe(student: Student, model: Remote, case: str) -> Structure:
    """The structure of the student's module ``model`` (see :data:`DESCRIBE`)."""
    if not isinstance(model, Remote):
        raise AssertionError(f"{case}: expected an nn.Module, got {type(model).__name__}")
    raw = run(student, f"{case} (reading its sub-modules)", DESCRIBE, model=model)
    if not isinstance(raw, dict) or not {"modules", "params", "state"} <= set(raw):
        raise AssertionError(f"{case}: the structure of your module could not be read")
    modules = {}
    for name, ident, mro, attrs, children, length in raw["modules"]:
        modules[str(name)] = ModuleInfo(
            str(name), int(ident), [(str(m), str(q)) for m, q in mro], dict(attrs), [str(c) for c in children], length
        )
    return Structure(modules, [(str(n), int(k), bool(t)) for n, k, t in raw["params"]], [str(k) for k in raw["state"]])


def assert_own_modules(name: str, structure: Structure) -> None:
    """The model must be built from the student's classes, not from torchvision's."""
    borrowed = sorted({m.type_name for m in structure.modules.values() if m.module_of_type.startswith("torchvision")})
    assert_close(f"{name} must be built from your own classes, found torchvision's {borrowed}", len(borrowed), 0)


def state_dict_keys_match(name: str, structure: Structure, reference: nn.Module) -> None:
    """Fail with the missing and unexpected state_dict keys (as load_state_dict(strict=True) would)."""
    got, expected = set(structure.state_keys), set(reference.state_dict())
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    message = f"{name}: state_dict keys differ from torchvision's; missing {missing[:6]}, unexpected {unexpected[:6]}"
    assert_close(message, len(missing) + len(unexpected), 0)


def load_reference(student: Student, model: Remote, structure: Structure, reference: nn.Module, name: str) -> None:
    """The student's ``model.load_state_dict(reference.state_dict(), strict=True)`` in the kernel."""
    state_dict_keys_match(name, structure, reference)
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    try:
        model.call("load_state_dict", state, strict=True)
    except StudentError as error:
        raise AssertionError(
            f"{name}: torchvision's state_dict does not load into yours: {str(error)[:1500]}"
        ) from None


def compare_outputs(
    student: Student, name: str, model: Remote, reference: nn.Module, x: Tensor, train: bool = False
) -> Tensor:
    """Run both modules in float64 (eval mode unless train=True) on copies of x; assert equal outputs."""
    reference.double().train(train)
    with torch.no_grad():
        expected = reference(x.double().clone())
    got = run(student, name, FORWARD, model=model, x=x.double().clone(), train=train)
    scale = max(float(expected.abs().max()), 1.0)
    assert_close(name, got, expected, rtol=1e-7, atol=1e-10 * scale)
    return got


def same_conv(name: str, got: ModuleInfo, reference: nn.Conv2d) -> None:
    """got is an nn.Conv2d configured like reference (kernel, stride, padding, channels, no bias)."""
    assert_close(f"{name} is an nn.Conv2d", got.is_a(nn.Conv2d), True)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        value = got.attrs.get(attr)
        if value is None or isinstance(value, str):
            raise AssertionError(f"{name}.{attr}: expected {getattr(reference, attr)!r}, got {value!r}")
        assert_close(f"{name}.{attr}", value, getattr(reference, attr))
    assert_close(
        f"{name} has no bias (the BatchNorm after it has its own shift)", got.attrs.get("bias") == "none", True
    )


def is_zero_padded(out: Any, kept: Tensor) -> bool:
    """True if out holds kept's channels unchanged as one contiguous run and zeros in all other channels."""
    if not isinstance(out, Tensor) or out.ndim != kept.ndim or out.dtype != kept.dtype:
        return False
    c, c_out = kept.shape[1], out.shape[1]
    if out.shape[0] != kept.shape[0] or out.shape[2:] != kept.shape[2:] or c_out < c:
        return False
    out = out.detach()
    for k in range(c_out - c + 1):
        rest = torch.cat([out[:, :k], out[:, k + c :]], dim=1)
        if torch.equal(out[:, k : k + c], kept) and bool((rest == 0).all()):
            return True
    return False


def state_entries(student: Student, model: Remote, keys: Sequence[str], case: str) -> dict[str, Tensor]:
    """The student's ``model.state_dict()[k]`` for every k of ``keys``; a failure naming the case if one is missing."""
    entries = run(student, case, STATE_ENTRIES, model=model, keys=list(keys))
    if not isinstance(entries, dict):
        raise AssertionError(f"{case}: the state_dict of your module could not be read")
    for k in keys:
        if not isinstance(entries.get(k), Tensor):
            raise AssertionError(f"{case}: your model's state_dict has no tensor {k!r}")
    return entries


def class_attribute(student: Student, cls: str, attr: str) -> Any:
    """The class attribute ``cls.attr`` of the notebook (e.g. ``BasicBlock.expansion``) as data."""
    return run(student, f"{cls}.{attr}", f"result = {cls}.{attr}")


# ----------------------------------------------------------------------------- section 2: conv3x3, conv1x1
@graded("test_conv_helpers")
def test_conv_helpers(student: Student) -> None:
    convs = []
    for args, kwargs, label in [
        ((16, 32), {}, "conv3x3(16, 32)"),
        ((16, 32), {"stride": 2}, "conv3x3(16, 32, stride=2)"),
    ]:
        got = student.call("conv3x3", *args, **kwargs)
        same_conv(label, describe(student, got, label).module(label, ""), TV.conv3x3(*args, **kwargs))
        convs.append(got)
    c, c2 = convs
    x = randn(100, 2, 16, 9, 9)
    assert_close("conv3x3(16, 32) keeps 9x9 maps", tuple(tensor("conv3x3(16, 32)(x)", c(x)).shape), (2, 32, 9, 9))
    assert_close(
        "conv3x3(16, 32, stride=2) turns 9x9 into 5x5",
        tuple(tensor("conv3x3(16, 32, stride=2)(x)", c2(x)).shape),
        (2, 32, 5, 5),
    )
    for args in [(64, 256), (256, 128, 2), (3, 8, 1)]:
        got = student.call("conv1x1", *args)
        label = f"conv1x1{args}"
        same_conv(label, describe(student, got, label).module(label, ""), TV.conv1x1(*args))
    for args in [(8, 8, 2), (5, 7)]:
        got = student.call("conv3x3", *args)
        label = f"conv3x3{args}"
        same_conv(label, describe(student, got, label).module(label, ""), TV.conv3x3(*args))
    # outputs with torchvision's weights
    for fn, args, shape, seed in [
        ("conv1x1", (6, 10, 2), (3, 6, 7, 11), 101),
        ("conv3x3", (5, 7, 2), (2, 5, 8, 9), 102),
    ]:
        with seeded(seed):
            ref = getattr(TV, fn)(*args)
        got = student.call(fn, *args)
        label = f"{fn}({', '.join(map(str, args[:2]))}, stride={args[2]})"
        if not isinstance(got, Remote):
            raise AssertionError(f"{label}: expected an nn.Conv2d, got {type(got).__name__}")
        try:
            got.call("load_state_dict", {k: v.clone() for k, v in ref.state_dict().items()})
        except StudentError as error:
            raise AssertionError(
                f"{label}: torchvision's state_dict does not load into yours: {str(error)[:1500]}"
            ) from None
        x = randn(seed, *shape)
        with torch.no_grad():
            expected = ref(x)
        assert_close(f"{label} output on a {shape[2]}x{shape[3]} map", got(x), expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- sections 3 and 4: the blocks
def check_identity_block(
    student: Student, cls: str, inplanes: int, planes: int, expansion: int, bn_seed: int, x_seed: int
) -> None:
    """The first case of the BasicBlock and Bottleneck tests: ``cls.expansion``; then ``cls(inplanes, planes)``
    (identity shortcut), built in the kernel seeded with 0, is made of the student's own classes, takes
    torchvision's state_dict (its BNs randomised with ``bn_seed``) and gives torchvision's output in eval mode on
    Tensor[2, inplanes, 8, 8] (drawn with ``x_seed``), which has no negative values."""
    assert_close(f"{cls}.expansion", class_attribute(student, cls, "expansion"), expansion)
    label = f"{cls}({inplanes}, {planes})"
    with seeded(0):
        reference = randomise_batchnorm_(getattr(TV, cls)(inplanes, planes), seed=bn_seed)
    seed_kernel(student, 0)
    block = build(student, label)
    structure = describe(student, block, label)
    assert_own_modules(label, structure)
    load_reference(student, block, structure, reference, label)
    x = randn(x_seed, 2, inplanes, 8, 8)
    out = compare_outputs(student, f"{label}, eval mode, on Tensor[2, {inplanes}, 8, 8]", block, reference, x)
    assert_close(f"{cls} output passes through a final ReLU (no negative values)", bool((out >= 0).all()), True)


def check_strided_block_outputs(
    student: Student, cls: str, name: str, label: str, block: Remote, reference: nn.Module, x: Tensor, shape: tuple
) -> None:
    """The strided case of the BasicBlock and Bottleneck tests, once torchvision's weights are loaded into the
    student's ``block`` (``name`` without, ``label`` with its downsample): the outputs in eval mode (of ``shape``,
    no negative values: the ReLU comes after the addition) and in train mode (batch statistics) are
    torchvision's, and the block leaves its input ``x`` unchanged."""
    dims = ", ".join(map(str, x.shape))
    out = compare_outputs(student, f"{name}, eval mode, on Tensor[{dims}]", block, reference, x)
    assert_close(f"{name} output shape", tuple(out.shape), shape)
    assert_close(f"{cls} output is non-negative (ReLU after the addition)", bool((out >= 0).all()), True)
    compare_outputs(student, f"{name}, train mode (batch statistics)", block, reference, x, train=True)
    after = run(student, label, INPUT_AFTER_CALL, model=block, x=x.clone())
    assert_close(f"{cls} leaves its input unchanged", after, x)


@graded("test_basic_block", inject=HELPERS)
def test_basic_block(student: Student) -> None:
    check_identity_block(student, "BasicBlock", 16, 16, expansion=1, bn_seed=1, x_seed=200)

    # a block that halves the resolution and doubles the channels, with torchvision's projection shortcut
    with seeded(1):
        reference = randomise_batchnorm_(TV.BasicBlock(32, 64, 2, tv_downsample(32, 64, 2)), seed=2)
    seed_kernel(student, 1)
    label = "BasicBlock(32, 64, stride=2, downsample)"
    downsample = run(
        student,
        "nn.Sequential(conv1x1(32, 64, 2), nn.BatchNorm2d(64))",
        "import torch as _torch\nresult = _torch.nn.Sequential(conv1x1(32, 64, 2), _torch.nn.BatchNorm2d(64))",
    )
    block = build(student, "BasicBlock(32, 64, stride=2, downsample=downsample)", downsample=downsample)
    kept = run(
        student,
        label,
        "result = (id(getattr(block, 'downsample', None)), id(downsample))",
        block=block,
        downsample=downsample,
    )
    assert_close("BasicBlock keeps the downsample module it is given", kept[0] == kept[1], True)
    structure = describe(student, block, label)
    load_reference(student, block, structure, reference, label)
    assert_close(
        "BasicBlock(32, 64, stride=2): conv1 carries the stride",
        structure.module(label, "conv1").attrs.get("stride"),
        (2, 2),
    )
    assert_close(
        "BasicBlock(32, 64, stride=2): conv2 has stride 1", structure.module(label, "conv2").attrs.get("stride"), (1, 1)
    )
    x = randn(201, 3, 32, 11, 11, dtype=torch.float64)
    check_strided_block_outputs(
        student, "BasicBlock", "BasicBlock(32, 64, stride=2)", label, block, reference, x, (3, 64, 6, 6)
    )

    # zero residual branch: the block must reduce to ReLU(x), also for negative inputs
    seed_kernel(student, 2)
    block = build(student, "BasicBlock(8, 8).eval()")
    run(student, "BasicBlock(8, 8) with bn2 zeroed", ZERO_BRANCH, model=block, bn="bn2")
    x = randn(202, 2, 8, 5, 5)
    got = run(
        student,
        "BasicBlock(8, 8)",
        "import torch as _torch\nwith _torch.no_grad():\n    result = model(x)",
        model=block,
        x=x.clone(),
    )
    assert_close("BasicBlock with a zeroed residual branch computes ReLU(x)", got, torch.relu(x), rtol=1e-6, atol=1e-7)


@graded("test_bottleneck", inject=HELPERS)
def test_bottleneck(student: Student) -> None:
    check_identity_block(student, "Bottleneck", 64, 16, expansion=4, bn_seed=3, x_seed=300)

    with seeded(1):
        reference = randomise_batchnorm_(TV.Bottleneck(64, 32, 2, tv_downsample(64, 128, 2)), seed=4)
    seed_kernel(student, 1)
    label = "Bottleneck(64, 32, stride=2, downsample)"
    block = build(
        student, "Bottleneck(64, 32, stride=2, downsample=nn.Sequential(conv1x1(64, 128, 2), nn.BatchNorm2d(128)))"
    )
    structure = describe(student, block, label)
    load_reference(student, block, structure, reference, label)
    for conv, expected in [("conv1", (1, 1)), ("conv2", (2, 2)), ("conv3", (1, 1))]:
        assert_close(
            f"Bottleneck(64, 32, stride=2).{conv}.stride (v1.5: the 3x3 conv2 carries the stride)",
            structure.module(label, conv).attrs.get("stride"),
            expected,
        )
    for conv, (c_in, c_out) in [("conv1", (64, 32)), ("conv2", (32, 32)), ("conv3", (32, 128))]:
        info = structure.module(label, conv)
        assert_close(
            f"Bottleneck(64, 32).{conv} channels (in, out)",
            (info.attrs.get("in_channels"), info.attrs.get("out_channels")),
            (c_in, c_out),
        )
    x = randn(301, 3, 64, 9, 13, dtype=torch.float64)
    check_strided_block_outputs(
        student, "Bottleneck", "Bottleneck(64, 32, stride=2)", label, block, reference, x, (3, 128, 5, 7)
    )

    # stride 1 but more channels: a projection without downsampling (the first block of ResNet-50)
    with seeded(2):
        reference = randomise_batchnorm_(TV.Bottleneck(16, 16, 1, tv_downsample(16, 64)), seed=5)
    seed_kernel(student, 2)
    label = "Bottleneck(16, 16, downsample)"
    block = build(student, "Bottleneck(16, 16, downsample=nn.Sequential(conv1x1(16, 64), nn.BatchNorm2d(64)))")
    load_reference(student, block, describe(student, block, label), reference, label)
    compare_outputs(
        student, "Bottleneck(16, 16) with a 16 -> 64 projection, eval mode", block, reference, randn(302, 2, 16, 6, 6)
    )


# ----------------------------------------------------------------------------- section 5: ResNet
@graded("test_resnet_structure", inject=BLOCKS)
def test_resnet_structure(student: Student) -> None:
    label = "ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)"
    seed_kernel(student, 0)
    model = build(student, label)
    structure = describe(student, model, label)
    assert_own_modules("ResNet(BasicBlock, [1, 1, 1, 1])", structure)
    with seeded(0):
        reference = TV.ResNet(TV.BasicBlock, [1, 1, 1, 1], num_classes=10)
    state_dict_keys_match(label, structure, reference)
    out = tensor(f"{label}(x)", model(randn(400, 2, 3, 64, 64)))
    assert_close(f"{label} logits shape", tuple(out.shape), (2, 10))
    assert_close(
        "layer1[0] of a basic-block ResNet has no downsample (same shape)",
        "downsample" in structure.module(label, "layer1.0").children,
        False,
    )
    has_ds = structure.has("layer2.0.downsample")
    ds = structure.modules.get("layer2.0.downsample")
    assert_close(
        "layer2[0].downsample is an nn.Sequential (conv1x1, BatchNorm2d)",
        has_ds and ds.is_a(nn.Sequential) and ds.length == 2,
        True,
    )
    same_conv("layer2[0].downsample[0]", structure.module(label, "layer2.0.downsample.0"), TV.conv1x1(64, 128, 2))
    bn = structure.module(label, "layer2.0.downsample.1")
    assert_close(
        "layer2[0].downsample[1] is a BatchNorm2d(128)",
        bn.is_a(nn.BatchNorm2d) and bn.attrs.get("num_features") == 128,
        True,
    )

    # an unusual bottleneck layout
    layers = [2, 3, 1, 2]
    label = "ResNet(Bottleneck, [2, 3, 1, 2], num_classes=7)"
    seed_kernel(student, 1)
    model = build(student, label)
    structure = describe(student, model, label)
    with seeded(1):
        reference = TV.ResNet(TV.Bottleneck, layers, num_classes=7)
    state_dict_keys_match(label, structure, reference)
    # downsample exactly where the shape changes, and always conv1x1 (with the block's stride) + BN
    inplanes = 64
    for stage_index, planes in enumerate([64, 128, 256, 512]):
        stage_name = f"layer{stage_index + 1}"
        stage = structure.module(label, stage_name)
        assert_close(
            f"{stage_name} is an nn.Sequential of {layers[stage_index]} blocks",
            stage.is_a(nn.Sequential) and stage.length == layers[stage_index],
            True,
        )
        for i in range(layers[stage_index]):
            stride = 2 if (i == 0 and stage_index > 0) else 1
            name = f"{stage_name}[{i}]"
            path = f"{stage_name}.{i}"
            assert_close(
                f"{name}.conv2.stride", structure.module(label, f"{path}.conv2").attrs.get("stride"), (stride, stride)
            )
            needs_projection = stride != 1 or inplanes != planes * 4
            assert_close(
                f"{name}.downsample is {'a projection' if needs_projection else 'None'}",
                "downsample" in structure.module(label, path).children,
                needs_projection,
            )
            if needs_projection:
                ds = structure.module(label, f"{path}.downsample")
                assert_close(
                    f"{name}.downsample has two modules (conv1x1, BatchNorm2d)",
                    ds.is_a(nn.Sequential) and ds.length == 2,
                    True,
                )
                same_conv(
                    f"{name}.downsample[0]",
                    structure.module(label, f"{path}.downsample.0"),
                    TV.conv1x1(inplanes, planes * 4, stride),
                )
                bn = structure.module(label, f"{path}.downsample.1")
                assert_close(
                    f"{name}.downsample[1] is a BatchNorm2d({planes * 4})",
                    bn.is_a(nn.BatchNorm2d) and bn.attrs.get("num_features") == planes * 4,
                    True,
                )
            inplanes = planes * 4
    # stem and head
    same_conv("conv1 (the 7x7 stem)", structure.module(label, "conv1"), reference.conv1)
    pool = structure.module(label, "maxpool")
    assert_close(
        "maxpool is nn.MaxPool2d(3, stride=2, padding=1)",
        pool.is_a(nn.MaxPool2d)
        and (pool.attrs.get("kernel_size"), pool.attrs.get("stride"), pool.attrs.get("padding"))
        in [(3, 2, 1), ((3, 3), (2, 2), (1, 1))],
        True,
    )
    fc = structure.module(label, "fc")
    assert_close(
        "fc maps 512 * expansion features to num_classes",
        (fc.attrs.get("in_features"), fc.attrs.get("out_features")),
        (2048, 7),
    )
    # Kaiming normal, fan_out mode: std = sqrt(2 / (out_channels * k * k)); BN gamma 1, beta 0
    convs = [m for m in structure.modules.values() if m.is_a(nn.Conv2d)]
    bns = [m for m in structure.modules.values() if m.is_a(nn.BatchNorm2d)]
    keys = [f"{m.name}.weight" for m in convs] + [f"{m.name}.{p}" for m in bns for p in ("weight", "bias")]
    weights = state_entries(student, model, keys, label)
    for m in convs:
        k = m.attrs.get("kernel_size")
        k = tuple(k) if isinstance(k, tuple) else (k, k)
        fan_out = int(m.attrs.get("out_channels")) * int(k[0]) * int(k[1])
        w = weights[f"{m.name}.weight"].double()
        assert_close(f"{m.name}: Kaiming normal (fan_out) weight std", float(w.std()), (2.0 / fan_out) ** 0.5, rtol=0.1)
        assert_close(f"{m.name}: weight mean near 0", float(w.mean()), 0.0, atol=0.1 * (2.0 / fan_out) ** 0.5)
    for m in bns:
        w, b = weights[f"{m.name}.weight"], weights[f"{m.name}.bias"]
        assert_close(f"{m.name}.weight (gamma) initialised to 1", w, torch.ones_like(w))
        assert_close(f"{m.name}.bias (beta) initialised to 0", b, torch.zeros_like(b))
    # same function as torchvision's on this unusual layout
    randomise_batchnorm_(reference, seed=6)
    load_reference(student, model, structure, reference, label)
    compare_outputs(
        student,
        "ResNet(Bottleneck, [2, 3, 1, 2], num_classes=7), eval mode, on Tensor[2, 3, 48, 40]",
        model,
        reference,
        randn(401, 2, 3, 48, 40),
    )


@graded("test_zero_init_residual", inject=BLOCKS)
def test_zero_init_residual(student: Student) -> None:
    label = "ResNet(BasicBlock, [1, 1, 1, 1], zero_init_residual=True)"
    model = build(student, label)
    structure = describe(student, model, label)
    keys = [f"{stage}.0.{bn}.weight" for stage in ["layer1", "layer2", "layer3", "layer4"] for bn in ("bn1", "bn2")]
    weights = state_entries(student, model, keys, label)
    for stage in ["layer1", "layer2", "layer3", "layer4"]:
        w2, w1 = weights[f"{stage}.0.bn2.weight"], weights[f"{stage}.0.bn1.weight"]
        assert_close(f"zero_init_residual: {stage}[0].bn2.weight is 0", w2, torch.zeros_like(w2))
        assert_close(f"zero_init_residual: {stage}[0].bn1.weight stays 1", w1, torch.ones_like(w1))
    del structure

    label = "ResNet(Bottleneck, [1, 2, 1, 1], zero_init_residual=True)"
    model = build(student, label)
    structure = describe(student, model, label)
    blocks = [m for m in structure.modules.values() if m.is_students("Bottleneck")]
    assert_close(f"{label} holds 5 Bottleneck blocks", len(blocks), 5)
    keys = []
    for blk in blocks:
        keys += [f"{blk.name}.{bn}.weight" for bn in ("bn1", "bn2", "bn3")]
        if "downsample" in blk.children:
            keys.append(f"{blk.name}.downsample.1.weight")
    weights = state_entries(student, model, keys, label)
    for blk in blocks:
        name = blk.name
        w = weights[f"{name}.bn3.weight"]
        assert_close(f"zero_init_residual: {name}.bn3.weight is 0", w, torch.zeros_like(w))
        for bn in ["bn1", "bn2"]:
            w = weights[f"{name}.{bn}.weight"]
            assert_close(f"zero_init_residual: {name}.{bn}.weight stays 1", w, torch.ones_like(w))
        if "downsample" in blk.children:
            w = weights[f"{name}.downsample.1.weight"]
            assert_close(
                f"zero_init_residual: {name}.downsample[1].weight stays 1 (the shortcut carries the signal)",
                w,
                torch.ones_like(w),
            )
    default = build(student, "ResNet(Bottleneck, [1, 1, 1, 1])")
    w = state_entries(student, default, ["layer3.0.bn3.weight"], "ResNet(Bottleneck, [1, 1, 1, 1])")[
        "layer3.0.bn3.weight"
    ]
    assert_close("zero_init_residual=False (default): layer3[0].bn3.weight is 1", w, torch.ones_like(w))
    # behaviour: a zero-initialised block without downsample is the identity on non-negative inputs
    x = torch.relu(randn(500, 2, 512, 4, 4))
    got = run(
        student,
        "zero_init_residual: layer2[1](x)",
        "import torch as _torch\nmodel.train()\nwith _torch.no_grad():\n    result = model.layer2[1](x)",
        model=model,
        x=x.clone(),
    )
    assert_close("zero_init_residual: layer2[1] computes the identity at initialisation", got, x, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- section 6: resnet18/34/50
def check_factory(student: Student, name: str, shape: tuple[int, ...], seed: int, randomise_seed: int) -> Structure:
    """``name()`` (the student's factory) against torchvision's: parameters, state_dict, outputs with torchvision's
    weights (random BN statistics) on ``Tensor[shape]``."""
    with seeded(seed):
        reference = randomise_batchnorm_(getattr(torchvision.models, name)(weights=None), seed=randomise_seed)
    seed_kernel(student, seed)
    model = build(student, f"{name}()")
    structure = describe(student, model, f"{name}()")
    assert_own_modules(f"{name}()", structure)
    assert_close(
        f"{name}() parameter count",
        structure.count_parameters(),
        sum(p.numel() for p in reference.parameters() if p.requires_grad),
    )
    load_reference(student, model, structure, reference, f"{name}()")
    compare_outputs(
        student,
        f"{name} with torchvision's weights, eval mode, on Tensor{list(shape)}",
        model,
        reference,
        randn(600 + seed, *shape),
    )
    return structure


@graded("test_resnet_torchvision", inject=(*BLOCKS, "ResNet"))
def test_resnet_torchvision(student: Student) -> None:
    """The factories alone (the student's ResNet and blocks replaced by torchvision's): the right block type and
    layout, keyword arguments passed on."""
    for name, shape, seed, randomise_seed in [
        ("resnet18", (1, 3, 32, 32), 0, 7),
        ("resnet34", (1, 3, 32, 48), 10, 20),
        ("resnet50", (1, 3, 32, 32), 11, 21),
    ]:
        check_factory(student, name, shape, seed, randomise_seed)
    label = "resnet18(num_classes=3, zero_init_residual=True)"
    r18 = build(student, label)
    s18 = describe(student, r18, label)
    assert_close(f"{label}.fc.out_features", s18.module(label, "fc").attrs.get("out_features"), 3)
    w = state_entries(student, r18, ["layer4.1.bn2.weight"], label)["layer4.1.bn2.weight"]
    assert_close(f"{label} passes zero_init_residual on to ResNet", w, torch.zeros_like(w))


@graded("test_resnet_end_to_end")
def test_resnet_end_to_end(student: Student) -> None:
    """The student's whole chain: resnet18 and resnet50 built from their own ResNet and blocks load torchvision's
    weights and compute torchvision's outputs; stride placement inside the full networks."""
    s18 = check_factory(student, "resnet18", (1, 3, 64, 64), 0, 7)
    s50 = check_factory(student, "resnet50", (1, 3, 64, 64), 11, 21)
    assert_close(
        "resnet50 layer3[0]: stride on conv2 (v1.5), not conv1",
        (
            s50.module("resnet50", "layer3.0.conv1").attrs.get("stride"),
            s50.module("resnet50", "layer3.0.conv2").attrs.get("stride"),
        ),
        ((1, 1), (2, 2)),
    )
    assert_close(
        "resnet18 layer3[0]: stride on conv1", s18.module("resnet18", "layer3.0.conv1").attrs.get("stride"), (2, 2)
    )


# ----------------------------------------------------------------------------- section 7: CIFAR ResNets
def cifar_params(depth: int, num_classes: int) -> int:
    """Parameters of the paper's CIFAR ResNet with option-A shortcuts (convolutions without bias, BN gamma/beta)."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    for c_in, c in [(16, 16), (16, 32), (32, 64)]:
        total += (c_in * c * 9 + 2 * c) + (c * c * 9 + 2 * c)  # first block of the stage
        total += (n - 1) * 2 * (c * c * 9 + 2 * c)  # the other blocks
    return total + 64 * num_classes + num_classes  # fc


@graded("test_resnet_cifar", inject=BLOCKS)
def test_resnet_cifar(student: Student) -> None:
    shortcut = build(student, "ShortcutA(16, 32, stride=2)")
    x = randn(700, 2, 16, 8, 8)
    out = shortcut(x.clone())
    assert_close(
        "ShortcutA has no parameters",
        describe(student, shortcut, "ShortcutA(16, 32, stride=2)").count_parameters(trainable_only=False),
        0,
    )
    out = tensor("ShortcutA(16, 32, stride=2)(x)", out)
    assert_close("ShortcutA(16, 32, stride=2) on Tensor[2, 16, 8, 8]: output shape", tuple(out.shape), (2, 32, 4, 4))
    assert_close(
        "ShortcutA keeps x[:, :, ::2, ::2] in 16 channels and fills the other 16 with zeros",
        is_zero_padded(out, x[:, :, ::2, ::2]),
        True,
    )
    seed_kernel(student, 0)
    model = build(student, "resnet_cifar(20)")
    logits = tensor("resnet_cifar(20)(x)", model(randn(701, 2, 3, 32, 32)))
    structure = describe(student, model, "resnet_cifar(20)")
    assert_own_modules("resnet_cifar(20)", structure)
    assert_close("resnet_cifar(20) logits shape", tuple(logits.shape), (2, 10))
    assert_close("resnet_cifar(20) has 0.27M parameters (paper)", round(structure.count_parameters() / 1e6, 2), 0.27)

    for depth, paper in [(20, 0.27), (32, 0.46), (56, 0.85), (110, 1.7)]:
        label = f"resnet_cifar({depth})"
        structure = describe(student, build(student, label), label)
        n = (depth - 2) // 6
        count = structure.count_parameters()
        assert_close(
            f"resnet_cifar({depth}) parameters (paper: {paper}M)", round(count / 1e6, 2 if depth < 100 else 1), paper
        )
        assert_close(
            f"resnet_cifar({depth}) exact parameter count (option A shortcuts have none)",
            count,
            cifar_params(depth, 10),
        )
        for k, width in enumerate([16, 32, 64]):
            stage = structure.module(label, f"layer{k + 1}")
            blocks = [structure.modules.get(f"layer{k + 1}.{c}") for c in stage.children]
            assert_close(
                f"resnet_cifar({depth}).layer{k + 1} holds {n} BasicBlocks",
                stage.is_a(nn.Sequential)
                and stage.length == n
                and len(blocks) == n
                and all(b is not None and b.is_students("BasicBlock") for b in blocks),
                True,
            )
            assert_close(
                f"resnet_cifar({depth}).layer{k + 1} width",
                structure.module(label, f"layer{k + 1}.0.conv2").attrs.get("out_channels"),
                width,
            )
            assert_close(
                f"resnet_cifar({depth}).layer{k + 1}[0].conv1.stride",
                structure.module(label, f"layer{k + 1}.0.conv1").attrs.get("stride"),
                (1, 1) if k == 0 else (2, 2),
            )
    label = "resnet_cifar(32, num_classes=100)"
    model = build(student, label)
    structure = describe(student, model, label)
    assert_close(
        "resnet_cifar(32, num_classes=100) exact parameter count", structure.count_parameters(), cifar_params(32, 100)
    )
    same_conv("resnet_cifar(32).conv1 (3x3, 16 filters, stride 1)", structure.module(label, "conv1"), TV.conv3x3(3, 16))
    hooked = run(
        student,
        label,
        """
import torch as _torch
_features = {}
_hook = model.layer3.register_forward_hook(lambda _m, _i, out: _features.__setitem__("layer3", tuple(out.shape)))
with _torch.no_grad():
    _logits = model.eval()(x)
_hook.remove()
result = (_logits, _features.get("layer3"))
""",
        model=model,
        x=randn(702, 3, 3, 32, 32),
    )
    logits, layer3 = hooked
    assert_close("resnet_cifar(32, num_classes=100) logits shape", tuple(tensor(label, logits).shape), (3, 100))
    assert_close(
        "resnet_cifar: layer3 works on 8x8 maps for 32x32 inputs (no max-pool, two stride-2 stages)",
        tuple(layer3) if isinstance(layer3, (tuple, list)) else layer3,
        (3, 64, 8, 8),
    )
    # behaviour of the downsampling block: with its residual branch zeroed it returns the option-A shortcut
    block = run(student, label, "result = model.layer2[0]", model=model)
    run(student, "resnet_cifar(32).layer2[0] with bn2 zeroed", ZERO_BRANCH, model=block, bn="bn2")
    x = torch.relu(randn(703, 2, 16, 9, 9))
    out = run(
        student,
        "resnet_cifar(32).layer2[0]",
        "import torch as _torch\nwith _torch.no_grad():\n    result = model(x)",
        model=block,
        x=x.clone(),
    )
    assert_close(
        "layer2[0] with a zeroed branch returns x[:, :, ::2, ::2] padded with zero channels",
        is_zero_padded(out, x[:, :, ::2, ::2]),
        True,
    )
    shortcut = build(student, "ShortcutA(32, 64, stride=2)")
    x = randn(704, 1, 32, 7, 6)
    out = shortcut(x.clone())
    assert_close("ShortcutA(32, 64) on an odd 7x6 map", is_zero_padded(out, x[:, :, ::2, ::2]), True)
    for bad in [21, 33, 2]:
        raised = run(
            student,
            f"resnet_cifar({bad})",
            f"""
try:
    resnet_cifar({bad})
    result = None
except Exception as _error:
    result = [_c.__name__ for _c in type(_error).__mro__]
""",
        )
        assert_close(
            f"resnet_cifar({bad}) raises ValueError (depth must be 6n + 2)",
            isinstance(raised, list) and "ValueError" in raised,
            True,
        )
