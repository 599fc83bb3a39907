"""`python benchmark/perf.py`: what distillation costs on top of the unavoidable work, per method.

Two measurements, both reported against targets but never asserted (the exit code is 0 unless the input is bad):

1. **KD step vs its floor.** For each method, one training step of the full `TrainUnit(student, SegmentationLoss,
   DistillationLoss(method))` as the Trainer runs it: zero_grad, forward (student, task loss, teacher under
   `torch.no_grad()`, taps, method loss), backward, SGD over `unit.parameter_groups()`, then `unit.after_step()`
   (the discriminator step of SKD/IFVD/CWD). Its *floor* is the work no distillation method can avoid on the
   same batch: one student-only step (the same, without the method) plus one teacher forward under
   `torch.no_grad()`. The two parts of the floor are timed separately, back to back in the same iteration, and
   summed. Measurements are interleaved (floor, method, method, floor, … — the order alternates every repeat)
   so that background load hits both alike; after `--warmup` untimed rounds, each row reports the median step
   time, the median floor and the median of the per-repeat ratios step/floor (`ratio`, judged against the
   target), plus fastest step / fastest floor (`ratio_of_minima`, steadier on a loaded machine). Targets:
   ≤ 1.10 for MasKD, ≤ 1.30 for every other method. The `baseline` row is the student-only step (no teacher),
   so its ratio is < 1.

   Models are randomly initialised (timing does not depend on the weights); the teacher's BatchNorm running
   statistics are set from one pass over the batch so that its frozen (eval-mode) logits stay in a sane range.
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

from benchmark.config import Preset, ScheduleConfig, available, load_preset
from benchmark.data.cityscapes import CITYSCAPES_CLASSES, IGNORE_INDEX
from benchmark.engine.distill import DistillationLoss
from benchmark.engine.task_loss import SegmentationLoss, TrainUnit
from benchmark.errors import UserError
from benchmark.models import build_segmentor, list_models
from benchmark.plan import BASELINE, MethodSpec, method_options
from methods import build_method
from methods.maskd.loss import masked_feature_loss
from methods.maskd.masks import init_tokens
from methods.maskd.naive import naive_masked_feature_loss
from methods.registry import list_methods, method_class

NUM_CLASSES = len(CITYSCAPES_CLASSES)
MASKD_TARGET = 1.10
DEFAULT_TARGET = 1.30
SPEEDUP_TARGET = 10.0
REL_DIFF_TARGET = 1e-5
DETECTION_SIZE = (2, 6, 256, 100, 168)  # N, T, C, H, W


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
        epilog="Example: python benchmark/perf.py --methods kd maskd skd --repeats 3 --warmup 1",
    )
    p.add_argument("--preset", help=f"{', '.join(available('presets'))}; image size, batch size and architecture "
                                    "(default: gpu with CUDA, else cpu)")
    p.add_argument("--student", default="deeplabv3_r18", help="student model (default: deeplabv3_r18)")
    p.add_argument("--teacher", default="deeplabv3_r101", help="teacher model (default: deeplabv3_r101)")
    p.add_argument("--methods", nargs="*", metavar="METHOD",
                   help=f"methods to time, '{BASELINE}' included (default: {BASELINE} and every registered "
                        "method); give none to time only the masked loss")
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
    return MASKD_TARGET if method == "maskd" else DEFAULT_TARGET


def random_batch(preset: Preset, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images N×3×H×W ~ N(0, 1) and labels N×H×W in 0..18 with about 5 % ignore (255), at the preset's size."""
    h, w = preset.data.crop or (preset.data.height, preset.data.width)
    n = preset.student.batch_size
    images = torch.randn(n, 3, h, w, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (n, h, w), generator=generator)
    labels[torch.rand(n, h, w, generator=generator) < 0.05] = IGNORE_INDEX
    return images, labels


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics from one train-mode pass over `images` (model left in eval)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly its statistics
    model.train()
    model(images)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


