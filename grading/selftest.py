"""The course grades its own test class: is every grade what it should be?

For each assignment, the *class* is: the solution handed in as a student's (``solution``), the untouched release
(``blank``), every entry of ``tests/submissions/<a>/manifest.json`` (``bug_<entry>``: a wrong submission, or a
correct-but-different one), and, on request, the fault cases below (students who edit or delete test cells, hand in
a stray ``utils.py``, trigger torch warnings, or never return). The class is written as an inbox
``<student>/<assignment>/<assignment>.ipynb`` and graded by what an instructor runs, ``python -m grading autograde``
(:func:`grading.pipeline.autograde_folder`, ``make autograde``). :func:`score_problems` then decides, from the
gradebook's scores alone, what is wrong: it is the one judge of ``python -m grading check`` and of
``tests/test_grading_pipeline.py``.
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
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import pipeline, submissions
from .paths import REPO, release_notebook
from .submissions import nbgrader_meta

__all__ = [
    "FAULTS",
    "GradedClass",
    "grade_test_class",
    "LOOP_TIMEOUT",
    "Handin",
    "chosen_assignments",
    "class_submissions",
    "one_assignment",
    "entry_problems",
    "grade_inbox",
    "first_wrong",
    "score_problems",
    "seconds_per_submission",
    "with_endless_loop",
    "write_inbox",
]

# seconds per cell in the endless-loop course (its setup cell must finish within it)
LOOP_TIMEOUT = 15
# what a student who shadows the course package would hand in beside the notebook
STRAY_UTILS = "raise ImportError('a student utils.py shadowed the course utils package')\n"


@dataclass
class Handin:
    """One student's hand-in for one assignment: the notebook and any other files beside it."""

    notebook: nbformat.NotebookNode
    files: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- fault cases
