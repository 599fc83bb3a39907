"""Decode heads (DeepLabV3 ASPP, PSPNet pyramid pooling) and the auxiliary FCN head.

All heads are ``nn.Sequential`` ending in ``bottleneck`` (conv-BN-ReLU) → ``dropout`` → ``classifier``
(1×1 conv with bias), so ``<head>.dropout`` is the pre-classifier feature and ``<head>.classifier`` the
logits, as in hunto/MasKD ``segmentation/models``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.ops.misc import Conv2dNormActivation


def _classifier_tail(
    body: OrderedDict[str, nn.Module], in_channels: int, channels: int, num_classes: int
) -> nn.Sequential:
    body["bottleneck"] = Conv2dNormActivation(in_channels, channels, 3)
    body["dropout"] = nn.Dropout(0.1)
    body["classifier"] = nn.Conv2d(channels, num_classes, 1)
    return nn.Sequential(body)


def aspp_head(
    in_channels: int, channels: int, num_classes: int, rates: tuple[int, int, int]
) -> nn.Sequential:
    """DeepLabV3 head: ASPP (1×1, three dilated 3×3, image pooling; 1×1 projection + dropout 0.5),
    then 3×3 conv-BN-ReLU, dropout 0.1 and the classifier."""
    aspp = ASPP(in_channels, list(rates), channels)
    return _classifier_tail(OrderedDict(aspp=aspp), channels, channels, num_classes)


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling: bins 1, 2, 3, 6, each 1×1 conv-BN-ReLU to ``in/4`` channels, upsampled
    bilinearly (align_corners=True) and concatenated with the input (→ ``2·in`` channels)."""

    def __init__(self, in_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), Conv2dNormActivation(in_channels, in_channels // 4, 1))
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size, mode="bilinear", align_corners=True) for s in self.stages]
        return torch.cat([x, *pooled], dim=1)


def psp_head(in_channels: int, channels: int, num_classes: int) -> nn.Sequential:
    """PSPNet head: pyramid pooling, 3×3 conv-BN-ReLU (2·in → channels), dropout 0.1, classifier."""
    ppm = PyramidPooling(in_channels)
    return _classifier_tail(OrderedDict(ppm=ppm), 2 * in_channels, channels, num_classes)


def fcn_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """Auxiliary FCN head: 3×3 conv-BN-ReLU to ``in/4`` channels, dropout 0.1, classifier."""
    return _classifier_tail(OrderedDict(), in_channels, in_channels // 4, num_classes)
