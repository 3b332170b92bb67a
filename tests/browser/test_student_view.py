"""The students' view, on the student edition: JupyterLab driven in headless Chromium by Playwright.

A fresh student edition is built into a scratch folder (``grading.edition.build``) and the edition's own browser
tests (``edition/tests/browser/test_student_view.py``, imported here) run on it: its ``make lab`` serves a copy of
its chapters and assignments, pointed at this repository's ``.venv`` so that nothing is installed; a chapter runs
through *Run All*, an assignment opens with its stubs and locked tests, a wrong answer typed into a stub fails its
visible test. This side adds what the edition cannot do, having no solutions: type the real answer of one small
function into its stub (read from ``solutions/`` at run time, never stored in the edition) and see its visible test
pass. Skipped with a notice where no Chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("COURSE_TEST_OUTPUT", str(REPO / "test-output"))  # screenshots and server log go here

_spec = importlib.util.spec_from_file_location(
    "edition_student_view", REPO / "edition" / "tests" / "browser" / "test_student_view.py"
)
student_view = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = student_view
_spec.loader.exec_module(student_view)  # skips this module too where no Chromium or Playwright is installed

from grading import edition  # noqa: E402
from grading.paths import solution_notebook  # noqa: E402

pytestmark = student_view.pytestmark
# the edition's fixtures and tests, run here on a freshly built edition
browser = student_view.browser
lab = student_view.lab
test_getting_started_runs_and_its_widget_is_live = student_view.test_getting_started_runs_and_its_widget_is_live
test_a_chapter_runs_through_the_ui = student_view.test_a_chapter_runs_through_the_ui
test_assignment_release_shows_stubs_and_locks_tests = student_view.test_assignment_release_shows_stubs_and_locks_tests
test_a_filled_in_stub_runs_its_visible_test = student_view.test_a_filled_in_stub_runs_its_visible_test
test_instructor_ui_is_hidden_from_students = student_view.test_instructor_ui_is_hidden_from_students


@pytest.fixture(scope="module")
def edition_root(tmp_path_factory) -> Path:
    """The student edition under test: built fresh, as `make student-edition` does."""
    return edition.build(tmp_path_factory.mktemp("edition") / "dlcv-student")


@pytest.fixture(scope="module")
def make_args() -> list:
    """The edition's `make lab` uses this repository's environment as it is (no second 5 GB install)."""
    return [f"VENV={REPO / '.venv'}"]


def solution_body(assignment: str, grade_id: str) -> list[str]:
    """The code of each ``### BEGIN SOLUTION`` .. ``### END SOLUTION`` region of one solution cell, dedented, in order
    (one per stub of the released cell)."""
    nb = nbformat.read(solution_notebook(assignment), as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    regions, current = [], None
    for line in cell.source.split("\n"):
        if "### BEGIN SOLUTION" in line:
            current = []
        elif "### END SOLUTION" in line:
            regions.append(textwrap.dedent("\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    assert regions, f"{grade_id}: no solution region"
    return regions


def test_the_solution_typed_into_a_stub_passes_its_visible_test(browser, lab, edition_root):
    page = student_view._open(browser, lab, f"assignments/{student_view.ASSIGNMENT}/{student_view.ASSIGNMENT}.ipynb")
    release = edition_root / "assignments" / student_view.ASSIGNMENT / f"{student_view.ASSIGNMENT}.ipynb"
    output = student_view.fill_stub_and_run_its_test(
        page, release, student_view.STUB, solution_body(student_view.ASSIGNMENT, student_view.STUB)
    )
    assert "Error" not in output and "Traceback" not in output, (
        f"the visible test of {student_view.STUB} should pass with the solution:\n{output[:1500]}"
        + student_view._context()
    )
    page.close()
