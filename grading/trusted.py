"""Trusted grading: verdicts decided in the grader's process, student code run in a sandboxed kernel.

nbgrader stays the grader. :class:`TrustedExecute` replaces nbgrader's ``Execute`` in
``Autograde.autograde_preprocessors`` (``nbgrader_config.py``); the gradebook, formgrader,
``generate_feedback`` and ``nbgrader export`` work as before. For each notebook it

1. starts the kernel in a sandbox (:mod:`grading.sandbox`) and, before any cell, sends it the agent
   (:mod:`grading.agent`), which holds torch's functions as they were before student code ran;
2. runs every cell that is not a graded test cell in the kernel, as nbgrader would (the student's
   solution cells, the locked setup cell), with a cap on the output a cell may store;
3. does **not** run the test cells' code in the kernel. For a test cell ``test_x`` it runs the
   function registered for ``test_x`` in the trusted test module of the assignment
   (``grading/hidden/<assignment>.py``) here, in the grader's process. That function makes the
   inputs and the expected values itself and calls the student's functions through a
   :class:`Student` proxy: arguments go to the kernel, results come back as data only
   (``torch.load(weights_only=True)``), and the comparison happens here. The cell's outputs become
   the verdict (an error output when a case failed, with the case's name, expected vs got), which
   nbgrader's ``SaveAutoGrades`` scores as usual.

A test module looks like this::

    from grading.trusted import grades
    from utils.testing import assert_close

    FORBID = dict(ops=["torchvision::nms"], python=["torchvision.ops.box_iou"])  # for every call

    @grades("test_box_area")
    def _(student):
        boxes = torch.tensor([[0., 0., 2., 3.]])
        assert_close("box_area of one box", student.call("box_area", boxes), torch.tensor([6.]))

The proxy (:class:`Student`): ``call(name, *args)`` calls a function or class of the notebook;
objects that are not data (a module, a cache, an instance) stay in the kernel and come back as a
:class:`Remote`, which can be called (``remote(x)``), have methods called (``remote.call("eval")``)
and attributes read (``remote.get("weight")``), and can be passed back as arguments.
``exec(code, **bindings)`` runs a fixed probe (instructor code) in the kernel and returns its
``result`` variable: use it to drive an object through several steps, never to decide anything.
``with student.forbid(ops=[...], python=[...], autograd=True):`` blocks library functions however
they are reached (see :mod:`grading.agent`). ``with student.cpu_time() as t:`` measures the CPU
seconds of every process of the sandbox from outside (``/proc``), for speed requirements.

**One bug, one function's points.** ``with student.using(box_iou="torchvision.ops.box_iou"):`` makes the
student's global ``box_iou`` the library function for the calls inside the block (the student's own is
put back afterwards, even when the call fails): a test of ``nms`` then judges ``nms`` alone, on a trusted
``box_iou``. Only *names of public library functions* (torch, torchvision, the course's shipped
``utils.detection``) cross to the kernel, never solution source (a hostile
submission could print it into its feedback); the injected function is exempt from ``FORBID`` for the
block, and only then.

**Case names.** When the student's code raises (or times out) inside a trusted test, the verdict names the
case: the innermost ``with student.case("..."):`` block, or else the case label of the statement that made
the call (the first string argument with a space of the enclosing call in the trusted test, typically
``assert_close("nms of 300 random boxes", student.call(...), ...)``), followed by the student's own frames.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer, Unicode

from . import sandbox

HIDDEN = Path(__file__).resolve().parent / "hidden"
AGENT_SOURCE = (Path(__file__).resolve().parent / "agent.py").read_text()
MAX_RESPONSE_BYTES = 256 << 20  # the largest answer the grader reads (a ResNet-50 state dict is ~100 MB)
_REGISTRY: dict[str, Callable[[Student], Any]] = {}


def grades(cell_id: str) -> Callable[[Callable[[Student], Any]], Callable[[Student], Any]]:
    """Register the decorated function as the trusted test of the test cell ``cell_id``."""

    def register(func: Callable[[Student], Any]) -> Callable[[Student], Any]:
        _REGISTRY[cell_id] = func
        return func

    return register


def load_tests(assignment: str) -> dict[str, Callable[[Student], Any]]:
    """grade_id -> trusted test function, from ``grading/hidden/<assignment>.py``."""
    path = HIDDEN / f"{assignment}.py"
    if not path.exists():
        raise FileNotFoundError(f"no trusted tests for {assignment}: {path}")
    _REGISTRY.clear()
    spec = importlib.util.spec_from_file_location(f"grading.hidden.{assignment}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    tests = dict(_REGISTRY)
    _REGISTRY.clear()
    forbid = getattr(module, "FORBID", None)
    if forbid:
        tests["__forbid__"] = forbid  # type: ignore[assignment]
    return tests


# ----------------------------------------------------------------------------- errors a verdict reports
class StudentError(AssertionError):
    """The student's code raised inside a trusted test (reported with the student's own frames)."""


class ForbiddenUse(AssertionError):
    """The student's code reached a function the assignment asks them to write."""


