"""Shared helpers of the *Deep Learning for Computer Vision* course.

Every chapter notebook and every assignment imports this one package; nothing
graded lives here. The submodules are imported lazily, so ``import utils`` is
cheap (it does not import torch) and can run at interpreter start-up, which is
how the course keeps a student's stray ``utils.py`` from shadowing it (see
``utils/_guard.py``).

    >>> import utils
    >>> utils.set_seed(0)                     # utils.train.set_seed
    >>> x, y = utils.load_mnist("train")      # utils.data.load_mnist
"""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path
from typing import Any

__version__ = "1.0.0"


# public name -> submodule that defines it, read from each submodule's ``__all__`` without importing it
# (importing would pull in torch), once, on the first look-up: ``import utils`` runs at every interpreter
# start-up (``utils/_guard.py``) and stays cheap. Each submodule keeps a literal ``__all__``; a test checks.
@functools.cache
def _exports() -> dict[str, str]:
    lookup: dict[str, str] = {}
    for path in sorted(Path(__file__).parent.glob("[!_]*.py")):
        lookup[path.stem] = path.stem
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                lookup.update(dict.fromkeys(ast.literal_eval(node.value), path.stem))
    return lookup


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return sorted(_exports())
    module = _exports().get(name)
    if module is None:
        raise AttributeError(f"module 'utils' has no attribute {name!r}")
    if module == name:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(_exports())
