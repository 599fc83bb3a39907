"""Table spec → the list of runs (teacher, students × methods × seeds, diagnostics) with their keys."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import (
    CONFIG_DIR,
    Preset,
    ScheduleConfig,
    available,
    from_dict,
    merge,
    read_yaml,
    semantic,
    to_dict,
)
from benchmark.errors import UserError
from benchmark.ledger import experiment_key
from methods import registry

BASELINE = "baseline"
DEFAULT_LABELS = {
    "baseline": "Baseline", "kd": "KD", "fitnet": "FitNet", "skd": "SKD", "ifvd": "IFVD", "cwd": "CWD",
    "cirkd": "CIRKD", "maskd": "MasKD", "mimic": "FitNet", "fgd": "FGD", "mgd": "MGD", "maskd_det": "MasKD",
}


@dataclass(frozen=True)
class MethodSpec:
    """One method column of a table: `method` is a registry name (or "baseline"), `options` override
    configs/methods/<method>.yaml and the preset's `methods` entry."""

    id: str
    method: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    # Detection "†" rows: the student's neck and heads start from the teacher's weights (kd_reference §0).
    inherit: bool = False
    paper: str | None = None  # the paper's row/column name of this method (detection tables)
    teacher: str | None = None  # id of the teacher row to distil from (default: the table's `teacher`)
    # MTPD progressive distillation: teacher row ids, weak → strong; one full run per teacher, each starting
    # from the previous run's student (the first inherits neck and heads from its teacher, as MTPD's stage 1).
    chain: tuple[str, ...] = ()

    @staticmethod
    def parse(entry: str | dict[str, Any]) -> MethodSpec:
        if isinstance(entry, str):
            return MethodSpec(entry, entry, DEFAULT_LABELS.get(entry, entry))
        entry = {"label": DEFAULT_LABELS.get(entry.get("method", ""), entry.get("id", "")), **entry}
        return from_dict(MethodSpec, entry, "methods[].")


@dataclass(frozen=True)
class RowSpec:
    """One network of a table: the teacher, a student line or a diagnostic line."""

    id: str
    model: str
    label: str
    paper: str | None = None
    pretrained: bool = True
    schedule: dict[str, Any] = field(default_factory=dict)
    schedule_from: str | None = None
    note: str | None = None
    methods: tuple[str, ...] | None = None  # method ids this row runs (default: all of the table's)
    taps: dict[str, str] = field(default_factory=dict)  # logical tap → module path, overriding the model's


