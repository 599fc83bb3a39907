"""What the detection MasKD figures share: cache discovery, the teacher and its token stage, val images, masks.

Cache (written by `python benchmark/run.py --table 1`, see `benchmark.experiment`):

- `<cache>/teachers/<model>-<key>/`: the detection teacher (`model.pt` bare state dict; `meta.json` with `config`
  holding `task: det`, `model`, `data` {id, height, width, ...} and `arch`, the preset's model section after its
  detection overrides, so the detector is rebuilt from the meta alone: no `--preset` is needed);
- `<cache>/stages/tokens-<key>/`: the MasKD-det token stage (`model.pt` = the state dict of
  `methods.maskd.detection.MaskedDetectorTeacher`, i.e. `token_sets.<level>.tokens` and, with the weighting
  module, `token_sets.<level>.weighting.prob.*`; `meta.json` with `stage: tokens`, the `teacher` key and `config`
  {method: maskd_det, levels, level_keys, channels, num_tokens, weighting, task_loss, ...});
- `<cache>/data/<data id>/`: the embedded COCO-format data (or `--det-data-root` for real COCO).

Masks and weights are computed with the stage model's own `TokenSet.masks` (`token_masks`, σ(E·F)) and
`TokenSet.weights` (`MaskWeighting`, softmax over the T tokens) on the teacher's FPN levels from
`detector_features`, one image at a time in eval mode (the weighting module's global pool then sees only that
image's padding, never a batch neighbour's). A stage learned with `teacher_norm: batch` (its meta says so) is
drawn on a teacher whose BN also uses batch statistics, here those of the one image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.patches import Rectangle
from torch import nn

from benchmark.config import ModelConfig, Preset, from_dict
from benchmark.data.coco import CocoDetection, coco_fingerprint
from benchmark.engine.checkpoint import load_state_strict
from benchmark.errors import UserError
from benchmark.figures.caches import CachedRecord, TeacherRecord, _finished, list_teachers
from benchmark.figures.common import data_root
from benchmark.models.detectors import DETECTORS, detector_features
from benchmark.tasks import DetectionTask
from methods.base import use_batch_statistics
from methods.maskd.detection import MaskedDetectorTeacher

DET_METHOD = "maskd_det"
DET_HINT = ("run `python benchmark/run.py --table 1` first (it trains and caches the detection teacher and its "
            "MasKD column learns the per-level tokens; `--methods maskd` runs only that column)")
WEIGHTS_HINT = ("the weighting module is trained only with the default MasKD-det options (masks: learned, "
                "task_loss: true, stage_weighting: true); " + DET_HINT)
DISPLAY_MAX = 320  # longest side of a drawn image, in pixels (real COCO images are downscaled for the figure)


def fmt_metric(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and not math.isnan(value) else "n/a"


@dataclass(frozen=True)
class DetTeacherRecord(TeacherRecord):
    """A finished detection teacher (`config.task == "det"`, or a registered detector model)."""

    @property
    def ap(self) -> float | None:
        return self.meta.get("AP")

    @property
    def backbone_norm(self) -> str:
        """The backbone's norm as built (`build_detector`'s ``norm``: "bn", "bn_eval" or "frozen")."""
        family = DETECTORS.get(self.config.get("model", self.model), {}).get("family")
        return str(self.config.get("arch", {}).get("detector", {}).get(family, {}).get("norm", "bn"))

    def describe(self) -> str:
        data = self.config.get("data", {}).get("id", "?")
        return f"detection teacher {self.model} key {self.key}: AP {fmt_metric(self.ap)}, data {data}"


@dataclass(frozen=True)
class DetStageRecord(CachedRecord):
    """A finished MasKD-det token stage (`<cache>/stages/tokens-<key>/`, `config.method == "maskd_det"`)."""

    @property
    def teacher_key(self) -> str:
        return str(self.meta.get("teacher", ""))

    @property
    def num_tokens(self) -> int:
        return int(self.config.get("num_tokens", 0))

    @property
    def task_loss(self) -> bool:
        return bool(self.config.get("task_loss", True))

    @property
    def weighting(self) -> bool:
        return bool(self.config.get("weighting", False))

    @property
    def steps(self) -> Any:
        return self.meta.get("schedule", {}).get("steps", "?")

    @property
    def teacher_norm(self) -> str:
        """How the teacher's BN normalised while the tokens were learned (`Preset.teacher_norm`)."""
        return str(self.meta.get("teacher_norm", "running"))

    @property
    def ap(self) -> float | None:
        return self.meta.get("AP")

    def describe(self) -> str:
        kind = "learned" if self.task_loss else "diversity-only"
        return (f"detection tokens key {self.key}: {kind}, T={self.num_tokens}, weighting "
                f"{'on' if self.weighting else 'off'}, {len(self.config.get('levels', []))} levels, teacher "
                f"{self.teacher_key} (BN: {self.teacher_norm} statistics), {self.steps} steps, masked-teacher AP "
                f"{fmt_metric(self.ap)} "
                f"({self.config.get('eval_masks', 'union')} masks)")


