"""Dilated ResNet (v1s deep stem or torchvision stem) and MobileNetV2 backbones.

Layouts follow hunto/MasKD ``segmentation/models/base_models`` (from winycg/CIRKD): the deep stem is
``conv1`` 3→64 (stride 2), ``conv2`` 64→64, ``conv3`` 64→128, each 3×3 with BN/ReLU, then max-pool, so
``layer1`` starts from 128 channels. State-dict keys equal the official ``resnet*-imagenet.pth`` files
(deep stem) or torchvision's ImageNet files (``stem="torchvision"``; MobileNetV2 always uses
torchvision's layout). Dilation changes strides/paddings only, never parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3

from benchmark.errors import UserError

STEMS = ("deep", "torchvision")
_RESNETS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnext101_64x4d": (Bottleneck, (3, 4, 23, 3)),  # torchvision stem only (the detection teachers' X101)
}
_GROUPS: dict[str, dict[str, int]] = {"resnext101_64x4d": {"groups": 64, "base_width": 4}}
BACKBONES = (*_RESNETS, "mobilenetv2")


class Backbone(nn.Sequential):
    """Feature extractor whose forward returns the last feature map.

    Attributes: ``out_channels`` (of that map), ``last_stage`` (module path of the last stage),
    ``aux_stage``/``aux_channels`` (child feeding an auxiliary head, or None), ``unused_prefixes``
    (key prefixes of a classification checkpoint that the backbone does not have).
    """

    def __init__(
        self,
        modules: OrderedDict[str, nn.Module],
        out_channels: int,
        last_stage: str,
        aux_stage: str | None,
        aux_channels: int | None,
        unused_prefixes: tuple[str, ...],
    ) -> None:
        super().__init__(modules)
        self.out_channels = out_channels
        self.last_stage = last_stage
        self.aux_stage = aux_stage
        self.aux_channels = aux_channels
        self.unused_prefixes = unused_prefixes

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Return (output of ``aux_stage`` or None, last feature map)."""
        aux = None
        for name, module in self.named_children():
            x = module(x)
            if name == self.aux_stage:
                aux = x
        return aux, x


def dilate_stage(stage: Iterable[nn.Module], dilation: int) -> None:
    """Replace a stage's stride 2 by dilation, in place (CIRKD ``_nostride_dilate`` semantics).

    Every conv gets stride 1; the 3×3 conv that was strided keeps the previous rate ``dilation // 2``
    and all later 3×3 convs of the stage get ``dilation`` (padding = dilation keeps the size).
    """
    for unit in stage:
        for conv in unit.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            strided = conv.stride == (2, 2)
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                rate = dilation // 2 if strided else dilation
                conv.dilation, conv.padding = (rate, rate), (rate, rate)


def _stage_dilations(output_stride: int) -> tuple[int, int]:
    """Dilation of the last two stages (stride 16 and 32 stages) for an output stride."""
    rates = {8: (2, 4), 16: (1, 2), 32: (1, 1)}
    if output_stride not in rates:
        raise UserError(f"output_stride must be one of {sorted(rates)}, got {output_stride}")
    return rates[output_stride]


def _stem(stem: str) -> OrderedDict[str, nn.Module]:
    if stem == "deep":
        layers: list[tuple[str, nn.Module]] = []
        for i, (cin, cout) in enumerate(((3, 64), (64, 64), (64, 128)), start=1):
            layers += [
                (f"conv{i}", conv3x3(cin, cout, stride=2 if i == 1 else 1)),
                (f"bn{i}", nn.BatchNorm2d(cout)),
                (f"relu{i}", nn.ReLU(inplace=True)),
            ]
        return OrderedDict(layers)
    return OrderedDict(
        conv1=nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        bn1=nn.BatchNorm2d(64),
        relu=nn.ReLU(inplace=True),
    )


def _make_layer(
    block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int, stride: int,
    **grouping: int,
) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            conv1x1(inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
        )
    layers = [block(inplanes, planes, stride, downsample, **grouping)]
    layers += [block(planes * block.expansion, planes, **grouping) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _resnet(name: str, output_stride: int, stem: str, zero_init_residual: bool) -> Backbone:
    block, depths = _RESNETS[name]
    modules = _stem(stem)
    modules["maxpool"] = nn.MaxPool2d(3, stride=2, padding=1)
    inplanes = 128 if stem == "deep" else 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), depths, strict=True), start=1):
        modules[f"layer{i}"] = _make_layer(block, inplanes, planes, blocks, stride=1 if i == 1 else 2,
                                           **_GROUPS.get(name, {}))
        inplanes = planes * block.expansion
    stages = (modules["layer3"], modules["layer4"])
    for stage, rate in zip(stages, _stage_dilations(output_stride), strict=True):
        if rate > 1:
            dilate_stage(stage, rate)
    for m in modules.values():
        for conv in m.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if zero_init_residual:
        for m in modules.values():
            for unit in m.modules():
                if isinstance(unit, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(unit.bn3.weight if isinstance(unit, Bottleneck) else unit.bn2.weight)
    return Backbone(modules, inplanes, "layer4", "layer3", inplanes // 2, unused_prefixes=("fc.",))


def _mobilenetv2(output_stride: int) -> Backbone:
    """torchvision MobileNetV2 features without the final 1×1 conv to 1280 channels (as CIRKD)."""
    features = mobilenet_v2().features[:-1]  # blocks 7-13: stride-16 stage, 14-17: stride-32 stage
    for stage, rate in zip((features[7:14], features[14:]), _stage_dilations(output_stride), strict=True):
        if rate > 1:
            dilate_stage(stage, rate)
    unused = ("classifier.", "features.18.")
    return Backbone(OrderedDict(features=features), 320, "features.17", None, None, unused)


def build_backbone(name: str, output_stride: int = 32, stem: str = "deep",
                   zero_init_residual: bool = False) -> Backbone:
    """Build ``resnet18``/``resnet50``/``resnet101``/``mobilenetv2`` returning the last feature map.

    ``output_stride`` 32 for classification pretraining, 16 or 8 for segmentation. ``stem`` ("deep" or
    "torchvision") applies to ResNets; MobileNetV2 has a single (torchvision) layout. ``zero_init_residual``
    (ResNets) starts the last BN of every residual branch at γ = 0, so each block begins as the identity
    (Goyal et al., 2017; torchvision's option of the same name): deep ResNets then train much faster from
    scratch. Loaded weights overwrite it, so it matters only without real pretrained weights.
    """
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    if stem not in STEMS:
        raise UserError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    if name == "mobilenetv2":
        return _mobilenetv2(output_stride)
    if name in _GROUPS and stem != "torchvision":
        raise UserError(f"{name} exists with torchvision's stem only (stem='torchvision').")
    return _resnet(name, output_stride, stem, zero_init_residual)
