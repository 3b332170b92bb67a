"""Command line of the instructor tools (the Makefile calls these).

python -m grading release [ASSIGNMENT ...]       regenerate assignments/ from solutions/
python -m grading submissions [ASSIGNMENT ...]   rebuild tests/submissions/<a>/<bug>.ipynb from manifest.json
python -m grading autograde DIR [--jobs n] [--shard K/N]
                                                 grade DIR/<student>/<assignment>/*.ipynb (make autograde)
python -m grading check ASSIGNMENT [--keep DIR]  grade the solution, the blank release and every wrong
                                                 submission in a scratch course; print who lost what
python -m grading student-edition DEST           write the student edition (a new git repository) into DEST
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nbformat

from . import pipeline, submissions
from .paths import REPO, assignment_names, release_notebook


def check(assignment: str, keep: str | None = None) -> int:
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=f"check-{assignment}-"))
    course = pipeline.Course(root)
    course.generate(assignment)
    course.submit("solution", assignment, submissions.student_notebook(assignment))
    course.submit("blank", assignment, nbformat.read(release_notebook(assignment), as_version=4))
    manifest = submissions.load_manifest(assignment)
    for bug, nb in submissions.wrong_submissions(assignment).items():
        course.submit(bug, assignment, nb)
    seconds = course.autograde(assignment)
    scores = course.scores(assignment)
    print(pipeline.summary(scores, assignment))
    print(f"\n{len(scores)} submissions in {seconds:.0f} s; course folder: {root}")
    problems = []
    if scores["solution"].total != scores["solution"].max_total:
        problems.append(f"solution scores {scores['solution'].total}, failed {scores['solution'].failed()}")
    if scores["blank"].total != 0:
        problems.append(
            f"blank release scores {scores['blank'].total}: passes {set(scores['blank'].cells) - set(scores['blank'].failed())}"
        )
    for bug, spec in manifest.items():
        s = scores[bug]
        missing = sorted(set(spec["must_fail"]) - set(s.failed()))
        if s.total >= scores["solution"].max_total or missing:
            problems.append(f"{bug}: total {s.total}, failed {s.failed()}, should also fail {missing}")
    for p in problems:
        print("PROBLEM:", p)
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
        return check(args.assignment, args.keep)
    elif args.command == "student-edition":
        from . import edition

        print(f"wrote the student edition to {edition.build(Path(args.dest))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
