"""Student feedback without the hidden tests (the trap of nbgrader issue #917).

nbgrader's autograde puts the hidden tests back into each test cell, and ``generate_feedback``
renders that notebook, so by default the feedback HTML shows the hidden test code twice: in the
cell source and in the traceback. :class:`HideHiddenTests` runs inside ``generate_feedback``
(registered in ``nbgrader_config.py``) and, for every cell with a hidden-test region,

* removes the region from the source (as ``ClearHiddenTests`` does for the release), and
* shortens each error output to its last line, e.g.
  ``AssertionError: conv2d_backward (stride 3, padding 2): dw: worst at index (1, 0, 2, 1): expected 0.31, got 0.12``,
  so the student still learns which case failed and by how much, but not how it was tested.

The autograded notebooks keep everything, for the instructor.
"""

from __future__ import annotations

import re

from nbconvert.exporters.exporter import ResourcesDict
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class HideHiddenTests(NbGraderPreprocessor):
    """Remove hidden-test code and the tracebacks that quote it from the feedback notebook."""

    def preprocess(self, nb: NotebookNode, resources: ResourcesDict) -> tuple[NotebookNode, ResourcesDict]:
        clear = ClearHiddenTests(parent=self)
        for cell in nb.cells:
            if cell.cell_type != "code" or clear.begin_test_delimeter not in cell.source:
                continue
            clear._remove_hidden_test_region(cell)
            cell.source = cell.source.rstrip() + "\n# (hidden tests ran here; their code is not shown)"
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    last = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
                    output["traceback"] = [_ANSI.sub("", last)]
        return nb, resources
