"""Model code runs on any device: no tensor is created on the CPU behind a module's back.

CI has no GPU, so a ``torch.zeros(shape)`` inside ``forward`` (which lands on the CPU and fails as soon as the model
and its input are on CUDA) would never show. This test reads the code instead: in every method of every
``nn.Module`` subclass defined in the chapters, the assignment sources, ``utils`` and ``grading``, a call of a torch
factory function (``torch.zeros``, ``arange``, ``randn``, ``tensor``, ...) must say where the tensor goes
(``device=``), or be one of the ``*_like`` functions, which follow their argument. ``__init__`` is exempt: what it
creates becomes a parameter or a buffer, which ``module.to(device)`` moves.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from grading.paths import REPO

FACTORIES = frozenset(
    "zeros ones empty full arange range linspace logspace eye rand randn randint randperm tensor as_tensor "
    "tril_indices triu_indices".split()
)
SOURCES = sorted(
    [*REPO.glob("notebooks/*.ipynb"), *REPO.glob("solutions/*/*.ipynb"), *REPO.glob("utils/*.py")]
    + [*REPO.glob("grading/*.py"), *REPO.glob("grading/hidden/*.py")]
)


def code_of(path: Path) -> str:
    if path.suffix != ".ipynb":
        return path.read_text()
    cells = nbformat.read(path, as_version=4).cells
    lines = (line for c in cells if c.cell_type == "code" for line in c.source.split("\n"))
    # IPython magics and shell escapes are not Python
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def _is_module_class(node: ast.ClassDef, known: set[str]) -> bool:
    for base in node.bases:
        name = ast.unparse(base)
        if name in known or name.startswith(("nn.", "torch.nn.")) or name.endswith("Module"):
            return True
    return False


def _factory_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "torch":
        return func.attr if func.attr in FACTORIES else None
    return None


def device_blind_calls(code: str) -> Iterator[tuple[str, int, str]]:
    """(class.method, line, call) for every factory call without ``device=`` in a module's method."""
    tree = ast.parse(textwrap.dedent(code))
    known: set[str] = set()
    for node in ast.walk(tree):  # walk order visits outer classes first: subclasses of course classes count too
        if isinstance(node, ast.ClassDef) and _is_module_class(node, known):
            known.add(node.name)
            for method in node.body:
                if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef) or method.name == "__init__":
                    continue
                for call in ast.walk(method):
                    if isinstance(call, ast.Call) and _factory_name(call):
                        keywords = {k.arg for k in call.keywords}
                        if "device" not in keywords and None not in keywords:  # None: **kwargs
                            yield f"{node.name}.{method.name}", call.lineno, ast.unparse(call)[:80]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_methods_create_tensors_on_the_inputs_device(path):
    found = list(device_blind_calls(code_of(path)))
    assert not found, f"{path.name}: tensors created without device= inside module methods: {found}"


def test_the_check_finds_a_cpu_tensor_in_forward_and_accepts_the_fixes():
    blind = """
class WindowAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("index", torch.arange(4))  # a buffer: moved by .to(device)

    def forward(self, x, mask):
        blocked = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
        return x + blocked

class Shifted(WindowAttention):
    def forward(self, x):
        return x + torch.arange(x.shape[-1])
"""
    assert [(where, call.split("(")[0]) for where, _, call in device_blind_calls(blind)] == [
        ("WindowAttention.forward", "torch.zeros"),
        ("Shifted.forward", "torch.arange"),
    ]
    fixed = blind.replace("torch.zeros(mask.shape)", "torch.zeros(mask.shape, device=x.device)")
    fixed = fixed.replace("torch.arange(x.shape[-1])", "torch.zeros_like(x)")
    assert list(device_blind_calls(fixed)) == []
