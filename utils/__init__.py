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

import importlib
from typing import Any

__version__ = "1.0.0"

# public name -> submodule that defines it
_EXPORTS = {
    "data": [
        "load_mnist",
        "mnist_loaders",
        "load_cifar10",
        "sample_photos",
        "ShapesDataset",
        "detection_collate",
        "SHAPE_CLASSES",
    ],
    "train": ["set_seed", "get_device", "fit", "evaluate", "History", "count_parameters", "count_flops"],
    "plot": ["show_images", "plot_history", "draw_boxes", "plot_layer_stats", "record_layer_stats"],
    "gradcheck": ["rel_error", "numeric_gradient", "gradient_report", "GradientReport"],
    "testing": ["assert_close", "forbid", "ForbiddenFunctionError", "warnings_to_stdout"],
    "convmath": ["conv_output_size", "conv_cost", "ConvCost"],
    "widgets": ["interactive_or_static", "under_test"],
    "models": ["mlp", "SmallCNN"],
    "detection": ["coco_evaluate", "coco_matches", "COCO_STAT_NAMES"],
}
_LOOKUP = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_LOOKUP) + sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LOOKUP:
        module = importlib.import_module(f"{__name__}.{_LOOKUP[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'utils' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