@dataclass(frozen=True)
class TableSpec:
    table: str
    title: str
    teacher: RowSpec
    students: tuple[RowSpec, ...]
    methods: tuple[MethodSpec, ...] = (MethodSpec(BASELINE, BASELINE, "Baseline"),)
    diagnostics: tuple[RowSpec, ...] = ()
    task: str = "seg"
    flops_note: str | None = None
    # Detection tables: one block per detector (own teacher and students), rendered one under another.
    blocks: tuple[TableSpec, ...] = ()
    group: str | None = None  # a block's heading (the paper's group name)
    id: str | None = None  # a block's id
    not_implemented: tuple[str, ...] = ()  # paper rows of methods the suite lacks, shown as such
    teachers: tuple[RowSpec, ...] = ()  # further teachers that methods name (`teacher:` / `chain:`)
    needs_backend: tuple[str, ...] = ()  # paper rows whose models need the OpenMMLab backend
    backend: str | None = None  # "openmmlab": a block whose models torchvision cannot build (shown, not run)

    def raw(self) -> dict[str, Any]:
        """Plain-dict form for the table renderer."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """One training run; `key` hashes everything that decides its result."""

    table: str
    row: RowSpec
    role: str  # "teacher" | "student" | "diagnostic"
    method: str  # the method column id
    seed: int
    schedule: ScheduleConfig
    config: dict[str, Any]
    key: str
    method_name: str = BASELINE  # registry name
    method_options: dict[str, Any] = field(default_factory=dict)  # resolved options
    teacher_id: str | None = None  # the teacher row this run distils from
    init_from: RunSpec | None = None  # an earlier run whose student this one starts from (MTPD stages)

    @property
    def name(self) -> str:
        return f"{self.row.id}/{self.method}/seed{self.seed}"


def table_names() -> list[str]:
    """The `--table` values: configs/tables/table<N>.yaml gives N, any other <name>.yaml gives name."""
    names = [name.removeprefix("table") for name in available("tables")]
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))  # 1, 2, …, mtpd, tokens


def load_table_spec(table: str | None, config_file: Path | None) -> TableSpec:
    """`--table N` reads configs/tables/table<N>.yaml (or <N>.yaml, e.g. `tokens`); `--config FILE` any spec."""
    if config_file is None:
        tables = table_names()
        if table not in tables:
            close = difflib.get_close_matches(str(table), tables, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown table '{table}'.{hint} Available tables: {', '.join(tables)}.")
        config_file = CONFIG_DIR / "tables" / f"table{table}.yaml"
        if not config_file.is_file():
            config_file = CONFIG_DIR / "tables" / f"{table}.yaml"
    data = read_yaml(config_file)
    data["table"] = str(data.get("table", table))
    try:
        if "blocks" in data:
            shared = {k: v for k, v in data.items() if k in ("table", "title", "task", "methods", "flops_note")}
            data["blocks"] = tuple(_parse_spec(_with_method_options({**shared, **block})) for block in data["blocks"])
            data["teacher"] = data["blocks"][0].teacher
        return _parse_spec(data)
    except TypeError as err:
        raise UserError(f"table spec {config_file} is incomplete: {err}") from err


def _with_method_options(block: dict[str, Any]) -> dict[str, Any]:
    """A block's `method_options: {method: options}` under each of its methods' own options (one method list,
    e.g. Table 4's ablation rows, serves blocks whose detectors need different official options)."""
    defaults = block.pop("method_options", {})
    block["methods"] = [m if isinstance(m, str) or m.get("method") not in defaults else
                        {**m, "options": {**defaults[m["method"]], **m.get("options", {})}}
                        for m in block.get("methods", (BASELINE,))]
    return block


def _parse_spec(data: dict[str, Any]) -> TableSpec:
    data = dict(data)
    data["teacher"] = data["teacher"] if isinstance(data.get("teacher"), RowSpec) else from_dict(
        RowSpec, data.get("teacher", {}), "teacher.")
    data["students"] = tuple(from_dict(RowSpec, r, "students[].") for r in data.get("students", []))
    data["diagnostics"] = tuple(from_dict(RowSpec, r, "diagnostics[].") for r in data.get("diagnostics", []))
    data["teachers"] = tuple(from_dict(RowSpec, r, "teachers[].") for r in data.get("teachers", []))
    data["methods"] = tuple(MethodSpec.parse(m) for m in data.get("methods", (BASELINE,)))
    spec = from_dict(TableSpec, data)
    if spec.blocks:  # each block was checked on its own
        return spec
    teacher_ids = [t.id for t in (spec.teacher, *spec.teachers)]
    for ms in spec.methods:
        if ms.chain and len(ms.chain) < 2:
            raise UserError(f"table {spec.table}: method {ms.id!r} has a chain of one teacher ({list(ms.chain)}); "
                            "progressive distillation needs two or more (weak → strong). Use `teacher:` for "
                            "direct distillation from one teacher.")
        for tid in (*ms.chain, *([ms.teacher] if ms.teacher else [])):
            if tid not in teacher_ids:
                raise UserError(f"table {spec.table}: method {ms.id!r} names teacher {tid!r}, which is not a "
                                f"teacher row of the table (teachers: {', '.join(teacher_ids)}).")
    return spec


def row_schedule(row: RowSpec, preset: Preset, default: str) -> ScheduleConfig:
    base = preset.teacher if (row.schedule_from or default) == "teacher" else preset.student
    return merge(base, row.schedule, f"{row.id}.schedule.")


def method_options(ms: MethodSpec, preset: Preset) -> dict[str, Any]:
    """configs/methods/<method>.yaml ← the preset's `methods` entry ← the table's options, validated."""
    if ms.method == BASELINE:
        return {}
    path = CONFIG_DIR / "methods" / f"{ms.method}.yaml"
    options = read_yaml(path) if path.is_file() else {}
    options.update(preset.methods.get(ms.method, {}))
    options.update(ms.options)
    return dataclasses.asdict(registry.method_options(ms.method, **options))


def resolved_config(row: RowSpec, role: str, method: str, schedule: ScheduleConfig, preset: Preset,
                    data_id: str, backbone_source: str | None,
                    distill: dict[str, Any] | None = None, task: str = "seg") -> dict[str, Any]:
    """Everything that decides a run's result (hashed into its key; saved as config.yaml).

    `distill` (methods other than the baseline): the method name and options, the teacher's key and,
    for methods with a pre-training stage, the stage schedule.
    """
    config = {
        "task": task, "role": role, "model": row.model, "method": method,
        "pretrained": backbone_source if row.pretrained else None,
        "schedule": to_dict(schedule), "data": {"id": data_id, **to_dict(preset.data)},
        "arch": to_dict(preset.model), "amp": preset.amp,
    }
    if distill is not None:
        config["distill"] = distill
    return semantic(config)


def _pick(kind: str, wanted: list[str] | None, known: list[str], table: str) -> None:
    for name in wanted or []:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown {kind} '{name}' in table {table}.{hint} {kind.capitalize()}s: "
                            f"{', '.join(known)}.")


