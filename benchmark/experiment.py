"""Executes planned runs: teacher (cached once per key), students (one ledger row per finished run)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmark.atomic import atomic_write_text
from benchmark.config import Preset, ScheduleConfig, merge, semantic, to_dict
from benchmark.engine import dist
from benchmark.engine.cache import CacheEntry, cache_entry
from benchmark.engine.checkpoint import load_checkpoint, load_state_strict
from benchmark.engine.distill import DistillationLoss
from benchmark.engine.pretrain import file_digest, pretrained_backbone_state
from benchmark.engine.task_loss import TrainUnit
from benchmark.engine.trainer import Trainer, TrainResult
from benchmark.errors import UserError
from benchmark.export import student_state
from benchmark.ledger import Ledger, experiment_key
from benchmark.models import count_params_m
from benchmark.models.detectors import KEPT_STATISTICS_NORMS
from benchmark.plan import BASELINE, RowSpec, RunSpec
from benchmark.tasks import Task
from methods import Stage, build_method
from methods.base import use_batch_statistics


@dataclass
class Session:
    """What every run of one CLI invocation shares."""

    preset: Preset
    preset_key: str
    device: torch.device
    out: Path
    cache_dir: Path
    data_id: str
    task: Task
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    user_weights: dict[str, Path]
    teacher_ckpt: Path | None
    resume: bool
    force: bool
    ledger: Ledger


def build_model(row: RowSpec, session: Session) -> torch.nn.Module:
    """The row's model at the preset's architecture, with pretrained backbone weights if asked."""
    task = session.task
    model = task.build_model(row.model, session.preset)
    if row.pretrained:
        task.load_backbone(model, pretrained_backbone_state(task.backbone_of(row.model), session.preset,
                                                            session.cache_dir, session.device,
                                                            session.user_weights, task.standin))
    elif any(isinstance(m, KEPT_STATISTICS_NORMS) for m in model.modules()):
        raise UserError(f"{row.id}: {row.model} keeps its BatchNorm statistics fixed (the preset's norm "
                        "'bn_eval' or 'frozen'), but the row is not pretrained, so it would normalise with "
                        "mean 0 and variance 1 throughout; set `pretrained: true` on the row or `norm: bn` "
                        "in the preset's model.detector section")
    return model


def inherit_from_teacher(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """The "†" rows: copy every teacher tensor outside the backbone body (neck and heads) into the student."""
    own = student.state_dict()
    shared = {k: v for k, v in teacher.state_dict().items()
              if not k.startswith("backbone.body.") and k in own and own[k].shape == v.shape}
    if not shared:
        raise UserError("inherit: the teacher has no neck/head tensors of the student's shapes; inheriting "
                        "needs detectors of one family with equal FPN widths (turn `inherit` off).")
    student.load_state_dict(shared, strict=False)


def _fresh_run_dir(run_dir: Path, session: Session, config: dict[str, Any]) -> None:
    """--force starts the run over; config.yaml records what the run is."""
    if session.force and dist.is_main() and run_dir.exists():
        shutil.rmtree(run_dir)
    dist.barrier()
    if dist.is_main():
        atomic_write_text(yaml.safe_dump(config), run_dir / "config.yaml")


def _fit(unit: TrainUnit, schedule: ScheduleConfig, session: Session, run_dir: Path, seed: int,
         desc: str) -> TrainResult:
    trainer = Trainer(unit, schedule, session.preset, session.train_set, session.val_set, run_dir,
                      session.device, seed, session.task, desc=desc)
    result = trainer.fit(resume=session.resume)
    assert result is not None  # fit returns None only when asked to stop early
    return result


def _image_size(preset: Preset) -> tuple[int, int]:
    return preset.data.crop or (preset.data.height, preset.data.width)


def _train(spec: RunSpec, session: Session, run_dir: Path,
           teacher: torch.nn.Module | None = None) -> tuple[torch.nn.Module, TrainResult]:
    _fresh_run_dir(run_dir, session, {"key": spec.key, "seed": spec.seed, **spec.config})
    torch.manual_seed(spec.seed)  # initial weights depend on the run's seed only, not on what ran before
    model = build_model(spec.row, session)
    if spec.init_from is not None:
        _start_from(model, spec.init_from, session)
    if "inherit" in spec.config:
        assert teacher is not None
        inherit_from_teacher(model, teacher)
    extra = None
    if spec.method_name != BASELINE:
        assert teacher is not None
        extra = _distiller(spec, session, model, copy.deepcopy(teacher))
    unit = TrainUnit(model, session.task.task_loss(spec.schedule), extra)
    result = _fit(unit, spec.schedule, session, run_dir, spec.seed, spec.name)
    if extra is not None and extra.teacher_cache is not None and dist.is_main():
        extra.teacher_cache.save()
    return model, result


def _distiller(spec: RunSpec, session: Session, student: torch.nn.Module,
               teacher: torch.nn.Module) -> DistillationLoss:
    """The method bound to this student/teacher pair, its stage (e.g. MasKD tokens) run or read from cache."""
    method = build_method(spec.method_name, **spec.method_options)
    distill = spec.config["distill"]
    if distill.get("teacher_norm") == "batch":  # `teacher` is this run's own copy
        use_batch_statistics(teacher)
    memo = (session.cache_dir / "teacher_outputs", distill["teacher"]) if "teacher_outputs" in distill else None
    extra = DistillationLoss(method, student, teacher, _image_size(session.preset),
                             distill.get("student_taps"), distill.get("teacher_taps"), memo,
                             session.task.teacher_forward)
    stage = method.stage(teacher)
    if stage is not None:
        method.load_stage(ensure_stage(stage, distill["teacher"], session))
    return extra


def stage_key(stage: Stage, teacher_key: str, session: Session) -> str:
    """Cache key of a method stage: the stage config, the teacher, the stage schedule and the data."""
    norm = {} if session.preset.teacher_norm == "running" else {"teacher_norm": session.preset.teacher_norm}
    return experiment_key(semantic({"stage": stage.name, "teacher": teacher_key, "config": stage.config,
                                    "schedule": to_dict(_stage_schedule(stage, session.preset)),
                                    "data": {"id": session.data_id, **to_dict(session.preset.data)},
                                    "amp": session.preset.amp, **norm}), 0)


def _stage_schedule(stage: Stage, preset: Preset) -> ScheduleConfig:
    return merge(preset.tokens, stage.schedule, f"{stage.name}.schedule.")


def _store(entry: CacheEntry, run_dir: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Cache trained weights, then drop the run's checkpoint: `model.pt` holds the same weights (log.csv stays)."""
    entry.store(state_dict, meta)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)


