"""The class on JupyterHub in a real browser (headless Chromium, Playwright): a student logs in to the hub,
fetches the assignment from JupyterLab's Assignments panel, fills in one answer and submits; the instructor
logs in and sees the submission in formgrader. The hub is the one of ``tests/test_hub.py`` (``running_hub``:
real unix accounts, PostgreSQL, the exchange), with one student. Screenshots: ``test-output/hub-browser/``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-output" / "hub-browser"
os.environ.setdefault("COURSE_TEST_OUTPUT", str(REPO / "test-output"))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# the edition's browser helpers (skips this module where no Chromium or Playwright is installed)
view = _load("edition_student_view_hub", REPO / "edition" / "tests" / "browser" / "test_student_view.py")
hubtest = _load("hub_end_to_end", REPO / "tests" / "test_hub.py")
from grading.paths import release_notebook  # noqa: E402

pytestmark = view.pytestmark
browser = view.browser
ASSIGNMENT, STUB = view.ASSIGNMENT, view.STUB


@pytest.fixture(scope="module")
def hub():
    with hubtest.running_hub(1, SHOTS) as running:
        teacher = running.client(running.instructor)
        running.spawn([teacher])
        teacher.formgrader("assign")
        teacher.formgrader("release")
        running.teacher = teacher
        yield running


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _login(browser, hub, user: str):
    """A fresh browser context (its own cookies) logged in through the hub's login form."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{hub.base}/hub/login", wait_until="domcontentloaded")
    page.fill("input#username_input", user)
    page.fill("input#password_input", hub.hub.password)
    _shot(page, f"login_{'instructor' if user == hub.instructor else 'student'}")
    page.click("#login_submit")
    page.wait_for_url(re.compile(rf".*/user/{user}/lab.*"), timeout=300_000)
    page.wait_for_selector(".lm-MenuBar-itemLabel", timeout=180_000)
    return context, page


def _assignments_panel(page):
    view._click(page, page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Nbgrader$")))
    view._click(page, page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Assignment List$")))
    page.wait_for_selector("#released_assignments_list", timeout=60_000)


def test_student_fetches_fills_in_and_submits_then_the_instructor_sees_it(browser, hub):
    student = hub.hub.students[0]
    context, page = _login(browser, hub, student)
    _assignments_panel(page)
    fetch = page.locator("#released_assignments_list button", has_text=re.compile(r"^Fetch$"))
    fetch.first.wait_for(timeout=60_000)
    _shot(page, "student_assignments_released")
    view._click(page, fetch.first)
    submit = page.locator("#fetched_assignments_list button", has_text=re.compile(r"^Submit$"))
    submit.first.wait_for(timeout=120_000)
    _shot(page, "student_assignments_fetched")

    # the fetched notebook, in the student's home: fill in one stub and run its visible test
    page.goto(f"{hub.base}/user/{student}/lab/tree/{ASSIGNMENT}/{ASSIGNMENT}.ipynb", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    view._wait_idle(page, 180)
    body = _solution_body()
    output = view.fill_stub_and_run_its_test(page, release_notebook(ASSIGNMENT), STUB, body)
    assert "Error" not in output and "Traceback" not in output, f"the visible test failed:\n{output[:1500]}"
    page.keyboard.press("ControlOrMeta+s")
    time.sleep(2)
    _shot(page, "student_answer_filled_in")

    _assignments_panel(page)
    submit = page.locator("#fetched_assignments_list button", has_text=re.compile(r"^Submit$"))
    view._click(page, submit.first)
    page.locator("#submitted_assignments_list .item_status, #submitted_assignments_list li").first.wait_for(
        timeout=120_000
    )
    _shot(page, "student_submitted")
    context.close()

    context, page = _login(browser, hub, hub.instructor)
    page.goto(f"{hub.base}/user/{hub.instructor}/formgrader/manage_assignments", wait_until="domcontentloaded")
    page.wait_for_selector(f"text={ASSIGNMENT}", timeout=60_000)
    _shot(page, "instructor_formgrader_assignments")
    hub.teacher.formgrader("collect")  # the Collect button's request
    page.goto(f"{hub.base}/user/{hub.instructor}/formgrader/manage_submissions/{ASSIGNMENT}")
    page.wait_for_selector(f"text={student}", timeout=60_000)
    assert page.locator(f"text={student}").count() >= 1
    # what was collected is what the student typed and saved in the browser
    import nbformat

    collected = hub.hub.course_dir(hub.instructor) / "submitted" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    cells = nbformat.read(collected, as_version=4).cells
    stub = next(c for c in cells if c.metadata.get("nbgrader", {}).get("grade_id") == STUB)
    assert "NotImplementedError" not in stub.source and all(
        b.strip().split("\n")[0].strip() in stub.source for b in body
    )
    _shot(page, "instructor_formgrader_submission")
    context.close()


def _solution_body() -> list[str]:
    spec = importlib.util.spec_from_file_location(
        "student_view_instructor", REPO / "tests" / "browser" / "test_student_view.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.solution_body(ASSIGNMENT, STUB)
