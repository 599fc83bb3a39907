"""Reference (slow) MasKD feature loss, kept only to check ``masked_feature_loss`` in tests and benchmarks."""

from __future__ import annotations

import torch
from torch import Tensor

from methods.maskd.loss import _check_shapes


def naive_masked_feature_loss(student: Tensor, teacher: Tensor, masks: Tensor, weights: Tensor | None = None,
                              eps: float = 0.0) -> Tensor:
    """Straightforward eqs. 2/8/9: for each token build M_k ⊙ S and M_k ⊙ T, sum their squared difference.

    Exists only as the reference for :func:`methods.maskd.loss.masked_feature_loss` (same arguments, same value);
    it materialises two full masked copies of the features per token, so do not use it for training.
    """
    _check_shapes(student, teacher, masks, weights)
    teacher = teacher.detach()
    per_token = []
    for k in range(masks.shape[1]):
        mask = masks[:, k : k + 1]  # N×1×H×W
        sq = (mask * student - mask * teacher).square().sum((2, 3))  # N×C
        per_token.append(sq.mean(1) / (mask.sum((1, 2, 3)) + eps))  # N
    loss = torch.stack(per_token, 1)  # N×T
    if weights is None:
        return loss.mean()
    return (loss * weights).sum(1).mean()
