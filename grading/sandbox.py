"""Sandboxed kernels for autograding: bubblewrap, another uid, no network, a filesystem without the course.

Every graded notebook runs in a kernel started by :func:`launch` (the ``dlcv-sandbox`` kernelspec's
argv), which ``exec``s bubblewrap (Debian's ``bubblewrap`` package) around an ordinary ipykernel:

* **filesystem view**: read-only system folders (``/usr``, ``/etc``, ...), the Python installation, the
  course's ``.venv`` and its public ``utils/`` package; a writable scratch folder (a copy of the
  submission's files, the kernel's working directory and ``HOME``) and a private ``/tmp``. Nothing
  else of the course exists in it: no ``solutions/``, ``grading/``, gradebook, other submissions,
  autograded notebooks or git data;
* **another uid**: as root (CI), ``setpriv`` switches to an unused uid (one per grading process) with no capabilities;
  as an ordinary user, a user namespace maps the kernel to uid 65534 inside;
* **no network** (a network namespace with only its own loopback; the kernel talks to the grader
  over ZeroMQ ``ipc`` sockets in a folder shared with the sandbox), its own pid, ipc and uts
  namespaces, a new session, and it dies with the grader;
* **limits** (``prlimit``): address space, processes, CPU seconds, file size, open files.

Configuration travels in the environment variable ``DLCV_SANDBOX`` (JSON), set by the grading
preprocessor (:mod:`grading.trusted`) for each notebook: the scratch, inbox and ipc folders.
Only Linux has these tools; elsewhere :func:`available` is False and grading refuses to run
unless the instructor asks for unsandboxed grading explicitly (``DLCV_UNSANDBOXED=1``).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNEL_NAME = "dlcv-sandbox"
KERNELS_DIR = Path(__file__).resolve().parent / "jupyter"
SANDBOX_UID = 65534
# environment variables a graded kernel sees (everything else of the grader's environment is dropped)
ENV_PASSED = (
    "PATH",
    "LANG",
    "TZ",
    "NBGRADER_EXECUTION",
    "COURSE_STATIC_WIDGETS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "PYTHONHASHSEED",
    "CUDA_VISIBLE_DEVICES",
)

# limits of every graded kernel (prlimit); the per-cell wall-clock limit is nbgrader's Execute.timeout
LIMITS: dict[str, int] = {
    "as": int(os.environ.get("DLCV_SANDBOX_MEMORY", str(6 << 30))),  # bytes of address space (torch maps ~3.5 GB)
    "nproc": 256,  # processes and threads of the uid
    "cpu": int(os.environ.get("DLCV_SANDBOX_CPU", "900")),  # CPU seconds for the whole kernel
    "fsize": 64 << 20,  # bytes per file written
    "nofile": 1024,
    "core": 0,
}


_KERNELS_STARTED = [0]


def sandbox_uid() -> int:
    """The uid a graded kernel runs as. As root, an unused uid of its own for every kernel (so that the
    process limit, and any process a submission leaves behind, never touch the next kernel or one graded
    beside it); in a user namespace, 65534 inside (the grader's own uid outside)."""
    if os.geteuid() != 0:
        return SANDBOX_UID
    _KERNELS_STARTED[0] += 1
    return 1_000_000 + (os.getpid() % 100_000) * 1_000 + _KERNELS_STARTED[0] % 1_000


def available() -> bool:
    """True where bubblewrap, setpriv and prlimit exist (Linux with Debian's bubblewrap and util-linux)."""
    return sys.platform.startswith("linux") and all(shutil.which(t) for t in ("bwrap", "prlimit", "setpriv"))


def unsandboxed_allowed() -> bool:
    """The instructor's explicit opt-out (macOS, or a machine without bubblewrap)."""
    return os.environ.get("DLCV_UNSANDBOXED") == "1"


def kernelspec_env() -> dict[str, str]:
    """Where jupyter_client finds the ``dlcv-sandbox`` kernelspec (grading/jupyter/kernels/)."""
    path = os.environ.get("JUPYTER_PATH", "")
    if str(KERNELS_DIR) in path.split(os.pathsep):
        return {}
    return {"JUPYTER_PATH": os.pathsep.join(p for p in (str(KERNELS_DIR), path) if p)}


def copy_plain_files(source: Path, dest: Path, limit: int = 50 << 20) -> None:
    """Copy a submission folder as plain files: no symlinks, devices or hidden files and folders (such as
    .ipynb_checkpoints), and no more than ``limit`` bytes. What the grader reads of a hand-in, and what a
    sandboxed kernel sees of it, is that copy."""
    total = 0
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        if (
            path.is_symlink()
            or not path.is_file()
            or any(part.startswith(".") for part in path.relative_to(source).parts)
        ):
            continue
        total += path.stat().st_size
        if total > limit:
            break
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target, follow_symlinks=False)


