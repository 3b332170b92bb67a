"""grading/warm.py: a kernel forked from the kernel server behaves like a cold one, only sooner.

Each test runs real notebooks through nbclient on the `dlcv-autograde` kernelspec, as nbgrader does.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from grading import warm

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not warm.SUPPORTED, reason="pre-warmed kernels are Linux-only")]

PROBE = (
    "import json, os, sys\n"
    "print(json.dumps({'warm': 'torch' in sys.modules, 'pid': os.getpid(), 'cwd': os.getcwd(),\n"
    "                  'path': sys.path, 'probe': os.environ.get('DLCV_PROBE'),\n"
    "                  'marked': hasattr(sys.modules.get('torch'), 'student_mark')}))"
)


@pytest.fixture(scope="module")
def server():
    # conftest.py sets MPLBACKEND=Agg for the test process; kernels here get ipykernel's inline backend
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", warm.ENV, "MPLBACKEND")}
    os.environ.pop(warm.ENV, None)
    os.environ.pop("MPLBACKEND", None)
    os.environ.update(warm.kernelspec_env())
    with warm.kernel_server() as path:
        assert path and os.environ[warm.ENV] == path, "the kernel server did not start"
        yield path
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run(folder: Path, sources: List[str], timeout: int = 60) -> nbformat.NotebookNode:
    """Execute a notebook of `sources` in `folder` on the dlcv-autograde kernel (errors kept as outputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    client = NotebookClient(nb, kernel_name=warm.KERNEL_NAME, timeout=timeout, interrupt_on_timeout=True,
                            allow_errors=True, shutdown_kernel="immediate",
                            resources={"metadata": {"path": str(folder)}})
    client.execute()
    return nb


def probe(nb: nbformat.NotebookNode, cell: int = 0) -> dict:
    text = "".join(o.get("text", "") for o in nb.cells[cell].outputs if o.output_type == "stream")
    assert text.strip(), f"the probe printed nothing; outputs: {nb.cells[cell].outputs}"
    return json.loads(text.strip().splitlines()[-1])


def test_forked_kernels_are_warm_and_do_not_share_state(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DLCV_PROBE", "from the launcher's environment")
    first = run(tmp_path / "alice", [PROBE, "import torch\ntorch.student_mark = 1\nstudent_global = 1"])
    second = run(tmp_path / "bob", [PROBE, "print('student_global' in globals())"])
    a, b = probe(first), probe(second)
    assert a["warm"] and b["warm"], f"torch was not imported before the first cell: {a}, {b}"
    assert a["pid"] != b["pid"], "two notebooks ran in one kernel process"
    assert not b["marked"], "one kernel's change to the torch module reached the next kernel"
    assert second.cells[1].outputs[0]["text"].strip() == "False", "a global of one notebook leaked into the next"
    for who, seen in (("alice", a), ("bob", b)):
        assert seen["cwd"] == str(tmp_path / who), f"{who}'s kernel runs in the wrong folder: {seen}"
    assert a["probe"] == "from the launcher's environment", f"the kernel did not get its launcher's environment: {a}"
    monkeypatch.delenv(warm.ENV)
    cold = probe(run(tmp_path / "alice", [PROBE]))
    assert not cold["warm"]
    assert a["path"] == cold["path"], f"import path of a forked kernel {a['path']} != a cold one's {cold['path']}"


def test_inline_plots_and_stdout_work_in_a_forked_kernel(server, tmp_path):
    nb = run(tmp_path, [PROBE, "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()",
                        "import sys\nprint('to stderr', file=sys.stderr)"])
    assert probe(nb)["warm"]
    assert any("image/png" in o.get("data", {}) for o in nb.cells[1].outputs), \
        f"no inline figure; outputs: {[o.output_type for o in nb.cells[1].outputs]}"
    assert [o.get("name") for o in nb.cells[2].outputs] == ["stderr"]


def test_a_timed_out_cell_is_interrupted_and_the_next_cell_runs(server, tmp_path):
    start = time.perf_counter()
    nb = run(tmp_path, [PROBE, "while True:\n    pass", "print('still alive')"], timeout=5)
    assert probe(nb)["warm"]
    errors = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "KeyboardInterrupt", f"the loop was not interrupted: {nb.cells[1].outputs}"
    assert nb.cells[2].outputs[0]["text"].strip() == "still alive"
    assert time.perf_counter() - start < 40


def test_a_killed_kernel_is_gone(server, tmp_path):
    """nbgrader kills each kernel (SIGKILL to its launcher): the forked process must not live on."""
    pid = probe(run(tmp_path, [PROBE]))["pid"]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), f"kernel {pid} outlived its launcher"


def test_without_a_server_the_kernel_starts_cold(server, tmp_path, monkeypatch):
    monkeypatch.delenv(warm.ENV)
    assert probe(run(tmp_path / "none", [PROBE]))["warm"] is False
    monkeypatch.setenv(warm.ENV, str(tmp_path / "no-such.sock"))
    assert probe(run(tmp_path / "unreachable", [PROBE]))["warm"] is False


def test_a_different_thread_setting_gets_a_cold_kernel(server, tmp_path, monkeypatch):
    """torch and BLAS read OMP_NUM_THREADS when imported: a kernel that asks for another value must import them itself."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2" if os.environ.get("OMP_NUM_THREADS") == "1" else "1")
    refused = warm.served(server)["cold"]
    nb = run(tmp_path, [PROBE, "import os\nprint(os.environ['OMP_NUM_THREADS'])"])
    assert probe(nb)["warm"] is False
    assert warm.served(server)["cold"] == refused + 1
    assert "OMP_NUM_THREADS" in warm.served(server)["cold_reasons"][-1]
    assert nb.cells[1].outputs[0]["text"].strip() == os.environ["OMP_NUM_THREADS"]


def test_autograding_uses_the_forking_kernelspec():
    from traitlets.config import Config

    config = Config()
    namespace = {"get_config": lambda: config, "__file__": str(warm.JUPYTER_DIR.parent.parent / "nbgrader_config.py")}
    exec(compile(Path(namespace["__file__"]).read_text(), namespace["__file__"], "exec"), namespace)
    assert config.Execute.kernel_name == warm.KERNEL_NAME
    spec = json.loads((warm.JUPYTER_DIR / "kernels" / warm.KERNEL_NAME / "kernel.json").read_text())
    assert spec["argv"][:4] == ["python", "-I", "-m", "grading.warm"], spec["argv"]


def test_a_kernel_that_exits_is_seen_dead_at_once(server, tmp_path):
    """Student code that ends the process (os._exit, a crash): its launcher must exit too, or nbclient
    would wait for a reply until the cell timeout."""
    from nbclient.exceptions import DeadKernelError

    start = time.perf_counter()
    with pytest.raises(DeadKernelError):
        run(tmp_path, [PROBE, "import os\nos._exit(3)", "print('never')"], timeout=120)
    assert time.perf_counter() - start < 60, "the dead kernel was noticed only by the cell timeout"