class KernelFailure(Exception):
    """The kernel died, timed out or answered with something that is not data. Not an AssertionError, so
    that a trusted test that expects the student's code to raise cannot swallow it: it ends the test."""


# ----------------------------------------------------------------------------- data across the boundary
class Remote:
    """An object that lives in the kernel (a module, a cache, an instance of the student's class)."""

    def __init__(self, student: Student, handle: int, type_name: str) -> None:
        self._student, self._handle, self.type_name = student, handle, type_name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call("__call__", *args, **kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._student._request(
            {"op": "call_method", "handle": self._handle, "method": method}, f"{self.type_name}.{method}", args, kwargs
        )

    def get(self, attr: str) -> Any:
        return self._student._request(
            {"op": "getattr", "handle": self._handle, "method": attr}, f"{self.type_name}.{attr}", (), {}
        )

    def __repr__(self) -> str:
        return f"<{self.type_name} in the student's kernel>"


def _encode(value: Any) -> Any:
    if isinstance(value, Remote):
        return {"__handle__": value._handle}
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().clone(), "requires_grad": bool(value.requires_grad)}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).replace("torch.", "")}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    if isinstance(value, dict):
        return {"__dict__": [(k, _encode(v)) for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot send a {type(value).__name__} to the kernel (only tensors and plain data)")


def _describe(args: Any, kwargs: dict[str, Any]) -> str:
    """``Tensor[37, 4] float32, 0.5`` - the shape of a call, for messages (no values)."""

    def one(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            return f"Tensor{list(v.shape)} {str(v.dtype).replace('torch.', '')}"
        if isinstance(v, Remote):
            return v.type_name
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(one(x) for x in v[:4]) + (", ..." if len(v) > 4 else "") + "]"
        if isinstance(v, dict):
            return "{...}"
        return repr(v)[:40]

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


class Student:
    """The trusted side's view of one student's kernel (see the module docstring).

    Args:
        transport: sends one request dict, returns the response dict (already safely loaded).
        cpu_seconds: CPU seconds used so far by every process of the sandbox.
        default_forbid: ``dict(ops=..., python=..., autograd=...)`` applied to every request.
    """

    def __init__(
        self,
        transport: Callable[[dict[str, Any], float | None], dict[str, Any]],
        cpu_seconds: Callable[[], float],
        default_forbid: dict[str, Any] | None = None,
        call_timeout: float = 60.0,
    ) -> None:
        self._transport, self._cpu_seconds = transport, cpu_seconds
        self._forbid: list[dict[str, Any]] = [dict(default_forbid)] if default_forbid else []
        self.call_timeout = call_timeout
        self.deadline: float | None = None  # time.monotonic() after which no further call starts
        self._cases: list[str] = []
        self._using: dict[str, str] = {}  # student global -> library function, for the calls in a block

    # the proxy ------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the notebook's function or class ``name``; returns data or a :class:`Remote`."""
        return self._request({"op": "call", "name": name}, name, args, kwargs)

    def get(self, name: str) -> Any:
        """The value of the notebook's global ``name`` (data or a :class:`Remote`)."""
        return self._request({"op": "get", "name": name}, name, (), {})

    def exec(self, code: str, **bindings: Any) -> Any:
        """Run instructor probe code in the kernel, with ``bindings`` as variables; returns ``result``."""
        return self._request({"op": "exec", "code": code}, "your code", (), bindings)

    def has(self, name: str) -> bool:
        """Whether the notebook defines ``name`` at all."""
        return bool(self.exec(f"result = {name!r} in globals()"))

    @contextlib.contextmanager
    def forbid(self, ops: tuple = (), python: tuple = (), autograd: bool = False) -> Iterator[None]:
        """Inside the block every call refuses these operators (``"aten::convolution"``, patterns like
        ``"aten::*conv*"``), Python library functions (``"torchvision.ops.box_iou"``) and, with
        ``autograd=True``, any backward pass computed by torch."""
        self._forbid.append({"ops": list(ops), "python": list(python), "autograd": autograd})
        try:
            yield
        finally:
            self._forbid.pop()

    @contextlib.contextmanager
    def case(self, name: str) -> Iterator[None]:
        """Name the case of the calls inside the block: a crash or time-out there reports this name."""
        self._cases.append(str(name))
        try:
            yield
        finally:
            self._cases.pop()

    @contextlib.contextmanager
    def using(self, **functions: str) -> Iterator[None]:
        """Inside the block, the student's globals ``name`` are the library functions ``functions[name]``
        (dotted paths such as ``"torchvision.ops.box_iou"``) for every call; restored after each call."""
        for name, path in functions.items():
            parts = path.split(".")
            if not (
                name.isidentifier()
                and (parts[0] in ("torch", "torchvision") or parts[:2] == ["utils", "detection"])
                and all(p.isidentifier() for p in parts)
            ):
                raise ValueError(
                    f"using({name}={path!r}): a global name and a torch, torchvision or utils.detection function"
                )
        saved = dict(self._using)
        self._using.update(functions)
        try:
            yield
        finally:
            self._using = saved

    @contextlib.contextmanager
    def cpu_time(self) -> Iterator[dict[str, float]]:
        """``with student.cpu_time() as t: ...`` then ``t["seconds"]``: CPU time of the sandbox's processes."""
        box: dict[str, float] = {}
        start = self._cpu_seconds()
        try:
            yield box
        finally:
            box["seconds"] = self._cpu_seconds() - start

    # plumbing --------------------------------------------------------------
    def _request(self, request: dict[str, Any], label: str, args: Any, kwargs: dict[str, Any]) -> Any:
        ops: list[str] = []
        python: list[str] = []
        autograd = False
        for f in self._forbid:
            ops += list(f.get("ops", ()))
            python += list(f.get("python", ()))
            autograd = autograd or bool(f.get("autograd", False))
        request = dict(
            request,
            args=_encode(list(args)),
            kwargs=_encode(dict(kwargs)),
            forbid_ops=ops,
            forbid_python=python,
            no_autograd=autograd,
        )
        if self._using:
            request["inject"] = [[name, path] for name, path in self._using.items()]
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise KernelFailure("this test ran out of time (the grader stopped it before this call)")
        try:
            response = self._transport(request, self.call_timeout)
        except KernelFailure as exc:
            exc.case = self._cases[-1] if self._cases else None  # type: ignore[attr-defined]
            raise
        call = f"{label}({_describe(args, kwargs)})" if request["op"] != "exec" else label
        if not isinstance(response, dict) or "ok" not in response:
            raise KernelFailure(f"{call}: the kernel's answer is not a result")
        violations = [str(v) for v in response.get("violations", []) if isinstance(v, str)]
        if violations:
            forbidden = ForbiddenUse(
                f"{call} used {', '.join(sorted(set(violations)))}, which this exercise asks you to implement yourself"
            )
            forbidden.case = self._cases[-1] if self._cases else None  # type: ignore[attr-defined]
            raise forbidden
        if not response["ok"]:
            trace = str(response.get("traceback", ""))
            error = StudentError(
                f"{call} raised {response.get('error_type', 'an error')}: "
                f"{str(response.get('message', ''))[:2000]}"
                + (f"\nwhere it happened (your code, innermost last):\n{trace}" if trace else "")
            )
            error.case = self._cases[-1] if self._cases else None  # type: ignore[attr-defined]
            raise error
        return self._decode(response.get("value"))

    def _decode(self, value: Any) -> Any:
        if isinstance(value, dict):
            if "__handle__" in value:
                return Remote(self, int(value["__handle__"]), str(value.get("type", "object")))
            if "__tensor__" in value:
                tensor = value["__tensor__"]
                if not isinstance(tensor, torch.Tensor):
                    raise KernelFailure("a tensor in the kernel's answer is not a tensor")
                return tensor.requires_grad_(bool(value.get("requires_grad"))) if tensor.is_floating_point() else tensor
            if "__numpy__" in value:
                return value["__numpy__"].numpy()
            if "__dtype__" in value:
                dtype = getattr(torch, str(value["__dtype__"]), None)
                if not isinstance(dtype, torch.dtype):
                    raise KernelFailure("unknown dtype in the kernel's answer")
                return dtype
            if "__device__" in value:
                return torch.device(str(value["__device__"]))
            if "__dict__" in value:
                return {k: self._decode(v) for k, v in value["__dict__"]}
            return {k: self._decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._decode(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._decode(v) for v in value)
        return value


def read_response(path: str, limit: int = MAX_RESPONSE_BYTES) -> dict[str, Any]:
    """Load the kernel's answer from a folder the sandbox can write: no symlink, a regular file, bounded
    size, weights-only unpickling (tensors and plain containers; no code runs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise KernelFailure("the kernel sent no answer (did your code stop the kernel or exit?)") from None
    except OSError as exc:
        raise KernelFailure(f"the kernel's answer cannot be read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KernelFailure("the kernel's answer is not a regular file")
        if info.st_size > limit:
            raise KernelFailure(
                f"the kernel's answer is {info.st_size >> 20} MB, more than the {limit >> 20} MB allowed"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything that is not plain data
        raise KernelFailure(f"the kernel's answer is not plain data ({type(exc).__name__})") from None


def sandbox_cpu_seconds(root_pid: int) -> float:
    """CPU seconds (user + system, children reaped included) of ``root_pid`` and all its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(x) for x in fields[11:15]) / ticks  # utime stime cutime cstime
    total = 0.0
    for pid in times:
        p, hops = pid, 0
        while p and p != root_pid and hops < 64:
            p, hops = parents.get(p, 0), hops + 1
        if p == root_pid:
            total += times[pid]
    return total


# ----------------------------------------------------------------------------- the nbgrader preprocessors
class DropForgedMetadata(NbGraderPreprocessor):
    """First of ``Autograde.sanitize_preprocessors``: nbgrader metadata on a cell whose grade_id the source
    does not have (a student's own "test" worth points, malformed metadata) is removed, so the cell is
    ordinary code. Without this, nbgrader refuses the whole notebook ("metadata may be corrupted")."""

    def preprocess(self, nb: NotebookNode, resources: dict[str, Any]):
        from nbgrader.api import Gradebook, MissingEntry

        info = resources.get("nbgrader", {})
        try:
            with Gradebook(info["db_url"]) as gb:
                source = gb.find_notebook(info["notebook"], info["assignment"])
                known = {cell.name for cell in source.source_cells}
        except (KeyError, MissingEntry):
            return nb, resources
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader")
            if meta is None:
                continue
            if not isinstance(meta, dict) or meta.get("grade_id") not in known:
                self.log.warning("dropping nbgrader metadata the source does not have: %r", str(meta)[:200])
                del cell.metadata["nbgrader"]
        return nb, resources


_NOT_LABELS = {"call", "exec", "get", "has", "format", "join"}


def _case_label(exc: BaseException, filename: str) -> str | None:
    """The case a trusted test was checking when ``exc`` left the student's code: for each frame of the
    trusted test module (innermost first), the calls enclosing the frame's line in its source, outermost
    first; the first positional argument that evaluates (in that frame) to a string with a space is the
    label, e.g. ``assert_close(f"nms of {n} boxes", student.call(...))``. None when there is none."""
    frames = [
        (tb.tb_frame, tb.tb_lineno) for tb in _walk(exc.__traceback__) if tb.tb_frame.f_code.co_filename == filename
    ]
    if not frames:
        return None
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError):
        return None
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    for frame, line in reversed(frames):
        enclosing = [c for c in calls if c.lineno <= line <= (c.end_lineno or c.lineno)]
        enclosing.sort(key=lambda c: (c.lineno, -(c.end_lineno or c.lineno), c.col_offset))
        for call in enclosing:
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr in _NOT_LABELS:
                continue
            for arg in call.args[:2]:
                if not isinstance(arg, (ast.Constant, ast.JoinedStr, ast.Name)):
                    continue
                try:
                    value = eval(compile(ast.Expression(arg), filename, "eval"), frame.f_globals, dict(frame.f_locals))
                except Exception:  # noqa: BLE001 - a label that cannot be rebuilt is no label
                    continue
                if isinstance(value, str) and " " in value:
                    return value
    return None


def _walk(tb: Any) -> Iterator[Any]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _with_case(error: BaseException, filename: str) -> BaseException:
    """``error`` (the student's crash, a forbidden call, a time-out) with the name of its case in front."""
    if not isinstance(error, (StudentError, ForbiddenUse, KernelFailure)):
        return error
    case = getattr(error, "case", None) or _case_label(error, filename)
    if not case:
        return error
    named = type(error)(f'in the case "{case}": {error}')
    named.__traceback__ = error.__traceback__
    return named


def _verdict_outputs(cell_id: str, error: BaseException | None, seconds: float) -> list[NotebookNode]:
    if error is None:
        text = f"{cell_id}: passed (checked by the course's grader, {seconds:.1f} s)\n"
        return [NotebookNode(output_type="stream", name="stdout", text=text)]
    name = type(error).__name__ if isinstance(error, (StudentError, ForbiddenUse, KernelFailure)) else "AssertionError"
    message = (str(error) or name)[:20_000]
    lines = [f"{cell_id}: FAILED (checked by the course's grader)", f"{name}: {message}"]
    return [NotebookNode(output_type="error", ename=name, evalue=message.split("\n")[0][:2000], traceback=lines)]


class TrustedExecute(Execute):
    """nbgrader's ``Execute`` with a sandboxed kernel, capped output and test cells judged here."""

    kernel_name = Unicode(sandbox.KERNEL_NAME).tag(config=True)
    max_output_bytes = Integer(200_000, help="output one cell may store; the rest is cut with a note").tag(config=True)
    max_total_output_bytes = Integer(2_000_000, help="output the whole notebook may store").tag(config=True)
    test_timeout = Integer(240, help="seconds a whole trusted test may take").tag(config=True)

    # ---------------------------------------------------------------- setup
    def preprocess(self, nb: NotebookNode, resources: dict[str, Any], km: Any = None):
        if not sandbox.available() and not sandbox.unsandboxed_allowed():
            raise RuntimeError(
                "refusing to grade: bubblewrap, setpriv or prlimit is missing (install Debian's "
                "bubblewrap and util-linux), and DLCV_UNSANDBOXED=1 was not set"
            )
        assignment = resources.get("nbgrader", {}).get("assignment") or Path(resources["metadata"]["path"]).name
        self._tests = load_tests(assignment)
        self._dead: str | None = None
        self._total_output = 0
        self._agent_ready = False
        self._box = Path(tempfile.mkdtemp(prefix="dlcv-sandbox-"))
        os.chmod(self._box, 0o755)
        self._inbox, self._scratch, self._ipc = (self._box / n for n in ("inbox", "scratch", "ipc"))
        for folder in (self._inbox, self._scratch, self._ipc):
            folder.mkdir(mode=0o755)
        self._outbox = self._scratch / ".grader"
        self._outbox.mkdir()
        sandbox.copy_plain_files(Path(resources["metadata"]["path"]), self._scratch)
        uid = sandbox.sandbox_uid()
        if os.geteuid() == 0:
            for folder in (self._scratch, self._ipc):
                for path in [folder, *folder.rglob("*")]:
                    os.lchown(path, uid, uid)
        import matplotlib
        import matplotlib.font_manager  # noqa: F401 - builds the grader's font list once if there is none

        mpl_cache = Path(matplotlib.get_cachedir())
        if mpl_cache.is_dir():  # matplotlib's font list: without it every kernel rebuilds it (seconds)
            shutil.copytree(
                mpl_cache, self._scratch / ".matplotlib", dirs_exist_ok=True, ignore=shutil.ignore_patterns("tex.cache")
            )
            if os.geteuid() == 0:
                for path in [self._scratch / ".matplotlib", *(self._scratch / ".matplotlib").rglob("*")]:
                    os.lchown(path, uid, uid)
        os.environ["DLCV_SANDBOX"] = json.dumps(
            {
                "scratch": str(self._scratch),
                "inbox": str(self._inbox),
                "ipc": str(self._ipc),
                "log": str(self._box / "kernel.log"),
                "uid": uid,
            }
        )
        os.environ.update(sandbox.kernelspec_env())
        resources.setdefault("metadata", {})
        original_path = resources["metadata"].get("path")
        resources["metadata"]["path"] = str(self._scratch)
        try:
            return super().preprocess(nb, resources, km)
        except Exception as exc:
            log = self._box / "kernel.log"
            detail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{type(exc).__name__}: {exc}\nkernel log:\n{detail}") from exc
        finally:
            resources["metadata"]["path"] = original_path
            os.environ.pop("DLCV_SANDBOX", None)
            shutil.rmtree(self._box, ignore_errors=True)

    def create_kernel_manager(self):
        km = super().create_kernel_manager()
        if sandbox.available():
            km.transport = "ipc"  # the sandbox has no network, not even the grader's loopback
            km.ip = str(self._ipc / "kernel")
        return km

    # ---------------------------------------------------------------- cells
    def preprocess_cell(self, cell: NotebookNode, resources: dict[str, Any], index: int):
        if cell.cell_type != "code":
            return cell, resources
        if not self._agent_ready:
            self._install_agent()
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and meta.get("grade_id") not in self._tests:
            # a cell the student marked as a test (nbgrader dropped its unknown grade_id): ordinary code
            cell.metadata.pop("nbgrader", None)
            meta = {}
        if meta.get("grade") and not meta.get("solution"):
            cell.outputs = self._judge(meta.get("grade_id", ""))
            self._judged = getattr(self, "_judged", 0) + 1
            cell.execution_count = 10_000 + self._judged  # judged by the grader, not run in the kernel
            return cell, resources
        if self._dead:
            cell.outputs = [
                NotebookNode(
                    output_type="error",
                    ename="DeadKernelError",
                    evalue=self._dead,
                    traceback=[f"not run: {self._dead}"],
                )
            ]
            return cell, resources
        self._cell_bytes = 0
        self._cut = False
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
            if getattr(self, "_judged", 0) and cell.outputs:
                # after the first test, the kernel has seen hidden inputs: what a later cell prints could
                # carry them into the feedback, so it is not kept
                errors = [o.get("ename", "Error") for o in cell.outputs if o.get("output_type") == "error"]
                note = (
                    "[output not kept: cells that run after the grader's first test could show its hidden "
                    "cases" + (f"; this cell raised {errors[0]}" if errors else "") + "]\n"
                )
                cell.outputs = [NotebookNode(output_type="stream", name="stdout", text=note)]
            return cell, resources
        except Exception as exc:  # DeadKernelError, a kernel that stopped answering, ...
            self._dead = f"the kernel stopped while running an earlier cell ({type(exc).__name__})"
            cell.outputs.append(
                NotebookNode(output_type="error", ename=type(exc).__name__, evalue=self._dead, traceback=[self._dead])
            )
            return cell, resources

    def output(self, outs, msg, display_id, cell_index):
        """Store a cell's output until its cap, then one note; the rest is dropped, never stored."""
        size = len(json.dumps(msg.get("content", {}), default=str))
        self._cell_bytes = getattr(self, "_cell_bytes", 0) + size
        self._total_output += size
        if self._cell_bytes > self.max_output_bytes or self._total_output > self.max_total_output_bytes:
            if not self._cut:
                self._cut = True
                note = NotebookNode(
                    output_type="stream",
                    name="stdout",
                    text=f"\n[output cut by the grader: more than {self.max_output_bytes // 1000} kB "
                    "in this cell or the notebook]\n",
                )
                outs.append(note)
            return None
        return super().output(outs, msg, display_id, cell_index)

    # ---------------------------------------------------------------- the agent and the trusted tests
    def _install_agent(self) -> None:
        self._agent_ready = True
        code = (
            f"import types as _t, sys as _s\n_m = _t.ModuleType('_grading_agent_src')\n"
            f"exec(compile({AGENT_SOURCE!r}, '<grading-agent>', 'exec'), _m.__dict__)\n"
            "_m.install(get_ipython().user_ns)\ndel _t, _s, _m\n"
        )
        try:
            reply = self._execute_silently(code, timeout=60)
        except Exception as exc:  # noqa: BLE001
            self._dead = f"the kernel did not start ({type(exc).__name__}: {exc})"
            return
        if reply is None or reply.get("content", {}).get("status") != "ok":
            self._dead = "the grading agent could not be installed in the kernel"

    def _execute_silently(self, code: str, timeout: float) -> dict[str, Any] | None:
        """Run code in the kernel without recording anything in the notebook; None on timeout."""
        assert self.kc is not None
        msg_id = self.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout
        interrupted = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if interrupted:  # no answer even to the interrupt: nothing more can run in this kernel
                    self._dead = "the kernel stopped responding (a call that did not finish ignored the interrupt)"
                    return None
                self._interrupt()
                interrupted, deadline = True, time.monotonic() + 15
                continue
            try:
                msg = self._run(self.kc.shell_channel.get_msg(timeout=min(remaining, 1.0)))
            except Exception as exc:  # queue.Empty
                if type(exc).__name__ != "Empty":
                    raise
                if not self._run(self.km.is_alive()):
                    raise KernelFailure("the kernel died") from None
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return None if interrupted else msg

    def _run(self, value: Any) -> Any:
        from jupyter_core.utils import ensure_async, run_sync

        async def wait() -> Any:
            return await ensure_async(value)

        return run_sync(wait)()

    def _interrupt(self) -> None:
        try:
            self._run(self.km.interrupt_kernel())
            time.sleep(0.5)
        except Exception:  # noqa: BLE001
            pass

    def _transport(self, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        if self._dead:
            raise KernelFailure(self._dead)
        token = uuid.uuid4().hex
        request_path = self._inbox / f"{token}.pt"
        response_path = self._outbox / f"{token}.pt"
        torch.save(request, request_path)
        os.chmod(request_path, 0o644)
        code = f"__import__('sys').modules['_grading_agent'].agent.serve({str(request_path)!r}, {str(response_path)!r})"
        try:
            reply = self._execute_silently(code, timeout or 60)
        except KernelFailure:
            self._dead = "the kernel died while running your code"
            raise KernelFailure(self._dead) from None
        finally:
            request_path.unlink(missing_ok=True)
        if reply is None:
            raise KernelFailure(
                f"your code did not finish within {timeout:.0f} s (stopped; the rest of this test was not run)"
            )
        try:
            return read_response(str(response_path))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(response_path)

    def _sandbox_pid(self) -> int:
        provisioner = getattr(self.km, "provisioner", None)
        process = getattr(provisioner, "process", None)
        return int(getattr(process, "pid", 0) or 0)

    def _judge(self, cell_id: str) -> list[NotebookNode]:
        test = self._tests.get(cell_id)
        if test is None:
            return _verdict_outputs(cell_id, KernelFailure(f"the grader has no test for {cell_id!r}"), 0.0)
        if self._dead:
            return _verdict_outputs(cell_id, KernelFailure(self._dead), 0.0)
        pid = self._sandbox_pid()
        student = Student(
            self._transport,
            lambda: sandbox_cpu_seconds(pid) if pid else time.process_time(),
            default_forbid=self._tests.get("__forbid__"),  # type: ignore[arg-type]
            call_timeout=float(self.timeout or 120),
        )
        start = time.perf_counter()
        student.deadline = time.monotonic() + self.test_timeout
        try:
            test(student)
            error: BaseException | None = None
        except (AssertionError, KernelFailure) as exc:
            error = _with_case(exc, test.__code__.co_filename)
        except Exception as exc:  # noqa: BLE001 - a bug in a trusted test must not look like the student's
            self.log.error("trusted test %s crashed: %s", cell_id, traceback.format_exc())
            error = KernelFailure(
                f"the grader's test {cell_id} could not run ({type(exc).__name__}: {exc}); tell your instructor"
            )
        finally:
            with contextlib.suppress(Exception):
                if not self._dead:
                    student._transport({"op": "release"}, 10)
        return _verdict_outputs(cell_id, error, time.perf_counter() - start)


def run_notebook(notebook: Path, assignment: str, timeout: int = 120) -> NotebookNode:
    """Execute one notebook the way autograding does (sandbox + trusted tests), without a gradebook.
    For developing trusted tests: ``python -m grading try <assignment> <notebook>``."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    pre = TrustedExecute(timeout=timeout, interrupt_on_timeout=True, shutdown_kernel="immediate")
    os.environ.setdefault("NBGRADER_EXECUTION", "autograde")
    resources = {"metadata": {"path": str(Path(notebook).parent)}, "nbgrader": {"assignment": assignment}}
    nb, _ = pre.preprocess(nb, resources)
    return nb
