"""The instructor's review list: code in a submission that deserves a human look.

Trusted grading (:mod:`grading.trusted`) does not depend on any of this: a flag never changes a score.
It points the instructor at submissions that reach into the machinery (IPython, builtins,
``sys.modules``, torch's internals, frames), touch files outside the notebook's folder, start
processes or send signals; a correct solution needs none of these. Only code a student can edit is
scanned: every code cell whose source is not, line for line, the source of a release cell.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .paths import ASSIGNMENTS

# (flag, regular expression); each flag names what the code reaches, not a verdict
PATTERNS = [
    ("IPython internals", r"\bget_ipython\b|\bIPython\b|\bipykernel\b|\b_ih\b|\b_oh\b|\bOut\s*\["),
    ("builtins", r"\b__builtins__\b|\bbuiltins\b|\b__import__\b|\bsetattr\s*\(\s*(?:builtins|__builtins__)"),
    ("sys.modules / import machinery", r"\bsys\.modules\b|\bimportlib\b|\bsys\.meta_path\b|\bsys\.path\b"),
    ("the grader's agent", r"_grading_agent|\bagent\.serve\b"),
    ("threads", r"\bthreading\b|\b_thread\b|\bconcurrent\.futures\b|\bThreadPool"),
    (
        "torch internals",
        r"\btorch\._C\b|\btorch\.ops\b|\b_python_dispatch\b|\bTorchDispatchMode\b|"
        r"\bTorchFunctionMode\b|\b__torch_function__\b|\b__torch_dispatch__\b|\btorch\.library\b",
    ),
    (
        "patching library code",
        r"^\s*(?:torch|torchvision|utils|np|numpy|F|nn)\.[\w.]+\s*=[^=]|"
        r"\bsetattr\s*\(\s*(?:torch|torchvision|utils|F|nn)\b",
    ),
    (
        "frames / tracing",
        r"\bsys\._getframe\b|\binspect\b|\bf_back\b|\bf_globals\b|\bf_locals\b|\bsettrace\b|"
        r"\bsetprofile\b|\bgetprofile\b|\bgettrace\b|\b__closure__\b|\bcell_contents\b|\b__globals__\b|"
        r"\b__code__\b|\bgc\.get_objects\b|\bgc\.get_referrers\b|\bgc\.get_referents\b|\bctypes\b",
    ),
    (
        "files",
        r"(?<![.\w])open\s*\(|\bPath\s*\(|\bos\.(?:remove|unlink|rename|replace|listdir|scandir|walk|chmod|symlink)\b|"
        r"\bshutil\b|\bglob\b|\b__file__\b",
    ),
    ("processes", r"\bsubprocess\b|\bos\.(?:system|popen|fork|exec\w*|spawn\w*)\b|\bmultiprocessing\b|\bpty\b"),
    ("signals / exit", r"\bsignal\b|\bos\.kill\b|\bos\._exit\b|\bsys\.exit\b|(?<![.\w])quit\s*\(|(?<![.\w])exit\s*\("),
    ("network", r"\bsocket\b|\burllib\b|\brequests\b|\bhttp\.client\b"),
    ("exec / eval", r"(?<![.\w])exec\s*\(|(?<![.\w])eval\s*\(|(?<![.\w])compile\s*\("),
    ("swallowed exceptions", r"except\s+BaseException|except\s*:"),
]
_COMPILED = [(flag, re.compile(rx, re.MULTILINE)) for flag, rx in PATTERNS]


@dataclass(frozen=True)
class Flag:
    student: str
    assignment: str
    cell: int
    flag: str
    line: str


def _release_lines(assignment: str) -> set[str]:
    path = ASSIGNMENTS / assignment / f"{assignment}.ipynb"
    if not path.exists():
        return set()
    nb = nbformat.read(path, as_version=4)
    return {line.strip() for cell in nb.cells if cell.cell_type == "code" for line in cell.source.split("\n")}


_CACHE: dict[str, set[str]] = {}


def _release_ids(assignment: str) -> set[str]:
    path = ASSIGNMENTS / assignment / f"{assignment}.ipynb"
    if not path.exists():
        return set()
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["nbgrader"].get("grade_id", "") for c in nb.cells if "nbgrader" in c.get("metadata", {})}


def scan_notebook(nb: nbformat.NotebookNode, student: str, assignment: str) -> list[Flag]:
    """Flags for the lines of ``nb`` that the release does not have, and for forged nbgrader metadata."""
    known = _CACHE.setdefault(assignment, _release_lines(assignment))
    ids = _CACHE.setdefault(f"{assignment}:ids", _release_ids(assignment))
    found: list[Flag] = []
    seen: set[str] = set()
    for index, cell in enumerate(nb.get("cells", [])):
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta is None:
            continue
        grade_id = meta.get("grade_id", "") if isinstance(meta, dict) else ""
        if grade_id not in ids or grade_id in seen:
            found.append(Flag(student, assignment, index, "forged nbgrader metadata", str(grade_id)[:200]))
        seen.add(grade_id)
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        for line in source.split("\n"):
            if line.strip() in known or not line.strip() or line.strip().startswith("#"):
                continue
            for flag, rx in _COMPILED:
                if rx.search(line):
                    found.append(Flag(student, assignment, index, flag, line.strip()[:200]))
    return found


def scan_folder(folder: Path, student: str, assignment: str) -> list[Flag]:
    """Flags for every notebook of one hand-in (a file that is not a notebook is itself flagged)."""
    found: list[Flag] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix != ".ipynb":
            found.append(Flag(student, assignment, -1, "extra file", path.name[:200]))
            continue
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as exc:  # noqa: BLE001 - a broken notebook is itself worth a look
            found.append(Flag(student, assignment, -1, "unreadable notebook", f"{type(exc).__name__}"))
            continue
        found += scan_notebook(nb, student, assignment)
    return found


def write_csv(flags: Iterable[Flag], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "assignment", "cell", "flag", "line"])
        for fl in flags:
            writer.writerow([fl.student, fl.assignment, fl.cell, fl.flag, fl.line])


def summary(flags: list[Flag]) -> str:
    """One line per flagged submission: which kinds of suspicious code it holds (scores unaffected)."""
    if not flags:
        return "review list: nothing suspicious found"
    per: dict[tuple, set[str]] = {}
    for fl in flags:
        per.setdefault((fl.student, fl.assignment), set()).add(fl.flag)
    lines = [f"review list ({len(per)} submission(s) to read; flags never change a score):"]
    for (student, assignment), kinds in sorted(per.items()):
        lines.append(f"  {student}/{assignment}: {', '.join(sorted(kinds))}")
    return "\n".join(lines)
