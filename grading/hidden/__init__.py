"""Trusted tests, one module per assignment: instructor-only, never in a release or the student edition."""
