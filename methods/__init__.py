"""Distillation methods: one registry of methods that tap any nn.Module by module name."""

from methods.base import Batch, Distiller, Stage
from methods.registry import build_method, list_methods, method_options, register_method

__all__ = ["Batch", "Distiller", "Stage", "build_method", "list_methods", "method_options", "register_method"]
