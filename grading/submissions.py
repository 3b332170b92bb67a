"""Build student submissions from the nbgrader source: the correct one and the "plausible bug" ones.

A submission is what a student hands in: the *release* notebook with the solution cells filled in.
``student_notebook(assignment)`` builds the correct one (release + the solution code, without the
``### BEGIN/END SOLUTION`` markers); each wrong submission is that notebook with one bug applied,
described in ``tests/submissions/<assignment>/manifest.json``::

    {
      "dw_not_summed": {
        "description": "dw keeps only the last sample instead of summing over the batch",
        "cell": "conv2d_backward_naive",                  # grade_id of the solution cell to edit
        "replace": [["dw += ", "dw = "]],                 # exact text, each must occur exactly once
        "must_fail": ["test_conv2d_backward_naive"],      # test cells that must score below their points
        "must_pass": ["test_conv2d_forward", ...]         # test cells that must score all their points
      },
      "correct_im2col_by_unfold": {
        "description": "correct but different: ...",
        "from_file": "correct_im2col_by_unfold.py",       # replaces whole solution cells (see below)
        "must_fail": [],                                  # empty: a correct submission, full marks
        "must_pass": [...every autograded test cell...]
      }
    }

``must_fail`` and ``must_pass`` partition the autograded test cells of the assignment (every cell in
exactly one; manually graded answer cells in neither): a bug costs exactly its function's cells and
keeps the others. An entry with ``"must_fail": []`` is a *correct but different* implementation, which
must get every autograded point. ``from_file`` names a Python file next to the manifest whose
``# %% <grade_id>`` lines start the new source of that solution cell (the whole cell is replaced); it
may be combined with ``cell``/``replace``, which is applied afterwards.

The tests and the tools build the submissions from the manifest whenever they need them
(:func:`wrong_submissions`); they are not committed. ``python -m grading submissions <assignment>`` writes them
to ``tests/submissions/<assignment>/<bug>.ipynb`` (git-ignored) for reading; :func:`manifest_problems` checks
that the manifest is well formed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat

from .paths import REPO, release_notebook, solution_notebook

SUBMISSIONS = REPO / "tests" / "submissions"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def nbgrader_meta(cell) -> dict:
    """A cell's nbgrader metadata (empty for ordinary cells)."""
    return cell.get("metadata", {}).get("nbgrader", {})


def region_lines(
    nb: nbformat.NotebookNode, kinds: tuple[str, ...] = ("SOLUTION", "HIDDEN TESTS")
) -> tuple[list[str], list[str]]:
    """Stripped source lines inside nbgrader's ``### BEGIN <kind>`` / ``### END <kind>`` regions and
    outside them (marker lines themselves in neither), in notebook order."""
    inside_lines: list[str] = []
    outside_lines: list[str] = []
    for cell in nb.cells:
        inside = False
        for line in cell.source.split("\n"):
            if any(f"### BEGIN {kind}" in line for kind in kinds):
                inside = True
            elif any(f"### END {kind}" in line for kind in kinds):
                inside = False
            else:
                (inside_lines if inside else outside_lines).append(line.strip())
    return inside_lines, outside_lines


def _strip_markers(source: str) -> str:
    return "\n".join(line for line in source.split("\n") if line.strip() not in (BEGIN, END))


def student_notebook(assignment: str) -> nbformat.NotebookNode:
    """The release notebook with every solution cell replaced by the solution's code (a perfect student)."""
    source = nbformat.read(solution_notebook(assignment), as_version=4)
    release = nbformat.read(release_notebook(assignment), as_version=4)
    solutions = {nbgrader_meta(c)["grade_id"]: c.source for c in source.cells if nbgrader_meta(c).get("solution")}
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            cell.source = _strip_markers(solutions[meta["grade_id"]])
    return nb


def autograded_cells(assignment: str) -> dict[str, float]:
    """grade_id -> points of every autograded test cell (graded, not a solution cell) of the source."""
    nb = nbformat.read(solution_notebook(assignment), as_version=4)
    return {
        nbgrader_meta(c)["grade_id"]: float(nbgrader_meta(c).get("points", 0))
        for c in nb.cells
        if nbgrader_meta(c).get("grade") and not nbgrader_meta(c).get("solution")
    }


