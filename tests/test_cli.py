"""End-to-end: `benchmark/run.py --table 3 --preset smoke` and every bad input the CLI must refuse."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmark.cli import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def smoke_out(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished smoke run of the teacher and the R18 row (shared by the tests below)."""
    out = tmp_path_factory.mktemp("out")
    assert _run(cache, out, "--rows", "r18") == 0
    return out


def _run(cache: Path, out: Path, *extra: str) -> int:
    return main(["--table", "3", "--preset", "smoke", "--device", "cpu", "--cache-dir", str(cache),
                 "--out", str(out), *extra])


def test_smoke_table3_end_to_end(smoke_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = pd.read_csv(smoke_out / "ledger.csv")
    methods = ["baseline", "skd", "ifvd", "cwd", "cirkd", "maskd"]
    assert sorted(ledger["row"]) == ["r18"] * len(methods) + ["teacher"]
    assert sorted(ledger[ledger["row"] == "r18"]["method"]) == sorted(methods)
    assert set(ledger["role"]) == {"teacher", "student"}
    assert ledger["miou"].between(0, 100).all()
    assert (ledger[ledger["role"] == "student"]["steps"] == 4).all()
    assert (ledger[ledger["role"] == "teacher"]["steps"] == 24).all()
    r18 = ledger[(ledger["row"] == "r18") & (ledger["method"] == "baseline")].iloc[0]
    assert r18["params_m"] == pytest.approx(13.61, abs=0.01) and r18["pretrained"]
    table = (smoke_out / "tables" / "table3.md").read_text()
    assert "74.21" in table and "78.07" in table  # the paper's numbers beside ours
    assert f"{r18['miou']:.2f} (n=1)" in table
    assert "not run" not in table.split("| DeepLabV3-R18 |")[1].split("\n")[0]  # every method cell is measured
    assert "Preset 'smoke'" in table and (smoke_out / "tables" / "table3.tex").read_text().count("\\toprule") == 1
    assert all((smoke_out / "tables" / f"table3.{ext}").stat().st_size > 1000 for ext in ("png", "pdf"))
    run_dir = Path(r18["run_dir"])
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "config.yaml").is_file()
    assert (run_dir / "log.csv").read_text().startswith("step,time,loss_ce,loss_aux,lr")
    # the cached teacher keeps model.pt and its training log; its run checkpoint (the same weights) is dropped
    teacher_dir = Path(ledger[ledger["role"] == "teacher"].iloc[0]["run_dir"])
    assert (teacher_dir / "model.pt").is_file() and (teacher_dir / "run" / "log.csv").is_file()
    assert not (teacher_dir / "run" / "checkpoint.pt").exists()
    # Each method logs its own named terms, and the discriminator's own step for the CIRKD recipes.
    expected = {"maskd": ["loss_maskd", "loss_maskd_aux"], "cirkd": ["loss_pair", "loss_pixel_memory", "loss_kd"],
                "skd": ["loss_pairwise", "loss_adv", "loss_d"], "ifvd": ["loss_ifv", "loss_d"],
                "cwd": ["loss_cwd_feat", "loss_cwd_logits", "loss_d"]}
    for method, columns in expected.items():
        run = ledger[(ledger["row"] == "r18") & (ledger["method"] == method)].iloc[0]
        header = (Path(run["run_dir"]) / "log.csv").read_text().splitlines()[0].split(",")
        assert set(columns) <= set(header), (method, header)


def test_second_run_is_read_from_the_ledger(smoke_out: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    before = (smoke_out / "ledger.csv").read_text()
    t0 = time.perf_counter()
    assert _run(cache, smoke_out, "--rows", "r18") == 0
    assert time.perf_counter() - t0 < 30
    assert (smoke_out / "ledger.csv").read_text() == before
    assert _run(cache, smoke_out, "--rows", "r18", "--dry-run") == 0
    plan = capsys.readouterr().out
    assert "cached teacher" in plan and "in ledger (skipped)" in plan
    # With --force, the R18 baseline's estimate is its measured speed from the ledger (steps × train_s / steps).
    assert _run(cache, smoke_out, "--rows", "r18", "--methods", "baseline", "--dry-run", "--force") == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.split()[1:2] == ["r18/baseline/seed0"])
    ledger = pd.read_csv(smoke_out / "ledger.csv")
    train_s = ledger[(ledger["row"] == "r18") & (ledger["method"] == "baseline")]["train_s"].iloc[0]
    assert line.endswith(f"{train_s / 60:>8.1f} m (measured)")


def test_user_teacher_checkpoint_is_evaluated_not_trained(smoke_out: Path, cache: Path, tmp_path: Path) -> None:
    teacher_dir = next((cache / "teachers").iterdir())
    state = torch.load(teacher_dir / "model.pt", weights_only=True)["state_dict"]
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": state}, path)
    assert _run(cache, tmp_path / "out", "--rows", "r18", "--methods", "baseline", "--teacher-ckpt", str(path)) == 0
    ledger = pd.read_csv(tmp_path / "out" / "ledger.csv")
    teacher = ledger[ledger["role"] == "teacher"].iloc[0]
    cached = pd.read_csv(smoke_out / "ledger.csv").set_index("role").loc["teacher"]
    assert teacher["miou"] == pytest.approx(cached["miou"], abs=1e-3) and teacher["train_s"] == 0


