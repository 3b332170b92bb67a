"""Trusted stand-ins for a student's upstream functions, for one trusted test (instructor-only, never shipped).

*One bug, one function's points*: a test of ``spatial_batchnorm_forward`` must not fail because the student's
``batchnorm_forward``, which it calls, is wrong (that costs ``batchnorm_forward``'s own cell). So, for the
duration of such a test, the upstream names in the student's namespace are replaced by stand-ins, and put
back afterwards (also when the test fails).

A stand-in never carries the course's solution into the kernel (a hostile submission could print it into
its feedback). It is one of

* a **table** (:func:`table`): the answers of the upstream function for exactly the inputs this test will
  give it, computed here with the library (``F.batch_norm``, ``F.conv2d`` + autograd). A call whose
  arguments equal an entry (same dtype, shape and values; numbers equal) gets the entry's result, with the
  entry's in-place effects applied (running statistics); any other call goes to the student's own function,
  so a student who chains their functions differently is judged on their own code, never refused. Caches
  are opaque tokens (``{"__token__": k}`` in an entry): the stand-in backward recognises the stand-in
  forward's token; a cache of the student's own forward goes to the student's own backward.
* **library code** (:func:`library_class`, :func:`library_function`): a subclass of a library class under the
  student's name (e.g. torchvision's ``BasicBlock``; a class, so ``isinstance`` and ``block.expansion`` work,
  unlike ``Student.using``'s function wrappers), or the library function itself.

Every stand-in counts its calls (:func:`calls`), so a test can check that the student's code used it.
The test must not forbid the library code a stand-in runs (a table runs none).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor

from grading.trusted import Student

# Kernel side: install stand-ins (``_specs``: name -> spec) into the notebook's real namespace, keeping
# the student's objects to put back. Instructor code; it only matches arguments and returns data.
_INSTALL = """
import sys as _sys
import torch as _torch
_ns = _sys.modules["_grading_agent"].agent.ns
_saved = _ns.setdefault("__grader_saved__", {})
_calls = _ns.setdefault("__grader_calls__", {})
_tokens = _ns.setdefault("__grader_tokens__", {})


class _GraderToken:
    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __repr__(self):
        return "<a cache made by the grader's stand-in>"


def _token(key):
    if key not in _tokens:
        _tokens[key] = _GraderToken(key)
    return _tokens[key]


