"""The course's PostgreSQL server: one local cluster in ``.postgres/`` (git-ignored), run with Debian's binaries.

    python -m grading.postgres start [--port N] [--course ID ...]   initdb if needed, start, create role/databases
    python -m grading.postgres stop
    python -m grading.postgres status                                exit 0 when running, 3 when not
    python -m grading.postgres url [--course ID]                     the SQLAlchemy URL of a course's gradebook

Every command is idempotent. The server listens on 127.0.0.1 only (a free port chosen at the first start,
or ``--port`` / ``DLCV_PG_PORT``) and on a unix socket in ``.postgres/run``. One role (``dlcv``) owns one
database per course (default: the course id ``dlcv``); nbgrader uses it through
``c.CourseDirectory.db_url`` (``nbgrader_config.py`` with ``DB=postgres``, or ``NBGRADER_DB_URL``).

Secrets: the role's password is random, kept in ``.postgres/password`` (mode 0600, owned by whoever runs the
grader; ``.postgres/`` is git-ignored) and never put in the environment of a graded kernel (the sandbox passes
only :data:`grading.sandbox.ENV_PASSED`, has no network and no view of the repo). Connections over TCP need
the password (scram-sha-256); only the cluster's superuser may use the socket (peer authentication).

As root (containers, CI) the server runs as the ``postgres`` OS user of Debian's package (``runuser``); the
data and socket folders are owned by that user. ``make postgres-deps`` installs the package when missing.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from .paths import REPO

HOME = Path(os.environ.get("DLCV_PG_HOME", str(REPO / ".postgres")))
ROLE = "dlcv"
DEFAULT_COURSE = "dlcv"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class PostgresError(RuntimeError):
    pass


def bindir() -> Path:
    """Debian's ``/usr/lib/postgresql/<ver>/bin`` (the newest version), or ``DLCV_PG_BINDIR``."""
    if os.environ.get("DLCV_PG_BINDIR"):
        return Path(os.environ["DLCV_PG_BINDIR"])
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise PostgresError("PostgreSQL is not installed: run `make postgres-deps` (Debian: apt-get install postgresql)")


def _as_root() -> bool:
    return os.geteuid() == 0


def _server_user() -> str:
    """The OS user that owns the cluster (and is its superuser role, by initdb's default)."""
    return "postgres" if _as_root() else pwd.getpwuid(os.geteuid()).pw_name


def _paths(home: Path = HOME) -> dict[str, Path]:
    return {
        "home": home,
        "data": home / "data",
        "run": home / "run",
        "log": home / "server.log",
        "port": home / "port",
        "password": home / "password",
    }


