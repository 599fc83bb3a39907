"""Paper numbers, aggregation, markdown/LaTeX rendering and Table 3 assembly (fast, no torch)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmark.config import for_task, load_preset
from benchmark.errors import UserError
from tables.aggregate import Stat, delta, format_stat, summarize
from tables.detection_table import detection_caption
from tables.method_table import build_method_table
from tables.paper import load_paper_numbers, table3_paper
from tables.render import TableData, latex_escape, render_latex, render_markdown, write_table

SPEC_YAML = """
table: 3
title: "Table 3: Semantic segmentation on Cityscapes (mIoU, %)"
methods: [baseline, skd, ifvd, cwd, cirkd, maskd]   # column order
flops_note: "FLOPs (G) at 1024×2048, one multiply-accumulate = one FLOP."
teacher: {id: teacher, model: deeplabv3_r101, label: "DeepLabV3-R101", paper: teacher, method: baseline}
students:
  - {id: r18, model: deeplabv3_r18, label: "DeepLabV3-R18", paper: "DeepLabV3-R18", pretrained: true}
  - {id: r18_scratch, model: deeplabv3_r18, label: "DeepLabV3-R18 (scratch)", paper: "DeepLabV3-R18†",
     pretrained: false}
  - {id: mbv2, model: deeplabv3_mbv2, label: "DeepLabV3-MBV2", paper: "DeepLabV3-MBV2"}
  - {id: psp_r18, model: pspnet_r18, label: "PSPNet-R18", paper: "PSPNet-R18"}
diagnostics:   # measured only, after a rule; `methods` restricts the cells that are expected
  - {id: r18_teacher_schedule, model: deeplabv3_r18, label: "DeepLabV3-R18 at the teacher's schedule",
     methods: [baseline], note: "Trained with the teacher's schedule."}
