"""Embedded default dataset: procedural street scenes (``benchmark.data._street``) written in the real
Cityscapes on-disk layout. Image i of a split draws from ``SeedSequence([seed, SPLIT_CODES[split], i])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data._street import StreetScene
from benchmark.data.generated import GeneratedSpec, ensure_generated
from benchmark.progress import progress as progress_bar

GENERATOR_VERSION: int = 1
TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg",
                "hanover", "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm",
                "weimar", "zurich")
VAL_CITIES = ("frankfurt", "lindau", "munster")
SPLIT_CODES = {"train": 0, "val": 1}  # benchmark.data.pretrain_set uses 2, so its scenes never repeat these


@dataclass(frozen=True)
class SyntheticSpec(GeneratedSpec):
    """Size and seed of the embedded segmentation data; its name keys the cache directory."""

    height: int = 128
    width: int = 256
    n_train: int = 1500
    n_val: int = 200
    seed: int = 0

    kind = "synth-cityscapes"
    version = GENERATOR_VERSION


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One street view: RGB uint8 [H, W, 3] and Cityscapes labelIds uint8 [H, W]."""
    return StreetScene(rng, height, width).render()


def scene_rng(seed: int, split_code: int, index: int) -> np.random.Generator:
    """The generator of image `index` of a split (SPLIT_CODES; 2 = the pretraining set)."""
    return np.random.default_rng(np.random.SeedSequence([seed, split_code, index]))


def image_stem(split: str, index: int) -> tuple[str, str]:
    """(city, file stem): cities in turn, a per-city sequence number, frame 19 as in Cityscapes."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def ensure_synthetic_cityscapes(spec: SyntheticSpec, cache_dir: Path, progress: bool = True) -> Path:
    """Generate the dataset once into <cache_dir>/data/<spec.name> (atomically) and return that path."""

    def write(root: Path) -> None:
        jobs = [(split, i) for split, n in (("train", spec.n_train), ("val", spec.n_val)) for i in range(n)]
        for split, i in progress_bar(jobs, desc=f"generating {spec.name}", unit="img", disable=not progress):
            rgb, lab = render_scene(scene_rng(spec.seed, SPLIT_CODES[split], i), spec.height, spec.width)
            city, stem = image_stem(split, i)
            for arr, folder, suffix in ((rgb, "leftImg8bit", "leftImg8bit"), (lab, "gtFine", "gtFine_labelIds")):
                out = root / folder / split / city
                out.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(out / f"{stem}_{suffix}.png", compress_level=1)

    return ensure_generated(spec, cache_dir, write)
