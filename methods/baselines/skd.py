"""SKD pair-wise distillation as re-implemented in CIRKD (skd_ifvd_reference §1; CIRKD ``losses/skd.py``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _affinity(feat: Tensor, patch: int) -> Tensor:
    """B×N×N cosine affinity of max-pooled nodes (``F.normalize`` over channels, gradient through the norm)."""
    nodes = F.max_pool2d(feat, kernel_size=patch, stride=patch, ceil_mode=True).flatten(2)
    nodes = F.normalize(nodes, p=2, dim=1)
    return nodes.transpose(1, 2).bmm(nodes)


def pairwise_affinity_loss(student_feat: Tensor, teacher_feat: Tensor, patch: int = 2) -> Tensor:
    """CIRKD pair-wise term: ``L_pa = 1/(B·N²) · Σ_b Σ_ij (A^S_ij − A^T_ij)²``, i.e. ``.mean()``.

    Each feature is max-pooled with ``MaxPool2d(patch, patch, ceil_mode=True)`` (CIRKD fixes patch = 2,
    so 64×128 maps give N = 2048 nodes; the original SKD uses half-map windows), L2-normalised over
    channels, and ``A = uᵀu`` per image. Channel counts may differ (no adapter). The teacher is detached.

    Args:
        student_feat: B×C_s×h×w.
        teacher_feat: B×C_t×h×w.
        patch: pooling window and stride.

    Returns:
        Scalar loss.
    """
    s, t = student_feat.shape, teacher_feat.shape
    if len(s) != 4 or len(t) != 4 or s[0] != t[0] or s[2:] != t[2:]:
        raise ValueError(
            f"pairwise_affinity_loss: student {tuple(s)} and teacher {tuple(t)} must be B×C×h×w "
            "with the same B, h, w (channels may differ)"
        )
    return (_affinity(student_feat, patch) - _affinity(teacher_feat.detach(), patch)).pow(2).mean()
