"""Release hygiene: assignments/ is exactly what nbgrader generates from solutions/, and gives nothing away."""

from __future__ import annotations

import subprocess

import nbformat
import pytest

from grading import pipeline, submissions
from grading.paths import ASSIGNMENTS, REPO, assignment_names, release_notebook, solution_notebook
from grading.submissions import nbgrader_meta, region_lines

NAMES = assignment_names()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh `nbgrader generate_assignment` of every assignment, in a scratch course."""
    course = pipeline.Course(tmp_path_factory.mktemp("release"))
    return {name: course.generate(name) for name in NAMES}


def test_every_assignment_folder_is_released():
    released = sorted(p.name for p in ASSIGNMENTS.iterdir() if p.is_dir()) if ASSIGNMENTS.exists() else []
    assert released == NAMES, f"assignments/ has {released}, solutions/ has {NAMES}: run `make release`"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_committed_release_equals_a_fresh_generation(fresh, name):
    committed = nbformat.read(release_notebook(name), as_version=4)
    generated = nbformat.read(fresh[name] / f"{name}.ipynb", as_version=4)
    assert len(committed.cells) == len(generated.cells), f"{name}: run `make release`"
    for i, (a, b) in enumerate(zip(committed.cells, generated.cells)):
        assert a.source == b.source, f"{name}: cell {i} differs from a fresh generation; run `make release`"
        assert nbgrader_meta(a) == nbgrader_meta(b), (
            f"{name}: nbgrader metadata of cell {i} differs; run `make release`"
        )
    committed_files = sorted(p.name for p in (ASSIGNMENTS / name).iterdir())
    generated_files = sorted(p.name for p in fresh[name].iterdir())
    assert committed_files == generated_files


@pytest.mark.parametrize("name", NAMES)
def test_release_holds_no_solution_and_no_hidden_test(name):
    text = release_notebook(name).read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text, f"{name}: {marker!r} in the release"
    release = nbformat.read(release_notebook(name), as_version=4)
    source = nbformat.read(solution_notebook(name), as_version=4)
    stubs = [c for c in release.cells if nbgrader_meta(c).get("solution")]
    assert stubs, f"{name}: no solution cells"
    for cell in stubs:
        stub = "raise NotImplementedError" if cell.cell_type == "code" else "YOUR ANSWER HERE"  # a written answer
        assert stub in cell.source, f"{name}: {nbgrader_meta(cell)['grade_id']} is not a stub"
    release_lines = {line.strip() for c in release.cells for line in c.source.split("\n")}
    inside, outside = region_lines(source)
    secret = {line for line in inside if len(line) > 25 and not line.startswith("#")}
    public = set(outside)
    # a line that the source also shows outside its solution/hidden regions is public anyway
    leaked = sorted((secret - public) & release_lines)
    assert not leaked, f"{name}: solution/hidden lines leaked into the release: {leaked[:3]}"
    for cell in release.cells:
        assert not cell.get("outputs"), f"{name}: the release carries outputs"


@pytest.mark.parametrize("name", NAMES)
def test_solution_source_is_committed_without_outputs(name):
    nb = nbformat.read(solution_notebook(name), as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: clear outputs"
    kinds = {
        ("test" if nbgrader_meta(c).get("grade") else "solution" if nbgrader_meta(c).get("solution") else "other")
        for c in nb.cells
    }
    assert {"test", "solution"} <= kinds
    assert sum(nbgrader_meta(c).get("points", 0) for c in nb.cells if nbgrader_meta(c).get("grade")) == 100
    # the written answers: markdown cells graded by hand (the autograder gives them no points and the
    # solution all the others); one short experiment at the end of each assignment
    manual = [c for c in nb.cells if nbgrader_meta(c).get("grade") and nbgrader_meta(c).get("solution")]
    assert manual, f"{name}: no written-answer cell (markdown, solution and grade, with points)"
    for cell in manual:
        meta = nbgrader_meta(cell)
        assert cell.cell_type == "markdown" and meta.get("points", 0) > 0, (
            f"{name}: {meta['grade_id']} must be a markdown answer cell worth points"
        )


@pytest.mark.parametrize("name", NAMES)
def test_every_manifest_entry_builds_and_no_generated_submission_is_committed(name):
    """The submissions are built from the manifest whenever a test needs them (``make submissions`` writes
    them for reading); git holds only the manifest and the files it names."""
    built = submissions.wrong_submissions(name)  # raises on an entry whose replacement no longer applies
    assert built and all(nb.cells for nb in built.values())
    tracked = subprocess.run(
        ["git", "ls-files", f"tests/submissions/{name}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [t for t in tracked if t.endswith(".ipynb")], f"{name}: generated submissions are committed"


def test_notebooks_are_committed_without_outputs():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty[:5]} carry outputs; clear them before committing"


@pytest.mark.parametrize("name", NAMES)
def test_every_test_cell_has_a_trusted_test_and_no_hidden_test_runs_in_the_kernel(name):
    """Grades come from grading/hidden/<name>.py (run by the grader, outside the student's kernel): one
    registered test per graded cell, none without a cell, and no hidden region left in the notebook."""
    from grading import trusted

    source = nbformat.read(solution_notebook(name), as_version=4)
    cells = {  # the autograded test cells; written answers (grade and solution) are graded by hand
        nbgrader_meta(c)["grade_id"]
        for c in source.cells
        if nbgrader_meta(c).get("grade") and not nbgrader_meta(c).get("solution")
    }
    tests = {k for k in trusted.load_tests(name) if not k.startswith("__")}
    assert cells == tests, (
        f"{name}: cells without a trusted test {sorted(cells - tests)}, tests without a cell {sorted(tests - cells)}"
    )
    assert "BEGIN HIDDEN TESTS" not in solution_notebook(name).read_text(), (
        f"{name}: a hidden region would run in the student's kernel; move it to grading/hidden/{name}.py"
    )
    release = nbformat.read(release_notebook(name), as_version=4)
    release_text = "\n".join(c.source for c in release.cells)
    secret = [line.strip() for line in (REPO / "grading" / "hidden" / f"{name}.py").read_text().split("\n")]
    # a line that the source shows outside its solution regions is public (the visible tests, the setup cell)
    _, outside = region_lines(source)
    public = "\n".join(outside)
    leaked = [
        line
        for line in secret
        if len(line) > 25 and not line.startswith(("#", '"""')) and line not in public and line in release_text
    ]
    assert not leaked, f"{name}: lines of the trusted tests in the release: {leaked[:3]}"
