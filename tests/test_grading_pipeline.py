"""The grading pipeline separates right from wrong, for every assignment in solutions/.

One session fixture runs the real nbgrader (generate_assignment, autograde, generate_feedback) on: the
solution submitted as a student's, the blank release, every wrong submission of
tests/submissions/<a>/manifest.json, and a set of faults (edited or deleted test cells, a stray
utils.py together with a torch warning, an endless loop). Each assignment's submissions are split over
PARTS scratch courses (one `nbgrader autograde` run each) and GRADING_JOBS runs go at a time. The tests
then read the scores from the gradebooks with nbgrader's API.
"""

from __future__ import annotations

import ast
import copy
import html
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from grading import pipeline, submissions
from grading.__main__ import entry_problems
from grading.paths import REPO, assignment_names
from grading.submissions import nbgrader_meta

pytestmark = pytest.mark.slow

# GRADING_ONLY=a,b restricts the run while developing one assignment; CI grades all of them.
ASSIGNMENTS = [a for a in assignment_names() if a in os.environ.get("GRADING_ONLY", a).split(",")]
BUGS = [(a, bug) for a in ASSIGNMENTS for bug in submissions.load_manifest(a)]
LOOP_TIMEOUT = 15  # seconds per cell in the endless-loop course (its setup cell must finish within it)
JOBS = int(os.environ.get("GRADING_JOBS", "2"))
PARTS = 2  # scratch courses per assignment: smaller units keep both workers busy to the end
# The endless loop costs LOOP_TIMEOUT per looping cell; the mechanism (nbgrader's per-cell timeout and
# interrupt) is the same for every assignment, so one assignment proves it and keeps `make test` short.
LOOP_ASSIGNMENTS = [a for a in ("nms",) if a in ASSIGNMENTS] or ASSIGNMENTS[:1]
OUTPUT = REPO / "test-output"


# ----------------------------------------------------------------------------- fault submissions
def top_level_functions(nb) -> list:
    """(cell index, name) of every top-level function the solution cells define, in order."""
    found = []
    for i, cell in enumerate(nb.cells):
        if nbgrader_meta(cell).get("solution") and cell.cell_type == "code":
            found += [(i, node.name) for node in ast.parse(cell.source).body if isinstance(node, ast.FunctionDef)]
    assert found, "no solution cell defines a top-level function"
    return found


def first_function(nb) -> tuple:
    return top_level_functions(nb)[0]


def with_endless_loop(nb):
    """The student's last function never returns (a classic `while` bug); the last one, because fewer
    tests build on it, so the run shows that the *other* tests still grade."""
    nb = copy.deepcopy(nb)
    i, name = top_level_functions(nb)[-1]
    nb.cells[i].source += f"\n\n\ndef {name}(*args, **kwargs):\n    while True:\n        pass\n"
    return nb


def with_torch_warning(nb):
    """Correct code that makes torch print a UserWarning each time the first function runs."""
    nb = copy.deepcopy(nb)
    i, name = first_function(nb)
    nb.cells[i].source += (
        f"\n\n\n_correct_{name} = {name}\n\n\ndef {name}(*args, **kwargs):\n"
        "    import torch\n"
        "    torch.tensor(torch.zeros(1))  # torch warns: copy-constructing from a tensor\n"
        f"    return _correct_{name}(*args, **kwargs)\n"
    )
    return nb


