"""No chapter gives a graded answer away: the chapters' code holds no copy of any solution region or hidden test.

Code is compared after normalisation, so renaming variables or re-spacing a copy does not hide it:

* every code cell and every piece of secret code (the ``### BEGIN SOLUTION`` and ``### BEGIN HIDDEN TESTS`` regions
  of ``solutions/*/*.ipynb``, the trusted-side hidden tests in ``grading/hidden/``) is tokenized; comments,
  strings' contents, indentation and layout are dropped;
* a name stays as it is when it is a keyword or builtin, follows a ``.`` (an attribute: ``self.conv1``,
  ``torch.sqrt``, ``x.shape``), names a keyword argument (``kernel_size=``), or is one of the usual module
  aliases (``torch``, ``nn``, ``F``, ``np``, ``math``, ``torchvision``); every other name becomes ``_``;
* the result is a list of *statements* (logical lines). A window of ``WINDOW`` consecutive statements of a solution
  region (the whole region when it is shorter) that has at least ``MIN_TOKENS`` tokens, and does not also occur
  in the release notebook (public anyway), is a *fingerprint* of the answer;
* a chapter fails when any run of consecutive statements of one of its code cells equals a fingerprint.

A second, coarser check catches a rewrite that shares no code with the solution: no chapter may define (``def`` or
``class``) a function or class under the name of one that an assignment grades (``BasicBlock``, ``fold_batchnorm``,
``nms``, ...); a chapter that needs one imports the library's.

The thresholds (3 statements, 20 tokens) were chosen so that the chapters' ordinary code (plot labels, shape
unpacking, two nested ``for`` loops) never matches, while a copy of any solution body of that size does: the
planted-copy test below renames every local name of every such region, re-indents it into a chapter cell, and
checks that it is found.
"""

from __future__ import annotations

import builtins
import io
import keyword
import re
import textwrap
import tokenize
from collections.abc import Iterator

import nbformat
import pytest

from grading import edition
from grading.paths import REPO, SOLUTIONS, assignment_names, release_notebook

WINDOW = 3
MIN_TOKENS = 20
KEPT_NAMES = (
    frozenset(keyword.kwlist)
    | frozenset(dir(builtins))
    | {"torch", "nn", "F", "np", "math", "torchvision", "self", "super"}
)
CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))
Statement = tuple[str, ...]
Fingerprints = dict[tuple[Statement, ...], list[str]]


def statements(code: str) -> list[Statement]:
    """The normalised statements of a piece of Python (a cell, or a region cut out of a function body)."""
    # indentation carries no information once INDENT/DEDENT are dropped: strip it, so that any fragment tokenizes
    lines = [line.lstrip() for line in code.split("\n")]
    code = "\n".join(line for line in lines if not line.startswith(("%", "!")))  # IPython magics
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code + "\n").readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []
    skipped = {tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER, tokenize.NL}
    out: list[Statement] = []
    current: list[str] = []
    depth, previous = 0, ""
    for i, tok in enumerate(tokens):
        if tok.type in skipped:
            continue
        if tok.type == tokenize.NEWLINE:
            if current and current != ["S"]:  # a bare string (a docstring) says nothing about the code
                out.append(tuple(current))
            current = []
            continue
        text = tok.string
        if tok.type == tokenize.NAME:
            following = tokens[i + 1].string if i + 1 < len(tokens) else ""
            kept = text in KEPT_NAMES or previous == "." or (following == "=" and depth > 0)
            current.append(text if kept else "_")
        elif tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_START", None):
            current.append("S")
        elif tok.type in (getattr(tokenize, "FSTRING_MIDDLE", None), getattr(tokenize, "FSTRING_END", None)):
            pass
        else:
            depth += 1 if text in ("(", "[", "{") else -1 if text in (")", "]", "}") else 0
            current.append(text)
        previous = text
    if current and current != ["S"]:
        out.append(tuple(current))
    return out


