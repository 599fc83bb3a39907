"""Masked Generative Distillation (kd_reference §6; yzd-v/MGD ``{det,seg}/.../distillation/losses/mgd.py``).

Per tap: ``L = α Σ (G(φ(F^s) ⊙ M) − F^t)² / N``, summed over N, C, H, W (every pixel, masked or not), where M is a
random N×1×H×W mask zeroing each pixel with probability λ, shared across channels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Official configs (kd_reference §6; yzd-v/MGD ``{det,seg}/configs/distillers/mgd/*``). ``alpha`` weights
# ``mgd_loss``; ``ratio`` (the configs' ``lambda_mgd``) goes to ``random_spatial_mask``.
MGD_HPARAMS: dict[str, dict[str, float]] = {
    # RetinaNet / RepPoints (5 FPN levels), inherit on, clip 35.
    "one_stage": {"alpha": 2e-5, "ratio": 0.65},
    # Cascade Mask R-CNN → Faster / Mask R-CNN (4 FPN levels), inherit on, clip 35.
    "two_stage": {"alpha": 5e-7, "ratio": 0.45},
    # PSPNet R101 → PSPNet / DeepLabV3 R18, backbone last stage (512→2048 align); plus CWD on logits (τ 4, w 3).
    "segmentation": {"alpha": 2e-5, "ratio": 0.75},
}


def random_spatial_mask(n: int, h: int, w: int, ratio: float, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> Tensor:
    """N×1×H×W float mask, 0 with probability ``ratio`` (λ) and 1 otherwise, shared across channels.

    Official comparison: ``where(rand > 1 − λ, 0, 1)`` on uniform [0, 1) draws (the paper zeroes where
    ``rand < λ``: same probability, different pixels for the same draw; we follow the code). The draw is made on
    the generator's device when one is given, then moved to ``device``.

    Args:
        n: batch size.
        h: height.
        w: width.
        ratio: masking probability λ in [0, 1].
        generator: optional RNG for reproducible masks.
        device: device of the returned mask (default: the generator's, else the default device).

    Returns:
        N×1×H×W float32 tensor of zeros and ones.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"random_spatial_mask: ratio is a probability in [0, 1], got {ratio}")
    draw_device = generator.device if generator is not None else device
    rand = torch.rand((n, 1, h, w), generator=generator, device=draw_device)
    return torch.where(rand > 1 - ratio, 0.0, 1.0).to(device)


class MGDGenerator(nn.Sequential):
    """Generation block G: conv3×3 (C→C, pad 1) → ReLU → conv3×3 (C→C, pad 1), with bias and default init.

    Args:
        channels: C (teacher channels).
    """

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )


def mgd_loss(student_aligned: Tensor, teacher: Tensor, generator: nn.Module, mask: Tensor, alpha: float) -> Tensor:
    """MGD: ``α · Σ_{n,c,h,w} (G(F^s ⊙ M) − F^t)² / N`` (official ``get_dis_loss`` × ``alpha_mgd``).

    The sum covers all pixels, not only the masked ones. The teacher is detached; gradient reaches the student
    (through unmasked pixels) and the generator.

    Args:
        student_aligned: N×C×H×W, the student after its 1×1 align conv (when channel counts differ).
        teacher: same shape.
        generator: G, e.g. ``MGDGenerator(C)``.
        mask: N×1×H×W from ``random_spatial_mask``.
        alpha: loss weight α.

    Returns:
        Scalar loss.
    """
    if student_aligned.dim() != 4 or student_aligned.shape != teacher.shape:
        raise ValueError(
            f"mgd_loss: student {tuple(student_aligned.shape)} and teacher {tuple(teacher.shape)} must be N×C×H×W "
            "of the same shape (apply the 1×1 align conv to the student first when channel counts differ)"
        )
    n, _, h, w = student_aligned.shape
    if mask.shape != (n, 1, h, w):
        raise ValueError(f"mgd_loss: mask {tuple(mask.shape)} must be N×1×H×W = {(n, 1, h, w)}; build it with "
                         "random_spatial_mask(n, h, w, ratio)")
    generated = generator(student_aligned * mask.to(student_aligned.dtype))
    return alpha * (generated - teacher.detach()).pow(2).sum() / n
