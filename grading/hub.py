"""A whole class on one machine: JupyterHub with nbgrader's exchange and a PostgreSQL gradebook (``make hub``).

python -m grading.hub setup [--root DIR] [--instructors a,b] [--students x,y] [--db-url URL]
python -m grading.hub start [--root DIR] [--port 8000]      run JupyterHub in the foreground (127.0.0.1 only)
python -m grading.hub status [--root DIR]                   what is set up where

What ``setup`` does (as root; it is idempotent, run it again to add students):

* **accounts**: a real local unix account per student and instructor (``useradd``; homes mode 0700, so no
  student can read another's files); instructors join the group ``dlcv-instructors``.
* **the instructor-only files of this checkout** (``solutions/``, ``grading/hidden/``, ``tests/``, ``.git``,
  gradebooks and grading folders) become ``root:dlcv-instructors`` without any access for others, so a
  student's own kernel cannot read them; the rest (``.venv``, ``utils/``, ``jupyter/``) stays readable: every
  single-user server and kernel runs from this checkout's ``.venv``.
* **the student edition** (:mod:`grading.edition`) is built into ``ROOT/student-edition`` and copied into each
  student's home (``~/dlcv-student``); instructors get ``~/dlcv``, an nbgrader course whose config executes this
  repository's ``nbgrader_config.py`` (trusted grading, feedback) with its gradebook at ``--db-url``.
* **nbgrader's exchange** the standard way: ``ROOT/exchange``, world-writable (nbgrader sets the permissions of
  what it puts there), named by ``c.Exchange.root`` in every user's config, with the course id.
* **the hub's state** in ``ROOT/state`` (mode 0700): ``hub.json`` (roster, paths, the try-out password, the
  operator's API token), JupyterHub's sqlite database and cookie secret. ``hub/jupyterhub_config.py`` reads it.

The roles' Jupyter settings: students run with ``jupyter/student/`` (no formgrader, create-assignment or course
list) plus ``ROOT/config/student/nbgrader_config.py`` (exchange, course id); instructors with nbgrader's full UI
and ``~/.jupyter/nbgrader_config.py``.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .paths import REPO

INSTRUCTOR_GROUP = "dlcv-instructors"
DEFAULT_ROOT = Path("/srv/dlcv-hub")
# what students must not read in this checkout (relative to REPO); everything else is the student edition's
# public code, the .venv their servers run from, or tooling without secrets
INSTRUCTOR_ONLY = [
    "solutions",
    "grading/hidden",
    "tests",
    ".git",
    "gradebook.db",
    "submitted",
    "autograded",
    "feedback",
    "grades.csv",
    "review.csv",
    "ungradable.csv",
    "test-output",
]
USERNAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}")


@dataclass
class Hub:
    """One hub's folders and roster. ``root`` must be traversable by every user (students read the edition and
    the exchange below it); ``state`` below it is root's alone."""

    root: Path
    course_id: str = "dlcv"
    instructors: list[str] = field(default_factory=list)
    students: list[str] = field(default_factory=list)
    db_url: str = ""
    home_base: str = ""  # where useradd puts homes ("" = the system's default, /home)
    password: str = ""  # the try-out authenticator's shared password (DummyAuthenticator)
    operator_token: str = ""  # an API token for the hub's REST API with admin:users, admin:servers, tokens
    port: int = 8000
    python: str = ""  # the interpreter every user's server runs (see :func:`users_python`)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def exchange(self) -> Path:
        return self.root / "exchange"

    @property
    def edition(self) -> Path:
        return self.root / "student-edition"

    @property
    def student_config(self) -> Path:
        return self.root / "config" / "student"

    def save(self) -> Path:
        path = self.state / "hub.json"
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        return path

    @classmethod
    def load(cls, root: Path) -> Hub:
        data = json.loads((Path(root) / "state" / "hub.json").read_text())
        data["root"] = Path(data["root"])
        return cls(**data)

    def home(self, user: str) -> Path:
        return Path(pwd.getpwnam(user).pw_dir)

    def course_dir(self, instructor: str) -> Path:
        return self.home(instructor) / "dlcv"


def _run(*cmd: str) -> None:
    """Run an account or file command; the shadow tools refuse while another one holds /etc/passwd's lock
    (two set-ups at once): try again."""
    for attempt in range(40):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        if "lock" not in proc.stderr.lower() or attempt == 39:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        time.sleep(0.25)


def ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        try:
            _run("groupadd", "--system", name)
        except subprocess.CalledProcessError:
            pass  # made by a set-up running at the same time
        return grp.getgrnam(name).gr_gid


def ensure_user(name: str, home_base: str = "", groups: tuple[str, ...] = ()) -> pwd.struct_passwd:
    """A local account with a private home (0700) and no password (the hub logs them in)."""
    if not USERNAME.fullmatch(name):
        raise ValueError(f"not a portable unix user name: {name!r}")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group"]
        if home_base:
            cmd += ["--base-dir", home_base]
        _run(*cmd, name)
        entry = pwd.getpwnam(name)
    for group in groups:
        _run("usermod", "--append", "--groups", group, name)
    os.chmod(entry.pw_dir, 0o700)
    return entry


def remove_user(name: str) -> None:
    """``userdel --remove`` (the account's home goes with it); no-op for an unknown name."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    try:
        _run("userdel", "--remove", name)
    except subprocess.CalledProcessError:
        pass  # e.g. a process of the account still runs: the account stays, its name is unique to a run


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def lock_instructor_files(repo: Path = REPO, group: str = INSTRUCTOR_GROUP) -> list[Path]:
    """Make this checkout's instructor-only paths ``root:<group>``, group read-only, nothing for others;
    the checkout's root stays traversable (o+x) but not listable. Returns the paths locked."""
    gid = ensure_group(group)
    locked = []
    for rel in INSTRUCTOR_ONLY:
        path = repo / rel
        if not path.exists() and not path.is_symlink():
            continue
        paths = [path] if not path.is_dir() else [path, *path.rglob("*")]
        for p in paths:
            if p.is_symlink():
                continue
            mode = p.stat().st_mode
            os.chown(p, -1, gid)
            group_bits = stat.S_IRGRP | (stat.S_IXGRP if p.is_dir() or mode & stat.S_IXUSR else 0)
            os.chmod(p, (mode & ~0o077) | group_bits)
        locked.append(path)
    os.chmod(repo, (repo.stat().st_mode & ~0o007) | stat.S_IXOTH)
    return locked


def _runs_as_nobody(python: Path) -> bool:
    probe = ["runuser", "-u", "nobody", "--", str(python), "-c", "import jupyterhub, nbgrader, utils"]
    return subprocess.run(probe, capture_output=True, cwd="/").returncode == 0


