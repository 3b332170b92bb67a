"""The student edition (`make student-edition DEST=...`): self-contained, and holding none of the instructor's material.

One edition is built into a scratch folder for the whole module. The leak tests search every text file of it for
every secret line (solution and hidden-test regions, every other file of ``solutions/<a>/``, every line of
``grading/hidden/``, the wrong-submission manifests) and for the instructor-only files by name; planted leaks
prove that the search fires. The assignment releases run up to their stubs, with the edition's own check
(``edition/tests/test_assignments.py``). The chapters are the instructor's own ``notebooks/`` without the cells
tagged ``solution`` (the answers of the "your turn" exercises, ``utils/exercises.py``); the book's test
(``tests/browser/test_book.py``) runs every chapter in that form, with its stubs empty, top to bottom.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from grading import edition
from grading.paths import ASSIGNMENTS, REPO, SOLUTIONS, assignment_names
from utils import exercises

RELEASED = sorted(p.name for p in ASSIGNMENTS.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A freshly built student edition (the build itself checks for leaks and fails on one)."""
    dest = tmp_path_factory.mktemp("edition") / "dlcv-student"
    start = time.perf_counter()
    edition.build(dest)
    print(f"student edition built in {time.perf_counter() - start:.1f} s")
    return dest


@pytest.fixture(scope="module")
def secrets() -> dict:
    return edition.secret_lines()


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def _files(root: Path) -> set:
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".git" not in p.relative_to(root).parts
    }


# --- what the edition is -------------------------------------------------------------------------------------


def test_edition_is_a_git_repository_with_one_commit_and_a_clean_tree(built):
    assert _git(built, "rev-list", "--count", "--all").strip() == "1"
    assert _git(built, "status", "--porcelain") == "", "everything in the edition is committed"
    assert _git(built, "remote") == "", "the edition has no remote (the instructor's stays private)"
    assert _files(built) == set(_git(built, "ls-files").split()), "every file is tracked"


def test_edition_holds_the_chapters_releases_utils_and_its_own_tooling(built):
    files = _files(built)
    for folder in ("notebooks", "assignments", "utils"):
        ours = {str(p) for p in edition._listed_files(REPO, folder)}
        assert ours <= files, f"{folder}: missing {sorted(ours - files)[:5]}"
        for rel in ours:
            if edition._is_chapter(rel):
                theirs = nbformat.read(built / rel, as_version=4)
                mine = exercises.without_solutions(nbformat.read(REPO / rel, as_version=4))
                assert theirs == mine, f"{rel} is not the instructor's chapter without its solution cells"
                assert not any(exercises.is_solution_cell(c) for c in theirs.cells), f"{rel} holds a solution cell"
            else:
                assert (built / rel).read_bytes() == (REPO / rel).read_bytes(), f"{rel} differs from the instructor's"
    for rel in (
        "README.md",
        "Makefile",
        "pyproject.toml",
        "requirements.txt",
        "environment.yml",
        ".gitignore",
        "jupyter/student/jupyter_server_config.json",
        "jupyter/student/labconfig/page_config.json",
        "tests/conftest.py",
        "tests/test_assignments.py",
        "tests/test_environment.py",
        "tests/browser/test_student_view.py",
    ):
        assert rel in files, f"the edition has no {rel}"
    assert sorted(p.parent.name for p in (built / "assignments").glob("*/*.ipynb")) == RELEASED
    makefile = (built / "Makefile").read_text()
    assert "\nlab: setup" in makefile and "\ntest: setup" in makefile, "make lab and make test"
    assert 'packages = ["utils"]' in (built / "pyproject.toml").read_text(), "the edition packages only utils"
    readme = (built / "README.md").read_text()
    for words in ("make lab", "make test", "hidden tests", "subset", "Hand in"):
        assert words in readme, f"the students' README says nothing about {words!r}"


def test_edition_cannot_be_written_into_the_instructor_repository_or_over_a_folder(tmp_path):
    with pytest.raises(ValueError):
        edition.build(REPO / "build" / "student")
    (tmp_path / "x").write_text("x")
    with pytest.raises(FileExistsError):
        edition.build(tmp_path)


# --- nothing leaks ---------------------------------------------------------------------------------------------


