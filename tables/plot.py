"""A grouped bar chart beside each method table: measured val mIoU per student and method, paper numbers on top.

Bars are our runs only (mean over seeds, error bar = sample std); the paper's val numbers are black hollow
markers and never stand in for a missing run. Rendered with the Agg canvas (no GUI backend, no pyplot state)
and written atomically as PNG and PDF. Torch-free, like the rest of `tables`.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from benchmark.atomic import atomic_write_bytes
from tables.aggregate import format_stat
from tables.method_table import _check_spec, _columns, _measured

BAR_WIDTH = 0.8  # seaborn's default total width of one x group; paper markers are placed with the same dodge


def _student_label(row: dict) -> str:
    """As in the table: the row label, plus the paper row it is compared with when that differs."""
    paper = row.get("paper")
    return row["label"] if paper in (None, row["label"]) else f"{row['label']}\n(paper: {paper})"


def _bar_rows(runs: pd.DataFrame, spec: dict, methods: list[str]) -> pd.DataFrame:
    """Per-seed ledger rows that make bars: student rows, methods of the spec (and of the row), mIoU present."""
    if runs.empty:
        return pd.DataFrame({"row": [], "method": [], "miou": []})
    allowed = {(s["id"], m) for s in spec["students"] for m in (s.get("methods") or methods) if m in methods}
    keep = [(r, m) in allowed for r, m in zip(runs["row"], runs["method"], strict=True)]
    bars = runs.loc[keep, ["row", "method", "miou"]].copy()
    bars["miou"] = pd.to_numeric(bars["miou"], errors="coerce")
    return bars.dropna(subset=["miou"]).reset_index(drop=True)


def _paper_points(spec: dict, paper: dict, methods: list[str]) -> list[tuple[float, float]]:
    """(x, paper val mIoU) per student row and method the paper reports, at the centre of that bar's slot."""
    slot = BAR_WIDTH / len(methods)
    points = []
    for i, row in enumerate(spec["students"]):
        ref = paper["students"].get(row.get("paper"))
        if ref is None:
            continue
        for j, m in enumerate(methods):
            val = ref["methods"].get(m, (None, None))[0]
            if m in (row.get("methods") or methods) and val is not None:
                points.append((i - BAR_WIDTH / 2 + slot * (j + 0.5), float(val)))
    return points


def method_table_figure(runs: pd.DataFrame, spec: dict, paper: dict) -> Figure:
    """The figure `plot_method_table` writes (same arguments, minus the path); see there."""
    _check_spec(spec, paper)
    columns = _columns(spec)
    methods = [m for m, _ in columns]
    students = spec["students"]
    bars = _bar_rows(runs, spec, methods)
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))

    width = max(6.0, 2.0 + len(students) * max(1.6, 0.32 * len(methods) + 0.4))
    fig = Figure(figsize=(width, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not bars.empty:
        sns.barplot(data=bars, x="row", y="miou", hue="method", order=[s["id"] for s in students],
                    hue_order=methods, palette=palette, saturation=1.0, errorbar="sd", capsize=0.15, width=BAR_WIDTH,
                    err_kws={"linewidth": 1.2, "color": "0.2"}, legend=False, ax=ax)
    ax.set_xticks(range(len(students)), [_student_label(s) for s in students])
    ax.set_xlim(-0.5, len(students) - 0.5)

    handles = [Patch(facecolor=palette[m], label=label) for m, label in columns]
    values = []  # everything drawn, for the y range
    for _, group in bars.groupby(["row", "method"])["miou"]:
        spread = group.std() if len(group) > 1 else 0.0
        values += [group.mean() - spread, group.mean() + spread]

    points = _paper_points(spec, paper, methods)
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, linestyle="none", marker="o", markersize=7, markerfacecolor="none",
                markeredgecolor="black", markeredgewidth=1.5, zorder=5)
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              markeredgecolor="black", markeredgewidth=1.5, label="paper (val)"))
        values += ys

    teacher = spec["teacher"]
    stat = _measured(runs, teacher["id"], teacher.get("method", "baseline"))
    if stat is not None:
        ax.axhline(stat.mean, color="0.3", linestyle="--", linewidth=1.2, zorder=4)
        handles.append(Line2D([], [], color="0.3", linestyle="--",
                              label=f"teacher {teacher['label']}, ours: {format_stat(stat)}"))
        values.append(stat.mean)
    ref = paper["teacher"] if teacher.get("paper") == "teacher" else None
    if ref is not None and ref.get("val") is not None:
        ax.axhline(ref["val"], color="black", linestyle=":", linewidth=1.0, zorder=4)
        handles.append(Line2D([], [], color="black", linestyle=":",
                              label=f"teacher {teacher['label']}, paper val: {ref['val']:.2f}"))
        values.append(ref["val"])

    # Zoom on the values (bars start below the axis when the lower limit is above 0), but never below 0.
    if values:
        lo, hi = min(values), max(values)
        pad = max(1.0, 0.08 * (hi - lo))
        ax.set_ylim(max(0.0, math.floor(lo - 3 * pad)), min(100.0, math.ceil(hi + pad)))
    ax.set_xlabel("")
    ax.set_ylabel("val mIoU (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    title = textwrap.fill(spec["title"], width=int(width * 9))  # ~9 characters per inch at the default size
    if bars.empty:
        fig.suptitle(title)
        subtitle = "no measured runs yet" if runs.empty else "no measured student runs yet"
        ax.set_title(subtitle, fontsize="medium", style="italic")
    else:
        ax.set_title(title)
    # Below the axes; as many columns as fit (~16 characters per inch at fontsize "small", handle included).
    longest = max(len(h.get_label()) for h in handles) + 4
    ncol = max(1, min(len(handles), int(width * 16) // longest))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=ncol, frameon=False,
              fontsize="small")
    return fig


def plot_method_table(runs: pd.DataFrame, spec: dict, paper: dict, path: Path) -> list[Path]:
    """Grouped bar chart of a method table, written as `path` with suffix .png and .pdf; returns both paths.

    x: the spec's student rows (label); hue: its method columns, in spec order. Bar = mean measured mIoU
    over seeds from the ledger rows (columns row, method, seed, miou), error bar = sample std (none for
    one seed); a (row, method) without measured runs has no bar. Black hollow markers: the paper's val
    mIoU where the paper reports one. Dashed line: the teacher's measured mIoU; dotted: its paper val.
    Arguments as for `tables.method_table.build_method_table` (spec from configs/tables/, paper from
    `tables.paper`). An empty frame still gives a plot, of the paper numbers, subtitled "no measured runs yet".
    """
    fig = method_table_figure(runs, spec, paper)
    out = []
    for suffix, kwargs in ((".png", {"dpi": 150, "metadata": {"Software": None}}),
                           (".pdf", {"metadata": {"Creator": None, "Producer": None, "CreationDate": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=suffix[1:], bbox_inches="tight", **kwargs)
        target = Path(path).with_suffix(suffix)
        atomic_write_bytes(target, buf.getvalue())
        out.append(target)
    return out
