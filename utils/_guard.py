"""Keep a student's stray ``utils.py`` from shadowing the course's ``utils`` package.

Python searches a notebook's own folder first, so a file called ``utils.py`` next to a notebook
(easy to create by accident, and common in submissions) would replace this package inside the
kernel. ``python -m utils._guard install`` writes a ``.pth`` file into the environment's
site-packages whose single line imports ``utils`` when the interpreter starts, before the
notebook's folder is on ``sys.path``; every later ``import utils`` then finds the course's package
in ``sys.modules``. ``utils/__init__.py`` is lazy, so this costs a few milliseconds, not a torch import.
``make`` runs it after installing; conda users run it once by hand (see README).
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

PTH_NAME = "zz_dlcv_course_utils.pth"  # after setuptools' __editable__*.pth, which puts the repo on sys.path
PTH_LINE = "import utils\n"


def install() -> Path:
    target = Path(site.getsitepackages()[0]) / PTH_NAME
    target.write_text(PTH_LINE)
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        raise SystemExit("usage: python -m utils._guard install")
    print(f"wrote {install()}")