def top_level_functions(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    """(cell index, name) of every top-level function the solution cells define, in order."""
    found = []
    for i, cell in enumerate(nb.cells):
        if nbgrader_meta(cell).get("solution") and cell.cell_type == "code":
            found += [(i, node.name) for node in ast.parse(cell.source).body if isinstance(node, ast.FunctionDef)]
    if not found:
        raise ValueError("no solution cell defines a top-level function")
    return found


def with_endless_loop(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student's last function never returns (a classic ``while`` bug); the last one, because fewer tests build
    on it, so the run shows that the *other* tests still grade."""
    nb = copy.deepcopy(nb)
    i, name = top_level_functions(nb)[-1]
    nb.cells[i].source += f"\n\n\ndef {name}(*args, **kwargs):\n    while True:\n        pass\n"
    return nb


def with_torch_warning(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Correct code that makes torch print a UserWarning each time the first function runs."""
    nb = copy.deepcopy(nb)
    i, name = top_level_functions(nb)[0]
    nb.cells[i].source += (
        f"\n\n\n_correct_{name} = {name}\n\n\ndef {name}(*args, **kwargs):\n"
        "    import torch\n"
        "    torch.tensor(torch.zeros(1))  # torch warns: copy-constructing from a tensor\n"
        f"    return _correct_{name}(*args, **kwargs)\n"
    )
    return nb


def with_tests_edited(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A student who replaces every test cell with ``pass``."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if nbgrader_meta(cell).get("grade"):
            cell.source = "pass  # the tests were in the way"
    return nb


def with_test_deleted(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A student who deletes the first test cell."""
    nb = copy.deepcopy(nb)
    first = next(i for i, c in enumerate(nb.cells) if nbgrader_meta(c).get("grade"))
    del nb.cells[first]
    return nb


def first_wrong(assignment: str) -> tuple[str, nbformat.NotebookNode]:
    """The first wrong entry of the manifest (the base of the edited-tests fault) and its notebook."""
    manifest = submissions.load_manifest(assignment)
    bug = next(b for b, spec in manifest.items() if not submissions.is_correct(spec))
    return bug, submissions.wrong_submissions(assignment)[bug]


# fault case -> how to build it from an assignment; each is a student of its own, so a failure names its cause
FAULTS = {
    # a wrong submission whose test cells are emptied: the original tests must run and fail it anyway
    "edited_tests": lambda a: Handin(with_tests_edited(first_wrong(a)[1])),
    # the solution with its first test cell deleted: never full marks
    "deleted_test": lambda a: Handin(with_test_deleted(submissions.student_notebook(a))),
    # the solution with a utils.py beside it that would break the course package if it were imported
    "stray_utils": lambda a: Handin(submissions.student_notebook(a), {"utils.py": STRAY_UTILS}),
    # the solution, with a torch UserWarning on stderr every time its first function runs: full marks
    "torch_warning": lambda a: Handin(with_torch_warning(submissions.student_notebook(a))),
}


# ----------------------------------------------------------------------------- the class
def class_submissions(assignment: str, only: list[str] | None = None, faults: bool = False) -> dict[str, Handin]:
    """student -> hand-in: ``solution``, ``blank``, ``bug_<entry>`` for the manifest's entries (``only``: these
    entries), and with ``faults`` every :data:`FAULTS` case."""
    manifest = submissions.load_manifest(assignment)
    if only is not None:
        unknown = sorted(set(only) - set(manifest))
        if unknown:
            raise ValueError(f"not in the manifest of {assignment}: {unknown}")
    solution = submissions.student_notebook(assignment)
    plan = {
        "solution": Handin(solution),
        "blank": Handin(nbformat.read(release_notebook(assignment), as_version=4)),
    }
    for bug, nb in submissions.wrong_submissions(assignment).items():
        if only is None or bug in only:
            plan[f"bug_{bug}"] = Handin(nb)
    if faults:
        plan.update({name: build(assignment) for name, build in FAULTS.items()})
    return plan


def write_inbox(folder: Path, plan: Mapping[str, Mapping[str, Handin]]) -> Path:
    """Write ``plan`` (assignment -> student -> hand-in) as ``folder/<student>/<assignment>/``."""
    for assignment, students in plan.items():
        for student, handin in students.items():
            where = Path(folder) / student / assignment
            where.mkdir(parents=True, exist_ok=True)
            nbformat.write(handin.notebook, where / f"{assignment}.ipynb")
            for name, text in handin.files.items():
                (where / name).write_text(text)
    return Path(folder)


def grade_inbox(
    inbox: Path, course: pipeline.Course, jobs: int = 2, timeout: float = 3600
) -> subprocess.CompletedProcess:
    """``python -m grading autograde <inbox> --root <course> --jobs <jobs>``, as ``make autograde`` runs it, in
    ``course`` (:class:`grading.pipeline.Course`: its own gradebook and cell timeout). Returns the finished process
    (stdout: the per-assignment summaries and timings)."""
    return subprocess.run(
        [sys.executable, "-m", "grading", "autograde", str(inbox), "--root", str(course.root), "--jobs", str(jobs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def seconds_per_submission(stdout: str) -> dict[str, float]:
    """assignment -> seconds per submission, from ``autograde``'s "autograded N submission(s) in S s" lines."""
    pattern = r"== (\S+): \d+ submission.*?autograded \d+ submission\(s\) in \d+ s \(([\d.]+) s each"
    found = re.findall(pattern, stdout, re.S)
    return {assignment: float(seconds) for assignment, seconds in found}


# ----------------------------------------------------------------------------- the judge
def entry_problems(bug: str, spec: dict, score: pipeline.Score) -> list[str]:
    """What a graded manifest entry gets wrong: a must_fail cell at full points, a must_pass cell below, a wrong
    submission without any loss, a correct-but-different one without every autograded point."""
    failed = set(score.failed())
    problems = []
    kept = sorted(set(spec.get("must_fail", [])) - failed)
    lost = sorted(set(spec.get("must_pass", [])) & failed)
    if kept:
        problems.append(f"{bug}: should fail {kept} but they got full points")
    if lost:
        problems.append(f"{bug}: should keep {lost} but lost points there ({score.auto_total:g} / {score.auto_max:g})")
    if submissions.is_correct(spec) and score.auto_total != score.auto_max:
        problems.append(f"{bug}: correct but different, yet {score.auto_total:g} / {score.auto_max:g} autograded")
    if not submissions.is_correct(spec) and score.auto_total >= score.auto_max:
        problems.append(f"{bug}: {spec.get('description', 'a wrong submission')} is not penalised")
    return problems


def score_problems(assignment: str, scores: Mapping[str, pipeline.Score]) -> dict[str, list[str]]:
    """student -> what their score gets wrong, for the students of :func:`class_submissions` that were graded
    (fault cases are judged by their own tests). Empty lists everywhere: every grade is what it should be.

    * ``solution``: every autograded point, 100 points in all, the written answers waiting for the instructor;
    * ``blank``: 0 points;
    * ``bug_<entry>``: :func:`entry_problems` against the manifest.
    """
    problems: dict[str, list[str]] = {}
    manual = set(submissions.manual_cells(assignment))
    solution = scores.get("solution")
    if solution is not None:
        found = []
        if solution.max_total != 100:
            found.append(f"solution: the points add up to {solution.max_total:g}, not 100")
        if solution.failed() or solution.auto_total != solution.auto_max:
            found.append(
                f"solution scores {solution.auto_total:g} / {solution.auto_max:g} autograded, "
                f"failed {solution.failed()}"
            )
        if solution.manual != manual:
            found.append(f"solution: manually graded cells {sorted(solution.manual)}, expected {sorted(manual)}")
        if solution.needs_manual_grade != bool(manual):
            found.append(f"solution: needs_manual_grade is {solution.needs_manual_grade} with written answers {manual}")
        problems["solution"] = found
    blank = scores.get("blank")
    if blank is not None:
        passing = sorted(set(blank.cells) - set(blank.failed()) - blank.manual)
        problems["blank"] = [f"blank release scores {blank.total:g}: passes {passing}"] if blank.total != 0 else []
    for bug, spec in submissions.load_manifest(assignment).items():
        score = scores.get(f"bug_{bug}")
        if score is not None:
            problems[f"bug_{bug}"] = entry_problems(bug, spec, score)
    return problems


# ----------------------------------------------------------------------------- the whole test class, graded
def chosen_assignments() -> list[str]:
    """Every assignment, or those named in ``GRADING_ONLY=a,b`` (to iterate on one while developing)."""
    from .paths import assignment_names

    only = os.environ.get("GRADING_ONLY")
    return [a for a in assignment_names() if a in (only or a).split(",")]


def one_assignment() -> list[str]:
    """The assignment that shows what goes through the same code for all of them (the endless loop costs
    :data:`LOOP_TIMEOUT` per looping cell; re-grading one student): nms, the cheapest to grade."""
    names = chosen_assignments()
    return [a for a in ("nms",) if a in names] or names[:1]


@dataclass
class GradedClass:
    """The graded test class: its course, the gradebook's scores, the autograde run, the re-grade of ``solution``,
    and the endless-loop course beside it."""

    course: pipeline.Course
    run: subprocess.CompletedProcess
    scores: dict[str, dict[str, pipeline.Score]]  # assignment -> student -> score
    rescores: dict[str, dict[str, pipeline.Score]]  # the same, read again after re-grading ``solution``
    loop_course: pipeline.Course
    loop_scores: dict[str, dict[str, pipeline.Score]]
    seconds: dict[str, float]  # assignment -> seconds per submission

    def autograded(self, student: str, assignment: str, course: pipeline.Course | None = None):
        root = (course or self.course).root
        return nbformat.read(root / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4)

    def feedback_text(self, student: str, assignment: str) -> str:
        page = (self.course.root / "feedback" / student / assignment / f"{assignment}.html").read_text()
        return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", page)))


def grade_test_class(
    root: Path,
    assignments: Sequence[str],
    jobs: int = 2,
    loop_assignments: Sequence[str] = (),
    regrade_assignments: Sequence[str] = (),
    log: Path | None = None,
) -> GradedClass:
    """Hand in :func:`class_submissions` (with every fault case) of ``assignments`` as one class and grade it with
    :func:`grade_inbox` in ``root/course``; meanwhile grade :func:`with_endless_loop` of ``loop_assignments`` in
    ``root/loop_course`` (cells time out after :data:`LOOP_TIMEOUT` s); then grade ``solution`` of
    ``regrade_assignments`` again in the same course and read the gradebook again. ``log``: both runs' output, and a
    ``.json`` beside it with the seconds per submission."""
    start = time.perf_counter()
    root = Path(root)
    plan = {a: class_submissions(a, faults=True) for a in assignments}
    inbox = write_inbox(root / "inbox", plan)
    loops = {a: {"endless_loop": Handin(with_endless_loop(plan[a]["solution"].notebook))} for a in loop_assignments}
    loop_inbox = write_inbox(root / "loop_inbox", loops)
    course, loop_course = pipeline.Course(root / "course"), pipeline.Course(root / "loop_course", LOOP_TIMEOUT)
    with ThreadPoolExecutor(max_workers=1) as beside:  # the loop mostly waits for its time-outs
        loop = beside.submit(grade_inbox, loop_inbox, loop_course, 1) if loops else None
        run = grade_inbox(inbox, course, jobs=jobs)
        loop_run = loop.result() if loop else None
    scores = {a: course.scores(a) for a in assignments}
    again = write_inbox(root / "regrade_inbox", {a: {"solution": plan[a]["solution"]} for a in regrade_assignments})
    regrade = grade_inbox(again, course, jobs=jobs) if regrade_assignments else None
    if regrade is not None and regrade.returncode != 0:
        raise RuntimeError(f"re-grading failed:\n{regrade.stdout[-3000:]}\n{regrade.stderr[-3000:]}")
    seconds = seconds_per_submission(run.stdout)
    if log is not None:
        outputs = [run] + [r for r in (loop_run, regrade) if r is not None]
        Path(log).write_text("\n".join(r.stdout + "\n" + r.stderr for r in outputs))
        timings = {"seconds_per_submission": seconds, "total_wall_seconds": time.perf_counter() - start, "jobs": jobs}
        Path(log).with_suffix(".json").write_text(json.dumps(timings, indent=2))
    return GradedClass(
        course=course,
        run=run,
        scores=scores,
        rescores={a: course.scores(a) for a in regrade_assignments},
        loop_course=loop_course,
        loop_scores={a: loop_course.scores(a) for a in loop_assignments},
        seconds=seconds,
    )
