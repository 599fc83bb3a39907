"""Tables with one column per method (Tables 3 and 5, token ablation): measured mIoU beside the paper's.

A spec's `methods` entries are method ids (labels from METHOD_NAMES) or mappings {id, label, ...};
`paper` (from `tables.paper`) gives the reference numbers per paper row and method id.
"""

from __future__ import annotations

import pandas as pd

from benchmark.errors import UserError
from tables.aggregate import Stat, delta, format_stat, summarize
from tables.render import TableData

METHOD_NAMES = {
    "baseline": "Baseline", "kd": "KD", "fitnet": "FitNet", "skd": "SKD", "ifvd": "IFVD", "cwd": "CWD",
    "cirkd": "CIRKD", "maskd": "MasKD",
}
DEFAULT_FLOPS_NOTE = "FLOPs (G) of one forward pass on a 1024×2048 image, as in the paper."


def _columns(spec: dict) -> list[tuple[str, str]]:
    """(method id, column label) per method entry."""
    table = spec.get("table", "?")
    columns = []
    for entry in spec["methods"]:
        if isinstance(entry, dict):
            columns.append((entry["id"], entry.get("label") or entry["id"]))
        elif entry in METHOD_NAMES:
            columns.append((entry, METHOD_NAMES[entry]))
        else:
            raise UserError(f"table {table} spec: unknown methods [{entry!r}] (known: {list(METHOD_NAMES)}); "
                            f"fix `methods` in configs/tables/table{table}.yaml or give the entry a label")
    return columns


def _check_spec(spec: dict, paper: dict) -> None:
    table = spec.get("table", "?")
    missing = [k for k in ("title", "methods", "teacher", "students") if k not in spec]
    if missing:
        raise UserError(f"table {table} spec lacks {missing}; fix configs/tables/table{table}.yaml")
    for row in spec["students"]:
        if row.get("paper") and row["paper"] not in paper["students"]:
            raise UserError(f"table {table} spec: student {row['id']!r} names paper row {row['paper']!r}, "
                            f"which the paper lacks (has: {list(paper['students'])}); "
                            f"fix configs/tables/table{table}.yaml")


def _measured(runs: pd.DataFrame, row_id: str, method: str) -> Stat | None:
    if runs.empty:
        return None
    sel = runs[(runs["row"] == row_id) & (runs["method"] == method)]
    return summarize(sel["miou"].tolist())


def _complexity(runs: pd.DataFrame, row: dict, measured: dict) -> tuple[float, float] | None:
    """(params M, GFLOPs): context["complexity"] for the model, else the first value the row's runs carry."""
    if row["model"] in measured:
        return measured[row["model"]]
    if runs.empty or "params_m" not in runs.columns or "gflops" not in runs.columns:
        return None
    sel = runs[runs["row"] == row["id"]].dropna(subset=["params_m", "gflops"])
    return None if sel.empty else (float(sel["params_m"].iloc[0]), float(sel["gflops"].iloc[0]))


def _size_cells(ours: tuple[float, float] | None, paper: tuple[float, float] | None) -> list[str]:
    cells = []
    for i in range(2):
        cell = "n/a" if ours is None else f"{ours[i]:.1f}"
        cells.append(cell if paper is None else f"{cell}\n(paper {paper[i]:.1f})")
    return cells


def _not_run(context: dict, row_id: str, method: str) -> str:
    reason = context.get("not_run", {}).get((row_id, method))
    return f"not run: {reason}" if reason else "not run yet"


