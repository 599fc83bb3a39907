"""Receptive-token masks and their Dice diversity loss (MasKD paper §4.1, eqs. 3–5; official ``maskd.py``)."""

from __future__ import annotations

import torch
from torch import Tensor


def token_masks(feat: Tensor, tokens: Tensor) -> Tensor:
    """Masks M_k(p) = σ(e_k · F(p)) (paper eq. 3): a plain dot product, no scaling or normalisation.

    ``feat`` is N×C×H×W (the teacher tensor during distillation), ``tokens`` is T×C; returns N×T×H×W in (0, 1).
    Same as the official ``MaskModule.forward_mask`` (``mask_token @ x.view(N, C, H*W)``, then sigmoid).
    """
    if feat.dim() != 4:
        raise ValueError(f"feat must be N×C×H×W, got shape {tuple(feat.shape)}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be T×C, got shape {tuple(tokens.shape)}")
    if tokens.shape[1] != feat.shape[1]:
        raise ValueError(f"tokens have {tokens.shape[1]} channels but feat has {feat.shape[1]} "
                         f"(tokens {tuple(tokens.shape)}, feat {tuple(feat.shape)})")
    return torch.einsum("tc,nchw->nthw", tokens, feat).sigmoid()


def dice_diversity(masks: Tensor, eps: float = 1e-12) -> Tensor:
    """Mask diversity loss L_div, official-code version of paper eqs. 4–5.

    Per image, on flattened masks a, b: ρ(a, b) = 2Σab / ((Σa² + eps) + (Σb² + eps)), i.e. ``eps`` is added to
    *each* squared sum as in the official ``dice_coeff``. The result is the mean of ρ over the T(T−1) ordered
    off-diagonal token pairs and over the N images. The paper's eq. 4 instead averages over all T² pairs,
    diagonal included (same minimiser, different gradient scale); the code's version is used here.

    ``masks`` is N×T×H×W (any N×T×… works; trailing dims are flattened). Computed from one N×T×T Gram matrix.
    With T = 1 there is no off-diagonal pair: the official code returns 0/0 = NaN, here the loss is defined as 0
    (still attached to the graph).
    """
    if masks.dim() < 3:
        raise ValueError(f"masks must be N×T×H×W (or N×T×P), got shape {tuple(masks.shape)}")
    n, t = masks.shape[:2]
    flat = masks.flatten(2)
    gram = flat @ flat.transpose(1, 2)  # N×T×T: Σ_p a_i(p) a_j(p)
    sq = gram.diagonal(dim1=1, dim2=2) + eps  # N×T: Σa² + eps
    dice = 2 * gram / (sq[:, :, None] + sq[:, None, :])
    if t < 2:
        return dice.sum() * 0
    off_diag = ~torch.eye(t, dtype=torch.bool, device=masks.device)
    return dice[:, off_diag].sum() / (n * t * (t - 1))


def init_tokens(num_tokens: int, channels: int, generator: torch.Generator | None = None) -> Tensor:
    """Receptive tokens E ∈ R^{T×C} drawn from N(0, 0.01²) (std 0.01), the official ``MaskModule`` init.

    Returns a plain tensor; wrap it in ``nn.Parameter`` to learn it (token-learning stage, paper eq. 6).
    """
    if num_tokens < 1 or channels < 1:
        raise ValueError(f"num_tokens and channels must be positive, got {num_tokens} and {channels}")
    return torch.empty(num_tokens, channels).normal_(0.0, 0.01, generator=generator)
