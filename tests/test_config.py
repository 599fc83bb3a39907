from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from benchmark.cli import parser
from benchmark.config import (
    Preset,
    ScheduleConfig,
    available,
    for_task,
    from_dict,
    load_preset,
    merge,
    parse_overrides,
    semantic,
    to_dict,
)
from benchmark.engine.pretrain import DETECTION_STANDIN, pretrain_key
from benchmark.errors import UserError
from benchmark.harness import _caption, speed_factor
from benchmark.plan import load_table_spec, plan_runs


def test_all_presets_load_and_name_themselves() -> None:
    assert available("presets") == ["cpu", "gpu", "paper", "smoke"]
    for name in available("presets"):
        preset = load_preset(name)
        assert preset.name == name
        assert preset.teacher.steps >= preset.student.steps


def test_paper_preset_encodes_the_official_recipe() -> None:
    paper = load_preset("paper")
    assert (paper.teacher.lr, paper.teacher.batch_size, paper.teacher.steps) == (0.02, 16, 40000)
    assert (paper.student.weight_decay, paper.student.lr_floor, paper.student.aux_weight) == (5e-4, 1e-4, 0.4)
    assert paper.data.crop == (512, 1024) and paper.data.scale_range == (0.5, 2.0)
    assert paper.model.output_stride == 8 and paper.model.aspp_rates == (12, 24, 36)


def test_unknown_key_suggests_the_close_match() -> None:
    with pytest.raises(UserError, match=r"unknown config key 'stpes'.*Did you mean 'steps'"):
        from_dict(ScheduleConfig, {"stpes": 10})
    with pytest.raises(UserError, match=r"'--set student\.lr' must be|unknown config key '--set student.lrr'"):
        load_preset("smoke", ["student.lrr=0.1"])


def test_wrong_type_is_rejected() -> None:
    with pytest.raises(UserError, match="'steps' must be int"):
        from_dict(ScheduleConfig, {"steps": "many"})
    with pytest.raises(UserError, match="'data' must be a mapping"):
        from_dict(Preset, {"data": 3})
    with pytest.raises(UserError, match="'lr' must be a number, got 'fast'"):
        from_dict(ScheduleConfig, {"lr": "fast"})


def test_exponent_notation_is_a_float() -> None:
    """PyYAML reads `1e-4` (no dot) as a string; a learning rate written so must still be a float."""
    preset = load_preset("smoke", ["student.lr=1e-4"])
    assert preset.student.lr == 1e-4 and isinstance(preset.student.lr, float)
    assert from_dict(ScheduleConfig, {"lr": "2e-3"}).lr == 2e-3


def test_overrides_are_typed_and_nested() -> None:
    assert parse_overrides(["student.steps=7", "data.flip=false"]) == {"student": {"steps": 7}, "data": {"flip": False}}
    preset = load_preset("smoke", ["student.steps=7", "student.lr=1"])
    assert preset.student.steps == 7 and preset.student.lr == 1.0 and isinstance(preset.student.lr, float)
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_overrides(["student.steps"])


def test_overrides_are_named_in_the_description_without_changing_keys() -> None:
    base, changed = load_preset("cpu"), load_preset("cpu", ["detection.teacher.steps=100"])
    for preset in (changed, for_task(changed, "det")):
        assert preset.description.endswith("; with --set detection.teacher.steps=100")
    assert for_task(changed, "det").teacher.steps == 100
    assert semantic(to_dict(base)) != semantic(to_dict(changed))  # the override itself is semantic...
    noted = load_preset("cpu", ["log_every=10"])  # ...the note is not: a no-op override keeps the key
    assert noted.description != base.description
    assert semantic(to_dict(noted)) == semantic(to_dict(base))


def test_an_override_reaches_the_detection_block_that_redefines_its_section() -> None:
    """`--set student.steps=7` applies to segmentation and detection tables; `detection.student.steps` to the
    latter only, and wins there; sections the detection block leaves alone are shared as before."""
    both = load_preset("cpu", ["student.steps=7", "log_every=3"])
    assert both.student.steps == 7 and for_task(both, "det").student.steps == 7
    assert for_task(both, "det").student.optimizer == "adamw"  # the rest of the detection schedule stays
    assert for_task(both, "det").log_every == 3
    det_only = load_preset("cpu", ["detection.student.steps=9"])
    assert det_only.student.steps == 150 and for_task(det_only, "det").student.steps == 9
    specific = load_preset("cpu", ["student.steps=7", "detection.student.steps=9"])
    assert (specific.student.steps, for_task(specific, "det").student.steps) == (7, 9)
    mixed = for_task(load_preset("cpu", ["student.steps=7", "detection.student.lr=0.5"]), "det")
    assert (mixed.student.steps, mixed.student.lr) == (7, 0.5)  # merged key by key, not section by section