def _error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_names_exit_2_with_suggestions(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tables = "Available tables: 1, 2, 3, 4, 5, 7, mtpd, tokens"
    assert tables in _error(capsys, main(["--table", "9", "--out", str(tmp_path)]))
    assert "Did you mean 'smoke'" in _error(capsys, _run(cache, tmp_path, "--preset", "smok"))
    assert "Did you mean 'r18'" in _error(capsys, _run(cache, tmp_path, "--rows", "r81"))
    assert "Did you mean 'maskd'" in _error(capsys, _run(cache, tmp_path, "--methods", "mask"))
    assert "Did you mean 'steps'" in _error(capsys, _run(cache, tmp_path, "--set", "student.stesp=3"))
    assert "resnet18" in _error(capsys, _run(cache, tmp_path, "--backbone-weights", "resnet19=x.pth"))


def test_bad_data_root_names_the_expected_layout(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "cityscapes"
    root.mkdir()
    err = _error(capsys, _run(cache, tmp_path / "out", "--data-root", str(root)))
    assert "leftImg8bit/train" in err and "gtFine/train" in err
    data = next((cache / "data").iterdir())
    empty = tmp_path / "empty"
    (empty / "leftImg8bit").mkdir(parents=True)
    (empty / "gtFine").mkdir()
    os.symlink(data / "leftImg8bit" / "train", empty / "leftImg8bit" / "train")
    os.symlink(data / "gtFine" / "train", empty / "gtFine" / "train")
    (empty / "leftImg8bit" / "val").mkdir()
    (empty / "gtFine" / "val").mkdir()
    assert "val" in _error(capsys, _run(cache, tmp_path / "out", "--data-root", str(empty)))


def test_bad_teacher_checkpoints_exit_2(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.pth"
    assert "not found" in _error(capsys, _run(cache, tmp_path / "o", "--rows", "r18", "--teacher-ckpt", str(missing)))
    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    err = _error(capsys, _run(cache, tmp_path / "o", "--rows", "r18", "--teacher-ckpt", str(truncated)))
    assert "truncated, corrupt" in err
    foreign = tmp_path / "foreign.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), foreign)
    err = _error(capsys, _run(cache, tmp_path / "o", "--rows", "r18", "--teacher-ckpt", str(foreign)))
    assert "does not fit the model" in err


def test_corrupt_cache_and_ledger_are_reported_and_kept(smoke_out: Path, cache: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "ledger.csv").write_text('key,miou\n"a,1\n')
    err = _error(capsys, _run(cache, out, "--rows", "r18"))
    assert "ledger" in err and (out / "ledger.csv").read_text() == 'key,miou\n"a,1\n'
    weights = next((cache / "teachers").iterdir()) / "model.pt"
    good = weights.read_bytes()
    try:
        weights.write_bytes(good[: len(good) // 2])
        err = _error(capsys, _run(cache, tmp_path / "out2", "--rows", "r18"))
        assert "cached weights" in err and weights.stat().st_size == len(good) // 2
    finally:
        weights.write_bytes(good)


def test_killed_run_resumes_to_the_same_result(smoke_out: Path, cache: Path, tmp_path: Path) -> None:
    args = ["--table", "3", "--preset", "smoke", "--device", "cpu", "--cache-dir", str(cache), "--rows",
            "r18_scratch", "--methods", "baseline", "--set", "student.steps=60", "checkpoint_every=5",
            "data.workers=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmark" / "run.py"), *args]
    killed = subprocess.Popen([*cmd, "--out", str(tmp_path / "a")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    run_root = tmp_path / "a" / "runs" / "r18_scratch"
    deadline = time.time() + 120
    while not list(run_root.glob("*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    ledger = tmp_path / "a" / "ledger.csv"
    assert not ledger.exists() or "r18_scratch" not in ledger.read_text()
    refused = subprocess.run([*cmd, "--out", str(tmp_path / "a")], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run([*cmd, "--out", str(tmp_path / "a"), "--resume"], env=env, check=True, capture_output=True)
    subprocess.run([*cmd, "--out", str(tmp_path / "b")], env=env, check=True, capture_output=True)
    resumed, straight = (pd.read_csv(tmp_path / d / "ledger.csv").set_index("row") for d in "ab")
    assert resumed.loc["r18_scratch", "miou"] == straight.loc["r18_scratch", "miou"]
    assert resumed.loc["r18_scratch", "class_iou"] == straight.loc["r18_scratch", "class_iou"]


def test_ddp_two_processes_on_cpu_with_gloo(smoke_out: Path, cache: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "benchmark" / "run.py"), "--table", "3", "--preset", "smoke", "--device", "cpu",
           "--cache-dir", str(cache), "--out", str(tmp_path), "--rows", "mbv2", "--methods", "baseline", "--set",
           "student.batch_size=4"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ledger = pd.read_csv(tmp_path / "ledger.csv").set_index("row")
    assert ledger.loc["mbv2", "world_size"] == 2 and 0 <= ledger.loc["mbv2", "miou"] <= 100
    assert result.stdout.count("mbv2/baseline/seed0: mIoU") == 1  # rank 0 reports, once


def test_dry_run_plans_without_generating_or_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path / "cache", tmp_path / "out", "--dry-run") == 0
    plan = capsys.readouterr().out
    assert "teacher/baseline/seed0" in plan and "r18_teacher_schedule/baseline/seed0" in plan
    assert plan.count("to train") == 1 + 4 * 6 + 1 and "estimated training time" in plan
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
