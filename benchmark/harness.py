"""One table end to end: data → plan → teacher → students → ledger → rendered table."""

from __future__ import annotations

import argparse
import difflib
import functools
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from benchmark.config import Preset, for_task
from benchmark.data.prepare import data_root, open_splits
from benchmark.engine import dist
from benchmark.engine.cache import cache_entry
from benchmark.engine.pretrain import DETECTION_STANDIN, SEGMENTATION_STANDIN, Standin, backbone_source
from benchmark.errors import UserError
from benchmark.experiment import Session, ensure_teacher, run_student
from benchmark.ledger import Ledger
from benchmark.models import BACKBONE_OF, build_segmentor, count_params_m, detectors, measure_gflops
from benchmark.plan import BASELINE, RunSpec, TableSpec, load_table_spec, plan_runs, plan_teachers
from tables.detection_table import build_detection_table, detection_caption
from tables.method_table import build_method_table
from tables.paper import PAPER_TABLES
from tables.plot import plot_method_table
from tables.render import write_table

# Run key → the (row id, method id) cells it fills: one run can fill several (a key hashes the method and its
# options, not the column, e.g. MTPD's direct R101 column and its chain's first stage).
Cells = dict[str, set[tuple[str, str]]]
# Sustained training throughput used only by --dry-run estimates. Measured on 2 EPYC cores (AVX2): ~95
# GFLOP/s for the ResNet models, ~45 for MobileNetV2 (depthwise convs); the CUDA figure is a guess.
GFLOPS_PER_S = {"cpu": 45.0 * max(1, torch.get_num_threads()), "cuda": 6000.0}


def _step_gflops(model: str, preset: Preset, batch: int) -> float:
    """Forward+backward GFLOPs of one training step (3× the forward)."""
    arch = preset.model
    height, width = preset.data.crop or (preset.data.height, preset.data.width)
    if model in detectors.DETECTORS:
        kwargs = arch.detector.get(detectors.DETECTORS[model]["family"], {})
        forward = detectors.detector_complexity(model, height, width, unit="flop", **kwargs).gflops
    else:
        forward = measure_gflops(model, height, width, unit="flop",
                                 output_stride=arch.output_stride, aspp_rates=arch.aspp_rates)
    return 3 * forward * batch


def _measured_factors(history: pd.DataFrame, data_id: str, device: torch.device,
                      flop_seconds: Callable[[str, int], float]) -> dict[str, float]:
    """Per model: measured ÷ FLOP-estimated seconds per step, the median over its finished baseline runs
    (teachers and students trained without distillation) on this data and device type in the ledger."""
    if history.empty or not {"train_s", "steps", "data", "device", "method_name"} <= set(history.columns):
        return {}
    rows = history[(history["data"] == data_id) & (history["method_name"] == BASELINE)
                   & history["device"].astype(str).str.startswith(device.type) & (history["train_s"] > 0)]
    ratios: dict[str, list[float]] = {}
    for row in rows.itertuples():
        measured = row.train_s / row.steps
        ratios.setdefault(row.model, []).append(measured / flop_seconds(row.model, int(row.batch_size)))
    return {model: float(pd.Series(r).median()) for model, r in ratios.items()}


def speed_factor(model: str, factors: dict[str, float]) -> tuple[float, str]:
    """The factor that scales `model`'s FLOP estimate, and how it was found: its own measured runs
    ("measured"); else the median over the models measured on this machine ("scaled": FLOP counts misjudge a
    machine by the same factor for every model more than they misjudge one model against another); else 1."""
    if model in factors:
        return factors[model], "measured"
    if factors:
        return float(pd.Series(list(factors.values())).median()), "scaled"
    return 1.0, ""


