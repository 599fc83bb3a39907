"""The data of a table: the user's `--data-root` or the embedded default (generated once), opened as splits."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from benchmark.config import Preset
from benchmark.data.cityscapes import CityscapesSegmentation, TrainAugment, data_fingerprint, find_pairs
from benchmark.data.coco import CocoDetection, coco_fingerprint, coco_paths
from benchmark.data.coco_synth import CocoSynthSpec, ensure_synthetic_coco
from benchmark.data.synthetic import SyntheticSpec, ensure_synthetic_cityscapes
from benchmark.engine import dist
from benchmark.tasks import DetectionTask, SegmentationTask, Task


def data_root(task: str, user_root: Path | None, cache_dir: Path, preset: Preset,
              dry_run: bool = False) -> tuple[Path, str]:
    """(root, data id): the user's root, checked for the task's layout, else the embedded default, generated
    into `cache_dir` on first use (a dry run only names it)."""
    if user_root is not None:
        root = user_root.expanduser().resolve()
        check, fingerprint = (find_pairs, data_fingerprint) if task == "seg" else (coco_paths, coco_fingerprint)
        for split in ("train", "val"):
            check(root, split)
        return root, fingerprint(root)
    d = preset.data
    if task == "seg":
        spec = SyntheticSpec(height=d.height, width=d.width, n_train=d.n_train, n_val=d.n_val, seed=d.seed)
        generate = ensure_synthetic_cityscapes
    else:
        spec = CocoSynthSpec(height=d.height, width=d.width, n_train=d.n_train, n_val=d.n_val, seed=d.seed)
        generate = ensure_synthetic_coco
    if not dry_run:
        if dist.is_main():
            generate(spec, cache_dir)
        dist.barrier()
    return cache_dir / "data" / spec.name, spec.name


def open_splits(task: str, root: Path, preset: Preset) -> tuple[Task, Dataset, Dataset]:
    """The task object and the (train, val) datasets of `root`."""
    d = preset.data
    if task == "seg":
        size = (d.height, d.width)
        augment = TrainAugment(flip=d.flip, scale_range=d.scale_range, crop=d.crop)
        return (SegmentationTask(), CityscapesSegmentation(root, "train", size=size, augment=augment),
                CityscapesSegmentation(root, "val", size=size))
    train, val = CocoDetection(root, "train", flip=d.flip), CocoDetection(root, "val")
    return DetectionTask(val.class_names, (d.height, d.width)), train, val