def ensure_stage(stage: Stage, teacher_key: str, session: Session) -> dict[str, torch.Tensor]:
    """Train a method stage once per key (`<cache>/stages/<name>-<key>/`) and return its state dict."""
    key = stage_key(stage, teacher_key, session)
    entry = cache_entry(session.cache_dir, "stages", stage.name, key)
    if not entry.exists():
        schedule = _stage_schedule(stage, session.preset)
        run_dir = entry.root / "run"
        _fresh_run_dir(run_dir, session, {"key": key, "stage": stage.name, "teacher": teacher_key,
                                          "config": stage.config, "schedule": to_dict(schedule)})
        torch.manual_seed(0)
        result = _fit(TrainUnit(stage.model, stage.loss), schedule, session, run_dir, 0, f"{stage.name}/{key}")
        if dist.is_main():
            _store(entry, run_dir, stage.model.state_dict(), {
                "stage": stage.name, "key": key, "teacher": teacher_key, "config": stage.config,
                "schedule": to_dict(schedule), "teacher_norm": session.preset.teacher_norm, **result.metrics,
                "wall_s": {"train_s": result.train_s, "eval_s": result.eval_s}})
            headline = session.task.metrics[0]
            print(f"stage {stage.name} ({key}): {session.task.headline} of the masked teacher "
                  f"{result.metrics[headline]:.2f} "
                  f"({result.train_s / 60:.1f} min)")
        dist.barrier()
    return entry.state_dict()


