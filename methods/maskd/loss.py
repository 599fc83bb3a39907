"""Masked feature distillation loss of MasKD (paper eqs. 2, 8, 9; official ``MasKDLoss``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

# Below this mask mass (Σ_p M_k(p) + eps) a token counts as empty: L_{n,k} = 0 (see masked_feature_loss).
EMPTY_MASS = 1e-6


def _check_shapes(student: Tensor, teacher: Tensor, masks: Tensor, weights: Tensor | None) -> None:
    """Raise ValueError unless student/teacher are equal N×C×H×W, masks N×T×H×W and weights N×T."""
    if student.dim() != 4:
        raise ValueError(f"student must be N×C×H×W, got shape {tuple(student.shape)}")
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher shapes differ: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    n, _, h, w = student.shape
    if masks.dim() != 4 or masks.shape[0] != n or masks.shape[2:] != (h, w):
        raise ValueError(f"masks must be N×T×H×W = {n}×T×{h}×{w} to match the features "
                         f"{tuple(student.shape)}, got shape {tuple(masks.shape)}")
    if weights is not None and weights.shape != masks.shape[:2]:
        raise ValueError(f"weights must be N×T = {tuple(masks.shape[:2])} to match the masks "
                         f"{tuple(masks.shape)}, got shape {tuple(weights.shape)}")


class _ChannelMeanSqDiff(torch.autograd.Function):
    """D(p) = mean_c (S_c(p) − T_c(p))² (N×H×W) with a hand-written backward 2/C · (S − T) · ∂L/∂D.

    Autograd through ``(S − T).square().mean(1)`` keeps full-size temporaries alive and allocates more in backward
    (each N×C×H×W buffer costs as much as the arithmetic on CPU). Here the forward keeps only references to the
    inputs and the backward recomputes S − T into the one buffer it returns, so nothing full-size is held between
    forward and backward and retain_graph stays safe. No double backward (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, student: Tensor, teacher: Tensor) -> Tensor:
        ctx.save_for_backward(student, teacher)
        # Scale before squaring so a half-precision D overflows no earlier than the mean it represents.
        return torch.linalg.vector_norm(student - teacher, dim=1).div_(math.sqrt(student.shape[1])).square_()

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        student, teacher = ctx.saved_tensors
        scale = grad.unsqueeze(1) * (2.0 / student.shape[1])
        return torch.sub(student, teacher).mul_(scale).to(student.dtype), None


def masked_feature_loss(student: Tensor, teacher: Tensor, masks: Tensor, weights: Tensor | None = None,
                        eps: float = 0.0) -> Tensor:
    """MasKD feature loss for one tensor (one FPN level, or the segmentation logits).

    For image n and token k (masks multiply *both* features before squaring, as in the official code):

        L_{n,k} = (1/C) Σ_c Σ_p M_k(p)² (S_c(p) − T_c(p))² / (Σ_p M_k(p) + eps)

    so the numerator has M² and the denominator ΣM. ``weights=None`` gives the mean over tokens and images
    (paper eq. 2; official: mean over N, T, C); ``weights`` N×T gives mean_n Σ_k w_{n,k} L_{n,k} (eqs. 8/9;
    official ``weight_mask=True``). ``eps``: the official segmentation loss uses 1e-5; the detection loss has
    none (0, the default). A token whose mask mass Σ_p M_k(p) + eps is below ``EMPTY_MASS`` (1e-6 of one pixel)
    adds 0 with zero gradient. The official code gives NaN for an all-zero mask; for a near-empty one
    (σ saturated on large features) 1/ΣM overflows in the backward pass and inf·0 turns every gradient into
    NaN. Such a token's L_{n,k} is at most max_p M_k(p)·max_p D(p) < 1e-6·max D, so no other value changes.

    ``student`` is φ(F^s) and ``teacher`` F^t, both N×C×H×W; ``masks`` N×T×H×W (M^t, or M^r for customised masks,
    eq. 9) is used as given, so the caller detaches it. The teacher is detached here. Neither the per-token masked
    features nor an N×T×C×H×W tensor are built: the squared difference is first averaged over channels,
    D(p) = mean_c (S_c(p) − T_c(p))², then the numerator is Σ_p M_k(p)² D(p), a batched matrix product.
    The caller applies λ1 (and the segmentation ×0.5) and sums over levels.
    """
    _check_shapes(student, teacher, masks, weights)
    sq_diff = _ChannelMeanSqDiff.apply(student, teacher.detach())  # N×H×W: D(p)
    numerator = torch.einsum("nthw,nhw->nt", masks.square(), sq_diff)
    mass = masks.sum((2, 3)) + eps
    empty = mass < EMPTY_MASS
    per_token = (numerator / mass.masked_fill(empty, 1.0)).masked_fill(empty, 0.0)  # N×T: L_{n,k}
    if weights is None:
        return per_token.mean()
    return (per_token * weights).sum(1).mean()
