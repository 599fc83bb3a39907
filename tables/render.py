"""Render a table as a GitHub markdown table and as a booktabs LaTeX table."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.atomic import atomic_write_bytes

_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    # A cell line starting with "[" would be read as the optional argument of the preceding \\.
    "[": "{[}", "]": "{]}",
    "±": r"$\pm$", "−": "$-$", "†": r"$^\dagger$", "Δ": r"$\Delta$", "×": r"$\times$",
}


@dataclass
class TableData:
    """A renderer-agnostic table; a "\\n" inside a cell is a line break within the cell.

    group_rows: indices of rows preceded by a rule in LaTeX (markdown has no row rules).
    """

    title: str
    caption: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str]
    label: str
    group_rows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"row {i} has {len(row)} cells, expected {len(self.columns)}")


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and map ±, †, Δ, × to math."""
    return "".join(_LATEX.get(c, c) for c in text)


def _md_cell(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", "<br>")


def render_markdown(t: TableData) -> str:
    """Title line, GitHub pipe table, then the caption and the notes as a bullet list."""
    lines = [f"### {t.title}", "", "| " + " | ".join(_md_cell(c) for c in t.columns) + " |",
             "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.caption:
        lines += ["", t.caption]
    if t.notes:
        lines += ["", *(f"- {n}" for n in t.notes)]
    return "\n".join(lines) + "\n"


def _tex_cell(text: str, align: str) -> str:
    parts = [latex_escape(p) for p in text.split("\n")]
    if len(parts) == 1:
        return parts[0]
    return rf"\begin{{tabular}}[c]{{@{{}}{align}@{{}}}}" + r" \\ ".join(parts) + r"\end{tabular}"


def _tex_row(cells: list[str], aligns: str) -> str:
    return " & ".join(_tex_cell(c, a) for c, a in zip(cells, aligns, strict=True)) + r" \\"


def render_latex(t: TableData) -> str:
    """booktabs `table` float; caption = title (without its "Table N:" prefix) + caption."""
    aligns = "l" + "c" * (len(t.columns) - 1)
    title = re.sub(r"^Table\s+\S+:\s*", "", t.title).rstrip(".")
    caption = f"{title}. {t.caption}" if t.caption else title
    lines = [
        r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{{t.label}}}", rf"\begin{{tabular}}{{{aligns}}}", r"\toprule",
        _tex_row(t.columns, aligns), r"\midrule",
    ]
    for i, row in enumerate(t.rows):
        if i in t.group_rows and i > 0:
            lines.append(r"\midrule")
        lines.append(_tex_row(row, aligns))
    lines += [r"\bottomrule", r"\end{tabular}"]
    if t.notes:
        notes = " \\\\\n".join(latex_escape(n) for n in t.notes)
        lines += [r"\par\smallskip", r"{\footnotesize", notes + r"\par}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(t: TableData, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write `<stem>.md` and `<stem>.tex` into out_dir atomically; returns both paths."""
    md, tex = Path(out_dir) / f"{stem}.md", Path(out_dir) / f"{stem}.tex"
    atomic_write_bytes(md, render_markdown(t).encode("utf-8"))
    atomic_write_bytes(tex, render_latex(t).encode("utf-8"))
    return md, tex
