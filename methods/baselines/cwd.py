"""Channel-wise distillation (kd_reference §4; MMRazor ``ChannelWiseDivergence``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cwd_loss(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """CWD: KL between per-channel spatial distributions, ``tau² / (N·C)`` normalisation.

    For each (n, c), ``p = softmax_{H·W}(x / tau)``; ``L = tau² / (N·C) · Σ_{n,c} Σ_p p_t (log p_t − log p_s)``
    (MMRazor ``ChannelWiseDivergence``), with ``log_softmax`` instead of the log of a softmax (CIRKD,
    TorchDistiller). The teacher is detached. A 1×1 no-bias adapter, used only when channel counts differ,
    is the caller's module, so both inputs must have the same shape here.

    Pitfall (CIRKD ``losses/cwd.py``): CIRKD divides by N·C with the student's channel count taken
    *before* its adapter, so on head features (teacher 256, student 128) its value is C_t/C_s = 2× this
    one (its feature weight 50 equals 100 here). On logits (19 vs 19) both agree.

    Args:
        student: N×C×H×W (logits or adapted feature).
        teacher: same shape.
        tau: temperature.

    Returns:
        Scalar loss.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"cwd_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must have the same "
            "shape (apply the 1×1 adapter to the student first when channel counts differ)"
        )
    n, c = student.shape[:2]
    log_p_s = F.log_softmax(student.reshape(n * c, -1) / tau, dim=1)
    log_p_t = F.log_softmax(teacher.detach().reshape(n * c, -1) / tau, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) * tau**2 / (n * c)
