"""IFVD intra-class feature variation distillation (skd_ifvd_reference §2; CIRKD ``losses/ifvd.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest subsampling of B×H×W labels to ``size``, as ``nn.Upsample(size, mode='nearest')`` on floats.

    Source index ``floor(i · H / h)``: not a majority vote (512×1024 → 64×128 takes every 8th pixel from
    the top-left). Returns a B×h×w long tensor.
    """
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def _ifv_map(feat: Tensor, one_hot: Tensor, valid: Tensor) -> Tensor:
    """B×h×w cosine between each pixel and its class prototype; ignore pixels are compared with themselves."""
    sums = torch.einsum("bkhw,bchw->bkc", one_hot, feat)
    protos = sums / (one_hot.sum((2, 3))[..., None] + 1e-6)
    centre = torch.einsum("bkhw,bkc->bchw", one_hot, protos) + feat * (~valid)[:, None]
    return F.cosine_similarity(feat, centre, dim=1, eps=1e-8)


def ifv_loss(
    student_feat: Tensor, teacher_feat: Tensor, labels: Tensor, num_classes: int = 19, ignore_index: int = 255
) -> Tensor:
    """IFVD loss ``L_ifv = mean_{B·h·w} (m_S − m_T)²`` (CIRKD ``losses/ifvd.py`` = IFVD ``utils/criterion.py``).

    Labels are nearest-downsampled to the feature size (:func:`downsample_labels`). Per image and class k,
    ``μ_k = Σ_hw M_k f / (Σ_hw M_k + 1e-6)``; the centre map is ``C(p) = μ_{y(p)}``, and ``C(p) = f(p)`` for
    pixels labelled ``ignore_index`` or anything outside 0..K−1 (CIRKD uses −1, the original 255), so their
    cosine is 1 on both sides: zero error, but they count in the mean's denominator. ``m = cos(f, C)`` over
    channels (eps 1e-8). Student prototypes are not detached; the teacher is. Channel counts may differ; no
    adapter. Vectorised over classes with a one-hot einsum (the official code loops over the K classes).

    Args:
        student_feat: B×C_s×h×w.
        teacher_feat: B×C_t×h×w.
        labels: B×H×W long, full resolution.
        num_classes: K.
        ignore_index: ignore label (labels outside 0..K−1 are ignored too).

    Returns:
        Scalar loss.
    """
    s, t = student_feat.shape, teacher_feat.shape
    if len(s) != 4 or len(t) != 4 or s[0] != t[0] or s[2:] != t[2:] or labels.dim() != 3 or labels.shape[0] != s[0]:
        raise ValueError(
            f"ifv_loss: student {tuple(s)} and teacher {tuple(t)} must be B×C×h×w with the same B, h, w, and labels "
            f"{tuple(labels.shape)} must be B×H×W"
        )
    y = downsample_labels(labels, (s[2], s[3]))
    valid = (y >= 0) & (y < num_classes) & (y != ignore_index)
    one_hot = F.one_hot(torch.where(valid, y, 0), num_classes).permute(0, 3, 1, 2) * valid[:, None]
    m_s = _ifv_map(student_feat, one_hot.to(student_feat.dtype), valid)
    m_t = _ifv_map(teacher_feat.detach(), one_hot.to(teacher_feat.dtype), valid)
    return F.mse_loss(m_s, m_t)
