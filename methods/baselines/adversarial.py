"""CIRKD holistic (adversarial) distillation: SAGAN logit discriminator and hinge losses.

Official behaviour (skd_ifvd_reference §0; CIRKD ``utils/sagan.py``, ``losses/adv.py``, ``train_kd.py``):
the discriminator sees only the raw K-channel 1/8 logits of the student or teacher (no image). The caller
applies the weights: discriminator loss ×0.1 (``--lambda-d``) and student (generator) loss ×0.001
(``--lambda-adv``). The discriminator is trained with Adam (lr 4e-4, betas (0.9, 0.99), no weight decay,
no lr schedule), one step per iteration right after the student step, on the same forward pass's detached
logits. Use ``nn.SyncBatchNorm.convert_sync_batchnorm`` for the input BatchNorm under DDP.

Differences from the official module, all deliberate: ``torch.nn.utils.parametrizations.spectral_norm``
replaces SAGAN's hand-written ``SpectralNorm`` (both use one power iteration per forward; torch's runs only
in train mode and does 15 extra iterations at construction); the attention maps are not returned; and
inputs too small for a 4×4 conv are zero-padded (see :class:`LogitDiscriminator`).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


def _pad_to(x: Tensor, min_size: int) -> Tensor:
    """Zero-pad the bottom/right of a B×C×h×w map so that h, w ≥ ``min_size``; identity otherwise."""
    h, w = x.shape[-2:]
    if h >= min_size and w >= min_size:
        return x
    return F.pad(x, (0, max(min_size - w, 0), 0, max(min_size - h, 0)))


class SelfAttention(nn.Module):
    """SAGAN self-attention: ``out = γ · V softmax(QᵀK)ᵀ + x``, Q/K with C/8 channels, γ initialised to 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.query(x).flatten(2), self.key(x).flatten(2), self.value(x).flatten(2)
        attention = torch.softmax(q.transpose(1, 2).bmm(k), dim=-1)  # B×N×N, softmax over key positions
        return self.gamma * v.bmm(attention.transpose(1, 2)).view_as(x) + x


class LogitDiscriminator(nn.Module):
    """CIRKD ``utils/sagan.py`` ``Discriminator`` (preprocess mode 1 = BatchNorm) on K-channel logits.

    BatchNorm2d(K) → 4 × [spectral-norm conv 4×4 s2 p1 (64/128/256/512) → LeakyReLU(0.1)], with
    self-attention after conv 3 and conv 4 → plain conv 4×4, padding 0, to 1 channel. As in the official
    code the last conv has padding 0: a 64×128 input gives 4×8 before it and a 1×5 output (padding 1 would
    give 3×7). Small inputs: before each conv, a map smaller than the smallest valid input (2 for the
    strided convs, 4 for the last) is zero-padded at the bottom/right, so any size ≥ 1×1 works (8×16 gives
    a 1×1 output) and sizes used in CIRKD are unchanged.
    """

    def __init__(self, num_classes: int = 19, base_channels: int = 64) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_classes)
        widths = [num_classes] + [base_channels * 2**i for i in range(4)]
        self.convs = nn.ModuleList(
            spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)) for c_in, c_out in pairwise(widths)
        )
        self.attn3 = SelfAttention(widths[3])
        self.attn4 = SelfAttention(widths[4])
        self.last = nn.Conv2d(widths[4], 1, 4)

    def forward(self, logits: Tensor) -> Tensor:
        """B×K×h×w logits → B×1×h'×w' scores (1×5 for 64×128)."""
        x = self.norm(logits)
        for i, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(_pad_to(x, 2)), 0.1)
            if i == 2:
                x = self.attn3(x)
            elif i == 3:
                x = self.attn4(x)
        return self.last(_pad_to(x, 4))


def hinge_discriminator_loss(d_teacher: Tensor, d_student: Tensor) -> Tensor:
    """Hinge D loss ``mean ReLU(1 − D(z_T)) + mean ReLU(1 + D(z_S))`` (CIRKD ``CriterionAdv('hinge')``), unweighted."""
    if d_teacher.shape != d_student.shape:
        raise ValueError(
            f"hinge_discriminator_loss: teacher scores {tuple(d_teacher.shape)} and student scores "
            f"{tuple(d_student.shape)} differ"
        )
    return F.relu(1 - d_teacher).mean() + F.relu(1 + d_student).mean()


def hinge_generator_loss(d_student: Tensor) -> Tensor:
    """Student (generator) loss ``−mean D(z_S)`` (CIRKD ``CriterionAdvForG('hinge')``), unweighted."""
    return -d_student.mean()
