"""What both figures share: the cached teacher and val images, display helpers, styling and atomic saving."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import seaborn as sns
import torch
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from matplotlib.figure import Figure
from torch import nn

from benchmark.atomic import atomic_write_bytes
from benchmark.data.cityscapes import (
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CityscapesSegmentation,
    data_fingerprint,
)
from benchmark.engine.checkpoint import load_state_strict
from benchmark.errors import UserError
from benchmark.figures.caches import TEACHER_HINT, TeacherRecord
from benchmark.models import build_segmentor
from methods.maskd.masks import token_masks

NUM_CLASSES = len(CITYSCAPES_CLASSES)
DPI = 150
PANEL_WIDTH = 1.5  # inches per image panel; the height follows the image's aspect ratio
MASK_CMAP = "rocket"  # seaborn's perceptually uniform map: dark = 0, light = 1


def train_id_palette() -> np.ndarray:
    """uint8[256, 3]: official Cityscapes colours of the 19 train ids (cityscapesscripts); ignore → black."""
    palette = np.zeros((256, 3), np.uint8)
    for lab in CITYSCAPES_LABELS:
        if 0 <= lab.trainId < NUM_CLASSES:
            palette[lab.trainId] = lab.color
    return palette


def colourise(label: torch.Tensor) -> np.ndarray:
    """Train-id label [H, W] → RGB uint8 [H, W, 3] (255 ignore is black)."""
    return train_id_palette()[label.cpu().numpy().astype(np.int64).clip(0, IGNORE_INDEX)]


def denormalise(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised float [3, H, W] (`normalize_images`) → float RGB [H, W, 3] in [0, 1] for imshow."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def load_teacher(record: TeacherRecord, device: torch.device | str = "cpu") -> nn.Module:
    """The cached teacher, rebuilt from its meta.json config and loaded strictly, in eval mode."""
    config = record.config
    arch = config.get("arch", {})
    model_name = config.get("model", record.model)
    rates = arch.get("aspp_rates")
    model = build_segmentor(model_name, num_classes=NUM_CLASSES, output_stride=arch.get("output_stride", 8),
                            aspp_rates=tuple(rates) if rates is not None else None)
    load_state_strict(model, record.entry.state_dict(), record.entry.weights_path, "cached teacher")
    return model.to(device).eval()


class Teachers:
    """Loads each cached teacher once per command (both figures usually draw from the same one)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self._models: dict[str, nn.Module] = {}

    def get(self, record: TeacherRecord) -> nn.Module:
        if record.key not in self._models:
            self._models[record.key] = load_teacher(record, self.device)
        return self._models[record.key]


@dataclass(frozen=True)
class ValSamples:
    """A few val images (normalised, N×3×H×W), their train-id labels (N×H×W) and file stems."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]


def data_root(record: TeacherRecord, cache_dir: Path, override: Path | None = None,
              fingerprint: Callable[[Path], str] = data_fingerprint, real: str = "Cityscapes (--data-root)",
              hint: str = TEACHER_HINT) -> Path:
    """The teacher's data: `override` (`--data-root`-style option) if given, else the embedded dataset
    `<cache>/data/<data id>/`. `fingerprint` names a user root (to warn when it is not the teacher's data);
    `real` and `hint` word the error (detection figures pass the COCO ones)."""
    data_id = record.config.get("data", {}).get("id", "?")
    if override is not None:
        root = Path(override).expanduser()
        found = fingerprint(root) if root.is_dir() else None
        if found is not None and found != data_id:
            print(f"warning: data root {root} has fingerprint {found} but teacher {record.key} was trained on "
                  f"{data_id}.", file=sys.stderr)
        return root
    root = Path(cache_dir) / "data" / data_id
    if not root.is_dir():
        raise UserError(f"the val images of teacher {record.key} (data {data_id}) are not at {root}; pass the "
                        f"data root of {real} if it was trained on real data, or regenerate the embedded data: "
                        f"{hint.removeprefix('run ')}.")
    return root


def val_samples(record: TeacherRecord, root: Path, count: int) -> ValSamples:
    """`count` val images spread evenly over the split, at the teacher's input size (as it was evaluated)."""
    data = record.config.get("data", {})
    size = (int(data["height"]), int(data["width"])) if "height" in data and "width" in data else None
    dataset = CityscapesSegmentation(root, "val", size=size, cache=False)
    count = max(1, min(count, len(dataset)))
    picks = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, count).round()})
    pairs = [dataset[i] for i in picks]
    names = [dataset.files[i][0].name.removesuffix("_leftImg8bit.png") for i in picks]
    return ValSamples(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), names)


@torch.no_grad()
def teacher_logits(model: nn.Module, images: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """The teacher's main logits ("out", at feature resolution), N×19×h×w on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([model(images[i:i + batch].to(device))["out"].float().cpu()
                      for i in range(0, len(images), batch)])


def masks_at(logits: torch.Tensor, tokens: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks at logit resolution N×T×h×w, the same bilinearly upsampled to `size` for display)."""
    small = token_masks(logits, tokens.to(logits))
    big = nn.functional.interpolate(small, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return small, big


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Seaborn's white paper style, scoped to the figures made inside (rcParams are restored after)."""
    with sns.axes_style("white"), sns.plotting_context("paper", font_scale=0.9):
        yield


def panel_size(height: int, width: int) -> tuple[float, float]:
    """(width, height) in inches of one image panel."""
    return PANEL_WIDTH, PANEL_WIDTH * height / width


def blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf` atomically (rendered in memory first); returns the paths."""
    paths = []
    for fmt in ("png", "pdf"):
        buffer = io.BytesIO()
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
        path = Path(out_dir) / f"{stem}.{fmt}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
