"""The course's PostgreSQL server (grading.postgres): a real server, started in a scratch folder of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from grading import postgres

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def home():
    # not pytest's tmp_path: as root the server runs as `postgres`, which must be able to reach the folder
    folder = Path(tempfile.mkdtemp(prefix="dlcv-pg-test-", dir="/tmp"))
    os.chmod(folder, 0o711)
    try:
        yield folder / "pg"
    finally:
        postgres.stop(folder / "pg")
        shutil.rmtree(folder, ignore_errors=True)


def test_temporary_server_is_removed_afterwards():
    with postgres.temporary_server(courses=("scratch",)) as home:
        assert postgres.running(home) and postgres.url("scratch", home).endswith("/scratch")
    assert not home.exists()


def test_start_connect_gradebook_stop(home, monkeypatch):
    import sqlalchemy
    from nbgrader.api import Gradebook

    # nbgrader's Gradebook calls `alembic` by name (the Makefile puts the venv first on PATH)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    url = postgres.start(courses=("dlcv", "other_course"), home=home)
    assert url.startswith("postgresql://dlcv:") and url.endswith(f"@127.0.0.1:{postgres.port(home)}/dlcv")
    assert postgres.running(home)
    # idempotent: a second start changes nothing (same port, same password, databases kept)
    assert postgres.start(courses=("dlcv",), home=home) == url
    assert (home / "password").stat().st_mode & 0o077 == 0

    with Gradebook(url) as gb:  # nbgrader creates its schema on the server
        gb.add_student("alice", first_name="Alice")
        gb.add_assignment("nms")
        assert [s.id for s in gb.students] == ["alice"]
    with Gradebook(url) as gb:
        assert gb.find_student("alice").first_name == "Alice"
        assert [a.name for a in gb.assignments] == ["nms"]
    # one database per course: the other course's gradebook is empty
    with Gradebook(postgres.url("other_course", home)) as gb:
        assert gb.students == []
    # the tables really are PostgreSQL's
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT version()")).scalar().startswith("PostgreSQL")
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM student")).scalar() == 1
    engine.dispose()

    # a wrong password is refused (scram-sha-256 over TCP, no trust rule)
    bad = sqlalchemy.create_engine(url.replace(postgres.password(home), "wrong"))
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        bad.connect()
    bad.dispose()

    postgres.stop(home)
    assert not postgres.running(home)
    postgres.stop(home)  # stopping a stopped server is fine
    # and it starts again with the data kept
    assert postgres.start(home=home) == url
    with Gradebook(url) as gb:
        assert [s.id for s in gb.students] == ["alice"]
    postgres.drop_database("other_course", home)
    postgres.stop(home)


def test_command_line_and_nbgrader_cli(home):
    env = {**os.environ, "DLCV_PG_HOME": str(home)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "grading.postgres", *args], cwd=REPO, env=env, capture_output=True, text=True
        )

    assert cli("start").returncode == 0
    assert cli("status").returncode == 0
    url = cli("url").stdout.strip()
    assert url == postgres.url(home=home)
    # nbgrader's own command line on the server's gradebook
    db = subprocess.run(
        [sys.executable, "-m", "nbgrader", "db", "student", "add", "bob", f"--db={url}"],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    assert db.returncode == 0, db.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "nbgrader", "db", "student", "list", f"--db={url}"],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    assert "bob" in listing.stdout, listing.stdout + listing.stderr
    assert cli("stop").returncode == 0
    assert cli("status").returncode == 3
    assert cli("url", "--course", "Bad-Name").returncode == 1
