"""Small reference networks shared by several chapters (the chapters build the interesting ones themselves)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["mlp", "SmallCNN"]


def mlp(
    sizes: Sequence[int],
    activation: type[nn.Module] = nn.ReLU,
    batchnorm: bool = False,
    dropout: float = 0.0,
    flatten: bool = True,
) -> nn.Sequential:
    """A multi-layer perceptron ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Hidden layers are ``Linear -> [BatchNorm1d] -> activation -> [Dropout]``; the last layer is a bare
    ``Linear`` (logits). With ``flatten=True`` an input ``Tensor[B, C, H, W]`` is flattened first.

    Example: ``mlp([784, 256, 256, 10], nn.Tanh)`` for MNIST.
    """
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            if batchnorm:
                layers.append(nn.BatchNorm1d(fan_out))
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """A LeNet-sized CNN for 28x28 digits: two conv-[norm]-ReLU-pool stages and a linear classifier.

    Input ``Tensor[B, in_channels, 28, 28]`` -> logits ``Tensor[B, num_classes]``.

    The normalisation after each convolution: ``norm(channels)`` if given (any layer class or factory, e.g. a
    ``BatchNorm2d`` of your own or ``lambda c: nn.GroupNorm(4, c)``), else ``nn.BatchNorm2d`` with
    ``batchnorm=True``, else none (an ``nn.Identity`` in its place, so the layers' indices and state_dict keys
    are the same either way).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        batchnorm: bool = False,
        norm: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if norm is not None and batchnorm:
            raise ValueError("SmallCNN: pass either batchnorm=True or norm=..., not both")
        if norm is None:
            norm = nn.BatchNorm2d if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            norm(width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(width, 2 * width, 3, padding=1),
            norm(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
        )
        self.classifier = nn.Linear(2 * width * 7 * 7, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # [B, 2w, 7, 7]
        x = torch.flatten(x, 1)  # [B, 2w*49]
        return self.classifier(x)  # [B, num_classes]
