"""Every assignment runs from the top up to its unfinished parts.

A part you have not written yet raises ``NotImplementedError`` (the stub's ``raise NotImplementedError()``):
that is expected, and every cell that calls it stops with the same error; a later cell may then miss a name
that such a cell would have defined (``NameError``), which is expected too. Any other error (a missing data
file, an import that fails, a bug in code you wrote, a test that fails on your code) fails this test with the
cell that raised it. The grade comes from the instructor's hidden tests, not from this file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "assignments").glob("*/*.ipynb"))
NOT_IMPLEMENTED = "NotImplementedError"

pytestmark = pytest.mark.slow


def _cell_id(cell) -> str:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") or cell.get("id", "?")


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in its folder, going on past errors (Run All would stop)."""
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "NBGRADER_EXECUTION"}  # a student's run, not the grader's
    client = NotebookClient(
        nb,
        timeout=timeout,
        allow_errors=True,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=env)
    return nb


def errors(nb: nbformat.NotebookNode) -> list[tuple[int, str, str, str]]:
    """(cell index, cell id, exception name, message) of every error output."""
    return [
        (i, _cell_id(cell), out.get("ename", ""), out.get("evalue", ""))
        for i, cell in enumerate(nb.cells)
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


def unexpected(nb: nbformat.NotebookNode, found: list[tuple[int, str, str, str]]) -> list[tuple[int, str, str, str]]:
    """The errors that are not the consequence of an unfinished part: anything but ``NotImplementedError``,
    except a ``NameError`` for a name that an earlier cell stopped by an unfinished part mentions."""
    stopped: list[str] = []
    out = []
    for error in found:
        index, _, name, message = error
        missing = re.match(r"name '(\w+)' is not defined", message)
        if name == NOT_IMPLEMENTED or (
            name == "NameError" and missing and any(re.search(rf"\b{missing.group(1)}\b", src) for src in stopped)
        ):
            stopped.append(nb.cells[index].source)
        else:
            out.append(error)
    return out


def stubs(nb: nbformat.NotebookNode) -> list[str]:
    """grade_ids of the solution cells that still hold ``raise NotImplementedError()``."""
    return [
        _cell_id(c)
        for c in nb.cells
        if c.get("metadata", {}).get("nbgrader", {}).get("solution") and "raise NotImplementedError" in c.source
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_assignment_runs_up_to_its_stubs(path):
    source = nbformat.read(path, as_version=4)
    unfinished = stubs(source)
    nb = execute(path)
    found = errors(nb)
    others = unexpected(nb, found)
    assert not others, (
        f"{path.name}: cell {others[0][0]} ({others[0][1]}) raised {others[0][2]}: {others[0][3][:500]}\n"
        "(an unfinished part may only raise NotImplementedError)"
    )
    if unfinished:
        print(f"{path.name}: not implemented yet: {', '.join(unfinished)} ({len(found)} cells stop there)")
        assert found, f"{path.name}: {unfinished} still raise NotImplementedError, yet no cell called them"
        first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
        assert found[0][0] > first_code, f"{path.name}: the set-up cell itself failed"
    else:
        assert not found, f"{path.name}: every part is implemented, yet cells raise NotImplementedError: {found[:3]}"