def norm_note(teacher: DetTeacherRecord, stage: DetStageRecord) -> str:
    """Caption fragment naming how the teacher's BN normalised in the stage (running statistics go unsaid).

    `teacher_norm: batch` turns plain BN only: a ``bn_eval``/``frozen`` backbone keeps its statistics."""
    if stage.teacher_norm != "batch":
        return ""
    if teacher.backbone_norm != "bn":
        return f", teacher BN: kept pretrained statistics ({teacher.backbone_norm})"
    return ", teacher BN: batch statistics"


def is_detection(record: TeacherRecord) -> bool:
    return record.config.get("task") == "det" or record.config.get("model", record.model) in DETECTORS


def list_det_teachers(cache_dir: Path) -> list[DetTeacherRecord]:
    """Finished detection teachers, newest first."""
    return [DetTeacherRecord(t.entry, t.key, t.meta, t.mtime, model=t.model)
            for t in list_teachers(cache_dir) if is_detection(t)]


def list_det_stages(cache_dir: Path, teacher_key: str | None = None,
                    num_tokens: int | None = None) -> list[DetStageRecord]:
    """Finished MasKD-det token stages, newest first, optionally of one teacher / T."""
    found = []
    for entry, _, key, meta, mtime in _finished(Path(cache_dir) / "stages", prefix="tokens"):
        record = DetStageRecord(entry, key, meta, mtime)
        if meta.get("stage") != "tokens" or record.config.get("method") != DET_METHOD:
            continue
        if teacher_key is not None and record.teacher_key != teacher_key:
            continue
        if num_tokens is not None and record.num_tokens != num_tokens:
            continue
        found.append(record)
    return sorted(found, key=lambda r: r.mtime, reverse=True)


def _find_det_teacher(cache_dir: Path, key: str) -> DetTeacherRecord:
    teachers = list_teachers(cache_dir)
    matches = [t for t in teachers if t.key == key] or [t for t in teachers if t.key.startswith(key)]
    if len(matches) != 1:
        listing = "; ".join(t.describe() for t in list_det_teachers(cache_dir)) or "none"
        what = "matches several teachers" if matches else "matches no cached teacher"
        raise UserError(f"--teacher-key {key!r} {what} in {Path(cache_dir) / 'teachers'}. Cached detection "
                        f"teachers: {listing}.")
    if not is_detection(matches[0]):
        raise UserError(f"teacher {matches[0].key} ({matches[0].model}) is not a detection teacher; the detection "
                        "figures need one: " + DET_HINT + ".")
    t = matches[0]
    return DetTeacherRecord(t.entry, t.key, t.meta, t.mtime, model=t.model)