def print_plan(teachers: dict[str, RunSpec], runs: list[RunSpec], session_like: dict, preset: Preset,
               device: torch.device) -> None:
    """--dry-run: every run with its state (done / cached / resumable / to train) and a time estimate.

    `teachers`: teacher row id → run, the block's own teacher first, then those its runs name. The estimate
    counts FLOPs; a model with finished baseline runs in the ledger (same data, same device type) has its FLOP
    estimate scaled to their measured speed, marked "(measured)", and any other model by the median of those
    scales, marked "(scaled)". A run planned twice (the same key under two columns) trains once and is counted
    once.
    """
    ledger: Ledger = session_like["ledger"]
    throughput = GFLOPS_PER_S[device.type]

    @functools.cache
    def flop_seconds(model: str, batch: int) -> float:
        return _step_gflops(model, preset, batch) / throughput

    factors = _measured_factors(ledger.frame(), session_like["data_id"], device, flop_seconds)
    total = 0.0
    first: dict[str, str] = {}  # run key → the name it is planned under first
    main = next(iter(teachers.values()))
    print(f"plan for table {main.table}, preset {preset.name} ({preset.description}), device {device}")
    planned = [*teachers.values(), *runs]
    width = max(36, *(len(run.name) + 2 for run in planned))
    print(f"{'role':<11}{'run':<{width}}{'steps x batch':<15}{'state':<22}{'est. time':>10}")
    for run in planned:
        if run.key in first:
            print(f"{run.role:<11}{run.name:<{width}}{'':<15}{'= ' + first[run.key]:<22}{0:>8.1f} m")
            continue
        first[run.key] = run.name
        if run.role == "teacher":
            entry = cache_entry(session_like["cache_dir"], "teachers", run.row.model, run.key)
            done = entry.exists() or session_like["teacher_ckpt"] is not None
            state = "cached teacher" if done else "to train"
            checkpoint = entry.root / "run" / "checkpoint.pt"
        else:
            done = ledger.has(run.key) and not session_like["force"]
            state = "in ledger (skipped)" if done else "to train"
            checkpoint = session_like["out"] / "runs" / run.row.id / f"{run.method}-seed{run.seed}-{run.key}"
            checkpoint = checkpoint / "checkpoint.pt"
        if not done and checkpoint.exists():
            state = "resumable (--resume)"
        batch = run.schedule.batch_size
        factor, source = speed_factor(run.row.model, factors)
        step = flop_seconds(run.row.model, batch) * factor
        if run.method_name != BASELINE:  # + the teacher's forward pass (a third of its training step)
            teacher_model = teachers[run.teacher_id].row.model if run.teacher_id else main.row.model
            step += flop_seconds(teacher_model, batch) / 3 * speed_factor(teacher_model, factors)[0]
        seconds = 0.0 if done else step * run.schedule.steps
        total += seconds
        sched = f"{run.schedule.steps} x {batch}"
        source = f" ({source})" if source and not done else ""
        print(f"{run.role:<11}{run.name:<{width}}{sched:<15}{state:<22}{seconds / 60:>8.1f} m{source}")
    print(f"estimated training time: {total / 60:.1f} min (rough; excludes data generation, backbone "
          "pretraining, method stages such as MasKD token learning, and evaluation)")


def _caption(spec: TableSpec, preset: Preset, data_id: str, seeds: list[int], sources: dict[str, str]) -> str:
    """`sources`: backbone name → the weights it starts from."""
    t, s = preset.teacher, preset.student
    pretrained = "; ".join(sorted(f"{b}: {src}" for b, src in sources.items()))
    return (
        f"Preset '{preset.name}' ({preset.description}); data {data_id}; "
        f"{preset.data.height}x{preset.data.width} images, output stride {preset.model.output_stride}, "
        f"ASPP rates {preset.model.aspp_rates or 'paper'}"
        f"{', ResNet residual branches zero-initialised' if preset.model.zero_init_residual else ''}. "
        f"Teacher: {t.describe()}; students: {s.describe()}; "
        f"MasKD token stage: {preset.tokens.describe()}"
        f"{'; teacher outputs looked up per image (batch of 1)' if preset.cache_teacher_outputs else ''}. "
        f"Seeds {', '.join(map(str, seeds))}. Final-checkpoint val mIoU "
        f"(the paper reports the best validation checkpoint). Pretrained backbones: {pretrained} "
        "('embedded-pretrain' = our stand-in for ImageNet: multi-label patch classification on "
        "generated scenes disjoint from train/val; 'user:' = weights file given with --backbone-weights)."
    )


