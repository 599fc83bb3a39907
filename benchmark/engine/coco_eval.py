"""COCO box AP through pycocotools' COCOeval: torchvision-style detections → COCO results → the six summary
metrics in percent. A size range without ground truth (e.g. no large objects) reports NaN, as COCOeval's -1 means
"undefined"; no detections at all score 0 wherever there is ground truth.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import TextIO

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[:6]


def detections_to_coco(image_ids: Sequence[int], detections: Sequence[Mapping[str, torch.Tensor]],
                       label_to_category: Mapping[int, int]) -> list[dict]:
    """COCO results (bbox [x, y, w, h], COCO category_id, score) from per-image dicts of `boxes` xyxy [N, 4],
    `scores` [N] and contiguous `labels` [N], as torchvision detectors return them in eval mode."""
    results = []
    for image_id, det in zip(image_ids, detections, strict=True):
        xyxy = det["boxes"].detach().to("cpu", torch.float64)
        boxes = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1)
        for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True):
            results.append({"image_id": int(image_id), "category_id": label_to_category[label], "bbox": box,
                            "score": score})
    return results


def _results_index(coco_gt: COCO, results: list[dict]) -> COCO:
    """The results as a COCO index (copies: loadRes adds fields to each dict); an empty one for no results."""
    if results:
        return coco_gt.loadRes([dict(r) for r in results])
    coco_dt = COCO()
    coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                       "annotations": []}
    coco_dt.createIndex()
    return coco_dt


def coco_bbox_metrics(coco_gt: COCO, results: list[dict], img_ids: Sequence[int] | None = None,
                      stream: TextIO | None = None) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (percent) of `results` against `coco_gt` over `img_ids` (default: all its
    images). COCOeval's progress and summary table go to `stream` (e.g. sys.stdout or a log file), else nowhere."""
    with contextlib.redirect_stdout(stream or io.StringIO()):
        evaluator = COCOeval(coco_gt, _results_index(coco_gt, results), iouType="bbox")
        if img_ids is not None:
            evaluator.params.imgIds = sorted(img_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: 100 * float(v) if v >= 0 else math.nan for name, v in zip(METRICS, evaluator.stats, strict=False)}
