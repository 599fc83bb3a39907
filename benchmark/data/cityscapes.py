"""Cityscapes in its real on-disk layout (also written by the embedded generator): pairing, label mapping,
augmentation and a cached, resumable-augmentation torch Dataset.

Layout: ``<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``<root>/gtFine/<split>/<city>/
*_gtFine_labelIds.png``. Label ids map to the 19 train ids (255 = ignore) through cityscapesscripts' table.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cityscapesscripts.helpers.labels import labels
from PIL import Image
from torch.utils.data import Dataset

from benchmark.errors import UserError

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TRAIN_LABELS = sorted((lab for lab in labels if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN_LABELS)


def label_id_to_train_id_lut() -> np.ndarray:
    """uint8[256]: label id → train id; ids whose trainId is 255 or -1 (and unknown ids) → 255."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for lab in _TRAIN_LABELS:
        lut[lab.id] = lab.trainId
    return lut


def train_id_to_label_id_lut() -> np.ndarray:
    """uint8[256]: train id → label id (for result PNGs in label-id space); others → 0 (unlabeled)."""
    lut = np.zeros(256, np.uint8)
    for lab in _TRAIN_LABELS:
        lut[lab.trainId] = lab.id
    return lut


def listing(path: Path) -> str:
    """One line naming what a directory holds (for layout errors)."""
    if not path.is_dir():
        return f"{path} does not exist"
    names = sorted(p.name + "/" * p.is_dir() for p in path.iterdir())
    return f"{path} holds " + (", ".join(names[:8]) + (f", ... ({len(names)} entries)" if len(names) > 8 else "")
                               if names else "nothing")


def find_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Sorted (image, labelIds) pairs of a split; UserError naming the expected layout when it is wrong."""
    root = Path(root)
    images, labels_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    expected = (f"expected {images}/<city>/*_leftImg8bit.png and {labels_dir}/<city>/*_gtFine_labelIds.png")
    fix = ("Fix: point --data-root at the directory that contains leftImg8bit/ and gtFine/ (unpack "
           "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip there), or omit it to use the embedded data.")
    for folder in (images, labels_dir):
        if not folder.is_dir():
            raise UserError(f"Cityscapes '{split}' split not found: {expected}; but {listing(folder.parent)}. {fix}")
    found = sorted(images.glob("*/*_leftImg8bit.png"))
    if not found:
        raise UserError(f"Cityscapes '{split}' split is empty: {expected}; but {listing(images)}. {fix}")
    pairs = []
    for image in found:
        label = labels_dir / image.parent.name / image.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        if not label.is_file():
            raise UserError(f"Image {image} has no label file: expected {label}; but {listing(label.parent)}. {fix}")
        pairs.append((image, label))
    return pairs


def data_fingerprint(root: Path) -> str:
    """The generator's spec name if root holds its manifest.json, else a short sha1 of the image and label
    file list with file sizes (cheap: no image is read)."""
    manifest = Path(root) / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())["name"]
    digest = hashlib.sha1()
    files = [*Path(root).glob("leftImg8bit/*/*/*_leftImg8bit.png"), *Path(root).glob("gtFine/*/*/*_labelIds.png")]
    for path in sorted(files):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:12]


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] → float32 [..., 3, H, W] normalised with the ImageNet mean and std."""
    x = images.to(torch.float32).movedim(-1, -3) / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


@dataclass(frozen=True)
class TrainAugment:
    """Training augmentation: random horizontal flip, random rescale, then a random crop (label padded 255)."""

    flip: bool = True
    scale_range: tuple[float, float] | None = None
    crop: tuple[int, int] | None = None


def _resize(image: np.ndarray, label: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear image, nearest label."""
    return (np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR)),
            np.array(Image.fromarray(label).resize((w, h), Image.NEAREST)))


def apply_augment(aug: TrainAugment, rng: np.random.Generator, image: np.ndarray,
                  label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Augment uint8 image [H, W, 3] and label [H, W]; all randomness comes from rng (deterministic)."""
    if aug.scale_range is not None:
        scale = rng.uniform(*aug.scale_range)
        h, w = (max(1, round(n * scale)) for n in image.shape[:2])
        image, label = _resize(image, label, h, w)
    if aug.crop is not None:
        ch, cw = aug.crop
        ph, pw = max(ch - image.shape[0], 0), max(cw - image.shape[1], 0)
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        y0, x0 = rng.integers(image.shape[0] - ch + 1), rng.integers(image.shape[1] - cw + 1)
        image, label = image[y0:y0 + ch, x0:x0 + cw], label[y0:y0 + ch, x0:x0 + cw]
    if aug.flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class CityscapesSegmentation(Dataset):
    """(image float32 [3, H, W] ImageNet-normalised, label int64 [H, W] train ids) pairs of a split.

    ``size`` (h, w) resizes on load; with ``cache`` decoded uint8 arrays stay in memory after first use. A key is
    an index (no augmentation) or ``(index, aug_seed)``: augmentation draws only from
    ``np.random.default_rng(aug_seed)``, so a sampler that passes seeds makes training exactly resumable.
    """

    def __init__(self, root: Path, split: str, size: tuple[int, int] | None = None,
                 augment: TrainAugment | None = None, cache: bool = True) -> None:
        self.root, self.split, self.size, self.augment, self.cache = Path(root), split, size, augment, cache
        self.files = find_pairs(self.root, split)
        self._lut = label_id_to_train_id_lut()
        self._arrays: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded (and resized) uint8 image [H, W, 3] and train-id label [H, W]."""
        if self._arrays[index] is not None:
            return self._arrays[index]
        image_path, label_path = self.files[index]
        with Image.open(image_path) as im, Image.open(label_path) as gt:
            image, label = np.array(im.convert("RGB")), np.asarray(gt)
        if self.size is not None and image.shape[:2] != tuple(self.size):
            image, label = _resize(image, label, *self.size)
        arrays = image, self._lut[label]
        if self.cache:
            self._arrays[index] = arrays
        return arrays

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.load(index)
        if self.augment is not None and seed is not None:
            image, label = apply_augment(self.augment, np.random.default_rng(seed), image, label)
        return normalize_images(torch.from_numpy(image)), torch.from_numpy(label.astype(np.int64))
