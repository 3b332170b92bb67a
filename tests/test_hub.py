"""A whole class on the course's JupyterHub, end to end, through the hub's REST API and the users' servers.

A real hub (``grading.hub``: JupyterHub + configurable-http-proxy on 127.0.0.1, one unix account per user, the
nbgrader exchange, the gradebook on a real PostgreSQL server started by ``grading.postgres``) with one
instructor and :data:`N_STUDENTS` students. Every step is what a user's browser would send, with the user's own
API token: the instructor generates and releases ``nms`` (formgrader's API); every student fetches it (the
Assignments panel's API), writes their notebook through the contents API (most the solution's answers, some
wrong submissions of ``tests/submissions/nms/``, one hostile one of ``tests/test_redteam.py``) and submits;
the instructor collects (formgrader), autogrades with the course's trusted grading
(``python -m grading autograde``, what ``make autograde`` runs, on 2 workers, from a kernel of the
instructor's server), generates and releases feedback; every student fetches their feedback. Then: the
scores in PostgreSQL, and that no student reaches another's files or the instructor's through the hub (their
token on another's server, their own kernel on the file system and the gradebook).

Needs root (it creates unix accounts; CI runs as root), Debian's postgresql and bubblewrap (``.ci/run``,
``make postgres-deps sandbox-deps``) and ``make hub-deps`` (the proxy, from npm). Times go to
``test-output/hub/times.json``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest
import requests

from grading import hub as hubmod
from grading import pipeline, postgres, submissions
from grading.paths import REPO, release_notebook

pytestmark = pytest.mark.slow

ASSIGNMENT = "nms"  # the fastest to grade
N_STUDENTS = 20
OUT = REPO / "test-output" / "hub"
PROXY = REPO / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"
# wrong submissions handed in by two students each (identical notebooks must get identical grades)
WRONG = ["suppress_at_equal_threshold", "union_without_subtracting_intersection", "batched_ignores_categories"]
HOSTILE_ATTACK = "writes_gradebook_and_sources"


def _redteam():
    spec = importlib.util.spec_from_file_location("redteam_suite", REPO / "tests" / "test_redteam.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One user's view of the hub: their API token on the hub's REST API and on their own server."""

    def __init__(self, base: str, name: str, token: str) -> None:
        self.base, self.name, self.token = base, name, token
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def hub(self, method: str, path: str, **kw) -> requests.Response:
        return self.http.request(method, f"{self.base}/hub/api{path}", timeout=120, **kw)

    def server(self, method: str, path: str, user: str | None = None, **kw) -> requests.Response:
        """A request to ``/user/<user>/<path>`` (default: this user's own server)."""
        return self.http.request(
            method, f"{self.base}/user/{user or self.name}/{path}", timeout=600, allow_redirects=False, **kw
        )

    def ok_json(self, method: str, path: str, **kw):
        r = self.server(method, path, **kw)
        assert r.status_code == 200, f"{self.name} {method} {path}: {r.status_code} {r.text[:2000]}"
        return r.json()

    def assignments(self, action: str) -> list:
        """The Assignments panel's buttons (nbgrader's assignment_list server extension)."""
        data = {"course_id": "dlcv", "assignment_id": ASSIGNMENT}
        result = self.ok_json("POST", f"assignments/{action}", data=data)
        assert not (isinstance(result, dict) and result.get("success") is False), f"{self.name} {action}: {result}"
        return result

    def formgrader(self, action: str) -> dict:
        result = self.ok_json("POST", f"formgrader/api/assignment/{ASSIGNMENT}/{action}")
        assert result.get("success"), f"formgrader {action}: {json.dumps(result)[:3000]}"
        return result

    def run(self, code: str, timeout: float = 900) -> str:
        """Run ``code`` in a new kernel of this user's server (the kernels API and its websocket); its output."""
        import websocket

        r = self.server("POST", "api/kernels", json={"name": "python3"})
        assert r.status_code == 201, f"{self.name}: no kernel: {r.status_code} {r.text[:500]}"
        kernel = r.json()["id"]
        ws = websocket.create_connection(
            f"{self.base.replace('http', 'ws')}/user/{self.name}/api/kernels/{kernel}/channels",
            header=[f"Authorization: token {self.token}"],
            timeout=timeout,
        )
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": self.name,
            "session": uuid.uuid4().hex,
            "date": datetime.now(UTC).isoformat(),
            "version": "5.3",
        }
        content = {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False}
        ws.send(
            json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"})
        )
        out, replied, idle = [], False, False
        try:
            while not (replied and idle):
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                if kind == "stream":
                    out.append(msg["content"]["text"])
                elif kind == "error":
                    out.append("\n".join(msg["content"]["traceback"]))
                elif kind in ("execute_result", "display_data"):
                    out.append(msg["content"]["data"].get("text/plain", ""))
                elif kind == "execute_reply":
                    replied = True
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
        finally:
            ws.close()
            self.server("DELETE", f"api/kernels/{kernel}")
        return "".join(out)


