"""End-to-end: `benchmark/run.py --table 1 --preset smoke` (detection) and its inheritance and keys."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from benchmark.cli import main
from benchmark.config import for_task, load_preset
from benchmark.data.prepare import open_splits
from benchmark.engine.coco_eval import METRICS, coco_bbox_metrics, detections_to_coco
from benchmark.experiment import inherit_from_teacher
from benchmark.export import main as export_main
from benchmark.models.detectors import build_detector
from benchmark.plan import load_table_spec
from benchmark.tasks import DetectionTask

pytestmark = pytest.mark.slow
METHODS = ["baseline", "mimic", "fgd", "maskd", "maskd_inherit"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def det_out(det_smoke: tuple[Path, Path]) -> tuple[Path, Path]:
    return det_smoke


def test_smoke_table1_end_to_end(det_out: tuple[Path, Path]) -> None:
    cache, out = det_out
    ledger = pd.read_csv(out / "ledger.csv")
    assert sorted(ledger["method"]) == sorted(["baseline", *METHODS])  # the teacher's baseline row + 5 students
    assert set(ledger[ledger["role"] == "student"]["row"]) == {"faster_r50"}
    assert all(ledger[m].between(0, 100).all() or ledger[m].isna().any() for m in METRICS)
    assert (ledger[ledger["role"] == "teacher"]["steps"] == 24).all()
    table = (out / "tables" / "table1.md").read_text()
    assert "| Detector / method | AP | AP50 | AP75 | APs | APm | APl |" in table
    assert "(paper 39.8)" in table and "(paper 38.4)" in table and "(paper 41.0)" in table
    faster = table.split("| Two-stage detectors |")[1].split("| One-stage detectors |")[0]
    assert faster.count("not implemented") == 12  # GID and FRS rows, six cells each, paper numbers beside
    assert "not run yet" not in faster and "not run yet" in table  # --rows faster_r50: one block of three
    # Each student's logs hold the detector's own losses and the method's named terms.
    runs = ledger[ledger["role"] == "student"].set_index("method")
    logs = {m: (Path(runs.loc[m, "run_dir"]) / "log.csv").read_text().split("\n")[0] for m in METHODS}
    assert all("loss_classifier" in head and "loss_objectness" in head for head in logs.values())
    assert "loss_mimic" in logs["mimic"] and "loss_fgd_fg" in logs["fgd"]
    assert (cache / "stages").is_dir() and any((cache / "stages").iterdir())  # MasKD tokens, cached


def test_table1_rebuilds_without_training(det_out: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cache, out = det_out
    before = (out / "ledger.csv").read_text()
    assert main(["--table", "1", "--preset", "smoke", "--device", "cpu", "--cache-dir", str(cache),
                 "--out", str(out), "--rows", "faster_r50"]) == 0
    assert (out / "ledger.csv").read_text() == before
    assert "faster_r50/" not in capsys.readouterr().out.replace("faster_r50/baseline", "")


def test_tables_4_and_7_run_on_smoke(det_out: tuple[Path, Path], tmp_path: Path) -> None:
    """Their specs run end to end (Faster block, teacher cached by Table 1): each ablation row gets its own
    token stage (T = 14 tokens; L_task only without L_div), random tokens none, and unrun rows say so."""
    cache, _ = det_out
    out = tmp_path / "out"
    common = ["--preset", "smoke", "--device", "cpu", "--cache-dir", str(cache), "--out", str(out),
              "--rows", "faster_r50"]
    stages_before = set((cache / "stages").iterdir())
    assert main(["--table", "7", *common, "--methods", "maskd_t14"]) == 0
    assert main(["--table", "4", *common, "--methods", "random", "task_only"]) == 0
    students = pd.read_csv(out / "ledger.csv").query("role == 'student'")
    assert sorted(students["method"]) == ["maskd_t14", "random", "task_only"]
    assert students[list(METRICS)].notna().any(axis=None)
    new_stages = [yaml.safe_load((d / "meta.json").read_text())["config"]
                  for d in set((cache / "stages").iterdir()) - stages_before]
    assert sorted((c["num_tokens"], c["div_weight"]) for c in new_stages) == [(6, 0.0), (14, 1.0)]
    # The Faster R-CNN block of each table (the FCOS block below it is not run: --rows).
    table7, table4 = ((out / "tables" / f"table{n}.md").read_text().split("| FCOS R101 → R50 |")[0]
                      for n in (7, 4))
    t14 = next(line for line in table7.split("\n") if line.startswith("| T = 14 |"))
    assert "not run yet" not in t14 and "<br>(paper 41.5) |" in t14
    assert "| T = 2 | not run yet<br>(paper 41.3) |" in table7
    assert "| random tokens | not run yet" not in table4 and "| L_div only | not run yet" in table4


def test_block_method_options_sit_under_each_methods_own() -> None:
    """Tables 4/7: one method list; the FCOS block adds its official MasKD options, as Table 1's FCOS block."""
    faster, fcos = load_table_spec("4", None).blocks
    random = {b.id: next(m for m in b.methods if m.id == "random").options for b in (faster, fcos)}
    assert random["faster"] == {"reg_kd": False, "masks": "random", "weighting": False, "customization": False}
    assert random["fcos"] == {**random["faster"], "weight": 10.0, "stage_optimizer": "adam", "stage_lr": 0.01,
                              "stage_weight_decay": 1e-3}
    assert [m.options for m in fcos.methods if m.method == "mimic"] == [{}]  # other methods untouched
    table1_fcos = next(m for m in load_table_spec("1", None).blocks[2].methods if m.id == "maskd").options
    assert next(m for m in load_table_spec("7", None).blocks[1].methods if m.id == "maskd").options == table1_fcos