def cell_frame(ledger: Ledger, cells: Cells) -> pd.DataFrame:
    """The ledger rows of the planned runs with their table `row` and `method`, one frame row per cell."""
    frame = ledger.frame()
    if not len(frame):
        return frame
    frame = frame[frame["key"].isin(list(cells))]
    frame = frame.assign(cell=[sorted(cells[k]) for k in frame["key"]]).explode("cell", ignore_index=True)
    frame["row"] = [cell[0] for cell in frame["cell"]]
    frame["method"] = [cell[1] for cell in frame["cell"]]
    return frame.drop(columns="cell")


def _complexity(spec: TableSpec) -> dict[str, tuple[float, float]]:
    """Params (M) and GFLOPs at 1024×2048 of each model at the paper's architecture (OS8)."""
    models = {r.model for r in (spec.teacher, *spec.students)}
    return {m: (count_params_m(build_segmentor(m)), measure_gflops(m)) for m in sorted(models)}


def render(spec: TableSpec, ledger: Ledger, cells: Cells, caption: str, out: Path) -> str:
    """Write the table from the ledger rows of the planned runs (`cells`: see `cell_frame`)."""
    frame = cell_frame(ledger, cells)
    context = {"caption": caption, "complexity": _complexity(spec)}
    paper = PAPER_TABLES[spec.table]()
    table = build_method_table(frame, spec.raw(), context, paper)
    md_path, tex_path = write_table(table, out / "tables", f"table{spec.table}")
    png, pdf = plot_method_table(frame, spec.raw(), paper, out / "tables" / f"table{spec.table}")
    return f"{md_path.read_text()}\nwritten: {md_path}, {tex_path}, {png} and {pdf}"


def _block_rows(block: TableSpec, rows: list[str] | None) -> list[str] | None:
    return None if rows is None else [r for r in rows if r in {x.id for x in (*block.students, *block.diagnostics)}]


def _selected_blocks(spec: TableSpec, rows: list[str] | None) -> list[TableSpec]:
    """The blocks to run: those the suite can build (no `backend`) holding a `--rows` row (all without it)."""
    blocks = [b for b in spec.blocks or (spec,) if b.backend is None]
    known = [r.id for b in blocks for r in (*b.students, *b.diagnostics)]
    for name in rows or []:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown row '{name}' in table {spec.table}.{hint} Rows: {', '.join(known)}.")
    return [b for b in blocks if rows is None or _block_rows(b, rows)]


def _backbones(task: str) -> tuple[dict[str, str], Standin]:
    """Model name → backbone name, and the stand-in pretraining, of a task's models."""
    return (BACKBONE_OF, SEGMENTATION_STANDIN) if task == "seg" else (detectors.BACKBONE_OF, DETECTION_STANDIN)


def render_detection(spec: TableSpec, ledger: Ledger, cells: Cells, caption: str,
                     out: Path) -> str:
    """Write a detection table (one block per detector, six AP columns) from the planned runs' ledger rows."""
    frame = cell_frame(ledger, cells)
    table = build_detection_table(frame, spec.raw(), caption, PAPER_TABLES[spec.table]())
    md_path, tex_path = write_table(table, out / "tables", f"table{spec.table}")
    return f"{md_path.read_text()}\nwritten: {md_path}, {tex_path}"


def _needed_teachers(teacher: RunSpec, runs: list[RunSpec], named: dict[str, RunSpec]) -> dict[str, RunSpec]:
    """Teacher row id → run of the teachers a block's selected runs need: its own teacher first, then those the
    runs name (`teacher:` / `chain:`), in id order."""
    others = sorted({r.teacher_id for r in runs if r.teacher_id} - {teacher.row.id})
    return {teacher.row.id: teacher} | {tid: named[tid] for tid in others}