def _same(got, want):
    if isinstance(want, dict) and "__token__" in want:
        return isinstance(got, _GraderToken) and got.key == want["__token__"]
    if isinstance(want, _torch.Tensor):
        return (isinstance(got, _torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape
                and got.device.type == "cpu" and bool(_torch.equal(got.detach(), want)))
    if isinstance(want, (list, tuple)):
        return (isinstance(got, (list, tuple)) and len(got) == len(want)
                and all(_same(g, w) for g, w in zip(got, want)))
    if want is None:
        return got is None
    if isinstance(want, bool):
        return isinstance(got, (bool, int)) and bool(got) == want
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and got == want
    return False


def _materialise(value):
    if isinstance(value, dict) and "__token__" in value:
        return _token(value["__token__"])
    if isinstance(value, _torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_materialise(v) for v in value)
    if isinstance(value, list):
        return [_materialise(v) for v in value]
    return value


def _stand_in(name, spec, original):
    params, defaults, entries = spec["params"], spec["defaults"], spec["entries"]

    def stand_in(*args, **kwargs):
        _calls[name] = _calls.get(name, 0) + 1
        bound = dict(defaults)
        if len(args) <= len(params) and all(k in params for k in kwargs):
            bound.update(zip(params, args))
            bound.update(kwargs)
            for entry in entries:
                if all(k in bound and _same(bound[k], v) for k, v in entry["args"].items()):
                    with _torch.no_grad():
                        for k, v in entry.get("inplace", {}).items():
                            bound[k].copy_(v)
                    return _materialise(entry["result"])
        if original is None:
            raise NameError(f"your notebook does not define {name!r}")
        return original(*args, **kwargs)

    stand_in.__name__ = stand_in.__qualname__ = name
    return stand_in


for _name, _spec in _specs.items():
    if _name not in _saved:
        _saved[_name] = _ns.get(_name)
    _original = _saved[_name]
    if _spec["kind"] == "table":
        _ns[_name] = _stand_in(_name, _spec, _original)
    else:  # a subclass of a library class, under the student's name
        _scope = {"_original": _original}
        exec(_spec["code"], _scope)
        _ns[_name] = _scope[_name]
result = None
"""

_RESTORE = """
import sys as _sys
_ns = _sys.modules["_grading_agent"].agent.ns
for _name, _value in _ns.pop("__grader_saved__", {}).items():
    if _value is None:
        _ns.pop(_name, None)
    else:
        _ns[_name] = _value
_ns.pop("__grader_calls__", None)
_ns.pop("__grader_tokens__", None)
result = None
"""

_CALLS = """
import sys as _sys
result = dict(_sys.modules["_grading_agent"].agent.ns.get("__grader_calls__", {}))
"""

_RESET_CALLS = """
import sys as _sys
_sys.modules["_grading_agent"].agent.ns.setdefault("__grader_calls__", {}).clear()
result = None
"""


def token(key: int) -> dict[str, int]:
    """An opaque cache in a table entry (the stand-in forward returns it, the stand-in backward expects it)."""
    return {"__token__": int(key)}


def entry(args: dict[str, Any], result: Any, inplace: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """One call of a table: the arguments by parameter name, what it returns, and the tensors it must leave in
    its in-place arguments (e.g. ``{"running_mean": ...}``)."""
    return {"args": args, "result": result, "inplace": dict(inplace or {})}


def table(params: Sequence[str], entries: Sequence[dict[str, Any]], defaults: dict[str, Any] | None = None) -> dict:
    """A table stand-in for a function with the release's parameter names ``params`` (and their ``defaults``)."""
    return {"kind": "table", "params": list(params), "defaults": dict(defaults or {}), "entries": list(entries)}


def library_class(name: str, base: str, module: str) -> dict:
    """A stand-in class ``name`` that is the library class ``module.base`` under the student's name; ``isinstance``
    against it is also true for instances of the student's own class (code that bound the student's class
    early, e.g. a ``functools.partial`` factory, still meets checks like ``isinstance(m, BasicBlock)``)."""
    code = (
        f"import {module} as _lib\n"
        "class _GraderMeta(type(_lib." + base + ")):\n"
        "    def __instancecheck__(cls, obj):  # the student's own instances count too\n"
        "        own = isinstance(_original, type) and isinstance(obj, _original)\n"
        "        return type.__instancecheck__(cls, obj) or own\n"
        f"class {name}(_lib.{base}, metaclass=_GraderMeta):\n    pass\n"
        f"{name}.__module__ = '__main__'\n"
    )
    return {"kind": "code", "code": code}


def library_function(name: str, path: str) -> dict:
    """A stand-in function ``name`` that is the library function ``path`` (``"torchvision.models.resnet.conv3x3"``)."""
    module, attr = path.rsplit(".", 1)
    return {"kind": "code", "code": f"import {module} as _lib\n{name} = _lib.{attr}\n"}


@contextlib.contextmanager
def substituted(student: Student, specs: dict[str, dict]) -> Iterator[None]:
    """Inside the block the notebook's names ``specs`` are the stand-ins; afterwards the student's own again."""
    student.exec(_INSTALL, _specs=specs)
    try:
        yield
    finally:
        student.deadline = None  # put the student's names back even when the test ran out of time
        with contextlib.suppress(Exception):  # a dead kernel has nothing to restore
            student.exec(_RESTORE)


def calls(student: Student) -> dict[str, int]:
    """How often each stand-in was called since it was installed (or since :func:`reset_calls`)."""
    value = student.exec(_CALLS)
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def reset_calls(student: Student) -> None:
    student.exec(_RESET_CALLS)
