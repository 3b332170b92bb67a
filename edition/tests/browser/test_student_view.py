"""The students' view: JupyterLab from the course's environment, driven in headless Chromium by Playwright.

`make lab` serves a copy of this edition's notebooks/ and assignments/; a chapter runs through *Run All*, an
assignment opens with its stubs and locked tests, and a stub filled in runs its visible test. Runs when a
`chromium` is installed (`apt-get install chromium`); skipped with a notice otherwise. Screenshots and the
server log land in test-output/browser/ (git-ignored).

The instructor's copy of this test runs these same tests on a freshly built student edition, and types the
real answer into the stub (this edition has none: here a wrong answer is typed, and its visible test fails).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("COURSE_TEST_OUTPUT", ROOT / "test-output")) / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHAPTER = "01_initialization.ipynb"  # the chapter notebook run through the UI
ASSIGNMENT = "nms"  # the assignment opened in the browser
STUB = "box_area"  # the stub filled in, then its visible test cell (the next cell) is run
# a wrong box_area ("+1" pixel convention): the visible test must run it and fail with a readable message
WRONG_ANSWER = "return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)"
TOKEN = "browser-test-token"
LAB_LOG = SHOTS / "jupyterlab.log"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if CHROMIUM is None:
    pytest.skip(
        "NOTICE: no chromium on this machine (apt-get install chromium); browser test skipped", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="NOTICE: playwright not installed; browser test skipped")


def _log_tail(n: int = 4000) -> str:
    return LAB_LOG.read_text(errors="replace")[-n:] if LAB_LOG.exists() else "(no server log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def edition_root() -> Path:
    """The student edition whose `make lab` is tested (this one; the instructor's test builds a fresh one)."""
    return ROOT


@pytest.fixture(scope="module")
def make_args() -> list:
    """Extra arguments of `make lab` (the instructor's test points it at the instructor's environment)."""
    return []


@pytest.fixture(scope="module")
def lab(tmp_path_factory, edition_root, make_args):
    """`make lab` (the students' command) on a free port, serving a copy of notebooks/ and assignments/
    (JupyterLab autosaves what it runs; the edition's notebooks must stay clean)."""
    root = tmp_path_factory.mktemp("student")
    for folder in ("notebooks", "assignments"):
        shutil.copytree(edition_root / folder, root / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port = _free_port()
    # a student's environment: live widgets, the inline matplotlib backend
    env = {
        k: v
        for k, v in os.environ.items()
        # the instructor's make test requires every exercise solved; a student's copy has its stubs empty
        if k not in ("COURSE_STATIC_WIDGETS", "COURSE_EXERCISES_REQUIRED", "NBGRADER_EXECUTION", "MPLBACKEND")
    }
    args = f"--no-browser --IdentityProvider.token={TOKEN} --ServerApp.root_dir={root}"
    # the server's log goes to a file: an unread pipe fills up and then blocks the server mid-request
    SHOTS.mkdir(parents=True, exist_ok=True)
    log = open(LAB_LOG, "wb")
    proc = subprocess.Popen(
        ["make", "lab", f"PORT={port}", f"LAB_ARGS={args}", *make_args],
        cwd=edition_root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=5)
            break
        except OSError as err:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("JupyterLab did not start:\n" + _log_tail()) from err
            time.sleep(1)
    yield base
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    log.close()


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


def _open(browser, lab: str, path: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{lab}/lab/tree/{path}?token={TOKEN}&reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    deadline = time.time() + 120  # a dialog (e.g. a kernel choice) can hold the kernel back: answer it
    while page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() == 0:
        _dismiss_dialogs(page)
        if time.time() > deadline:
            raise AssertionError(f"{path}: the kernel never became idle" + _context())
        time.sleep(1)
    _dismiss_dialogs(page)
    return page


DIALOGS: list[str] = []  # every JupyterLab dialog met on the way, reported when a test fails


def _dismiss_dialogs(page) -> None:
    """Answer any modal JupyterLab dialog (kernel choice, kernel restart, server connection...) with its
    default button, keeping its text for the failure report; a dialog left open swallows every click."""
    for _ in range(5):
        dialog = page.locator(".jp-Dialog")
        if dialog.count() == 0 or not dialog.first.is_visible():
            return
        text = " | ".join(
            t.strip() for t in dialog.first.locator(".jp-Dialog-header, .jp-Dialog-body").all_inner_texts()
        )
        DIALOGS.append(text)
        page.screenshot(path=str(SHOTS / f"dialog_{len(DIALOGS)}.png"))
        print(f"NOTICE: JupyterLab showed a dialog: {text!r}")
        accept = dialog.first.locator(".jp-Dialog-footer .jp-mod-accept")
        try:
            accept.first.click(timeout=5_000)
        except sync_api.TimeoutError:  # no default button, or it did not respond
            page.keyboard.press("Escape")
        time.sleep(1)


def _click(page, locator, attempts: int = 6) -> None:
    """Click, answering any dialog that pops up in the way (it would swallow the click)."""
    for attempt in range(attempts):
        _dismiss_dialogs(page)
        try:
            locator.click(timeout=10_000)
            return
        except sync_api.TimeoutError:
            if attempt == attempts - 1:
                raise AssertionError(f"could not click {locator}" + _context()) from None


def _context() -> str:
    return f"\ndialogs seen: {DIALOGS}\nend of the server log:\n{_log_tail()}"


def _run_all(page, timeout_s: int) -> None:
    """Run > Run All Cells, then wait until every code cell has an execution count and the kernel is idle.

    text_content, not inner_text: JupyterLab 4 may skip rendering cells scrolled out of view."""

    def started() -> bool:
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_text_contents()
        return any(re.fullmatch(r"\[(\*|\d+)\]:", p.strip()) for p in prompts)

    for _attempt in range(4):  # a menu item clicked while the kernel is still connecting does nothing
        _click(page, page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")))
        _click(page, page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")))
        for _ in range(30):
            _dismiss_dialogs(page)
            if started():
                break
            time.sleep(1)
        if started():
            break
        page.keyboard.press("Escape")
    else:
        raise AssertionError("Run All Cells never started the notebook" + _context())
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_text_contents()
        done = prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts)
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if done and idle:
            return
        _dismiss_dialogs(page)
        if idle and started():  # Run All stops at a failing cell: report it instead of waiting
            _assert_no_error(page, page.url)
        time.sleep(2)
    raise AssertionError(f"the notebook did not finish within {timeout_s} s; prompts: {prompts}" + _context())


def _assert_no_error(page, name: str) -> None:
    errors = page.locator(".jp-OutputArea-output", has_text="Traceback (most recent call last)")
    if errors.count():
        raise AssertionError(f"{name}: a cell shows an error:\n{errors.first.inner_text()[:2000]}" + _context())


def _figures(page) -> int:
    return page.locator(".jp-OutputArea-output img[src^='data:image/png']").count()


def test_getting_started_runs_and_its_widget_is_live(browser, lab):
    page = _open(browser, lab, "notebooks/00_getting_started.ipynb")
    _run_all(page, timeout_s=300)
    page.screenshot(path=str(SHOTS / "00_getting_started.png"), full_page=True)
    _assert_no_error(page, "00_getting_started")
    assert _figures(page) >= 3, "matplotlib figures should be displayed"

    slider = page.locator(".jupyter-widgets.widget-slider").first
    slider.wait_for(timeout=60_000)
    output = page.locator(".jupyter-widgets.widget-output img").first
    output.wait_for(timeout=60_000)
    before = output.get_attribute("src")
    slider.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    deadline = time.time() + 60
    while (
        time.time() < deadline
        and page.locator(".jupyter-widgets.widget-output img").first.get_attribute("src") == before
    ):
        time.sleep(0.5)
    assert page.locator(".jupyter-widgets.widget-output img").first.get_attribute("src") != before, (
        "moving the slider did not redraw the figure"
    )
    page.screenshot(path=str(SHOTS / "00_getting_started_slider_moved.png"))
    page.close()


def test_a_chapter_runs_through_the_ui(browser, lab):
    page = _open(browser, lab, f"notebooks/{CHAPTER}")
    _run_all(page, timeout_s=480)
    page.screenshot(path=str(SHOTS / CHAPTER.replace(".ipynb", ".png")), full_page=True)
    _assert_no_error(page, CHAPTER)
    assert _figures(page) >= 3
    assert page.locator(".jupyter-widgets.widget-slider").count() >= 1, "the chapter's widget did not render"
    page.close()


def test_assignment_release_shows_stubs_and_locks_tests(browser, lab, edition_root):
    import nbformat

    page = _open(browser, lab, f"assignments/{ASSIGNMENT}/{ASSIGNMENT}.ipynb")
    page.screenshot(path=str(SHOTS / f"{ASSIGNMENT}_release.png"))
    n_cells = len(nbformat.read(edition_root / "assignments" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4).cells)
    # JupyterLab renders cells lazily, so walk the notebook as a student would: one cell at a time
    page.locator(".jp-Cell").first.click()
    page.keyboard.press("Escape")
    active = page.locator(".jp-Notebook .jp-Cell.jp-mod-active")
    texts, tried_locked = [], False
    for _ in range(n_cells):
        active.wait_for(timeout=30_000)
        is_code = "jp-CodeCell" in (active.get_attribute("class") or "")
        text = active.locator(".cm-content").text_content() if is_code else ""
        texts.append(text)
        if is_code and "assert_close(" in text and not tried_locked:
            tried_locked = True
            page.keyboard.press("Enter")
            page.keyboard.type("pass  # typed by a student")
            time.sleep(1)
            page.keyboard.press("Escape")
            after = active.locator(".cm-content").text_content()
            page.screenshot(path=str(SHOTS / f"{ASSIGNMENT}_locked_cell.png"))
            assert after == text and "typed by a student" not in after, "typing changed a locked test cell"
        page.keyboard.press("j")
    assert tried_locked, "no visible test cell found"
    assert any("raise NotImplementedError()" in t for t in texts), "no solution stub visible"
    assert not any("BEGIN SOLUTION" in t or "HIDDEN TESTS" in t for t in texts)
    page.close()


def test_instructor_ui_is_hidden_from_students(browser, lab):
    page = _open(browser, lab, "notebooks/00_getting_started.ipynb")
    menus = page.locator(".lm-MenuBar-itemLabel").all_inner_texts()
    if "Nbgrader" in menus:
        page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader").click()
        items = page.locator(".lm-Menu-itemLabel").all_inner_texts()
        assert "Formgrader" not in items, f"students see the formgrader: {items}"
        page.keyboard.press("Escape")
    assert page.get_by_text("Create Assignment", exact=True).count() == 0
    time.sleep(3)  # JupyterLab asks about its news feed a moment after start-up, unless told not to
    assert page.get_by_text("official Jupyter news").count() == 0, "the news pop-up is shown to students"
    page.close()


def _wait_idle(page, timeout_s: int = 120) -> None:
    deadline = time.time() + timeout_s
    time.sleep(1)
    while page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() == 0:
        _dismiss_dialogs(page)
        if time.time() > deadline:
            raise AssertionError("the kernel did not become idle" + _context())
        time.sleep(0.5)


def fill_stub_and_run_its_test(page, release: Path, grade_id: str, body: str | list[str]) -> str:
    """As a student would: run the cells above the stub ``grade_id`` of the notebook open in ``page`` (its file:
    ``release``) with Shift+Enter, replace its ``raise NotImplementedError()`` by ``body`` (one answer for every stub
    of the cell, or a list of one answer per stub, typed into the editor),
    run it and the test cell below it. Returns the test cell's output text."""
    import nbformat

    nb = nbformat.read(release, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    stub = nb.cells[index].source
    parts = stub.split("raise NotImplementedError()")
    bodies = [body] * (len(parts) - 1) if isinstance(body, str) else list(body)
    assert len(bodies) == len(parts) - 1, f"{grade_id}: {len(parts) - 1} stubs, {len(bodies)} answers"
    filled = parts[0]
    for answer, rest in zip(bodies, parts[1:]):
        indent = filled.split("\n")[-1]  # the stub's own indentation
        filled += ("\n" + indent).join(answer.strip().split("\n")) + rest
    _click(page, page.locator(".jp-Cell").first)
    page.keyboard.press("Escape")
    for _ in range(index):  # run every cell above the stub; the active cell moves down one at a time
        page.keyboard.press("Shift+Enter")
        _wait_idle(page)
    active = page.locator(".jp-Notebook .jp-Cell.jp-mod-active")
    assert "NotImplementedError" in (active.locator(".cm-content").text_content() or ""), (
        "the stub is not the active cell"
    )
    page.keyboard.press("Enter")  # edit mode
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.insert_text(filled)  # insert_text: no auto-indent of the typed lines
    page.keyboard.press("Escape")
    typed = active.locator(".cm-content").text_content() or ""
    assert "NotImplementedError" not in typed, f"the stub was not replaced: {typed[:300]}"
    page.keyboard.press("Shift+Enter")  # define the function
    _wait_idle(page)
    test_cell = active.element_handle()  # the test cell, now active (a handle stays on it)
    page.keyboard.press("Shift+Enter")  # its visible test
    _wait_idle(page)
    deadline = time.time() + 60
    while time.time() < deadline:
        prompt = test_cell.query_selector(".jp-InputArea-prompt")
        if prompt and re.fullmatch(r"\[\d+\]:", (prompt.text_content() or "").strip()):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the test cell below {grade_id} never finished" + _context())
    page.screenshot(path=str(SHOTS / f"{ASSIGNMENT}_{grade_id}_filled.png"))
    output = test_cell.query_selector(".jp-OutputArea")
    return (output.text_content() if output else "") or ""


def test_a_filled_in_stub_runs_its_visible_test(browser, lab, edition_root):
    """A wrong answer typed into the stub: its visible test runs the student's code and fails readably."""
    page = _open(browser, lab, f"assignments/{ASSIGNMENT}/{ASSIGNMENT}.ipynb")
    release = edition_root / "assignments" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    output = fill_stub_and_run_its_test(page, release, STUB, WRONG_ANSWER)
    assert "NotImplementedError" not in output, f"the test still called the stub:\n{output[:1500]}"
    assert "AssertionError" in output and "box_area of three boxes" in output, (
        f"the visible test should fail on the wrong answer and name its case:\n{output[:1500]}" + _context()
    )
    page.close()
