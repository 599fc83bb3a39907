"""`benchmark/perf.py` on tiny settings: JSON lines parse, times are positive, the two MasKD losses agree."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.perf import main

# One thread: on a CPU shared with other jobs, torch's default (one per core) can be several times slower.
TINY = ["--preset", "smoke", "--device", "cpu", "--teacher", "deeplabv3_r18", "--repeats", "1", "--warmup", "0",
        "--threads", "1", "--loss-size", "2", "6", "16", "10", "12"]


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
