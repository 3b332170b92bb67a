"""Sphinx configuration of the course book (``make book``; the pages are staged by ``book/build.py``).

Why Sphinx + MyST-NB + sphinx-book-theme: all three are maintained (the Executable Books project), install from
PyPI with everything they need, and build **offline** — Jupyter Book 2 (mystmd) downloads its site theme at build
time, which this course's machines cannot. MyST-NB executes notebooks through jupyter-cache, so a rebuild after a
prose edit re-executes nothing; MathJax comes from the ``sphinx-mathjax-offline`` package instead of a CDN, so the
maths renders for a reader without a network too. Search is Sphinx's own (a static index, no server).
"""

import importlib.util
import os
from pathlib import Path

project = "Deep Learning for Computer Vision"
author = "the course's authors"
copyright = "the course's authors, MIT licence"

extensions = ["myst_nb"]
# MathJax 3 from the sphinx-mathjax-offline package, served from _static/mathjax (its files, not its Sphinx
# extension, which does not declare itself safe for parallel builds)
_MATHJAX = Path(importlib.util.find_spec("sphinx-mathjax-offline").origin).parent / "static"
mathjax_path = "mathjax/tex-chtml.js"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # chapters start sections at ## under a # title, as notebooks do

# execution: cached on the code cells, every error fails the build, a chapter has the CPU budget of the course
nb_execution_mode = "cache"  # book/build.py fills the cache first, in parallel
nb_execution_cache_path = str(Path(__file__).resolve().parent.parent / ".jupyter_cache")  # book/_build/.jupyter_cache
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_excludepatterns = ["assignments/*"]  # the releases are tasks with empty stubs: shown, not run
if os.environ.get(
    "BOOK_EXECUTE"
):  # only these chapters executed (book/build.py: executed); the others shown as they are
    nb_execution_excludepatterns += [
        f"notebooks/{p.name}"
        for p in (Path(__file__).resolve().parent / "notebooks").glob("*.ipynb")
        if not p.match(os.environ["BOOK_EXECUTE"])
    ]
nb_merge_streams = True
nb_output_stderr = "remove"  # progress bars and warnings go to stderr: not what a reader needs

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "sphinx_book_theme"
html_title = project
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "home_page_in_toc": True,
}
html_static_path = [str(_MATHJAX)]
nb_ipywidgets_js: dict = {}  # no widget manager from a CDN: the book shows the static figures
html_last_updated_fmt = None
