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