def with_tests_edited(nb):
    """A student who replaces every test cell with `pass` (on a buggy submission)."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if nbgrader_meta(cell).get("grade"):
            cell.source = "pass  # the tests were in the way"
    return nb


def with_test_deleted(nb):
    """A student who deletes the first test cell."""
    nb = copy.deepcopy(nb)
    first = next(i for i, c in enumerate(nb.cells) if nbgrader_meta(c).get("grade"))
    del nb.cells[first]
    return nb


STRAY_UTILS = "raise ImportError('a student utils.py shadowed the course utils package')\n"


@dataclass
class Graded:
    """Everything graded for one assignment, merged over the scratch courses that graded it."""

    scores: dict[str, pipeline.Score] = field(default_factory=dict)
    rescores: dict[str, pipeline.Score] = field(default_factory=dict)  # the first course, after a re-grade
    courses: dict[str, pipeline.Course] = field(default_factory=dict)  # student -> the course that graded them
    loop: pipeline.Score | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def autograded(self, student: str, assignment: str) -> nbformat.NotebookNode:
        root = self.courses[student].root
        return nbformat.read(root / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4)


def _submissions(assignment: str) -> list:
    """(student, notebook, extra files) for every submission the tests grade, the solution first."""
    solution = submissions.student_notebook(assignment)
    blank = nbformat.read(REPO / "assignments" / assignment / f"{assignment}.ipynb", as_version=4)
    wrong = submissions.wrong_submissions(assignment)
    first_bug = next(iter(wrong.values()), solution)
    return [
        ("solution", solution, {}),
        ("blank", blank, {}),
        *((f"bug_{bug}", nb, {}) for bug, nb in wrong.items()),
        ("edited_tests", with_tests_edited(first_bug), {}),
        ("deleted_test", with_test_deleted(solution), {}),
        # right answers with two harmless disturbances: a student utils.py beside the notebook, a torch warning
        ("stray_utils_and_warning", with_torch_warning(solution), {"utils.py": STRAY_UTILS}),
    ]


@dataclass
class Unit:
    """One scratch course grading a share of one assignment's submissions (one nbgrader autograde run)."""

    assignment: str
    part: int
    students: list
    cell_timeout: int | None = None

    @property
    def cost(self) -> int:
        return len(self.students)


def _units() -> list:
    """Work for the pool: each assignment's submissions in PARTS courses, largest first (so two cores
    stay busy until the end), after the endless-loop course."""
    units = []
    for a in ASSIGNMENTS:
        subs = _submissions(a)
        for part in range(PARTS):
            units.append(Unit(a, part, subs[part::PARTS]))
        if a in LOOP_ASSIGNMENTS:
            units.append(Unit(a, PARTS, [("endless_loop", with_endless_loop(subs[0][1]), {})], LOOP_TIMEOUT))
    # the endless loop first: alone at the end, its timeout would leave the other worker idle
    return sorted(units, key=lambda u: (u.cell_timeout is None, -u.cost))


def _run(unit: Unit, root: Path) -> dict:
    course = pipeline.Course(root, cell_timeout=unit.cell_timeout)
    course.generate(unit.assignment)
    for student, nb, extra in unit.students:
        course.submit(student, unit.assignment, nb, extra_files=extra)
    seconds = course.autograde(unit.assignment)
    out = {"unit": unit, "course": course, "scores": course.scores(unit.assignment), "seconds": seconds}
    if unit.part == 0:  # item 6: re-grade one student of this course, then read the whole gradebook again
        out["regrade_seconds"] = course.autograde(unit.assignment, student="solution")
        out["rescores"] = course.scores(unit.assignment)
    if unit.cell_timeout is None:
        course.feedback(unit.assignment)
    return out