"""


def _runs() -> pd.DataFrame:
    rows = [{"row": "teacher", "method": "baseline", "seed": 0, "miou": 77.9, "params_m": 61.05,
             "gflops": 2371.1}]
    for method, values in (("baseline", [73.0, 74.0, 75.0]), ("maskd", [76.0, 76.5, 77.0])):
        rows += [{"row": "r18", "method": method, "seed": s, "miou": v} for s, v in enumerate(values)]
    rows += [{"row": "r18", "method": "cwd", "seed": 0, "miou": 75.2},
             {"row": "mbv2", "method": "maskd", "seed": 0, "miou": 74.8},
             {"row": "r18_teacher_schedule", "method": "baseline", "seed": 0, "miou": 75.5}]
    return pd.DataFrame(rows)


CONTEXT = {
    "caption": "Preset smoke, Cityscapes val, seeds 0-2.",
    "not_run": {("psp_r18", "ifvd"): "IFVD needs a DeepLab head"},
    "complexity": {"deeplabv3_r18": (13.59, 571.6)},
}


# --- paper numbers -------------------------------------------------------------------------------


def test_table3_paper_structure() -> None:
    p = table3_paper()
    assert p["teacher"] == {"model": "DeepLabV3-R101", "params_M": 61.1, "flops_G": 2371.7, "val": 78.07,
                            "test": 77.46}
    assert list(p["students"]) == ["DeepLabV3-R18", "DeepLabV3-R18†", "DeepLabV3-MBV2", "PSPNet-R18"]
    for s in p["students"].values():
        assert list(s["methods"]) == ["baseline", "skd", "ifvd", "cwd", "cirkd", "maskd"]
    assert p["students"]["DeepLabV3-R18"]["methods"]["baseline"] == (74.21, 73.45)
    assert p["students"]["DeepLabV3-R18†"]["methods"]["maskd"] == (73.95, 73.74)
    assert (p["students"]["PSPNet-R18"]["params_M"], p["students"]["PSPNet-R18"]["flops_G"]) == (12.9, 507.4)
    assert p["source"] == load_paper_numbers()["source"] and "Huang" in p["source"]


# --- aggregation ---------------------------------------------------------------------------------


def test_summarize_and_format() -> None:
    assert summarize([74.0, 75.0, 76.0]) == Stat(75.0, 1.0, 3)
    assert format_stat(summarize([74.0, 75.0, 76.0])) == "75.00 ± 1.00 (n=3)"
    assert summarize([74.21]) == Stat(74.21, 0.0, 1)
    assert format_stat(Stat(74.21, 0.0, 1)) == "74.21 (n=1)"
    assert summarize([]) is None and summarize([math.nan]) is None
    assert summarize([70.0, math.nan, 72.0]) == Stat(71.0, math.sqrt(2.0), 2)
    assert format_stat(Stat(74.214, 0.351, 3)) == "74.21 ± 0.35 (n=3)"
    assert format_stat(Stat(74.25, 0.35, 3), digits=1) == "74.2 ± 0.3 (n=3)"
    assert format_stat(Stat(-1.5, 0.0, 1), signed=True) == "-1.50 (n=1)"
    assert format_stat(Stat(1.5, 0.25, 2), signed=True) == "+1.50 ± 0.25 (n=2)"


def test_delta() -> None:
    d = delta(Stat(76.5, 0.5, 3), Stat(74.0, 1.0, 3))
    assert d.mean == pytest.approx(2.5) and d.std == pytest.approx(math.sqrt(1.25)) and d.n == 3
    d = delta(Stat(75.2, 0.0, 1), Stat(74.0, 1.0, 3))
    assert (round(d.mean, 9), d.std, d.n) == (1.2, 1.0, 1)
    assert format_stat(d, signed=True) == "+1.20 ± 1.00 (n=1)"


# --- rendering -----------------------------------------------------------------------------------


def _tiny() -> TableData:
    return TableData(
        title="Table 9: Tiny_test", caption="Seeds 0-1, 50% data.", columns=["Model", "mIoU"],
        rows=[["R18†", "74.21 ± 0.35 (n=3)\n[paper 74.21]"], ["A & B #1", "x|y"]],
        notes=["Δ = a − b"], label="tab:tiny", group_rows=[1],
    )


def test_render_markdown_exact() -> None:
    assert render_markdown(_tiny()) == (
        "### Table 9: Tiny_test\n\n"
        "| Model | mIoU |\n"
        "|---|---|\n"
        "| R18† | 74.21 ± 0.35 (n=3)<br>[paper 74.21] |\n"
        "| A & B #1 | x\\|y |\n\n"
        "Seeds 0-1, 50% data.\n\n"
        "- Δ = a − b\n"
    )


def test_render_latex_exact() -> None:
    assert render_latex(_tiny()) == (
        "\\begin{table}[t]\n"
        "\\centering\n"
        "\\caption{Tiny\\_test. Seeds 0-1, 50\\% data.}\n"
        "\\label{tab:tiny}\n"
        "\\begin{tabular}{lc}\n"
        "\\toprule\n"
        "Model & mIoU \\\\\n"
        "\\midrule\n"
        "R18$^\\dagger$ & \\begin{tabular}[c]{@{}c@{}}74.21 $\\pm$ 0.35 (n=3) \\\\ {[}paper 74.21{]}"
        "\\end{tabular} \\\\\n"
        "\\midrule\n"
        "A \\& B \\#1 & x\\textbar{}y \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\par\\smallskip\n"
        "{\\footnotesize\n"
        "$\\Delta$ = a $-$ b\\par}\n"
        "\\end{table}\n"
    )


def test_latex_escape_specials() -> None:
    assert latex_escape(r"a_b 5% $x$ {y} ~^ \ ") == (
        r"a\_b 5\% \$x\$ \{y\} \textasciitilde{}\textasciicircum{} \textbackslash{} "
    )


def test_table_rows_must_match_columns() -> None:
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        TableData(title="t", caption="", columns=["a", "b"], rows=[["x"]], notes=[], label="tab:x")


def test_write_table(tmp_path: Path) -> None:
    md, tex = write_table(_tiny(), tmp_path / "tables", "table9")
    assert (md.name, tex.name) == ("table9.md", "table9.tex")
    assert md.read_text(encoding="utf-8") == render_markdown(_tiny())
    assert tex.read_text(encoding="utf-8") == render_latex(_tiny())
    assert sorted(p.name for p in md.parent.iterdir()) == ["table9.md", "table9.tex"]


# --- Table 3 -------------------------------------------------------------------------------------


def test_build_method_table_for_table3() -> None:
    t = build_method_table(_runs(), yaml.safe_load(SPEC_YAML), CONTEXT, table3_paper())
    assert t.columns == ["Model", "Params (M)", "FLOPs (G)", "Baseline", "SKD", "IFVD", "CWD", "CIRKD",
                         "MasKD"]
    assert (t.title, t.caption, t.label) == ("Table 3: Semantic segmentation on Cityscapes (mIoU, %)",
                                             "Preset smoke, Cityscapes val, seeds 0-2.", "tab:table3")
    teacher, r18, scratch, mbv2, psp, diag = t.rows
    assert teacher == ["DeepLabV3-R101 (teacher)", "61.0\n(paper 61.1)", "2371.1\n(paper 2371.7)",
                       "77.90 (n=1)\npaper 78.07 val / 77.46 test", "", "", "", "", ""]
    assert r18[:4] == ["DeepLabV3-R18", "13.6\n(paper 13.6)", "571.6\n(paper 572.0)",
                       "74.00 ± 1.00 (n=3)\npaper 74.21"]
    assert r18[4] == "not run yet\npaper 75.42 (Δ +1.21)"
    assert r18[6] == "75.20 (n=1)\nΔ +1.20 ± 1.00 (n=1)\npaper 75.55 (Δ +1.34)"
    assert r18[8] == "76.50 ± 0.50 (n=3)\nΔ +2.50 ± 1.12 (n=3)\npaper 77.00 (Δ +2.79)"
    assert scratch[0] == "DeepLabV3-R18 (scratch)\n(paper: DeepLabV3-R18†)"
    assert scratch[3] == "not run yet\npaper 65.17"
    assert mbv2[1:3] == ["n/a\n(paper 3.2)", "n/a\n(paper 128.9)"]
    assert mbv2[8] == "74.80 (n=1)\npaper 75.26 (Δ +2.14)"  # no Δ: this student has no baseline run
    assert psp[5] == "not run: IFVD needs a DeepLab head\npaper 73.71 (Δ +1.16)"
    assert t.group_rows == [5]
    assert diag == ["DeepLabV3-R18 at the teacher's schedule\n(diagnostic)", "13.6", "571.6", "75.50 (n=1)",
                    "–", "–", "–", "–", "–"]
    notes = "\n".join(t.notes)
    assert "sqrt(std_method^2 + std_baseline^2)" in notes
    assert "one multiply-accumulate = one FLOP" in notes
    assert "Diagnostic, DeepLabV3-R18 at the teacher's schedule: Trained with the teacher's" in notes
    assert table3_paper()["source"] in notes
    md = render_markdown(t)
    line = ("| DeepLabV3-R18 | 13.6<br>(paper 13.6) | 571.6<br>(paper 572.0) | "
            "74.00 ± 1.00 (n=3)<br>paper 74.21 |")
    assert line in md
    assert render_latex(t).count("\\midrule") == 2


def test_build_table3_without_runs_never_shows_paper_as_measured() -> None:
    t = build_method_table(pd.DataFrame(), yaml.safe_load(SPEC_YAML), {"caption": "c"}, table3_paper())
    for row in t.rows:
        measured = [c for c in row[3:] if c not in ("", "–")]
        assert measured and all(c.startswith("not run yet") for c in measured)
    assert t.rows[1][1] == "n/a\n(paper 13.6)"


@pytest.mark.parametrize(
    ("change", "drop", "match"),
    [
        ({"methods": ["baseline", "dkd"]}, [], "unknown methods"),
        ({"students": [{"id": "x", "model": "m", "label": "X", "paper": "ResNet-50"}]}, [], "paper lacks"),
        ({}, ["title", "teacher"], r"spec lacks \['title', 'teacher'\]"),
    ],
)
def test_build_table3_spec_errors(change: dict, drop: list[str], match: str) -> None:
    spec = {k: v for k, v in {**yaml.safe_load(SPEC_YAML), **change}.items() if k not in drop}
    with pytest.raises(UserError, match=match):
        build_method_table(_runs(), spec, CONTEXT, table3_paper())


def test_tables_does_not_import_torch() -> None:
    code = ("import sys, tables, tables.paper, tables.aggregate, tables.render, tables.method_table, tables.plot, "
            "tables.detection_table; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("table", ["3", "5", "tokens"])
def test_every_shipped_table_spec_renders(table: str) -> None:
    from benchmark.plan import load_table_spec
    from tables.paper import PAPER_TABLES

    spec = load_table_spec(table, None).raw()
    runs = pd.DataFrame([{"row": s["id"], "method": m["id"], "seed": 0, "miou": 50.0}
                         for s in spec["students"] for m in spec["methods"]])
    t = build_method_table(runs, spec, {"caption": "c"}, PAPER_TABLES[table]())
    assert t.columns[3:] == [m["label"] for m in spec["methods"]]
    assert all("50.00 (n=1)" in cell for row in t.rows[1:1 + len(spec["students"])] for cell in row[3:])
    assert "FLOPs (G)" in "\n".join(t.notes)


@pytest.mark.parametrize("table", ["1", "2", "4", "7", "mtpd"])
def test_every_shipped_detection_spec_renders(table: str) -> None:
    from benchmark.engine.coco_eval import METRICS
    from benchmark.plan import load_table_spec
    from tables.detection_table import METRICS as COLUMNS
    from tables.detection_table import build_detection_table
    from tables.paper import PAPER_TABLES

    assert COLUMNS == METRICS
    spec = load_table_spec(table, None).raw()
    runnable = [b for b in spec["blocks"] if not b.get("backend")]
    runs = pd.DataFrame([{"row": b["students"][0]["id"], "method": m["id"], "seed": s,
                          **dict.fromkeys(METRICS, 40.0 + s)}
                         for b in runnable for m in b["methods"] for s in (0, 1)])
    t = build_detection_table(runs, spec, "c", PAPER_TABLES[table]())
    assert t.columns == ["Detector / method", *METRICS]
    by_label: dict[str, list[list[str]]] = {}
    for row in t.rows:
        by_label.setdefault(row[0], []).append(row)
    for block in spec["blocks"]:
        student = block["students"][0]
        for m in block["methods"]:
            label = f"S: {student['label']}" if m["method"] == "baseline" else m["label"]
            cells = [c for row in by_label[label] for c in row[1:]]
            expected = "needs the OpenMMLab backend" if block.get("backend") else "40.5 ± 0.7 (n=2)"
            assert any(c.startswith(expected) for c in cells), (block["id"], label)
            if m.get("paper"):  # every method that names a paper row shows the paper's AP
                assert any(c.split("\n")[-1].startswith("(paper ") and c.split("\n")[-1] != "(paper -)"
                           for c in cells), (block["id"], label)
        for teacher in (block["teacher"], *block.get("teachers", ())):
            cell = by_label[f"T: {teacher['label']}"][0][1]
            assert cell.startswith("needs the OpenMMLab backend" if block.get("backend") else "not run yet")
    assert any(n.startswith("→ = progressive distillation") for n in t.notes) == (table == "mtpd")


def test_detection_caption_names_how_the_teacher_normalises() -> None:
    cpu = for_task(load_preset("cpu"), "det")
    caption = detection_caption(cpu, "synth", [0], {})
    assert "BN normalises with each batch's statistics while distilling" in caption and "AdamW lr 0.0001" in caption
    assert "Backbone norm of fcos, retinanet: BN with kept pretrained statistics" in caption  # faster: plain BN
    assert "RetinaNet head: GroupNorm after each head conv, giou box loss" in caption
    assert "Stand-in pretraining: 300 steps x batch 32, AdamW lr 0.001, wd 0.05, residual branches zero-init" in caption
    smoke = detection_caption(for_task(load_preset("smoke"), "det"), "s", [0], {})
    assert "running statistics (eval mode" in smoke and "Backbone norm" not in smoke
    assert "RetinaNet head" not in smoke and "SGD lr" in smoke and "zero-initialised" not in smoke
