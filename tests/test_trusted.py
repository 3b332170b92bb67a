"""Unit tests of trusted grading's parts: the agent's guard, the data boundary, the review list, the sandbox's command.

The agent is exercised in this process (its source is what every graded kernel receives); the full path
through nbgrader and bubblewrap is tested by tests/test_grading_pipeline.py and tests/test_redteam.py.
"""

from __future__ import annotations

import os
import pickle
import types

import nbformat
import pytest
import torch
import torch.nn.functional as F
import torchvision

from grading import review, sandbox, trusted

_AGENT_MODULE = types.ModuleType("agent_under_test")
exec(compile(trusted.AGENT_SOURCE, "<grading-agent>", "exec"), _AGENT_MODULE.__dict__)
_AGENT_MODULE.sys.addaudithook(_AGENT_MODULE._audit)  # as install() does in a kernel (once: hooks stay)
_AGENT_MODULE._guard_threads()
_AGENT_MODULE._snapshot()


def _agent(namespace: dict):
    return _AGENT_MODULE.Agent(namespace)


def _student(namespace: dict, tmp_path, forbid=None) -> trusted.Student:
    agent = _agent(namespace)
    counter = [0]

    def transport(request, timeout):
        counter[0] += 1
        req, resp = tmp_path / f"req{counter[0]}.pt", tmp_path / f"resp{counter[0]}.pt"
        torch.save(request, req)
        agent.serve(str(req), str(resp))
        return trusted.read_response(str(resp))

    return trusted.Student(transport, lambda: 0.0, default_forbid=forbid)


def test_results_cross_as_data_and_objects_stay_behind(tmp_path):
    ns: dict = {}
    exec(
        "import torch\n"
        "def f(x, k=2):\n    return {'y': x * k, 'shape': x.shape, 'dtype': x.dtype, 'items': [1, 2.5, None, 'a']}\n"
        "class Box:\n    def __init__(self, v): self.v = v\n    def double(self): return self.v * 2\n",
        ns,
    )
    s = _student(ns, tmp_path)
    out = s.call("f", torch.arange(3.0), k=3)
    assert torch.equal(out["y"], torch.tensor([0.0, 3.0, 6.0]))
    assert out["shape"] == (3,) and out["dtype"] is torch.float32 and out["items"] == [1, 2.5, None, "a"]
    box = s.call("Box", torch.tensor(4.0))
    assert isinstance(box, trusted.Remote)
    assert box.call("double").item() == 8.0 and box.get("v").item() == 4.0
    assert s.exec("result = b.v + 1", b=box).item() == 5.0


def test_student_errors_report_the_call_and_the_students_frames(tmp_path):
    ns: dict = {}
    cell = tmp_path / "ipykernel_1" / "cell.py"  # where IPython keeps a cell's source
    cell.parent.mkdir()
    cell.write_text("def f(x):\n    return x @ x\n")
    exec(compile(cell.read_text(), str(cell), "exec"), ns)
    s = _student(ns, tmp_path)
    with pytest.raises(trusted.StudentError) as info:
        s.call("f", torch.zeros(2, 3))
    text = str(info.value)
    assert "f(Tensor[2, 3] float32) raised RuntimeError" in text and "x @ x" in text
    assert "<grading-agent>" not in text
    with pytest.raises(trusted.StudentError, match="does not define 'g'"):
        s.call("g")


@pytest.mark.parametrize(
    "route",
    [
        "F.conv2d(x, w)",  # the public name
        "_captured(x, w)",  # a reference taken before the test
        "torch.ops.aten.convolution(x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)",  # the operator
        "torch._C._nn.slow_conv3d(x[:, :, None], w[:, :, None], [1, 1, 1]) if False else torch.conv2d(x, w)",
    ],
)
def test_a_forbidden_operator_is_refused_however_it_is_reached(tmp_path, route):
    ns: dict = {}
    exec(
        f"import torch\nimport torch.nn.functional as F\n_captured = F.conv2d\ndef conv(x, w):\n    return {route}\n",
        ns,
    )
    s = _student(ns, tmp_path)
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    assert torch.allclose(s.call("conv", x, w), F.conv2d(x, w), atol=1e-5)  # allowed outside forbid
    with s.forbid(ops=["aten::*convolution*", "aten::conv*"]):
        with pytest.raises(trusted.ForbiddenUse, match="convolution|conv"):
            s.call("conv", x, w)