def pick_det(cache_dir: Path, teacher_key: str | None = None, num_tokens: int | None = None,
             weighted: bool = False) -> tuple[DetTeacherRecord, DetStageRecord]:
    """The newest learned (task + diversity loss) MasKD-det stage whose teacher is cached, and that teacher.

    `weighted`: only stages with a trained mask weighting module (Fig. 3b draws its weights).
    """
    cache_dir = Path(cache_dir)
    teacher = _find_det_teacher(cache_dir, teacher_key) if teacher_key else None
    teachers = {t.key: t for t in list_det_teachers(cache_dir)}
    scope = "".join([f" of teacher {teacher.key}" if teacher else "", f" with T={num_tokens}" if num_tokens else ""])
    stages = list_det_stages(cache_dir, teacher.key if teacher else None, num_tokens)
    learned = [s for s in stages if s.task_loss]
    usable = [s for s in learned if s.weighting] if weighted else learned
    for stage in usable:
        if stage.teacher_key in teachers:
            return teachers[stage.teacher_key], stage
    if usable:
        keys = ", ".join(sorted({s.teacher_key for s in usable}))
        raise UserError(f"MasKD detection token stages are cached ({', '.join(s.key for s in usable)}) but not "
                        f"their teacher ({keys}) in {cache_dir / 'teachers'} (a teacher given with --teacher-ckpt is "
                        f"never cached, or the entry was deleted); the figures need its weights: {DET_HINT} without "
                        "--teacher-ckpt.")
    if not teachers and not stages:
        raise UserError(f"no cached detection teacher in {cache_dir / 'teachers'}; {DET_HINT} (pass --cache-dir if "
                        "your cache is elsewhere).")
    if learned:  # weighted and none has the module
        raise UserError(f"the learned MasKD detection token stages{scope} ({', '.join(s.key for s in learned)}) "
                        f"have no mask weighting module (weighting: false), so there are no weights to draw; "
                        f"{WEIGHTS_HINT}.")
    raise UserError(f"no learned MasKD detection tokens{scope} in {cache_dir / 'stages'}; {DET_HINT}.")


def describe_det_cache(cache_dir: Path) -> str:
    """The detection teachers and token stages of a cache, one per line (`--list`)."""
    teachers, stages = list_det_teachers(cache_dir), list_det_stages(cache_dir)
    lines = [f"  {t.describe()}" for t in teachers] or ["  no detection teachers"]
    return "\n".join(lines + ([f"  {s.describe()}" for s in stages] or ["  no detection token stages"]))


# ---------------------------------------------------------------------------------------------- models and data
def det_data_root(teacher: DetTeacherRecord, cache_dir: Path, override: Path | None = None) -> Path:
    """The teacher's COCO-format data: `--det-data-root` if given, else `<cache>/data/<data id>/`."""
    return data_root(teacher, cache_dir, override, coco_fingerprint, "COCO (--det-data-root)", DET_HINT)


def load_det_teacher(teacher: DetTeacherRecord, class_names: tuple[str, ...], device: torch.device | str = "cpu",
                     norm: str = "running") -> nn.Module:
    """The cached detector, rebuilt from its meta config (`model`, `data` size, `arch`), loaded strictly, eval.

    `norm="batch"`: its BN normalises with batch statistics, as when its token stage was learned that way.
    """
    config = teacher.config
    data = config.get("data", {})
    if "height" not in data or "width" not in data:
        raise UserError(f"detection teacher {teacher.entry.root} has no data height/width in its meta.json; "
                        f"delete it and {DET_HINT.removeprefix('run ')}.")
    preset = Preset(model=from_dict(ModelConfig, config.get("arch", {}), "arch."))
    task = DetectionTask(class_names, (int(data["height"]), int(data["width"])))
    model = task.build_model(config.get("model", teacher.model), preset)
    load_state_strict(model, teacher.entry.state_dict(), teacher.entry.weights_path, "cached detection teacher")
    if norm == "batch":
        use_batch_statistics(model)
    return model.to(device).eval()