def _row(spec: RunSpec, session: Session, model: torch.nn.Module, metrics: dict[str, Any],
         timing: dict[str, float], run_dir: Path) -> dict[str, Any]:
    return {
        "key": spec.key, "table": spec.table, "row": spec.row.id, "role": spec.role, "label": spec.row.label,
        "model": spec.row.model, "method": spec.method, "method_name": spec.method_name,
        "method_options": spec.method_options, "pretrained": spec.row.pretrained,
        "seed": spec.seed, "preset": session.preset.name, "preset_key": session.preset_key,
        "data": session.data_id, **session.task.ledger_cells(metrics),
        "steps": spec.schedule.steps, "batch_size": spec.schedule.batch_size,
        "params_m": round(count_params_m(model), 3), "world_size": dist.world_size(),
        "device": session.device.type, "run_dir": str(run_dir), **{k: round(v, 1) for k, v in timing.items()},
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }


def ensure_teacher(spec: RunSpec, session: Session) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The teacher model and its ledger row: user weights, else the cache, else train and cache."""
    model = session.task.build_model(spec.row.model, session.preset)
    if session.teacher_ckpt is not None:
        return model, _user_teacher(model, spec, session)
    entry = cache_entry(session.cache_dir, "teachers", spec.row.model, spec.key)
    if not entry.exists():
        run_dir = entry.root / "run"
        trained, result = _train(spec, session, run_dir)
        if dist.is_main():
            meta = {"config": spec.config, "key": spec.key, **result.metrics,
                    "wall_s": {"train_s": result.train_s, "eval_s": result.eval_s}}
            _store(entry, run_dir, trained.state_dict(), meta)
        dist.barrier()
    meta = entry.meta()
    load_state_strict(model, entry.state_dict(), entry.weights_path, "cached teacher")
    metrics = {name: meta[name] for name in session.task.result_keys() if name in meta}
    row = _row(spec, session, model, metrics, meta["wall_s"], entry.root)
    return model, row


def _user_teacher(model: torch.nn.Module, spec: RunSpec, session: Session) -> dict[str, Any]:
    path = session.teacher_ckpt
    assert path is not None
    state = load_checkpoint(path, what="--teacher-ckpt")
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    load_state_strict(model, state, path, "--teacher-ckpt")
    key = f"{spec.key}-{file_digest(path)}"
    cached = session.ledger.get(key)
    if cached is not None:
        return cached
    model.to(session.device)
    t0 = time.perf_counter()
    metrics = session.task.evaluate(model, session.val_set, session.preset.eval_batch_size, session.device,
                                    amp=session.preset.amp)
    timing = {"train_s": 0.0, "eval_s": time.perf_counter() - t0}
    return {**_row(spec, session, model, metrics, timing, path), "key": key}


def run_dir_of(spec: RunSpec, session: Session) -> Path:
    """Where a student run keeps its checkpoint, logs and result."""
    return session.out / "runs" / spec.row.id / f"{spec.method}-seed{spec.seed}-{spec.key}"


def _start_from(model: torch.nn.Module, earlier: RunSpec, session: Session) -> None:
    """Load the student of an earlier run (an MTPD stage) into `model`: its student-only weights, strictly."""
    done = session.ledger.get(earlier.key)  # the run may have been made under another column id (shared key)
    path = (Path(done["run_dir"]) if done else run_dir_of(earlier, session)) / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"{earlier.name} (the previous stage of this chain) has no checkpoint at {path}; run the "
                        "chain again with the same --out, or --force to retrain every stage.")
    state = student_state(load_checkpoint(path, ("model",), "previous stage checkpoint"), path)
    load_state_strict(model, state, path, "previous stage's student")


def run_student(spec: RunSpec, session: Session, teacher: torch.nn.Module) -> dict[str, Any] | None:
    """Train one student run unless the ledger already has it; returns its new ledger row."""
    if session.ledger.has(spec.key) and not session.force:
        return None
    run_dir = run_dir_of(spec, session)
    model, result = _train(spec, session, run_dir, teacher)
    row = _row(spec, session, model, result.metrics, {"train_s": result.train_s, "eval_s": result.eval_s}, run_dir)
    if dist.is_main():
        atomic_write_text(json.dumps(row, indent=2, default=str) + "\n", run_dir / "result.json")
    return row
