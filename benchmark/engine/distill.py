"""Glue between a `Distiller` and the trainer: frozen teacher, taps, shape probe.

`DistillationLoss` is the `extra` module of a `TrainUnit`. The trainer sees only named loss terms,
parameter groups and an `after_step` hook; it knows nothing about teachers or methods.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.engine.task_loss import ExtraLoss
from benchmark.engine.teacher_cache import TeacherOutputCache
from methods.base import Batch, Distiller, HoldsTeacher
from methods.taps import TapRecorder, resolve_taps


@torch.no_grad()
def probe_shapes(model: nn.Module, taps: dict[str, str], image_size: tuple[int, int]) -> dict[str, torch.Size]:
    """Shapes of the tapped tensors for a batch of 2 images of `image_size` (model left in its mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with TapRecorder(model, taps) as recorder:
        model(torch.zeros(2, 3, *image_size, device=device))
        shapes = {name: t.shape for name, t in recorder.collect(list(taps)).items()}
    model.train(was_training)
    return shapes


class DistillationLoss(ExtraLoss, HoldsTeacher):
    """Runs the frozen teacher under `torch.no_grad()`, reads both networks' taps and calls the method.

    The teacher is held outside the module tree (`HoldsTeacher`): not in the run's checkpoint, not switched
    to train mode by the trainer, not seen by the optimizer.
    """

    def __init__(self, method: Distiller, student: nn.Module, teacher: nn.Module, image_size: tuple[int, int],
                 student_overrides: dict[str, str] | None = None,
                 teacher_overrides: dict[str, str] | None = None,
                 teacher_cache: tuple[Path, str] | None = None,
                 teacher_forward: Callable[[nn.Module, Any], Any] | None = None) -> None:
        super().__init__(teacher)
        # How the teacher runs on a batch: the whole model by default; a detector only needs its backbone
        # and neck (`benchmark.models.detectors.detector_features`), not proposals and NMS.
        self.teacher_forward = teacher_forward or (lambda model, images: model(images))
        optional = [name for name in method.optional_taps
                    if all(name in {**getattr(model, "tap_points", {}), **(overrides or {})}
                           for model, overrides in ((student, student_overrides), (teacher, teacher_overrides)))]
        student_paths = resolve_taps(student, (*method.student_taps, *optional), student_overrides, "student")
        teacher_paths = resolve_taps(teacher, (*method.teacher_taps, *optional), teacher_overrides, "teacher")
        method.bind(probe_shapes(student, student_paths, image_size),
                    probe_shapes(teacher, teacher_paths, image_size))
        self.method = method
        self._student_taps = TapRecorder(student, student_paths)
        self._teacher_taps = TapRecorder(teacher, teacher_paths)
        self._student_names, self._teacher_names = list(student_paths), list(teacher_paths)
        self.teacher_cache = None
        if teacher_cache is not None:  # (directory, teacher key): one memo per teacher and tap set
            directory, teacher_key = teacher_cache
            taps = hashlib.sha1(json.dumps(sorted(teacher_paths.items())).encode()).hexdigest()[:10]
            self.teacher_cache = TeacherOutputCache(directory / f"{teacher_key}-{taps}.pt", list(teacher_paths))

    def _run_teacher(self, images: Any) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            self.teacher_forward(self.teacher, images)
        outputs = self._teacher_taps.collect(self._teacher_names)
        self._teacher_taps.clear()
        return outputs

    def forward(self, images: Any, labels: Any, outputs: Any) -> dict[str, torch.Tensor]:
        if self.teacher_cache is not None:
            teacher = self.teacher_cache(images, self._run_teacher)
        else:
            teacher = self._run_teacher(images)
        student = self._student_taps.collect(self._student_names)
        self._student_taps.clear()
        return self.method(Batch(images, labels), student, teacher)

    def parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        return self.method.optimized_parameter_groups()

    def after_step(self) -> dict[str, float]:
        return self.method.after_step()
