"""make autograde JOBS=n DB=postgres: n worker processes on one PostgreSQL gradebook give exactly the
grades of a serial run (the same inbox graded with JOBS=1 and JOBS=2, each into a database of its own)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import sqlalchemy

from grading import pipeline, postgres, submissions

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "nms"  # the cheapest assignment to grade


def _inbox(folder: Path) -> list[str]:
    """A correct, a blank and two wrong submissions (four students, two per worker)."""
    wrong = submissions.wrong_submissions(ASSIGNMENT)
    notebooks = {
        "alice": submissions.student_notebook(ASSIGNMENT),
        "bob": nbformat.read(REPO / "assignments" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4),
        "carol": wrong[sorted(wrong)[0]],
        "dave": wrong[sorted(wrong)[1]],
    }
    for student, nb in notebooks.items():
        (folder / student / ASSIGNMENT).mkdir(parents=True)
        nbformat.write(nb, folder / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    return sorted(notebooks)


def _grades_table(url: str) -> list[tuple]:
    """Every grade cell of every student, straight from the gradebook's tables."""
    engine = sqlalchemy.create_engine(url)
    query = sqlalchemy.text(
        "SELECT s.student_id, bc.name, g.auto_score, g.manual_score, g.extra_credit, g.needs_manual_grade "
        "FROM grade g JOIN base_cell bc ON g.cell_id = bc.id "
        "JOIN submitted_notebook sn ON g.notebook_id = sn.id "
        "JOIN submitted_assignment s ON sn.assignment_id = s.id ORDER BY 1, 2"
    )
    with engine.connect() as conn:
        assert conn.dialect.name == "postgresql"
        rows = [tuple(r) for r in conn.execute(query)]
    engine.dispose()
    return rows


@pytest.mark.slow
def test_two_workers_on_postgres_grade_exactly_as_one(tmp_path):
    inbox = tmp_path / "inbox"
    students = _inbox(inbox)
    runs = {}
    with postgres.temporary_server(courses=("serial", "parallel")) as home:
        for jobs, db in ((1, "serial"), (2, "parallel")):
            course = pipeline.Course(tmp_path / db, db_url=postgres.url(db, home))
            assert pipeline.course_db_url(course.root) == postgres.url(db, home)
            out = subprocess.run(
                [sys.executable, "-m", "grading", "autograde", str(inbox), "--root", str(course.root)]
                + ["--jobs", str(jobs)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            assert f"{len(students)}/{len(students)}" in out.stderr, "no progress bar with graded/total"
            assert f"{jobs} worker(s)" in out.stdout
            runs[jobs] = {
                "table": _grades_table(postgres.url(db, home)),
                "scores": pipeline.read_scores(course.db_url, ASSIGNMENT, ASSIGNMENT),
                "csv": sorted(
                    (r["student_id"], r["score"], r["max_score"])
                    for r in csv.DictReader(open(course.root / "grades.csv"))
                ),
                "feedback": sorted(
                    p.relative_to(course.root / "feedback") for p in (course.root / "feedback").rglob("*.html")
                ),
            }
    serial, parallel = runs[1], runs[2]
    assert sorted(serial["scores"]) == students
    alice = serial["scores"]["alice"]
    assert alice.auto_total == alice.auto_max > 0, "the solution gets every autograded point"
    assert serial["scores"]["bob"].total == 0
    assert 0 < serial["scores"]["carol"].total < serial["scores"]["carol"].max_total
    assert len(serial["table"]) == len(students) * len(serial["scores"]["alice"].max_cells)
    assert parallel["table"] == serial["table"]
    assert parallel["csv"] == serial["csv"]
    assert parallel["feedback"] == serial["feedback"] and len(serial["feedback"]) == len(students)


@pytest.mark.slow
def test_benchmark_times_a_solution_whose_written_answers_wait_for_the_instructor():
    """batchnorm's solution gets every autograded point and leaves its written answers ungraded: the benchmark
    judges the autograded points, so `python -m grading.benchmark --per-assignment` runs on every assignment."""
    from grading import benchmark

    assert benchmark.one_submission("batchnorm", repeats=1) > 0


def test_benchmark_sizing_table_follows_the_cluster_formula():
    """W = ceil(N * t1 / (3600 * S2 / 2)), pods ceil(W / 2), as docs/cluster.md derives it."""
    from grading import benchmark

    runs = {"size": 10, "assignment": "nms", "runs": [{"jobs": 1, "seconds": 100.0}, {"jobs": 2, "seconds": 62.5}]}
    rows = [
        line for line in benchmark.sizing(runs, class_sizes=(200, 1000)) if line.startswith("| 2") or "1000" in line
    ]
    # t1 = 10 s, S2 = 1.6, e = 0.8: 200 * 10 / 2880 -> 1 worker; 1000 * 10 / 2880 = 3.47 -> 4 workers, 2 pods
    assert rows == ["| 200 | 2000 | 1 | 1 |", "| 1000 | 10000 | 4 | 2 |"]
    assert benchmark.sizing({**runs, "runs": runs["runs"][:1]}) == [], "no 2-worker run, no speed-up to size with"
