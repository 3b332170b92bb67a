# Deep Learning for Computer Vision - the course's commands.
#   make lab    set up .venv if needed, then open JupyterLab (student view) in notebooks/
#   make test   set up .venv if needed, then the linter and every test (utils, notebooks, grading, hub, book)
#   make book   build the chapters and the assignments' tasks as a static HTML book in book/_build/html
#   make lint   ruff check and ruff format --check of the .py files and the notebooks
# Instructors:
#   make lab-instructor | release | submissions | student-edition DEST=<dir>
#   make autograde SUBMISSIONS=<dir> [JOBS=n] [DB=postgres]    make postgres | postgres-stop | benchmark
#   make hub [STUDENTS=a,b INSTRUCTORS=c HUB_PORT=8000]   (as root) a whole class on JupyterHub, see docs/hub.md
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := $(CURDIR)/.venv
STAMP := $(VENV)/.requirements.sha256
REQ_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
# nbgrader calls alembic by name, notebooks call jupyter: the venv comes first on PATH
export PATH := $(VENV)/bin:$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

PORT ?= 8888
# Jupyter refuses to run as root unless told (containers and CI run as root)
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_ARGS ?=
PYTEST_ARGS ?=
JOBS ?= 2
ASSIGNMENTS := $(notdir $(patsubst %/,%,$(dir $(wildcard solutions/*/*.ipynb))))

.PHONY: book lint hub hub-deps sandbox-deps postgres-deps postgres postgres-stop benchmark help setup lab lab-instructor test test-fast release submissions autograde student-edition clean

help:
	@awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' $(firstword $(MAKEFILE_LIST))

# (Re)install when requirements.txt or pyproject.toml changed; the stamp holds their hash.
setup:
	@test -x $(VENV)/bin/python || { echo "creating .venv with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@if [ "$$(cat $(STAMP) 2>/dev/null)" != "$(REQ_HASH)" ]; then \
	    echo "installing requirements into .venv (first time: several minutes)"; \
	    $(VENV)/bin/python -m pip install --quiet --upgrade pip; \
	    $(VENV)/bin/python -m pip install --quiet -r requirements.txt; \
	    $(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .; \
	    $(VENV)/bin/python -m utils._guard install >/dev/null; \
	    echo "$(REQ_HASH)" > $(STAMP); \
	fi

# Students: the nbgrader formgrader/create-assignment UI is switched off by jupyter/student/.
# LAB_DIR=assignments opens the assignment releases instead of the chapters.
LAB_DIR ?= notebooks
lab: setup
	cd $(LAB_DIR) && JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter/student jupyter lab --ip=127.0.0.1 --port=$(PORT) $(ALLOW_ROOT) $(LAB_ARGS)

# Instructors: the same lab with nbgrader's formgrader and create-assignment panels.
lab-instructor: setup
	jupyter lab --ip=127.0.0.1 --port=$(PORT) $(ALLOW_ROOT) $(LAB_ARGS)

# Two phases, each using both cores: first the grading tests alone (the test class is graded by
# `python -m grading autograde --jobs $(JOBS)`, so its clock is the grading time an instructor sees), then everything
# else on $(JOBS) pytest workers. Each chapter runs once, as test-output/chapters/<chapter>.ipynb: the student's
# notebook with every exercise's answer checked between a checkpoint and a rollback (utils/exercises.py), so one
# run proves both editions. Both phases always run; make fails when either fails. One BLAS/OpenMP thread per
# process avoids oversubscription, which makes small convolutions ~10x slower.
TEST_ENV := COURSE_STATIC_WIDGETS=1 COURSE_EXERCISES_REQUIRED=1 OMP_NUM_THREADS=1 GRADING_JOBS=$(JOBS)
GRADING_TESTS := tests/test_grading_pipeline.py tests/test_redteam.py tests/test_parallel_autograde.py tests/test_hub.py
test: setup sandbox-deps postgres-deps hub-deps
	@echo "== lint: ruff check and ruff format --check (pyproject.toml)"
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/ruff format --check --quiet .
	@status=0; \
	echo "== phase 1/2: grading (every assignment, the red team, parallel workers on PostgreSQL, a class on JupyterHub)"; \
	$(TEST_ENV) $(VENV)/bin/python -m pytest -p no:cacheprovider $(GRADING_TESTS) $(PYTEST_ARGS) || status=1; \
	echo "== phase 2/2: utils, environment, release, browser, chapter notebooks and assignment sources"; \
	$(VENV)/bin/python -m utils.exercises notebooks test-output/chapters >/dev/null; \
	$(TEST_ENV) $(VENV)/bin/python -m pytest -n $(JOBS) --dist loadfile --nbval-lax --nbval-cell-timeout=600 \
	    -p no:cacheprovider $(addprefix --ignore=,$(GRADING_TESTS)) tests test-output/chapters solutions $(PYTEST_ARGS) \
	    || status=1; \
	exit $$status

# The book: every chapter executed (cached: a rebuild after a prose edit takes seconds) without its exercises'
# solutions, and a page per assignment; publish book/_build/html on any static host (see README).
book: setup
	$(VENV)/bin/python book/build.py --jobs $(JOBS)

# ruff (configured in pyproject.toml): lint and format check of the .py files and the notebooks (seconds)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# unit tests only (seconds)
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow and not browser" tests $(PYTEST_ARGS)

# Regenerate the student release assignments/ from the nbgrader source in solutions/.
release: setup
	$(VENV)/bin/python -m grading release $(ASSIGNMENTS)

# Write tests/submissions/<a>/<bug>.ipynb from each manifest.json, to read them (git ignores them: tests build their own).
submissions: setup
	$(VENV)/bin/python -m grading submissions $(ASSIGNMENTS)

# Autograde a folder laid out as <student>/<assignment>/*.ipynb in sandboxed kernels on JOBS workers;
# write autograded/, feedback/, grades.csv, ungradable.csv and review.csv. Needs bubblewrap (sandbox-deps).
# DB=postgres: the gradebook on the course's PostgreSQL server (started if needed), for many writers;
# the default is the one-person sqlite gradebook.db.
DB ?= sqlite
autograde: setup sandbox-deps $(if $(filter postgres,$(DB)),postgres)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make autograde SUBMISSIONS=<dir> [JOBS=n] [DB=postgres]"; exit 2; }
	DLCV_GRADEBOOK=$(DB) $(VENV)/bin/python -m grading autograde "$(SUBMISSIONS)" --jobs $(JOBS)

# Seconds for a class of one assignment on 1 and 2 workers (PostgreSQL), the speed-up -> BENCHMARKS.md.
# BENCH_ARGS="--class-size 12" for a quick check.
BENCH_ARGS ?=
benchmark: setup sandbox-deps postgres-deps
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m grading.benchmark $(BENCH_ARGS)

# The PostgreSQL gradebook server: Debian's postgresql, one cluster in .postgres/ (python -m grading.postgres).
postgres-deps:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        (apt-get install -y -qq postgresql || (apt-get update -qq && apt-get install -y -qq postgresql)) >/dev/null; \
	    else echo "install PostgreSQL (Debian/Ubuntu: sudo apt-get install postgresql) for DB=postgres"; exit 1; fi; }

# Start (initdb the first time) the course's PostgreSQL server; postgres-stop stops it.
postgres: setup postgres-deps
	$(VENV)/bin/python -m grading.postgres start

postgres-stop: setup
	$(VENV)/bin/python -m grading.postgres stop

# The sandbox of graded kernels: Debian's bubblewrap (setpriv and prlimit come with util-linux).
sandbox-deps:
	@command -v bwrap >/dev/null || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        (apt-get install -y -qq bubblewrap || (apt-get update -qq && apt-get install -y -qq bubblewrap)) >/dev/null; \
	    else echo "install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap) to autograde"; exit 1; fi; }

# Write the student edition (chapters, releases, utils, its own README/Makefile/tests; no solution, hidden test
# or grading tool) into DEST as a new git repository with one commit. Publish DEST, never this repository.
student-edition: setup
	@test -n "$(DEST)" || { echo "usage: make student-edition DEST=<dir>   (e.g. DEST=../dlcv-student)"; exit 2; }
	$(VENV)/bin/python -m grading student-edition "$(DEST)"

clean:
	rm -rf autograded feedback submitted gradebook.db grades.csv test-output book/_build

# A whole class on one machine (docs/hub.md): JupyterHub on 127.0.0.1:$(HUB_PORT), a unix account per student
# and instructor, nbgrader's exchange, the gradebook on the course's PostgreSQL. Run as root; run it again to
# add students. Try-out login: DummyAuthenticator with the password it prints (swap in OAuth/LTI for a class).
HUB_ROOT ?= /srv/dlcv-hub
HUB_PORT ?= 8000
INSTRUCTORS ?= instructor
STUDENTS ?= student01,student02,student03
hub: setup hub-deps postgres-deps sandbox-deps
	@test "$$(id -u)" = 0 || { echo "make hub creates unix accounts: run it as root (sudo make hub)"; exit 1; }
	$(VENV)/bin/python -m grading.postgres start
	$(VENV)/bin/python -m grading.hub setup --root "$(HUB_ROOT)" --instructors "$(INSTRUCTORS)" --students "$(STUDENTS)"
	$(VENV)/bin/python -m grading.hub start --root "$(HUB_ROOT)" --port $(HUB_PORT)

# The hub's proxy: configurable-http-proxy from npm, pinned by hub/package-lock.json, into hub/node_modules.
hub-deps:
	@command -v npm >/dev/null || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        (apt-get install -y -qq nodejs npm || (apt-get update -qq && apt-get install -y -qq nodejs npm)) >/dev/null; \
	    else echo "install Node.js and npm (Debian/Ubuntu: sudo apt-get install nodejs npm) for the hub"; exit 1; fi; }
	@test -x hub/node_modules/.bin/configurable-http-proxy || npm ci --prefix hub --no-audit --no-fund --loglevel=error
