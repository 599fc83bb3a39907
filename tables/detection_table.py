"""Detection tables (Table 1 layout): one block per detector, a row per network or method, six AP columns.

A spec (`configs/tables/table1.yaml`) has `blocks`, each with a `group` (the paper's group name), a teacher,
one student, optional further `teachers` and `methods` (ids, labels, `paper` row names); `not_implemented`
names paper rows of methods the suite lacks and `needs_backend` rows whose models torchvision cannot build
(shown with the paper's numbers, never dropped).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from benchmark.config import Preset
from tables.aggregate import format_stat, summarize
from tables.render import TableData

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the ledger columns (benchmark.engine.coco_eval.METRICS)
MM_BACKEND = "needs the OpenMMLab backend"


def _paper_cells(values: Sequence[float | None] | None) -> list[str]:
    if values is None:
        return ["" for _ in METRICS]
    return ["(paper -)" if v is None else f"(paper {v:.1f})" for v in values]


def _measured_cells(runs: pd.DataFrame, row_id: str, method: str, paper: Sequence[float | None] | None,
                    missing: str) -> list[str]:
    sel = runs[(runs["row"] == row_id) & (runs["method"] == method)] if len(runs) else runs
    cells = []
    for i, metric in enumerate(METRICS):
        values = pd.to_numeric(sel[metric]) if not sel.empty and metric in sel else pd.Series(dtype=float)
        stat = summarize(values.dropna().tolist())
        # All NaN: COCOeval's -1, the val split has no object of this size range.
        no_objects = "n/a (no such objects)" if len(values) else missing
        ours = no_objects if stat is None else format_stat(stat, digits=1)
        ref = _paper_cells(paper)[i]
        cells.append(f"{ours}\n{ref}" if ref else ours)
    return cells


def build_detection_table(runs: pd.DataFrame, spec: dict, caption: str, paper: dict) -> TableData:
    """Rows: per block a group line, the teacher ("T:"), the student baseline ("S:"), then one row per method
    column and per not-implemented paper method. Cells: our AP mean ± std over seeds, the paper's below."""
    rows: list[list[str]] = []
    group_rows: list[int] = []
    for block in spec["blocks"]:
        groups = paper["groups"]  # a one-group paper table (an ablation) serves any block heading
        ref = groups.get(block.get("group") or "") or (next(iter(groups.values())) if len(groups) == 1 else {})
        missing = MM_BACKEND if block.get("backend") else "not run yet"
        group_rows.append(len(rows))
        rows.append([f"{block.get('group') or block['id']}", *([""] * len(METRICS))])
        teachers, (student,) = [block["teacher"], *block.get("teachers", ())], block["students"]
        for teacher in teachers:
            rows.append([f"T: {teacher['label']}",
                         *_measured_cells(runs, teacher["id"], "baseline", ref.get(teacher.get("paper") or ""),
                                          missing)])
        for method in block["methods"]:
            label = f"S: {student['label']}" if method["method"] == "baseline" else method["label"]
            name = student.get("paper") if method["method"] == "baseline" else method.get("paper")
            rows.append([label, *_measured_cells(runs, student["id"], method["id"], ref.get(name or ""), missing)])
        for name in block.get("not_implemented", ()):
            rows.append([name, *_measured_cells(pd.DataFrame(), "", "", ref.get(name), "not implemented")])
        for name in block.get("needs_backend", ()):
            rows.append([name, *_measured_cells(pd.DataFrame(), "", "", ref.get(name), MM_BACKEND)])
    notes = [
        "Cells: COCO bbox AP (%) of our runs from pycocotools COCOeval, mean ± sample std over seeds (n = runs); "
        "paper = the paper's COCO val number, for reference only (it never stands in for a missing run).",
        "† = inheriting strategy: the student's neck and heads start from the teacher's weights.",
        f"Paper numbers: {paper['source']}",
    ]
    if any(m.get("chain") for block in spec["blocks"] for m in block.get("methods", ())):
        notes.insert(2, "→ = progressive distillation (MTPD): one full student schedule per teacher of the chain, weak "
                        "to strong, each stage starting from the previous stage's student (the first inherits neck "
                        "and heads from its teacher: the same run as a direct column with that teacher), so a "
                        "chain's student trains as many schedules as the chain has teachers.")
    return TableData(title=spec["title"], caption=caption, columns=["Detector / method", *METRICS], rows=rows,
                     notes=notes, label=spec.get("label") or f"tab:table{spec.get('table', '1')}",
                     group_rows=group_rows)


