"""Pre-warmed kernels for autograding: every graded notebook's kernel starts with torch already imported.

nbgrader gives each submission a fresh kernel, and on a 2-core machine most of a graded notebook's time
is that kernel importing torch and torchvision (3-5 s of 7-13 s). While the course grades, a *kernel
server* imports them once and forks a new kernel process for each notebook. A fork is a separate
process with its own copy of memory: one student's code cannot see or change another's, exactly as
with a cold kernel; only the imports are already done.

Three pieces:

- the kernelspec ``dlcv-autograde`` (``grading/jupyter/kernels/``, chosen in ``nbgrader_config.py``) runs
  ``python -I -m grading.warm -f {connection_file}``: a small *launcher* that asks the server for a
  kernel and stands in for it (it forwards interrupts and termination, and exits with the kernel's
  exit code). Without a server, or when the kernel's environment differs from the server's in anything
  read at import time (thread counts, PYTHON* variables...), it becomes the ordinary ``ipykernel``
  (``exec``), so a plain ``nbgrader autograde`` behaves exactly as with the ``python3`` kernel;
- :func:`serve` (``python -m grading.warm serve SOCKET``): the server. It never runs a tensor operation
  (no thread pool exists to be broken by ``fork``), reaps its children and kills a child whose launcher
  was killed (nbgrader stops kernels with SIGKILL);
- :func:`kernel_server`: a context manager that starts a server for the duration of a grading run and
  tells the launchers where it is (``$DLCV_KERNEL_SERVER``).

Protocol (one Unix-socket connection per kernel): the launcher sends its stdin/stdout/stderr file
descriptors with a JSON request ``{"argv", "cwd", "env"}``; the server answers ``"pid <n>"`` or
``"cold <reason>"``, and later ``"exit <code>"`` when the kernel ends.
"""
from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

ENV = "DLCV_KERNEL_SERVER"  # path of the server's Unix socket
# Linux only: fork() after importing torch is unsafe on macOS, and there is no fork() on Windows;
# elsewhere nbgrader_config.py keeps the ordinary python3 kernel.
SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
KERNEL_NAME = "dlcv-autograde"
JUPYTER_DIR = Path(__file__).resolve().parent / "jupyter"  # its kernels/dlcv-autograde/ is the kernelspec
PRELOAD = ("numpy", "torch", "torchvision", "pandas", "matplotlib.pyplot", "ipykernel.ipkernel")
# Modules that must stay out of PRELOAD: ipykernel.kernelapp reads JPY_PARENT_PID when imported, and
# ipywidgets registers itself with the running IPython (there is none in the server) when imported.
NOT_PRELOADED = ("ipykernel.kernelapp", "ipywidgets", "matplotlib_inline")
# A forked kernel has these settings of the server's (torch, BLAS and matplotlib read them when
# imported): a request whose environment differs in any of them gets a cold kernel.
IMPORT_TIME_ENV = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "PYTORCH_", "TORCH", "MPL", "LD_", "HOME", "XDG_")
INLINE = "module://matplotlib_inline.backend_inline"  # the backend ipykernel picks when MPLBACKEND is unset
_HEADER = struct.Struct("!I")


def _import_time_env(env: Dict[str, str]) -> Dict[str, str]:
    found = {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}
    found["MPLBACKEND"] = env.get("MPLBACKEND") or INLINE  # what the kernel will run with
    return found


def _cold_argv(args: List[str]) -> List[str]:
    return [sys.executable, "-m", "ipykernel_launcher", *args]


