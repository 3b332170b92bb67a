"""Command line of the instructor tools (the Makefile calls these).

python -m grading release [ASSIGNMENT ...]       regenerate assignments/ from solutions/
python -m grading submissions [ASSIGNMENT ...]   rebuild tests/submissions/<a>/<bug>.ipynb from manifest.json
python -m grading autograde DIR [--jobs n] [--shard K/N]
                                                 grade DIR/<student>/<assignment>/*.ipynb (make autograde)
python -m grading check ASSIGNMENT [--keep DIR] [--only BUG,...] [--jobs n]
                                                 grade the solution, the blank release and every manifest
                                                 submission as a class in a scratch course (make autograde's
                                                 code); print who lost what and every grade that is wrong
python -m grading student-edition DEST           write the student edition (a new git repository) into DEST
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from . import pipeline, selftest, submissions
from .paths import REPO, assignment_names


def check(assignment: str, keep: str | None = None, only: list[str] | None = None, jobs: int = 2) -> int:
    """Grade the solution, the blank release and the manifest's submissions (``only``: these entries) as a class,
    with ``make autograde``'s code, in a scratch course; print the summary and every problem
    :func:`grading.selftest.score_problems` finds. Exit status 1 when there is one."""
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=f"check-{assignment}-"))
    try:
        plan = selftest.class_submissions(assignment, only=only)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    inbox = selftest.write_inbox(root / "inbox", {assignment: plan})
    course = pipeline.Course(root / "course")
    scores = pipeline.autograde_folder(inbox, course.root, jobs=jobs).get(assignment, {})
    print(f"course folder: {course.root}")
    problems = [f"manifest: {p}" for p in submissions.manifest_problems(assignment)]
    missing = sorted(set(plan) - set(scores))
    problems += [f"{student}: not graded (see {course.root / 'ungradable.csv'})" for student in missing]
    problems += [p for found in selftest.score_problems(assignment, scores).values() for p in found]
    for p in problems:
        print("PROBLEM:", p)
    if not problems:
        print(f"{assignment}: every grade is what it should be ({len(scores)} submissions)")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grading", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("release", "submissions"):
        p = sub.add_parser(name)
        p.add_argument("assignments", nargs="*")
    p = sub.add_parser("autograde")
    p.add_argument("folder")
    p.add_argument("--root", default=str(REPO), help="course folder (default: the repo)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes grading at once")
    p.add_argument("--shard", default="0/1", help="K/N: grade the K-th of N parts (N machines, one gradebook)")
    p = sub.add_parser("check")
    p.add_argument("assignment")
    p.add_argument("--keep", help="course folder to use (kept afterwards)")
    p.add_argument("--only", help="grade only these manifest entries (comma-separated), with the solution and blank")
    p.add_argument("--jobs", type=int, default=2, help="worker processes grading at once")
    p = sub.add_parser("student-edition", help="write the student edition (a new git repository) into DEST")
    p.add_argument("dest")
    args = parser.parse_args()

    if args.command == "release":
        pipeline.release(args.assignments or assignment_names())
    elif args.command == "submissions":
        for a in args.assignments or assignment_names():
            for path in submissions.write_wrong_submissions(a):
                print(f"wrote {path}")
    elif args.command == "autograde":
        pipeline.autograde_folder(
            Path(args.folder), Path(args.root), jobs=args.jobs, shard=pipeline.parse_shard(args.shard)
        )
    elif args.command == "check":
        return check(args.assignment, args.keep, args.only.split(",") if args.only else None, args.jobs)
    elif args.command == "student-edition":
        from . import edition

        print(f"wrote the student edition to {edition.build(Path(args.dest))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
