"""nbgrader configuration of the course (read by every nbgrader command run from the repo root).

Layout: solutions/<assignment>/<assignment>.ipynb is the instructor *source*; `make release`
writes the student version to assignments/<assignment>/. Submissions, autograded notebooks and
feedback live in submitted/, autograded/ and feedback/ (git-ignored).

Gradebook: sqlite file gradebook.db at the repo root by default (one person). DLCV_GRADEBOOK=postgres
(`make autograde DB=postgres`) uses the course's own PostgreSQL server (`python -m grading.postgres start`,
database = the course id); any other server: export NBGRADER_DB_URL=postgresql://user:password@host:5432/dlcv
"""

import os

c = get_config()  # noqa: F821 - provided by nbgrader

_here = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.course_id = "dlcv"
c.CourseDirectory.root = _here
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = os.environ.get("NBGRADER_DB_URL", "sqlite:///" + os.path.join(_here, "gradebook.db"))
if os.environ.get("NBGRADER_DB_URL_FILE"):  # a mounted secret (deploy/k8s): the URL stays out of the environment
    with open(os.environ["NBGRADER_DB_URL_FILE"]) as _f:
        c.CourseDirectory.db_url = _f.read().strip()
elif os.environ.get("DLCV_GRADEBOOK") == "postgres" and "NBGRADER_DB_URL" not in os.environ:
    from grading import postgres as _postgres  # the password is read from .postgres/, never from the environment

    c.CourseDirectory.db_url = _postgres.url(c.CourseDirectory.course_id)
# files that never go to students
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.csv"]

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
# Trusted grading (grading/trusted.py, threat model in README.md): every notebook runs in a sandboxed
# kernel (grading/sandbox.py: bubblewrap, uid nobody, no network, no view of the course's files, limits)
# and each test cell's verdict is decided by the assignment's trusted tests (grading/hidden/<a>.py) in
# this process; the student's code only answers calls. TrustedExecute takes the place of Execute.
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402  # noqa: E402
    AssignLatePenalties,
    CheckCellMetadata,
    ClearOutput,
    DeduplicateIds,
    IgnorePattern,
    LimitOutput,
    OverwriteCells,
    OverwriteKernelspec,
    SaveAutoGrades,
)

from grading.trusted import DropForgedMetadata, TrustedExecute  # noqa: E402

c.Autograde.sanitize_preprocessors = [
    ClearOutput,
    DropForgedMetadata,
    DeduplicateIds,
    OverwriteKernelspec,
    OverwriteCells,
    CheckCellMetadata,
]

c.Autograde.autograde_preprocessors = [
    TrustedExecute,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
# Per-cell limit: an endless loop costs its test cell, not the whole submission.
c.TrustedExecute.timeout = int(os.environ.get("NBGRADER_CELL_TIMEOUT", "120"))
c.TrustedExecute.interrupt_on_timeout = True
# After an interrupt the kernel may need a moment to flush its output; without this slack a slow
# machine turns one timed-out cell into a failed submission.
c.TrustedExecute.iopub_timeout = 20
# Once the last cell has run, every output is in the notebook: stop the kernel at once. A "graceful"
# shutdown of a kernel that imported torch waits about 2 s, on every graded notebook.
c.TrustedExecute.shutdown_kernel = "immediate"

# Feedback shows which case failed and why, but not the hidden tests' code (nbgrader issue #917).
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

from grading.feedback import HideHiddenTests  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
