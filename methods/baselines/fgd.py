"""Focal and Global Distillation for detectors (kd_reference §6; yzd-v/FGD ``mmdet/distillation/losses/fgd.py``).

Per FPN level (pre-norm ``fpn_convs.i.conv`` outputs, student already through the optional 1×1 align conv):

    L = α Σ M_fg A_S^t A_C^t (F^t − F^s)² / N + β Σ M_bg A_S^t A_C^t (F^t − F^s)² / N
      + γ (Σ |A_C^t − A_C^s| + Σ |A_S^t − A_S^s|) / N + λ Σ (G_s(F^s) − G_t(F^t))² / N

Every Σ runs over all axes of its term and is divided by the batch size N only (kd_reference §8.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Official configs (kd_reference §6 table; yzd-v/FGD ``configs/distillers/fgd/*``). Keys are ``fgd_loss`` keyword
# names, so ``fgd_loss(..., **FGD_HPARAMS[pair], student_gc=..., teacher_gc=...)`` works. All pairs: 2× schedule,
# grad clip 35; lr 0.02 for the two Faster R-CNN pairs, 0.01 for RetinaNet and RepPoints, the base config's for FCOS;
# every pair inherits the teacher's neck and heads except CM-RCNN → Faster R-CNN.
FGD_HPARAMS: dict[str, dict[str, float]] = {
    # Faster R-CNN R101 → R50 (4 levels).
    "faster_rcnn": {"temperature": 0.5, "alpha": 5e-5, "beta": 2.5e-5, "gamma": 5e-5, "lambda_": 5e-7},
    # Cascade Mask R-CNN X101-32x4d-DCN → Faster R-CNN R50 (4 levels).
    "cm_rcnn_to_faster_rcnn": {"temperature": 0.5, "alpha": 5e-5, "beta": 2.5e-5, "gamma": 5e-5, "lambda_": 5e-7},
    # RetinaNet R101 or X101 → R50 (5 levels).
    "retinanet": {"temperature": 0.5, "alpha": 1e-3, "beta": 5e-4, "gamma": 5e-4, "lambda_": 5e-6},
    # FCOS R101 → R50 (5 levels).
    "fcos": {"temperature": 0.8, "alpha": 1.6e-3, "beta": 8e-4, "gamma": 8e-4, "lambda_": 8e-6},
    # RepPoints R101 or X101 → R50 (5 levels, GN neck: tap the conv before its norm).
    "reppoints": {"temperature": 0.5, "alpha": 1.6e-3, "beta": 8e-4, "gamma": 8e-4, "lambda_": 8e-6},
}


def box_masks(
    boxes: list[Tensor], img_shapes: list[tuple[int, int]], feat_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Foreground and background scale masks from GT boxes, as the official ``FeatureLoss.forward`` builds them.

    Each box (x1, y1, x2, y2, image pixels) is scaled by ``W / img_w`` and ``H / img_h`` (divide first, then
    multiply, in float32 as the official code), then ``floor(x1, y1)`` and ``ceil(x2, y2)`` give an **inclusive**
    cell range. Its weight is ``1 / ((y2' − y1' + 1)(x2' − x1' + 1))`` on that unclipped range, while the cells it
    covers are clipped to the map: a box ending on an integer cell boundary covers one more row/column than its
    extent, and one reaching the right/bottom edge keeps the weight of a range one cell past the map. (The paper
    writes ``1 / (H_r·W_r)`` with the box size; we follow the official rounding.) Overlaps keep the max weight
    (the smaller box). Background: ``1 / #cells outside all boxes`` there, 0 elsewhere; all zeros if boxes cover
    the map. ``img_shape`` is the un-padded size while features cover the padded image, so boxes are slightly
    misplaced, as in the original. Boxes are assumed inside the image (mmdet clips GT boxes).

    Args:
        boxes: per image, a k_i×4 tensor (k_i may be 0).
        img_shapes: per image, the un-padded ``(height, width)`` in pixels.
        feat_hw: ``(H, W)`` of the feature map.

    Returns:
        ``(fg, bg)``, each N×H×W float32 on the boxes' device.
    """
    if not boxes or len(boxes) != len(img_shapes):
        raise ValueError(
            f"box_masks: got {len(boxes)} box tensors and {len(img_shapes)} image shapes; pass one k×4 tensor "
            "(possibly 0×4) and one (height, width) per image"
        )
    for b in boxes:
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"box_masks: boxes must be k×4 (x1, y1, x2, y2), got {tuple(b.shape)}; use a 0×4 "
                             "tensor for an image without boxes")
    n, (h, w) = len(boxes), feat_hw
    device = boxes[0].device
    xyxy = torch.cat(boxes).float()
    img_idx = torch.repeat_interleave(torch.arange(n, device=device),
                                      torch.tensor([len(b) for b in boxes], device=device))
    size = torch.tensor(img_shapes, dtype=torch.float32, device=device)[img_idx]  # B×2 (height, width)
    x1 = torch.floor(xyxy[:, 0] / size[:, 1] * w)
    x2 = torch.ceil(xyxy[:, 2] / size[:, 1] * w)
    y1 = torch.floor(xyxy[:, 1] / size[:, 0] * h)
    y2 = torch.ceil(xyxy[:, 3] / size[:, 0] * h)
    weight = 1.0 / (y2 + 1 - y1) / (x2 + 1 - x1)  # same operation order as the official code
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (rows >= y1[:, None]) & (rows <= y2[:, None])  # B×H
    in_cols = (cols >= x1[:, None]) & (cols <= x2[:, None])  # B×W
    per_box = ((in_rows[:, :, None] & in_cols[:, None, :]) * weight[:, None, None]).flatten(1)  # B×(H·W)
    fg = torch.zeros(n, h * w, device=device).scatter_reduce_(
        0, img_idx[:, None].expand(-1, h * w), per_box, reduce="amax"
    )
    outside = (fg == 0).float()
    bg = outside / outside.sum(1, keepdim=True).clamp(min=1)
    return fg.view(n, h, w), bg.view(n, h, w)


