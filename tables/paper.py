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
