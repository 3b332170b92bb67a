"""Command line of the instructor tools (the Makefile calls these).

python -m grading release [ASSIGNMENT ...]       regenerate assignments/ from solutions/
python -m grading submissions [ASSIGNMENT ...]   rebuild tests/submissions/<a>/<bug>.ipynb from manifest.json
python -m grading autograde DIR                  grade DIR/<student>/<assignment>/*.ipynb (make autograde)
python -m grading check ASSIGNMENT [--keep DIR] [--only BUG,...]
                                                 grade the solution, the blank release and every manifest
                                                 submission in a scratch course; print who lost what and
                                                 every entry whose must_fail / must_pass is not met
python -m grading student-edition DEST           write the student edition (a new git repository) into DEST
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nbformat

from . import pipeline, submissions
from .paths import REPO, assignment_names, release_notebook


def entry_problems(bug: str, spec: dict, score: pipeline.Score) -> list[str]:
    """What a graded manifest entry gets wrong: a must_fail cell at full points, a must_pass cell below."""
    failed = set(score.failed())
    problems = []
    kept = sorted(set(spec.get("must_fail", [])) - failed)
    lost = sorted(set(spec.get("must_pass", [])) & failed)
    if kept:
        problems.append(f"{bug}: should fail {kept} but they got full points")
    if lost:
        problems.append(f"{bug}: should keep {lost} but lost points there ({score.auto_total:g} / {score.auto_max:g})")
    return problems


def check(assignment: str, keep: str | None = None, only: list[str] | None = None) -> int:
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=f"check-{assignment}-"))
    course = pipeline.Course(root)
    course.generate(assignment)
    course.submit("solution", assignment, submissions.student_notebook(assignment))
    course.submit("blank", assignment, nbformat.read(release_notebook(assignment), as_version=4))
    manifest = submissions.load_manifest(assignment)
    if only:
        unknown = sorted(set(only) - set(manifest))
        if unknown:
            raise SystemExit(f"not in the manifest of {assignment}: {unknown}")
        manifest = {bug: spec for bug, spec in manifest.items() if bug in only}
    for bug, nb in submissions.wrong_submissions(assignment).items():
        if bug in manifest:
            course.submit(bug, assignment, nb)
    seconds = course.autograde(assignment)
    scores = course.scores(assignment)
    print(pipeline.summary(scores, assignment))
    print(f"\n{len(scores)} submissions in {seconds:.0f} s; course folder: {root}")
    problems = submissions.manifest_problems(assignment)
    solution = scores["solution"]
    if solution.failed() or solution.auto_total != solution.auto_max:
        problems.append(f"solution scores {solution.auto_total:g} / {solution.auto_max:g}, failed {solution.failed()}")
    if scores["blank"].auto_total != 0:
        passing = sorted(set(scores["blank"].cells) - set(scores["blank"].failed()) - scores["blank"].manual)
        problems.append(f"blank release scores {scores['blank'].auto_total:g}: passes {passing}")
    for bug, spec in manifest.items():
        problems += entry_problems(bug, spec, scores[bug])
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
    p.add_argument("--jobs", type=int, default=1, help="nbgrader processes grading at once")
    p = sub.add_parser("check")
    p.add_argument("assignment")
    p.add_argument("--keep", help="course folder to use (kept afterwards)")
    p.add_argument("--only", help="grade only these manifest entries (comma-separated), with the solution and blank")
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
        pipeline.autograde_folder(Path(args.folder), Path(args.root), jobs=args.jobs)
    elif args.command == "check":
        return check(args.assignment, args.keep, args.only.split(",") if args.only else None)
    elif args.command == "student-edition":
        from . import edition

        print(f"wrote the student edition to {edition.build(Path(args.dest))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
