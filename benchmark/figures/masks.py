"""Paper Fig. 6: the teacher's learned receptive-token masks on val images.

Rows are val images; columns are the image, its ground truth in the official Cityscapes colours and the T masks
M_k = σ(e_k · z) of the learned tokens on the teacher's main logits z (paper eq. 3), computed at logit
resolution and upsampled bilinearly to the image. All masks share one colour scale, 0 to 1: the value is the
weight each pixel gets in the distillation loss. The title gives the masked teacher's mIoU (the token stage's
validation score, Σ_k M_k ⊙ z in place of z) beside the teacher's own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

from benchmark.figures.caches import TeacherRecord, TokenRecord, pick_learned
from benchmark.figures.common import (
    MASK_CMAP,
    Teachers,
    ValSamples,
    blank,
    colourise,
    data_root,
    denormalise,
    figure_style,
    masks_at,
    panel_size,
    save_figure,
    teacher_logits,
    val_samples,
)

STEM = "fig6_learned_masks"
TITLE_ROW = 0.22  # inches above each row for the panel titles
HEADER = 0.62  # inches for the figure title
COLORBAR = 0.75  # inches for the colour bar and right margin


def figure_size(n_images: int, n_tokens: int, height: int, width: int) -> tuple[float, float]:
    """Figure size in inches (the PNG is this × DPI pixels)."""
    pw, ph = panel_size(height, width)
    return (2 + n_tokens) * pw + COLORBAR, n_images * (ph + TITLE_ROW) + HEADER


def _fmt(value: float | None) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"


def render(samples: ValSamples, masks: torch.Tensor, teacher: TeacherRecord, stage: TokenRecord) -> Figure:
    """The figure: `masks` is N×T×H×W at image size, in [0, 1]."""
    n, t, height, width = masks.shape
    with figure_style():
        fig = Figure(figsize=figure_size(n, t, height, width), layout="constrained")
        axes = fig.subplots(n, 2 + t, squeeze=False)
        image = None
        for row in range(n):
            ax_img, ax_gt = axes[row, 0], axes[row, 1]
            ax_img.imshow(denormalise(samples.images[row]), interpolation="bilinear")
            ax_gt.imshow(colourise(samples.labels[row]), interpolation="nearest")
            ax_img.set_ylabel(samples.names[row], fontsize=5)
            for k in range(t):
                image = axes[row, 2 + k].imshow(masks[row, k].numpy(), cmap=MASK_CMAP, vmin=0, vmax=1,
                                                interpolation="bilinear")
            for ax in axes[row]:
                blank(ax)
        for col, title in enumerate(["image", "ground truth", *(f"token {k + 1}" for k in range(t))]):
            axes[0, col].set_title(title)
        steps = stage.meta.get("schedule", {}).get("steps", "?")
        fig.suptitle(f"Learned receptive-token masks of the teacher {teacher.model} (key {teacher.key}) on val "
                     f"images (paper Fig. 6)\nT = {t} tokens (stage {stage.key}, {steps} steps); mIoU of the masked "
                     f"teacher {_fmt(stage.miou)}, of the teacher {_fmt(teacher.miou)}")
        assert image is not None
        fig.colorbar(image, ax=axes[:, 2:], shrink=0.9, fraction=0.03, pad=0.01, label="mask value M_k(p)")
    return fig


def make(cache_dir: Path, out_dir: Path, n_images: int = 4, teacher_key: str | None = None,
         num_tokens: int | None = None, data_override: Path | None = None,
         teachers: Teachers | None = None) -> list[Path]:
    """Find the cache entries, draw Fig. 6 and write `fig6_learned_masks.{png,pdf}`; returns the paths."""
    teacher, stage = pick_learned(cache_dir, teacher_key, num_tokens)
    samples = val_samples(teacher, data_root(teacher, cache_dir, data_override), n_images)
    logits = teacher_logits((teachers or Teachers()).get(teacher), samples.images)
    _, masks = masks_at(logits, stage.tokens(), tuple(samples.images.shape[-2:]))
    return save_figure(render(samples, masks, teacher, stage), out_dir, STEM)