class Stepper:
    """One optimizer step of a `TrainUnit` as `Trainer.fit` takes it (without logging and the finiteness check)."""

    def __init__(self, unit: TrainUnit, schedule: ScheduleConfig, device: torch.device, amp: bool) -> None:
        self.unit, self.device, self.amp = unit, device, amp
        groups = [{"params": params, "lr": schedule.lr * mult} for params, mult in unit.parameter_groups()]
        self.optimizer = torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum,
                                         weight_decay=schedule.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp)
        self.last_loss: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(self.device.type, enabled=self.amp):
            losses = self.unit(images, labels)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
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
    """The shared pieces: initial student and frozen teacher, the batch, and the floor's own student step."""

    def __init__(self, preset: Preset, student: str, teacher: str, device: torch.device) -> None:
        self.preset, self.device = preset, device
        self.amp = device.type == "cuda" and preset.amp
        channels_last = device.type == "cuda" and preset.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.image_size = tuple(preset.data.crop or (preset.data.height, preset.data.width))
        arch = {"num_classes": NUM_CLASSES, "output_stride": preset.model.output_stride,
                "aspp_rates": preset.model.aspp_rates}
        torch.manual_seed(0)
        images, labels = random_batch(preset, torch.Generator().manual_seed(0))
        self.images = images.to(device).contiguous(memory_format=self.memory_format)
        self.labels = labels.to(device)
        self.student = build_segmentor(student, **arch)
        self.teacher = build_segmentor(teacher, **arch).requires_grad_(False)
        self.teacher.to(device, memory_format=self.memory_format)
        calibrate_batchnorm(self.teacher, self.images)
        self.floor_step = self._stepper(TrainUnit(copy.deepcopy(self.student), self._task_loss()))

    def _task_loss(self) -> SegmentationLoss:
        return SegmentationLoss(self.preset.student.aux_weight)

    def _stepper(self, unit: TrainUnit) -> Stepper:
        unit.to(self.device, memory_format=self.memory_format)
        unit.train()
        return Stepper(unit, self.preset.student, self.device, self.amp)

    @torch.no_grad()
    def teacher_forward(self) -> None:
        with torch.autocast(self.device.type, enabled=self.amp):
            self.teacher(self.images)

    def build(self, name: str) -> tuple[Stepper, str]:
        """The method's `TrainUnit` stepper on fresh copies of the student and teacher, and a note."""
        student = copy.deepcopy(self.student).to(self.device, memory_format=self.memory_format)
        if name == BASELINE:
            return self._stepper(TrainUnit(student, self._task_loss())), "student only (no teacher)"
        method = build_method(name, **method_options(MethodSpec.parse(name), self.preset))
        teacher = copy.deepcopy(self.teacher)
        extra = DistillationLoss(method, student, teacher, self.image_size)
        note = ""
        if name == "maskd":
            tokens = init_tokens(method.options.num_tokens, NUM_CLASSES, torch.Generator().manual_seed(0))
            method.load_stage({"tokens": tokens})
            note = (f"tokens: random init_tokens({method.options.num_tokens}, {NUM_CLASSES}) via load_stage; "
                    "the token-learning stage is not run")
        elif method.has_stage():
            note = "its pre-training stage is not run"
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
    models = list_models()
    for role in ("student", "teacher"):
        if getattr(args, role) not in models:
            raise UserError(f"unknown {role} model '{getattr(args, role)}'. Valid models: {', '.join(models)}.")
    for name in methods:
        if name != BASELINE:
            method_class(name)  # unknown name: the registry's UserError with the close match
            method_options(MethodSpec.parse(name), preset)


def run(args: argparse.Namespace) -> int:
    device = _device(args.device)
    preset = load_preset(args.preset or ("gpu" if device.type == "cuda" else "cpu"))
    methods = [BASELINE, *list_methods()] if args.methods is None else list(args.methods)
    _check_inputs(args, preset, methods)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    h, w = preset.data.crop or (preset.data.height, preset.data.width)
    settings = (f"preset {preset.name}: {args.student} ← {args.teacher}, batch {preset.student.batch_size} × "
                f"{h}×{w}, output stride {preset.model.output_stride}, device {device.type}, "
                f"{torch.get_num_threads()} CPU thread(s), median of {args.repeats} after {args.warmup} warm-up")
    step_results: list[StepResult] = []
    if methods:
        log(f"building {args.student} and {args.teacher} ({settings})")
        bench = StepBench(preset, args.student, args.teacher, device)
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
        print("floor = student-only step + teacher forward under no_grad, same batch (timed separately, summed); "
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
