"""`python benchmark/perf.py`: what distillation costs on top of the unavoidable work, per method.

Two measurements, both reported against targets but never asserted (the exit code is 0 unless the input is bad):

1. **KD step vs its floor.** For each method, one training step of the full `TrainUnit(student, SegmentationLoss,
   DistillationLoss(method))` as the Trainer runs it: zero_grad, forward (student, task loss, teacher under
   `torch.no_grad()`, taps, method loss), backward, SGD over `unit.parameter_groups()`, then `unit.after_step()`
   (the discriminator step of SKD/IFVD/CWD; gradient-norm clipping first when the schedule sets
   `clip_grad_norm`). Its *floor* is the work no distillation method can avoid on the
   same batch: one student-only step (the same, without the method) plus one teacher forward under
   `torch.no_grad()`. The two parts of the floor are timed separately, back to back in the same iteration, and
   summed. Measurements are interleaved (floor, method, method, floor, … — the order alternates every repeat)
   so that background load hits both alike; after `--warmup` untimed rounds, each row reports the median step
   time, the median floor and the median of the per-repeat ratios step/floor (`ratio`, judged against the
   target), plus fastest step / fastest floor (`ratio_of_minima`, steadier on a loaded machine). Targets:
   ≤ 1.10 for MasKD, ≤ 1.30 for every other method. The `baseline` row is the student-only step (no teacher),
   so its ratio is < 1.

   Models are randomly initialised (timing does not depend on the weights); the teacher's BatchNorm running
   statistics are set from one pass over the batch so that its frozen (eval-mode) logits stay in a sane range;
   with the preset's `teacher_norm: batch` it normalises with batch statistics, in the floor and in every step.
   The batch is random images and labels (0..18, about 5 % ignore = 255) at the preset's image size and student
   batch size. MasKD gets random `init_tokens(num_tokens, classes)` through `load_stage` instead of running its
   token-learning stage (a step costs the same with learned tokens). On CUDA the steps use autocast (when the
   preset enables AMP), a GradScaler and channels_last, as the Trainer does. torch's thread count is left alone
   unless `--threads` sets it (on a CPU shared with other jobs, fewer threads than cores can be much faster).

2. **MasKD loss vs the naive version.** Forward + backward (the student requires grad) of `masked_feature_loss`
   against `naive_masked_feature_loss` (which materialises the masked features per token) on detection-size
   tensors (default N=2, T=6, C=256, 100×168; `--loss-size`), random features, masks σ(randn) and weights
   softmax over T, with and without weights. Reports the speed-up (target ≥ 10×) and the relative difference of
   the loss value (target ≤ 1e-5) and of the student gradient.

**Detection (`--task det`).** The same measurement 1 for the detection methods (default: `baseline`, `fgd`,
`maskd_det`, `mgd`, `mimic`; default pair `faster_rcnn_r50` ← `faster_rcnn_r101`), on the preset as a detection
table uses it (`for_task(preset, "det")`: its `detection:` block's image size, student schedule, per-family
detector kwargs and method options). Models are built as `DetectionTask.build_model` builds them (min_size /
max_size = the image size, so nothing is rescaled). A step is `TrainUnit(student, DetectionLoss,
DistillationLoss(method, teacher_forward=detector_features))`: the student's own losses from
`student(images, targets)`, the teacher's transform + backbone + FPN only (no proposals, no NMS), the method on
the FPN taps; with the schedule's gradient-norm clip, as the Trainer. The floor's teacher part is one
`detector_features(teacher, images)` under `torch.no_grad()`. The batch is the student batch size of random
3×H×W images in [0, 1], each with 1–6 random boxes (sides 8–64 px, inside the image) and labels 1..K (K = the
embedded COCO-format data's categories), from a seeded generator. The teacher's BatchNorm statistics are set from
one train-mode backbone + FPN pass over the batch. MasKD-det gets its token stage's *initial* tokens and weighting
modules (`load_stage(method.stage(teacher).model.state_dict())`; the stage is not trained, a step costs the same)
and its customisation warm-up counter starts at `custom_warmup`, so every timed step is the costlier customised
one (M^t ⊙ M^s), as the bulk of training is. Targets: ≤ 1.15 for MasKD-det, ≤ 1.30 for the others. Measurement 2
is the same for both tasks. Without `--methods` each task times `baseline` and its own registered methods (those
registered by a `*.detection` module are the detection ones); a method of the other task, or a student and teacher
of different detector families, is refused before anything is built.

`--json` prints one JSON object per line instead of the table: one per method (`ratio`, `step_ms`, `floor_ms`,
…) and one per masked-loss case (`speedup`, `rel_diff`, …).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch
from torch import nn

from benchmark.config import TASKS, Preset, ScheduleConfig, available, for_task, load_preset
from benchmark.data._coco_shapes import CATEGORIES
from benchmark.data.cityscapes import CITYSCAPES_CLASSES, IGNORE_INDEX
from benchmark.engine.distill import DistillationLoss
from benchmark.engine.task_loss import SegmentationLoss, TaskLoss, TrainUnit
from benchmark.errors import UserError
from benchmark.models import build_segmentor, list_models
from benchmark.models.detectors import DETECTORS, MM_BACKEND_NOTE, NEEDS_MM_BACKEND, detector_features, list_detectors
from benchmark.plan import BASELINE, MethodSpec, method_options
from benchmark.tasks.detection import DetectionLoss, DetectionTask
from methods import build_method
from methods.base import Distiller, use_batch_statistics
from methods.maskd.loss import masked_feature_loss
from methods.maskd.masks import init_tokens
from methods.maskd.naive import naive_masked_feature_loss
from methods.registry import list_methods, method_class

NUM_CLASSES = len(CITYSCAPES_CLASSES)
MASKD_TARGET = 1.10
MASKD_DET_TARGET = 1.15
DEFAULT_TARGET = 1.30
SPEEDUP_TARGET = 10.0
REL_DIFF_TARGET = 1e-5
DETECTION_SIZE = (2, 6, 256, 100, 168)  # N, T, C, H, W
DEFAULT_MODELS = {"seg": ("deeplabv3_r18", "deeplabv3_r101"), "det": ("faster_rcnn_r50", "faster_rcnn_r101")}
DETECTION_CLASSES = tuple(name for name, *_ in CATEGORIES.values())  # the embedded COCO-format data's K categories
BOXES_PER_IMAGE = (1, 6)
BOX_SIDE = (8, 64)  # px


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmark/perf.py",
        description="Time one distillation training step per method against its floor (student step + teacher "
                    "forward under no_grad, same batch), and the MasKD loss against its naive version.",
        epilog="Example: python benchmark/perf.py --methods kd maskd skd --repeats 3 --warmup 1; detection: "
               "python benchmark/perf.py --task det --methods mimic fgd mgd maskd_det",
    )
    p.add_argument("--task", choices=TASKS, default="seg",
                   help="seg: segmentors and segmentation methods (default); det: detectors and detection methods, "
                        "on the preset's detection settings")
    p.add_argument("--preset", help=f"{', '.join(available('presets'))}; image size, batch size and architecture "
                                    "(default: gpu with CUDA, else cpu)")
    p.add_argument("--student", help="student model (default: deeplabv3_r18; faster_rcnn_r50 with --task det)")
    p.add_argument("--teacher", help="teacher model (default: deeplabv3_r101; faster_rcnn_r101 with --task det)")
    p.add_argument("--methods", nargs="*", metavar="METHOD",
                   help=f"methods to time, '{BASELINE}' included (default: {BASELINE} and every registered "
                        "method of the task); give none to time only the masked loss")
    p.add_argument("--repeats", type=_positive, default=5, help="timed repeats per measurement (default: 5)")
    p.add_argument("--warmup", type=_non_negative, default=2, help="untimed rounds first (default: 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=_positive,
                   help="torch CPU threads for this run (default: torch's own choice, left unchanged)")
    p.add_argument("--loss-size", type=_positive, nargs=5, metavar=("N", "T", "C", "H", "W"),
                   default=list(DETECTION_SIZE),
                   help="masked-loss tensor sizes (default: 2 6 256 100 168, detection size)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line instead of the table")
    return p


# ---------------------------------------------------------------- helpers


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu.")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of `fn()` in ms, synchronising the device before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _target(method: str) -> float | None:
    if method == BASELINE:
        return None
    return {"maskd": MASKD_TARGET, "maskd_det": MASKD_DET_TARGET}.get(method, DEFAULT_TARGET)


def method_task(name: str) -> str:
    """"det" for a method registered by a `*.detection` module (FPN-level methods), else "seg"."""
    return "det" if method_class(name).__module__.rpartition(".")[2] == "detection" else "seg"


def task_methods(task: str) -> list[str]:
    """The registered methods of `task`, sorted."""
    return [name for name in list_methods() if method_task(name) == task]


def random_batch(preset: Preset, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images N×3×H×W ~ N(0, 1) and labels N×H×W in 0..18 with about 5 % ignore (255), at the preset's size."""
    h, w = preset.data.crop or (preset.data.height, preset.data.width)
    n = preset.student.batch_size
    images = torch.randn(n, 3, h, w, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (n, h, w), generator=generator)
    labels[torch.rand(n, h, w, generator=generator) < 0.05] = IGNORE_INDEX
    return images, labels


