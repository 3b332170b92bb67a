"""Red team: hostile submissions graded through the instructor's own command (`python -m grading autograde`,
what `make autograde SUBMISSIONS=<inbox>` runs), beside honest classmates.

Each hostile submission is an ordinary submission (the solution, the blank release or one of the wrong
submissions of tests/submissions/) plus a cheat or an attack appended as a cell the student may edit.
The properties: no cheat scores above the same submission without it; classmates graded
before and after it keep full marks; the instructor's files are unchanged; grading always finishes and
exports grades.csv; the review list names the suspicious submissions and only them.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import os
import socket
import threading
from pathlib import Path

import nbformat
import pytest

from grading import pipeline, selftest, submissions
from grading.paths import REPO, assignment_names
from grading.submissions import nbgrader_meta

pytestmark = pytest.mark.slow

ASSIGNMENTS = [a for a in assignment_names() if a in os.environ.get("GRADING_ONLY", a).split(",")]
MAIN = "nms" if "nms" in ASSIGNMENTS else ASSIGNMENTS[0]
LISTENER_PORT = 47_123  # a server on the grader's loopback that no kernel may reach

CHEATS: dict[str, str] = {
    # the verdict lives outside the kernel: rebinding the helpers the visible tests use changes nothing
    "rebinds_test_helpers": """
import torch, utils, utils.testing
assert_close = lambda *a, **k: None
utils.testing.assert_close = assert_close
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
""",
    "patches_torch_and_builtins": """
import builtins, torch, torchvision
torch.Tensor.__eq__ = lambda self, other: torch.ones(self.shape, dtype=torch.bool)
torch.Tensor.allclose = lambda self, *a, **k: True
torch.isclose = lambda a, b, *x, **k: torch.ones(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.bool)
torchvision.ops.nms = lambda boxes, scores, t: torch.arange(len(scores))
builtins.AssertionError = type("Never", (Exception,), {})
""",
    "swallows_exceptions_and_tracebacks": """
import sys
ip = get_ipython()
ip.showtraceback = lambda *a, **k: None
ip.set_custom_exc((BaseException,), lambda shell, etype, evalue, tb, tb_offset=None: None)
sys.excepthook = lambda *a: None
""",
}

ATTACKS: dict[str, str] = {
    "reads_instructor_files": """
import pathlib, utils, json
root = pathlib.Path(utils.__file__).resolve().parents[1]
found = {}
for rel in ["solutions/{a}/{a}.ipynb", "grading/hidden/{a}.py", "gradebook.db", "nbgrader_config.py", ".git/config"]:
    for base in (root, pathlib.Path.cwd(), pathlib.Path("/work/main")):
        try:
            found[str(base / rel)] = (base / rel).read_text()[:100]
        except Exception as exc:
            pass
print("FOUND", sorted(found))
for path, text in found.items():
    if path.endswith(".ipynb"):
        for cell in json.loads(pathlib.Path(path).read_text())["cells"]:
            if cell["cell_type"] == "code":
                try:
                    exec("".join(cell["source"]), globals())
                except Exception:
                    pass
""",
    "writes_gradebook_and_sources": """
import pathlib, sqlite3, utils
targets = [pathlib.Path(utils.__file__).resolve().parents[1], pathlib.Path.cwd()]
targets += [pathlib.Path("/tmp"), pathlib.Path("/")]
for base in targets:
    for db in list(base.glob("*.db")) + list(base.glob("*/*.db")):
        try:
            con = sqlite3.connect(db); con.execute("UPDATE grade SET auto_score = 0"); con.commit()
        except Exception:
            pass
for rel in ["solutions/{a}/{a}.ipynb", "grading/hidden/{a}.py", "grading/trusted.py"]:
    try:
        (targets[0] / rel).write_text("hacked")
    except Exception as exc:
        print("cannot write", rel, type(exc).__name__)
""",
    "kills_parent_and_everything": """
