"""Shared fixtures: a tiny segmentation model and dataset for engine tests (no generated data needed)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset


class TinySegmenter(nn.Module):
    """Conv-BN-ReLU-Dropout + two 1×1 classifiers at stride 2 (main and aux), like a real segmentor."""

    tap_points: ClassVar[dict[str, str]] = {"logits": "head", "feat": "body.3", "aux_logits": "aux"}

    def __init__(self, num_classes: int = 19, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Dropout2d(0.2))
        self.head = nn.Conv2d(width, num_classes, 1)
        self.aux = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.body(x)
        return {"out": self.head(feat), "aux": self.aux(feat)}


CLASSES4 = ("a", "b", "c", "d")  # class names of the 4-class toy data



class RandomSegData(Dataset):
    """Deterministic images whose label is learnable from colour; keys may be (index, seed) tuples."""

    def __init__(self, n: int = 12, size: tuple[int, int] = (16, 16), num_classes: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, num_classes, (n, *size), generator=g)
        self.labels[:, 0, 0] = 255
        colour = torch.linspace(-1, 1, num_classes + 1)
        self.images = colour[self.labels.clamp(max=num_classes)][:, None].repeat(1, 3, 1, 1)
        self.images += 0.1 * torch.randn(self.images.shape, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.images[index], self.labels[index]
        if seed is not None and seed % 2:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


@pytest.fixture(scope="session")
def det_smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache, out) of one finished smoke run of Table 1's Faster R-CNN block (every method column); shared by
    the detection CLI and figure tests so the teacher and tokens are trained once."""
    from benchmark.cli import main

    cache, out = tmp_path_factory.mktemp("det_cache"), tmp_path_factory.mktemp("det_out")
    assert main(["--table", "1", "--preset", "smoke", "--device", "cpu", "--cache-dir", str(cache),
                 "--out", str(out), "--rows", "faster_r50"]) == 0
    return cache, out
