"""Instructor tooling: release, wrong submissions, autograding (see ``python -m grading --help``)."""