def random_detection_batch(preset: Preset, generator: torch.Generator) -> tuple[list[torch.Tensor], list[dict]]:
    """Student-batch-size images 3×H×W ~ U[0, 1) at the preset's (detection) size and their targets: 1–6 boxes
    (x1, y1, x2, y2 float, sides 8–64 px, inside the image) with labels 1..K (int64) each."""
    h, w = preset.data.height, preset.data.width
    images, targets = [], []
    for _ in range(preset.student.batch_size):
        images.append(torch.rand(3, h, w, generator=generator))
        k = int(torch.randint(BOXES_PER_IMAGE[0], BOXES_PER_IMAGE[1] + 1, (1,), generator=generator))
        sides = [torch.randint(min(BOX_SIDE[0], size), min(BOX_SIDE[1], size) + 1, (k,), generator=generator)
                 for size in (w, h)]
        corners = [(torch.rand(k, generator=generator) * (size - side + 1)).floor()
                   for size, side in zip((w, h), sides, strict=True)]
        boxes = torch.stack([corners[0], corners[1], corners[0] + sides[0], corners[1] + sides[1]], 1).float()
        labels = torch.randint(1, len(DETECTION_CLASSES) + 1, (k,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: Any,
                        forward: Callable[[nn.Module, Any], Any] | None = None) -> None:
    """Set every BatchNorm's running statistics from one train-mode pass over `images` (model left in eval);
    `forward(model, images)` runs it (default: `model(images)`)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly its statistics
    model.train()
    if forward is None:
        model(images)
    else:
        forward(model, images)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


class Stepper:
    """One optimizer step of a `TrainUnit` as `Trainer.fit` takes it (without logging and the finiteness check)."""

    def __init__(self, unit: TrainUnit, schedule: ScheduleConfig, device: torch.device, amp: bool) -> None:
        self.unit, self.device, self.amp = unit, device, amp
        self.clip_grad_norm = schedule.clip_grad_norm
        groups = [{"params": params, "lr": schedule.lr * mult} for params, mult in unit.parameter_groups()]
        self.optimizer = torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum,
                                         weight_decay=schedule.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp)
        self.last_loss: torch.Tensor | None = None

    def __call__(self, images: Any, labels: Any) -> None:
        with torch.autocast(self.device.type, enabled=self.amp):
            losses = self.unit(images, labels)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.unit.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.unit.after_step()
        self.last_loss = total.detach()

    def finite(self) -> bool:
        return self.last_loss is None or bool(torch.isfinite(self.last_loss))


# ---------------------------------------------------------------- KD step vs floor


@dataclass(frozen=True)
class StepResult:
    """Median times (ms) of one method's step and of its floor, and the median per-repeat ratio."""

    method: str
    step_ms: float
    floor_ms: float
    student_ms: float
    teacher_ms: float
    ratio: float
    ratio_of_minima: float  # min step / min floor: the least disturbed samples, steadier under background load
    target: float | None
    note: str = ""

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def to_json(self) -> dict[str, Any]:
        row = {"method": self.method, "step_ms": round(self.step_ms, 2), "floor_ms": round(self.floor_ms, 2),
               "student_ms": round(self.student_ms, 2), "teacher_ms": round(self.teacher_ms, 2),
               "ratio": round(self.ratio, 4), "ratio_of_minima": round(self.ratio_of_minima, 4),
               "target": self.target, "ok": self.ok}
        return row | ({"note": self.note} if self.note else {})


class StepBench:
    """The shared pieces: initial student and frozen teacher, the batch, and the floor's own student step.

    Segmentation; `DetectionStepBench` overrides the task-specific hooks (batch, models, task loss, teacher run)."""

    def __init__(self, preset: Preset, student: str, teacher: str, device: torch.device) -> None:
        self.preset, self.device = preset, device
        self.amp = device.type == "cuda" and preset.amp
        channels_last = device.type == "cuda" and preset.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.image_size = self._image_size()
        torch.manual_seed(0)
        self.images, self.labels = self._batch(torch.Generator().manual_seed(0))
        self.student = self._build_model(student)
        self.teacher = self._build_model(teacher).requires_grad_(False)
        self.teacher.to(device, memory_format=self.memory_format)
        calibrate_batchnorm(self.teacher, self.images, self.run_teacher)
        if preset.teacher_norm == "batch":  # as the harness runs such a teacher (`benchmark.experiment`)
            use_batch_statistics(self.teacher)
        self.floor_step = self._stepper(TrainUnit(copy.deepcopy(self.student), self._task_loss()))

    # ------------------------------------------------------------ task hooks
    def _image_size(self) -> tuple[int, int]:
        return tuple(self.preset.data.crop or (self.preset.data.height, self.preset.data.width))

    def _batch(self, generator: torch.Generator) -> tuple[Any, Any]:
        images, labels = random_batch(self.preset, generator)
        return images.to(self.device).contiguous(memory_format=self.memory_format), labels.to(self.device)

    def _build_model(self, name: str) -> nn.Module:
        return build_segmentor(name, num_classes=NUM_CLASSES, output_stride=self.preset.model.output_stride,
                               aspp_rates=self.preset.model.aspp_rates)

    def _task_loss(self) -> TaskLoss:
        return SegmentationLoss(self.preset.student.aux_weight)

    @staticmethod
    def run_teacher(model: nn.Module, images: Any) -> Any:
        """How the teacher runs on a batch (the floor's teacher part and the `DistillationLoss`'s)."""
        return model(images)

    def _prepare(self, name: str, method: Distiller, teacher: nn.Module) -> str:
        """Give a method with a stage its stage's result without running the stage; returns a note."""
        if name == "maskd":
            tokens = init_tokens(method.options.num_tokens, NUM_CLASSES, torch.Generator().manual_seed(0))
            method.load_stage({"tokens": tokens})
            return (f"tokens: random init_tokens({method.options.num_tokens}, {NUM_CLASSES}) via load_stage; "
                    "the token-learning stage is not run")
        return "its pre-training stage is not run" if method.has_stage() else ""

    # ------------------------------------------------------------ shared
    def _stepper(self, unit: TrainUnit) -> Stepper:
        unit.to(self.device, memory_format=self.memory_format)
        unit.train()
        return Stepper(unit, self.preset.student, self.device, self.amp)

    @torch.no_grad()
    def teacher_forward(self) -> None:
        with torch.autocast(self.device.type, enabled=self.amp):
            self.run_teacher(self.teacher, self.images)

    def build(self, name: str) -> tuple[Stepper, str]:
        """The method's `TrainUnit` stepper on fresh copies of the student and teacher, and a note."""
        student = copy.deepcopy(self.student).to(self.device, memory_format=self.memory_format)
        if name == BASELINE:
            return self._stepper(TrainUnit(student, self._task_loss())), "student only (no teacher)"
        method = build_method(name, **method_options(MethodSpec.parse(name), self.preset))
        teacher = copy.deepcopy(self.teacher)
        extra = DistillationLoss(method, student, teacher, self.image_size, teacher_forward=self.run_teacher)
        note = self._prepare(name, method, teacher)
        return self._stepper(TrainUnit(student, self._task_loss(), extra)), note

    def measure(self, name: str, repeats: int, warmup: int, log: Callable[[str], None]) -> StepResult:
        step, note = self.build(name)
        floor_step, images, labels, device = self.floor_step, self.images, self.labels, self.device
        steps, students, teachers = [], [], []

        def floor() -> tuple[float, float]:
            return _timed_ms(lambda: floor_step(images, labels), device), _timed_ms(self.teacher_forward, device)

        for i in range(warmup + repeats):
            if i % 2 == 0:
                student_ms, teacher_ms = floor()
                step_ms = _timed_ms(lambda: step(images, labels), device)
            else:
                step_ms = _timed_ms(lambda: step(images, labels), device)
                student_ms, teacher_ms = floor()
            if i >= warmup:
                steps.append(step_ms)
                students.append(student_ms)
                teachers.append(teacher_ms)
                log(f"  {name} repeat {i - warmup + 1}/{repeats}: step {step_ms:.0f} ms, floor "
                    f"{student_ms:.0f} + {teacher_ms:.0f} ms")
        if not step.finite():
            note = "; ".join(filter(None, [note, "non-finite loss at the last step (timing still counted)"]))
        floors = [s + t for s, t in zip(students, teachers, strict=True)]
        ratios = [s / f for s, f in zip(steps, floors, strict=True)]
        return StepResult(name, statistics.median(steps), statistics.median(floors), statistics.median(students),
                          statistics.median(teachers), statistics.median(ratios), min(steps) / min(floors),
                          _target(name), note)


class DetectionStepBench(StepBench):
    """`StepBench` for detectors: the preset as a detection table uses it (`for_task(preset, "det")`), random boxes,
    `DetectionLoss`, and the teacher's transform + backbone + FPN only (`detector_features`)."""

    def _image_size(self) -> tuple[int, int]:
        return self.preset.data.height, self.preset.data.width  # as DetectionTask: no crop for detection

    def _batch(self, generator: torch.Generator) -> tuple[Any, Any]:
        images, targets = random_detection_batch(self.preset, generator)
        return ([image.to(self.device) for image in images],
                [{k: v.to(self.device) for k, v in target.items()} for target in targets])

    def _build_model(self, name: str) -> nn.Module:
        return DetectionTask(DETECTION_CLASSES, self.image_size).build_model(name, self.preset)

    def _task_loss(self) -> TaskLoss:
        return DetectionLoss()

    @staticmethod
    def run_teacher(model: nn.Module, images: Any) -> Any:
        return detector_features(model, images)

    def _prepare(self, name: str, method: Distiller, teacher: nn.Module) -> str:
        if name != "maskd_det":
            return "its pre-training stage is not run" if method.has_stage() else ""
        stage = method.stage(teacher)
        notes = []
        if stage is not None:
            method.load_stage(stage.model.state_dict())
            notes.append("tokens: the token stage's initial (seeded, untrained) tokens and weighting via load_stage; "
                         "the token-learning stage is not run")
        if method.options.customization:
            method.custom_steps.fill_(method.options.custom_warmup)  # read lazily: no step has run yet
            assert method.customizing()
            notes.append(f"customised masks from the first step (warm-up counter set to "
                         f"custom_warmup={method.options.custom_warmup})")
        return "; ".join(notes)


# ---------------------------------------------------------------- masked loss vs naive


@dataclass(frozen=True)
class LossResult:
    """Median fwd+bwd times (ms) of `masked_feature_loss` and the naive version, and how far their values are."""

    size: tuple[int, int, int, int, int]
    weights: bool
    fast_ms: float
    naive_ms: float
    rel_diff: float
    grad_rel_diff: float

    @property
    def speedup(self) -> float:
        return self.naive_ms / self.fast_ms

    @property
    def ok(self) -> bool:
        return self.speedup >= SPEEDUP_TARGET and self.rel_diff <= REL_DIFF_TARGET

    def to_json(self) -> dict[str, Any]:
        return {"benchmark": "masked_feature_loss", "weights": self.weights, "size": list(self.size),
                "fast_ms": round(self.fast_ms, 3), "naive_ms": round(self.naive_ms, 3),
                "speedup": round(self.speedup, 2), "rel_diff": self.rel_diff, "grad_rel_diff": self.grad_rel_diff,
                "target_speedup": SPEEDUP_TARGET, "target_rel_diff": REL_DIFF_TARGET, "ok": self.ok}


def measure_masked_loss(size: tuple[int, int, int, int, int], weighted: bool, repeats: int, warmup: int,
                        device: torch.device) -> LossResult:
    """Interleaved fwd+bwd timings of both loss versions on the same random tensors (fp32, no autocast)."""
    n, t, c, h, w = size
    g = torch.Generator().manual_seed(0)
    student = torch.randn(n, c, h, w, generator=g).to(device).requires_grad_()
    teacher = torch.randn(n, c, h, w, generator=g).to(device)
    masks = torch.randn(n, t, h, w, generator=g).sigmoid().to(device)
    weights = torch.randn(n, t, generator=g).softmax(1).to(device) if weighted else None
    values: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def run(name: str, loss_fn: Callable[..., torch.Tensor]) -> None:
        student.grad = None
        loss = loss_fn(student, teacher, masks, weights)
        loss.backward()
        values[name], grads[name] = loss.detach(), student.grad

    times: dict[str, list[float]] = {"fast": [], "naive": []}
    order = [("fast", masked_feature_loss), ("naive", naive_masked_feature_loss)]
    for i in range(warmup + repeats):
        for name, loss_fn in order if i % 2 == 0 else order[::-1]:
            ms = _timed_ms(lambda name=name, loss_fn=loss_fn: run(name, loss_fn), device)
            if i >= warmup:
                times[name].append(ms)
    fast, naive = values["fast"].double(), values["naive"].double()
    rel_diff = float((fast - naive).abs() / naive.abs().clamp_min(1e-30))
    grad_rel_diff = float((grads["fast"] - grads["naive"]).abs().max() / grads["naive"].abs().max().clamp_min(1e-30))
    return LossResult(size, weighted, statistics.median(times["fast"]), statistics.median(times["naive"]),
                      rel_diff, grad_rel_diff)


# ---------------------------------------------------------------- output


def format_step_table(results: list[StepResult]) -> str:
    """Aligned table: method, step ms, floor ms, ratio, target, ok?, note."""
    header = ("method", "step ms", "floor ms", "(student", "+ teacher)", "ratio", "target", "ok?", "min/min")
    rows = [(r.method, f"{r.step_ms:.1f}", f"{r.floor_ms:.1f}", f"{r.student_ms:.1f}", f"{r.teacher_ms:.1f}",
             f"{r.ratio:.3f}", "-" if r.target is None else f"≤ {r.target:.2f}",
             "-" if r.ok is None else ("yes" if r.ok else "NO"), f"{r.ratio_of_minima:.3f}") for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                         enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(header), line(tuple("-" * w for w in widths))]
    out += [line(row) for row in rows]
    out += [f"note ({r.method}): {r.note}" for r in results if r.note and r.method != BASELINE]
    return "\n".join(out)


def format_loss_lines(results: list[LossResult]) -> str:
    lines = []
    for r in results:
        lines.append(
            f"masked_feature_loss {'weighted' if r.weights else 'unweighted':10}  fwd+bwd {r.fast_ms:8.2f} ms vs "
            f"naive {r.naive_ms:8.2f} ms: {r.speedup:6.1f}× (target ≥ {SPEEDUP_TARGET:.0f}×), value rel diff "
            f"{r.rel_diff:.1e} (≤ {REL_DIFF_TARGET:.0e}), grad rel diff {r.grad_rel_diff:.1e}  "
            f"{'ok' if r.ok else 'NOT MET'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def _check_inputs(args: argparse.Namespace, preset: Preset, methods: list[str]) -> None:
    """Fail on a bad model, method or method option before anything is built."""
    models = list_models() if args.task == "seg" else list_detectors()
    for role in ("student", "teacher"):
        name = getattr(args, role)
        if name in NEEDS_MM_BACKEND and args.task == "det":
            raise UserError(f"{role} detector '{name}' {MM_BACKEND_NOTE}; torchvision detectors: {', '.join(models)}.")
        if name not in models:
            kind = "model" if args.task == "seg" else "detector"
            raise UserError(f"unknown {role} {kind} '{name}'. Valid {kind}s: {', '.join(models)}.")
    for name in methods:
        if name != BASELINE:
            method_class(name)  # unknown name: the registry's UserError with the close match
            if method_task(name) != args.task:
                raise UserError(f"method '{name}' is a {'detection' if args.task == 'seg' else 'segmentation'} "
                                f"method, not one for --task {args.task}; its methods: "
                                f"{', '.join(task_methods(args.task))}.")
            method_options(MethodSpec.parse(name), preset)
    if args.task == "det" and any(name != BASELINE for name in methods):
        families = {role: DETECTORS[getattr(args, role)]["family"] for role in ("student", "teacher")}
        if families["student"] != families["teacher"]:
            raise UserError(f"the student {args.student} is a {families['student']} and the teacher {args.teacher} a "
                            f"{families['teacher']}: detection methods distil FPN levels of the same detector "
                            "family; pick a teacher of the student's family.")


def run(args: argparse.Namespace) -> int:
    device = _device(args.device)
    preset = for_task(load_preset(args.preset or ("gpu" if device.type == "cuda" else "cpu")), args.task)
    args.student = args.student or DEFAULT_MODELS[args.task][0]
    args.teacher = args.teacher or DEFAULT_MODELS[args.task][1]
    methods = [BASELINE, *task_methods(args.task)] if args.methods is None else list(args.methods)
    _check_inputs(args, preset, methods)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.task == "seg":
        h, w = preset.data.crop or (preset.data.height, preset.data.width)
        arch = f"output stride {preset.model.output_stride}"
    else:
        h, w = preset.data.height, preset.data.width
        arch = f"{len(DETECTION_CLASSES)} classes, detection settings, teacher BN: {preset.teacher_norm} statistics"
    settings = (f"preset {preset.name}: {args.student} ← {args.teacher}, batch {preset.student.batch_size} × "
                f"{h}×{w}, {arch}, device {device.type}, "
                f"{torch.get_num_threads()} CPU thread(s), median of {args.repeats} after {args.warmup} warm-up")
    step_results: list[StepResult] = []
    if methods:
        log(f"building {args.student} and {args.teacher} ({settings})")
        bench = (StepBench if args.task == "seg" else DetectionStepBench)(preset, args.student, args.teacher, device)
        for name in methods:
            log(f"timing {name}")
            step_results.append(bench.measure(name, args.repeats, args.warmup, log))
            gc.collect()  # free this method's copies of the networks before the next
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del bench
        gc.collect()
    size = tuple(args.loss_size)
    loss_results = []
    for weighted in (False, True):
        log(f"timing masked_feature_loss vs naive at N, T, C, H, W = {size}, weights={weighted}")
        loss_results.append(measure_masked_loss(size, weighted, args.repeats, args.warmup, device))

    if args.json:
        for result in [*step_results, *loss_results]:
            print(json.dumps(result.to_json()))
        return 0
    if step_results:
        print(f"KD step vs floor ({settings})")
        teacher_part = "teacher forward" if args.task == "seg" else "teacher transform+backbone+FPN forward"
        print(f"floor = student-only step + {teacher_part} under no_grad, same batch (timed separately, summed); "
              "ratio = median of step/floor (ok? judges it); min/min = fastest step / fastest floor")
        print(format_step_table(step_results))
        print()
    print(f"MasKD loss, N×T×C×H×W = {'×'.join(map(str, size))}, fwd+bwd, median of {args.repeats}:")
    print(format_loss_lines(loss_results))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        return run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may run in-process (tests): leave the caller's setting


if __name__ == "__main__":
    sys.exit(main())
