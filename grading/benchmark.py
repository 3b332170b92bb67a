"""Grading time: a class of one assignment on 1 and 2 workers against PostgreSQL, and one submission each.

    python -m grading.benchmark                          # 100 submissions of nms on 1 and 2 workers, PostgreSQL
    python -m grading.benchmark --class-size 12          # a smaller class (a loaded machine, a quick check)
    python -m grading.benchmark --workers 1 2 4 --db sqlite --assignment conv_backprop
    python -m grading.benchmark --per-assignment         # also one submission of every assignment, alone

Each class run is ``python -m grading autograde`` (what ``make autograde JOBS=n DB=postgres`` runs) on the
same inbox (the solution and the wrong submissions of ``tests/submissions``, in turn), into a fresh
gradebook (a database of a scratch PostgreSQL server, or sqlite), feedback and export included. It prints
the wall-clock seconds per worker count and the speed-up over one worker (the sizing in docs/cluster.md).
The result goes to ``test-output/grading_benchmark.json`` and to the section of ``BENCHMARKS.md`` between
its markers, with the machine it ran on and its load average (wall-clock figures of a loaded machine are
inflated). The json also holds ``grader_cpu_seconds``: user+sys of the grader's own processes only; the
sandboxed kernels are not counted (bubblewrap's namespace init is never reaped by the run, so its CPU time
never reaches ``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import nbformat

from . import pipeline, postgres, submissions
from .paths import REPO, assignment_names

BENCHMARKS = REPO / "BENCHMARKS.md"
BEGIN, END = "<!-- grading.benchmark: begin -->", "<!-- grading.benchmark: end -->"


def one_submission(assignment: str, repeats: int = 2) -> float:
    """Best wall-clock seconds of ``nbgrader autograde`` on the solution, alone in a scratch course."""
    best = float("inf")
    with tempfile.TemporaryDirectory(prefix=f"bench-{assignment}-") as tmp:
        course = pipeline.Course(Path(tmp))
        course.generate(assignment)
        course.submit("student", assignment, submissions.student_notebook(assignment))
        for _ in range(repeats):
            best = min(best, course.autograde(assignment))
        score = course.scores(assignment)["student"]
        if score.auto_total != score.auto_max:  # the written answers' points wait for the instructor
            raise RuntimeError(
                f"{assignment}: the solution scored {score.auto_total:g} of {score.auto_max:g} autograded points"
            )
    return best


def write_inbox(folder: Path, assignment: str, size: int) -> None:
    """``size`` students, the solution and each wrong submission in turn."""
    notebooks: list[nbformat.NotebookNode] = [
        submissions.student_notebook(assignment),
        *submissions.wrong_submissions(assignment).values(),
    ]
    for k in range(size):
        student = folder / f"student{k:04d}" / assignment
        student.mkdir(parents=True)
        nbformat.write(notebooks[k % len(notebooks)], student / f"{assignment}.ipynb")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def whole_class(inbox: Path, course_root: Path, jobs: int, db_url: str | None) -> dict[str, float]:
    """Wall-clock and CPU seconds of ``python -m grading autograde`` on ``inbox`` into a new course."""
    course = pipeline.Course(course_root, db_url=db_url)
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "grading", "autograde", str(inbox), "--root", str(course.root), "--jobs", str(jobs)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"autograde on {jobs} worker(s) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    graded = pipeline.read_scores(course.db_url, inbox.name, inbox.name)  # the inbox is named after the assignment
    return {"seconds": wall, "cpu_seconds": cpu, "graded": len(graded)}


def machine() -> dict[str, object]:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    memory = 0.0
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, IndexError, ValueError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def markdown(result: dict) -> str:
    m, c = result["machine"], result["class"]
    lines = [
        BEGIN,
        f"## Autograding a class (`python -m grading.benchmark {result['command']}`)",
        "",
        f"Generated {result['date']} by `grading/benchmark.py`; do not edit by hand.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}; "
        f"load average {m['load_average_1min']} at the start"
        + (" (**under load**: other work shared the cores)" if m["load_average_1min"] > 0.5 * (m["cores"] or 1) else "")
        + ".",
        "",
        f"{c['size']} submissions of `{c['assignment']}` ({c['db']} gradebook), sandboxed, "
        "feedback and export included:",
        "",
        "| workers | wall seconds | per submission | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    base = c["runs"][0]["seconds"]
    for run in c["runs"]:
        lines.append(
            f"| {run['jobs']} | {run['seconds']:.1f} | {run['seconds'] / c['size']:.2f} s | "
            f"{base / run['seconds']:.2f}x |"
        )
    lines += sizing(c)
    if result.get("one_submission_seconds"):
        lines += ["", "One submission alone (`nbgrader autograde`, best of 2):", ""]
        lines += [f"- `{a}`: {s:.1f} s" for a, s in result["one_submission_seconds"].items()]
    lines.append(END)
    return "\n".join(lines) + "\n"


def sizing(c: dict, class_sizes: tuple[int, ...] = (200, 1000), hours: float = 1.0) -> list[str]:
    """The workers a class of each size needs to be graded within ``hours`` (docs/cluster.md), from the 1- and
    2-worker runs: ``t1`` seconds per submission on one worker, ``e = S2 / 2`` the share of a core a worker keeps
    beside another, ``W = ceil(N * t1 / (3600 * hours * e))``, in 2-core pods of ``ceil(W / 2)``."""
    seconds = {run["jobs"]: run["seconds"] for run in c["runs"]}
    if 1 not in seconds or 2 not in seconds:
        return []
    t1 = seconds[1] / c["size"]
    e = seconds[1] / seconds[2] / 2
    budget = 3600 * hours * e
    lines = [
        "",
        f"Sizing (docs/cluster.md): `t1 = {t1:.2f} s`, `S2 = {2 * e:.2f}`, `e = S2 / 2 = {e:.2f}`; workers to grade a "
        f"class of `{c['assignment']}` within {hours:g} h:",
        "",
        "| class size `N` | worker-seconds `N * t1` | workers `W` | 2-core pods |",
        "|---:|---:|---:|---:|",
    ]
    for n in class_sizes:
        workers = math.ceil(n * t1 / budget)
        lines.append(f"| {n} | {n * t1:.0f} | {workers} | {math.ceil(workers / 2)} |")
    return lines


def write_benchmarks_md(section: str, path: Path = BENCHMARKS) -> None:
    """Replace the generated section of ``BENCHMARKS.md`` (or create the file)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nFigures measured by the course's own scripts.\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignment", default="nms", choices=assignment_names())
    parser.add_argument("--class-size", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--per-assignment", action="store_true", help="also time one submission of each")
    parser.add_argument("--no-write", action="store_true", help="print only (no BENCHMARKS.md, no json)")
    parser.add_argument("--render", metavar="JSON", help="only rewrite BENCHMARKS.md from a result file")
    args = parser.parse_args(argv)
    if args.render:
        write_benchmarks_md(markdown(json.loads(Path(args.render).read_text())))
        return 0
    result: dict = {
        "command": " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }
    if args.per_assignment:
        result["one_submission_seconds"] = {}
        for assignment in assignment_names():
            seconds = one_submission(assignment)
            result["one_submission_seconds"][assignment] = round(seconds, 2)
            print(f"{assignment:<26} {seconds:6.1f} s for one submission (nbgrader autograde, sandboxed)", flush=True)
    runs = []
    databases = tuple(f"bench_{jobs}" for jobs in args.workers)
    server = postgres.temporary_server(courses=databases) if args.db == "postgres" else nullcontext(None)
    with tempfile.TemporaryDirectory(prefix="bench-class-") as tmp, server as home:
        inbox = Path(tmp) / args.assignment
        write_inbox(inbox, args.assignment, args.class_size)
        for jobs, database in zip(args.workers, databases, strict=True):
            db_url = postgres.url(database, home) if home else None
            run = whole_class(inbox, Path(tmp) / database, jobs, db_url)
            if run["graded"] != args.class_size:
                raise RuntimeError(f"{jobs} worker(s) graded {run['graded']} of {args.class_size} submissions")
            runs.append(
                {"jobs": jobs, "seconds": round(run["seconds"], 1), "grader_cpu_seconds": round(run["cpu_seconds"], 1)}
            )
            speedup = runs[0]["seconds"] / run["seconds"]
            print(
                f"{args.class_size} submissions of {args.assignment} on {jobs} worker(s), {args.db}: "
                f"{run['seconds']:.1f} s ({run['seconds'] / args.class_size:.2f} s each), speed-up {speedup:.2f}x",
                flush=True,
            )
    result["class"] = {"assignment": args.assignment, "size": args.class_size, "db": args.db, "runs": runs}
    if not args.no_write:
        out = REPO / "test-output"
        out.mkdir(exist_ok=True)
        (out / "grading_benchmark.json").write_text(json.dumps(result, indent=2))
        write_benchmarks_md(markdown(result))
        print(f"wrote {out / 'grading_benchmark.json'} and {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
