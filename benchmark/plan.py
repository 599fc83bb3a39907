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

IMPLEMENTED_METHODS = ("baseline",)


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
    methods: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TableSpec:
    table: str
    title: str
    teacher: RowSpec
    students: tuple[RowSpec, ...]
    methods: tuple[str, ...] = ("baseline",)
    diagnostics: tuple[RowSpec, ...] = ()
    task: str = "seg"
    flops_note: str | None = None

    def raw(self) -> dict[str, Any]:
        """Plain-dict form for the table renderer."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """One training run; `key` hashes everything that decides its result."""

    table: str
    row: RowSpec
    role: str  # "teacher" | "student" | "diagnostic"
    method: str
    seed: int
    schedule: ScheduleConfig
    config: dict[str, Any]
    key: str

    @property
    def name(self) -> str:
        return f"{self.row.id}/{self.method}/seed{self.seed}"


def load_table_spec(table: str | None, config_file: Path | None) -> TableSpec:
    """`--table N` reads configs/tables/table<N>.yaml; `--config FILE` reads any spec file."""
    if config_file is None:
        tables = [name.removeprefix("table") for name in available("tables")]
        if table not in tables:
            close = difflib.get_close_matches(str(table), tables, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown table '{table}'.{hint} Available tables: {', '.join(tables)} "
                            "(more arrive with the detection issues).")
        config_file = CONFIG_DIR / "tables" / f"table{table}.yaml"
    data = read_yaml(config_file)
    data["table"] = str(data.get("table", table))
    try:
        data["teacher"] = from_dict(RowSpec, data.get("teacher", {}), "teacher.")
        data["students"] = tuple(from_dict(RowSpec, r, "students[].") for r in data.get("students", []))
        data["diagnostics"] = tuple(from_dict(RowSpec, r, "diagnostics[].") for r in data.get("diagnostics", []))
        data["methods"] = tuple(data.get("methods", ("baseline",)))
        return from_dict(TableSpec, data)
    except TypeError as err:
        raise UserError(f"table spec {config_file} is incomplete: {err}") from err


def row_schedule(row: RowSpec, preset: Preset, default: str) -> ScheduleConfig:
    base = preset.teacher if (row.schedule_from or default) == "teacher" else preset.student
    return merge(base, row.schedule, f"{row.id}.schedule.")


def resolved_config(row: RowSpec, role: str, method: str, schedule: ScheduleConfig, preset: Preset,
                    data_id: str, backbone_source: str | None) -> dict[str, Any]:
    """Everything that decides a run's result (hashed into its key; saved as config.yaml)."""
    return semantic({
        "task": "seg", "role": role, "model": row.model, "method": method,
        "pretrained": backbone_source if row.pretrained else None,
        "schedule": to_dict(schedule), "data": {"id": data_id, **to_dict(preset.data)},
        "arch": to_dict(preset.model), "amp": preset.amp,
    })


def plan_runs(spec: TableSpec, preset: Preset, seeds: list[int], data_id: str,
              sources: dict[str, str], rows: list[str] | None = None) -> tuple[RunSpec, list[RunSpec]]:
    """The teacher run and the student/diagnostic runs of implemented methods, for every seed.

    `sources` maps model name → backbone-weights description (see `pretrain.backbone_source`).
    """
    known = [r.id for r in (*spec.students, *spec.diagnostics)]
    for wanted in rows or []:
        if wanted not in known:
            close = difflib.get_close_matches(wanted, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown row '{wanted}' in table {spec.table}.{hint} Rows: {', '.join(known)}.")

    def make(row: RowSpec, role: str, method: str, seed: int, default: str) -> RunSpec:
        schedule = row_schedule(row, preset, default)
        config = resolved_config(row, role, method, schedule, preset, data_id, sources.get(row.model))
        return RunSpec(spec.table, row, role, method, seed, schedule, config, experiment_key(config, seed))

    teacher = make(spec.teacher, "teacher", "baseline", 0, "teacher")
    runs = [make(row, "student", method, seed, "student")
            for row in spec.students if not rows or row.id in rows
            for method in spec.methods if method in IMPLEMENTED_METHODS
            for seed in seeds]
    runs += [make(row, "diagnostic", "baseline", seed, "student")
             for row in spec.diagnostics if not rows or row.id in rows
             for seed in seeds]
    return teacher, runs


def not_run_reasons(spec: TableSpec) -> dict[tuple[str, str], str]:
    """Cells that this version cannot fill, with the reason shown in the table."""
    return {(row.id, method): f"{method} is not implemented yet"
            for row in spec.students for method in spec.methods if method not in IMPLEMENTED_METHODS}