def spatial_channel_attention(feat: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """FGD attention from |F|: ``A_S = H·W·softmax_hw(mean_c|F| / T)``, ``A_C = C·softmax_c(mean_hw|F| / T)``.

    Args:
        feat: N×C×H×W.
        temperature: T.

    Returns:
        ``(A_S, A_C)``: N×H×W (sums to H·W per image) and N×C (sums to C per image).
    """
    if feat.dim() != 4:
        raise ValueError(f"spatial_channel_attention: expected an N×C×H×W feature, got {tuple(feat.shape)}")
    n, c, h, w = feat.shape
    value = feat.abs()
    spatial = h * w * F.softmax(value.mean(1).reshape(n, h * w) / temperature, dim=1)
    channel = c * F.softmax(value.mean((2, 3)) / temperature, dim=1)
    return spatial.view(n, h, w), channel


def _check_pair(fn: str, student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(
            f"{fn}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be N×C×H×W of the same "
            "shape (apply the 1×1 align conv to the student first when channel counts differ)"
        )


def fgd_feature_loss(student: Tensor, teacher: Tensor, fg_mask: Tensor, bg_mask: Tensor,
                     temperature: float) -> tuple[Tensor, Tensor]:
    """Focal feature terms ``Σ M A_S^t A_C^t (F^t − F^s)² / N`` for M = M_fg and M = M_bg (unweighted).

    The **teacher's** attention weights both terms (official ``get_fea_loss``, which multiplies both features by
    ``sqrt(M·A_S^t·A_C^t)`` before an MSE sum); the teacher is detached.

    Args:
        student: N×C×H×W (aligned).
        teacher: same shape.
        fg_mask: N×H×W, from ``box_masks``.
        bg_mask: N×H×W.
        temperature: attention temperature T.

    Returns:
        ``(fg_loss, bg_loss)`` scalars.
    """
    _check_pair("fgd_feature_loss", student, teacher)
    n, _, h, w = student.shape
    if fg_mask.shape != (n, h, w) or bg_mask.shape != (n, h, w):
        raise ValueError(
            f"fgd_feature_loss: masks {tuple(fg_mask.shape)} / {tuple(bg_mask.shape)} must be N×H×W = {(n, h, w)}; "
            "build them with box_masks(..., feat_hw=feature.shape[-2:])"
        )
    teacher = teacher.detach()
    spatial, channel = spatial_channel_attention(teacher, temperature)
    per_pixel = ((teacher - student).pow(2) * channel[:, :, None, None]).sum(1) * spatial  # N×H×W
    return (per_pixel * fg_mask).sum() / n, (per_pixel * bg_mask).sum() / n


def fgd_attention_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Attention term ``(Σ |A_C^t − A_C^s| + Σ |A_S^t − A_S^s|) / N`` (official ``get_mask_loss``), unweighted.

    Gradient reaches the student through its own attention; the teacher is detached.

    Args:
        student: N×C×H×W (aligned).
        teacher: same shape.
        temperature: attention temperature T.

    Returns:
        Scalar loss.
    """
    _check_pair("fgd_attention_loss", student, teacher)
    spatial_t, channel_t = spatial_channel_attention(teacher.detach(), temperature)
    spatial_s, channel_s = spatial_channel_attention(student, temperature)
    return ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / student.shape[0]


class GcBlock(nn.Module):
    """FGD's global relation module ``G(F) = F + W2·ReLU(LN(W1·ctx))``, ``ctx = Σ_p softmax_p(W_k F) F(p)``.

    W_k: 1×1 conv C→1 (kaiming normal, fan-in, bias 0); W1: 1×1 conv C→C/2 (default init); LN over
    [C/2, 1, 1]; W2: 1×1 conv C/2→C, weight and bias zero, so the block is the identity at init. The official
    code keeps separate student and teacher blocks, both trained through the global term (the paper writes a
    single R(·) for both networks); build two instances.

    Args:
        channels: C (teacher channels, i.e. after the student's align conv).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"GcBlock: need at least 2 channels (hidden width C // 2), got {channels}")
        self.context_logits = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=1),
            nn.LayerNorm([channels // 2, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.context_logits.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.context_logits.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, feat: Tensor) -> Tensor:
        """N×C×H×W → N×C×H×W: the feature plus a per-(n, c) global context offset."""
        weights = F.softmax(self.context_logits(feat).flatten(1), dim=1)  # N×(H·W)
        context = torch.einsum("ncp,np->nc", feat.flatten(2), weights)[:, :, None, None]
        return feat + self.transform(context)


def fgd_global_loss(student_gc_out: Tensor, teacher_gc_out: Tensor) -> Tensor:
    """Global term ``Σ (G_s(F^s) − G_t(F^t))² / N`` (official ``get_rela_loss``), unweighted.

    Not detached on either side: the teacher-side GcBlock is trainable; pass it a detached teacher feature.

    Args:
        student_gc_out: N×C×H×W, ``student_gc(student)``.
        teacher_gc_out: same shape, ``teacher_gc(teacher.detach())``.

    Returns:
        Scalar loss.
    """
    _check_pair("fgd_global_loss", student_gc_out, teacher_gc_out)
    return (student_gc_out - teacher_gc_out).pow(2).sum() / student_gc_out.shape[0]


def fgd_loss(student: Tensor, teacher: Tensor, fg_mask: Tensor, bg_mask: Tensor, temperature: float, alpha: float,
             beta: float, gamma: float, lambda_: float, student_gc: GcBlock, teacher_gc: GcBlock) -> dict[str, Tensor]:
    """All four FGD terms for one level, already weighted by α, β, γ, λ (see ``FGD_HPARAMS``).

    Args:
        student: N×C×H×W (aligned).
        teacher: same shape; detached here (the teacher GcBlock still trains).
        fg_mask: N×H×W foreground mask from ``box_masks``.
        bg_mask: N×H×W background mask.
        temperature: attention temperature T.
        alpha: foreground weight.
        beta: background weight.
        gamma: attention weight.
        lambda_: global weight.
        student_gc: this level's student GcBlock.
        teacher_gc: this level's teacher GcBlock (a separate instance).

    Returns:
        ``{"loss_fgd_fg", "loss_fgd_bg", "loss_fgd_attn", "loss_fgd_global"}`` scalars.
    """
    teacher = teacher.detach()
    fg, bg = fgd_feature_loss(student, teacher, fg_mask, bg_mask, temperature)
    return {
        "loss_fgd_fg": alpha * fg,
        "loss_fgd_bg": beta * bg,
        "loss_fgd_attn": gamma * fgd_attention_loss(student, teacher, temperature),
        "loss_fgd_global": lambda_ * fgd_global_loss(student_gc(student), teacher_gc(teacher)),
    }
