"""Detection baselines on FPN taps as registered methods: ``mimic`` (FitNet), ``fgd`` and ``mgd``.

They wire the pure losses of ``fitnet.py``, ``fgd.py`` and ``mgd.py`` to the detectors' level taps
(``benchmark.models.detectors``): every FPN level has its own modules, and the terms are summed over levels.

Levels. Detectors publish different numbers of levels, so the level taps are ``optional_taps``: the engine
reads those that both networks publish. ``mimic`` reads every neck output ``fpn_0..fpn_4`` (P2–P6 for Faster
R-CNN, max-pooled P6 included; P3–P7 for RetinaNet/FCOS), as MasKD's ``dist+mimic`` config hooks the whole
``neck``. FGD and MGD read the pre-norm level convs ``fpn_out_<i>`` (official ``neck.fpn_convs.i.conv``): 4 for
Faster R-CNN (its max-pooled level has no conv), 5 for RetinaNet/FCOS (kd_reference §6, §8.4). ``bind`` refuses
a pair with no level in common, or whose levels differ in spatial size (e.g. a Faster R-CNN teacher, strides
4–32, with a RetinaNet student, strides 8–128): teacher and student must be the same detector family built with
the same ``min_size``/``max_size``.

Detection batches (``methods.base.Batch``): ``images`` is the list of original 3×H×W images and ``labels`` the
target dicts with ``boxes`` in original image pixels. FGD scales each box by feature size / un-padded image
shape (official ``FeatureLoss``: ``img_metas[i]['img_shape']``, while the features cover the padded batch);
the detector's transform scales boxes and image by the same factor, so the original boxes over the original
``(H, W)`` give the official scaled boxes exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from benchmark.errors import UserError
from methods.base import Batch, Distiller
from methods.baselines.fgd import FGD_HPARAMS, GcBlock, box_masks, fgd_loss
from methods.baselines.fitnet import fitnet_loss
from methods.baselines.mgd import MGD_HPARAMS, MGDGenerator, mgd_loss, random_spatial_mask
from methods.registry import register_method

MAX_LEVELS = 5
FPN_TAPS = tuple(f"fpn_{i}" for i in range(MAX_LEVELS))  # every neck output (MasKD / mimic)
FPN_CONV_TAPS = tuple(f"fpn_out_{i}" for i in range(MAX_LEVELS))  # pre-norm level convs (FGD / MGD)
_FGD = FGD_HPARAMS["faster_rcnn"]
_MGD = MGD_HPARAMS["two_stage"]


def fpn_levels(method: str, taps: tuple[str, ...], student_shapes: dict[str, torch.Size],
               teacher_shapes: dict[str, torch.Size]) -> list[str]:
    """The level taps of `taps` that both networks publish, in order, checked to be the same levels.

    Raises a `UserError` when there is none, when a level is published by one network only (possible when
    `bind` is called directly; the engine passes only shared optional taps) or when a level's spatial size
    differs between the two networks.
    """
    student_levels = [t for t in taps if t in student_shapes]
    teacher_levels = [t for t in taps if t in teacher_shapes]
    if not student_levels or not teacher_levels:
        side = "student" if not student_levels else "teacher"
        raise UserError(f"method '{method}' distils FPN levels (taps {taps[0]} … {taps[-1]}) but the {side} "
                        "publishes none of them: use a detector from benchmark.models.detectors (its tap_points "
                        f"name the levels) or name the level modules in the row's `taps`, e.g. "
                        f"taps: {{{taps[0]}: 'backbone.fpn.layer_blocks.0.0'}}.")
    if student_levels != teacher_levels:
        raise UserError(f"method '{method}': mismatched FPN levels, the student publishes {student_levels} and the "
                        f"teacher {teacher_levels}; distil between detectors of the same family (Faster R-CNN: "
                        "4 level convs / 5 levels; RetinaNet and FCOS: 5).")
    bad = [f"{t}: student {tuple(student_shapes[t][-2:])} vs teacher {tuple(teacher_shapes[t][-2:])}"
           for t in student_levels if student_shapes[t][-2:] != teacher_shapes[t][-2:]]
    if bad:
        raise UserError(f"method '{method}': mismatched FPN levels, the spatial sizes differ ({'; '.join(bad)}). "
                        "Teacher and student must be the same detector family (Faster R-CNN levels start at "
                        "stride 4, RetinaNet/FCOS at stride 8) and use the same min_size/max_size; pick a "
                        "teacher of the student's family.")
    return student_levels


def _check_runtime_sizes(method: str, level: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Per-step guard: both networks must see the batch at the same resolution (same transform sizes)."""
    if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
        raise UserError(f"method '{method}': level {level} is {tuple(student.shape)} on the student but "
                        f"{tuple(teacher.shape)} on the teacher in this step; the two detectors resized the batch "
                        "differently (e.g. multi-scale min_size on the student only). Build both with the same "
                        "min_size/max_size.")


