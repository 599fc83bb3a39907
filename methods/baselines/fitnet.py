"""FitNet / mimic feature loss (kd_reference §2; CIRKD ``losses/fitnet.py``, MasKD ``dist+mimic``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def fitnet_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """MSE between the (already adapted) student feature and the teacher feature, mean over N·C·H·W.

    The 1×1 no-bias adapter (CIRKD applies it always, even for equal channel counts) is the caller's
    module; this function only computes ``mean((φ(F^s) − F^t)²)``. The teacher is detached.

    Args:
        student_feat: N×C×H×W, after the adapter.
        teacher_feat: same shape.

    Returns:
        Scalar loss.
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"fitnet_loss: student feature {tuple(student_feat.shape)} and teacher feature "
            f"{tuple(teacher_feat.shape)} differ; apply an adapter to the student feature first"
        )
    return F.mse_loss(student_feat, teacher_feat.detach())
