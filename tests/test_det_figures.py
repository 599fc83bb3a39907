"""`python -m benchmark.figures` detection figures (MasKD-det masks per FPN level, masks with weights), drawn
from a real smoke cache of `benchmark/run.py --table 1 --methods maskd` (teacher + token stage)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.errors import UserError
from benchmark.figures import det_level_masks, det_mask_weights
from benchmark.figures.__main__ import main
from benchmark.figures.common import DPI
from benchmark.figures.det_common import (
    DetModels,
    det_data_root,
    det_val_samples,
    image_level_masks,
    norm_note,
    pick_det,
    pick_level,
)
from benchmark.models.detectors import detector_features
from methods.base import BatchStatisticsNorm
from methods.maskd.masks import token_masks
from methods.maskd.weighting import MaskWeighting

pytestmark = pytest.mark.slow
HINT = "python benchmark/run.py --table 1"


@pytest.fixture(scope="module")
def det_cache(det_smoke: tuple[Path, Path]) -> Path:
    """The shared smoke Table 1 cache: a Faster R-CNN R101 teacher and its MasKD token stage."""
    return det_smoke[0]


def _partial_cache(source: Path, target: Path, parts: tuple[str, ...]) -> Path:
    """A cache that links only `parts` (teachers, stages, data) of `source`."""
    target.mkdir()
    for part in parts:
        (target / part).symlink_to(source / part, target_is_directory=True)
    return target


def _check(png: Path, inches: tuple[float, float]) -> None:
    pdf = png.with_suffix(".pdf")
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 10_000
    assert png.stat().st_size > 10_000
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert abs(pixels.shape[1] - inches[0] * DPI) <= 1 and abs(pixels.shape[0] - inches[1] * DPI) <= 1
    assert pixels.std() > 20  # images and masks, not a blank canvas


def test_both_figures_drawn(det_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs"
    assert main(["--cache-dir", str(det_cache), "--out", str(out), "--det-images", "1",
                 "--det-weight-images", "2"]) == 0
    err = capsys.readouterr().err
    assert "skipped fig6_learned_masks" in err and "skipped det_" not in err  # no segmentation cache here
    assert sorted(p.name for p in out.iterdir()) == ["det_level_masks.pdf", "det_level_masks.png",
                                                      "det_mask_weights.pdf", "det_mask_weights.png"]
    _check(out / "det_level_masks.png", det_level_masks.figure_size(1, 5, 6, 64, 80))
    _check(out / "det_mask_weights.png", det_mask_weights.figure_size(2, 6, 64, 80))
    only = tmp_path / "only"  # --only takes several figures, and nothing else is tried
    assert main(["--cache-dir", str(det_cache), "--out", str(only), "--det-images", "1", "--det-weight-images", "1",
                 "--only", "det_levels", "det_weights"]) == 0
    assert "fig6" not in capsys.readouterr().err and len(list(only.iterdir())) == 4

    assert main(["--cache-dir", str(det_cache), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "detection teacher faster_rcnn_r101" in listing and "learned, T=6, weighting on, 5 levels" in listing


def test_masks_and_weights_match_the_stage(det_cache: Path) -> None:
    teacher, stage = pick_det(det_cache, weighted=True)
    assert stage.teacher_key == teacher.key and stage.num_tokens == 6
    samples = det_val_samples(det_data_root(teacher, det_cache), 2)
    model = DetModels().get(teacher, stage, samples.class_names)
    state = stage.entry.state_dict()
    levels = image_level_masks(model, samples.images[0])
    assert [lv.name for lv in levels] == ["P2", "P3", "P4", "P5", "P6"]
    assert pick_level(levels, "P3") == pick_level(levels, "fpn_1") == pick_level(levels, "1") == 1
    with pytest.raises(UserError, match="none of the stage's levels"):
        pick_level(levels, "P9")

    # Independently: the teacher's FPN levels, the cached tokens through `token_masks`, the cached weighting module.
    with torch.no_grad():
        _, _, features = detector_features(model.teacher, [samples.images[0]])
        for lv in levels:
            feat = features[lv.key]
            expected = token_masks(feat, state[f"token_sets.{lv.level}.tokens"])[0]
            torch.testing.assert_close(lv.small, expected, rtol=1e-5, atol=1e-6)
            weighting = MaskWeighting(feat.shape[1], stage.num_tokens)
            prefix = f"token_sets.{lv.level}.weighting."
            weighting.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
            torch.testing.assert_close(lv.weights, weighting(feat)[0], rtol=1e-5, atol=1e-6)
            assert lv.weights is not None and abs(float(lv.weights.sum()) - 1) < 1e-5
            assert lv.big.shape == (6, 64, 80) and lv.big.min() >= 0 and lv.big.max() <= 1

    # A stage learned on a batch-statistics teacher is drawn on one: its masks come from those features.
    batch_stage = dataclasses.replace(stage, meta={**stage.meta, "teacher_norm": "batch"})
    assert stage.teacher_norm == "running" and "(BN: batch statistics)" in batch_stage.describe()
    assert norm_note(teacher, stage) == "" and norm_note(teacher, batch_stage) == ", teacher BN: batch statistics"
    arch = {**teacher.config.get("arch", {}), "detector": {"faster_rcnn": {"norm": "bn_eval"}}}
    kept = dataclasses.replace(teacher, meta={**teacher.meta, "config": {**teacher.config, "arch": arch}})
    assert norm_note(kept, batch_stage) == ", teacher BN: kept pretrained statistics (bn_eval)"  # left alone
    batch_model = DetModels().get(teacher, batch_stage, samples.class_names)
    norms = [type(m) for m in batch_model.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and set(norms) == {BatchStatisticsNorm}
    batch_levels = image_level_masks(batch_model, samples.images[0])
    with torch.no_grad():
        _, _, features = detector_features(batch_model.teacher, [samples.images[0]])
    expected = token_masks(features[levels[0].key], state[f"token_sets.{levels[0].level}.tokens"])[0]
    torch.testing.assert_close(batch_levels[0].small, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batch_levels[0].small, levels[0].small, atol=1e-3)

    # The weights printed above the masks of each row ("w = 0.31") add up to 1 (to the printed precision).
    rows = [image_level_masks(model, image)[1] for image in samples.images]
    fig = det_mask_weights.render(samples, rows, teacher, stage)
    axes = np.array(fig.axes[:2 * (2 + 6)]).reshape(2, 2 + 6)
    for row, lv in zip(axes, rows, strict=True):
        printed = [float(re.search(r"w = (\S+)", ax.get_title()).group(1)) for ax in row[1:7]]
        assert abs(sum(printed) - 1) <= 6 * 0.005
        assert printed == pytest.approx(lv.weights.tolist(), abs=0.005)


def test_missing_entries_skip_with_the_hint(det_cache: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs"
    no_stage = _partial_cache(det_cache, tmp_path / "no_stage", ("teachers", "data"))
    assert main(["--cache-dir", str(no_stage), "--out", str(out), "--only", "det_levels"]) == 2
    err = capsys.readouterr().err
    assert "skipped det_level_masks: no learned MasKD detection tokens" in err and HINT in err

    no_teacher = _partial_cache(det_cache, tmp_path / "no_teacher", ("stages", "data"))
    assert main(["--cache-dir", str(no_teacher), "--out", str(out), "--only", "det_weights"]) == 2
    err = capsys.readouterr().err
    assert "skipped det_mask_weights" in err and "but not their teacher" in err and HINT in err

    assert main(["--cache-dir", str(tmp_path / "empty"), "--out", str(out), "--only", "det_weights"]) == 2
    err = capsys.readouterr().err
    assert "no cached detection teacher" in err and HINT in err
    assert not out.exists()

    # A stage learned without the weighting module: nothing for Fig. 3b to draw.
    unweighted = _partial_cache(det_cache, tmp_path / "unweighted", ("teachers", "data"))
    (stage_src,) = (det_cache / "stages").iterdir()
    stage_dir = unweighted / "stages" / stage_src.name
    stage_dir.mkdir(parents=True)
    (stage_dir / "model.pt").symlink_to(stage_src / "model.pt")
    meta = json.loads((stage_src / "meta.json").read_text())
    meta["config"]["weighting"] = False
    (stage_dir / "meta.json").write_text(json.dumps(meta))
    assert main(["--cache-dir", str(unweighted), "--out", str(out), "--only", "det_weights"]) == 2
    assert "no mask weighting module" in capsys.readouterr().err
    assert not out.exists()


def test_teacher_key_of_another_task(det_cache: Path, tmp_path: Path) -> None:
    cache = _partial_cache(det_cache, tmp_path / "mixed", ("data", "stages"))
    (cache / "teachers").mkdir()
    for entry in (det_cache / "teachers").iterdir():
        (cache / "teachers" / entry.name).symlink_to(entry, target_is_directory=True)
    seg = cache / "teachers" / "deeplabv3_r18-0123456789ab"
    seg.mkdir()
    (seg / "model.pt").write_bytes(b"")
    (seg / "meta.json").write_text(json.dumps({"config": {"task": "seg", "model": "deeplabv3_r18"}}))
    with pytest.raises(UserError, match="not a detection teacher"):
        pick_det(cache, teacher_key="0123")
    teacher, _ = pick_det(cache)  # the newest seg teacher is not taken for the detection figures
    assert teacher.model == "faster_rcnn_r101"
    shutil.rmtree(seg)
