"""Embedded COCO-format generator, COCO loader and the COCOeval wrapper: real values, tiny sizes, seconds."""

from __future__ import annotations

import copy
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmark.data import coco_synth
from benchmark.data.coco import CocoDetection, collate, load_coco
from benchmark.data.coco_synth import (
    CocoSynthSpec,
    coco_categories,
    ensure_synthetic_coco,
    render_coco_scene,
    scene_rng,
)
from benchmark.engine.coco_eval import METRICS, coco_bbox_metrics, detections_to_coco
from benchmark.errors import UserError

TINY = CocoSynthSpec(height=64, width=80, n_train=8, n_val=4, seed=0)
REAL_COCO = {1: ("person", "person"), 2: ("bicycle", "vehicle"), 3: ("car", "vehicle"), 4: ("motorcycle", "vehicle"),
             6: ("bus", "vehicle"), 8: ("truck", "vehicle"), 10: ("traffic light", "outdoor"),
             13: ("stop sign", "outdoor")}  # from instances_val2017.json


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_coco(TINY, tmp_path_factory.mktemp("cache"), progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _instances(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


def test_spec_name() -> None:
    assert CocoSynthSpec().name == f"synth-coco-v{coco_synth.GENERATOR_VERSION}-256x320-1000-200-s0"
    assert TINY.name == f"synth-coco-v{coco_synth.GENERATOR_VERSION}-64x80-8-4-s0"


def test_layout_is_real_coco(tiny_root: Path) -> None:
    assert tiny_root.name == TINY.name and tiny_root.parent.name == "data"
    files = _files(tiny_root)
    assert sorted(files) == ["annotations/instances_train2017.json", "annotations/instances_val2017.json",
                             "manifest.json", *[f"train2017/{i:012d}.jpg" for i in range(1, 9)],
                             *[f"val2017/{10_000_000 + i:012d}.jpg" for i in range(1, 5)]]
    with Image.open(tiny_root / "val2017/000010000001.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (80, 64))
    for split, n in (("train", 8), ("val", 4)):
        data = _instances(tiny_root, split)
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(data)
        assert [im["file_name"] for im in data["images"]] == [f"{im['id']:012d}.jpg" for im in data["images"]]
        assert len(data["images"]) == n and all((im["height"], im["width"]) == (64, 80) for im in data["images"])
        anns = data["annotations"]
        assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
        per_image = np.bincount([a["image_id"] % 10_000_000 for a in anns], minlength=n + 1)[1:]
        assert per_image.min() >= 1 and per_image.max() <= 15
        for a in anns:
            x, y, w, h = a["bbox"]
            assert set(a) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"} and a["iscrowd"] == 0
            assert x >= 0 and y >= 0 and x + w <= 80 and y + h <= 64 and w >= 1 and h >= 1
            assert 16 <= a["area"] <= w * h  # visible pixels inside the visible-extent box
    manifest = json.loads(files["manifest.json"])
    assert manifest["name"] == TINY.name and manifest["counts"] == {"train": 8, "val": 4}


def test_category_ids_are_real_coco(tiny_root: Path) -> None:
    expected = [{"id": i, "name": n, "supercategory": s} for i, (n, s) in REAL_COCO.items()]
    assert coco_categories() == expected and _instances(tiny_root, "train")["categories"] == expected


def test_generation_is_deterministic_and_cached(tiny_root: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    again = ensure_synthetic_coco(TINY, tmp_path / "a", progress=False)
    assert _files(again) == _files(tiny_root)  # byte-identical json and JPEGs
    other = ensure_synthetic_coco(CocoSynthSpec(64, 80, 2, 1, seed=1), tmp_path / "b", progress=False)
    first = [[a for a in _instances(root, "train")["annotations"] if a["image_id"] == 1] for root in (other, again)]
    assert [a["bbox"] for a in first[0]] != [a["bbox"] for a in first[1]]
    name = "train2017/000000000001.jpg"
    assert (other / name).read_bytes() != (tiny_root / name).read_bytes()
    monkeypatch.setattr(coco_synth, "render_coco_scene", lambda *a: pytest.fail("regenerated an existing dataset"))
    assert ensure_synthetic_coco(TINY, tmp_path / "a", progress=False) == again


def test_generation_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, calls = CocoSynthSpec(height=32, width=40, n_train=3, n_val=1, seed=3), []

    def failing(*args: object) -> tuple[np.ndarray, list[dict]]:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render_coco_scene(*args)

    monkeypatch.setattr(coco_synth, "render_coco_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_coco(spec, tmp_path, progress=False)
    assert list((tmp_path / "data").iterdir()) == []  # no half dataset, temp dir removed
    monkeypatch.setattr(coco_synth, "render_coco_scene", render_coco_scene)
    assert len(CocoDetection(ensure_synthetic_coco(spec, tmp_path, progress=False), "train")) == 3


def test_scenes_have_all_sizes_categories_and_overlap() -> None:
    areas, categories, overlaps = [], set(), 0
    for i in range(12):
        rgb, anns = render_coco_scene(scene_rng(0, "train", i), 256, 320)
        assert rgb.shape == (256, 320, 3) and rgb.dtype == np.uint8 and rgb.std() > 10
        assert 1 <= len(anns) <= 15
        areas += [a["area"] for a in anns]
        categories |= {a["category_id"] for a in anns}
        boxes = np.array([a["bbox"] for a in anns])
        x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
        inter = (np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1)).clip(0) * (
            np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1)).clip(0)
        overlaps += int((np.triu(inter, 1) > 0).sum())
    areas = np.array(areas)
    small, large = (areas < 32**2).mean(), (areas >= 96**2).mean()
    assert 0.3 < small < 0.75 and 0.05 < large < 0.35 and 1 - small - large > 0.15  # COCO: 41 / 34 / 24 %
    assert categories == set(REAL_COCO) and overlaps >= 12  # occluded objects are common


def test_loader_round_trip(tiny_root: Path) -> None:
    val, data = CocoDetection(tiny_root, "val"), _instances(tiny_root, "val")
    assert len(val) == 4 and val.num_classes == 9
    assert val.class_names == tuple(name for name, _ in REAL_COCO.values())
    assert val.label_to_category == dict(enumerate(REAL_COCO, 1))
    assert val.category_to_label == {c: k for k, c in val.label_to_category.items()}
    for index in range(4):
        image, target = val[index]
        info = data["images"][index]
        assert image.dtype == torch.float32 and image.shape == (3, 64, 80) and 0 <= image.min() <= image.max() <= 1
        raw = np.asarray(Image.open(tiny_root / "val2017" / info["file_name"]), np.float32) / 255
        assert torch.allclose(image, torch.from_numpy(raw).permute(2, 0, 1)) and target["image_id"] == info["id"]
        anns = [a for a in data["annotations"] if a["image_id"] == info["id"]]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["boxes"].tolist() == [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        assert [val.label_to_category[k] for k in target["labels"].tolist()] == [a["category_id"] for a in anns]
    images, targets = collate([val[0], val[1]])
    assert len(images) == len(targets) == 2 and targets[1]["image_id"] == data["images"][1]["id"]


def _hand_root(root: Path, image: np.ndarray, anns: list[dict], name: str = "a.png") -> Path:
    """A one-image COCO root: the image (PNG, exact pixels) as val2017/<name> and its instances json."""
    (root / "val2017").mkdir(parents=True)
    Image.fromarray(image).save(root / "val2017" / name)
    h, w = image.shape[:2]
    data = {"images": [{"id": 7, "file_name": name, "height": h, "width": w}],
            "annotations": [{"id": k + 1, "image_id": 7, "iscrowd": 0, "area": 1.0, **a} for k, a in enumerate(anns)],
            "categories": [{"id": 3, "name": "car"}, {"id": 13, "name": "stop sign"}]}
    (root / "annotations").mkdir()
    (root / "annotations/instances_val2017.json").write_text(json.dumps(data))
    return root


def test_flip_on_a_hand_case(tmp_path: Path) -> None:
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    anns = [{"bbox": [1, 0, 2, 3], "category_id": 13}, {"bbox": [4, 2, 5, 9], "category_id": 3},  # clipped
            {"bbox": [0, 0, 6, 4], "category_id": 3, "iscrowd": 1}, {"bbox": [2, 1, 0, 2], "category_id": 3}]
    root = _hand_root(tmp_path, image, anns)
    plain, flipping = CocoDetection(root, "val"), CocoDetection(root, "val", flip=True)
    x, t = plain[0]
    assert torch.equal(x, torch.from_numpy(image).permute(2, 0, 1) / 255)
    assert t["boxes"].tolist() == [[1, 0, 3, 3], [4, 2, 6, 4]] and t["labels"].tolist() == [2, 1]  # crowd, w=0 gone
    assert torch.equal(flipping[0][0], x) and torch.equal(plain[(0, 1)][1]["boxes"], t["boxes"])  # no seed, no flip
    flips = 0
    for seed in range(16):
        xf, tf = flipping[(0, seed)]
        assert torch.equal(flipping[(0, seed)][0], xf)
        if np.random.default_rng(seed).random() < 0.5:
            flips += 1
            assert torch.equal(xf, x.flip(-1)) and tf["boxes"].tolist() == [[3, 0, 5, 3], [0, 2, 2, 4]]
        else:
            assert torch.equal(xf, x) and torch.equal(tf["boxes"], t["boxes"])
        assert torch.equal(tf["labels"], t["labels"])
    assert 0 < flips < 16


def test_bad_input_names_the_problem(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "annotations" / "instances_train2017.json"))) as e:
        CocoDetection(tmp_path, "train")
    assert str(tmp_path / "train2017") in str(e.value) and "--data-root" in str(e.value)
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    ann_file = root / "annotations/instances_val2017.json"
    good = ann_file.read_text()
    ann_file.write_text(good[:-40])
    with pytest.raises(UserError, match=f"{re.escape(str(ann_file))} is not readable JSON"):
        CocoDetection(root, "val")
    data = json.loads(good)
    del data["annotations"][2]["bbox"]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{re.escape(str(ann_file))} is malformed: annotations\[2\] lacks"):
        load_coco(ann_file)
    data = json.loads(good)
    data["annotations"][0]["category_id"] = 5
    ann_file.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"annotations\[0\] names an image or category id"):
        CocoDetection(root, "val")
    ann_file.write_text(good)
    (root / "val2017/000010000003.jpg").unlink()
    (root / "val2017/000010000004.jpg").unlink()
    with pytest.raises(UserError, match=re.escape(f"2 of 4 images listed in {ann_file} are missing, e.g. "
                                                  f"{root / 'val2017/000010000003.jpg'}")):
        CocoDetection(root, "val")
    ann_file.write_text(json.dumps({**json.loads(good), "images": [], "annotations": []}))
    with pytest.raises(UserError, match="split is empty"):
        CocoDetection(root, "val")


def _gt_detections(dataset: CocoDetection) -> tuple[list[int], list[dict]]:
    targets = [dataset[i][1] for i in range(len(dataset))]
    return ([t["image_id"] for t in targets],
            [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in targets])


def test_perfect_detections_score_100(tiny_root: Path) -> None:
    for split in ("train", "val"):
        data = CocoDetection(tiny_root, split)
        metrics = coco_bbox_metrics(data.coco, detections_to_coco(*_gt_detections(data), data.label_to_category))
        assert list(metrics) == list(METRICS)
        assert all(v == pytest.approx(100) or math.isnan(v) for v in metrics.values()), metrics
        assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == pytest.approx(100)


def test_metrics_equal_a_direct_cocoeval_call(tiny_root: Path, capsys: pytest.CaptureFixture) -> None:
    data, rng = CocoDetection(tiny_root, "train"), np.random.default_rng(0)
    image_ids, detections, direct = [], [], []
    for image_id, det in zip(*_gt_detections(data), strict=True):
        boxes = det["boxes"].numpy().astype(np.float64)
        keep = rng.random(len(boxes)) < 0.8
        size = np.tile(boxes[keep, 2:] - boxes[keep, :2], 2)
        fps = np.sort(rng.uniform(0, 60, (rng.integers(0, 4), 4)), 1)[:, [0, 2, 1, 3]]
        boxes = np.concatenate([boxes[keep] + rng.normal(0, 0.12, size.shape) * size, fps]).astype(np.float32)
        labels = np.concatenate([det["labels"].numpy()[keep], rng.integers(1, 9, len(fps))])
        scores = rng.random(len(boxes)).astype(np.float32)
        image_ids.append(image_id)
        detections.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                           "scores": torch.from_numpy(scores)})
        for (x1, y1, x2, y2), k, s in zip(boxes.astype(np.float64), labels, scores.astype(np.float64), strict=True):
            direct.append({"image_id": image_id, "category_id": data.label_to_category[int(k)],
                           "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    ours = coco_bbox_metrics(data.coco, detections_to_coco(image_ids, detections, data.label_to_category))
    assert capsys.readouterr().out == ""  # silent unless a stream is given
    gt = COCO(str(data.ann_file))
    evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(direct)), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    for name, value in zip(METRICS, evaluator.stats, strict=False):
        assert ours[name] == pytest.approx(100 * value, abs=1e-9) if value >= 0 else math.isnan(ours[name])
    assert 5 < ours["AP"] < 95 and ours["AP50"] > ours["AP75"]


def test_hand_built_ap(tmp_path: Path) -> None:
    # Two cars (both 40x40 = 1600 px: medium). Detection A (score 0.9) covers the top 25 rows of car 1:
    # IoU 1000 / 1600 = 0.625. Detection B (score 0.8) touches neither car.
    # At IoU 0.5 the ranked list is TP, FP: precision 1, 1/2 at recall 1/2, 1/2; car 2 is never found. The
    # interpolated precision is 1 at the 51 recall thresholds 0.00..0.50 and 0 at 0.51..1.00, so
    # AP50 = 51/101 = 50.495 %. A matches at IoU thresholds 0.50, 0.55, 0.60 only (0.625 < 0.65), so
    # AP75 = 0 and AP = 3/10 * 51/101 = 15.149 %. No small or large cars: APs, APl undefined (NaN).
    root = _hand_root(tmp_path, np.zeros((100, 100, 3), np.uint8),
                      [{"bbox": [0, 0, 40, 40], "category_id": 3, "area": 1600},
                       {"bbox": [50, 50, 40, 40], "category_id": 3, "area": 1600}])
    coco = load_coco(root / "annotations/instances_val2017.json")
    boxes, labels = torch.tensor([[0.0, 0, 40, 25], [0, 55, 35, 90]]), torch.tensor([1, 1])
    det = detections_to_coco([7], [{"boxes": boxes, "labels": labels, "scores": torch.tensor([0.9, 0.8])}], {1: 3})
    assert det[0] == {"image_id": 7, "category_id": 3, "bbox": [0, 0, 40, 25], "score": pytest.approx(0.9)}
    log = io.StringIO()
    metrics = coco_bbox_metrics(coco, det, stream=log)
    assert "Average Precision  (AP) @[ IoU=0.50      | area=   all" in log.getvalue()
    assert metrics["AP50"] == pytest.approx(100 * 51 / 101) and metrics["AP75"] == 0
    assert metrics["AP"] == pytest.approx(100 * 0.3 * 51 / 101) == metrics["APm"]
    assert math.isnan(metrics["APs"]) and math.isnan(metrics["APl"])
    # FP ranked first: precision 0 at recall 0, then 1/2 at recall 1/2 → AP50 = 0.5 * 51/101
    swapped = coco_bbox_metrics(coco, detections_to_coco(
        [7], [{"boxes": boxes, "labels": labels, "scores": torch.tensor([0.8, 0.9])}], {1: 3}))
    assert swapped["AP50"] == pytest.approx(100 * 0.5 * 51 / 101)
    empty = coco_bbox_metrics(coco, detections_to_coco([7], [{"boxes": torch.zeros(0, 4), "labels": labels[:0],
                                                              "scores": torch.zeros(0)}], {1: 3}))
    assert empty == pytest.approx({"AP": 0, "AP50": 0, "AP75": 0, "APs": math.nan, "APm": 0, "APl": math.nan},
                                  nan_ok=True)
