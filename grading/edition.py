"""The student edition: the part of this (instructor) repository that students get, as its own git repository.

``python -m grading student-edition DEST`` (``make student-edition DEST=<dir>``) writes ``DEST`` with

* ``notebooks/`` (the chapters) and ``assignments/`` (the nbgrader releases), copied as they are (the files git
  tracks, as they are in the working tree);
* ``utils/``, ``requirements.txt``, ``environment.yml`` and the students' Jupyter settings (``jupyter/student/``);
* the files of ``edition/`` at the repo root: a README written for students, a ``pyproject.toml`` that
  packages only ``utils``, a Makefile with ``make lab`` and ``make test``, and the edition's own ``tests/``;

then runs ``git init`` and makes one commit. Nothing else is copied: no ``solutions/``, no ``tests/submissions/``,
no ``grading/``, no ``nbgrader_config.py``, no git history. Before the commit, :func:`leaks` searches every text
file of the edition for every line of the instructor's secret material (:func:`secret_lines`) and for the
instructor-only files by name; the build fails if it finds anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat

from utils.exercises import is_solution_cell, without_solutions

from .paths import REPO, SOLUTIONS
from .submissions import SUBMISSIONS, load_manifest, region_lines

TEMPLATES = REPO / "edition"
# folders every file of which is secret, line by line (the trusted-side tests that decide the grades)
SECRET_FOLDERS: tuple[Path, ...] = (REPO / "grading" / "hidden",)
# what the edition copies from this repository (files, or folders copied whole)
COPIED: tuple[str, ...] = (
    "notebooks",
    "assignments",
    "utils",
    "book",
    "jupyter/student",
    "requirements.txt",
    "environment.yml",
)
# where the material that makes the public lines public lives: a line found there is not a secret
PUBLIC: tuple[str, ...] = ("notebooks", "assignments", "utils", "book", "requirements.txt", "environment.yml")
# names that only the instructor edition may hold (files or folders, at any depth)
INSTRUCTOR_ONLY_NAMES: tuple[str, ...] = (
    "solutions",
    "submissions",
    "manifest.json",
    "grading",
    "nbgrader_config.py",
    "gradebook.db",
    "autograded",
    "feedback",
    "submitted",
    "grades.csv",
)
SKIPPED_PARTS = ("__pycache__", ".ipynb_checkpoints", ".pytest_cache")
# an exercise's answer in a chapter is short teaching code ("for _ in range(5):"): only longer lines count
MIN_CHAPTER_SECRET_CHARS = 24
MIN_SECRET_CHARS = 12  # a secret line has at least this many non-blank characters ("return x" is no secret)
_IMPORT = re.compile(r"^(from\s+[\w.]+\s+)?import\s+[\w., ()]+$")
_GRADING_IMPORT = re.compile(r"^\s*(from|import)\s+grading\b", re.M)
COMMIT_MESSAGE = "Deep Learning for Computer Vision: the student edition"


@dataclass(frozen=True)
class Leak:
    """One piece of instructor material found in an edition: ``what`` (a line or a name) in ``path``."""

    path: str
    what: str
    origin: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what!r} (from {self.origin})"


# --- collecting the files ------------------------------------------------------------------------------------


def _listed_files(root: Path, relative: str, untracked: bool = False) -> list[Path]:
    """Files under ``root/relative`` that git tracks (with ``untracked``, also new files git does not ignore), as
    paths relative to root; outside a git checkout (an unpacked archive), every file under it."""
    others = ["--others", "--exclude-standard"] if untracked else []
    proc = subprocess.run(
        ["git", "ls-files", "-z", "--cached", *others, "--", relative], cwd=root, capture_output=True, text=True
    )
    if proc.returncode == 0:
        paths = sorted({Path(p) for p in proc.stdout.split("\0") if p})
    else:
        target = root / relative
        paths = (
            [target.relative_to(root)] if target.is_file() else sorted(p.relative_to(root) for p in target.rglob("*"))
        )
    return [p for p in paths if (root / p).is_file() and not any(part in SKIPPED_PARTS for part in p.parts)]


def _edition_files() -> dict[Path, Path]:
    """edition path -> source path, for everything the edition is made of: the tracked files of :data:`COPIED`
    (a scratch notebook lying in notebooks/ stays out), and the templates (tracked or new)."""
    files = {rel: REPO / rel for item in COPIED for rel in _listed_files(REPO, item)}
    for rel in _listed_files(REPO, TEMPLATES.name, untracked=True):
        files[rel.relative_to(TEMPLATES.name)] = REPO / rel
    return files


def _git(dest: Path, *args: str) -> str:
    env_args = [
        "-c",
        "user.name=DLCV course",
        "-c",
        "user.email=dlcv-course@example.org",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "commit.gpgsign=false",
    ]
    return subprocess.run(["git", *env_args, *args], cwd=dest, capture_output=True, text=True, check=True).stdout


def build(dest: Path, check: bool = True) -> Path:
    """Write the student edition into ``dest`` (new or empty) as a git repository with one commit.

    With ``check`` (the default), fail before committing if :func:`leaks` finds instructor material in it."""
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty: the student edition is written into a new folder")
    if dest == REPO or REPO in dest.parents:
        raise ValueError(f"{dest} is inside the instructor repository; write the edition next to it (../dlcv-student)")
    dest.mkdir(parents=True, exist_ok=True)
    for rel, src in _edition_files().items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if _is_chapter(rel):
            nbformat.write(without_solutions(nbformat.read(src, as_version=4)), dest / rel)
        else:
            shutil.copy2(src, dest / rel)
    if check:
        found = leaks(dest)
        if found:
            raise RuntimeError("the student edition holds instructor material:\n" + "\n".join(map(str, found[:20])))
    _git(dest, "init", "--quiet")
    _git(dest, "add", "--all")
    _git(dest, "commit", "--quiet", "-m", COMMIT_MESSAGE)
    return dest


def _is_chapter(rel: Path | str) -> bool:
    rel = Path(rel)
    return rel.suffix == ".ipynb" and rel.parts[0] == "notebooks"


def _chapter_solution_lines() -> Iterator[tuple[str, str]]:
    """(line, origin) of every line of every chapter's exercise solution cells."""
    for rel in _listed_files(REPO, "notebooks"):
        if _is_chapter(rel):
            for index, cell in enumerate(nbformat.read(REPO / rel, as_version=4).cells):
                if is_solution_cell(cell):
                    origin = f"{rel} (cell {index}, an exercise's solution)"
                    lines = (
                        line for line in cell.source.split("\n") if len(normalise(line)) >= MIN_CHAPTER_SECRET_CHARS
                    )
                    yield from ((line, origin) for line in lines)


