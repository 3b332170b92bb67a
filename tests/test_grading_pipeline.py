"""The grading pipeline separates right from wrong, for every assignment in solutions/.

The session fixture hands in one class per assignment (:func:`grading.selftest.class_submissions`: the solution, the
blank release, every entry of tests/submissions/<a>/manifest.json and every fault case) and grades it with
``python -m grading autograde``, what ``make autograde`` runs, in a scratch course; the endless loop is graded beside it
in a course of its own with a short cell timeout. The tests read the scores from the gradebook with nbgrader's API
and judge them with :func:`grading.selftest.score_problems`, the same judge as ``python -m grading check``.
"""

from __future__ import annotations

import json
import re
import subprocess

import nbformat
import pytest

from grading import pipeline, selftest, submissions
from grading.paths import REPO
from grading.submissions import nbgrader_meta

slow = pytest.mark.slow  # the tests that need the graded class (minutes); the others take milliseconds

ASSIGNMENTS = selftest.chosen_assignments()
BUGS = [(a, bug) for a in ASSIGNMENTS for bug in submissions.load_manifest(a)]
LOOP_ASSIGNMENTS = REGRADE_ASSIGNMENTS = selftest.one_assignment()


def _describe(score: pipeline.Score) -> str:
    return f"{score.total:g}/{score.max_total:g}, failed cells {score.failed()}"


def _full_marks(graded, student: str, assignment: str):
    """Assert that ``student`` got every automatic point of ``assignment``; return the autograded notebook."""
    score = graded.scores[assignment][student]
    assert score.auto_total == score.auto_max, _describe(score)
    return graded.autograded(student, assignment)


# ----------------------------------------------------------------------------- right vs wrong
def test_every_assignment_is_graded():
    assert len(ASSIGNMENTS) >= 1, "solutions/ holds no assignment"


@slow
def test_the_class_is_graded_and_exported(graded):
    assert graded.run.returncode == 0, graded.run.stdout[-3000:] + graded.run.stderr[-3000:]
    for a in ASSIGNMENTS:
        missing = sorted(set(selftest.class_submissions(a, faults=True)) - set(graded.scores[a]))
        assert not missing, f"{a}: not graded: {missing}"


@slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_gets_full_marks(graded, assignment):
    """All the autograded points; the written answers (manually graded) wait for the instructor."""
    problems = selftest.score_problems(assignment, graded.scores[assignment])
    assert not problems["solution"], problems["solution"]


@slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_blank_release_scores_zero_and_every_cell_runs(graded, assignment):
    problems = selftest.score_problems(assignment, graded.scores[assignment])
    assert not problems["blank"], problems["blank"]
    nb = graded.autograded("blank", assignment)
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


@slow
@pytest.mark.parametrize("assignment,bug", BUGS)
def test_each_submission_loses_exactly_its_functions_points(graded, assignment, bug):
    """must_fail cells score below their points, must_pass cells all of theirs; a wrong submission loses
    points, a correct-but-different one (must_fail empty) gets every autograded point."""
    spec = submissions.load_manifest(assignment)[bug]
    score = graded.scores[assignment][f"bug_{bug}"]
    problems = selftest.score_problems(assignment, graded.scores[assignment])[f"bug_{bug}"]
    assert not problems, f"{spec['description']}: {problems}; {_describe(score)}"


def test_the_judge_finds_each_kind_of_wrong_grade():
    """score_problems on made-up gradebook rows: every way a grade can be wrong is named, right grades pass."""
    assignment = ASSIGNMENTS[0]
    auto = submissions.autograded_cells(assignment)
    manual = submissions.manual_cells(assignment)
    max_cells = {**auto, **manual}

    def score(failed: set[str]) -> pipeline.Score:
        cells = {c: (0.0 if c in failed or c in manual else p) for c, p in max_cells.items()}
        return pipeline.Score(sum(cells.values()), sum(max_cells.values()), cells, max_cells, bool(manual), set(manual))

    manifest = submissions.load_manifest(assignment)
    wrong = next(b for b, spec in manifest.items() if not submissions.is_correct(spec))
    correct = next(b for b, spec in manifest.items() if submissions.is_correct(spec))
    must_fail = set(manifest[wrong]["must_fail"])
    right = {"solution": score(set()), "blank": score(set(auto)), f"bug_{wrong}": score(must_fail)}
    right[f"bug_{correct}"] = score(set())
    assert not any(selftest.score_problems(assignment, right).values())
    one_cell = sorted(auto)[0]
    bad = {
        "solution": score({one_cell}),
        "blank": score(set(auto) - {one_cell}),
        f"bug_{wrong}": score(set()),
        f"bug_{correct}": score({one_cell}),
    }
    found = selftest.score_problems(assignment, bad)
    assert all(found[student] for student in bad), found


# ----------------------------------------------------------------------------- students who break the rules
@slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_edited_test_cells_are_restored(graded, assignment):
    scores = graded.scores[assignment]
    edited = scores["edited_tests"]
    assert edited.auto_total < edited.auto_max, f"emptied tests earned full marks: {_describe(edited)}"
    base = f"bug_{selftest.first_wrong(assignment)[0]}"
    assert edited.cells == scores[base].cells, "the original tests must run, as for the unedited buggy notebook"


@slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_deleted_test_cell_never_gets_full_marks(graded, assignment):
    deleted = graded.scores[assignment]["deleted_test"]
    assert deleted.auto_total < deleted.auto_max or deleted.needs_manual_grade, _describe(deleted)


@slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_stray_utils_py_does_not_shadow_the_course_utils(graded, assignment):
    nb = _full_marks(graded, "stray_utils", assignment)
    assert "shadowed" not in json.dumps(nb), "the stray utils.py was imported"
    beside = graded.course.root / "autograded" / "stray_utils" / assignment / "utils.py"
    assert beside.exists(), "the stray utils.py was not next to the graded notebook"


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


@slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_correct_code_with_a_torch_warning_keeps_full_marks(graded, assignment):
    nb = _full_marks(graded, "torch_warning", assignment)
    graded_cells = [c for c in nb.cells if nbgrader_meta(c).get("grade") and c.cell_type == "code"]
    # a test cell's outputs are the trusted verdict: what the student's code prints never reaches them
    streams = [o for c in graded_cells for o in c.outputs if o.output_type == "stream"]
    assert not any(o.name == "stderr" for o in streams)
    assert all("passed" in o.text for o in streams), [o.text for o in streams]


@slow
@pytest.mark.parametrize("assignment", LOOP_ASSIGNMENTS)
def test_endless_loop_costs_only_its_tests(graded, assignment):
    loop = graded.loop_scores[assignment]["endless_loop"]
    assert 0 < loop.auto_total < loop.auto_max, f"endless loop: {_describe(loop)}"
    nb = graded.autograded("endless_loop", assignment, graded.loop_course)
    timed_out = [
        c
        for c in nb.cells
        if any(o.output_type == "error" and "did not finish within" in o.evalue for o in c.get("outputs", []))
    ]
    assert timed_out, "no test reports the call that did not finish"


# ----------------------------------------------------------------------------- re-grading
@slow
@pytest.mark.parametrize("assignment", REGRADE_ASSIGNMENTS)
def test_regrading_gives_the_same_scores_and_keeps_other_grades(graded, assignment):
    before, after = graded.scores[assignment], graded.rescores[assignment]
    assert len(before) > 1 and set(after) == set(before), "students disappeared from the gradebook after re-grading"
    for student, score in before.items():
        assert after[student].cells == score.cells, f"{student}: {_describe(score)} -> {_describe(after[student])}"


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


@slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_explains_failures_without_revealing_hidden_tests(graded, assignment):
    hidden = [re.sub(r"\s+", " ", line) for line in _hidden_lines(assignment)]
    assert hidden, f"{assignment} has no hidden tests"
    for student in graded.scores[assignment]:
        text = graded.feedback_text(student, assignment)
        # a line the student wrote themselves (a correct-but-different submission) is theirs to see
        own = re.sub(r"\s+", " ", "\n".join(c.source for c in graded.autograded(student, assignment).cells))
        leaked = [line for line in hidden if line in text and line not in own]
        assert not leaked, f"feedback of {student} shows hidden test code: {leaked[:2]}"
        assert "BEGIN HIDDEN TESTS" not in text
    for bug, spec in submissions.load_manifest(assignment).items():
        if submissions.is_correct(spec):
            continue
        text = graded.feedback_text(f"bug_{bug}", assignment)
        assert re.search(r"\b\w*(Error|Exception): \S", text), f"{bug}: no failure message in the feedback"
        assert "expected" in text, f"{bug}: the feedback does not say what was expected"


# ----------------------------------------------------------------------------- time budget, the instructor's command
@slow
def test_autograding_time_per_submission(graded):
    assert set(graded.seconds) == set(ASSIGNMENTS), f"no timing line for {set(ASSIGNMENTS) - set(graded.seconds)}"
    for assignment, seconds in graded.seconds.items():
        print(f"{assignment}: {seconds:.1f} s per submission")
        assert seconds < 60, f"{assignment}: {seconds:.0f} s per submission"


@slow
def test_make_autograde_grades_a_folder_exports_and_summarises(graded):
    """The class was graded by `python -m grading autograde`: its summary, grades.csv, feedback, the lists."""
    out, root = graded.run, graded.course.root
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for assignment in ASSIGNMENTS:
        # the solution gets every autograded point (written answers wait for the instructor), the blank release none
        auto = sum(submissions.autograded_cells(assignment).values())
        summary = out.stdout[out.stdout.index(f"== {assignment}:") :]
        solution = re.search(r"^solution\s+(\d+) / 100", summary, re.M)
        assert solution and float(solution.group(1)) == auto, summary[:3000]
        assert re.search(r"^blank\s+0 / 100", summary, re.M), summary[:3000]
        assert (root / "feedback" / "solution" / assignment / f"{assignment}.html").exists()
    assert "failed by" in out.stdout
    grades = (root / "grades.csv").read_text()
    assert "solution" in grades and "blank" in grades
    dry = subprocess.run(["make", "-n", "autograde", "SUBMISSIONS=inbox"], cwd=REPO, capture_output=True, text=True)
    assert '-m grading autograde "inbox"' in dry.stdout
    assert (root / "ungradable.csv").exists() and (root / "review.csv").exists()
