"""The paper's reported numbers (`paper_numbers.json` next to this module)."""

from __future__ import annotations

import json
from pathlib import Path

PAPER_JSON = Path(__file__).with_name("paper_numbers.json")


def load_paper_numbers() -> dict:
    """The whole JSON file: keys "source", "format", "table1" … "table7", README numbers."""
    return json.loads(PAPER_JSON.read_text(encoding="utf-8"))


def table3_paper() -> dict:
    """Table 3 (Cityscapes mIoU, val/test) keyed for lookup.

    Returns {"title", "source", "teacher": {model, params_M, flops_G, val, test},
    "students": {paper label ("DeepLabV3-R18", "DeepLabV3-R18†", ...):
    {"params_M", "flops_G", "methods": {method id: (val, test)}}}}, where method ids are the
    suite's lower-case ids ("baseline", "skd", "ifvd", "cwd", "cirkd", "maskd"); None = not reported.
    """
    numbers = load_paper_numbers()
    t3 = numbers["table3"]
    students = {
        s["student"]: {
            "params_M": s["params_M"],
            "flops_G": s["flops_G"],
            "methods": {r["method"].lower(): (r["val"], r["test"]) for r in s["rows"]},
        }
        for s in t3["students"]
    }
    return {"title": t3["title"], "source": numbers["source"], "teacher": dict(t3["teacher"]),
            "students": students}


def table5_paper() -> dict:
    """Table 5 (GT vs learned masks, val mIoU) in the `table3_paper` layout; method ids "maskd_gt" and
    "maskd", with each student's Table 3 baseline so that the paper Δ can be shown."""
    t3 = table3_paper()
    rows = load_paper_numbers()["table5"]["rows"]
    column = {"gt": "maskd_gt", "learned": "maskd"}
    students = {}
    for name in ("DeepLabV3-R18", "PSPNet-R18"):
        ref = t3["students"][name]
        methods = {"baseline": ref["methods"]["baseline"]}
        methods |= {column[r["mask"]]: (r[name], None) for r in rows}
        students[name] = {"params_M": ref["params_M"], "flops_G": ref["flops_G"], "methods": methods}
    return {**t3, "title": load_paper_numbers()["table5"]["title"], "students": students}


def tokens_paper() -> dict:
    """Segmentation token-count ablation (our extension; the paper's Table 7 is detection): the only paper
    numbers are Table 3's baseline and MasKD (T = 8) cells, under the ids "baseline" and "maskd_t8"."""
    t3 = table3_paper()
    students = {
        name: {**ref, "methods": {"baseline": ref["methods"]["baseline"], "maskd_t8": ref["methods"]["maskd"]}}
        for name, ref in t3["students"].items()
    }
    return {**t3, "students": students}


def _ap_blocks(name: str) -> dict:
    numbers = load_paper_numbers()
    table = numbers[name]
    groups = {b["group"]: {r["method"]: r["AP"] for r in b["rows"]} for b in table["blocks"]}
    return {"title": table["title"], "source": numbers["source"], "columns": table["columns"], "groups": groups}


def table1_paper() -> dict:
    """Table 1 (COCO val, six AP columns) as {"title", "source", "columns", "groups": {group: {row name:
    [AP, AP50, AP75, APs, APm, APl] (None = not reported)}}}; row names as printed ("T: Faster RCNN-R101",
    "Fitnet", "MasKD†", ...)."""
    return _ap_blocks("table1")


def table2_paper() -> dict:
    """Table 2 (stronger teachers) in the `table1_paper` layout."""
    return _ap_blocks("table2")


def _ap_only(rows: dict[str, float]) -> list:
    return [[ap, None, None, None, None, None] for ap in rows.values()]


def table4_paper() -> dict:
    """Table 4 (MasKD components; AP only) in the `table1_paper` layout, one group; row names "mimic", "random
    tokens", "L_div only", "L_task only", "L_div + L_task", "+ mask weighting", "+ customization"."""
    numbers = load_paper_numbers()
    t4 = numbers["table4"]
    names = ["random tokens", "L_div only", "L_task only", "L_div + L_task", "+ mask weighting", "+ customization"]
    rows = {"mimic": t4["mimic"]} | {name: r["AP"] for name, r in zip(names, t4["rows"], strict=True)}
    group = dict(zip(rows, _ap_only(rows), strict=True))
    return {"title": t4["title"], "source": numbers["source"], "columns": ["AP"], "groups": {"ablation": group}}


def table7_paper() -> dict:
    """Table 7 (number of tokens; AP only) in the `table1_paper` layout, one group; rows "T = 0 (mimic)", "T = 2"…"""
    numbers = load_paper_numbers()
    t7 = numbers["table7"]
    rows = {f"T = {name}": ap for name, ap in t7["rows"].items()}
    group = dict(zip(rows, _ap_only(rows), strict=True))
    return {"title": t7["title"], "source": numbers["source"], "columns": ["AP"], "groups": {"tokens": group}}


def mtpd_paper() -> dict:
    """The MTPD README's progressive-distillation results (box AP only) in the `table1_paper` layout: one group
    per student ("RetinaNet/ResNet-50", ...), rows named by their chain, "R101 → X101"-style ("RetinaNet/ResNet-101 →
    RetinaNet/ResNeXt-101")."""
    numbers = load_paper_numbers()
    groups: dict[str, dict[str, list]] = {}
    for entry in numbers["mtpd_readme"]:
        groups.setdefault(entry["student"], {})[" → ".join(entry["chain"])] = [entry["box_AP"], *[None] * 5]
    return {"title": "MTPD README: progressive distillation, COCO box AP", "source": numbers["source"],
            "columns": ["AP"], "groups": groups}


PAPER_TABLES = {"1": table1_paper, "2": table2_paper, "3": table3_paper, "4": table4_paper, "5": table5_paper,
                "7": table7_paper, "mtpd": mtpd_paper, "tokens": tokens_paper}