import os, signal
for target in (os.getppid(), 1):
    try:
        os.kill(target, signal.SIGKILL)
    except Exception as exc:
        print("kill", target, type(exc).__name__)
try:
    os.kill(-1, signal.SIGKILL)
except Exception as exc:
    print("kill -1", type(exc).__name__)
""",
    "forks_many_processes": """
import os, time
children = 0
for _ in range(5000):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(20)
        os._exit(0)
    children += 1
print("forked", children)
""",
    "allocates_past_memory_limit": """
import torch
try:
    hog = torch.ones(int(12e9), dtype=torch.uint8)
    print("allocated", hog.numel())
except (RuntimeError, MemoryError) as exc:
    print("refused:", type(exc).__name__)
try:
    blocks = [bytearray(1 << 30) for _ in range(16)]
except MemoryError:
    print("refused: MemoryError")
""",
    "prints_hundreds_of_megabytes": """
line = "x" * 1_000_000
for _ in range(300):
    print(line)
""",
    "opens_network_connections": f"""
import socket, urllib.request
for host, port in (("127.0.0.1", {LISTENER_PORT}), ("10.0.2.2", 80), ("8.8.8.8", 53)):
    s = socket.socket()
    s.settimeout(2)
    print(host, s.connect_ex((host, port)))
try:
    urllib.request.urlopen("http://example.com", timeout=2)
except Exception as exc:
    print("url", type(exc).__name__)
""",
}

# nms-specific: a forbidden library function reached by a captured reference and by torch.ops, each
# placed right after the solution cell it replaces (so the tests that follow see it)
FORBIDDEN_BYPASS = {
    "nms": """
import torch, torchvision
_captured_nms = torchvision.ops.nms


def nms(boxes, scores, iou_threshold):
    return _captured_nms(boxes, scores, iou_threshold)
""",
    "batched_nms": """
import torch
_op = torch.ops.torchvision.nms


def batched_nms(boxes, scores, idxs, iou_threshold):
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _op(boxes + offsets[:, None], scores, iou_threshold)
""",
}


def _with_cell(nb: nbformat.NotebookNode, code: str, after: str = "") -> nbformat.NotebookNode:
    """The notebook with ``code`` as a new, ungraded cell right after the solution cell ``after``
    (default: the first solution cell, so that every test cell comes after it)."""
    nb = copy.deepcopy(nb)
    solutions = [i for i, c in enumerate(nb.cells) if nbgrader_meta(c).get("solution")]
    where = next((i for i in solutions if nbgrader_meta(nb.cells[i]).get("grade_id") == after), solutions[0])
    nb.cells.insert(where + 1, nbformat.v4.new_code_cell(code))
    return nb


def _with_forged_metadata(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student marks a cell of their own as an autograded test worth 50 points (with a passing
    output), claims a real test's grade_id for another with an old metadata schema (which makes nbgrader
    stop a whole run), and points the kernelspec elsewhere."""
    nb = copy.deepcopy(nb)
    bonus = nbformat.v4.new_code_cell(
        "print('bonus')",
        metadata={
            "nbgrader": {
                "grade": True,
                "grade_id": "bonus_points",
                "points": 50,
                "locked": False,
                "solution": False,
                "schema_version": 3,
                "task": False,
            }
        },
    )
    bonus.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "50"}, execution_count=1)]
    first_test = next(c for c in nb.cells if nbgrader_meta(c).get("grade"))
    twin = nbformat.v4.new_code_cell("pass", metadata={"nbgrader": dict(nbgrader_meta(first_test), schema_version=1)})
    nb.cells[1:1] = [bonus, twin]
    nb.metadata["kernelspec"] = {"name": "evil", "display_name": "evil", "language": "python"}
    return nb


def _bases(assignment: str) -> dict[str, nbformat.NotebookNode]:
    wrong = submissions.wrong_submissions(assignment)
    return {
        "solution": submissions.student_notebook(assignment),
        "blank": nbformat.read(REPO / "assignments" / assignment / f"{assignment}.ipynb", as_version=4),
        "bug": next(iter(wrong.values())),
    }


