"""Parameter and FLOP counts, computed on the meta device (no memory, seconds for 1024×2048).

Conventions (``unit``), checked against Table 3 of MasKD (ICLR 2023):

* ``"paper"``: what the paper's "FLOPs" column is, namely the output of hunto/MasKD
  ``segmentation/utils/flops.py::cal_multi_adds`` (from CIRKD) on one 1024×2048 image with the aux
  head attached: multiply-accumulates (1 per MAC) of ``nn.Conv2d`` layers only (no BN, ReLU, pooling,
  interpolation) whose output size is computed as ``(H + 2·padding − k) // stride + 1``, which ignores
  dilation. For a dilated 3×3 conv (padding = dilation = d) that counts an (H + 2d − 2) × (W + 2d − 2)
  output instead of H × W, so dilated backbones and the ASPP are overcounted (e.g. DeepLabV3-R101:
  2371.7 "G" vs 2063.3 GMACs actually performed). Reproduces 2371.7 / 572.0 / 128.9 / 507.3 exactly.
* ``"mac"``: true multiply-accumulates, ``FlopCounterMode`` total / 2.
* ``"flop"``: ``FlopCounterMode`` total (2 FLOPs per MAC; convolutions and matmuls).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmark.errors import UserError
from benchmark.models.segmentors import build_segmentor

Unit = Literal["paper", "mac", "flop"]
UNITS: tuple[str, ...] = ("paper", "mac", "flop")


def count_params_m(model: nn.Module) -> float:
    """All parameters in millions: backbone, decode head and aux head (as the paper, which builds the
    ResNet models with ``aux=True``), including BN affine weights; buffers (running stats) excluded."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def _paper_conv_macs(conv: nn.Conv2d, height: int, width: int) -> int:
    """CIRKD ``measure_layer``: MACs with a dilation-ignorant output size."""
    (kh, kw), (ph, pw), (sh, sw) = conv.kernel_size, conv.padding, conv.stride
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    return conv.in_channels * conv.out_channels * kh * kw * out_h * out_w // conv.groups


def count_gflops(model: nn.Module, height: int, width: int, unit: Unit = "paper") -> float:
    """G(FL)OPs of ``model`` on one ``3×height×width`` image, in ``unit`` (see module docstring).

    The input is created on the device of the model's first parameter, so a model built under
    ``torch.device("meta")`` is counted without allocating or computing anything.
    """
    if unit not in UNITS:
        raise UserError(f"unknown FLOP unit {unit!r}; valid: {', '.join(UNITS)}")
    device = next(model.parameters()).device
    paper_macs = 0

    def hook(conv: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal paper_macs
        paper_macs += _paper_conv_macs(conv, *args[0].shape[-2:])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, height, width, device=device))
    finally:
        for handle in handles:
            handle.remove()
    flops = {"paper": paper_macs, "mac": counter.get_total_flops() / 2, "flop": counter.get_total_flops()}
    return flops[unit] / 1e9


def measure_gflops(
    name: str, height: int = 1024, width: int = 2048, unit: Unit = "paper", **build_kwargs: Any
) -> float:
    """G(FL)OPs of segmentor ``name`` (eval mode, built on the meta device, one image), in ``unit``.

    Default ``unit="paper"`` reproduces MasKD Table 3 (CIRKD multi-adds, aux head included); use
    ``"mac"``/``"flop"`` for the operations actually performed. ``build_kwargs`` go to ``build_segmentor``.
    """
    with torch.device("meta"):
        model = build_segmentor(name, **build_kwargs)
    return count_gflops(model.eval(), height, width, unit)
