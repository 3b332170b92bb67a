"""The environment of the student edition: pinned, consistent, and `utils` from this folder."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from utils._pins import environment_yml_pins, requirement_pins

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> dict:
    return requirement_pins(ROOT)


def test_environment_yml_installs_the_same_requirements():
    assert environment_yml_pins(ROOT) == _requirements()


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    wrong = {name: (version(name), pinned) for name, pinned in _requirements().items() if version(name) != pinned}
    assert not wrong, f"installed vs pinned: {wrong} (run `make setup`)"


def test_utils_comes_from_this_folder_even_next_to_a_stray_utils_py(tmp_path, python):
    (tmp_path / "utils.py").write_text("raise ImportError('the stray utils.py was imported')\n")
    out = subprocess.run(
        [python, "-c", "import utils; print(utils.__file__)"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert Path(out[0]).resolve() == ROOT / "utils" / "__init__.py"


def _sources() -> list:
    """The edition's Python files and notebooks (not the environment, git, or test output)."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in (".venv", ".git", "test-output", "__pycache__")]
        found += [Path(folder) / f for f in files if f.endswith((".py", ".ipynb"))]
    return sorted(found)


def test_the_edition_needs_no_instructor_code():
    """No notebook or module of this edition imports the instructor's grading tools."""
    pattern = re.compile(r"^\s*(from|import)\s+grading\b", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources()
        if p.name != Path(__file__).name
        and pattern.search(p.read_text(errors="replace").replace('\\n"', "\n").replace('"', ""))
    ]
    assert not offenders, f"import of `grading` in {offenders}"
