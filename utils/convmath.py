"""Convolution arithmetic: output sizes, parameters, multiply-accumulates, storage."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["conv_output_size", "conv_cost", "ConvCost"]

IntPair = int | tuple[int, int]


def _pair(v: IntPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length along one axis: ``floor((W + 2P - D(F - 1) - 1) / S) + 1``.

    With ``dilation=1`` this is the lecture's ``(W - F + 2P) / S + 1`` (rounded down).
    """
    effective = dilation * (kernel - 1) + 1
    if size + 2 * padding < effective:
        raise ValueError(f"kernel of effective size {effective} does not fit in {size} + 2*{padding}")
    return (size + 2 * padding - effective) // stride + 1


@dataclass(frozen=True)
class ConvCost:
    """Cost of one ``Conv2d`` on one image."""

    out_shape: tuple[int, int, int]  # (C_out, H', W')
    params: int  # weights + biases
    macs: int  # multiply-accumulates = C_out * H' * W' * (C_in / groups) * K_h * K_w
    output_storage: int  # number of output activations C_out * H' * W'

    @property
    def flops(self) -> int:
        """2 FLOPs per MAC, the convention of ``torch.utils.flop_counter``."""
        return 2 * self.macs


def conv_cost(
    in_channels: int,
    out_channels: int,
    input_size: IntPair,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    bias: bool = True,
) -> ConvCost:
    """Shape, parameters, MACs and output storage of
    ``nn.Conv2d(in, out, kernel, stride, padding, dilation, groups, bias)``
    applied to a ``Tensor[1, in_channels, H, W]``.

    Example (the lecture's): ``conv_cost(3, 10, 32, 5, padding=2)`` gives 760 parameters and 768,000 MACs.
    """
    if in_channels % groups or out_channels % groups:
        raise ValueError("in_channels and out_channels must both be divisible by groups")
    (h, w), (kh, kw), (sh, sw) = _pair(input_size), _pair(kernel_size), _pair(stride)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    ho, wo = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    weights = out_channels * (in_channels // groups) * kh * kw
    macs = out_channels * ho * wo * (in_channels // groups) * kh * kw
    return ConvCost((out_channels, ho, wo), weights + (out_channels if bias else 0), macs, out_channels * ho * wo)