def _inbox() -> dict[tuple[str, str], tuple[str, nbformat.NotebookNode]]:
    """(student, assignment) -> (base student, notebook)."""
    subs: dict[tuple[str, str], tuple[str, nbformat.NotebookNode]] = {}
    for a in ASSIGNMENTS:
        bases = _bases(a)
        subs[("aaa_classmate", a)] = ("aaa_classmate", bases["solution"])
        subs[("zzz_classmate", a)] = ("zzz_classmate", bases["solution"])
        subs[("base_bug", a)] = ("base_bug", bases["bug"])
        for name, code in CHEATS.items():
            if a == MAIN or name == "rebinds_test_helpers":
                subs[(f"cheat_{name}", a)] = ("base_bug", _with_cell(bases["bug"], code))
    bases = _bases(MAIN)
    subs[("base_blank", MAIN)] = ("base_blank", bases["blank"])
    subs[("base_solution", MAIN)] = ("base_solution", bases["solution"])
    for name, code in ATTACKS.items():
        base = "base_blank" if name == "reads_instructor_files" else "base_solution"
        subs[(f"attack_{name}", MAIN)] = (base, _with_cell(bases[base.replace("base_", "")], code.replace("{a}", MAIN)))
    subs[("cheat_forged_metadata", MAIN)] = ("base_bug", _with_forged_metadata(_bases(MAIN)["bug"]))
    if MAIN == "nms":
        nb = bases["solution"]
        for cell_id, code in FORBIDDEN_BYPASS.items():
            nb = _with_cell(nb, code, after=cell_id)
        subs[("cheat_forbidden_bypass", MAIN)] = ("base_solution", nb)
    return subs


