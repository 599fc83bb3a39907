"""CIRKD (Yang et al., CVPR 2022): cross-image relational distillation, as in winycg/CIRKD @ 05a2753.

Three relational terms on the pre-classifier head feature (kd_reference §5), added to CE + 1.0·KD(T=1):

- ``pixel_pair_loss`` (weight 1.0): mini-batch pixel-to-pixel similarity KD, ``losses/cirkd_mini_batch.py``.
- ``memory_contrast_loss`` against ``ClassMemory.pixel_queue`` (weight 0.1) and ``ClassMemory.region_queue``
  (weight 0.1): memory-based pixel-to-pixel and pixel-to-region contrast KD, ``losses/cirkd_memory.py``.

The memory terms use teacher embeddings L2-normalised per pixel and student embeddings passed through
``StudentProjector`` (s_ch → t_ch) and then L2-normalised; the caller normalises, resizes labels to the feature
size (nearest) and calls ``ClassMemory.enqueue`` *before* the memory losses, as the official code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.data.cityscapes import IGNORE_INDEX

PIXEL_MEMORY_SIZE = 20000
"""Official per-class pixel queue length."""
REGION_MEMORY_SIZE = 2000
"""Official per-class region queue length."""
PIXELS_PER_CLASS = 16
"""Official number of pixels enqueued per (image, present class) and step (``pixel_update_freq``)."""
PIXEL_CONTRAST_SIZE = 4096 // 19 + 1
"""216: pixel contrasts sampled per class, official ``pixel_contrast_size = 4096 // num_classes + 1`` (19 classes)."""
REGION_CONTRAST_SIZE = 1024 // 19 + 1
"""54: region contrasts sampled per class, official ``region_contrast_size = 1024 // num_classes + 1`` (19 classes)."""


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``torch.randperm`` drawn from ``generator`` on its own device (else the global RNG of ``device``)."""
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def pixel_pair_loss(student_feat: Tensor, teacher_feat: Tensor, tau: float = 0.1, group: int = 2) -> Tensor:
    """Mini-batch pixel-to-pixel relation KD (official ``losses/cirkd_mini_batch.py``, weight 1.0).

    Both B×C×H×W features (raw head features, no projector; channel counts may differ, H×W must match) are
    L2-normalised over channels. The batch is split into consecutive groups of ``group`` images (the official
    8-GPU run sees 2 images per GPU and does not gather; the last group may be smaller). Within a group, for every
    ordered pair (i, j) including i = j, S = f_iᵀ f_j is HW×HW and
    loss_ij = KL(softmax_row(S_t/τ) ‖ softmax_row(S_s/τ)) with "batchmean" (sum over the map / HW), no τ² factor.
    A group's loss is the mean over its g² pairs; the result is the unweighted mean over groups, so an uneven last
    group counts as much as a full one (as a DDP rank with a smaller per-GPU batch would under gradient
    averaging). The teacher side is detached. Pairs of one group are computed together (one batched matmul);
    autograd keeps about 2·g²·(HW)² floats per group (g = 2, 64×128 maps: ~2 GiB fp32, ~17 GiB for batch 16).
    """
    if student_feat.dim() != 4 or teacher_feat.dim() != 4:
        raise ValueError(f"features must be B×C×H×W, got {tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}")
    if student_feat.shape[0] != teacher_feat.shape[0] or student_feat.shape[2:] != teacher_feat.shape[2:]:
        raise ValueError(f"batch and spatial sizes must match, got {tuple(student_feat.shape)} and "
                         f"{tuple(teacher_feat.shape)}")
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    s = F.normalize(student_feat.flatten(2), p=2, dim=1)  # B×Cs×HW
    t = F.normalize(teacher_feat.detach().flatten(2), p=2, dim=1)  # B×Ct×HW
    hw = s.shape[2]
    losses = []
    for start in range(0, s.shape[0], group):
        s_g, t_g = s[start:start + group], t[start:start + group]
        g = s_g.shape[0]
        # Ordered pairs (i, j), i-major: left operand f_i repeated, right operand f_j tiled.
        s_map = torch.bmm(s_g.repeat_interleave(g, 0).transpose(1, 2), s_g.repeat(g, 1, 1)) / tau  # g²×HW×HW
        with torch.no_grad():
            log_p_t = F.log_softmax(torch.bmm(t_g.repeat_interleave(g, 0).transpose(1, 2), t_g.repeat(g, 1, 1))
                                    / tau, dim=2)
        kl = F.kl_div(F.log_softmax(s_map, dim=2), log_p_t, reduction="sum", log_target=True)
        losses.append(kl / (hw * g * g))
    return torch.stack(losses).mean()


class ClassMemory(nn.Module):
    """Per-class FIFO queues of teacher embeddings (official ``StudentSegContrast`` in ``losses/cirkd_memory.py``).

    Buffers (saved in ``state_dict``): ``pixel_queue`` K×pixel_size×D and ``region_queue`` K×region_size×D,
    initialised from a standard normal and L2-normalised along D, and long pointers ``pixel_ptr`` / ``region_ptr``
    of shape K. Labels equal to ``ignore_index`` are skipped; other labels must lie in [0, K).
    """

    def __init__(self, num_classes: int, dim: int, pixel_size: int = PIXEL_MEMORY_SIZE,
                 region_size: int = REGION_MEMORY_SIZE, pixels_per_class: int = PIXELS_PER_CLASS,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if min(num_classes, dim, pixel_size, region_size, pixels_per_class) < 1:
            raise ValueError("num_classes, dim, pixel_size, region_size and pixels_per_class must all be >= 1")
        if pixels_per_class > pixel_size:
            raise ValueError(f"pixels_per_class ({pixels_per_class}) exceeds pixel_size ({pixel_size})")
        self.pixels_per_class = pixels_per_class
        self.ignore_index = ignore_index
        self.register_buffer("pixel_queue", F.normalize(torch.randn(num_classes, pixel_size, dim), p=2, dim=2))
        self.register_buffer("region_queue", F.normalize(torch.randn(num_classes, region_size, dim), p=2, dim=2))
        self.register_buffer("pixel_ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("region_ptr", torch.zeros(num_classes, dtype=torch.long))

    @staticmethod
    def _write(queue: Tensor, ptr: Tensor, cls: int, entries: Tensor) -> None:
        """Official wraparound: if ptr + n ≥ size, write the last n slots and reset ptr to 0; else write, ptr += n."""
        n, size, pos = entries.shape[0], queue.shape[1], int(ptr[cls])
        if pos + n >= size:
            queue[cls, size - n:] = entries
            ptr[cls] = 0
        else:
            queue[cls, pos:pos + n] = entries
            ptr[cls] = pos + n

    @torch.no_grad()
    def enqueue(self, teacher_emb: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> None:
        """Enqueue teacher embeddings (official ``_dequeue_and_enqueue``; images in batch order, classes ascending).

        ``teacher_emb`` is B×D×h×w, already L2-normalised over channels; ``labels`` is B×h×w at feature size. For
        each image and each present class: one region entry (mean of the class's embeddings in that image,
        re-normalised) and min(#pixels, ``pixels_per_class``) pixel embeddings chosen by a random permutation
        (``generator`` or the global RNG), re-normalised (a no-op for normalised input). As in the official
        ``_dequeue_and_enqueue`` (CIRKD ``losses/cirkd_memory.py``), the permutation of range(#class pixels)
        indexes the image's flattened pixels directly, not the class's pixels: a quirk kept on purpose. In a
        multi-GPU run the caller passes the all-gathered batch.
        """
        if teacher_emb.dim() != 4 or labels.shape != (teacher_emb.shape[0], *teacher_emb.shape[2:]):
            raise ValueError(f"expected B×D×h×w embeddings and B×h×w labels, got {tuple(teacher_emb.shape)} and "
                             f"{tuple(labels.shape)}")
        if teacher_emb.shape[1] != self.pixel_queue.shape[2]:
            raise ValueError(f"embedding dim {teacher_emb.shape[1]} != memory dim {self.pixel_queue.shape[2]}")
        feats = teacher_emb.detach().flatten(2).to(self.pixel_queue.dtype)  # B×D×P
        flat_labels = labels.flatten(1)
        for feat, label in zip(feats, flat_labels, strict=True):
            for cls in torch.unique(label).tolist():
                if cls == self.ignore_index:
                    continue
                idx = (label == cls).nonzero().squeeze(1)
                region = F.normalize(feat[:, idx].mean(dim=1), p=2, dim=0)
                self._write(self.region_queue, self.region_ptr, cls, region[None])
                # Official quirk, kept: the permutation of range(#class pixels) indexes the whole image, so
                # the enqueued 'pixels of class c' are the image's first #pixels positions in random order.
                chosen = _randperm(idx.numel(), generator, idx.device)[:self.pixels_per_class]
                self._write(self.pixel_queue, self.pixel_ptr, cls, F.normalize(feat[:, chosen].T, p=2, dim=1))


def memory_contrast_loss(student_emb: Tensor, teacher_emb: Tensor, labels: Tensor, queue: Tensor,
                         samples_per_class: int, tau: float = 0.1, generator: torch.Generator | None = None,
                         ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Memory-based contrast KD (official ``losses/cirkd_memory.py``; pixel and region terms, weight 0.1 each).

    ``student_emb`` (projected) and ``teacher_emb`` are B×D×h×w, both already L2-normalised over channels;
    ``labels`` is B×h×w at feature size. Anchors are all pixels with label ≠ ``ignore_index``. One random
    permutation of the queue slots (``generator`` or the global RNG) gives the first ``samples_per_class``
    indices, used for every class, so the contrasts are K·samples_per_class queue entries (class-major; use
    ``PIXEL_CONTRAST_SIZE`` / ``REGION_CONTRAST_SIZE`` for the official counts). Logits = anchor·contrastsᵀ / τ;
    loss = KL(softmax(t_logits) ‖ softmax(s_logits)) summed and divided by the number of anchors ("batchmean",
    KD temperature 1, factor 1). The teacher side and the queue are detached. With no valid anchor the loss is 0
    (attached to ``student_emb``) and no random number is drawn, as in the official early return.
    """
    if student_emb.shape != teacher_emb.shape or labels.shape != (student_emb.shape[0], *student_emb.shape[2:]):
        raise ValueError(f"expected equal B×D×h×w embeddings and B×h×w labels, got {tuple(student_emb.shape)}, "
                         f"{tuple(teacher_emb.shape)} and {tuple(labels.shape)}")
    if queue.dim() != 3 or queue.shape[2] != student_emb.shape[1]:
        raise ValueError(f"queue must be K×size×{student_emb.shape[1]}, got {tuple(queue.shape)}")
    dim = student_emb.shape[1]
    valid = labels.flatten() != ignore_index
    if not bool(valid.any()):
        return student_emb.sum() * 0
    s = student_emb.permute(0, 2, 3, 1).reshape(-1, dim)[valid]
    t = teacher_emb.detach().permute(0, 2, 3, 1).reshape(-1, dim)[valid]
    index = _randperm(queue.shape[1], generator, queue.device)[:samples_per_class]
    contrasts = queue.detach()[:, index].reshape(-1, dim).to(s.dtype)
    log_p_s = F.log_softmax(s @ contrasts.T / tau, dim=1)
    log_p_t = F.log_softmax(t @ contrasts.T / tau, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


class StudentProjector(nn.Sequential):
    """Student embedding head (official ``project_head``): 1×1 conv (no bias) s_ch→t_ch → BN → ReLU → 1×1 conv
    (no bias) t_ch→t_ch. Plain ``BatchNorm2d`` here (official: SyncBN; conversion is done elsewhere). The output is
    not normalised; the caller L2-normalises it over channels. Parameter names match the official ``0.*``…``3.*``.
    """

    def __init__(self, s_ch: int, t_ch: int) -> None:
        super().__init__(
            nn.Conv2d(s_ch, t_ch, 1, bias=False),
            nn.BatchNorm2d(t_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(t_ch, t_ch, 1, bias=False),
        )