def users_python(hub: Hub) -> Path:
    """The interpreter of every user's server: this checkout's ``.venv``, when other users can run it.

    A venv made from an interpreter they cannot reach (pyenv under ``/root``, mode 0700) gets a stand-in in
    ``ROOT/python``: a venv whose ``site-packages`` is a link to the ``.venv``'s (nothing installed twice), on a
    hard-linked copy of that same base interpreter in ``ROOT/python-base`` whose executable finds its
    ``libpython`` next to it (``patchelf``; Debian's package, installed when missing). The same interpreter,
    not the system's: the packages were installed, and are tested, on it."""
    venv_python = Path(sys.prefix) / "bin" / "python"
    if _runs_as_nobody(venv_python):
        return venv_python
    for parent in [*reversed(REPO.parents)][1:]:
        if not parent.stat().st_mode & stat.S_IXOTH:
            raise SystemExit(
                f"other users cannot reach this checkout ({parent} has mode {oct(parent.stat().st_mode & 0o777)}):"
                " clone the course outside it (e.g. /srv or /opt) or run `chmod o+x` on it"
            )
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    source = Path(sys.base_prefix)
    base, shim = hub.root / "python-base", hub.root / "python"
    for folder in (base, shim):
        shutil.rmtree(folder, ignore_errors=True)
    _run("cp", "-al", str(source), str(base))  # hard links: seconds, no space
    shutil.rmtree(base / "lib" / minor / "site-packages")
    (base / "lib" / minor / "site-packages").mkdir()
    executable = base / "bin" / minor
    executable.unlink()
    shutil.copy2(source / "bin" / minor, executable)  # a copy of its own: patchelf rewrites it
    if not shutil.which("patchelf"):
        if shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-qq", "patchelf"], capture_output=True)
        if not shutil.which("patchelf"):
            raise SystemExit(f"{venv_python} is not usable by other users; install patchelf for its stand-in")
    _run("patchelf", "--set-rpath", "$ORIGIN/../lib", str(executable))
    for p in [base, *base.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)
    (shim / "bin").mkdir(parents=True)
    (shim / "lib" / minor).mkdir(parents=True)
    (shim / "bin" / "python").symlink_to(executable)
    (shim / "lib" / minor / "site-packages").symlink_to(Path(sysconfig_purelib()))
    for shared in ("etc", "share"):  # Jupyter's config (enabled server extensions) and data (lab extensions)
        if (Path(sys.prefix) / shared).exists():
            (shim / shared).symlink_to(Path(sys.prefix) / shared)
    version = ".".join(map(str, sys.version_info[:3]))
    (shim / "pyvenv.cfg").write_text(
        f"home = {executable.parent}\ninclude-system-site-packages = false\nversion = {version}\n"
    )
    # the commands nbgrader and Jupyter call by name
    for command, module in (
        ("alembic", "alembic.config"),
        ("jupyter", "jupyter_core.command"),
        ("nbgrader", "nbgrader.apps.nbgraderapp"),
    ):
        script = shim / "bin" / command
        script.write_text(f"#!{shim / 'bin' / 'python'}\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
        script.chmod(0o755)
    for p in [shim, *shim.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)
    if not _runs_as_nobody(shim / "bin" / "python"):
        raise SystemExit(f"{shim / 'bin' / 'python'} cannot import the course's packages as another user")
    return shim / "bin" / "python"


def sysconfig_purelib() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def _student_nbgrader_config(hub: Hub) -> str:
    return "\n".join(
        [
            "# written by python -m grading.hub setup: the course's exchange, as every student sees it",
            "c = get_config()  # noqa: F821",
            f"c.CourseDirectory.course_id = {hub.course_id!r}",
            f"c.Exchange.root = {str(hub.exchange)!r}",
            "",
        ]
    )


def _instructor_nbgrader_config(hub: Hub, course: Path) -> str:
    """The instructor's course (like :class:`grading.pipeline.Course`): this repository's config, relocated to
    ``course``, with the hub's exchange and the PostgreSQL gradebook."""
    return "\n".join(
        [
            "# written by python -m grading.hub setup: the course's own config (trusted grading, feedback),",
            "# relocated to this instructor's course folder, with the hub's exchange and gradebook",
            f"__file__ = {str(REPO / 'nbgrader_config.py')!r}",
            "exec(compile(open(__file__).read(), __file__, 'exec'))",
            f"c.CourseDirectory.root = {str(course)!r}",
            f"c.CourseDirectory.source_directory = {str(REPO / 'solutions')!r}",
            "c.CourseDirectory.release_directory = 'release'",
            f"c.CourseDirectory.db_url = {hub.db_url!r}",
            f"c.CourseDirectory.course_id = {hub.course_id!r}",
            f"c.Exchange.root = {str(hub.exchange)!r}",
            "",
        ]
    )


def _write_private(path: Path, text: str, uid: int, gid: int, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chown(path.parent, uid, gid)
    path.write_text(text)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def setup(hub: Hub) -> Hub:
    """Create (or complete) the hub described by ``hub``; see the module docstring. Needs root."""
    if os.geteuid() != 0:
        raise SystemExit("python -m grading.hub setup creates unix accounts: run it as root (sudo make hub)")
    if not hub.db_url.startswith("postgresql"):
        raise SystemExit(f"the hub's gradebook is PostgreSQL (python -m grading.postgres url), not {hub.db_url!r}")
    hub.root.mkdir(parents=True, exist_ok=True)
    os.chmod(hub.root, 0o755)
    hub.state.mkdir(exist_ok=True)
    os.chmod(hub.state, 0o700)
    hub.exchange.mkdir(exist_ok=True)
    os.chmod(hub.exchange, 0o777)  # nbgrader's documented set-up: `chmod ugo+rw` on the exchange
    hub.password = hub.password or secrets.token_urlsafe(12)
    hub.operator_token = hub.operator_token or secrets.token_hex(32)

    from . import edition

    fresh = hub.root / "student-edition.new"
    shutil.rmtree(fresh, ignore_errors=True)
    edition.build(fresh)
    shutil.rmtree(fresh / ".git", ignore_errors=True)
    shutil.rmtree(hub.edition, ignore_errors=True)
    fresh.rename(hub.edition)
    for p in [hub.edition, *hub.edition.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    hub.student_config.mkdir(parents=True, exist_ok=True)
    os.chmod(hub.student_config.parent, 0o755)
    os.chmod(hub.student_config, 0o755)
    (hub.student_config / "nbgrader_config.py").write_text(_student_nbgrader_config(hub))
    os.chmod(hub.student_config / "nbgrader_config.py", 0o644)

    hub.python = str(users_python(hub))
    lock_instructor_files()
    for name in hub.instructors:
        entry = ensure_user(name, hub.home_base, groups=(INSTRUCTOR_GROUP,))
        course = Path(entry.pw_dir) / "dlcv"
        if not course.exists():
            course.mkdir()
            os.chown(course, entry.pw_uid, entry.pw_gid)
        config = _instructor_nbgrader_config(hub, course)
        # the CLI in the course folder and the formgrader (which reads ~/.jupyter) see the same config
        for path in (course / "nbgrader_config.py", Path(entry.pw_dir) / ".jupyter" / "nbgrader_config.py"):
            _write_private(path, config, entry.pw_uid, entry.pw_gid)
    for name in hub.students:
        entry = ensure_user(name, hub.home_base)
        mine = Path(entry.pw_dir) / "dlcv-student"
        if not mine.exists():
            shutil.copytree(hub.edition, mine)
            _chown_tree(mine, entry.pw_uid, entry.pw_gid)
    hub.save()
    return hub


def jupyterhub_command(hub: Hub) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run this hub's JupyterHub (cwd: ``hub.state``)."""
    env = dict(os.environ)
    env["DLCV_HUB_ROOT"] = str(hub.root)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(Path(sys.executable).parent / "jupyterhub"), "-f", str(REPO / "hub" / "jupyterhub_config.py")]
    return cmd, env


def start(hub: Hub) -> int:
    proxy = REPO / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"
    if not proxy.exists():
        raise SystemExit("configurable-http-proxy is missing: run make hub-deps")
    cmd, env = jupyterhub_command(hub)
    env["DLCV_HUB_PORT"] = str(hub.port)
    print(f"JupyterHub on http://127.0.0.1:{hub.port}/  (try-out login: any roster name, password {hub.password})")
    return subprocess.run(cmd, env=env, cwd=hub.state).returncode


def _course_postgres(course_id: str) -> str:
    from . import postgres

    return postgres.url(course_id)


def _names(text: str) -> list[str]:
    return [n for n in re.split(r"[,\s]+", text or "") if n]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m grading.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["setup", "start", "status"])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="the hub's folder (default /srv/dlcv-hub)")
    parser.add_argument("--instructors", default="instructor")
    parser.add_argument("--students", default="student01,student02,student03")
    parser.add_argument(
        "--db-url",
        default=os.environ.get("NBGRADER_DB_URL", ""),
        help="the gradebook (default: the course's own server, python -m grading.postgres; never put a password"
        " on a command line that other users can see in ps)",
    )
    parser.add_argument("--course-id", default="dlcv")
    parser.add_argument("--home-base", default="")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    root = Path(args.root).resolve()
    if args.command == "setup":
        try:
            old = Hub.load(root)
        except FileNotFoundError:
            old = Hub(root)
        hub = Hub(
            root,
            course_id=args.course_id,
            instructors=sorted(set(old.instructors) | set(_names(args.instructors))),
            students=sorted(set(old.students) | set(_names(args.students))),
            db_url=args.db_url or old.db_url or _course_postgres(args.course_id),
            home_base=args.home_base or old.home_base,
            password=old.password,
            operator_token=old.operator_token,
            port=args.port,
        )
        setup(hub)
        print(f"hub set up in {root}: {len(hub.instructors)} instructor(s), {len(hub.students)} student(s)")
        return 0
    hub = Hub.load(root)
    if args.command == "status":
        print(
            json.dumps(
                {k: v for k, v in asdict(hub).items() if k not in ("password", "operator_token", "db_url")}, indent=2
            )
        )
        return 0
    hub.port = args.port
    return start(hub)


if __name__ == "__main__":
    raise SystemExit(main())