def _python_prefixes() -> list[Path]:
    """Folders the venv's interpreter needs: the venv, the base installation it points to, and its
    site-packages where that is a link (the hub's stand-in venv, grading.hub.users_python)."""
    prefixes = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent}
    prefixes |= {Path(p).resolve() for p in site.getsitepackages() if Path(p).is_symlink()}
    return sorted(p for p in prefixes if p.exists())


def _system_binds() -> list[str]:
    args: list[str] = []
    for top in ("/usr", "/etc", "/opt"):
        if os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for link in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    return args


def _with_parents(binds: list[list[str]]) -> list[str]:
    """bwrap creates missing parent folders of a mount point with mode 0700, which the sandbox's uid
    cannot enter: create them first with mode 0755."""
    args: list[str] = []
    made = {"/"}
    for bind in binds:
        target = Path(bind[-1])
        for parent in reversed(target.parents):
            if str(parent) not in made and str(parent) not in ("/usr", "/etc", "/opt", "/tmp", "/dev", "/proc"):
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        args += bind
    return args


def bwrap_argv(config: dict[str, str], kernel_argv: list[str]) -> list[str]:
    """The full command: bwrap [namespaces, binds] -- [setpriv] prlimit ... -- kernel_argv."""
    scratch, inbox, ipc = config["scratch"], config["inbox"], config["ipc"]
    uid = int(config.get("uid", SANDBOX_UID))
    root = os.geteuid() == 0
    argv = [
        "bwrap",
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        *_system_binds(),
    ]
    if not root:
        argv += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    binds = [["--ro-bind", str(prefix), str(prefix)] for prefix in _python_prefixes()]
    utils_dir = str(REPO / "utils")
    binds += [
        ["--ro-bind", utils_dir, utils_dir],
        ["--ro-bind", inbox, inbox],
        ["--bind", scratch, scratch],
        ["--bind", ipc, ipc],
    ]
    argv += _with_parents(binds)
    argv += [
        "--chdir",
        scratch,
        "--setenv",
        "HOME",
        scratch,
        "--setenv",
        "MPLCONFIGDIR",
        os.path.join(scratch, ".matplotlib"),
        "--setenv",
        "TMPDIR",
        "/tmp",
        "--",
    ]
    if root:
        argv += [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
    argv += ["prlimit", *(f"--{name}={value}" for name, value in LIMITS.items()), "--"]
    return argv + kernel_argv


def launch(connection_file: str) -> None:
    """Kernelspec entry point (runs as the grader, outside the sandbox): exec bwrap around ipykernel."""
    config = json.loads(os.environ["DLCV_SANDBOX"])
    # the connection file lives in the grader's private runtime folder: hand the kernel a readable copy
    visible = os.path.join(config["inbox"], "connection.json")
    shutil.copyfile(connection_file, visible)
    os.chmod(visible, 0o644)
    kernel = [
        sys.executable,
        "-I",
        "-m",
        "ipykernel_launcher",
        "-f",
        visible,
        "--HistoryManager.hist_file=:memory:",
        "--IPKernelApp.log_level=ERROR",
    ]
    # only what a kernel needs: the grader's environment may hold secrets (a gradebook password, tokens)
    env = {k: v for k, v in os.environ.items() if k in ENV_PASSED or k.startswith("LC_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if available():
        argv = bwrap_argv(config, kernel)
    elif unsandboxed_allowed():  # the instructor's explicit choice: the kernel runs with their privileges
        argv = kernel
        os.chdir(config["scratch"])
        env["HOME"] = config["scratch"]
    else:
        raise SystemExit("refusing to start a grading kernel without a sandbox (see grading/sandbox.py)")
    if config.get("log"):  # the kernel process's own stdout/stderr (not its cells' output), for error messages
        fd = os.open(config["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    launch(sys.argv[sys.argv.index("-f") + 1] if "-f" in sys.argv else sys.argv[1])
