"""COCO detection data in its real on-disk layout (also written by the embedded generator), read through
pycocotools: path checks, a validating json loader, and a torch Dataset with resumable flip augmentation.

Layout: ``<root>/{train,val}2017/*.jpg`` and ``<root>/annotations/instances_{train,val}2017.json``. COCO
category ids (non-contiguous) map to labels 1..K in sorted id order; 0 is the background, as torchvision's
detectors want.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from benchmark.data.cityscapes import listing
from benchmark.errors import UserError

_FIX = ("Fix: point --data-root at the directory that holds train2017/, val2017/ and annotations/ (unpack "
        "train2017.zip, val2017.zip and annotations_trainval2017.zip there), or omit it to use the embedded data.")
_FIELDS = {"images": ("id", "file_name", "height", "width"),
           "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd"),
           "categories": ("id", "name")}


def coco_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(image folder, instances json) of a split; UserError naming both when either is missing."""
    root = Path(root)
    images, annotations = root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"
    if not (images.is_dir() and annotations.is_file()):
        raise UserError(f"COCO '{split}' split not found: expected {images}/*.jpg and {annotations}; but "
                        f"{listing(root)}. {_FIX}")
    return images, annotations


def _schema_problem(data: object) -> str | None:
    """What keeps `data` from being a COCO instances dataset, or None."""
    if not isinstance(data, dict):
        return "the top level is not an object"
    for key, fields in _FIELDS.items():
        if not isinstance(data.get(key), list):
            return f"it has no '{key}' list"
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                return f"{key}[{i}] lacks one of {', '.join(fields)}"
    images, categories = {im["id"] for im in data["images"]}, {c["id"] for c in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in images or ann["category_id"] not in categories:
            return f"annotations[{i}] names an image or category id the file does not list"
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
            return f"annotations[{i}] has a bbox that is not [x, y, w, h]"
    return None


def load_coco(path: Path) -> COCO:
    """A pycocotools COCO index of an instances json (silently built); UserError naming the file when broken."""
    fix = ("Fix: replace it with an intact copy (from annotations_trainval2017.zip for real COCO; for the embedded "
           "data, delete its folder and it is generated again).")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"COCO annotation file {path} is not readable JSON ({err}). {fix}") from None
    problem = _schema_problem(data)
    if problem is not None:
        raise UserError(f"COCO annotation file {path} is malformed: {problem}. {fix}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """(image float32 [3, H, W] in [0, 1], target) pairs of a split; the target holds `boxes` float32 [N, 4] xyxy,
    `labels` int64 [N] in 1..K and the COCO `image_id`. Crowd and degenerate boxes are skipped.

    A key is an index (no augmentation) or ``(index, aug_seed)``: with ``flip``, the horizontal flip (p = 0.5) draws
    only from ``np.random.default_rng(aug_seed)``, so a sampler that passes seeds makes training exactly resumable.
    """

    def __init__(self, root: Path, split: str, flip: bool = False) -> None:
        self.images_dir, self.ann_file = coco_paths(root, split)
        self.coco, self.flip = load_coco(self.ann_file), flip
        self.ids = sorted(self.coco.imgs)
        if not self.ids:
            raise UserError(f"COCO '{split}' split is empty: {self.ann_file} lists no images. {_FIX}")
        missing = [self.coco.imgs[i]["file_name"] for i in self.ids
                   if not (self.images_dir / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            raise UserError(f"{len(missing)} of {len(self.ids)} images listed in {self.ann_file} are missing, e.g. "
                            f"{self.images_dir / missing[0]}. {_FIX}")
        self.category_ids = sorted(self.coco.cats)
        self.label_to_category = {k + 1: cid for k, cid in enumerate(self.category_ids)}
        self.category_to_label = {cid: k for k, cid in self.label_to_category.items()}
        self.class_names = tuple(self.coco.cats[cid]["name"] for cid in self.category_ids)

    @property
    def num_classes(self) -> int:
        """K categories + the background: the `num_classes` of a torchvision detector."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes float32 [N, 4] (xyxy, clipped to the image) and labels int64 [N] of image `index`."""
        info = self.coco.imgs[self.ids[index]]
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(info["id"], []):
            x, y, w, h = ann["bbox"]
            box = [max(0.0, x), max(0.0, y), min(float(info["width"]), x + w), min(float(info["height"]), y + h)]
            if not ann["iscrowd"] and box[2] > box[0] and box[3] > box[1]:
                boxes.append(box)
                labels.append(self.category_to_label[ann["category_id"]])
        return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        with Image.open(self.images_dir / self.coco.imgs[self.ids[index]]["file_name"]) as im:
            image = np.array(im.convert("RGB"))
        boxes, labels = self.target(index)
        if self.flip and seed is not None and np.random.default_rng(seed).random() < 0.5:
            image, boxes = image[:, ::-1], np.stack([image.shape[1] - boxes[:, 2], boxes[:, 1],
                                                     image.shape[1] - boxes[:, 0], boxes[:, 3]], 1)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
        return tensor, {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "image_id": self.ids[index]}


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """A batch as torchvision detectors take it: a list of images and a list of targets."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def coco_fingerprint(root: Path) -> str:
    """The generator's spec name if root holds its manifest.json, else a short sha1 of the annotation files'
    names and sizes (cheap: nothing is parsed)."""
    manifest = Path(root) / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())["name"]
    digest = hashlib.sha1()
    for path in sorted(Path(root).glob("annotations/instances_*2017.json")):
        digest.update(f"{path.name}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:12]
