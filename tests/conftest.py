"""Shared test configuration."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"

# tests/submissions holds wrong submissions for the grading tests, not notebooks for nbval to run.
collect_ignore = ["submissions"]

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def python() -> str:
    """The course's interpreter (the .venv's when it exists)."""
    return str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))


# The grading tests' class (tests/test_grading_pipeline.py; tests/test_hub.py compares the hub's grades with it).
@pytest.fixture(scope="session")
def graded(tmp_path_factory):
    """The course's test class (grading.selftest), graded once per session by `python -m grading autograde`."""
    from grading import selftest

    (REPO / "test-output").mkdir(exist_ok=True)
    return selftest.grade_test_class(
        tmp_path_factory.mktemp("class"),
        selftest.chosen_assignments(),
        jobs=int(os.environ.get("GRADING_JOBS", "2")),
        loop_assignments=selftest.one_assignment(),
        regrade_assignments=selftest.one_assignment(),
        log=REPO / "test-output" / "grading_class.log",
    )
