"""The course book (`make book`): built from this checkout, then read in headless Chromium.

The build executes every chapter as a student gets it (no solution cells; the exercises' stubs empty) and fails on
any cell error, so it also proves that nothing after an exercise depends on the student's answer. The HTML is then
checked as a reader would meet it: every chapter and assignment page loads, every image has pixels, the maths is
typeset by MathJax (served from the book itself), every link inside the book leads to a page and an anchor that
exist, the search finds a chapter, static widgets say that they are live in JupyterLab, and no page holds a line of
an exercise's solution or of the instructor's secret material. Screenshots go to ``test-output/book/``.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import importlib.util
import os
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import nbformat
import pytest

from grading import edition
from grading.paths import REPO
from utils import exercises

pytestmark = [pytest.mark.slow, pytest.mark.browser]

_spec = importlib.util.spec_from_file_location("book_build", REPO / "book" / "build.py")
book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(book)
SHOTS = REPO / "test-output" / "book"
CHAPTERS = [p.stem for p in book.chapters()]
ASSIGNMENTS = [p.stem for p in book.assignments()]


class _Page(html.parser.HTMLParser):
    """Text, ids, links and images of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


@functools.cache
def parsed(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


# Chapter 0 is executed (figures, a static widget, maths from outputs); every other chapter already runs once in
# `make test` as the student's copy with its answers checked (utils.exercises.checked_notebook), so here it is only
# laid out. `make book` executes them all.
EXECUTED = "00_*"


@pytest.fixture(scope="module")
def site() -> Path:
    start = time.perf_counter()
    os.environ["BOOK_EXECUTE"] = EXECUTED
    try:
        out = book.build(jobs=2)
    finally:
        del os.environ["BOOK_EXECUTE"]
    print(f"book built in {time.perf_counter() - start:.0f} s")
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium: Debian's (``.ci/run`` installs it), driven by Playwright; skipped where there is none."""
    playwright = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        yield chromium
        chromium.close()


def pages(site: Path) -> list[Path]:
    return (
        [site / "index.html"]
        + [site / "notebooks" / f"{c}.html" for c in CHAPTERS]
        + [site / "assignments" / f"{a}.html" for a in ASSIGNMENTS]
    )


def test_every_chapter_and_assignment_has_a_page(site):
    for path in pages(site):
        assert path.is_file(), f"no page {path.relative_to(site)}"
    index = parsed(site / "index.html")
    for name in CHAPTERS:
        assert f"notebooks/{name}.html" in index.links, f"the table of contents has no {name}"


def test_links_inside_the_book_lead_somewhere(site):
    broken = []
    for path in pages(site):
        for href in parsed(path).links:
            url = urlparse(href)
            if url.scheme or href.startswith(("mailto:", "javascript:")):
                continue
            target = (path.parent / unquote(url.path)).resolve() if url.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{path.name}: {href}")
            elif url.fragment and target.suffix == ".html" and url.fragment not in parsed(target).ids:
                broken.append(f"{path.name}: {href} (no such anchor)")
    assert not broken, f"{len(broken)} links point nowhere: {broken[:10]}"


def test_chapters_link_to_each_other(site):
    linked = {
        name
        for name in CHAPTERS
        for href in parsed(site / "notebooks" / f"{name}.html").links
        if re.fullmatch(r"\d\d_[a-z_]+\.html(#.*)?", href) and not href.startswith(name)
    }
    assert len(linked) >= min(3, len(CHAPTERS) - 1), f"only {sorted(linked)} link to another chapter"


def test_the_book_is_the_students_copy(site):
    """Exercises show their empty stubs' "not done yet"; no solution or secret line is on any page."""
    for name in CHAPTERS:
        text = "".join(parsed(site / "notebooks" / f"{name}.html").text)
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        has_checks = any("self_check(" in c.source for c in nb.cells)
        if Path(name).match(EXECUTED) and any(exercises.is_solution_cell(c) for c in nb.cells) and has_checks:
            assert "not done yet" in text, f"{name}: the book shows no exercise left to the student"
        assert not re.search(r"✓ [^\n]*: correct", text), f"{name}: a self-check passed without a solution"
    secrets = edition.secret_lines()
    found = []
    for path in pages(site):
        lines = {edition.normalise(line) for line in "".join(parsed(path).text).split("\n")}
        found += [f"{path.name}: {secrets[line]} {line!r}" for line in lines & secrets.keys()]
    assert not found, f"instructor material in the book: {found[:10]}"


def test_static_widgets_say_they_are_live_in_jupyterlab(site):
    text = "".join(parsed(site / "notebooks" / f"{CHAPTERS[0]}.html").text)
    assert "in JupyterLab this cell shows live controls" in text


def test_assignment_pages_state_the_task_and_the_grading(site):
    for name in ASSIGNMENTS:
        text = "".join(parsed(site / "assignments" / f"{name}.html").text)
        assert "How this assignment is graded" in text and "Autograded points" in text, name
        assert "raise NotImplementedError" in text, f"{name}: the page should show the stubs to fill in"


def test_pages_render_in_chromium(site, server, browser):
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    problems = []
    for path in pages(site):
        rel = path.relative_to(site).as_posix()
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err, errors=errors: errors.append(str(err)))
        failed: list[str] = []
        page.on("requestfailed", lambda req, failed=failed: failed.append(req.url))
        page.goto(urljoin(server + "/", rel), wait_until="load")
        if rel.startswith("notebooks/"):
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60_000)
            page.evaluate("() => MathJax.startup.promise")
            typeset = page.locator("mjx-container").count()
            if typeset == 0:
                problems.append(f"{rel}: no maths typeset")
            images = page.evaluate(
                "() => Array.from(document.images).map(i => [i.currentSrc, i.complete && i.naturalWidth > 0])"
            )
            broken = [src for src, ok in images if not ok]
            if broken or (not images and Path(rel).match(f"*{EXECUTED}.html")):
                problems.append(f"{rel}: {len(broken)} broken of {len(images)} images")
        if errors or failed:
            problems.append(f"{rel}: script errors {errors[:3]}, failed requests {failed[:3]}")
        page.screenshot(path=str(SHOTS / (rel.replace("/", "_").replace(".html", ".png"))), full_page=False)
        page.close()
    assert not problems, "\n".join(problems)


def test_search_finds_a_chapter(site, server, browser):
    """Sphinx's static search index: the longest word of the last chapter's title finds that chapter."""
    last = CHAPTERS[-1]
    title = book.title_of(nbformat.read(REPO / "notebooks" / f"{last}.ipynb", as_version=4), last)
    word = max(re.findall(r"[A-Za-z]+", title), key=len).lower()
    page = browser.new_page()
    page.goto(f"{server}/search.html?q={word}", wait_until="load")
    page.wait_for_selector("#search-results li", timeout=60_000)
    hits = page.locator("#search-results li a").all_inner_texts()
    page.screenshot(path=str(SHOTS / "search.png"))
    page.close()
    assert any(title.lower() in hit.lower() for hit in hits), f"the search for {word!r} found {hits[:5]}, not {title!r}"