def test_ledger_ap_equals_cocoeval_of_the_saved_student(det_out: tuple[Path, Path]) -> None:
    """The AP in the ledger is COCOeval's number for that student's checkpoint on the val split."""
    cache, out = det_out
    ledger = pd.read_csv(out / "ledger.csv")
    row = ledger[(ledger["role"] == "student") & (ledger["method"] == "baseline")].iloc[0]
    preset = for_task(load_preset("smoke"), "det")
    task, _, val = open_splits("det", cache / "data" / row["data"], preset)
    model = task.build_model("faster_rcnn_r50", preset)
    state = torch.load(Path(row["run_dir"]) / "checkpoint.pt", weights_only=True)["model"]
    model.load_state_dict({k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")})
    model.eval()
    with torch.no_grad():
        detections = [model([val[i][0]])[0] for i in range(len(val))]
    ours = coco_bbox_metrics(val.coco, detections_to_coco(val.ids, detections, val.label_to_category))
    for metric in METRICS:
        assert (pd.isna(row[metric]) and pd.isna(ours[metric])) or row[metric] == pytest.approx(ours[metric], abs=1e-3)


def test_inherit_copies_neck_and_heads_only() -> None:
    torch.manual_seed(0)
    teacher = build_detector("faster_rcnn_r101", num_classes=4, min_size=64, max_size=64)
    student = build_detector("faster_rcnn_r50", num_classes=4, min_size=64, max_size=64)
    body_before = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("backbone.body.")}
    inherit_from_teacher(student, teacher)
    own, theirs = student.state_dict(), teacher.state_dict()
    necks_heads = [k for k in own if not k.startswith("backbone.body.")]
    assert necks_heads and all(torch.equal(own[k], theirs[k]) for k in necks_heads)
    assert all(torch.equal(own[k], v) for k, v in body_before.items())


def test_detection_keys_and_task() -> None:
    spec = load_table_spec("1", None)
    assert spec.task == "det" and [b.id for b in spec.blocks] == ["faster", "retina", "fcos"]
    assert all([m.id for m in b.methods] == METHODS and b.methods[-1].inherit for b in spec.blocks)
    retina_maskd = next(m for m in spec.blocks[1].methods if m.id == "maskd")
    # The official RetinaNet λ1 and token-stage optimizer (Adam lr 0.01, wd 1e-3), shared by MasKD†.
    assert retina_maskd.options == {"weight": 7.0, "stage_optimizer": "adam", "stage_lr": 0.01,
                                    "stage_weight_decay": 1e-3}
    assert spec.blocks[1].methods[-1].options == retina_maskd.options
    fcos_maskd = next(m for m in spec.blocks[2].methods if m.id == "maskd")
    assert fcos_maskd.options["reg_kd"] is False and fcos_maskd.options["stage_optimizer"] == "adam"
    preset = for_task(load_preset("smoke"), "det")
    assert (preset.data.height, preset.data.width) == (64, 80) and preset.student.clip_grad_norm == 35.0
    assert not preset.cache_teacher_outputs
    task = DetectionTask(("a", "b"), (64, 80))
    model = task.build_model("faster_rcnn_r50", preset)
    assert model.transform.min_size == (64,) and model.transform.max_size == 80
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 32  # the preset's per-family kwargs
    # Segmentation presets and keys are untouched by the detection block.
    assert for_task(load_preset("smoke"), "seg") == load_preset("smoke")


def test_export_round_trips_into_the_bare_detector(det_out: tuple[Path, Path], tmp_path: Path) -> None:
    cache, out = det_out
    ledger = pd.read_csv(out / "ledger.csv")
    preset = for_task(load_preset("smoke"), "det")
    task = open_splits("det", cache / "data" / ledger["data"].iloc[0], preset)[0]
    for method in ("baseline", "maskd"):  # MasKD's run also holds adapters and frozen tokens
        run_dir = Path(ledger[(ledger["role"] == "student") & (ledger["method"] == method)]["run_dir"].iloc[0])
        assert export_main([str(run_dir), "-o", str(tmp_path / f"{method}.pt")]) == 0
        state = torch.load(tmp_path / f"{method}.pt", weights_only=True)
        bare = task.build_model("faster_rcnn_r50", preset)
        bare.load_state_dict(state, strict=True)
        unit = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
        assert all(torch.equal(v, unit[f"student.{k}"]) for k, v in state.items())
    teacher_dir = next((cache / "teachers").iterdir())  # a cached teacher exports as it is
    assert export_main([str(teacher_dir), "-o", str(tmp_path / "teacher.pt")]) == 0
    task.build_model("faster_rcnn_r101", preset).load_state_dict(
        torch.load(tmp_path / "teacher.pt", weights_only=True), strict=True)
    assert export_main([str(tmp_path)]) == 2  # no checkpoint there: one message, exit 2


def test_mtpd_chain_starts_each_stage_from_the_previous_student(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--table mtpd`: stage 1 inherits from the R101 teacher; stage 2 starts from stage 1's student (no
    re-inheriting from the X101 teacher) and the table shows the chain beside the MTPD README. Stage 1 is the
    direct R101 column's run (one key): it trains once, even under --force, and fills both cells."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["--table", "mtpd", "--preset", "smoke", "--device", "cpu", "--cache-dir", str(cache),
            "--out", str(out), "--methods", "mgd_r101", "mgd_chain"]
    assert main([*args, "--dry-run"]) == 0
    assert "= retina_r50/mgd_r101/seed0" in capsys.readouterr().out  # planned twice, trained once
    assert main([*args, "--force"]) == 0
    ledger = pd.read_csv(out / "ledger.csv")
    assert sorted(ledger["method"]) == ["baseline", "baseline", "mgd_chain", "mgd_r101"]  # 2 teachers
    runs = ledger[ledger["role"] == "student"].set_index("method")
    stage1, stage2 = (Path(runs.loc[m, "run_dir"]) for m in ("mgd_r101", "mgd_chain"))
    config1, config2 = (yaml.safe_load((d / "config.yaml").read_text()) for d in (stage1, stage2))
    assert "inherit" in config1 and "init_from" not in config1
    assert config2["init_from"] == runs.loc["mgd_r101", "key"] and "inherit" not in config2
    assert config1["distill"]["teacher"] != config2["distill"]["teacher"]
    one = torch.load(stage1 / "checkpoint.pt", weights_only=True)["model"]
    two = torch.load(stage2 / "checkpoint.pt", weights_only=True)["model"]
    x101 = next(p for p in (cache / "teachers").iterdir() if p.name.startswith("retinanet_x101"))
    x101_state = torch.load(x101 / "model.pt", weights_only=True)["state_dict"]
    key = "student.head.classification_head.conv.0.0.weight"
    moved_from_stage1 = (two[key] - one[key]).norm() / one[key].norm()
    assert moved_from_stage1 < 0.05  # 2 small steps away from where stage 1 ended
    assert (two[key] - x101_state[key.removeprefix("student.")]).norm() / one[key].norm() > 10 * moved_from_stage1
    table = (out / "tables" / "tablemtpd.md").read_text()
    assert "T: RetinaNet X101-64x4d" in table and "T: RetinaNet R101" in table
    assert "(paper 41.7)" in table and "needs the OpenMMLab backend" in table
    assert "one full student schedule per teacher of the chain" in table
    direct = next(line for line in table.splitlines() if line.startswith("| MGD from R101 (direct)"))
    assert f"| {runs.loc['mgd_r101', 'AP']:.1f}" in direct and "not run yet" not in direct  # the shared run's cell


def test_a_chain_of_one_teacher_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = yaml.safe_load((ROOT / "configs/tables/mtpd.yaml").read_text())
    spec["methods"][3]["chain"] = ["retina_r101"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["--config", str(path), "--preset", "smoke", "--out", str(tmp_path / "out")]) == 2
    assert "chain of one teacher" in capsys.readouterr().err
    assert not (tmp_path / "out" / "ledger.csv").exists()


def test_bad_coco_root_names_the_expected_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "coco"
    (root / "train2017").mkdir(parents=True)
    code = main(["--table", "1", "--preset", "smoke", "--data-root", str(root), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "annotations/instances_train2017.json" in err and "--data-root" in err


def test_kept_statistics_norm_without_pretrained_weights_is_refused(
        det_out: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bn_eval over an untrained backbone would normalise with mean 0, var 1 for the whole run: exit 2 first."""
    cache, _ = det_out
    spec = yaml.safe_load((ROOT / "configs/tables/table1.yaml").read_text())
    spec["blocks"][0]["teacher"]["pretrained"] = False
    path = tmp_path / "scratch_teacher.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    code = main(["--config", str(path), "--preset", "smoke", "--device", "cpu", "--cache-dir", str(cache),
                 "--out", str(out), "--rows", "faster_r50", "--methods", "baseline",
                 "--set", "detection.model.detector.faster_rcnn.norm=bn_eval"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "faster_teacher" in err and "not pretrained" in err and "pretrained: true" in err
    assert not (out / "ledger.csv").exists()