def test_a_forbidden_python_function_is_seen_through_an_alias_and_a_swallowed_error(tmp_path):
    ns: dict = {}
    exec(
        "import torchvision\n_iou = torchvision.ops.box_iou\n"
        "def iou(a, b):\n    try:\n        return _iou(a, b)\n    except Exception:\n        return _iou(a, b)\n",
        ns,
    )
    s = _student(ns, tmp_path)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    with s.forbid(python=["torchvision.ops.box_iou"]):
        with pytest.raises(trusted.ForbiddenUse, match="torchvision.ops.box_iou"):
            s.call("iou", boxes, boxes)
    assert s.call("iou", boxes, boxes).item() == 1.0


def test_autograd_is_refused_where_a_hand_written_backward_is_asked(tmp_path):
    ns: dict = {}
    exec(
        "import torch\n"
        "def backward_by_autograd(x, g):\n    x = x.clone().requires_grad_(True)\n"
        "    (x.tanh() * g).sum().backward()\n    return x.grad\n"
        "def backward_by_hand(x, g):\n    return g * (1 - x.tanh() ** 2)\n",
        ns,
    )
    s = _student(ns, tmp_path)
    x, g = torch.randn(5), torch.randn(5)
    with s.forbid(autograd=True):
        with pytest.raises(trusted.ForbiddenUse, match="autograd"):
            s.call("backward_by_autograd", x, g)
        assert torch.allclose(s.call("backward_by_hand", x, g), g * (1 - x.tanh() ** 2))


def test_the_nms_operator_is_refused_through_torch_ops(tmp_path):
    ns: dict = {}
    exec("import torch, torchvision\n_op = torch.ops.torchvision.nms\ndef nms(b, s, t):\n    return _op(b, s, t)\n", ns)
    s = _student(ns, tmp_path, forbid=dict(ops=["torchvision::nms"]))
    boxes, scores = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([1.0])
    with pytest.raises(trusted.ForbiddenUse, match="torchvision::nms"):
        s.call("nms", boxes, scores, 0.5)
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0]  # the grader's own copy is untouched


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_the_grader_reads_only_plain_data(tmp_path):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"ok": True, "value": _Evil()}))
    with pytest.raises(trusted.KernelFailure, match="not plain data"):
        trusted.read_response(str(evil))
    link = tmp_path / "link.pt"
    link.symlink_to(tmp_path / "elsewhere.pt")
    torch.save({"ok": True, "value": 1}, tmp_path / "elsewhere.pt")
    with pytest.raises(trusted.KernelFailure, match="cannot be read"):
        trusted.read_response(str(link))
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(trusted.KernelFailure, match="regular file"):
        trusted.read_response(str(fifo))
    big = tmp_path / "big.pt"
    torch.save({"ok": True, "value": torch.zeros(1000)}, big)
    with pytest.raises(trusted.KernelFailure, match="MB"):
        trusted.read_response(str(big), limit=100)
    assert trusted.read_response(str(tmp_path / "elsewhere.pt")) == {"ok": True, "value": 1}


def test_the_sandbox_command_hides_the_course_and_drops_privileges(tmp_path):
    config = {"scratch": str(tmp_path / "s"), "inbox": str(tmp_path / "i"), "ipc": str(tmp_path / "p"), "uid": 201234}
    argv = sandbox.bwrap_argv(config, ["python", "-m", "ipykernel_launcher"])
    joined = " ".join(argv)
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"):
        assert flag in argv
    bound = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind")]
    repo = str(sandbox.REPO)
    inside_repo = sorted(p for p in bound if p.startswith(repo + "/") or p == repo)
    assert inside_repo == sorted(
        {str(sandbox.REPO / "utils"), *(p for p in inside_repo if p.startswith(repo + "/.venv"))}
    ), f"the sandbox sees more of the course than utils/ and .venv: {inside_repo}"
    writable = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert sorted(writable) == sorted([config["scratch"], config["ipc"]])
    assert "--as=" in joined and "--nproc=" in joined and "--fsize=" in joined and "--cpu=" in joined
    if os.geteuid() == 0:
        assert "--reuid=201234" in joined and "--inh-caps=-all" in joined


def test_review_flags_reaching_into_the_machinery_but_not_the_release():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("def f(x):\n    return x + 1"),
        nbformat.v4.new_code_cell(
            "import sys\nsys.modules['torch'].allclose = lambda *a: True\n"
            "get_ipython().showtraceback = None\nos.kill(os.getppid(), 9)\n"
            "open('/work/main/solutions/x.ipynb').read()\n"
        ),
    ]
    kinds = {f.flag for f in review.scan_notebook(nb, "s", "nms")}
    assert {"sys.modules / import machinery", "IPython internals", "signals / exit", "files"} <= kinds
    release = nbformat.read(sandbox.REPO / "assignments" / "nms" / "nms.ipynb", as_version=4)
    assert review.scan_notebook(release, "s", "nms") == []


