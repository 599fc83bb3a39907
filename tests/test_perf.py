"""`benchmark/perf.py` on tiny settings: JSON lines parse, times are positive, the two MasKD losses agree; the
detection path (`--task det`) times every detection method on the smoke preset's 64×80 detection data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmark.config import for_task, load_preset
from benchmark.perf import DETECTION_CLASSES, main, random_detection_batch

# One thread: on a CPU shared with other jobs, torch's default (one per core) can be several times slower.
TINY = ["--preset", "smoke", "--device", "cpu", "--teacher", "deeplabv3_r18", "--repeats", "1", "--warmup", "0",
        "--threads", "1", "--loss-size", "2", "6", "16", "10", "12"]
# Detection: the same pair family (Faster R-CNN R50 teacher instead of R101 keeps the test quick).
TINY_DET = ["--task", "det", "--preset", "smoke", "--device", "cpu", "--teacher", "faster_rcnn_r50", "--repeats", "1",
            "--warmup", "0", "--threads", "1", "--loss-size", "2", "6", "16", "10", "12"]


def test_perf_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    assert main([*TINY, "--methods", "baseline", "kd", "maskd", "--json"]) == 0
    assert torch.get_num_threads() == threads  # --threads does not leak out of main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    steps = {r["method"]: r for r in rows if "method" in r}
    losses = [r for r in rows if r.get("benchmark") == "masked_feature_loss"]
    assert list(steps) == ["baseline", "kd", "maskd"] and len(rows) == len(steps) + len(losses)
    for r in steps.values():
        assert r["step_ms"] > 0 and r["floor_ms"] > 0 and r["ratio"] > 0 and r["ratio_of_minima"] > 0
        assert r["floor_ms"] == pytest.approx(r["student_ms"] + r["teacher_ms"], abs=0.05)
    assert steps["baseline"]["target"] is None and steps["kd"]["target"] == 1.30 and steps["maskd"]["target"] == 1.10
    assert "load_stage" in steps["maskd"]["note"]
    assert sorted(r["weights"] for r in losses) == [False, True]
    for r in losses:
        assert r["fast_ms"] > 0 and r["naive_ms"] > 0 and r["speedup"] > 0
        assert r["rel_diff"] < 1e-5 and r["grad_rel_diff"] < 1e-5


def test_perf_table_loss_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--methods"]) == 0
    out = capsys.readouterr().out
    assert "KD step" not in out and out.count("masked_feature_loss") == 2


def test_perf_unknown_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--methods", "kd", "maskdd"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'maskdd'") and "maskd" in err


def test_perf_detection_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY_DET, "--json"]) == 0  # default methods of --task det
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    steps = {r["method"]: r for r in rows if "method" in r}
    assert list(steps) == ["baseline", "fgd", "maskd_det", "mgd", "mimic"]
    assert len(rows) == len(steps) + 2  # + the two masked-loss cases
    for r in steps.values():
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0 and math.isfinite(r["ratio_of_minima"])
        assert r["step_ms"] > 0 and r["student_ms"] > 0 and r["teacher_ms"] > 0
        assert r["floor_ms"] == pytest.approx(r["student_ms"] + r["teacher_ms"], abs=0.05)
        assert "non-finite" not in r.get("note", "")
    assert steps["baseline"]["target"] is None and steps["maskd_det"]["target"] == 1.15
    assert all(steps[m]["target"] == 1.30 for m in ("fgd", "mgd", "mimic"))
    assert "load_stage" in steps["maskd_det"]["note"] and "custom_warmup=1" in steps["maskd_det"]["note"]


def test_random_detection_batch_is_valid() -> None:
    preset = for_task(load_preset("smoke"), "det")
    images, targets = random_detection_batch(preset, torch.Generator().manual_seed(0))
    assert len(images) == len(targets) == preset.student.batch_size
    for image, target in zip(images, targets, strict=True):
        assert image.shape == (3, 64, 80) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        boxes, labels = target["boxes"], target["labels"]
        assert 1 <= len(boxes) <= 6 and boxes.dtype == torch.float32 and labels.dtype == torch.int64
        sides = boxes[:, 2:] - boxes[:, :2]
        assert (sides >= 8).all() and (sides <= 64).all() and (boxes[:, :2] >= 0).all()
        assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 64).all()
        assert ((labels >= 1) & (labels <= len(DETECTION_CLASSES))).all()


@pytest.mark.parametrize(("argv", "message"), [
    ([*TINY_DET, "--methods", "kd"], "method 'kd' is a segmentation method"),
    ([*TINY, "--methods", "fgd"], "method 'fgd' is a detection method"),
    ([*TINY_DET, "--methods", "mimic", "--teacher", "retinanet_r101"], "same detector family"),
    ([*TINY_DET, "--student", "deeplabv3_r18"], "unknown student detector 'deeplabv3_r18'"),
])
def test_perf_detection_bad_inputs(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(argv) == 2  # refused before any model is built
    assert message in capsys.readouterr().err
