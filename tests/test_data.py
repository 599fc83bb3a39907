"""Embedded dataset generator, Cityscapes loader and pretraining patches: real values, tiny sizes, seconds."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import labels, name2label
from PIL import Image

from benchmark.data import synthetic
from benchmark.data.cityscapes import (
    CITYSCAPES_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CityscapesSegmentation,
    TrainAugment,
    apply_augment,
    data_fingerprint,
    find_pairs,
    label_id_to_train_id_lut,
    train_id_to_label_id_lut,
)
from benchmark.data.pretrain_set import make_object_crop_set, make_patch_classification_set
from benchmark.data.synthetic import SyntheticSpec, ensure_synthetic_cityscapes, render_scene, scene_rng
from benchmark.errors import UserError

TINY = SyntheticSpec(height=32, width=64, n_train=8, n_val=4, seed=0)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_cityscapes(TINY, tmp_path_factory.mktemp("cache"), progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_spec_name() -> None:
    assert SyntheticSpec().name == f"synth-cityscapes-v{synthetic.GENERATOR_VERSION}-128x256-1500-200-s0"
    assert TINY.name == f"synth-cityscapes-v{synthetic.GENERATOR_VERSION}-32x64-8-4-s0"


def test_layout_is_real_cityscapes(tiny_root: Path) -> None:
    assert tiny_root.name == TINY.name and tiny_root.parent.name == "data"
    files = _files(tiny_root)
    images = sorted(f for f in files if f.startswith("leftImg8bit/"))
    assert images[:2] == ["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
                          "leftImg8bit/train/bochum/bochum_000000_000019_leftImg8bit.png"]
    assert sorted(f for f in images if "/val/" in f) == [
        "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png",
        "leftImg8bit/val/frankfurt/frankfurt_000001_000019_leftImg8bit.png",
        "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png",
        "leftImg8bit/val/munster/munster_000000_000019_leftImg8bit.png"]
    assert len(images) == 12 and len(files) == 25  # images, labelIds, manifest
    for image in images:
        split, city, name = image.split("/")[1:]
        assert re.fullmatch(rf"{city}_\d{{6}}_\d{{6}}_leftImg8bit\.png", name)
        assert f"gtFine/{split}/{city}/{name.replace('_leftImg8bit', '_gtFine_labelIds')}" in files
    with Image.open(tiny_root / images[0]) as im:
        assert (im.mode, im.size) == ("RGB", (64, 32))
    with Image.open(tiny_root / images[0].replace("leftImg8bit", "gtFine", 1).replace(
            "_leftImg8bit", "_gtFine_labelIds")) as gt:
        assert (gt.mode, gt.size) == ("L", (64, 32))
    manifest = json.loads(files["manifest.json"])
    assert manifest["name"] == TINY.name and manifest["generator_version"] == synthetic.GENERATOR_VERSION
    assert manifest["counts"] == {"train": 8, "val": 4} and manifest["spec"]["seed"] == 0


def test_generation_is_deterministic_and_cached(tiny_root: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    again = ensure_synthetic_cityscapes(TINY, tmp_path / "a", progress=False)
    assert _files(again) == _files(tiny_root)  # byte-identical PNGs
    other = ensure_synthetic_cityscapes(SyntheticSpec(32, 64, 8, 4, seed=1), tmp_path / "b", progress=False)
    assert (other / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").read_bytes() != (
        tiny_root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").read_bytes()
    monkeypatch.setattr(synthetic, "render_scene", lambda *a: pytest.fail("regenerated an existing dataset"))
    assert ensure_synthetic_cityscapes(TINY, tmp_path / "a", progress=False) == again


def test_generation_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SyntheticSpec(height=32, width=64, n_train=3, n_val=1, seed=3)
    data = tmp_path / "data"
    leftover = data / f".{spec.name}.tmp-killed"  # what a killed generation leaves behind
    (leftover / "leftImg8bit/train/aachen").mkdir(parents=True)
    calls, real = [], synthetic.render_scene

    def failing(*args: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(synthetic, "render_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_cityscapes(spec, tmp_path, progress=False)
    assert sorted(p.name for p in data.iterdir()) == [leftover.name]  # no half dataset, own temp dir removed
    monkeypatch.setattr(synthetic, "render_scene", real)
    root = ensure_synthetic_cityscapes(spec, tmp_path, progress=False)
    assert root == data / spec.name and len(find_pairs(root, "train")) == 3


def test_label_luts_follow_cityscapesscripts() -> None:
    lut = label_id_to_train_id_lut()
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    for lab in labels:
        if lab.id >= 0:
            assert lut[lab.id] == (255 if lab.trainId in (255, -1) else lab.trainId), lab.name
    assert name2label["car"].id == 26 and lut[26] == 13
    assert lut[name2label["ego vehicle"].id] == 255 and lut[name2label["rail track"].id] == 255
    assert lut[200] == 255
    back = train_id_to_label_id_lut()
    assert [back[t] for t in range(19)] == [name2label[n].id for n in CITYSCAPES_CLASSES]
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[13] == "car" and len(CITYSCAPES_CLASSES) == 19
    assert (lut[back[:19]] == np.arange(19)).all() and back[255] == 0


def test_scenes_cover_all_classes_with_sane_fractions() -> None:
    lut = label_id_to_train_id_lut()
    counts, present = np.zeros(256), np.zeros(256, bool)
    for i in range(24):
        image, label_ids = render_scene(scene_rng(0, 0, i), 64, 128)
        assert image.shape == (64, 128, 3) and image.dtype == np.uint8 and label_ids.dtype == np.uint8
        assert label_ids.max() <= 33 and image.std() > 10
        train_ids = lut[label_ids]
        counts += np.bincount(train_ids.ravel(), minlength=256)
        present |= np.bincount(train_ids.ravel(), minlength=256) > 0
    assert present[:19].all(), [c for c, p in zip(CITYSCAPES_CLASSES, present, strict=False) if not p]
    assert present[255]  # ego vehicle, clutter, rail track
    frac = counts / counts.sum()
    assert 0.2 < frac[0] < 0.45 and 0.03 < frac[10] < 0.2 and 0.1 < frac[2] < 0.35  # road, sky, building
    assert (frac[:19] > 0.001).all()  # small classes common enough to learn


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 2)).save(path)


def test_find_pairs_errors_name_the_expected_paths(tmp_path: Path) -> None:
    _touch(tmp_path / "leftImg8bit/train/ulm/ulm_000000_000019_leftImg8bit.png")
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "gtFine" / "train"))) as missing:
        find_pairs(tmp_path, "train")
    assert "_gtFine_labelIds.png" in str(missing.value) and "leftImg8bit/" in str(missing.value)
    (tmp_path / "leftImg8bit/val").mkdir()
    (tmp_path / "gtFine/val").mkdir(parents=True)
    with pytest.raises(UserError, match="empty"):
        find_pairs(tmp_path, "val")
    (tmp_path / "gtFine/train/ulm").mkdir(parents=True)
    expected = tmp_path / "gtFine/train/ulm/ulm_000000_000019_gtFine_labelIds.png"
    with pytest.raises(UserError, match=re.escape(str(expected))):
        find_pairs(tmp_path, "train")
    _touch(expected)
    assert find_pairs(tmp_path, "train") == [(tmp_path / "leftImg8bit/train/ulm/ulm_000000_000019_leftImg8bit.png",
                                              expected)]
    with pytest.raises(UserError, match="does not exist"):
        find_pairs(tmp_path / "nowhere", "train")


def test_data_fingerprint(tiny_root: Path, tmp_path: Path) -> None:
    assert data_fingerprint(tiny_root) == TINY.name
    copy = tmp_path / "real"
    shutil.copytree(tiny_root, copy)
    (copy / "manifest.json").unlink()
    first = data_fingerprint(copy)
    assert re.fullmatch(r"[0-9a-f]{12}", first) and data_fingerprint(copy) == first
    (copy / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png").write_bytes(b"changed")
    assert data_fingerprint(copy) != first


def test_augment_is_deterministic_and_flips_image_with_label() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    label = image[..., 0] // 16  # label is a function of the image, so any misalignment shows
    aug = TrainAugment(flip=True, crop=(24, 24))
    flipped = 0
    for seed in range(12):
        img, lab = apply_augment(aug, np.random.default_rng(seed), image, label)
        again = apply_augment(aug, np.random.default_rng(seed), image, label)
        assert (img == again[0]).all() and (lab == again[1]).all()
        assert img.shape == (24, 24, 3) and lab.shape == (24, 24)
        pad = lab == 255  # crop taller than the image: label padded with ignore
        assert pad[20:].all() and not pad[:20].any() and (img[20:] == 0).all()
        assert (lab[~pad] == img[..., 0][~pad] // 16).all()
        flipped += not any((img[:20] == image[:, x0:x0 + 24]).all() for x0 in range(7))
    assert 0 < flipped < 12
    scaled = apply_augment(TrainAugment(flip=False, scale_range=(2.0, 2.0)), rng, image, label)
    assert scaled[0].shape == (40, 60, 3) and set(np.unique(scaled[1])) <= set(np.unique(label))


def test_dataset_outputs(tiny_root: Path) -> None:
    val = CityscapesSegmentation(tiny_root, "val")
    assert len(val) == 4 and val.files == find_pairs(tiny_root, "val")
    x, y = val[1]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 64) and y.dtype == torch.int64 and y.shape == (32, 64)
    raw = np.asarray(Image.open(val.files[1][0]), np.float32) / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(x * std + mean, torch.from_numpy(raw).permute(2, 0, 1), atol=1e-5)
    ids = np.asarray(Image.open(val.files[1][1]))
    assert (y.numpy() == label_id_to_train_id_lut()[ids]).all() and set(y.unique().tolist()) <= {*range(19), 255}
    assert val._arrays[1] is not None and val._arrays[0] is None  # cached after first load only
    assert torch.equal(val[(1, 5)][0], x)  # no augmentation configured: seeds change nothing
    train = CityscapesSegmentation(tiny_root, "train", size=(16, 32), augment=TrainAugment(crop=(12, 20)))
    a, b, c = train[(2, 7)], train[(2, 7)], train[(2, 8)]
    assert a[0].shape == (3, 12, 20) and a[1].shape == (12, 20)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    small, full = train[2], CityscapesSegmentation(tiny_root, "train")[2]  # size: bilinear image, nearest label
    assert small[0].shape == (3, 16, 32) and set(small[1].unique().tolist()) <= set(full[1].unique().tolist())


def test_pretrain_patches() -> None:
    patches, targets = make_patch_classification_set(n_scenes=2, height=32, width=64, patch=16, seed=0)
    assert patches.shape == (8, 16, 16, 3) and patches.dtype == np.uint8
    assert targets.shape == (8, 19) and targets.dtype == np.float32 and set(np.unique(targets)) <= {0.0, 1.0}
    assert targets.sum(1).min() >= 1
    again = make_patch_classification_set(n_scenes=2, height=32, width=64, patch=16, seed=0)
    assert (again[0] == patches).all() and (again[1] == targets).all()
    train_image = render_scene(scene_rng(0, 0, 0), 32, 64)[0]
    assert not any((train_image[y:y + 16, x:x + 16] == patches[0]).all() for y in range(17) for x in range(49))
    with pytest.raises(ValueError, match="patch"):
        make_patch_classification_set(n_scenes=1, height=32, width=64, patch=40, seed=0)


def test_object_crops_are_centred_on_labelled_objects() -> None:
    """Detection stand-in: one crop per object (4 per scene), the object's category always among the labels."""
    from benchmark.data._coco_scene import render_coco_scene
    from benchmark.data._coco_shapes import CATEGORIES

    patches, targets = make_object_crop_set(n_scenes=3, height=64, width=80, patch=32, seed=0)
    assert patches.shape == (12, 32, 32, 3) and patches.dtype == np.uint8
    assert targets.shape == (12, len(CATEGORIES)) and set(np.unique(targets)) <= {0.0, 1.0}
    again = make_object_crop_set(n_scenes=3, height=64, width=80, patch=32, seed=0)
    assert (again[0] == patches).all() and (again[1] == targets).all()
    # Scene 0 is re-rendered from split code 2: every category of its crops is one of its objects.
    scene_categories = {a["category_id"] for a in render_coco_scene(scene_rng(0, 2, 0), 64, 80)[1]}
    crop_categories = {list(CATEGORIES)[c] for c in np.flatnonzero(targets[:4].sum(0))}
    assert crop_categories and crop_categories <= scene_categories
    assert targets.sum(1).min() >= 1
    with pytest.raises(ValueError, match="patch"):
        make_object_crop_set(n_scenes=1, height=32, width=64, patch=40, seed=0)