def load_stage_model(stage: DetStageRecord, teacher: nn.Module) -> MaskedDetectorTeacher:
    """The token stage `MaskedDetectorTeacher` (as `MasKDDetection.stage` builds it), cached tokens loaded, eval."""
    c = stage.config
    try:
        levels, channels = list(c["levels"]), [int(x) for x in c["channels"]]
    except (KeyError, TypeError) as err:
        raise UserError(f"token stage {stage.entry.root} has no levels/channels in its meta config ({err}); delete "
                        f"it and {DET_HINT.removeprefix('run ')}.") from None
    model = MaskedDetectorTeacher(teacher, levels, channels, stage.num_tokens, weighting=stage.weighting,
                                  task_loss=stage.task_loss, eval_masks=c.get("eval_masks", "union"))
    saved_keys = c.get("level_keys")
    if saved_keys is not None and dict(saved_keys) != dict(model.level_keys):
        raise UserError(f"token stage {stage.key} was learned on FPN keys {saved_keys} but its teacher publishes "
                        f"{model.level_keys}; delete the stale stage {stage.entry.root}.")
    load_state_strict(model, stage.entry.state_dict(), stage.entry.weights_path, "cached token stage")
    return model.eval()


class DetModels:
    """Loads each (teacher, stage) pair once per command: both detection figures usually share it."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self._teachers: dict[tuple[str, str], nn.Module] = {}
        self._stages: dict[str, MaskedDetectorTeacher] = {}

    def get(self, teacher: DetTeacherRecord, stage: DetStageRecord,
            class_names: tuple[str, ...]) -> MaskedDetectorTeacher:
        """The stage model on its teacher, normalised as when the stage was learned (`stage.teacher_norm`)."""
        normalised = (teacher.key, stage.teacher_norm)
        if normalised not in self._teachers:
            self._teachers[normalised] = load_det_teacher(teacher, class_names, self.device, stage.teacher_norm)
        if stage.key not in self._stages:
            self._stages[stage.key] = load_stage_model(stage, self._teachers[normalised]).to(self.device)
        return self._stages[stage.key]


@dataclass(frozen=True)
class DetSamples:
    """A few val images (float [3, H, W] in [0, 1], native size), their GT boxes (xyxy px) and labels, names."""

    images: list[torch.Tensor]
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    names: list[str]
    class_names: tuple[str, ...]


def det_val_samples(root: Path, count: int) -> DetSamples:
    """`count` val images spread evenly over the split."""
    dataset = CocoDetection(root, "val")
    count = max(1, min(count, len(dataset)))
    picks = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, count).round()})
    pairs = [dataset[i] for i in picks]
    names = [Path(dataset.coco.imgs[dataset.ids[i]]["file_name"]).stem for i in picks]
    return DetSamples([p[0] for p in pairs], [p[1]["boxes"] for p in pairs], [p[1]["labels"] for p in pairs],
                      names, dataset.class_names)


# ---------------------------------------------------------------------------------------------- masks and weights
def level_name(stride: int) -> str:
    """FPN level name from its stride: 4 → P2, 8 → P3, ..."""
    return f"P{round(math.log2(stride))}"


@dataclass(frozen=True)
class LevelMasks:
    """One image at one FPN level: masks at feature resolution (T×h×w), at display size (T×H×W, bilinear,
    padding cropped), the per-image token weights (T, or None without the weighting module)."""

    level: str  # the tap, e.g. fpn_1
    key: str  # the FPN output key, e.g. '1'
    stride: int
    small: torch.Tensor
    big: torch.Tensor
    weights: torch.Tensor | None

    @property
    def name(self) -> str:
        return level_name(self.stride)


def display_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, DISPLAY_MAX / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _to_image(masks: torch.Tensor, stride: int, resized: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """T×h×w masks of the padded, resized input → T×H×W on the original image (display size), in [0, 1].

    Upsampled bilinearly by the level's stride (cell centres land on the pixels they cover; for a max-pooled
    extra level this may overshoot the padded input), the padding cropped, then resized to `size`.
    """
    h, w = masks.shape[-2:]
    up = nn.functional.interpolate(masks[None], size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    up = up[..., :resized[0], :resized[1]]
    if tuple(up.shape[-2:]) != tuple(size):
        up = nn.functional.interpolate(up, size=size, mode="bilinear", align_corners=False)
    return up[0].clamp(0, 1)


@torch.no_grad()
def image_level_masks(stage_model: MaskedDetectorTeacher, image: torch.Tensor) -> list[LevelMasks]:
    """Masks and weights of every learned level for one image (float [3, H, W] in [0, 1]), in level order."""
    teacher = stage_model.teacher
    device = next(teacher.parameters()).device
    image_list, _, features = detector_features(teacher, [image.to(device)])
    strides = dict(zip(getattr(teacher, "fpn_levels", ()), getattr(teacher, "fpn_strides", ()), strict=False))
    padded = image_list.tensors.shape[-2:]
    resized = tuple(image_list.image_sizes[0])
    size = display_size(*image.shape[-2:])
    out = []
    for level, key in stage_model.level_keys.items():
        feat, tokens = features[key], stage_model.token_sets[level]
        stride = int(strides.get(key) or round(padded[0] / feat.shape[-2]))
        small = tokens.masks(feat)[0].cpu()
        weights = tokens.weights(feat)
        out.append(LevelMasks(level, key, stride, small, _to_image(small, stride, resized, size),
                              None if weights is None else weights[0].cpu()))
    return out


def pick_level(levels: list[LevelMasks], wanted: str) -> int:
    """Index of the level named `wanted`: a P-name (P3), a tap (fpn_1) or an FPN key ('1'); case-insensitive."""
    w = wanted.strip().lower()
    for i, lv in enumerate(levels):
        if w in (lv.name.lower(), lv.level.lower(), lv.key.lower()):
            return i
    names = ", ".join(f"{lv.name} ({lv.level}, key {lv.key!r})" for lv in levels)
    raise UserError(f"--det-level {wanted!r} is none of the stage's levels: {names}.")


def display_image(image: torch.Tensor) -> np.ndarray:
    """Float [3, H, W] in [0, 1] → float RGB [H', W', 3] at display size."""
    size = display_size(*image.shape[-2:])
    if tuple(image.shape[-2:]) != size:
        image = nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return image.clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def display_boxes(boxes: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """GT boxes (xyxy, original pixels) scaled to the display size."""
    h, w = image.shape[-2:]
    dh, dw = display_size(h, w)
    return boxes * torch.tensor([dw / w, dh / h, dw / w, dh / h])


# ---------------------------------------------------------------------------------------------- drawing
BOX_COLOUR = "#39ff14"  # GT boxes on the image panel
OVERLAY_ALPHA = 0.6  # mask opacity over the (greyed) image


def draw_image(ax, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor | None = None,
               class_names: tuple[str, ...] = ()) -> None:
    """The image at display size with its GT boxes (and class names when `labels` is given)."""
    ax.imshow(display_image(image), interpolation="bilinear")
    for i, (x0, y0, x1, y1) in enumerate(display_boxes(boxes, image).tolist()):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOUR, linewidth=0.8))
        if labels is not None and 0 < int(labels[i]) <= len(class_names):
            ax.text(x0, y0, class_names[int(labels[i]) - 1], color="black", fontsize=3.5, va="bottom",
                    bbox={"boxstyle": "square,pad=0.05", "facecolor": BOX_COLOUR, "linewidth": 0})


def draw_overlay(ax, image: torch.Tensor, mask: torch.Tensor, boxes: torch.Tensor, cmap: str):
    """A mask (H×W at display size, 0–1) over the greyed image, GT boxes as thin dashed outlines; the mask's
    AxesImage is returned (for a colour bar)."""
    grey = display_image(image).mean(-1)
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
    shown = ax.imshow(mask.numpy(), cmap=cmap, vmin=0, vmax=1, alpha=OVERLAY_ALPHA, interpolation="bilinear")
    for x0, y0, x1, y1 in display_boxes(boxes, image).tolist():
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=0.4,
                               linestyle=(0, (2, 1.5)), alpha=0.8))
    return shown