def test_secrets_cover_every_solution_hidden_test_and_manifest(secrets):
    origins = set(secrets.values())
    for name in assignment_names():
        assert any(o.startswith(f"solutions/{name}/{name}.ipynb") for o in origins), f"{name}: no secret line"
        nb = nbformat.read(SOLUTIONS / name / f"{name}.ipynb", as_version=4)
        assert any("### BEGIN SOLUTION" in c.source for c in nb.cells), f"{name}: no solution region to protect"
        hidden_here = any("### BEGIN HIDDEN TESTS" in c.source for c in nb.cells)
        hidden_apart = any(o.startswith(f"grading/hidden/{name}") for o in origins)
        assert hidden_here or hidden_apart, (
            f"{name}: its hidden tests are neither in the notebook nor in grading/hidden"
        )
        for other in sorted(p for p in (SOLUTIONS / name).rglob("*") if p.is_file() and p.suffix != ".ipynb"):
            meaningful = [line for line in edition.text_lines(other) if not edition._is_trivial(line)]
            assert not meaningful or any(
                o.startswith(f"solutions/{name}/{other.relative_to(SOLUTIONS / name)}") for o in origins
            ), f"{other}: its lines are not treated as secret"
        if (REPO / "tests" / "submissions" / name / "manifest.json").exists():
            assert any(o.startswith(f"tests/submissions/{name}/manifest.json") for o in origins), f"{name}: manifest"
    for folder in edition.SECRET_FOLDERS:
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else []:
            meaningful = [line for line in edition.text_lines(path) if not edition._is_trivial(line)]
            assert not meaningful or str(path.relative_to(REPO)) in origins, f"{path}: its lines are not secret"


def test_edition_holds_no_secret_line_no_instructor_file_and_no_history(built, secrets):
    found = edition.leaks(built, secrets)
    assert not found, "instructor material in the student edition:\n" + "\n".join(map(str, found[:20]))
    names = {part for rel in _files(built) for part in Path(rel).parts}
    assert not names & set(edition.INSTRUCTOR_ONLY_NAMES)
    assert not list(built.rglob("*.db")) and not (built / "nbgrader_config.py").exists()


def test_the_leak_search_finds_planted_material(built, secrets, tmp_path):
    """Plant every kind of instructor material into a copy of the edition: the search reports each one."""
    copy = tmp_path / "planted"
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns(".git"))
    sample = {origin.split(" ")[0]: line for line, origin in secrets.items()}  # one line per source file
    solution_line = next(line for line, o in secrets.items() if "solution or hidden-test region" in o)
    manifest_line = next(line for line, o in secrets.items() if "manifest.json" in o)
    # a solution line, reformatted (spaces removed or doubled), in a utils module
    (copy / "utils" / "plot.py").write_text(
        (copy / "utils" / "plot.py").read_text() + "\n" + " ".join(solution_line) + "\n"
    )
    # a hidden-test or solution line in a code cell of a chapter, and in a text output of a release
    chapter = copy / "notebooks" / "01_initialization.ipynb"
    nb = nbformat.read(chapter, as_version=4)
    nb.cells[-1].source += "\n" + sample[f"solutions/{RELEASED[0]}/{RELEASED[0]}.ipynb"]
    nbformat.write(nb, chapter)
    release = copy / "assignments" / RELEASED[-1] / f"{RELEASED[-1]}.ipynb"
    nb = nbformat.read(release, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    printed = sample[f"solutions/{RELEASED[-1]}/{RELEASED[-1]}.ipynb"]
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    nbformat.write(nb, release)
    # a line of the trusted-side hidden tests (grading/hidden/), in the students' own tests
    hidden_line = next((line for line, o in secrets.items() if o.startswith("grading/hidden/")), solution_line)
    students_test = copy / "tests" / "test_environment.py"
    students_test.write_text(students_test.read_text() + "\n" + hidden_line + "\n")
    # a wrong submission's replacement text in the README
    (copy / "README.md").write_text((copy / "README.md").read_text() + "\n    " + manifest_line + "\n")
    # instructor-only files by name, and an import of the grading package
    (copy / "assignments" / "nms" / "manifest.json").write_text("{}")
    (copy / "grading").mkdir()
    (copy / "grading" / "__init__.py").write_text("")
    (copy / "nbgrader_config.py").write_text("c = get_config()\n")
    (copy / "tests" / "helper.py").write_text("from grading.submissions import student_notebook\n")
    found = edition.leaks(copy, secrets)
    where = {leak.path for leak in found}
    for rel in (
        "utils/plot.py",
        "tests/test_environment.py",
        "notebooks/01_initialization.ipynb",
        f"assignments/{RELEASED[-1]}/{RELEASED[-1]}.ipynb",
        "README.md",
        "assignments/nms/manifest.json",
        "grading",
        "grading/__init__.py",
        "nbgrader_config.py",
        "tests/helper.py",
    ):
        assert rel in where, f"the planted {rel} was not reported; found {sorted(where)}"


def test_the_leak_search_finds_the_instructor_history(built, tmp_path):
    copy = tmp_path / "with-history"
    shutil.copytree(built, copy)
    assert not edition.leaks(copy, {}), "a fresh copy is clean"
    subprocess.run(
        ["git", "fetch", "--quiet", "--depth=1", f"file://{REPO}", "HEAD"], cwd=copy, check=True, capture_output=True
    )
    assert any(leak.path == ".git" for leak in edition.leaks(copy, {})), "instructor commits in .git not reported"


def test_every_other_file_of_a_solution_folder_is_secret(tmp_path):
    """Trusted-side files next to the source notebook (a grader module, data) are secret line by line."""
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "grader.py").write_text("import torch\n\ndef hidden_case():\n    return torch.arange(7).sum() == 21\n")
    lines = dict(edition._solution_folder_lines(folder))
    assert "    return torch.arange(7).sum() == 21" in lines
    assert lines["    return torch.arange(7).sum() == 21"] == "solutions/toy/grader.py"


