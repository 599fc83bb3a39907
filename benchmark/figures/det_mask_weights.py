"""Detection MasKD, paper Fig. 3b: the learned masks of one FPN level with their per-image token weights.

Layout: one row per val image (default 4), all at one FPN level (`--det-level`, default P3). Columns: the image
with its GT boxes and class names; the T token masks M_k = σ(e_k · F) on the teacher's feature F of that level,
each titled with its weight "w = 0.31" from the stage's mask weighting module (`MaskWeighting`: conv3×3 → global
average pool → conv1×1 → softmax over the T tokens, so a row's weights sum to 1; the largest is bold and framed);
last, the weighted combination Σ_k w_k M_k, the factor F̂ = F ⊙ Σ_k w_k M_k the tokens were learned with (paper
eq. 7) and the weighting of the per-token distillation losses (eq. 8/9). Masks are computed at feature resolution,
upsampled bilinearly by the level's stride to the image (padding cropped) and drawn over the greyed image on one
0–1 colour scale, GT boxes dashed. The title names the teacher (model, key, AP), the token stage (key, T) and the
level. Needs a stage with the weighting module (MasKD-det's default).
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
    pick_level,
)

STEM = "det_mask_weights"
DEFAULT_LEVEL = "P3"
PANEL_WIDTH = 1.2
TITLE_ROW = 0.3  # inches above each row for the weights
LABEL = 0.3  # inches for the image names left of the rows
HEADER = 0.75
COLORBAR = 0.75
HIGHLIGHT = "#1f77b4"  # frame of the token with the largest weight


def figure_size(n_images: int, n_tokens: int, height: int, width: int) -> tuple[float, float]:
    """Figure size in inches for images of `height`×`width` pixels (the PNG is this × DPI pixels)."""
    dh, dw = display_size(height, width)
    return LABEL + (2 + n_tokens) * PANEL_WIDTH + COLORBAR, n_images * (PANEL_WIDTH * dh / dw + TITLE_ROW) + HEADER


def weight_label(weight: float) -> str:
    """"w = 0.31" (paper Fig. 3b); weights under 0.005 in scientific notation ("w = 3e-05") rather than 0.00."""
    return f"w = {weight:.2f}" if weight >= 0.005 or weight == 0 else f"w = {weight:.0e}"


def render(samples: DetSamples, rows: list[LevelMasks], teacher: DetTeacherRecord, stage: DetStageRecord) -> Figure:
    """The figure: `rows[i]` is image i's chosen level, with weights."""
    n, t = len(rows), stage.num_tokens
    height, width = samples.images[0].shape[-2:]
    lv0 = rows[0]
    with figure_style():
        fig = Figure(figsize=figure_size(n, t, height, width), layout="constrained")
        axes = fig.subplots(n, 2 + t, squeeze=False)
        shown = None
        for i, lv in enumerate(rows):
            if lv.weights is None:
                raise ValueError(f"level {lv.level} of token stage {stage.key} has no weights")
            image, boxes, row = samples.images[i], samples.boxes[i], axes[i]
            draw_image(row[0], image, boxes, samples.labels[i], samples.class_names)
            row[0].set_ylabel(samples.names[i], fontsize=5.5)
            best = int(lv.weights.argmax())
            for k in range(t):
                ax = row[1 + k]
                shown = draw_overlay(ax, image, lv.big[k], boxes, MASK_CMAP)
                head = f"token {k + 1}\n" if i == 0 else ""
                ax.set_title(head + weight_label(float(lv.weights[k])), fontsize=6.5,
                             fontweight="bold" if k == best else "normal")
            combined = (lv.big * lv.weights[:, None, None]).sum(0)
            draw_overlay(row[1 + t], image, combined, boxes, MASK_CMAP)
            row[1 + t].set_title(("weighted sum\n" if i == 0 else "") + "Σ$_k$ w$_k$ M$_k$", fontsize=6.5)
            if i == 0:
                row[0].set_title("image + GT boxes", fontsize=6.5)
            for ax in row:
                blank(ax)
            for spine in row[1 + best].spines.values():
                spine.set_visible(True)
                spine.set_edgecolor(HIGHLIGHT)
                spine.set_linewidth(1.5)
        h, w = lv0.small.shape[-2:]
        fig.suptitle(
            f"MasKD detection: masks and their weights at FPN level {lv0.name} ({lv0.level}, stride {lv0.stride}, "
            f"{h}×{w} features) (paper Fig. 3b)\nteacher {teacher.model} key {teacher.key} "
            f"(AP {fmt_metric(teacher.ap)}) "
            f"· token stage {stage.key}: T = {t}, {stage.steps} steps, masked-teacher AP {fmt_metric(stage.ap)}"
            f"{norm_note(teacher, stage)}\n"
            "w: per-image token weights of the mask weighting module (softmax over tokens; largest framed)",
            fontsize=7)
        assert shown is not None
        fig.colorbar(shown, ax=axes[:, 1:], shrink=0.8, fraction=0.03, pad=0.01, label="mask value")
    return fig


def make(cache_dir: Path, out_dir: Path, n_images: int = 4, level: str = DEFAULT_LEVEL,
         teacher_key: str | None = None, num_tokens: int | None = None, data_override: Path | None = None,
         models: DetModels | None = None) -> list[Path]:
    """Find the cache entries, draw the figure and write `det_mask_weights.{png,pdf}`; returns the paths."""
    teacher, stage = pick_det(cache_dir, teacher_key, num_tokens, weighted=True)
    samples = det_val_samples(det_data_root(teacher, cache_dir, data_override), n_images)
    stage_model = (models or DetModels()).get(teacher, stage, samples.class_names)
    per_image = [image_level_masks(stage_model, image) for image in samples.images]
    index = pick_level(per_image[0], level)
    return save_figure(render(samples, [levels[index] for levels in per_image], teacher, stage), out_dir, STEM)