# --- what must not leak ----------------------------------------------------------------------------------------


def normalise(line: str) -> str:
    """A line with all whitespace removed: reformatting a copied line does not hide it."""
    return re.sub(r"\s+", "", line)


def _is_trivial(line: str) -> bool:
    """Too short or too generic to be anyone's secret: `return x`, `)`, an import."""
    return len(normalise(line)) < MIN_SECRET_CHARS or bool(_IMPORT.match(line.strip()))


def text_lines(path: Path) -> list[str]:
    """The lines of a text file as a reader sees them; for a notebook, the lines of its cells and text outputs
    (and of its raw JSON). A binary file has none."""
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return []
    lines = text.split("\n")
    if path.suffix == ".ipynb":
        try:
            nb = json.loads(text)
        except json.JSONDecodeError:
            return lines
        for cell in nb.get("cells", []):
            lines += "".join(cell.get("source", "")).split("\n")
            for output in cell.get("outputs", []):
                for value in [output.get("text", "")] + list(output.get("data", {}).values()):
                    if isinstance(value, (str, list)):
                        lines += "".join(value).split("\n")
    return lines


def _public_lines() -> set:
    """Normalised lines of everything the instructor publishes anyway (chapters without their exercises'
    solutions, releases, utils, pins)."""
    public = set()
    for item in PUBLIC:
        for rel in _listed_files(REPO, item):
            if _is_chapter(rel):
                cells = without_solutions(nbformat.read(REPO / rel, as_version=4)).cells
                public.update(normalise(line) for cell in cells for line in cell.source.split("\n"))
            else:
                public.update(normalise(line) for line in text_lines(REPO / rel))
    return public


