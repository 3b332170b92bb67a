"""Sandboxed grading time: one submission per assignment, and a whole class through ``make autograde``.

    python -m grading.benchmark                                  # every assignment, one submission each
    python -m grading.benchmark --class-size 200 --jobs 2        # plus a class of the slowest assignment

Prints the figures and writes them to ``test-output/grading_benchmark.json``. Not a timed test: the
numbers depend on the machine and on what else it runs. Targets (issue 20): one submission at most
10 s on a 2-core machine, 200 submissions of the slowest assignment in at most 20 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from . import pipeline, submissions
from .paths import REPO, assignment_names


def one_submission(assignment: str, repeats: int = 2) -> float:
    """Best wall-clock seconds of ``nbgrader autograde`` on the solution, alone in a scratch course."""
    best = float("inf")
    with tempfile.TemporaryDirectory(prefix=f"bench-{assignment}-") as tmp:
        course = pipeline.Course(Path(tmp))
        course.generate(assignment)
        course.submit("student", assignment, submissions.student_notebook(assignment))
        for _ in range(repeats):
            best = min(best, course.autograde(assignment))
        scores = course.scores(assignment)
        if scores["student"].total != scores["student"].max_total:
            raise RuntimeError(f"{assignment}: the solution scored {scores['student'].total} in the benchmark")
    return best


def whole_class(assignment: str, size: int, jobs: int) -> float:
    """Wall-clock seconds of ``python -m grading autograde`` on ``size`` submissions (the solution and the
    wrong submissions, in turn), feedback and export included."""
    notebooks: list[nbformat.NotebookNode] = [
        submissions.student_notebook(assignment),
        *submissions.wrong_submissions(assignment).values(),
    ]
    with tempfile.TemporaryDirectory(prefix=f"bench-class-{assignment}-") as tmp:
        inbox = Path(tmp) / "inbox"
        for k in range(size):
            folder = inbox / f"student{k:03d}" / assignment
            folder.mkdir(parents=True)
            nbformat.write(notebooks[k % len(notebooks)], folder / f"{assignment}.ipynb")
        course = pipeline.Course(Path(tmp) / "course")
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "grading", "autograde", str(inbox), "--root", str(course.root), "--jobs", str(jobs)],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignments", nargs="*", default=assignment_names())
    parser.add_argument("--class-size", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, object] = {"one_submission_seconds": {}}
    for assignment in args.assignments:
        seconds = one_submission(assignment)
        results["one_submission_seconds"][assignment] = round(seconds, 2)  # type: ignore[index]
        print(f"{assignment:<26} {seconds:6.1f} s for one submission (nbgrader autograde, sandboxed)", flush=True)
    if args.class_size:
        per = results["one_submission_seconds"]  # type: ignore[assignment]
        slowest = max(per, key=per.get)  # type: ignore[arg-type]
        seconds = whole_class(slowest, args.class_size, args.jobs)
        results["class"] = {
            "assignment": slowest,
            "size": args.class_size,
            "jobs": args.jobs,
            "seconds": round(seconds, 1),
        }
        print(
            f"{args.class_size} submissions of {slowest} on {args.jobs} worker(s): {seconds / 60:.1f} min "
            f"({seconds / args.class_size:.1f} s each, feedback and export included)"
        )
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    (out / "grading_benchmark.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