def solution_regions(nb: nbformat.NotebookNode, kind: str = "SOLUTION") -> Iterator[tuple[str, str]]:
    """(grade_id, code) of every ``### BEGIN <kind>`` .. ``### END <kind>`` region of a source notebook's code cells
    (a written answer, a markdown cell, is prose: the edition's line search covers it)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        inside, lines = False, []
        for line in cell.source.split("\n"):
            if f"### BEGIN {kind}" in line:
                inside, lines = True, []
            elif f"### END {kind}" in line:
                inside = False
                yield cell.metadata.get("nbgrader", {}).get("grade_id", "?"), "\n".join(lines)
            elif inside:
                lines.append(line)


def secret_code() -> Iterator[tuple[str, str, str]]:
    """(assignment, origin, code) of every piece of secret code: the solution and hidden-test regions of the
    source notebooks, every Python file of ``solutions/<a>/`` besides the notebook, every file of
    ``grading/hidden/`` (named after its assignment)."""
    for name in assignment_names():
        source = nbformat.read(SOLUTIONS / name / f"{name}.ipynb", as_version=4)
        for kind in ("SOLUTION", "HIDDEN TESTS"):
            for grade_id, code in solution_regions(source, kind):
                yield name, f"{name}/{grade_id}" + ("" if kind == "SOLUTION" else " (hidden tests)"), code
        for path in sorted((SOLUTIONS / name).rglob("*.py")):
            yield name, str(path.relative_to(REPO)), path.read_text()
    for folder in edition.SECRET_FOLDERS:
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else []:
            yield path.stem, str(path.relative_to(REPO)), path.read_text()


def windows(stmts: list[Statement], size: int) -> Iterator[tuple[Statement, ...]]:
    for i in range(len(stmts) - size + 1):
        yield tuple(stmts[i : i + size])


def region_fingerprints(code: str) -> list[tuple[Statement, ...]]:
    """The windows of a solution region that are long enough to identify it."""
    stmts = statements(code)
    size = min(WINDOW, len(stmts))
    return [w for w in windows(stmts, size) if sum(map(len, w)) >= MIN_TOKENS] if size else []


def public_windows(nb: nbformat.NotebookNode) -> set:
    out = set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            stmts = statements(cell.source)
            for size in range(1, WINDOW + 1):
                out.update(windows(stmts, size))
    return out


def fingerprints() -> Fingerprints:
    """window -> ["assignment/grade_id" or file, ...] of the secret code it identifies (:func:`secret_code`)."""
    found: Fingerprints = {}
    public: dict[str, set] = {}
    for name, origin, code in secret_code():
        if name not in public:
            release = release_notebook(name)
            public[name] = public_windows(nbformat.read(release, as_version=4)) if release.exists() else set()
        for window in region_fingerprints(code):
            if window not in public[name]:
                found.setdefault(window, []).append(origin)
    return found


def copies(nb: nbformat.NotebookNode, prints: Fingerprints) -> list[tuple[int, str, str]]:
    """(cell index, solution region, the matching code) for every fingerprint found in a code cell of ``nb``
    (one entry per region the fingerprint identifies)."""
    out = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        stmts = statements(cell.source)
        for size in range(1, WINDOW + 1):
            for window in windows(stmts, size):
                for origin in prints.get(window, []):
                    out.append((index, origin, " | ".join(" ".join(s) for s in window)))
    return out


@pytest.fixture(scope="module")
def prints() -> Fingerprints:
    return fingerprints()


def test_every_assignment_has_fingerprints(prints):
    covered = {
        origin.split("/")[0]
        for origins in prints.values()
        for origin in origins
        if not origin.startswith(("grading/", "solutions/"))
    }
    assert covered == set(assignment_names()), f"no fingerprint for {set(assignment_names()) - covered}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_no_chapter_copies_a_solution(chapter, prints):
    found = copies(nbformat.read(chapter, as_version=4), prints)
    assert not found, "\n".join(
        f"{chapter.name} cell {i} repeats {origin}: {code[:200]}" for i, origin, code in found[:5]
    )


def graded_names() -> dict[str, str]:
    """name -> "assignment/grade_id" of every function and class a solution cell defines."""
    names = {}
    for name in assignment_names():
        for cell in nbformat.read(SOLUTIONS / name / f"{name}.ipynb", as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution"):
                for defined in re.findall(r"^(?:def|class)\s+(\w+)", cell.source, re.M):
                    names[defined] = f"{name}/{meta.get('grade_id')}"
    return names


def defined_names(nb: nbformat.NotebookNode) -> dict[str, int]:
    """name -> cell index of every function or class a notebook's code cells define (at any nesting level)."""
    return {
        name: i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for name in re.findall(r"^\s*(?:def|class)\s+(\w+)", cell.source, re.M)
    }


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_no_chapter_defines_a_graded_function_or_class(chapter):
    graded = graded_names()
    clashes = {
        name: (i, graded[name])
        for name, i in defined_names(nbformat.read(chapter, as_version=4)).items()
        if name in graded and not name.startswith("__")
    }
    assert not clashes, f"{chapter.name} defines what an assignment grades (name: (cell, assignment)): {clashes}"


