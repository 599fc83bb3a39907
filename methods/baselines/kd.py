"""Pixel-wise logit KD for segmentation (kd_reference §3; CIRKD ``losses/kd.py``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pixel_kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """KL(p_t ‖ p_s) with a softmax over the class dim (dim 1) at every pixel, times ``tau**2``.

    ``L = tau² / (N·h·w) · Σ_{n,p} Σ_k p_t (log p_t − log p_s)``, ``p = softmax(z / tau)`` over dim 1.
    This is CIRKD's ``kl_div(..., reduction='batchmean')`` on the flattened (N·h·w)×K tensor: the sum is
    divided by the number of pixel rows, not by N (4-D "batchmean") nor by N·K·h·w ("mean"). No ignore
    mask: every pixel counts. Logits are used at their own resolution (1/8 in CIRKD, not upsampled).

    Args:
        student_logits: N×K×h×w (any N×K×… works; the class dim is dim 1).
        teacher_logits: same shape; detached here.
        tau: temperature.

    Returns:
        Scalar loss.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"pixel_kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape (N×K×h×w)"
        )
    if student_logits.dim() < 2:
        raise ValueError(f"pixel_kd_loss: logits need a class dim 1, got shape {tuple(student_logits.shape)}")
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / tau, dim=1)
    rows = student_logits.numel() // student_logits.shape[1]
    return F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) / rows * tau**2
