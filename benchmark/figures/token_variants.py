"""Paper Fig. 4: masks of random, diversity-only and learned tokens on the same val images.

For each of a couple of val images, three rows of T masks σ(e_k · z) on the teacher's main logits z:
(a) random tokens, i.e. N(0, 0.01) from the token seed, exactly the learned tokens' initialisation (Fig. 4 (a));
(b) tokens learned with the Dice diversity loss alone (Fig. 4 (b)); (c) tokens learned with task + diversity
loss (the method, as in Fig. 6). The left column shows the image, its ground truth and the teacher's prediction.
Every row is labelled with its variant and its diversity loss L_div (`dice_diversity`: the mean Dice overlap of
the T(T−1) mask pairs at logit resolution; lower = more diverse masks); the title gives the mean over the shown
images and the masked-teacher mIoU of each cached stage. All masks share one 0–1 colour scale, and each panel
is annotated with its min–max value (random tokens give nearly flat masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from benchmark.errors import UserError
from benchmark.figures.caches import TeacherRecord, TokenRecord, pick_variants
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
from methods.maskd.masks import dice_diversity, init_tokens
from methods.maskd.method import TOKEN_SEED

STEM = "fig4_token_variants"
LABEL_COLUMN = 1.0  # inches for the row labels
COLORBAR = 0.75
BLOCK_TITLE = 0.6  # inches per image block for its column titles and the captions under the left column
HEADER = 1.0  # inches for the five title lines
RANGE_BOX = {"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.6, "linewidth": 0}


@dataclass(frozen=True)
class Variant:
    """One row kind: its label, tokens (T×K) and the cached stage it came from (None for random tokens)."""

    label: str
    tokens: torch.Tensor
    stage: TokenRecord | None


def variants(diversity: TokenRecord, learned: TokenRecord) -> list[Variant]:
    """Random (the stages' initialisation), diversity-only and learned tokens, in the paper's order."""
    div_tokens, learned_tokens = diversity.tokens(), learned.tokens()
    if div_tokens.shape != learned_tokens.shape:
        raise UserError(f"token stages {diversity.key} and {learned.key} have different token shapes "
                        f"({tuple(div_tokens.shape)} vs {tuple(learned_tokens.shape)}).")
    seed = int(learned.config.get("token_seed", TOKEN_SEED))
    random = init_tokens(*learned_tokens.shape, torch.Generator().manual_seed(seed))
    return [Variant("(a) random tokens", random, None),
            Variant("(b) L_div only", div_tokens, diversity),
            Variant("(c) learned (task + L_div)", learned_tokens, learned)]


def figure_size(n_images: int, n_tokens: int, height: int, width: int) -> tuple[float, float]:
    """Figure size in inches (the PNG is this × DPI pixels)."""
    pw, ph = panel_size(height, width)
    return (1 + n_tokens) * pw + LABEL_COLUMN + COLORBAR, n_images * (3 * ph + BLOCK_TITLE) + HEADER


def _steps(stage: TokenRecord) -> str:
    return str(stage.meta.get("schedule", {}).get("steps", "?"))


def _fmt(value: float | None) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"


def render(samples: ValSamples, logits: torch.Tensor, rows: list[Variant], teacher: TeacherRecord) -> Figure:
    """The figure; `logits` are the teacher's main logits of `samples` (N×K×h×w)."""
    size = tuple(samples.images.shape[-2:])
    n, t = len(samples.images), rows[0].tokens.shape[0]
    drawn = [masks_at(logits, v.tokens, size) for v in rows]  # per variant: (small, upsampled)
    dice = [[float(dice_diversity(small[i:i + 1])) for i in range(n)] for small, _ in drawn]
    prediction = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
    with figure_style():
        fig = Figure(figsize=figure_size(n, t, *size), layout="constrained")
        grid = fig.subplots(3 * n, 1 + t, squeeze=False)
        image = None
        for i in range(n):
            axes = grid[3 * i:3 * i + 3]
            left = [(denormalise(samples.images[i]), "image"), (colourise(samples.labels[i]), "ground truth"),
                    (colourise(prediction[i]), "teacher prediction")]
            for r, (picture, caption) in enumerate(left):
                axes[r, 0].imshow(picture, interpolation="nearest" if r else "bilinear")
                axes[r, 0].set_xlabel(caption, labelpad=1)
            axes[0, 0].set_title(samples.names[i], fontsize="small")
            for r, (variant, (_, big)) in enumerate(zip(rows, drawn, strict=True)):
                for k in range(t):
                    mask = big[i, k].numpy()
                    image = axes[r, 1 + k].imshow(mask, cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="bilinear")
                    axes[r, 1 + k].text(0.02, 0.04, f"{mask.min():.2f}–{mask.max():.2f}", fontsize=5,
                                        transform=axes[r, 1 + k].transAxes, bbox=RANGE_BOX)
                axes[r, 1].set_ylabel(f"{variant.label}\nL_div = {dice[r][i]:.3f}", rotation=0, ha="right",
                                      va="center", labelpad=4)
            for k in range(t):
                axes[0, 1 + k].set_title(f"token {k + 1}")
        for ax in grid.flat:
            blank(ax)
        summary = "\n".join(
            f"{v.label}: mean L_div {sum(d) / n:.3f}"
            + (f", masked-teacher mIoU {_fmt(v.stage.miou)} (stage {v.stage.key}, {_steps(v.stage)} steps)"
               if v.stage else " (the learned tokens' initialisation, never trained)")
            for v, d in zip(rows, dice, strict=True))
        fig.suptitle(f"Masks of random, diversity-only and learned tokens on the teacher {teacher.model} "
                     f"(key {teacher.key}, mIoU {_fmt(teacher.miou)}), T = {t} (paper Fig. 4)\n{summary}\n"
                     "L_div: mean Dice overlap of the mask pairs at logit resolution (lower = more diverse)",
                     fontsize="medium")
        assert image is not None
        fig.colorbar(image, ax=grid[:, 1:], shrink=0.6, fraction=0.03, pad=0.01, label="mask value M_k(p)")
    return fig


def make(cache_dir: Path, out_dir: Path, n_images: int = 2, teacher_key: str | None = None,
         num_tokens: int | None = None, data_override: Path | None = None,
         teachers: Teachers | None = None) -> list[Path]:
    """Find the cache entries, draw Fig. 4 and write `fig4_token_variants.{png,pdf}`; returns the paths."""
    teacher, diversity, learned = pick_variants(cache_dir, teacher_key, num_tokens)
    rows = variants(diversity, learned)
    samples = val_samples(teacher, data_root(teacher, cache_dir, data_override), n_images)
    logits = teacher_logits((teachers or Teachers()).get(teacher), samples.images)
    return save_figure(render(samples, logits, rows, teacher), out_dir, STEM)
