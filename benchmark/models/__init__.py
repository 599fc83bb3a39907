"""Segmentation models of MasKD Table 3 (DeepLabV3 / PSPNet on dilated ResNet and MobileNetV2)."""

from benchmark.models.backbones import BACKBONES, Backbone, build_backbone
from benchmark.models.complexity import count_gflops, count_params_m, measure_gflops
from benchmark.models.segmentors import (
    BACKBONE_OF,
    MODELS,
    Segmentor,
    build_segmentor,
    list_models,
    load_backbone_weights,
)

__all__ = [
    "BACKBONES",
    "BACKBONE_OF",
    "MODELS",
    "Backbone",
    "Segmentor",
    "build_backbone",
    "build_segmentor",
    "count_gflops",
    "count_params_m",
    "list_models",
    "load_backbone_weights",
    "measure_gflops",
]
