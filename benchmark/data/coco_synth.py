"""Embedded default detection data: procedural scenes (``benchmark.data._coco_scene``) written in the real COCO
layout, ``{train,val}2017/<12-digit id>.jpg`` and ``annotations/instances_{train,val}2017.json``, with real COCO
category ids. Image i of a split draws from ``SeedSequence([seed, SPLIT_CODES[split], i])``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data._coco_scene import render_coco_scene
from benchmark.data._coco_shapes import CATEGORIES
from benchmark.data.generated import GeneratedSpec, ensure_generated
from benchmark.progress import progress as progress_bar

GENERATOR_VERSION: int = 1
SPLIT_CODES = {"train": 0, "val": 1}
JPEG_QUALITY = 90


@dataclass(frozen=True)
class CocoSynthSpec(GeneratedSpec):
    """Size and seed of the embedded detection data; its name keys the cache directory."""

    height: int = 256
    width: int = 320
    n_train: int = 1000
    n_val: int = 200
    seed: int = 0

    kind = "synth-coco"
    version = GENERATOR_VERSION


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image `index` of a split."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))


def image_id(split: str, index: int) -> int:
    """COCO image id, unique across splits: train 1, 2, ...; val 10000001, 10000002, ..."""
    return SPLIT_CODES[split] * 10_000_000 + index + 1


def coco_categories() -> list[dict]:
    """The COCO `categories` entries of the embedded data (real COCO ids, names and supercategories)."""
    return [{"id": cid, "name": name, "supercategory": sup} for cid, (name, sup, *_) in CATEGORIES.items()]


def _write_split(spec: CocoSynthSpec, split: str, n: int, root: Path, progress: bool) -> None:
    """Render, save the JPEGs of and write the instances json of one split under root."""
    folder = root / f"{split}2017"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for i in progress_bar(range(n), desc=f"generating {spec.name} {split}", unit="img", disable=not progress):
        rgb, anns = render_coco_scene(scene_rng(spec.seed, split, i), spec.height, spec.width)
        iid = image_id(split, i)
        name = f"{iid:012d}.jpg"
        Image.fromarray(rgb).save(folder / name, quality=JPEG_QUALITY)
        images.append({"id": iid, "file_name": name, "height": spec.height, "width": spec.width})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": iid, **ann, "iscrowd": 0})
    info = {"description": f"kdbench embedded detection data {spec.name}", "version": str(GENERATOR_VERSION)}
    dataset = {"info": info, "licenses": [], "images": images, "annotations": annotations,
               "categories": coco_categories()}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(dataset, separators=(",", ":")))


def ensure_synthetic_coco(spec: CocoSynthSpec, cache_dir: Path, progress: bool = True) -> Path:
    """Generate the dataset once into <cache_dir>/data/<spec.name> (atomically) and return that path."""

    def write(root: Path) -> None:
        for split, n in (("train", spec.n_train), ("val", spec.n_val)):
            _write_split(spec, split, n, root, progress)

    return ensure_generated(spec, cache_dir, write)
