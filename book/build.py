"""Build the course as a static HTML book: ``python book/build.py`` (``make book``).

The book is what a student reads without running anything: the chapters of ``notebooks/``, executed, with their
figures and maths, and one page per assignment that states the task and how it is graded. It is built with Sphinx
and MyST-NB (``book/conf.py`` says why those), from a staging folder ``book/_build/src`` written here:

* every chapter without its exercises' solution cells (:func:`utils.exercises.without_solutions`): the book is
  public, like the student edition, and a chapter's self-checks show "not done yet" where a student's answer goes;
  a mention of another chapter's file (```03_normalization.ipynb```) becomes a link to its page;
* every assignment release (``assignments/<a>/<a>.ipynb``, which holds neither solutions nor hidden tests) as a
  page that is not executed, opened by a table of its graded cells and their points;
* ``index.md``, the table of contents.

Execution is cached (jupyter-cache, ``book/_build/.jupyter_cache``), keyed on the code cells: a rebuild after a
prose edit executes nothing. ``--jobs`` chapters execute at a time (jupyter-cache's parallel executor), before
Sphinx renders everything from the cache.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
BUILD = BOOK / "_build"
STAGE = BUILD / "src"
HTML = BUILD / "html"
sys.path.insert(0, str(ROOT))
from utils.exercises import without_solutions  # noqa: E402

CHAPTER_FILE = re.compile(r"(?<![\[(/])`(\d\d_[a-z_]+)\.ipynb`(?!\])")


def chapters() -> list[Path]:
    """The chapters in reading order; ``BOOK_CHAPTERS`` (a glob, e.g. ``00_*``) narrows them for a quick look."""
    return sorted((ROOT / "notebooks").glob(os.environ.get("BOOK_CHAPTERS") or "[0-9][0-9]_*.ipynb"))


def assignments() -> list[Path]:
    return sorted(p for p in (ROOT / "assignments").glob("*/*.ipynb") if p.stem == p.parent.name)


def title_of(nb: nbformat.NotebookNode, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.split("\n"):
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def link_chapters(source: str, known: set[str]) -> str:
    """```01_initialization.ipynb``` -> a MyST link to that chapter's page (other text untouched)."""

    def link(match: re.Match) -> str:
        stem = match.group(1)
        return f"[`{stem}.ipynb`]({stem}.ipynb)" if stem in known else match.group(0)

    return CHAPTER_FILE.sub(link, source)


def grading_table(nb: nbformat.NotebookNode) -> str:
    """A markdown table of an assignment's graded cells: id, kind, points."""
    rows, auto, manual = [], 0.0, 0.0
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("grade"):
            continue
        points = float(meta.get("points", 0))
        kind = "autograded test" if cell.cell_type == "code" else "written answer (graded by hand)"
        if cell.cell_type == "code":
            auto += points
        else:
            manual += points
        rows.append(f"| `{meta.get('grade_id', '?')}` | {kind} | {points:g} |")
    head = [
        "## How this assignment is graded",
        "",
        "Work in JupyterLab on the release (`assignments/`); this page shows the task only. Each graded cell below",
        "runs visible checks; the grade comes from the instructor's hidden tests of the same function, run on other",
        f"inputs. Autograded points: {auto:g}" + (f"; points graded by hand: {manual:g}." if manual else "."),
        "",
        "| cell | kind | points |",
        "|---|---|---|",
    ]
    return "\n".join(head + rows)