def _make_autograde(root: Path) -> dict:
    """What an instructor runs (`python -m grading autograde`, as `make autograde` does) on an inbox with
    one correct and one blank submission of the first assignment; graded in the pool beside the units."""
    assignment = ASSIGNMENTS[0]
    folder = root / "inbox"
    for student, nb in (
        ("alice", submissions.student_notebook(assignment)),
        ("bob", nbformat.read(REPO / "assignments" / assignment / f"{assignment}.ipynb", as_version=4)),
    ):
        (folder / student / assignment).mkdir(parents=True)
        nbformat.write(nb, folder / student / assignment / f"{assignment}.ipynb")
    course = pipeline.Course(root / "course")
    out = subprocess.run(
        [sys.executable, "-m", "grading", "autograde", str(folder), "--root", str(course.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return {"assignment": assignment, "folder": folder, "course": course, "out": out}


MAKE_AUTOGRADE: dict = {}  # filled by the `graded` fixture, read by the make-autograde test


@pytest.fixture(scope="session")
def graded(tmp_path_factory) -> dict[str, Graded]:
    start = time.perf_counter()
    units = _units()
    roots = [tmp_path_factory.mktemp(f"{u.assignment}_{u.part}") for u in units]  # here, not in the threads
    cli_root = tmp_path_factory.mktemp("make_autograde")
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        cli = pool.submit(_make_autograde, cli_root)  # first: one short job beside the endless loop
        done = list(pool.map(_run, units, roots))
        MAKE_AUTOGRADE.update(cli.result())
    results = {a: Graded() for a in ASSIGNMENTS}
    work = {a: [0.0, 0] for a in ASSIGNMENTS}
    for out in done:
        unit, g = out["unit"], results[out["unit"].assignment]
        if unit.cell_timeout:
            g.loop = out["scores"]["endless_loop"]
            g.seconds["endless_loop"] = out["seconds"]
        else:
            work[unit.assignment][0] += out["seconds"]
            work[unit.assignment][1] += len(unit.students)
            g.scores.update(out["scores"])
        g.courses.update({student: out["course"] for student in out["scores"]})
        if "rescores" in out:
            g.rescores = out["rescores"]
            g.seconds["regrade_one"] = out["regrade_seconds"]
    for a, (seconds, n) in work.items():
        results[a].seconds.update(per_submission=seconds / n, submissions=n)
    OUTPUT.mkdir(exist_ok=True)
    timings = {a: g.seconds for a, g in results.items()}
    timings["_total_wall_seconds"] = time.perf_counter() - start
    timings["_jobs"] = JOBS
    (OUTPUT / "grading_times.json").write_text(json.dumps(timings, indent=2))
    return results


def _describe(score: pipeline.Score) -> str:
    return f"{score.total:g}/{score.max_total:g}, failed cells {score.failed()}"


# ----------------------------------------------------------------------------- 1-3: right vs wrong
def test_every_assignment_is_graded():
    assert len(ASSIGNMENTS) >= 1, "solutions/ holds no assignment"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_gets_full_marks(graded, assignment):
    """All the autograded points; the written answers (manually graded) wait for the instructor."""
    score = graded[assignment].scores["solution"]
    assert score.max_total == 100, f"points must add up to 100, got {score.max_total}"
    assert score.auto_total == score.auto_max and not score.failed(), _describe(score)
    assert score.manual == set(submissions.manual_cells(assignment))
    assert score.needs_manual_grade == bool(score.manual), _describe(score)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_blank_release_scores_zero_and_every_cell_runs(graded, assignment):
    score = graded[assignment].scores["blank"]
    assert score.total == 0, f"the untouched release earns points: {_describe(score)}"
    nb = graded[assignment].autograded("blank", assignment)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.get("execution_count") for c in code), "some cells of the blank release never ran"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors and all(o.ename != "CellTimeoutError" for o in errors)
    verdicts = [o for c in code if nbgrader_meta(c).get("grade") for o in c.outputs if o.output_type == "error"]
    assert verdicts and all("NotImplementedError" in o.evalue for o in verdicts), (
        "every test's verdict should say the stub is not implemented"
    )


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_each_assignment_ships_enough_wrong_and_correct_submissions(assignment):
    """At least 4 wrong and 2 correct-but-different submissions, each with must_fail and must_pass
    partitioning the autograded test cells."""
    manifest = submissions.load_manifest(assignment)
    wrong = [bug for bug, spec in manifest.items() if not submissions.is_correct(spec)]
    correct = [bug for bug, spec in manifest.items() if submissions.is_correct(spec)]
    assert len(wrong) >= 4, f"{assignment}: only {len(wrong)} wrong submissions in its manifest"
    assert len(correct) >= 2, f"{assignment}: only {len(correct)} correct-but-different submissions (must_fail: [])"
    assert not submissions.manifest_problems(assignment), submissions.manifest_problems(assignment)


@pytest.mark.parametrize("assignment,bug", BUGS)
def test_each_submission_loses_exactly_its_functions_points(graded, assignment, bug):
    """must_fail cells score below their points, must_pass cells all of theirs; a wrong submission loses
    points, a correct-but-different one (must_fail empty) gets every autograded point."""
    spec = submissions.load_manifest(assignment)[bug]
    score = graded[assignment].scores[f"bug_{bug}"]
    problems = entry_problems(bug, spec, score)
    assert not problems, f"{spec['description']}: {problems}; {_describe(score)}"
    if submissions.is_correct(spec):
        assert score.auto_total == score.auto_max, _describe(score)
    else:
        assert score.auto_total < score.auto_max, f"{bug} ({spec['description']}) is not penalised: {_describe(score)}"


# ----------------------------------------------------------------------------- 4: faults
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_edited_test_cells_are_restored(graded, assignment):
    g = graded[assignment]
    edited = g.scores["edited_tests"]
    manifest = submissions.load_manifest(assignment)
    assert edited.auto_total < edited.auto_max, f"emptied tests earned full marks: {_describe(edited)}"
    if manifest:
        first = f"bug_{next(iter(manifest))}"
        assert edited.cells == g.scores[first].cells, "the original tests must run, as for the unedited buggy notebook"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_deleted_test_cell_never_gets_full_marks(graded, assignment):
    deleted = graded[assignment].scores["deleted_test"]
    assert deleted.auto_total < deleted.auto_max or deleted.needs_manual_grade, _describe(deleted)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_stray_utils_py_does_not_shadow_the_course_utils(graded, assignment):
    score = graded[assignment].scores["stray_utils_and_warning"]
    assert score.auto_total == score.auto_max, _describe(score)
    nb = graded[assignment].autograded("stray_utils_and_warning", assignment)
    assert "shadowed" not in json.dumps(nb), "the stray utils.py was imported"
    assert (
        graded[assignment].courses["stray_utils_and_warning"].root
        / "autograded"
        / "stray_utils_and_warning"
        / assignment
        / "utils.py"
    ).exists(), "the stray utils.py was not next to the graded notebook"


def test_nbgrader_zeroes_a_test_cell_that_writes_to_stderr():
    """The trap the course fixes: nbgrader scores a passing cell with stderr output as failed."""
    from nbformat.v4 import new_code_cell, new_output
    from nbgrader.utils import determine_grade

    cell = new_code_cell(
        "f(x)", metadata={"nbgrader": {"grade": True, "grade_id": "t", "points": 5, "solution": False, "locked": True}}
    )
    cell.outputs = [new_output("stream", name="stderr", text="UserWarning: harmless\n")]
    assert determine_grade(cell)[0] == 0
    cell.outputs = [new_output("stream", name="stdout", text="UserWarning: harmless\n")]
    assert determine_grade(cell)[0] == 5


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_correct_code_with_a_torch_warning_keeps_full_marks(graded, assignment):
    score = graded[assignment].scores["stray_utils_and_warning"]
    assert score.auto_total == score.auto_max, _describe(score)
    nb = graded[assignment].autograded("stray_utils_and_warning", assignment)
    graded_cells = [c for c in nb.cells if nbgrader_meta(c).get("grade")]
    # a test cell's outputs are the trusted verdict: what the student's code prints never reaches them
    streams = [o for c in graded_cells for o in c.outputs if o.output_type == "stream"]
    assert not any(o.name == "stderr" for o in streams)
    assert all("passed" in o.text for o in streams), [o.text for o in streams]


@pytest.mark.parametrize("assignment", LOOP_ASSIGNMENTS)
def test_endless_loop_costs_only_its_tests(graded, assignment):
    g = graded[assignment]
    loop = g.loop
    assert 0 < loop.auto_total < loop.auto_max, f"endless loop: {_describe(loop)}"
    nb = g.autograded("endless_loop", assignment)
    timed_out = [
        c
        for c in nb.cells
        if any(o.output_type == "error" and "did not finish within" in o.evalue for o in c.get("outputs", []))
    ]
    assert timed_out, "no test reports the call that did not finish"


# ----------------------------------------------------------------------------- 6: re-grading
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_regrading_gives_the_same_scores_and_keeps_other_grades(graded, assignment):
    g = graded[assignment]
    first = g.courses["solution"]
    before = {s: score for s, score in g.scores.items() if g.courses[s] is first}
    assert len(before) > 1 and set(g.rescores) == set(before), (
        "students disappeared from the gradebook after re-grading"
    )
    for student, score in before.items():
        assert g.rescores[student].cells == score.cells, (
            f"{student}: {_describe(score)} -> {_describe(g.rescores[student])}"
        )


# ----------------------------------------------------------------------------- feedback
def _hidden_lines(assignment: str):
    """Substantial lines of the hidden tests that a student does not see anyway (in the release or in
    the solution code a student writes)."""
    hidden, _ = submissions.region_lines(
        nbformat.read(REPO / "solutions" / assignment / f"{assignment}.ipynb", as_version=4), kinds=("HIDDEN TESTS",)
    )
    hidden += [line.strip() for line in (REPO / "grading" / "hidden" / f"{assignment}.py").read_text().split("\n")]
    student = submissions.student_notebook(assignment)
    visible = re.sub(r"\s+", " ", "\n".join(cell.source for cell in student.cells))  # the student's own code too
    return [line for line in hidden if len(line) > 30 and re.sub(r"\s+", " ", line) not in visible]


def _feedback_text(course: pipeline.Course, student: str, assignment: str) -> str:
    page = (course.root / "feedback" / student / assignment / f"{assignment}.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_explains_failures_without_revealing_hidden_tests(graded, assignment):
    g = graded[assignment]
    hidden = [re.sub(r"\s+", " ", line) for line in _hidden_lines(assignment)]
    assert hidden, f"{assignment} has no hidden tests"
    for student in g.scores:
        text = _feedback_text(g.courses[student], student, assignment)
        leaked = [line for line in hidden if line in text]
        assert not leaked, f"feedback of {student} shows hidden test code: {leaked[:2]}"
        assert "BEGIN HIDDEN TESTS" not in text
    for bug, spec in submissions.load_manifest(assignment).items():
        if submissions.is_correct(spec):
            continue
        text = _feedback_text(g.courses[f"bug_{bug}"], f"bug_{bug}", assignment)
        assert re.search(r"\b\w*(Error|Exception): \S", text), f"{bug}: no failure message in the feedback"
        assert "expected" in text, f"{bug}: the feedback does not say what was expected"


# ----------------------------------------------------------------------------- time budget, CLI
def test_autograding_time_per_submission(graded):
    for assignment, g in graded.items():
        print(f"{assignment}: {g.seconds['per_submission']:.1f} s per submission")
        assert g.seconds["per_submission"] < 60, f"{assignment}: {g.seconds['per_submission']:.0f} s per submission"


def test_make_autograde_grades_a_folder_exports_and_summarises(graded):
    run = MAKE_AUTOGRADE
    assignment, folder, course, out = run["assignment"], run["folder"], run["course"], run["out"]
    assert out.returncode == 0, out.stdout + out.stderr
    # alice gets every autograded point (written answers wait for the instructor), bob none
    auto = sum(submissions.autograded_cells(assignment).values())
    alice = re.search(r"alice\s+(\d+) / 100", out.stdout)
    assert alice and float(alice.group(1)) == auto and re.search(r"bob\s+0 / 100", out.stdout), out.stdout
    assert "failed by" in out.stdout
    grades = (course.root / "grades.csv").read_text()
    assert "alice" in grades and "bob" in grades
    assert (course.root / "feedback" / "alice" / assignment / f"{assignment}.html").exists()
    dry = subprocess.run(["make", "-n", "autograde", f"SUBMISSIONS={folder}"], cwd=REPO, capture_output=True, text=True)
    assert f'-m grading autograde "{folder}"' in dry.stdout
    assert (course.root / "ungradable.csv").exists() and (course.root / "review.csv").exists()