def _solution_folder_lines(folder: Path) -> Iterator[tuple[str, str]]:
    """(line, origin) of the secret material of ``solutions/<assignment>/``: the solution and hidden-test regions
    of its notebook, every line of every other file in it."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not set(p.parts) & set(SKIPPED_PARTS)):
        origin = f"solutions/{folder.name}/{path.relative_to(folder)}"
        if path.suffix == ".ipynb" and path.stem == folder.name:
            inside, _outside = region_lines(nbformat.read(path, as_version=4))
            yield from ((line, origin + " (solution or hidden-test region)") for line in inside)
        else:
            yield from ((line, origin) for line in text_lines(path))


def _manifest_lines(assignment: str) -> Iterator[tuple[str, str]]:
    """(line, origin) of every text of a wrong-submission manifest: replaced and replacing text, description."""
    for bug, spec in load_manifest(assignment).items():
        texts = [spec.get("description", "")] + [t for pair in spec.get("replace", []) for t in pair]
        origin = f"tests/submissions/{assignment}/manifest.json [{bug}]"
        yield from ((line, origin) for text in texts for line in text.split("\n"))


def _folder_lines(folder: Path) -> Iterator[tuple[str, str]]:
    """(line, origin) of every line of every file under ``folder``."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not set(p.parts) & set(SKIPPED_PARTS)):
        origin = str(path.relative_to(REPO)) if REPO in path.parents else str(path)
        yield from ((line, origin) for line in text_lines(path))


def secret_lines() -> dict[str, str]:
    """normalised secret line -> where it comes from.

    Secret are: every line inside a ``### BEGIN SOLUTION`` / ``### BEGIN HIDDEN TESTS`` region of
    ``solutions/*/*.ipynb``; every line of every other file of ``solutions/<assignment>/`` (trusted-side graders,
    data); every line of :data:`SECRET_FOLDERS` (``grading/hidden/``: the hidden tests); every text of a wrong
    submission's manifest (``tests/submissions/*/manifest.json``); every line of a chapter's exercise solution
    cells (:data:`SOLUTION_TAG`). Lines that are trivial (:func:`_is_trivial`)
    or that the chapters, releases or ``utils`` show anyway are no secrets."""
    found: dict[str, str] = {}
    sources = [_solution_folder_lines(folder) for folder in sorted(p for p in SOLUTIONS.iterdir() if p.is_dir())]
    sources += [_folder_lines(folder) for folder in SECRET_FOLDERS if folder.is_dir()]
    sources.append(_chapter_solution_lines())
    if SUBMISSIONS.exists():
        sources += [_manifest_lines(p.name) for p in sorted(SUBMISSIONS.iterdir()) if p.is_dir()]
    for source in sources:
        for line, origin in source:
            if not _is_trivial(line):
                found.setdefault(normalise(line), origin)
    public = _public_lines()
    return {line: origin for line, origin in found.items() if line not in public}


def _edition_paths(dest: Path) -> Iterator[Path]:
    """Every file and folder of the edition at ``dest``, except git's, an environment and caches."""
    for folder, subfolders, files in os.walk(dest):
        here = Path(folder)
        skipped = {".git", ".venv", *SKIPPED_PARTS} if here == dest else set(SKIPPED_PARTS)
        subfolders[:] = sorted(d for d in subfolders if d not in skipped)
        yield from (here / d for d in subfolders)
        yield from (here / f for f in sorted(files))


def leaks(dest: Path, secrets: dict[str, str] | None = None) -> list[Leak]:
    """Instructor material in the edition at ``dest``: secret lines in any text file, instructor-only files by
    name, an import of the ``grading`` package, git history beyond the edition's own commit."""
    dest = Path(dest)
    secrets = secret_lines() if secrets is None else secrets
    found: list[Leak] = []
    for path in _edition_paths(dest):
        rel = str(path.relative_to(dest))
        for part in path.relative_to(dest).parts:
            if part in INSTRUCTOR_ONLY_NAMES:
                found.append(Leak(rel, part, "an instructor-only name"))
        if not path.is_file():
            continue
        lines = text_lines(path)
        for line in lines:
            key = normalise(line)
            if key in secrets:
                found.append(Leak(rel, line.strip(), secrets[key]))
        if path.suffix in (".py", ".ipynb") and any(_GRADING_IMPORT.search(line) for line in lines):
            found.append(Leak(rel, "import grading", "the instructor's grading package"))
    found += _history_leaks(dest)
    return found


def _history_leaks(dest: Path) -> list[Leak]:
    """The edition's git repository must hold none of the instructor repository's commits."""
    if not (dest / ".git").exists():
        return []
    ours = subprocess.run(["git", "rev-list", "--all"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not ours:
        return []
    known = subprocess.run(
        ["git", "cat-file", "--batch-check"],
        cwd=dest,
        input="\n".join(ours[:200]) + "\n",
        capture_output=True,
        text=True,
    ).stdout
    present = [line.split()[0] for line in known.splitlines() if line and not line.endswith("missing")]
    return [Leak(".git", sha, "the instructor repository's history") for sha in present]
