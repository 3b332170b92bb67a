"""The first code cell of every chapter: seed, device and CPU threads in one call.

>>> device = utils.start_notebook(seed=0)  # doctest: +SKIP
torch 2.14.1 | torchvision 0.29.1 | device cpu | 1 CPU thread | seed 0
"""

from __future__ import annotations

import torch

from .train import get_device, set_seed

__all__ = ["start_notebook"]


def start_notebook(seed: int = 0, threads: int | None = 1) -> torch.device:
    """Seed Python, NumPy and torch (:func:`utils.set_seed`), pick the device (:func:`utils.get_device`), limit
    torch's CPU threads, print one line saying so, and return the device.

    ``threads=1`` is the course's default because its networks are small: for convolutions of a few channels one
    thread is about as fast as many, timings are steadier, and two notebooks tested side by side (``make test``
    runs two at once on two cores) do not fight over the cores. Pass ``threads=None`` to keep torch's own choice
    (all cores) for a larger experiment of your own.
    """
    set_seed(seed)
    device = get_device()
    if threads is not None:
        torch.set_num_threads(threads)
    import torchvision

    count = torch.get_num_threads()
    print(
        f"torch {torch.__version__} | torchvision {torchvision.__version__} | device {device} | "
        f"{count} CPU thread{'s' if count != 1 else ''} | seed {seed}"
    )
    return device