def _align(student_channels: int, teacher_channels: int, always: bool = False) -> nn.Module:
    """1×1 conv with bias (PyTorch default init) from student to teacher channels, or the identity."""
    if always or student_channels != teacher_channels:
        return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
    return nn.Identity()


class _LevelDistiller(Distiller):
    """Shared wiring: the level taps, the level check and the per-level align convs."""

    level_taps: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: object) -> None:
        super().__init__(options)
        self.levels: list[str] = []

    def _bind_levels(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size],
                     always_align: bool = False) -> list[int]:
        """Set `self.levels` and `self.align` (one module per level); returns the teacher channels per level."""
        self.levels = fpn_levels(self.name, self.level_taps, student_shapes, teacher_shapes)
        channels = [teacher_shapes[t][1] for t in self.levels]
        self.align = nn.ModuleList(_align(student_shapes[t][1], c, always_align)
                                   for t, c in zip(self.levels, channels, strict=True))
        return channels

    def _pairs(self, student: dict[str, torch.Tensor],
               teacher: dict[str, torch.Tensor]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(index, aligned student, detached teacher) per level, checked for equal sizes."""
        for i, level in enumerate(self.levels):
            _check_runtime_sizes(self.name, level, student[level], teacher[level])
            yield i, self.align[i](student[level]), teacher[level].detach()


@register_method("mimic")
class Mimic(_LevelDistiller):
    """FitNet / mimic on every FPN level (paper eq. 1; kd_reference §2, MasKD ``dist+mimic`` configs).

    ``L = weight · Σ_levels mean_{N,C,H,W} (φ_l(F^s_l) − F^t_l)²``: MMRazor's ``MSELoss`` (``nn.MSELoss``, mean
    over all elements) on each neck output, summed over the 5 levels, ``loss_weight=1``. φ_l is a 1×1 conv with
    bias (PyTorch default init) per level: the official ``align_module`` (``conv2d``, ``num_modules=5``) is built
    and applied even though both networks have 256 channels (``always_adapt=True``); ``always_adapt=False`` uses
    it only where channel counts differ (identity otherwise). Only the feature term of the ``dist+mimic`` config
    is kept: its DIST term on the RoI classifier is a different method.
    """

    optional_taps = FPN_TAPS
    level_taps = FPN_TAPS

    @dataclass(frozen=True)
    class Options:
        weight: float = 1.0
        always_adapt: bool = True

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        self._bind_levels(student_shapes, teacher_shapes, self.options.always_adapt)

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = sum(fitnet_loss(s, t) for _, s, t in self._pairs(student, teacher))
        return {"loss_mimic": self.options.weight * loss}


@register_method("fgd")
class FGD(_LevelDistiller):
    """Focal and Global Distillation (kd_reference §6; yzd-v/FGD ``losses/fgd.py``) on the pre-norm level convs.

    Per level: its own fg/bg masks (``box_masks`` from the GT boxes and each image's original (H, W), at that
    level's size), its own 1×1 align conv with bias when channel counts differ, and its own student and teacher
    ``GcBlock`` (both trained by the global term). Every term sums over all axes and divides by N only
    (kd_reference §8.1); the four weighted terms are summed over levels. Defaults: Faster R-CNN R101 → R50
    (``FGD_HPARAMS["faster_rcnn"]``); the other detectors' values are in configs/methods/fgd.yaml.
    """

    optional_taps = FPN_CONV_TAPS
    level_taps = FPN_CONV_TAPS

    @dataclass(frozen=True)
    class Options:
        temperature: float = _FGD["temperature"]
        alpha: float = _FGD["alpha"]
        beta: float = _FGD["beta"]
        gamma: float = _FGD["gamma"]
        lambda_: float = _FGD["lambda_"]

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        if not options.temperature > 0:
            raise UserError(f"method 'fgd': temperature must be positive, got {options.temperature}.")

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        channels = self._bind_levels(student_shapes, teacher_shapes)
        self.student_gc = nn.ModuleList(GcBlock(c) for c in channels)
        self.teacher_gc = nn.ModuleList(GcBlock(c) for c in channels)

    @staticmethod
    def _boxes_and_shapes(batch: Batch) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        if batch.labels is None or len(batch.labels) != len(batch.images):
            raise UserError("method 'fgd' needs the GT boxes of every image (detection targets with 'boxes').")
        boxes = [target["boxes"].reshape(-1, 4) for target in batch.labels]
        return boxes, [tuple(image.shape[-2:]) for image in batch.images]

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        o = self.options
        boxes, shapes = self._boxes_and_shapes(batch)
        totals: dict[str, torch.Tensor] = {}
        for i, s, t in self._pairs(student, teacher):
            fg, bg = box_masks(boxes, shapes, tuple(t.shape[-2:]))
            terms = fgd_loss(s, t, fg.to(t.device), bg.to(t.device), o.temperature, o.alpha, o.beta, o.gamma,
                             o.lambda_, self.student_gc[i], self.teacher_gc[i])
            for name, value in terms.items():
                totals[name] = totals[name] + value if name in totals else value
        return totals


@register_method("mgd")
class MGD(_LevelDistiller):
    """Masked Generative Distillation (kd_reference §6; yzd-v/MGD ``det/.../losses/mgd.py``) on the level convs.

    Per level: its own 1×1 align conv with bias when channel counts differ, its own generator, and a fresh random
    spatial mask each step (probability ``ratio`` = λ of zeroing a pixel, one mask per level as each official
    level module draws its own). Masks come from torch's global RNG on the features' device, which the trainer
    checkpoints and restores (CPU and CUDA states), so a resumed run draws the same masks. Loss
    ``α Σ (G(φ(F^s) ⊙ M) − F^t)² / N`` per level, summed over levels. Defaults: the two-stage values
    (``MGD_HPARAMS["two_stage"]``); the one-stage ones are in configs/methods/mgd.yaml.
    """

    optional_taps = FPN_CONV_TAPS
    level_taps = FPN_CONV_TAPS

    @dataclass(frozen=True)
    class Options:
        alpha: float = _MGD["alpha"]
        ratio: float = _MGD["ratio"]

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        if not 0.0 <= options.ratio <= 1.0:
            raise UserError(f"method 'mgd': ratio (λ, the masking probability) must be in [0, 1], "
                            f"got {options.ratio}.")

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        channels = self._bind_levels(student_shapes, teacher_shapes)
        self.generators = nn.ModuleList(MGDGenerator(c) for c in channels)

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        o = self.options
        total = 0.0
        for i, s, t in self._pairs(student, teacher):
            n, _, h, w = s.shape
            mask = random_spatial_mask(n, h, w, o.ratio, device=s.device)
            total = total + mgd_loss(s, t, self.generators[i], mask, o.alpha)
        return {"loss_mgd": total}