def _signal_kernel(pid: int, signum: int) -> None:
    """Signal a forked kernel and its subprocesses (it leads its own process group, once it has run
    setsid; until then only the kernel itself exists)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


# ----------------------------------------------------------------------------- launcher (kernelspec argv)
def launch(args: List[str]) -> None:
    """Become a kernel: a fork of the server if one answers, else (``exec``) a cold ipykernel."""
    path = os.environ.get(ENV)
    if not path:
        os.execv(sys.executable, _cold_argv(args))
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        request = json.dumps({"argv": ["ipykernel_launcher", *args], "cwd": os.getcwd(),
                              "env": dict(os.environ)}).encode()
        socket.send_fds(conn, [_HEADER.pack(len(request)) + request], [0, 1, 2])
        reader = conn.makefile("r")
        answer = reader.readline().split(" ", 1)
    except OSError as exc:
        print(f"grading.warm: no kernel server at {path} ({exc}); starting a cold kernel", file=sys.stderr)
        os.execv(sys.executable, _cold_argv(args))
    if answer[0] != "pid":
        print(f"grading.warm: starting a cold kernel ({' '.join(answer).strip() or 'the server went away'})",
              file=sys.stderr)
        os.execv(sys.executable, _cold_argv(args))
    pid = int(answer[1])

    def forward(signum, frame):
        _signal_kernel(pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    line = reader.readline()  # "exit <code>"; empty if the server died
    code = int(line.split()[1]) if line.startswith("exit ") else 1
    os._exit(code)


# ----------------------------------------------------------------------------- server
def _read_request(conn: socket.socket) -> tuple:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < _HEADER.size:
        raise ValueError("short request")
    (size,) = _HEADER.unpack_from(data)
    body = data[_HEADER.size:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return json.loads(body), fds


def _become_kernel(request: dict, fds: List[int]) -> None:
    """In the forked child: take the launcher's stdio, cwd, environment and argv, then run ipykernel."""
    code = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            if fd != target:
                os.dup2(fd, target)
                os.close(fd)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        sys.path[0] = request["cwd"]  # as `python -m ipykernel_launcher` started in cwd would have it
        if "numpy" in sys.modules:  # a new process draws a fresh seed (torch's default seed is fixed anyway)
            sys.modules["numpy"].random.seed()
        import runpy

        runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report anything, then leave without running the server's code
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(path: str, ready_fd: Optional[int] = None) -> None:
    """Listen on the Unix socket ``path``, import PRELOAD, then fork a kernel for each launcher.

    It listens first and imports after: launchers that come meanwhile wait in the socket's queue, so
    whoever starts the server need not wait for torch.
    """
    import importlib

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    baseline = _import_time_env(dict(os.environ))
    os.environ["MPLBACKEND"] = baseline["MPLBACKEND"]  # matplotlib reads it when imported
    for module in PRELOAD:
        importlib.import_module(module)
    for module in NOT_PRELOADED:
        if module in sys.modules:
            raise SystemExit(f"grading.warm: PRELOAD imports {module}; forked kernels would misbehave")

    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, ("accept", None))
    children: Dict[int, dict] = {}  # pid -> {"conn", "pidfd"}
    log = open(log_path(path), "a", buffering=1)  # one line per kernel asked for: see served()

    def record(line: str) -> None:
        log.write(f"{line}\n")

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))

    def close_all_in_child() -> None:
        log.close()
        sel.close()
        listener.close()
        for child in children.values():
            child["conn"].close()
            os.close(child["pidfd"])

    while not stopping:
        for key, _ in sel.select(timeout=1.0):
            kind, pid = key.data
            if kind == "accept":
                conn, _ = listener.accept()
                conn.settimeout(10)  # a launcher sends its request at once; never let one stall the server
                try:
                    request, fds = _read_request(conn)
                except (OSError, ValueError):
                    conn.close()
                    continue
                conn.settimeout(None)
                differs = sorted(set(_import_time_env(request["env"]).items()) ^ set(baseline.items()))
                if differs or len(fds) != 3:
                    reason = f"environment differs: {sorted({k for k, _ in differs})}" if differs else "no stdio"
                    conn.sendall(f"cold {reason}\n".encode())
                    record(f"cold {request.get('cwd')}: {reason}")
                    conn.close()
                    for fd in fds:
                        os.close(fd)
                    continue
                child_pid = os.fork()
                if child_pid == 0:
                    conn.close()
                    close_all_in_child()
                    _become_kernel(request, fds)
                for fd in fds:
                    os.close(fd)
                try:
                    pidfd = os.pidfd_open(child_pid)
                except OSError as exc:  # cannot watch it: stop it before its launcher starts a cold one
                    os.kill(child_pid, signal.SIGKILL)
                    os.waitpid(child_pid, 0)
                    conn.sendall(f"cold pidfd_open failed: {exc}\n".encode())
                    record(f"cold {request['cwd']}: pidfd_open failed: {exc}")
                    conn.close()
                    continue
                children[child_pid] = {"conn": conn, "pidfd": pidfd}
                sel.register(pidfd, selectors.EVENT_READ, ("exited", child_pid))
                sel.register(conn, selectors.EVENT_READ, ("launcher", child_pid))
                conn.sendall(f"pid {child_pid}\n".encode())
                record(f"warm {request['cwd']}: pid {child_pid}")
            elif kind == "exited":  # the kernel ended: reap it, tell its launcher the exit code
                child = children.pop(pid)
                sel.unregister(child["pidfd"])
                os.close(child["pidfd"])
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(KeyError):  # already gone if its launcher went first
                    sel.unregister(child["conn"])
                with contextlib.suppress(OSError):
                    child["conn"].sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                child["conn"].close()
            elif kind == "launcher":  # the launcher went away (killed): the kernel goes too
                child = children[pid]
                sel.unregister(child["conn"])
                _signal_kernel(pid, signal.SIGKILL)  # not yet reaped, so the pid cannot be someone else's
    for pid in children:
        _signal_kernel(pid, signal.SIGKILL)
    listener.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ----------------------------------------------------------------------------- for grading runs