def _run(argv: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a server binary, as the ``postgres`` user when we are root."""
    if _as_root():
        argv = ["runuser", "-u", "postgres", "--", *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = env.get("LC_ALL", "C.UTF-8")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", **kwargs)
    if check and proc.returncode != 0:
        raise PostgresError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port(home: Path = HOME) -> int:
    p = _paths(home)["port"]
    if not p.exists():
        raise PostgresError(
            f"the course's PostgreSQL was never started ({p} missing): python -m grading.postgres start"
        )
    return int(p.read_text().strip())


def password(home: Path = HOME) -> str:
    p = _paths(home)["password"]
    if not p.exists():
        raise PostgresError(f"no password file {p}: python -m grading.postgres start")
    return p.read_text().strip()


def url(course: str = DEFAULT_COURSE, home: Path = HOME) -> str:
    """The SQLAlchemy URL (psycopg2 driver) of ``course``'s gradebook on the course's server."""
    _check_name(course)
    return f"postgresql://{ROLE}:{quote(password(home), safe='')}@127.0.0.1:{port(home)}/{course}"


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise PostgresError(f"not a database name: {name!r} (lower-case letters, digits and _)")


def running(home: Path = HOME) -> bool:
    paths = _paths(home)
    if not (paths["data"] / "PG_VERSION").exists():
        return False
    return _run([str(bindir() / "pg_ctl"), "status", "-D", str(paths["data"])], check=False).returncode == 0


def _init(home: Path, wanted_port: int | None) -> None:
    paths = _paths(home)
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o711)  # the postgres user must reach data/ and run/; nobody may list or read the rest
    if not paths["password"].exists():
        fd = os.open(paths["password"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    if not paths["port"].exists():
        paths["port"].write_text(f"{wanted_port or int(os.environ.get('DLCV_PG_PORT', 0)) or _free_port()}\n")
    elif wanted_port and wanted_port != port(home):
        if running(home):
            raise PostgresError(f"the server runs on port {port(home)}: stop it before moving it to {wanted_port}")
        paths["port"].write_text(f"{wanted_port}\n")
    for folder in (paths["data"], paths["run"]):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o700)
        if _as_root():
            user = pwd.getpwnam("postgres")
            os.chown(folder, user.pw_uid, user.pw_gid)
    if not (paths["data"] / "PG_VERSION").exists():
        _run([str(bindir() / "initdb"), "-D", str(paths["data"]), "-A", "peer", "-E", "UTF8", "--no-instructions"])
        hba = paths["data"] / "pg_hba.conf"
        rules = (
            "# written by grading.postgres: the superuser over the socket, the course role by password over TCP\n"
            f"local   all   {_server_user()}   peer\n"
            f"host    all   {ROLE}   127.0.0.1/32   scram-sha-256\n"
        )
        hba.write_text(rules)  # the file initdb made keeps its owner and mode 0600


def start(wanted_port: int | None = None, courses: tuple[str, ...] = (DEFAULT_COURSE,), home: Path = HOME) -> str:
    """initdb (first time), start the server, create the role and a database per course; returns the URL
    of the first course. Does nothing that is already done."""
    for course in courses:
        _check_name(course)
    paths = _paths(home)
    _init(home, wanted_port)
    if not running(home):
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port(home)} -c unix_socket_directories={paths['run']} "
            "-c password_encryption=scram-sha-256 -c max_connections=200 -c fsync=on"
        )
        log = paths["log"]
        if _as_root() and not log.exists():
            log.touch(mode=0o600)
            user = pwd.getpwnam("postgres")
            os.chown(log, user.pw_uid, user.pw_gid)
        _run(
            [
                str(bindir() / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(paths["data"]),
                "-l",
                str(log),
                "-o",
                options,
            ]
        )
    _ensure_role(home)
    for course in courses:
        create_database(course, home)
    return url(courses[0], home)


def stop(home: Path = HOME) -> None:
    if running(home):
        _run([str(bindir() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(_paths(home)["data"])])


def psql(sql: str, home: Path = HOME, database: str = "postgres") -> str:
    """Run SQL as the cluster's superuser over the socket (``-tA`` output)."""
    paths = _paths(home)
    proc = _run(
        [
            str(bindir() / "psql"),
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(paths["run"]),
            "-p",
            str(port(home)),
            "-U",
            _server_user(),
            "-d",
            database,
        ],
        input=sql,
    )
    return proc.stdout.strip()


def _ensure_role(home: Path) -> None:
    # the password travels on psql's stdin, never on a command line
    secret = password(home).replace("'", "''")
    verb = "ALTER" if psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'", home) else "CREATE"
    psql(f"{verb} ROLE {ROLE} LOGIN PASSWORD '{secret}' NOSUPERUSER NOCREATEDB NOCREATEROLE", home)


def create_database(course: str, home: Path = HOME) -> None:
    """A database owned by the course role, for one course (or one test); nothing if it exists."""
    _check_name(course)
    if not psql(f"SELECT 1 FROM pg_database WHERE datname = '{course}'", home):
        psql(f"CREATE DATABASE {course} OWNER {ROLE} ENCODING 'UTF8' TEMPLATE template0", home)
        psql(f"REVOKE ALL ON DATABASE {course} FROM PUBLIC", home)


def drop_database(course: str, home: Path = HOME) -> None:
    _check_name(course)
    psql(f"DROP DATABASE IF EXISTS {course} WITH (FORCE)", home)


@contextmanager
def temporary_server(courses: tuple[str, ...] = (DEFAULT_COURSE,)) -> Iterator[Path]:
    """A server of its own in a scratch folder (tests, benchmarks), stopped and deleted afterwards; yields
    its home (pass it as ``home=`` to :func:`url` and the rest)."""
    # not under pytest's tmp_path (mode 0700): as root the server runs as `postgres`, which must reach it
    folder = Path(tempfile.mkdtemp(prefix="dlcv-pg-", dir="/tmp"))
    os.chmod(folder, 0o711)
    home = folder / "pg"
    try:
        start(courses=courses, home=home)
        yield home
    finally:
        try:
            stop(home)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grading.postgres", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--course", action="append", help="a course's database (repeatable; default: dlcv)")
    sub.add_parser("stop")
    sub.add_parser("status")
    p = sub.add_parser("url")
    p.add_argument("--course", default=DEFAULT_COURSE)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            start(args.port, tuple(args.course or [DEFAULT_COURSE]))
            print(f"PostgreSQL running on 127.0.0.1:{port()} (data {_paths()['data']}, log {_paths()['log']})")
        elif args.command == "stop":
            stop()
            print("PostgreSQL stopped")
        elif args.command == "status":
            if running():
                print(f"running on 127.0.0.1:{port()}, data {_paths()['data']}")
                return 0
            print("not running")
            return 3
        elif args.command == "url":
            print(url(args.course))
    except PostgresError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def wait_ready(home: Path = HOME, timeout: float = 30.0) -> None:
    """Block until the server accepts connections (after a start by another process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _run([str(bindir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(port(home))], check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise PostgresError(f"PostgreSQL on port {port(home)} is not ready after {timeout:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
