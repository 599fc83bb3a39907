"""MasKD for segmentation (paper §5.2; kd_reference §1.4, §1.5): masked distillation of the logits.

Total student loss (official `train_maskd.py` + `losses/maskd.py`):
CE + 0.4·CE_aux + 0.5·L(z_s, z_t) + 0.4·0.5·L(z_aux_s, z_aux_t), where L is eq. 2 (mean over images,
tokens and classes, ε = 1e-5 on ΣM) with masks from the *teacher's* logits (aux masks from the
teacher's aux logits, same tokens). The official loss module hard-codes the ×0.5 ("weight 0.5") and is
called with λ = 1; here `weight` = 0.5 is that factor, applied once.

Mask sources (`masks` option): "learned" (tokens from the token-learning stage, task + diversity),
"diversity" (stage with L_div only), "random" (untrained N(0, 0.01) tokens; Fig. 4) and "gt"
(Table 5: one binary mask per class plus one for ignore, from the labels nearest-downsampled to the
logit size; absent classes give empty masks, which the ε makes contribute zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.errors import UserError
from methods.base import Batch, Distiller, Stage, check_same_shape
from methods.baselines.ifvd import downsample_labels
from methods.maskd.learn import MaskedTeacher, TokenLearningLoss
from methods.maskd.loss import masked_feature_loss
from methods.maskd.masks import init_tokens, token_masks
from methods.registry import register_method

MASK_SOURCES = ("learned", "diversity", "random", "gt")
SEG_EPS = 1e-5
TOKEN_SEED = 0  # tokens are learned once per teacher and shared by every student seed, as officially


def label_masks(labels: torch.Tensor, size: tuple[int, int], num_classes: int) -> torch.Tensor:
    """N×(K+1)×h×w binary masks: one per class, then one for every label outside 0..K-1 (ignore), from the
    labels nearest-downsampled to `size` (Table 5's 19 + 1 GT masks)."""
    small = downsample_labels(labels, size)
    small = torch.where((small >= 0) & (small < num_classes), small, torch.full_like(small, num_classes))
    return nn.functional.one_hot(small, num_classes + 1).permute(0, 3, 1, 2).float()


@register_method("maskd")
class MasKD(Distiller):
    """Masked logit distillation with receptive tokens (see the module docstring)."""

    student_taps = ("logits",)
    teacher_taps = ("logits",)
    optional_taps = ("aux_logits",)

    @dataclass(frozen=True)
    class Options:
        num_tokens: int = 8
        weight: float = 0.5
        aux_weight: float = 0.4
        masks: str = "learned"
        div_weight: float = 1.0
        stage_aux_weight: float = 0.4

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        if options.masks not in MASK_SOURCES:
            raise UserError(f"method 'maskd': option masks={options.masks!r} is not one of {MASK_SOURCES}.")
        self.num_classes = 0
        self.register_buffer("tokens", torch.empty(0))

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s, t = student_shapes["logits"], teacher_shapes["logits"]
        if s[1:] != t[1:]:
            raise ValueError(f"maskd distils logits: student {tuple(s)} and teacher {tuple(t)} differ in "
                             "classes or resolution (use the same output stride for both).")
        self.num_classes = t[1]

    def _initial_tokens(self) -> torch.Tensor:
        """N(0, 0.01) tokens from a fixed seed: the 'random' variant is exactly the learned tokens' start."""
        return init_tokens(self.options.num_tokens, self.num_classes, torch.Generator().manual_seed(TOKEN_SEED))

    def stage(self, teacher: nn.Module) -> Stage | None:
        if self.options.masks == "random":
            self.tokens = self._initial_tokens()
        if self.options.masks not in ("learned", "diversity"):
            return None
        task = self.options.masks == "learned"
        return Stage(
            name="tokens",
            model=MaskedTeacher(teacher, self.options.num_tokens, self.num_classes, TOKEN_SEED),
            loss=TokenLearningLoss(task=task, aux_weight=self.options.stage_aux_weight,
                                   div_weight=self.options.div_weight),
            schedule={},
            config={"method": "maskd", "num_tokens": self.options.num_tokens, "task_loss": task,
                    "div_weight": self.options.div_weight, "aux_weight": self.options.stage_aux_weight,
                    "token_seed": TOKEN_SEED},
        )

    def load_stage(self, state: dict[str, torch.Tensor]) -> None:
        self.tokens = state["tokens"].detach().clone()

    def _masks(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.options.masks == "gt":
            return label_masks(labels, tuple(teacher_logits.shape[-2:]), self.num_classes).to(teacher_logits)
        if self.tokens.numel() == 0:
            raise RuntimeError("maskd: no tokens; the token stage has not run (engine bug)")
        return token_masks(teacher_logits, self.tokens.to(teacher_logits)).detach()

    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_same_shape("maskd logits", student["logits"], teacher["logits"])
        o = self.options
        main = masked_feature_loss(student["logits"], teacher["logits"],
                                   self._masks(teacher["logits"], batch.labels), eps=SEG_EPS)
        losses = {"loss_maskd": o.weight * main}
        if "aux_logits" in student and "aux_logits" in teacher and o.aux_weight:
            aux = masked_feature_loss(student["aux_logits"], teacher["aux_logits"],
                                      self._masks(teacher["aux_logits"], batch.labels), eps=SEG_EPS)
            losses["loss_maskd_aux"] = o.aux_weight * o.weight * aux
        return losses
