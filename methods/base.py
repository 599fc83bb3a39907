"""The `Distiller` interface every method implements; it never touches the trainer.

Life cycle, driven by `benchmark.engine.distill`:
1. `build_method(name, **options)` makes an unbound method from its validated `Options`.
2. The engine resolves the method's logical taps (`student_taps` / `teacher_taps`, e.g. "feat") to module
   paths, probes both networks once and calls `bind(student_shapes, teacher_shapes)`: the method builds
   its own modules (adapters, projectors, discriminators) for those shapes.
3. Optionally `prepare(stage)` runs a cached stage before student training (MasKD token learning).
4. Every step: `forward(batch, student, teacher)` gets the tapped tensors (teacher ones computed under
   `torch.no_grad()`) and returns named, already-weighted loss terms; `after_step()` may run the method's
   own optimizer (a discriminator) on tensors it kept from `forward`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Batch:
    """What a method may see of the current batch.

    Segmentation: `images` N×3×H×W, `labels` N×H×W train ids. Detection: `images` a list of 3×H×W tensors in
    [0, 1] and `labels` a list of target dicts (`boxes` xyxy in image pixels, `labels` 1..K, `image_id`).
    """

    images: Any
    labels: Any


class Distiller(nn.Module, ABC):
    """Base class of every distillation method (see the module docstring for the life cycle)."""

    name: ClassVar[str] = ""
    student_taps: ClassVar[tuple[str, ...]] = ()
    teacher_taps: ClassVar[tuple[str, ...]] = ()
    # Read on both sides when both networks publish them (e.g. the aux logits MobileNetV2 lacks).
    optional_taps: ClassVar[tuple[str, ...]] = ()

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, options: Any) -> None:
        super().__init__()
        self.options = options

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Build the method's modules for these tapped shapes (N×C×H×W). Default: nothing to build."""

    @abstractmethod
    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named, already-weighted loss terms from the tapped tensors of both networks."""

    def stage(self, teacher: nn.Module) -> Stage | None:
        """A training stage to run (and cache) before student training, e.g. MasKD token learning."""
        return None

    @classmethod
    def has_stage(cls) -> bool:
        """Whether this method may run a pre-training stage (its key then includes the stage schedule)."""
        return cls.stage is not Distiller.stage

    def load_stage(self, state: dict[str, torch.Tensor]) -> None:
        """Take the trained stage module's state dict (from the run or the cache)."""

    def optimized_parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, lr multiplier) groups the student's optimizer trains. Default: all trainable at 1×."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [(params, 1.0)] if params else []

    def after_step(self) -> dict[str, float]:
        """Called after each student optimizer step; returns scalars to log. Default: nothing."""
        return {}

    def extra_repr(self) -> str:
        return repr(self.options)


@dataclass(frozen=True)
class Stage:
    """A pre-training stage the engine runs with its ordinary trainer and caches by key.

    `model` maps images to an outputs dict and is what gets trained and evaluated (mIoU on "out");
    `loss(labels, outputs)` returns named terms; `schedule` overrides the preset's stage schedule;
    `config` is everything else that decides the result (hashed into the cache key).
    """

    name: str
    model: nn.Module
    loss: nn.Module
    schedule: dict[str, Any]
    config: dict[str, Any]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BN with running statistics) and no gradients: the teacher as the official code runs it."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class BatchStatisticsNorm(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with the current batch's statistics and never updates its buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def use_batch_statistics(model: nn.Module) -> int:
    """Turn every ``nn.BatchNorm2d`` of ``model`` into a ``BatchStatisticsNorm`` in place (same parameters, buffers,
    hooks and state-dict keys); returns how many were turned.

    For a teacher trained with small batches in train-mode BN: its features were shaped by batch statistics,
    and its running statistics can put single images far off scale (the official segmentation scripts also
    leave the teacher's BN in train mode). FrozenBN and other norms are left as they are.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = BatchStatisticsNorm  # same tensors, hooks and state-dict keys
            swapped += 1
    return swapped


class HoldsTeacher(nn.Module):
    """Keeps a frozen teacher outside the module tree: not in the state dict, not switched to train mode by
    `.train()`, not seen by optimizers; it still follows `.to()` / `.cuda()` with its holder."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self._held_teacher = [freeze(teacher)]

    @property
    def teacher(self) -> nn.Module:
        return self._held_teacher[0]

    def _apply(self, fn, recurse: bool = True):  # nn.Module's private hook behind .to(), .cuda(), .float()
        self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)


def check_same_shape(what: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Raise a clear error when a method needs equal student/teacher tap shapes and they differ."""
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student tap has shape {tuple(student.shape)} but teacher tap has "
                         f"{tuple(teacher.shape)}; the method needs equal shapes (check the taps, or use a "
                         "method with an adapter).")
