"""Segmentation baselines of Table 3 as registered methods, wiring the pure losses to taps.

Recipes are CIRKD's re-implementations (the source of the paper's SKD/IFVD/CWD/CIRKD rows; kd_reference
§2–5, skd_ifvd_reference §0–2). Taps: `logits` (1/8 main logits), `feat` (pre-classifier head feature,
after dropout in train mode). All terms are returned already weighted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from methods.base import Batch, Distiller
from methods.baselines.cirkd import (
    PIXEL_CONTRAST_SIZE,
    PIXEL_MEMORY_SIZE,
    REGION_CONTRAST_SIZE,
    REGION_MEMORY_SIZE,
    ClassMemory,
    StudentProjector,
    memory_contrast_loss,
    pixel_pair_loss,
)
from methods.baselines.cwd import cwd_loss
from methods.baselines.fitnet import fitnet_loss
from methods.baselines.holistic import AdversarialTerm
from methods.baselines.ifvd import downsample_labels, ifv_loss
from methods.baselines.kd import pixel_kd_loss
from methods.baselines.skd import pairwise_affinity_loss
from methods.registry import register_method


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every DDP process along dim 0 (itself when not distributed)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _LogitKD(Distiller):
    """Base of the recipes that add pixel-wise logit KD (weight `kd_weight`, temperature `kd_tau`)."""

    student_taps = ("logits",)
    teacher_taps = ("logits",)

    def _kd(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        o = self.options
        if not o.kd_weight:
            return {}
        return {"loss_kd": o.kd_weight * pixel_kd_loss(student["logits"], teacher["logits"], o.kd_tau)}


@register_method("kd")
class PixelKD(_LogitKD):
    """Pixel-wise KD (kd_reference §3): KL(p_t ‖ p_s) per pixel at 1/8 resolution, batchmean, × τ²."""

    @dataclass(frozen=True)
    class Options:
        kd_weight: float = 1.0
        kd_tau: float = 1.0

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._kd(student, teacher)


@register_method("fitnet")
class FitNet(_LogitKD):
    """CIRKD FitNet (kd_reference §2): MSE(adapter(f_s), f_t)·10 + KD·1; the 1×1 no-bias adapter is always
    applied, even when channel counts match (CIRKD `losses/fitnet.py`)."""

    student_taps = ("logits", "feat")
    teacher_taps = ("logits", "feat")

    @dataclass(frozen=True)
    class Options:
        weight: float = 10.0
        kd_weight: float = 1.0
        kd_tau: float = 1.0

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        self.adapter = nn.Conv2d(student_shapes["feat"][1], teacher_shapes["feat"][1], 1, bias=False)

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = fitnet_loss(self.adapter(student["feat"]), teacher["feat"])
        return {"loss_fitnet": self.options.weight * loss, **self._kd(student, teacher)}


@dataclass(frozen=True)
class HolisticOptions:
    """Options every CIRKD recipe with the adversarial term shares: KD and the discriminator."""

    kd_weight: float = 1.0
    kd_tau: float = 1.0
    adv_weight: float = 0.001
    d_weight: float = 0.1
    d_lr: float = 4e-4


class _Holistic(_LogitKD):
    """Base of the CIRKD recipes with the adversarial term: its discriminator has its own optimizer."""

    student_taps = ("logits", "feat")
    teacher_taps = ("logits", "feat")

    def _bind_adversary(self, num_classes: int) -> None:
        o = self.options
        self.adversary = AdversarialTerm(num_classes, o.adv_weight, o.d_weight, o.d_lr)

    def _adv(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.options.adv_weight:
            return {}
        return {"loss_adv": self.adversary.generator_loss(student["logits"], teacher["logits"])}

    def optimized_parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        own = {id(p) for p in self.adversary.parameters()}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in own]
        return [(params, 1.0)] if params else []

    def after_step(self) -> dict[str, float]:
        return {"loss_d": self.adversary.step()} if self.options.adv_weight else {}


@register_method("skd")
class SKD(_Holistic):
    """CIRKD SKD (skd_ifvd_reference §1): KD·1 + pair-wise affinity on 2×2-pooled `feat`·10 + adversarial."""

    @dataclass(frozen=True)
    class Options(HolisticOptions):
        pairwise_weight: float = 10.0
        patch: int = 2

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        self._bind_adversary(teacher_shapes["logits"][1])

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        o = self.options
        pairwise = pairwise_affinity_loss(student["feat"], teacher["feat"], o.patch)
        return {"loss_pairwise": o.pairwise_weight * pairwise, **self._kd(student, teacher),
                **self._adv(student, teacher)}


@register_method("ifvd")
class IFVD(_Holistic):
    """CIRKD IFVD (skd_ifvd_reference §2): KD·1 + intra-class feature variation on `feat`·20 + adversarial."""

    @dataclass(frozen=True)
    class Options(HolisticOptions):
        ifv_weight: float = 20.0

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        self.num_classes = teacher_shapes["logits"][1]
        self._bind_adversary(self.num_classes)

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ifv = ifv_loss(student["feat"], teacher["feat"], batch.labels, self.num_classes)
        return {"loss_ifv": self.options.ifv_weight * ifv, **self._kd(student, teacher),
                **self._adv(student, teacher)}


@register_method("cwd")
class CWD(_Holistic):
    """CIRKD's CWD re-implementation (kd_reference §4, `train_cwd.sh`): channel-wise distillation on `feat`
    (weight 50, through a 1×1 no-bias adapter when channels differ) and on the logits (weight 3), τ = 4 for
    both, plus KD·1 and the adversarial term.

    `cirkd_normalisation`: CIRKD divides the feature term by N·C with the student's channel count taken
    *before* the adapter, i.e. it is C_t/C_s × the formula of `cwd_loss`; True reproduces that value (the
    recipe behind Table 3), False uses the MMRazor normalisation.
    """

    @dataclass(frozen=True)
    class Options(HolisticOptions):
        feat_weight: float = 50.0
        logit_weight: float = 3.0
        tau: float = 4.0
        cirkd_normalisation: bool = True

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s_ch, t_ch = student_shapes["feat"][1], teacher_shapes["feat"][1]
        self.adapter = nn.Conv2d(s_ch, t_ch, 1, bias=False) if s_ch != t_ch else nn.Identity()
        self.feat_scale = t_ch / s_ch if self.options.cirkd_normalisation else 1.0
        self._bind_adversary(teacher_shapes["logits"][1])

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        o = self.options
        feat = cwd_loss(self.adapter(student["feat"]), teacher["feat"], o.tau) * self.feat_scale
        logits = cwd_loss(student["logits"], teacher["logits"], o.tau)
        return {"loss_cwd_feat": o.feat_weight * feat, "loss_cwd_logits": o.logit_weight * logits,
                **self._kd(student, teacher), **self._adv(student, teacher)}


@register_method("cirkd")
class CIRKD(_LogitKD):
    """CIRKD (kd_reference §5): KD·1 + mini-batch pixel-to-pixel·1 + memory pixel·0.1 + memory region·0.1.

    The memory holds teacher embeddings (per-pixel L2-normalised `feat`); the student's `feat` goes through
    a trainable projector first. The teacher's batch is enqueued before the memory losses, as officially;
    under DDP the whole batch is all-gathered first, so every process holds the same memory.
    """

    student_taps = ("logits", "feat")
    teacher_taps = ("logits", "feat")

    @dataclass(frozen=True)
    class Options:
        pair_weight: float = 1.0
        pixel_memory_weight: float = 0.1
        region_memory_weight: float = 0.1
        pair_tau: float = 0.1
        memory_tau: float = 0.1
        pair_group: int = 2
        pixel_memory_size: int = PIXEL_MEMORY_SIZE
        region_memory_size: int = REGION_MEMORY_SIZE
        pixel_contrast: int = PIXEL_CONTRAST_SIZE
        region_contrast: int = REGION_CONTRAST_SIZE
        kd_weight: float = 1.0
        kd_tau: float = 1.0

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s_ch, t_ch = student_shapes["feat"][1], teacher_shapes["feat"][1]
        o = self.options
        self.projector = StudentProjector(s_ch, t_ch)
        self.memory = ClassMemory(teacher_shapes["logits"][1], t_ch, o.pixel_memory_size, o.region_memory_size)

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        o = self.options
        losses = {"loss_pair": o.pair_weight * pixel_pair_loss(student["feat"], teacher["feat"], o.pair_tau,
                                                                o.pair_group)}
        s_emb = F.normalize(self.projector(student["feat"]), dim=1)
        t_emb = F.normalize(teacher["feat"], dim=1)
        labels = downsample_labels(batch.labels, tuple(t_emb.shape[-2:]))
        self.memory.enqueue(_all_gather(t_emb.detach()), _all_gather(labels))
        losses["loss_pixel_memory"] = o.pixel_memory_weight * memory_contrast_loss(
            s_emb, t_emb, labels, self.memory.pixel_queue, o.pixel_contrast, o.memory_tau)
        losses["loss_region_memory"] = o.region_memory_weight * memory_contrast_loss(
            s_emb, t_emb, labels, self.memory.region_queue, o.region_contrast, o.memory_tau)
        return {**losses, **self._kd(student, teacher)}
