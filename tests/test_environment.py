"""The environment promised by the README: pinned, consistent, `utils` from the repo, `make lab` serving."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from utils._pins import environment_yml_pins, requirement_pins

REPO = Path(__file__).resolve().parent.parent


def _requirements() -> dict:
    return requirement_pins(REPO)


def _environment_yml_pip() -> dict:
    text = (REPO / "environment.yml").read_text()
    assert re.search(r"^\s*-\s*python=3\.11\s*$", text, re.M), "environment.yml must ask for python=3.11"
    assert re.search(r"^\s*-\s*conda-forge\s*$", text, re.M), "environment.yml must use conda-forge"
    return environment_yml_pins(REPO)


def test_requirements_pin_the_course_stack():
    pins = _requirements()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["nbgrader"] == "0.9.6" and pins["nbval"].startswith("0.11")
    major, minor = map(int, pins["jupyterlab"].split(".")[:2])
    assert major == 4 and minor >= 4
    assert pins["ipywidgets"].startswith("8.")
    for name in ("matplotlib", "tqdm", "scipy", "scikit-learn", "scikit-image", "mlxtend", "pycocotools", "pytest"):
        assert name in pins, f"{name} missing from requirements.txt"


def test_environment_yml_installs_the_same_requirements():
    assert _environment_yml_pip() == _requirements()


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for name, pinned in _requirements().items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}"


def test_no_slow_importing_iri_validator(python):
    """jsonschema >= 4.25 drags in rfc3987-syntax, whose import costs seconds in every nbgrader and
    nbformat process (each autograde run starts several); the jsonschema pin keeps it out."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('rfc3987_syntax') is not None)"
    assert subprocess.run([python, "-c", probe]).returncode == 0, (
        "rfc3987_syntax is installed: pin jsonschema below 4.25 (python-jsonschema/jsonschema#1392)"
    )


def test_utils_comes_from_the_repo_even_next_to_a_stray_utils_py(tmp_path, python):
    (tmp_path / "utils.py").write_text("raise ImportError('the stray utils.py was imported')\n")
    out = subprocess.run(
        [python, "-c", "import utils, sys; print(utils.__file__); print('torch' in sys.modules)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(out[0]) == REPO / "utils" / "__init__.py"
    assert out[1] == "False", "importing utils at start-up must stay cheap (no torch)"
    import utils

    assert Path(utils.__file__).resolve() == REPO / "utils" / "__init__.py"


def test_utils_is_installed_editable_from_pyproject(python):
    out = subprocess.run([python, "-m", "pip", "show", "dlcv-course"], capture_output=True, text=True).stdout
    assert "Editable project location: " + str(REPO) in out, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_lab_serves_jupyterlab_without_the_instructor_ui():
    port, token = _free_port(), "course-test-token"
    proc = subprocess.Popen(
        ["make", "lab", f"PORT={port}", f"LAB_ARGS=--no-browser --IdentityProvider.token={token}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        page, deadline = None, time.time() + 120
        while time.time() < deadline and page is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=5) as r:
                    assert r.status == 200
                    page = r.read().decode()
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(1)
        assert page is not None, "JupyterLab did not answer on /lab within 2 minutes"
        config = json.loads(
            re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S).group(1)
        )
        disabled = config.get("disabledExtensions", [])
        assert "@jupyter/nbgrader:formgrader" in disabled and "@jupyter/nbgrader:create-assignment" in disabled
        assert Path(config["serverRoot"]).resolve() == REPO / "notebooks"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/formgrader?token={token}", timeout=5)
            raise AssertionError("the formgrader server extension answers in the students' lab")
        except urllib.error.HTTPError as err:
            assert err.code == 404
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