def test_repeated_set_flags_accumulate() -> None:
    args = parser().parse_args(["--table", "1", "--set", "student.steps=7", "--set", "student.lr=0.1", "log_every=2"])
    assert args.overrides == ["student.steps=7", "student.lr=0.1", "log_every=2"]


def test_unknown_preset_and_table_name_the_choices() -> None:
    with pytest.raises(UserError, match=r"unknown preset 'cpuu'.*Did you mean 'cpu'.*smoke"):
        load_preset("cpuu")
    with pytest.raises(UserError, match=r"unknown table '33'.*Available tables: 1, 2, 3, 4, 5, 7, mtpd, tokens"):
        load_table_spec("33", None)


def test_table_spec_rows_are_strict(tmp_path: Path) -> None:
    spec = load_table_spec("3", None)
    assert [r.id for r in spec.students] == ["r18", "r18_scratch", "mbv2", "psp_r18"]
    assert spec.teacher.model == "deeplabv3_r101" and not spec.students[1].pretrained
    bad = tmp_path / "t.yaml"
    bad.write_text("table: 9\ntitle: x\nteacher: {id: t, model: m, label: l, pretrianed: true}\nstudents: []\n")
    with pytest.raises(UserError, match=r"'teacher.pretrianed'.*Did you mean 'pretrained'"):
        load_table_spec(None, bad)


def test_semantic_drops_logging_and_workers_only() -> None:
    cfg = semantic(to_dict(load_preset("cpu")))
    assert "log_every" not in cfg and "workers" not in cfg["data"] and "name" not in cfg
    assert cfg["student"]["steps"] == load_preset("cpu").student.steps
    assert merge(load_preset("cpu"), {"log_every": 1}).log_every == 1


def test_schedule_description_names_optimizer_decay_and_options() -> None:
    """Table captions name each schedule in full (the teacher may use another optimizer than the students)."""
    assert ScheduleConfig(steps=300, batch_size=4).describe() == (
        "300 steps x batch 4, SGD lr 0.02 (momentum 0.9), wd 0.0005, poly 0.9 to 0.0001")
    adamw = ScheduleConfig(steps=10, batch_size=2, optimizer="adamw", lr=1e-3, weight_decay=0.01, lr_decay="cosine",
                           lr_floor=1e-6, warmup_steps=5, clip_grad_norm=35.0)
    assert adamw.describe() == ("10 steps x batch 2, AdamW lr 0.001, wd 0.01, cosine to 1e-06, linear warm-up 5 "
                                "steps, grad-norm clip 35.0")


def test_schedule_fields_added_later_keep_earlier_keys() -> None:
    """optimizer/lr_decay at their defaults hash as before they existed; switched on, they change the key."""
    sgd = semantic({"schedule": to_dict(ScheduleConfig())})
    assert "optimizer" not in sgd["schedule"] and "lr_decay" not in sgd["schedule"]
    adamw = semantic({"schedule": to_dict(ScheduleConfig(optimizer="adamw", lr_decay="cosine"))})
    assert (adamw["schedule"]["optimizer"], adamw["schedule"]["lr_decay"]) == ("adamw", "cosine")


def test_detection_schedules_do_not_inherit_segmentation_choices() -> None:
    """A segmentation teacher on AdamW must not hand AdamW to a detection teacher block that names only SGD-recipe
    fields (an AdamW lr 0.01 Faster R-CNN teacher was unstable): named detection schedules start from defaults."""
    preset = from_dict(Preset, {"name": "x", "teacher": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                                "detection": {"teacher": {"steps": 10, "lr": 0.01}}})
    det = for_task(preset, "det")
    assert det.teacher.optimizer == "sgd" and det.teacher.weight_decay == ScheduleConfig().weight_decay
    assert det.teacher.lr == 0.01 and det.teacher.steps == 10
    assert det.student == preset.student  # a schedule the detection block does not name stays as it is
    assert for_task(preset, "seg") == preset
    cpu = for_task(load_preset("cpu"), "det")  # the cpu detection block names its AdamW explicitly
    assert cpu.teacher.optimizer == "adamw" and cpu.teacher.lr == 1e-4 and cpu.pretrain.n_scenes == 1000