TEACHER_NORM = {
    "running": "The frozen teacher's BN uses its running statistics (eval mode, as the official code).",
    "batch": "The frozen teacher's plain BN normalises with each batch's statistics while distilling and in the "
             "token stage (teacher_norm: batch; its running statistics put some images' features off scale).",
}
NORM_NAMES = {"frozen": "FrozenBatchNorm", "bn_eval": "BN with kept pretrained statistics and trained affine (mmdet's "
              "norm_eval)"}


def backbone_norms(preset: Preset) -> str:
    """A caption sentence naming the detector families whose backbone BN is not plain BN ('' if none)."""
    families: dict[str, list[str]] = {}
    for family, options in sorted(preset.model.detector.items()):
        if options.get("norm", "bn") != "bn":
            families.setdefault(options["norm"], []).append(family)
    return "".join(f"Backbone norm of {', '.join(names)}: {NORM_NAMES[norm]}. " for norm, names in families.items())


def head_variants(preset: Preset) -> str:
    """A caption sentence naming the RetinaNet head when it is not the paper's mmdet head ('' if it is)."""
    options = preset.model.detector.get("retinanet", {})
    norm, loss = options.get("head_norm", "none"), options.get("box_loss", "l1")
    if (norm, loss) == ("none", "l1"):
        return ""
    gn = "GroupNorm after each head conv" if norm == "gn" else "no head norm"
    return f"RetinaNet head: {gn}, {loss} box loss (paper's mmdet head: no norm, l1; gn + giou = torchvision's v2). "


def standin_recipe(preset: Preset) -> str:
    """A caption sentence on how the embedded-pretrain stand-ins were trained."""
    p = preset.pretrain
    zero = ", residual branches zero-initialised" if preset.model.zero_init_residual else ""
    optimizer = {"sgd": "SGD (momentum 0.9)", "adamw": "AdamW"}[p.optimizer]
    return (f"Stand-in pretraining: {p.steps} steps x batch {p.batch_size}, {optimizer} lr {p.lr}, "
            f"wd {p.weight_decay}{zero}. ")


def detection_caption(preset: Preset, data_id: str, seeds: list[int], sources: dict[str, str]) -> str:
    """Preset, data, schedules and pretrained backbones of a detection table (`sources`: backbone → weights)."""
    t, s, k = preset.teacher, preset.student, preset.tokens
    pretrained = "; ".join(sorted(f"{b}: {src}" for b, src in sources.items()))
    return (
        f"Preset '{preset.name}' ({preset.description}); data {data_id}; {preset.data.height}x{preset.data.width} "
        f"images, flip {'on' if preset.data.flip else 'off'}. Teacher: {t.describe()}; students: {s.describe()}; "
        f"MasKD token stage: {k.steps} steps x batch {k.batch_size} with each detector's official token "
        "optimizer (Faster R-CNN SGD lr 0.1, wd 1e-4; RetinaNet/FCOS Adam lr 0.01, wd 1e-3; cosine to 1e-6; "
        f"configs/methods/maskd_det.yaml). {backbone_norms(preset)}{head_variants(preset)}"
        f"{TEACHER_NORM[preset.teacher_norm]} {standin_recipe(preset)}"
        f"Seeds {', '.join(map(str, seeds))}; final checkpoint. "
        f"Pretrained backbones: {pretrained} ('embedded-pretrain' = our ImageNet stand-in: multi-label "
        "classification of object-centred crops of generated detection scenes disjoint from train and val)."
    )