def log_path(path: str) -> str:
    return path + ".log"


def served(path: str) -> dict:
    """How many kernels the server at ``path`` forked ("warm") and refused ("cold", with the reasons)."""
    lines = []
    with contextlib.suppress(FileNotFoundError):
        lines = Path(log_path(path)).read_text().splitlines()
    cold = [line for line in lines if line.startswith("cold ")]
    return {"warm": sum(line.startswith("warm ") for line in lines), "cold": len(cold), "cold_reasons": cold}


def kernelspec_env() -> Dict[str, str]:
    """JUPYTER_PATH with this package's kernels/ first, so nbgrader finds the dlcv-autograde kernelspec."""
    rest = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != str(JUPYTER_DIR)]
    return {"JUPYTER_PATH": os.pathsep.join([str(JUPYTER_DIR), *rest])}


@contextlib.contextmanager
def kernel_server(timeout: float = 30.0) -> Iterator[Optional[str]]:
    """Run a kernel server while the block runs; ``$DLCV_KERNEL_SERVER`` points launchers at it.

    Reuses a server that is already running (the variable is set and its socket exists). If the server
    does not come up within ``timeout`` seconds, grading goes on with cold kernels.
    """
    if not SUPPORTED:
        yield None
        return
    existing = os.environ.get(ENV)
    if existing and os.path.exists(existing):
        yield existing
        return
    folder = tempfile.mkdtemp(prefix="dlcv-kernels-")
    path = os.path.join(folder, "server.sock")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "grading.warm", "serve", path, str(write_end)],
                            pass_fds=(write_end,), start_new_session=True)
    os.close(write_end)
    ready = False
    with os.fdopen(read_end) as pipe:
        start = time.monotonic()
        sel = selectors.DefaultSelector()
        sel.register(pipe, selectors.EVENT_READ)
        while not ready and proc.poll() is None and time.monotonic() - start < timeout:
            if sel.select(timeout=1.0):
                ready = pipe.readline().strip() == "ready"
                break
        sel.close()
    previous = os.environ.get(ENV)
    if ready:
        os.environ[ENV] = path
    try:
        yield path if ready else None
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.unlink(log_path(path))
            os.rmdir(folder)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        launch(sys.argv[1:])