def _fmt_paper(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _model_line(runs: pd.DataFrame, row: dict, methods: list[str], context: dict,
                paper: dict | None, label: str) -> list[str]:
    """One student/diagnostic line: label, Params, FLOPs, one cell per method."""
    size = None if paper is None else (paper["params_M"], paper["flops_G"])
    cells = [label, *_size_cells(_complexity(runs, row, context.get("complexity", {})), size)]
    base = _measured(runs, row["id"], "baseline")
    paper_base = None if paper is None else paper["methods"].get("baseline", (None, None))[0]
    for m in methods:
        if m not in (row.get("methods") or methods):
            cells.append("–")
            continue
        stat = _measured(runs, row["id"], m)
        lines = [_not_run(context, row["id"], m) if stat is None else format_stat(stat)]
        if m != "baseline" and stat is not None and base is not None:
            lines.append("Δ " + format_stat(delta(stat, base), signed=True))
        if paper is not None:
            val = paper["methods"].get(m, (None, None))[0]
            text = f"paper {_fmt_paper(val)}"
            if m != "baseline" and val is not None and paper_base is not None:
                text += f" (Δ {val - paper_base:+.2f})"
            lines.append(text)
        cells.append("\n".join(lines))
    return cells


def _teacher_line(runs: pd.DataFrame, spec: dict, context: dict, paper: dict) -> list[str]:
    """Teacher label, Params, FLOPs, its mIoU in the first method column, other method cells empty."""
    row, methods = spec["teacher"], _columns(spec)
    method = row.get("method", "baseline")
    ref = paper["teacher"] if row.get("paper") == "teacher" else None
    size = None if ref is None else (ref["params_M"], ref["flops_G"])
    cells = [f"{row['label']} (teacher)",
             *_size_cells(_complexity(runs, row, context.get("complexity", {})), size)]
    stat = _measured(runs, row["id"], method)
    lines = [_not_run(context, row["id"], method) if stat is None else format_stat(stat)]
    if ref is not None:
        lines.append(f"paper {_fmt_paper(ref['val'])} val / {_fmt_paper(ref['test'])} test")
    return [*cells, "\n".join(lines), *([""] * (len(methods) - 1))]


def build_method_table(runs: pd.DataFrame, spec: dict, context: dict, paper: dict) -> TableData:
    """A method table from ledger rows (columns row, method, seed, miou, params_m, gflops), the table spec
    (configs/tables/table<N>.yaml), context {"caption", "not_run": {(row id, method): reason},
    "complexity": {model: (params M, GFLOPs)}} and the paper's numbers (`tables.paper`, Table 3 format).
    Paper numbers are shown beside, never instead of, ours.
    """
    _check_spec(spec, paper)
    columns = _columns(spec)
    methods = [m for m, _ in columns]
    rows = [_teacher_line(runs, spec, context, paper)]
    for s in spec["students"]:
        ref = paper["students"].get(s.get("paper"))
        label = s["label"] if s.get("paper") in (None, s["label"]) else f"{s['label']}\n(paper: {s['paper']})"
        rows.append(_model_line(runs, s, methods, context, ref, label))
    group_rows = [len(rows)] if spec.get("diagnostics") else []
    notes = [
        "Cells: mIoU (%) of our runs, mean ± sample std over seeds (n = runs); paper = the paper's "
        "Cityscapes val mIoU, for reference only (it never stands in for a run that is missing).",
        "Δ = method − the same student's baseline: difference of means, std propagated as "
        "sqrt(std_method^2 + std_baseline^2) (independent runs), n = min of the two; the paper Δ uses "
        "the paper's val numbers.",
        "Params (M) and FLOPs (G): ours measured, the paper's in parentheses. "
        + (spec.get("flops_note") or DEFAULT_FLOPS_NOTE),
        f"Teacher: mIoU in the {columns[0][1]} column, with the paper's val and test mIoU.",
    ]
    for d in spec.get("diagnostics", []):
        rows.append(_model_line(runs, d, methods, context, None, f"{d['label']}\n(diagnostic)"))
        if d.get("note"):
            notes.append(f"Diagnostic, {d['label']}: {d['note']}")
    notes.append(f"Paper numbers: {paper['source']}")
    return TableData(
        title=spec["title"], caption=context["caption"],
        columns=["Model", "Params (M)", "FLOPs (G)", *(label for _, label in columns)],
        rows=rows, notes=notes, label=spec.get("label", f"tab:table{spec.get('table', '3')}"),
        group_rows=group_rows,
    )
