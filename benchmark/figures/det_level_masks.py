"""Detection MasKD, paper Fig. 1/5: the teacher's learned receptive-token masks at every FPN level on val images.

Layout: one block of rows per val image (default 2 images), one row per FPN level the tokens were learned on
(Faster R-CNN: P2–P6, RetinaNet/FCOS: P3–P7), labelled with the level, its stride and feature size. Columns: the
image with its GT boxes (class names on the first row of a block); max_k M_k, the union of the level's masks
(what the stage's "masked-teacher AP" diagnostic keeps); then the T token masks M_k = σ(e_k · F) (paper eq. 3) on
the teacher's FPN feature F of that level. Masks are computed at feature resolution, upsampled bilinearly by the
level's stride to the image (padding cropped) and drawn over the greyed image on one 0–1 colour scale, with the
GT boxes as dashed outlines. The title names the teacher (model, key, AP), the token stage (key, T, steps,
weighting, masked-teacher AP).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from benchmark.figures.common import MASK_CMAP, blank, figure_style, save_figure
from benchmark.figures.det_common import (
    DetModels,
    DetSamples,
    DetStageRecord,
    DetTeacherRecord,
    LevelMasks,
    det_data_root,
    det_val_samples,
    display_size,
    draw_image,
    draw_overlay,
    fmt_metric,
    image_level_masks,
    norm_note,
    pick_det,
)

STEM = "det_level_masks"
PANEL_WIDTH = 1.2  # inches per panel; the height follows the image's aspect ratio
TITLE_ROW = 0.3  # inches for the column titles above each image block
LABEL = 0.45  # inches for the level labels left of the rows
HEADER = 0.6  # inches for the figure title
COLORBAR = 0.75


def figure_size(n_images: int, n_levels: int, n_tokens: int, height: int, width: int) -> tuple[float, float]:
    """Figure size in inches for images of `height`×`width` pixels (the PNG is this × DPI pixels)."""
    dh, dw = display_size(height, width)
    ph = PANEL_WIDTH * dh / dw
    return LABEL + (2 + n_tokens) * PANEL_WIDTH + COLORBAR, n_images * (n_levels * ph + TITLE_ROW) + HEADER


def render(samples: DetSamples, per_image: list[list[LevelMasks]], teacher: DetTeacherRecord,
           stage: DetStageRecord) -> Figure:
    """The figure: `per_image[i]` holds image i's levels (as `image_level_masks` returns them)."""
    n, n_levels, t = len(per_image), len(per_image[0]), stage.num_tokens
    height, width = samples.images[0].shape[-2:]
    with figure_style():
        fig = Figure(figsize=figure_size(n, n_levels, t, height, width), layout="constrained")
        axes = fig.subplots(n * n_levels, 2 + t, squeeze=False)
        shown = None
        for i, levels in enumerate(per_image):
            image, boxes = samples.images[i], samples.boxes[i]
            for j, lv in enumerate(levels):
                row = axes[i * n_levels + j]
                labels = samples.labels[i] if j == 0 else None
                draw_image(row[0], image, boxes, labels, samples.class_names)
                h, w = lv.small.shape[-2:]
                row[0].set_ylabel(f"{lv.name} ({lv.level})\nstride {lv.stride}, {h}×{w}", fontsize=5.5)
                draw_overlay(row[1], image, lv.big.amax(0), boxes, MASK_CMAP)
                for k in range(t):
                    shown = draw_overlay(row[2 + k], image, lv.big[k], boxes, MASK_CMAP)
                for ax in row:
                    blank(ax)
            top = axes[i * n_levels]
            top[0].set_title(f"{samples.names[i]}\nimage + GT boxes", fontsize=6)
            top[1].set_title("union\nmax$_k$ M$_k$", fontsize=6)
            for k in range(t):
                top[2 + k].set_title(f"token {k + 1}", fontsize=6)
        fig.suptitle(
            f"MasKD detection: learned receptive-token masks per FPN level on val images (paper Fig. 1/5)\n"
            f"teacher {teacher.model} key {teacher.key} (AP {fmt_metric(teacher.ap)}) · token stage {stage.key}: "
            f"T = {t}, {stage.steps} steps, weighting {'on' if stage.weighting else 'off'}, masked-teacher AP "
            f"{fmt_metric(stage.ap)}{norm_note(teacher, stage)}", fontsize=7)
        assert shown is not None
        fig.colorbar(shown, ax=axes[:, 1:], shrink=0.6, fraction=0.03, pad=0.01, label="mask value M_k(p)")
    return fig


def make(cache_dir: Path, out_dir: Path, n_images: int = 2, teacher_key: str | None = None,
         num_tokens: int | None = None, data_override: Path | None = None,
         models: DetModels | None = None) -> list[Path]:
    """Find the cache entries, draw the figure and write `det_level_masks.{png,pdf}`; returns the paths."""
    teacher, stage = pick_det(cache_dir, teacher_key, num_tokens)
    samples = det_val_samples(det_data_root(teacher, cache_dir, data_override), n_images)
    stage_model = (models or DetModels()).get(teacher, stage, samples.class_names)
    per_image = [image_level_masks(stage_model, image) for image in samples.images]
    return save_figure(render(samples, per_image, teacher, stage), out_dir, STEM)
