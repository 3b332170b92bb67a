"""The chapters' exercise convention, and the one run per chapter that checks both editions (utils/exercises.py).

The checked notebook is executed here cell by cell with ``exec`` in one namespace, as a kernel would, so each
way a chapter can break for one of the two editions is shown to fail where it should.
"""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from utils import exercises

STUB = "def double(x):\n    raise NotImplementedError('Exercise 9.1')"
SOLUTION = "def _helper(x):\n    return x + x\n\n\ndef double(x):\n    return _helper(x)"
CHECK = (
    "from utils.exercises import self_check\n\n"
    "with self_check('Exercise 9.1: double'):\n    assert double(2) == 4, f'double(2) = {double(2)}, expected 4'"
)


def _chapter(*later: str, solution: str = SOLUTION, check: str = CHECK) -> nbformat.NotebookNode:
    cells = [new_markdown_cell("# A chapter"), new_code_cell("x = 1"), new_code_cell(STUB)]
    cells.append(new_code_cell(solution, metadata={"tags": [exercises.SOLUTION_TAG]}))
    cells.append(new_code_cell(check))
    cells += [new_code_cell(src) for src in later]
    return new_notebook(cells=cells)


def _execute(nb: nbformat.NotebookNode, monkeypatch) -> dict:
    monkeypatch.setenv(exercises.REQUIRED_ENV, "1")  # as in `make test`
    namespace: dict = {}
    for cell in exercises.checked_notebook(nb).cells:
        exec(compile(cell.source, "<cell>", "exec"), namespace)
    return namespace


def test_a_sound_exercise_runs_and_leaves_the_students_state(monkeypatch, capsys):
    ns = _execute(_chapter("y = x + 1"), monkeypatch)
    out = capsys.readouterr().out
    assert "✓ Exercise 9.1: double: correct" in out and "not done yet" in out
    assert "_helper" not in ns and ns["y"] == 2
    with pytest.raises(NotImplementedError):
        ns["double"](2)  # the stub again, as in the student edition


def test_a_later_cell_that_uses_the_answer_fails(monkeypatch):
    with pytest.raises(NotImplementedError):
        _execute(_chapter("z = double(3)"), monkeypatch)
    with pytest.raises(NameError):
        _execute(_chapter("z = _helper(3)"), monkeypatch)


def test_a_wrong_solution_fails_its_check(monkeypatch):
    with pytest.raises(AssertionError, match="expected 4"):
        _execute(_chapter(solution="def double(x):\n    return x + 1"), monkeypatch)


def test_a_check_that_passes_the_empty_stub_fails(monkeypatch):
    lenient = "from utils.exercises import self_check\n\nwith self_check('Exercise 9.1: double'):\n    pass"
    with pytest.raises(AssertionError, match="not done yet"):
        _execute(_chapter(check=lenient), monkeypatch)


def test_a_worked_answer_without_a_check_is_run_then_forgotten(monkeypatch):
    nb = _chapter("w = x")
    nb.cells.insert(2, new_code_cell("x = 99\nanswer = 42", metadata={"tags": [exercises.SOLUTION_TAG]}))
    ns = _execute(nb, monkeypatch)
    assert ns["w"] == 1 and "answer" not in ns, "a worked answer must not change what later cells see"
    with pytest.raises(NameError):
        _execute(_with_later(nb, "v = answer"), monkeypatch)


def _with_later(nb: nbformat.NotebookNode, source: str) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(nb)
    nb.cells.append(new_code_cell(source))
    return nb


def test_a_check_without_a_stub_is_refused():
    nb = _chapter()
    del nb.cells[2]  # the stub
    with pytest.raises(ValueError, match="no stub"):
        exercises.checked_notebook(nb)