def _wait(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(what)


def _notebooks() -> dict[str, tuple[str, nbformat.NotebookNode]]:
    """The class: student name suffix -> (what they hand in, notebook)."""
    solution = submissions.student_notebook(ASSIGNMENT)
    wrong = submissions.wrong_submissions(ASSIGNMENT)
    redteam = _redteam()
    hostile = redteam._with_cell(solution, redteam.ATTACKS[HOSTILE_ATTACK].replace("{a}", ASSIGNMENT))
    kinds = [("hostile", hostile)]
    for bug in WRONG:
        kinds += [(bug, wrong[bug])] * 2
    kinds += [("solution", solution)] * (N_STUDENTS - len(kinds))
    return {f"s{k:02d}": kind for k, kind in enumerate(kinds)}


@dataclass
class RunningHub:
    """A hub of its own (accounts, PostgreSQL, JupyterHub) for one test module; see :func:`running_hub`."""

    hub: hubmod.Hub
    base: str
    operator: Client
    db_url: str
    pg_home: Path
    prefix: str

    @property
    def instructor(self) -> str:
        return self.hub.instructors[0]

    def client(self, name: str) -> Client:
        """A new API token of ``name`` (the operator may issue them), as that user's client."""
        r = self.operator.hub("POST", f"/users/{name}/tokens", json={"note": "test_hub", "expires_in": 3600})
        assert r.status_code in (200, 201), f"token for {name}: {r.status_code} {r.text}"
        return Client(self.base, name, r.json()["token"])

    def spawn(self, clients: list[Client], timeout: float = 600) -> None:
        """Start every client's server (each with its own token, in parallel) and wait until all are ready."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for c, r in zip(clients, pool.map(lambda c: c.hub("POST", f"/users/{c.name}/server"), clients)):
                assert r.status_code in (201, 202), f"spawn {c.name}: {r.status_code} {r.text}"
        names = {c.name for c in clients}

        def all_ready():
            users = self.operator.hub("GET", "/users", params={"state": "ready"}).json()
            return names <= {u["name"] for u in users}

        _wait(all_ready, timeout, "not every single-user server started", every=1)


@contextlib.contextmanager
def running_hub(n_students: int, out: Path) -> Iterator[RunningHub]:
    """A whole hub as ``make hub`` sets it up, with throw-away accounts ``<prefix>i`` (the instructor) and
    ``<prefix>s00`` ...; its own PostgreSQL cluster, folders and ports; everything removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the hub test creates unix accounts: run it as root (CI and .ci/run do)")
    if not PROXY.exists():
        pytest.fail("configurable-http-proxy is missing: make hub-deps")
    out.mkdir(parents=True, exist_ok=True)
    # every user's server runs from this checkout's .venv: where the checkout sits in a folder other users cannot
    # enter (a clone under /root), let them pass through it (search permission only, no listing), as make hub's
    # message asks an instructor to, and put the modes back afterwards
    opened = [(d, d.stat().st_mode) for d in REPO.parents if d != Path("/") and not d.stat().st_mode & stat.S_IXOTH]
    for folder, mode in opened:
        os.chmod(folder, stat.S_IMODE(mode) | stat.S_IXOTH)
    # not pytest's tmp_path (0700 root): the students and the postgres user must traverse it
    root = Path(tempfile.mkdtemp(prefix="dlcv-hub-test-", dir="/tmp"))
    os.chmod(root, 0o755)
    (root / "home").mkdir(mode=0o755)
    prefix = "t" + secrets.token_hex(2)  # unix names of this run only
    students = [f"{prefix}s{k:02d}" for k in range(n_students)]
    instructor = f"{prefix}i"
    pg_home = root / "pg"
    hub_proc = None
    log = open(out / "jupyterhub.log", "w")
    try:
        db_url = postgres.start(courses=("dlcv",), home=pg_home)
        hub = hubmod.Hub(
            root / "hub",
            instructors=[instructor],
            students=students,
            db_url=db_url,
            home_base=str(root / "home"),
            port=_free_port(),
        )
        hubmod.setup(hub)
        cmd, env = hubmod.jupyterhub_command(hub)
        env.update(
            DLCV_HUB_PORT=str(hub.port),
            DLCV_HUB_INTERNAL_PORT=str(_free_port()),
            DLCV_HUB_PROXY_API_PORT=str(_free_port()),
            OMP_NUM_THREADS="1",
        )
        hub_proc = subprocess.Popen(cmd, env=env, cwd=hub.state, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{hub.port}"
        operator = Client(base, "course-operator", hub.operator_token)

        def hub_up():
            try:
                return operator.hub("GET", "/").status_code == 200
            except requests.ConnectionError:
                assert hub_proc.poll() is None, f"JupyterHub exited: {(out / 'jupyterhub.log').read_text()[-3000:]}"
                return False

        _wait(hub_up, 120, "JupyterHub did not come up")
        yield RunningHub(hub, base, operator, db_url, pg_home, prefix)
    finally:
        if hub_proc is not None:
            hub_proc.send_signal(signal.SIGTERM)  # JupyterHub stops every server and the proxy it started
            try:
                hub_proc.wait(60)
            except subprocess.TimeoutExpired:
                hub_proc.kill()
                hub_proc.wait()
        log.close()
        for name in [instructor, *students]:
            hubmod.remove_user(name)
        postgres.stop(pg_home)
        shutil.rmtree(root, ignore_errors=True)
        for folder, mode in opened:
            os.chmod(folder, stat.S_IMODE(mode))


@pytest.fixture(scope="module")
def hub_class():
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    plan = _notebooks()
    protected = [REPO / "solutions", REPO / "grading", REPO / "assignments", REPO / "utils"]
    before = _redteam()._tree_hash(*protected)
    with running_hub(len(plan), OUT) as running:
        hub, prefix, instructor = running.hub, running.prefix, running.instructor
        students = hub.students
        plan = {f"{prefix}{k}": v for k, v in plan.items()}
        times["setup (accounts, edition, exchange, PostgreSQL, hub)"] = time.perf_counter() - t0
        clients = {name: running.client(name) for name in [instructor, *students]}
        t = time.perf_counter()
        running.spawn(list(clients.values()))
        times["spawn servers"] = time.perf_counter() - t
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        teacher = clients[instructor]

        t = time.perf_counter()
        teacher.formgrader("assign")
        teacher.formgrader("release")
        listings = dict(zip(students, pool.map(lambda s: clients[s].assignments("fetch"), students)))
        fetched = {}
        for s in students:
            fetched[s] = clients[s].ok_json("GET", f"api/contents/{ASSIGNMENT}/{ASSIGNMENT}.ipynb")["content"]

        def hand_in(s: str) -> None:
            _, nb = plan[s]
            model = {"type": "notebook", "format": "json", "content": json.loads(nbformat.writes(nb))}
            r = clients[s].server("PUT", f"api/contents/{ASSIGNMENT}/{ASSIGNMENT}.ipynb", json=model)
            assert r.status_code == 200, f"{s}: save: {r.status_code} {r.text[:500]}"
            clients[s].assignments("submit")

        hostile = next(s for s in students if plan[s][0] == "hostile")
        # the hostile student also runs the attack in their own (unsandboxed) kernel on the hub
        attack_output = clients[hostile].run(_redteam().ATTACKS[HOSTILE_ATTACK].replace("{a}", ASSIGNMENT))
        list(pool.map(hand_in, students))
        times["release, fetch, fill in, submit"] = time.perf_counter() - t

        t = time.perf_counter()
        teacher.formgrader("collect")
        course = hub.course_dir(instructor)
        # make autograde's path, on the course's PostgreSQL gradebook, on 2 workers, as the instructor
        grade_log = teacher.run(
            "import subprocess, sys\n"
            "p = subprocess.run([sys.executable, '-m', 'grading', 'autograde', 'submitted', '--root', '.',"
            f" '--jobs', {os.environ.get('GRADING_JOBS', '2')!r}], cwd={str(course)!r},"
            " capture_output=True, text=True)\n"
            "print('RETURNCODE', p.returncode)\nprint(p.stdout[-20000:])\nprint(p.stderr[-20000:])\n",
            timeout=1800,
        )
        (OUT / "autograde.log").write_text(grade_log)
        times["autograde"] = time.perf_counter() - t
        t = time.perf_counter()
        teacher.formgrader("generate_feedback")
        teacher.formgrader("release_feedback")
        list(pool.map(lambda s: clients[s].assignments("fetch_feedback"), students))
        feedback = {}
        for s in students:
            r = clients[s].server("GET", f"api/contents/{ASSIGNMENT}/feedback")
            feedback[s] = r.json() if r.status_code == 200 else None
        times["feedback"] = time.perf_counter() - t

        scores = pipeline.read_scores(running.db_url, ASSIGNMENT, ASSIGNMENT)
        yield {
            "plan": plan,
            "prefix": prefix,
            "students": students,
            "instructor": instructor,
            "clients": clients,
            "hub": hub,
            "db_url": running.db_url,
            "pg_home": running.pg_home,
            "listings": listings,
            "fetched": fetched,
            "feedback": feedback,
            "scores": scores,
            "grade_log": grade_log,
            "attack_output": attack_output,
            "hostile": hostile,
            "hash_before": before,
            "protected": protected,
            "course": course,
        }
        t = time.perf_counter()
    times["teardown"] = time.perf_counter() - t
    times["total wall"] = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    times["total CPU of child processes (user+sys)"] = (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime)
    (OUT / "times.json").write_text(json.dumps({k: round(v, 1) for k, v in times.items()}, indent=2) + "\n")


def _kind(hub_class, student: str) -> str:
    return hub_class["plan"][student][0]


def test_every_student_fetched_the_release(hub_class):
    release = nbformat.read(release_notebook(ASSIGNMENT), as_version=4)
    sources = [c.source for c in release.cells]
    for s in hub_class["students"]:
        listing = hub_class["listings"][s]
        assert listing["success"], f"{s}: {listing}"
        listed = [a for a in listing["value"] if a["assignment_id"] == ASSIGNMENT]
        assert listed and listed[0]["status"] == "fetched", f"{s}: {hub_class['listings'][s]}"
        got = [c["source"] for c in hub_class["fetched"][s]["cells"]]
        assert got == sources, f"{s} did not get the instructor's release"


def test_scores_in_postgresql_are_what_the_manifests_expect(hub_class):
    assert "RETURNCODE 0" in hub_class["grade_log"], hub_class["grade_log"][-3000:]
    scores = hub_class["scores"]
    assert set(scores) == set(hub_class["students"]), f"graded: {sorted(scores)}"
    manifest = submissions.load_manifest(ASSIGNMENT)
    by_kind: dict[str, list] = {}
    for s in hub_class["students"]:
        by_kind.setdefault(_kind(hub_class, s), []).append(scores[s])
    for score in by_kind["solution"]:
        # every autograded point; the written answer waits for the instructor's hand grading
        assert score.auto_total == score.auto_max > 0 and score.max_total == 100, (
            f"a correct submission got {score.auto_total} of {score.auto_max} autograded: {score.failed()}"
        )
    for bug in WRONG:
        for score in by_kind[bug]:
            missing = set(manifest[bug]["must_fail"]) - set(score.failed())
            assert score.auto_total < score.auto_max and not missing, f"{bug}: {score.total}, failed {score.failed()}"
        assert len({json.dumps(s.cells, sort_keys=True) for s in by_kind[bug]}) == 1, f"{bug}: unequal grades"


def test_the_scores_equal_a_grading_of_the_same_notebooks_outside_the_hub(hub_class, graded):
    """The same notebooks in the course's test class (graded by `make autograde`'s command on sqlite, outside any
    hub) got exactly the same grades, cell by cell; the hostile one is judged by its own test below."""
    if ASSIGNMENT not in graded.scores:
        pytest.skip(f"GRADING_ONLY leaves {ASSIGNMENT} out of the test class")
    reference = graded.scores[ASSIGNMENT]
    for s in hub_class["students"]:
        kind = _kind(hub_class, s)
        if kind != "hostile":
            student = "solution" if kind == "solution" else f"bug_{kind}"
            assert hub_class["scores"][s].cells == reference[student].cells, f"{s} ({kind})"


def test_every_student_fetched_their_feedback(hub_class):
    for s in hub_class["students"]:
        listing = hub_class["feedback"][s]
        assert listing and listing["type"] == "directory", f"{s}: no feedback folder"
        (stamp,) = listing["content"]
        html = hub_class["clients"][s].ok_json("GET", f"api/contents/{stamp['path']}/{ASSIGNMENT}.html")
        text = html["content"]
        assert f"{hub_class['scores'][s].total:g}" in text and "Score" in text, f"{s}: feedback without the score"
        assert "BEGIN HIDDEN TESTS" not in text


def test_the_hostile_submission_changed_nothing_for_the_others(hub_class):
    assert _redteam()._tree_hash(*hub_class["protected"]) == hub_class["hash_before"], (
        "solutions/, grading/, ... changed"
    )
    out = hub_class["attack_output"]
    assert "cannot write solutions" in out and "cannot write grading/hidden" in out, out[-2000:]
    hostile = hub_class["scores"][hub_class["hostile"]]
    assert hostile.total <= 100
    for s in hub_class["students"]:
        if _kind(hub_class, s) == "solution":
            assert hub_class["scores"][s].auto_total == hub_class["scores"][s].auto_max > 0, s


def test_a_student_token_reaches_only_its_own_server(hub_class):
    clients, students = hub_class["clients"], hub_class["students"]
    me, other, teacher = clients[students[0]], students[1], hub_class["instructor"]
    for target in (other, teacher):
        r = me.server("GET", f"api/contents/{ASSIGNMENT}", user=target)
        assert r.status_code in (302, 403, 404), f"{me.name} read {target}'s files: {r.status_code}"
        assert "content" not in r.text
        r = me.server("POST", "api/kernels", user=target, json={"name": "python3"})
        assert r.status_code in (302, 403, 404), f"{me.name} started a kernel on {target}'s server"
        r = me.hub("GET", f"/users/{target}")
        assert r.status_code in (403, 404), f"{me.name} read {target}'s hub record"
    r = me.server("GET", "formgrader/api/assignments")
    assert r.status_code == 404, "a student's server serves the formgrader"
    # the contents API stays inside the student's home
    for path in (f"../{other}", f"../{teacher}/dlcv/nbgrader_config.py", "../../"):
        r = me.server("GET", f"api/contents/{path}")
        # 302: the URL left the student's server (the hub's login redirect); never 200
        assert r.status_code in (302, 400, 403, 404), f"contents API outside home: {path} -> {r.status_code}"


def test_a_student_kernel_cannot_read_others_or_the_instructor(hub_class):
    students, hub = hub_class["students"], hub_class["hub"]
    other_home = hub.home(students[1])
    course = hub_class["course"]
    targets = [
        other_home / ASSIGNMENT / f"{ASSIGNMENT}.ipynb",
        other_home / "dlcv-student",
        course / "submitted" / students[1] / ASSIGNMENT / f"{ASSIGNMENT}.ipynb",
        course / "nbgrader_config.py",
        hub.exchange / "dlcv" / "inbound",
        hub.state / "hub.json",
        hub_class["pg_home"] / "password",
        REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb",
        REPO / "grading" / "hidden" / f"{ASSIGNMENT}.py",
        REPO / "tests" / "submissions" / ASSIGNMENT / "manifest.json",
    ]
    assert all(p.exists() for p in targets), [str(p) for p in targets if not p.exists()]
    code = f"""
import os, pathlib
for p in {[str(p) for p in targets]!r}:
    path = pathlib.Path(p)
    try:
        print("READ", p, len(os.listdir(p)) if path.is_dir() else len(path.read_bytes()))
    except PermissionError:
        print("DENIED", p)
import sqlalchemy
url = {hub_class["db_url"].split("://")[0] + "://dlcv@" + hub_class["db_url"].split("@")[1]!r}
try:
    sqlalchemy.create_engine(url).connect()
    print("GRADEBOOK OPEN")
except Exception as exc:
    print("GRADEBOOK REFUSED", type(exc).__name__)
"""
    out = hub_class["clients"][students[0]].run(code)
    assert "READ" not in out and out.count("DENIED") == len(targets), out
    assert "GRADEBOOK REFUSED" in out, out


def test_students_never_get_the_instructor_ui(hub_class):
    me = hub_class["clients"][hub_class["students"][0]]
    teacher = hub_class["clients"][hub_class["instructor"]]
    assert me.server("GET", "formgrader/manage_assignments").status_code == 404
    assert teacher.server("GET", "formgrader/manage_assignments").status_code == 200
    page = me.server("GET", "lab").text
    for plugin in ("@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment"):
        assert plugin in page.split('"disabledExtensions"', 1)[-1][:2000], f"{plugin} is not disabled for students"