@pytest.mark.parametrize(
    "bypass",
    [
        # another thread does not see this thread's guards
        "import concurrent.futures\n    with concurrent.futures.ThreadPoolExecutor(1) as pool:\n"
        "        return pool.submit(torchvision.ops.box_iou, a, b).result()",
        # switching the profiler off
        "import sys\n    sys.setprofile(None)\n    return torchvision.ops.box_iou(a, b)",
        # taking the dispatch mode off the stack
        "from torch.utils._python_dispatch import _pop_mode\n    mode = _pop_mode()\n"
        "    try:\n        return torchvision.ops.box_iou(a, b)\n    finally:\n        torch.utils._python_dispatch._push_mode(mode)",
        # another process
        "import subprocess\n    subprocess.run(['true'])\n    return torchvision.ops.box_iou(a, b)",
    ],
)
def test_the_guard_cannot_be_sidestepped_by_threads_processes_or_switching_it_off(tmp_path, bypass):
    ns: dict = {}
    exec(f"import torch, torchvision\ndef iou(a, b):\n    {bypass}\n", ns)
    s = _student(ns, tmp_path, forbid=dict(ops=["torchvision::nms"], python=["torchvision.ops.box_iou"]))
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    try:
        with pytest.raises((trusted.ForbiddenUse, trusted.StudentError)):
            s.call("iou", boxes, boxes)
    finally:
        import sys

        sys.setprofile(None)


def test_a_thread_started_before_the_graded_call_fails_it(tmp_path):
    import threading

    ns: dict = {}
    exec("def f(x):\n    return x + 1\n", ns)
    s = _student(ns, tmp_path, forbid=dict(python=["torchvision.ops.box_iou"]))
    assert s.call("f", torch.tensor(1.0)).item() == 2.0
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, daemon=True)  # a pool the student warmed up in a cell
    worker.start()
    try:
        with pytest.raises(trusted.ForbiddenUse, match="threads"):
            s.call("f", torch.tensor(1.0))
    finally:
        stop.set()
        worker.join()
    assert s.call("f", torch.tensor(1.0)).item() == 2.0


def test_rebinding_a_forbidden_method_before_the_call_does_not_move_the_guard(tmp_path):
    ns: dict = {}
    exec(
        "import torchvision.models.resnet as R\n_original = R.BasicBlock.forward\n"
        "R.BasicBlock.forward = lambda self, x: None\n"
        "def run(block, x):\n    return _original(block, x)\n",
        ns,
    )
    try:
        s = _student(ns, tmp_path, forbid=dict(python=["torchvision.models.resnet.BasicBlock.forward"]))
        block = s.exec("import torchvision\nresult = torchvision.models.resnet.BasicBlock(4, 4)")
        with pytest.raises(trusted.ForbiddenUse, match="BasicBlock.forward"):
            s.call("run", block, torch.randn(1, 4, 5, 5))
    finally:
        import torchvision.models.resnet as R

        R.BasicBlock.forward = ns["_original"]


def test_grading_refuses_to_run_without_a_sandbox_unless_told(tmp_path, monkeypatch):
    from grading import pipeline

    (tmp_path / "inbox" / "alice" / "nms").mkdir(parents=True)
    monkeypatch.setattr(sandbox, "available", lambda: False)
    monkeypatch.delenv("DLCV_UNSANDBOXED", raising=False)
    with pytest.raises(SystemExit, match="refusing to grade"):
        pipeline.autograde_folder(tmp_path / "inbox", tmp_path)
    pre = trusted.TrustedExecute()
    with pytest.raises(RuntimeError, match="refusing to grade"):
        pre.preprocess(nbformat.v4.new_notebook(), {"metadata": {"path": str(tmp_path)}})
    monkeypatch.setenv("DLCV_UNSANDBOXED", "1")
    assert sandbox.unsandboxed_allowed()


def test_results_are_encoded_under_the_guard_and_numpy_values_cross(tmp_path):
    ns: dict = {}
    exec(
        "import numpy as np, torch, torchvision\n"
        "class Sneaky(torch.Tensor):\n    pass\n"
        "def stats(x):\n    return {np.int64(1): np.float64(x.sum()), 'n': np.int32(3)}\n"
        "class Answer:\n    def __iter__(self):\n"
        "        return iter([torchvision.ops.box_iou(torch.ones(1, 4), torch.ones(1, 4))])\n"
        "def cheat():\n    return list(Answer())\n",
        ns,
    )
    s = _student(ns, tmp_path, forbid=dict(python=["torchvision.ops.box_iou"]))
    assert s.call("stats", torch.ones(3)) == {1: 3.0, "n": 3}
    with pytest.raises(trusted.ForbiddenUse):
        s.call("cheat")