def test_a_chapter_defining_a_graded_class_is_caught():
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("class BasicBlock(nn.Module):\n    expansion = 1\n")]
    )
    graded = graded_names()
    assert "BasicBlock" in graded and "fold_batchnorm" in graded and "nms" in graded
    assert "BasicBlock" in defined_names(nb)


def _renamed(code: str) -> str:
    """``code`` with every name that the normalisation maps to ``_`` renamed (as a student copying it might)."""
    local = {
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(code) + "\n").readline)
        if tok.type == tokenize.NAME and tok.string not in KEPT_NAMES
    }
    return re.sub(
        r"(?<![.\w])(\w+)\b(?!\s*=[^=])", lambda m: f"my_{m.group(1)}" if m.group(1) in local else m.group(1), code
    )


def test_a_renamed_reindented_copy_of_any_secret_code_is_found(prints):
    """Every solution region, hidden-test region and hidden-test file long enough to fingerprint, renamed and pasted
    (re-indented, inside a function) into a chapter: found, and attributed to where it comes from."""
    chapter = nbformat.read(CHAPTERS[0], as_version=4)
    tested = 0
    for _name, origin, code in secret_code():
        if not any(origin in prints[w] for w in region_fingerprints(code) if w in prints):
            continue  # too short to fingerprint, or public anyway (also in the release)
        pasted = "def helper(a, b):\n" + textwrap.indent(textwrap.dedent(_renamed(code)), "        ")
        planted = nbformat.v4.new_notebook(cells=list(chapter.cells) + [nbformat.v4.new_code_cell(pasted)])
        found = {where for _, where, _ in copies(planted, prints)}
        assert origin in found, f"a renamed copy of {origin} was not found"
        tested += 1
    assert tested >= 20, f"only {tested} pieces of secret code are long enough to fingerprint"


def test_ordinary_chapter_code_is_not_flagged(prints):
    """The library calls a chapter is meant to use instead of an answer are no copy."""
    code = (
        "keep = torchvision.ops.nms(boxes, scores, 0.5)\n"
        "block = torchvision.models.resnet.BasicBlock(64, 64)\n"
        "fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())\n"
        "up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)(x)\n"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    assert copies(nb, prints) == []


def test_statements_normalise_names_and_layout():
    a = statements("out = self.conv1(x)  # first\nout = self.bn1(out)\n")
    b = statements("y=self.conv1( inp )\n\ny = self.bn1(y)")
    assert a == b == [("_", "=", "self", ".", "conv1", "(", "_", ")"), ("_", "=", "self", ".", "bn1", "(", "_", ")")]
    assert statements("f(x,\n  kernel_size=3)") == [("_", "(", "_", ",", "kernel_size", "=", "3", ")")]
