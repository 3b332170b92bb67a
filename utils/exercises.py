"""The chapters' "your turn" exercises: a stub the student fills in, then a self-check.

A chapter exercise is three cells:

1. the **stub**, a function whose body raises ``NotImplementedError`` (the student's cell);
2. the **solution**, right after it, tagged ``solution`` in the cell metadata: the student edition drops every
   such cell (``grading/edition.py``), the instructor edition runs it in CI;
3. the **self-check**, a ``with self_check("Exercise 1.1: ..."):`` block whose asserts compare the student's
   function with an independent reference and say, when they fail, which case and what was expected.

    >>> with self_check("Exercise 0.0: doubling"):
    ...     assert 2 * 2 == 4, "2 * 2 should be 4"
    ✓ Exercise 0.0: doubling: correct

``self_check`` reports an exercise whose stub still raises ``NotImplementedError`` as not done yet and lets the
notebook run on, so a chapter with empty stubs runs top to bottom. With ``COURSE_EXERCISES_REQUIRED=1`` (the
instructor edition's ``make test``) an exercise that is not done is an error: every solution cell gets checked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["self_check", "ExerciseNotDone", "REQUIRED_ENV", "SOLUTION_TAG", "is_solution_cell", "without_solutions"]

REQUIRED_ENV = "COURSE_EXERCISES_REQUIRED"
# the tag (in a cell's metadata) of an exercise's solution cell: the student edition and the book drop such cells
SOLUTION_TAG = "solution"


class ExerciseNotDone(AssertionError):
    """Raised instead of "not done yet" when :data:`REQUIRED_ENV` is set."""


def _required() -> bool:
    return os.environ.get(REQUIRED_ENV, "") not in ("", "0")


@contextmanager
def self_check(name: str) -> Iterator[None]:
    """Run the asserts of one exercise's self-check and say the outcome in one line.

    * the stub still raises ``NotImplementedError``: print "not done yet" (raise :class:`ExerciseNotDone`
      when ``COURSE_EXERCISES_REQUIRED`` is set);
    * an assert fails: raise ``AssertionError`` with the exercise's name and the assert's message, without the
      traceback of the checking code;
    * otherwise: print "correct".
    Any other exception (a crash in the student's code) propagates with its own traceback.
    """
    try:
        yield
    except NotImplementedError as err:
        if _required():
            raise ExerciseNotDone(f"{name}: the solution cell did not replace the stub ({err})") from None
        print(f"… {name}: not done yet — fill in the function above and run this cell again.")
        return
    except AssertionError as err:
        message = str(err) or "a check failed"
        raise AssertionError(f"✗ {name}: {message}") from None
    print(f"✓ {name}: correct")


def is_solution_cell(cell: dict) -> bool:
    """An exercise's answer cell: tagged :data:`SOLUTION_TAG` in its metadata."""
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def without_solutions(nb):
    """A copy of a notebook (``nbformat.NotebookNode``) without its solution cells and without outputs."""
    import copy

    nb = copy.deepcopy(nb)
    nb.cells = [cell for cell in nb.cells if not is_solution_cell(cell)]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


# ----------------------------------------------------------------------------- one run for both editions
# `make test` executes each chapter once, as a student has it *and* with every answer checked: the notebook
# :func:`checked_notebook` builds runs each solution cell between a checkpoint of the notebook's globals and a
# rollback to it, so every cell after an exercise sees exactly what a student with the empty stub sees.
_CHECKPOINT = "__course_exercise_checkpoint__"
_CALL = "__import__('utils.exercises').exercises"


def checkpoint(namespace: dict) -> None:
    """Remember which object every global name of ``namespace`` (a notebook's ``globals()``) is bound to."""
    namespace[_CHECKPOINT] = {k: v for k, v in namespace.items() if k != _CHECKPOINT}


def rollback(namespace: dict) -> None:
    """Bind every global name as at the last :func:`checkpoint`: names bound since are removed, rebound ones get
    their old object back (objects changed in place stay changed: a solution must not mutate shared state)."""
    saved = namespace.pop(_CHECKPOINT)
    for name in [k for k in namespace if k not in saved]:
        del namespace[name]
    for name, value in saved.items():
        if namespace.get(name, _CHECKPOINT) is not value:
            namespace[name] = value


def run_check(source: str, namespace: dict, solved: bool) -> None:
    """Run a self-check cell's ``source`` in ``namespace``: with the answer in place (``solved``) it must say
    "correct" (a stub still raising is an error), with the empty stub it must say "not done yet"."""
    import contextlib
    import io
    import sys

    before = os.environ.get(REQUIRED_ENV)
    os.environ[REQUIRED_ENV] = "1" if solved else ""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(source, "<self-check>", "exec"), namespace)
    finally:
        os.environ.pop(REQUIRED_ENV)
        if before is not None:
            os.environ[REQUIRED_ENV] = before
        sys.stdout.write(out.getvalue())
    text = out.getvalue()
    if solved and not re.search(r"✓ .*: correct", text):
        raise AssertionError(f"the self-check did not say 'correct' with the solution in place: {text!r}")
    if not solved and "not done yet" not in text:
        raise AssertionError(f"with the empty stub the self-check did not say 'not done yet': {text!r}")


