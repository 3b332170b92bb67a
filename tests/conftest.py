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