def plan_runs(spec: TableSpec, preset: Preset, seeds: list[int], data_id: str, sources: dict[str, str],
              rows: list[str] | None = None, methods: list[str] | None = None) -> tuple[RunSpec, list[RunSpec]]:
    """The teacher run and the student/diagnostic runs (row × method × seed), optionally only `rows` and
    `methods` (ids). `sources` maps model name → backbone-weights description (`pretrain.backbone_source`).
    """
    if preset.cache_teacher_outputs and (preset.data.scale_range or preset.data.crop):
        raise UserError(f"preset '{preset.name}': cache_teacher_outputs needs flip-only augmentation (no "
                        "data.scale_range or data.crop): every input must recur. Turn one of them off.")
    if preset.cache_teacher_outputs and preset.teacher_norm == "batch":
        raise UserError(f"preset '{preset.name}': cache_teacher_outputs stores per-image teacher outputs, but "
                        "teacher_norm 'batch' makes them depend on the whole batch. Turn one of them off.")
    _pick("row", rows, [r.id for r in (*spec.students, *spec.diagnostics)], spec.table)
    _pick("method", methods, [m.id for m in spec.methods], spec.table)
    students = [r for r in spec.students if not rows or r.id in rows]
    diagnostics = [r for r in spec.diagnostics if not rows or r.id in rows]

    def make(row: RowSpec, role: str, ms: MethodSpec, seed: int, default: str, teacher: RunSpec | None = None,
             init_from: RunSpec | None = None) -> RunSpec:
        schedule = row_schedule(row, preset, default)
        teacher_key = teacher.key if teacher is not None else ""
        options = method_options(ms, preset)
        distill = None
        if ms.method != BASELINE:
            distill = {"name": ms.method, "options": options, "teacher": teacher_key}
            teacher_row = teacher.row if teacher is not None else spec.teacher
            distill |= {f"{side}_taps": r.taps for side, r in (("student", row), ("teacher", teacher_row)) if r.taps}
            if preset.cache_teacher_outputs:  # per-image teacher outputs (batch of 1): part of the result
                distill["teacher_outputs"] = "per-image cache"
            if preset.teacher_norm != "running":  # hashed only when on: earlier runs keep their keys
                distill["teacher_norm"] = preset.teacher_norm
            if registry.method_class(ms.method).has_stage():
                distill["stage_schedule"] = to_dict(preset.tokens)
        # The key hashes the method and its options, not the column id: tables share runs.
        config = resolved_config(row, role, ms.method, schedule, preset, data_id, sources.get(row.model), distill,
                                 spec.task)
        if init_from is not None:  # a later MTPD stage: the previous stage's student, no re-inheriting
            config["init_from"] = init_from.key
        elif ms.inherit or ms.chain:
            config["inherit"] = "neck and heads from the teacher"
        return RunSpec(spec.table, row, role, ms.id, seed, schedule, config, experiment_key(config, seed),
                       ms.method, options, teacher.row.id if teacher is not None else None, init_from)

    teachers = plan_teachers(spec, preset, data_id, sources)

    def runs_of(row: RowSpec, role: str, ms: MethodSpec, seed: int) -> list[RunSpec]:
        if not ms.chain:
            return [make(row, role, ms, seed, "student", teachers[ms.teacher or spec.teacher.id])]
        stages: list[RunSpec] = []
        for k, tid in enumerate(ms.chain, start=1):
            stage = dataclasses.replace(ms, id=ms.id if k == len(ms.chain) else f"{ms.id}.stage{k}")
            stages.append(make(row, role, stage, seed, "student", teachers[tid], stages[-1] if stages else None))
        return stages

    runs = [run
            for role, group in (("student", students), ("diagnostic", diagnostics))
            for row in group
            for ms in spec.methods if ms.id in (row.methods or [m.id for m in spec.methods])
            if not methods or ms.id in methods
            for seed in seeds
            for run in runs_of(row, role, ms, seed)]
    return teachers[spec.teacher.id], runs


def plan_teachers(spec: TableSpec, preset: Preset, data_id: str, sources: dict[str, str]) -> dict[str, RunSpec]:
    """Teacher row id → its (cached) training run: the table's teacher, then its further `teachers`."""
    result = {}
    for row in (spec.teacher, *spec.teachers):
        schedule = row_schedule(row, preset, "teacher")
        config = resolved_config(row, "teacher", BASELINE, schedule, preset, data_id, sources.get(row.model),
                                 None, spec.task)
        result[row.id] = RunSpec(spec.table, row, "teacher", BASELINE, 0, schedule, config,
                                 experiment_key(config, 0))
    return result