def checked_notebook(nb):
    """The chapter as one run for both editions (``nbformat.NotebookNode`` in, a new one out): every cell in order;
    a solution cell runs between :func:`checkpoint` and :func:`rollback`, and when its exercise's self-check
    follows, that check runs twice: inside, where it must say "correct", and after the rollback, where it must say
    "not done yet" as it does for a student. Markdown cells are dropped (the run is for executing)."""
    import copy

    import nbformat

    cells = [copy.deepcopy(c) for c in nb.cells if c.cell_type == "code"]
    out = []
    i = 0
    while i < len(cells):
        cell = cells[i]
        if not is_solution_cell(cell):
            out.append(cell)
            i += 1
            continue
        check = cells[i + 1] if i + 1 < len(cells) and "self_check(" in cells[i + 1].source else None
        if check is not None and (not out or "NotImplementedError" not in out[-1].source):
            raise ValueError(
                f"the solution cell {i} has a self-check but no stub raising NotImplementedError before it"
            )
        out.append(nbformat.v4.new_code_cell(f"{_CALL}.checkpoint(globals())"))
        out.append(cell)
        if check is not None:
            out.append(nbformat.v4.new_code_cell(f"{_CALL}.run_check({check.source!r}, globals(), solved=True)"))
        out.append(nbformat.v4.new_code_cell(f"{_CALL}.rollback(globals())"))
        if check is not None:
            out.append(nbformat.v4.new_code_cell(f"{_CALL}.run_check({check.source!r}, globals(), solved=False)"))
        i += 2 if check is not None else 1
    result = copy.deepcopy(nb)
    result.cells = out
    for c in result.cells:
        c.outputs, c.execution_count = [], None
    return result


def _main(argv: list[str]) -> int:
    """``python -m utils.exercises SRC_DIR DEST_DIR``: write :func:`checked_notebook` of every ``SRC_DIR/*.ipynb``
    to ``DEST_DIR`` (``make test`` executes those with nbval)."""
    from pathlib import Path

    import nbformat

    if len(argv) != 2:
        print("usage: python -m utils.exercises SRC_DIR DEST_DIR", file=__import__("sys").stderr)
        return 2
    src, dest = Path(argv[0]), Path(argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob("*.ipynb"):
        stale.unlink()
    for path in sorted(src.glob("*.ipynb")):
        nbformat.write(checked_notebook(nbformat.read(path, as_version=4)), dest / path.name)
        print(f"wrote {dest / path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(__import__("sys").argv[1:]))