def test_the_build_refuses_an_edition_that_leaks(tmp_path, monkeypatch):
    readme_line = next(line for line in (REPO / "edition" / "README.md").read_text().split("\n") if len(line) > 40)
    monkeypatch.setattr(edition, "secret_lines", lambda: {edition.normalise(readme_line): "planted"})
    with pytest.raises(RuntimeError, match="instructor material"):
        edition.build(tmp_path / "leaky")
    assert not (tmp_path / "leaky" / ".git").exists(), "nothing is committed when the check fails"


# --- the releases run up to their stubs (the edition's own check) --------------------------------------------


def _edition_module(built: Path, rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, built / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stub_check_accepts_only_not_implemented_and_its_consequences(built):
    check = _edition_module(built, "tests/test_assignments.py", "edition_test_assignments")
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("x = f()"),
            nbformat.v4.new_code_cell("y = x + 1"),
            nbformat.v4.new_code_cell("z = w + 1"),
            nbformat.v4.new_code_cell("g(1)"),
        ]
    )
    found = [
        (0, "a", "NotImplementedError", ""),
        (1, "b", "NameError", "name 'x' is not defined"),
        (2, "c", "NameError", "name 'w' is not defined"),
        (3, "d", "TypeError", "g() takes no arguments"),
    ]
    assert [e[1] for e in check.unexpected(nb, found)] == ["c", "d"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RELEASED)
def test_release_runs_up_to_its_stubs(built, name):
    check = _edition_module(built, "tests/test_assignments.py", "edition_test_assignments")
    check.test_assignment_runs_up_to_its_stubs(built / "assignments" / name / f"{name}.ipynb")


CHAPTERS_WITH_EXERCISES = sorted(
    rel.name
    for rel in edition._listed_files(REPO, "notebooks")
    if edition._is_chapter(rel)
    and any(exercises.is_solution_cell(c) for c in nbformat.read(REPO / rel, as_version=4).cells)
)


def test_a_chapter_solution_cell_is_secret_and_dropped(tmp_path, secrets):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("def answer(x):\n    raise NotImplementedError"),
            nbformat.v4.new_code_cell("def answer(x):\n    return x.flip(0).cumsum(0) * 3"),
            nbformat.v4.new_code_cell("with self_check('Ex'):\n    answer(1)"),
        ]
    )
    nb.cells[1].metadata["tags"] = [exercises.SOLUTION_TAG]
    stripped = exercises.without_solutions(nb)
    assert [c.source for c in stripped.cells] == [nb.cells[0].source, nb.cells[2].source]
    for chapter in CHAPTERS_WITH_EXERCISES:
        origins = [o for o in secrets.values() if o.startswith(f"notebooks/{chapter} ")]
        assert origins, f"{chapter}: its exercises' solution cells are not secret"


def test_edition_environment_files_are_the_instructors(built):
    for rel in ("requirements.txt", "environment.yml"):
        assert (built / rel).read_text() == (REPO / rel).read_text()
    settings = json.loads((built / "jupyter/student/labconfig/page_config.json").read_text())
    assert settings["disabledExtensions"]["@jupyter/nbgrader:formgrader"] is True