def manual_cells(assignment: str) -> dict[str, float]:
    """grade_id -> points of every manually graded cell (graded *and* a solution cell: a written answer)."""
    nb = nbformat.read(solution_notebook(assignment), as_version=4)
    return {
        nbgrader_meta(c)["grade_id"]: float(nbgrader_meta(c).get("points", 0))
        for c in nb.cells
        if nbgrader_meta(c).get("grade") and nbgrader_meta(c).get("solution")
    }


def is_correct(spec: dict) -> bool:
    """A manifest entry for a correct-but-different implementation (nothing must fail)."""
    return not spec.get("must_fail")


def manifest_problems(assignment: str) -> list[str]:
    """What is wrong with the manifest: a description, and ``must_fail`` + ``must_pass`` partitioning the
    autograded test cells (none missing, none twice, none unknown). Empty when it is well formed."""
    cells = set(autograded_cells(assignment))
    problems = []
    for bug, spec in load_manifest(assignment).items():
        fail, keep = spec.get("must_fail"), spec.get("must_pass")
        if not spec.get("description"):
            problems.append(f"{bug}: no description")
        if not isinstance(fail, list) or not isinstance(keep, list):
            problems.append(f"{bug}: must_fail and must_pass must both be lists")
            continue
        both = set(fail) & set(keep)
        missing = cells - set(fail) - set(keep)
        unknown = (set(fail) | set(keep)) - cells
        if both:
            problems.append(f"{bug}: in must_fail and must_pass: {sorted(both)}")
        if missing:
            problems.append(f"{bug}: in neither must_fail nor must_pass: {sorted(missing)}")
        if unknown:
            problems.append(f"{bug}: not autograded test cells of {assignment}: {sorted(unknown)}")
        if len(fail) != len(set(fail)) or len(keep) != len(set(keep)):
            problems.append(f"{bug}: a cell listed twice")
    return problems


def load_manifest(assignment: str) -> dict[str, dict]:
    path = SUBMISSIONS / assignment / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def apply_bug(nb: nbformat.NotebookNode, bug: str, spec: dict) -> nbformat.NotebookNode:
    """A copy of ``nb`` with the manifest entry ``spec`` applied (``from_file``, then ``cell``/``replace``)."""
    nb = copy.deepcopy(nb)
    if "from_file" in spec:
        for grade_id, source in cell_sources(SUBMISSIONS / spec["assignment"] / spec["from_file"]).items():
            cells = [c for c in nb.cells if nbgrader_meta(c).get("grade_id") == grade_id]
            if len(cells) != 1 or not nbgrader_meta(cells[0]).get("solution"):
                raise ValueError(f"{bug}: {spec['from_file']} names {grade_id!r}, which is no single solution cell")
            cells[0].source = source
    if "cell" not in spec:
        return nb
    cells = [c for c in nb.cells if nbgrader_meta(c).get("grade_id") == spec["cell"]]
    if len(cells) != 1:
        raise ValueError(f"{bug}: no single cell with grade_id {spec['cell']!r}")
    cell = cells[0]
    for old, new in spec["replace"]:
        count = cell.source.count(old)
        if count != 1:
            raise ValueError(f"{bug}: {old!r} occurs {count} times in cell {spec['cell']!r}, expected once")
        cell.source = cell.source.replace(old, new)
    return nb


def cell_sources(path: Path) -> dict[str, str]:
    """grade_id -> source, from a file whose ``# %% <grade_id>`` lines start each cell's new source."""
    sources: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().split("\n"):
        if line.startswith("# %% "):
            current = sources.setdefault(line[5:].strip(), [])
        elif current is not None:
            current.append(line)
    return {k: "\n".join(v).strip("\n") for k, v in sources.items()}


def wrong_submissions(assignment: str) -> dict[str, nbformat.NotebookNode]:
    """bug name -> the submission notebook (wrong, or correct but different: see :func:`is_correct`),
    built fresh from the source and the manifest."""
    base = student_notebook(assignment)
    return {
        bug: apply_bug(base, bug, dict(spec, assignment=assignment)) for bug, spec in load_manifest(assignment).items()
    }


def write_wrong_submissions(assignment: str) -> list[Path]:
    """Write ``tests/submissions/<assignment>/<bug>.ipynb`` and delete ones no longer in the manifest."""
    folder = SUBMISSIONS / assignment
    built = wrong_submissions(assignment)
    written = []
    for bug, nb in built.items():
        path = folder / f"{bug}.ipynb"
        nbformat.write(nb, path)
        written.append(path)
    for stale in folder.glob("*.ipynb"):
        if stale.stem not in built:
            stale.unlink()
    return written
