"""Shared test configuration of the student edition."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def python() -> str:
    """The interpreter running the tests (the one `make test` set up)."""
    return sys.executable