def run_table(args: argparse.Namespace, preset: Preset, preset_key: str, device: torch.device,
              user_weights: dict[str, Path]) -> int:
    dist.init_from_env(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    spec = load_table_spec(args.table, args.config)
    if spec.table not in PAPER_TABLES:
        raise UserError(f"table {spec.table} has no renderer yet; available: {', '.join(PAPER_TABLES)}.")
    preset = for_task(preset, spec.task)
    ledger = Ledger(args.out / "ledger.csv")
    ledger.frame()  # a corrupt ledger stops us here, before any training
    # Name the data (nothing generated yet) and plan first, so a bad --rows/--methods fails at once.
    root, data_id = data_root(spec.task, args.data_root, args.cache_dir, preset, dry_run=True)
    backbone_of, standin = _backbones(spec.task)
    sources = {m: backbone_source(b, preset, user_weights, standin) for m, b in backbone_of.items()}
    blocks = _selected_blocks(spec, args.rows)
    plans = [plan_runs(block, preset, args.seeds, data_id, sources, _block_rows(block, args.rows), args.methods)
             for block in blocks]
    if args.dry_run:
        for block, (teacher, runs) in zip(blocks, plans, strict=True):
            teachers = _needed_teachers(teacher, runs, plan_teachers(block, preset, data_id, sources))
            print_plan(teachers, runs, {"ledger": ledger, "cache_dir": args.cache_dir, "out": args.out,
                                       "teacher_ckpt": args.teacher_ckpt, "force": args.force,
                                       "data_id": data_id}, preset, device)
        return 0
    root, data_id = data_root(spec.task, args.data_root, args.cache_dir, preset)
    task, train_set, val_set = open_splits(spec.task, root, preset)
    session = Session(preset, preset_key, device, args.out, args.cache_dir, data_id, task, train_set,
                      val_set, user_weights, args.teacher_ckpt, args.resume, args.force, ledger)
    headline = task.metrics[0]
    cells: Cells = defaultdict(set)
    for block in spec.blocks or (spec,):  # the ledger's cells of every runnable block, run now or earlier
        if block.backend is None:
            _, every_run = plan_runs(block, preset, args.seeds, data_id, sources)
            for r in every_run:
                cells[r.key].add((r.row.id, r.method))
            for tid, t in plan_teachers(block, preset, data_id, sources).items():
                cells[t.key].add((tid, BASELINE))
    trained: set[str] = set()
    for block, (teacher, runs) in zip(blocks, plans, strict=True):
        models = {}
        for tid, teacher_run in _needed_teachers(teacher, runs, plan_teachers(block, preset, data_id, sources)).items():
            models[tid], teacher_row = ensure_teacher(teacher_run, session)
            if dist.is_main() and not ledger.has(teacher_row["key"]):
                ledger.append(teacher_row)
            cells[teacher_row["key"]].add((tid, BASELINE))  # a user checkpoint's row has its own key
        for run in runs:
            if run.key in trained:  # planned under two columns (e.g. a chain's first stage): trains once
                continue
            trained.add(run.key)
            row = run_student(run, session, models[run.teacher_id or teacher.row.id])
            if row is not None and dist.is_main():
                ledger.append(row)
                print(f"{run.name}: {task.headline} {row[headline]:.2f} ({row['train_s'] / 60:.1f} min)")
    if dist.is_main():
        models = {r.model for b in spec.blocks or (spec,) if b.backend is None for r in (b.teacher, *b.students)}
        used = {backbone_of[m]: sources[m] for m in models}
        if spec.task == "seg":
            print(render(spec, ledger, cells, _caption(spec, preset, data_id, args.seeds, used), args.out))
        else:
            caption = detection_caption(preset, data_id, args.seeds, used)
            print(render_detection(spec, ledger, cells, caption, args.out))
    dist.barrier()
    return 0
