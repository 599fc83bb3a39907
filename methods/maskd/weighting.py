"""Mask weighting module of MasKD (paper §4.1 and appendix A.2; official ``MaskModule.prob``)."""

from __future__ import annotations

import math

from torch import Tensor, nn


class MaskWeighting(nn.Module):
    """Per-image token weights w ∈ R^{N×T} (paper A.2, used in eqs. 7–9).

    conv3×3 (C→C, padding 1, bias) → global average pool → conv1×1 (C→T, bias) → softmax over tokens, with no
    nonlinearity in between, as in the official code. Both convs are initialised normal with std
    sqrt(2 / (k·k·C_out)) (fan-out) and zero bias. The layers sit in ``prob`` (indices 0, 1, 2) like the
    official ``MaskModule.prob``, so released weights load after stripping their prefix.
    """

    def __init__(self, channels: int, num_tokens: int) -> None:
        super().__init__()
        self.prob = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, num_tokens, kernel_size=1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)

    def forward(self, feat: Tensor) -> Tensor:
        """Weights for the masks of ``feat`` (N×C×H×W, the teacher tensor): N×T, each row summing to 1."""
        return self.prob(feat).flatten(1).softmax(1)