def test_teacher_norm_is_checked_and_hashed_only_when_switched_on() -> None:
    with pytest.raises(UserError, match="teacher_norm 'batches'; valid: running, batch"):
        from_dict(Preset, {"teacher_norm": "batches"})
    cpu = load_preset("cpu")
    assert cpu.teacher_norm == "running" and for_task(cpu, "det").teacher_norm == "batch"
    spec = load_table_spec("1", None)
    faster = spec.blocks[0]
    keys = {}
    for norm in ("running", "batch"):
        preset = replace(for_task(cpu, "det"), teacher_norm=norm)
        teacher, runs = plan_runs(faster, preset, [0], "data", {}, ["faster_r50"], ["baseline", "mimic"])
        keys[norm] = (teacher.key, {r.method: (r.key, r.config.get("distill", {}).get("teacher_norm")) for r in runs})
    assert keys["running"][0] == keys["batch"][0]  # the teacher and the baseline student do not change
    assert keys["running"][1]["baseline"] == keys["batch"][1]["baseline"]
    assert keys["running"][1]["mimic"][1] is None and keys["batch"][1]["mimic"][1] == "batch"
    assert keys["running"][1]["mimic"][0] != keys["batch"][1]["mimic"][0]
    with pytest.raises(UserError, match="teacher_norm 'batch' makes them depend on the whole batch"):
        plan_runs(faster, replace(preset, cache_teacher_outputs=True), [0], "data", {})


def test_zero_init_residual_rekeys_resnet_standins_and_runs_only_when_on() -> None:
    """Off (the default), it hashes as before it existed; on, it re-keys runs and ResNet stand-ins only."""
    off = load_preset("smoke")
    on = merge(off, {"model": {"zero_init_residual": True}})
    assert "zero_init_residual" not in semantic(to_dict(off))["model"]
    assert semantic(to_dict(on))["model"]["zero_init_residual"] is True
    assert pretrain_key("resnet101", on) != pretrain_key("resnet101", off)
    assert pretrain_key("mobilenetv2", on) == pretrain_key("mobilenetv2", off)  # no residual BN to zero
    for backbone in ("resnet50", "resnext101_64x4d"):
        assert pretrain_key(backbone, on, DETECTION_STANDIN) != pretrain_key(backbone, off, DETECTION_STANDIN)
    # Detection takes it from the detection block only: the cpu preset turns it on there, smoke does not.
    assert not for_task(on, "det").model.zero_init_residual
    assert not for_task(replace(on, detection={}), "det").model.zero_init_residual
    assert for_task(load_preset("cpu"), "det").model.zero_init_residual


def test_pretrain_optimizer_and_warmup_keep_old_keys_at_their_defaults() -> None:
    """The stand-in's AdamW and warm-up (added later) re-key only when set; a bad optimizer name is refused."""
    smoke = load_preset("smoke")
    adamw = merge(smoke, {"pretrain": {"optimizer": "adamw"}})
    warm = merge(smoke, {"pretrain": {"warmup_steps": 5}})
    assert "optimizer" not in semantic(to_dict(smoke.pretrain))
    assert len({pretrain_key("resnet18", p) for p in (smoke, adamw, warm)}) == 3
    with pytest.raises(UserError, match=r"unknown pretrain optimizer 'adam'.*valid: sgd, adamw"):
        merge(smoke, {"pretrain": {"optimizer": "adam"}})


def test_table3_caption_says_when_residual_branches_start_at_zero() -> None:
    spec = load_table_spec("3", None)
    captions = {name: _caption(spec, load_preset(name), "data", [0], {}) for name in ("cpu", "smoke")}
    assert "residual branches zero-initialised" in captions["cpu"]
    assert "zero-initialised" not in captions["smoke"]


def test_dry_run_scales_unmeasured_models_by_the_median_of_the_measured() -> None:
    """--dry-run: a model's own measured scale first, else the machine's (median over measured models), else 1."""
    factors = {"faster_rcnn_r101": 0.25, "retinanet_r101": 0.5, "fcos_r101": 0.4}
    assert speed_factor("retinanet_r101", factors) == (0.5, "measured")
    assert speed_factor("faster_rcnn_r50", factors) == (0.4, "scaled")
    assert speed_factor("faster_rcnn_r50", {}) == (1.0, "")
