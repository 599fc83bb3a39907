"""Our mIoU equals cityscapesscripts' own evaluator on result PNGs written in the Cityscapes format."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CityscapesSegmentation,
    find_pairs,
    train_id_to_label_id_lut,
)
from benchmark.data.synthetic import SyntheticSpec, ensure_synthetic_cityscapes
from benchmark.engine.evaluate import ConfusionMatrix


def _cityscapes_scores(predictions: list[str], ground_truths: list[str]) -> dict[str, float]:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as evaluator

    evaluator.args.quiet = True
    evaluator.args.evalInstLevelScore = False
    evaluator.args.JSONOutput = False
    return evaluator.evaluateImgLists(predictions, ground_truths, evaluator.args)["classScores"]


def test_miou_matches_cityscapesscripts(tmp_path: Path) -> None:
    root = ensure_synthetic_cityscapes(SyntheticSpec(height=32, width=64, n_train=2, n_val=6, seed=5),
                                       tmp_path, progress=False)
    dataset = CityscapesSegmentation(root, "val")
    to_label_id = train_id_to_label_id_lut()
    rng = np.random.default_rng(0)
    matrix = ConfusionMatrix(len(CITYSCAPES_CLASSES))
    predictions = []
    for i, (_, gt_path) in enumerate(find_pairs(root, "val")):
        train_ids = dataset[i][1].numpy()
        prediction = np.where(train_ids == 255, 0, train_ids)
        noise = rng.random(prediction.shape) < 0.3  # a realistic, imperfect prediction
        prediction[noise] = rng.integers(0, 19, noise.sum())
        path = tmp_path / "results" / gt_path.name.replace("gtFine_labelIds", "pred")
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(to_label_id[prediction].astype(np.uint8)).save(path)
        predictions.append(str(path))
        import torch

        matrix.update(torch.from_numpy(prediction), torch.from_numpy(train_ids))
    theirs = _cityscapes_scores(predictions, [str(gt) for _, gt in find_pairs(root, "val")])
    ours = dict(zip(CITYSCAPES_CLASSES, matrix.class_iou(), strict=True))
    compared = 0
    for name, value in ours.items():
        if math.isnan(theirs[name]):
            assert math.isnan(value), name
            continue
        assert value == pytest.approx(theirs[name], abs=1e-9), name
        compared += 1
    assert compared >= 15
    valid = [v for v in theirs.values() if not math.isnan(v)]
    assert matrix.miou() == pytest.approx(100 * sum(valid) / len(valid), abs=1e-6)