def _tree_hash(*folders: Path) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def redteam(tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam")
    course = pipeline.Course(root / "course")
    inbox = root / "inbox"
    subs = _inbox()
    for (student, a), (_, nb) in subs.items():
        folder = inbox / student / a
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{a}.ipynb")
    broken = inbox / "broken_notebook" / MAIN
    broken.mkdir(parents=True)
    (broken / f"{MAIN}.ipynb").write_text('{"cells": [ this is not JSON')
    protected = [REPO / "solutions", REPO / "grading", REPO / "assignments", REPO / "utils"]
    before = _tree_hash(*protected)
    hits = []
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", LISTENER_PORT))
    listener.listen(8)
    listener.settimeout(0.5)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, addr = listener.accept()
                hits.append(addr)
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        out = selftest.grade_inbox(inbox, course, jobs=int(os.environ.get("GRADING_JOBS", "2")), timeout=3000)
    finally:
        stop.set()
        thread.join()
        listener.close()
    scores = {a: pipeline.read_scores(course.db_url, a, a) for a in ASSIGNMENTS}
    (REPO / "test-output").mkdir(exist_ok=True)
    (REPO / "test-output" / "redteam.log").write_text(out.stdout + "\n" + out.stderr)
    return {
        "subs": subs,
        "scores": scores,
        "out": out,
        "course": course,
        "hits": hits,
        "hash_changed": _tree_hash(*protected) != before,
    }


def _hostile():
    return [(s, a) for (s, a) in _inbox() if s.startswith(("cheat_", "attack_"))]


def test_a_submission_that_cannot_be_graded_scores_zero_and_is_listed(redteam):
    rows = list(csv.DictReader(open(redteam["course"].root / "ungradable.csv")))
    listed = {(r["student"], r["assignment"]): r["reason"] for r in rows}
    assert ("broken_notebook", MAIN) in listed, rows
    assert all(student == "broken_notebook" for student, _ in listed), f"honest or gradable ones listed: {listed}"
    grades = {
        (r["student_id"], r["assignment"]): float(r["score"] or 0)
        for r in csv.DictReader(open(redteam["course"].root / "grades.csv"))
    }
    assert grades.get(("broken_notebook", MAIN), 0.0) == 0.0
    assert "could not grade 1 submission" in redteam["out"].stdout


def test_grading_finishes_and_exports_everyone(redteam):
    out = redteam["out"]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = list(csv.DictReader(open(redteam["course"].root / "grades.csv")))
    graded = {(r["student_id"], r["assignment"]) for r in rows}
    missing = [key for key in redteam["subs"] if key not in graded]
    assert not missing, f"not in grades.csv: {missing}"


@pytest.mark.parametrize("student,assignment", _hostile())
def test_no_cheat_scores_above_the_same_submission_without_it(redteam, student, assignment):
    base = redteam["subs"][(student, assignment)][0]
    scores = redteam["scores"][assignment]
    assert student in scores, f"{student} is missing from the gradebook"
    assert base in scores, f"{base} is missing from the gradebook"
    got, without = scores[student].total, scores[base].total
    assert got <= without, f"{student}: {got} with the cheat, {without} without (failed {scores[student].failed()})"


def test_a_captured_or_torch_ops_reference_to_a_forbidden_function_is_refused(redteam):
    if MAIN != "nms":
        pytest.skip("the bypass is written for nms")
    score = redteam["scores"]["nms"]["cheat_forbidden_bypass"]
    assert {"test_nms", "test_batched_nms"} <= set(score.failed()), score.failed()


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_classmates_before_and_after_keep_full_marks(redteam, assignment):
    for student in ("aaa_classmate", "zzz_classmate"):
        score = redteam["scores"][assignment][student]
        # every autograded point (the written answer is graded by hand, later); the points add up to 100
        assert score.auto_total == score.auto_max > 0 and score.max_total == 100, (
            f"{student}: {score.auto_total} of {score.auto_max} autograded (failed {score.failed()})"
        )


def test_instructor_files_are_unchanged_and_unseen(redteam):
    assert not redteam["hash_changed"], "a submission changed solutions/, grading/, assignments/ or utils/"
    nb = nbformat.read(
        redteam["course"].root / "autograded" / "attack_reads_instructor_files" / MAIN / f"{MAIN}.ipynb", as_version=4
    )
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "FOUND []" in text, f"the kernel could read instructor files: {text[:500]}"


def test_no_connection_left_the_sandbox(redteam):
    assert not redteam["hits"], f"a kernel reached the grader's loopback: {redteam['hits']}"
    nb = nbformat.read(
        redteam["course"].root / "autograded" / "attack_opens_network_connections" / MAIN / f"{MAIN}.ipynb",
        as_version=4,
    )
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "127.0.0.1 0" not in text and "8.8.8.8 0" not in text, text[:500]


def test_an_output_flood_is_cut_not_stored(redteam):
    path = redteam["course"].root / "autograded" / "attack_prints_hundreds_of_megabytes" / MAIN / f"{MAIN}.ipynb"
    assert path.stat().st_size < 5_000_000, f"{path.stat().st_size} bytes stored"
    assert "output cut by the grader" in path.read_text()


def test_memory_is_limited(redteam):
    nb = nbformat.read(
        redteam["course"].root / "autograded" / "attack_allocates_past_memory_limit" / MAIN / f"{MAIN}.ipynb",
        as_version=4,
    )
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "refused" in text and "allocated" not in text, text[:500]


def test_the_review_list_flags_hostile_code_and_not_honest_code(redteam):
    rows = list(csv.DictReader(open(redteam["course"].root / "review.csv")))
    flagged = {r["student"] for r in rows}
    assert not flagged & {"aaa_classmate", "zzz_classmate", "base_solution", "base_blank", "base_bug"}, flagged
    # exhausting memory or output needs no suspicious code: the limits answer those, not the review list
    expected = {s for s, _ in _hostile()} - {
        "attack_allocates_past_memory_limit",
        "attack_prints_hundreds_of_megabytes",
    }
    assert expected <= flagged, f"not flagged: {sorted(expected - flagged)}"
    assert "review list" in redteam["out"].stdout