def stage() -> list[str]:
    """Write the staging folder; returns the page names in reading order."""
    STAGE.mkdir(parents=True, exist_ok=True)
    for old in STAGE.iterdir():
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    for name in ("conf.py", "_static"):
        src = BOOK / name
        if src.is_dir():
            shutil.copytree(src, STAGE / name)
        elif src.exists():
            shutil.copy2(src, STAGE / name)
    known = {p.stem for p in chapters()}
    toc_chapters, toc_assignments = [], []
    (STAGE / "notebooks").mkdir()
    for path in chapters():
        nb = without_solutions(nbformat.read(path, as_version=4))
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = link_chapters(cell.source, known)
        nbformat.write(nb, STAGE / "notebooks" / path.name)
        toc_chapters.append(f"notebooks/{path.stem}")
    (STAGE / "assignments").mkdir()
    for path in assignments():
        nb = nbformat.read(path, as_version=4)
        intro = nbformat.v4.new_markdown_cell(grading_table(nb))
        first_heading = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), 0)
        nb.cells.insert(first_heading + 1, intro)
        nbformat.write(nb, STAGE / "assignments" / path.name)
        toc_assignments.append(f"assignments/{path.stem}")
    index = [
        "# Deep Learning for Computer Vision",
        "",
        "The course's chapters, executed, and its assignments' tasks. Every chapter is a Jupyter notebook: the",
        "live version (widgets, exercises you fill in, code you can change) runs in JupyterLab (`make lab`). Figures",
        "here come from a run on a CPU; where a chapter has a slider, the book shows the figure at its first position.",
        "",
        "```{toctree}",
        ":caption: Chapters",
        ":maxdepth: 1",
        "",
        *toc_chapters,
        "```",
        "",
        "```{toctree}",
        ":caption: Assignments",
        ":maxdepth: 1",
        "",
        *toc_assignments,
        "```",
        "",
    ]
    (STAGE / "index.md").write_text("\n".join(index))
    return ["index", *toc_chapters, *toc_assignments]


CACHE = BUILD / ".jupyter_cache"


def executed(path: Path) -> bool:
    """Whether the build executes this chapter: all of them, or those matching ``BOOK_EXECUTE`` (a glob; the others
    are shown without outputs). ``make test`` executes chapter 0 only: every chapter already runs once there, as
    the student's copy with its answers checked (``utils.exercises.checked_notebook``)."""
    return Path(path).match(os.environ.get("BOOK_EXECUTE") or "*")


def execute_into_cache(jobs: int, timeout: int = 900) -> None:
    """Execute every staged chapter (:func:`executed`) whose code is not cached yet, ``jobs`` at a time (jupyter-cache's
    ``local-parallel`` executor, in the chapter's folder), and fail with the first error's traceback.

    MyST-NB then renders from the cache; executing here rather than inside a parallel Sphinx build also
    keeps the outputs (which a parallel read can lose)."""
    from jupyter_cache import get_cache
    from jupyter_cache.executors import load_executor

    cache = get_cache(str(CACHE))
    for record in cache.list_project_records():  # a chapter renamed, removed or left out (BOOK_CHAPTERS)
        if not Path(record.uri).exists():
            cache.remove_nb_from_project(record.pk)
    for path in sorted((STAGE / "notebooks").glob("*.ipynb")):
        if executed(path):
            cache.add_nb_to_project(str(path))
    executor = load_executor("local-parallel" if jobs > 1 else "local-serial", cache=cache)
    result = executor.run_and_cache(timeout=timeout)
    if result.errored:
        records = {r.uri: r for r in cache.list_project_records()}
        failed = [f"{uri}:\n{records[uri].traceback}" for uri in result.errored if uri in records]
        raise RuntimeError("a chapter failed to execute:\n" + "\n".join(failed or result.errored))


def build(jobs: int = 1, out: Path = HTML, execute: bool = True) -> Path:
    start = time.perf_counter()
    stage()
    env = dict(os.environ, COURSE_STATIC_WIDGETS="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("COURSE_EXERCISES_REQUIRED", None)  # the book is the student's copy: its stubs are empty
    env.pop("MPLBACKEND", None)  # the inline backend, whose figures become the book's images (pytest sets Agg)
    if execute:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)  # the kernels inherit it
        try:
            execute_into_cache(jobs)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-j", str(jobs), "-q", str(STAGE), str(out)]
    if not execute:
        cmd += ["-D", "nb_execution_mode=off"]
    subprocess.run(cmd, check=True, env=env, cwd=STAGE)
    print(f"book built in {time.perf_counter() - start:.0f} s: {out / 'index.html'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="chapters executed in parallel")
    parser.add_argument("--out", type=Path, default=HTML, help="where the HTML goes")
    parser.add_argument("--no-execute", action="store_true", help="layout only: show the notebooks as they are")
    args = parser.parse_args()
    build(args.jobs, args.out, execute=not args.no_execute)


if __name__ == "__main__":
    main()
