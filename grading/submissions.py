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
        "must_fail": ["test_conv2d_backward_naive"]       # test cells that must lose their points
      }
    }

``python -m grading submissions <assignment>`` writes ``tests/submissions/<assignment>/<bug>.ipynb``;
the test suite checks that the committed files equal a fresh build.
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


def load_manifest(assignment: str) -> dict[str, dict]:
    path = SUBMISSIONS / assignment / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def apply_bug(nb: nbformat.NotebookNode, bug: str, spec: dict) -> nbformat.NotebookNode:
    """A copy of ``nb`` with the manifest entry ``spec`` applied to its cell ``spec["cell"]``."""
    nb = copy.deepcopy(nb)
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


def wrong_submissions(assignment: str) -> dict[str, nbformat.NotebookNode]:
    """bug name -> the wrong submission notebook, built fresh from the source and the manifest."""
    base = student_notebook(assignment)
    return {bug: apply_bug(base, bug, spec) for bug, spec in load_manifest(assignment).items()}


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