_HIDDEN_TEST_SOURCE = """
import torch
from utils.testing import assert_close


def named_by_its_assert(student):
    for n in (2, 3):
        assert_close(
            f"f of {n} ones",
            student.call("f", torch.ones(n)),
            torch.ones(n) + 1,
        )


def named_by_a_block(student):
    with student.case("the explicit case"):
        student.call("f", torch.ones(3))
"""


def test_a_crash_in_a_trusted_test_names_its_case_and_the_students_frames(tmp_path):
    """The verdict of a crash names the case (the label of the check that made the call, or an explicit
    ``student.case``), then the student's own frames, innermost last; none of the grader's."""
    import importlib.util

    ns: dict = {}
    cell = tmp_path / "ipykernel_1" / "cell.py"
    cell.parent.mkdir()
    cell.write_text("def helper(x):\n    return x + torch.ones(2)\n\n\ndef f(x):\n    return helper(x)\n")
    exec("import torch", ns)
    exec(compile(cell.read_text(), str(cell), "exec"), ns)
    module_file = tmp_path / "hidden_case.py"
    module_file.write_text(_HIDDEN_TEST_SOURCE)
    spec = importlib.util.spec_from_file_location("hidden_case", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for test, case in [(module.named_by_its_assert, "f of 3 ones"), (module.named_by_a_block, "the explicit case")]:
        s = _student(ns, tmp_path)
        with pytest.raises(trusted.StudentError) as info:
            test(s)
        text = str(trusted._with_case(info.value, str(module_file)))
        assert text.startswith(f'in the case "{case}": f(Tensor[3] float32) raised RuntimeError'), text
        assert "in f (your code, line 6): return helper(x)" in text
        assert text.index("return helper(x)") < text.index("in helper (your code, line 2)"), "innermost last"
        assert "hidden_case" not in text and "<grading-agent>" not in text and "trusted.py" not in text


def test_an_injected_library_function_replaces_the_students_for_one_call_only(tmp_path):
    """``student.using(box_iou=...)`` judges nms on torchvision's box_iou although box_iou is forbidden for
    the student's own code; the student's box_iou is back afterwards; calling the library directly from
    the student's code stays forbidden, also from inside the injected function (a tensor subclass)."""
    ns: dict = {}
    exec(
        "import torch, torchvision\n"
        "def box_iou(a, b):\n    return torch.zeros(len(a), len(b))  # wrong\n"
        "def nms(boxes, scores, t):\n    iou = box_iou(boxes, boxes)\n"
        "    order = scores.argsort(descending=True)\n    keep = []\n"
        "    for i in order.tolist():\n"
        "        if all(iou[i, j] <= t for j in keep):\n            keep.append(i)\n"
        "    return torch.tensor(keep)\n"
        "def cheat(boxes, scores, t):\n    box_iou(boxes, boxes)\n    return torchvision.ops.nms(boxes, scores, t)\n",
        ns,
    )
    forbid = dict(ops=["torchvision::nms"], python=["torchvision.ops.box_iou", "torchvision.ops.nms"])
    s = _student(ns, tmp_path, forbid=forbid)
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert s.call("nms", boxes, scores, 0.5).tolist() == [0, 1, 2]  # the student's wrong box_iou
    with s.using(box_iou="torchvision.ops.box_iou"):
        assert s.call("nms", boxes, scores, 0.5).tolist() == [0, 2]
        with pytest.raises(trusted.ForbiddenUse, match="torchvision.ops.nms"):
            s.call("cheat", boxes, scores, 0.5)
    assert s.call("nms", boxes, scores, 0.5).tolist() == [0, 1, 2]
    with s.using(nms="torchvision.ops.nms"):  # the operator itself, reached by the injected function
        assert s.exec("result = nms(b, s, 0.5)", b=boxes, s=scores).tolist() == [0, 2]
        with pytest.raises(trusted.ForbiddenUse, match="torchvision::nms"):
            s.exec("result = torch.ops.torchvision.nms(b, s, 0.5)", b=boxes, s=scores)
    exec(
        "class Sneaky(torch.Tensor):\n"
        "    @classmethod\n"
        "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
        "        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)\n"
        "        return super().__torch_function__(func, types, args, kwargs or {})\n"
        "def sneaky(boxes, scores, t):\n    return nms(boxes.as_subclass(Sneaky), scores, t)\n",
        ns,
    )
    with s.using(nms="torchvision.ops.nms"), pytest.raises(trusted.ForbiddenUse):
        s.call("sneaky", boxes, scores, 0.5)
    with pytest.raises(ValueError):
        with s.using(box_iou="os.system"):
            s.call("nms", boxes, scores, 0.5)
