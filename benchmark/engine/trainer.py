"""The training loop: SGD (or Adam) with poly or cosine decay, optional warm-up and gradient clipping, AMP +
channels_last on CUDA, atomic checkpoints, exact resume, NaN guard.

Knows nothing about distillation: it trains a `TrainUnit` (student + loss modules) whose forward
returns named loss terms, sums them, logs each one and evaluates the student at the end.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from benchmark.config import Preset, ScheduleConfig
from benchmark.engine import dist
from benchmark.engine.checkpoint import atomic_torch_save, load_checkpoint, load_state_strict, require_keys
from benchmark.engine.sampler import StepBatchSampler
from benchmark.engine.task_loss import TrainUnit
from benchmark.errors import UserError
from benchmark.progress import progress
from benchmark.tasks import SegmentationTask, Task

CHECKPOINT_FORMAT = "kdbench-train-v1"
CHECKPOINT_KEYS = ("format", "model", "optimizer", "scheduler", "scaler", "step", "rng_cpu")
FINAL_CHECKPOINT_KEYS = ("format", "model", "step")


class NonFiniteLossError(UserError):
    """A loss term became NaN/inf; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainResult:
    metrics: dict[str, Any]  # the task's evaluation of the final student (`Task.metrics` and details)
    steps: int
    train_s: float
    eval_s: float


def lr_factor(step: int, schedule: ScheduleConfig) -> float:
    """lr(step)/lr0 for lr = floor + (lr0 - floor)(1 - step/max)^power (the official MasKD floor), or
    floor + (lr0 - floor)(1 + cos(π step/max))/2 with ``lr_decay: cosine`` (mmcv's CosineAnnealing to min_lr),
    times a linear warm-up from `warmup_ratio` to 1 over the first `warmup_steps` steps (mmdet's 'linear')."""
    lr0, floor = schedule.lr, min(schedule.lr_floor, schedule.lr)
    progress = min(step / schedule.steps, 1.0)
    if schedule.lr_decay == "cosine":
        decay = (1 + math.cos(math.pi * progress)) / 2
    else:
        decay = (1 - progress) ** schedule.poly_power
    lr = floor + (lr0 - floor) * decay
    if step < schedule.warmup_steps:
        lr *= schedule.warmup_ratio + (1 - schedule.warmup_ratio) * step / schedule.warmup_steps
    return lr / lr0


def build_optimizer(groups: list[dict[str, Any]], schedule: ScheduleConfig) -> torch.optim.Optimizer:
    """The schedule's optimizer over parameter groups (SGD with momentum; Adam/AdamW with default betas)."""
    if schedule.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    adam = torch.optim.Adam if schedule.optimizer == "adam" else torch.optim.AdamW
    return adam(groups, lr=schedule.lr, weight_decay=schedule.weight_decay)


class Trainer:
    """Trains `unit` for `schedule.steps` steps in `run_dir`, then evaluates `unit.student` on `val_set`."""

    def __init__(self, unit: TrainUnit, schedule: ScheduleConfig, preset: Preset, train_set: Dataset,
                 val_set: Dataset, run_dir: Path, device: torch.device, seed: int,
                 task: Task | None = None, desc: str = "train") -> None:
        self.schedule, self.preset, self.device, self.seed = schedule, preset, device, seed
        self.train_set, self.val_set, self.run_dir = train_set, val_set, run_dir
        self.task = task or SegmentationTask()
        self.desc = desc
        self.cuda = device.type == "cuda"
        channels_last = self.cuda and preset.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.unit = unit.to(device, memory_format=self.memory_format)
        self.model = dist.wrap_ddp(self.unit, device)
        groups = [{"params": params, "lr": schedule.lr * mult} for params, mult in self.unit.parameter_groups()]
        self.optimizer = build_optimizer(groups, schedule)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, schedule))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.cuda and preset.amp)
        self.world = dist.world_size()
        if schedule.batch_size % self.world:
            raise UserError(f"batch size {schedule.batch_size} is not divisible by {self.world} processes.")
        self.checkpoint_path = run_dir / "checkpoint.pt"

    # ---------------------------------------------------------------- checkpoints
    def _state(self, step: int) -> dict[str, Any]:
        state = {"format": CHECKPOINT_FORMAT, "step": step, "model": self.unit.state_dict()}
        if step == self.schedule.steps:  # finished: optimizer state is only needed to go on training (half the size)
            return state
        return state | {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.cuda else [],
        }

    def _save(self, step: int) -> None:
        if dist.is_main():
            atomic_torch_save(self._state(step), self.checkpoint_path)
        dist.barrier()

    def _restore(self) -> int:
        state = load_checkpoint(self.checkpoint_path, FINAL_CHECKPOINT_KEYS, what="run checkpoint")
        if state["format"] != CHECKPOINT_FORMAT:
            raise UserError(f"run checkpoint {self.checkpoint_path} has format {state['format']!r}; "
                            f"expected {CHECKPOINT_FORMAT!r}. Start over with --force.")
        load_state_strict(self.unit, state["model"], self.checkpoint_path, "run checkpoint")
        if state["step"] == self.schedule.steps:  # finished (killed while evaluating): weights only
            return int(state["step"])
        require_keys(state, CHECKPOINT_KEYS, self.checkpoint_path, "run checkpoint")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if self.cuda and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        return int(state["step"])

    def _start_step(self, resume: bool) -> int:
        if self.checkpoint_path.exists():
            if not resume:
                raise UserError(
                    f"{self.run_dir} already holds a checkpoint of this run. Pass --resume to continue "
                    "it, or --force to start it over."
                )
            return self._restore()
        torch.manual_seed(self.seed * 1000 + dist.rank())
        return 0

    # ---------------------------------------------------------------- loop
    def _loader(self, start: int) -> DataLoader:
        sampler = StepBatchSampler(len(self.train_set), self.schedule.batch_size // self.world,
                                   self.schedule.steps, self.seed, start, dist.rank(), self.world)
        workers = self.preset.data.workers
        # A private generator: creating the loader iterator must not draw from the global RNG, which
        # the checkpoint restores for dropout (else a resumed run diverges from an uninterrupted one).
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=workers, generator=generator,
                          collate_fn=self.task.collate, pin_memory=self.cuda, persistent_workers=False,
                          prefetch_factor=4 if workers else None)

    def _check_finite(self, losses: dict[str, torch.Tensor], step: int) -> None:
        values = torch.stack([v.detach().float() for v in losses.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = {k: float(v.detach()) for k, v in losses.items() if not math.isfinite(float(v.detach()))}
        kept = (f"the last good checkpoint is kept at {self.checkpoint_path}"
                if self.checkpoint_path.exists() else "no checkpoint had been written yet")
        raise NonFiniteLossError(
            f"{self.desc}: loss became non-finite at step {step + 1}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + f"; {kept}. Lower the learning rate or check the data, then --resume or --force."
        )

    def fit(self, resume: bool = False, stop_after: int | None = None) -> TrainResult | None:
        """Train to the end (or until `stop_after` steps, returning None: a simulated kill)."""
        start = self._start_step(resume)
        logger = _Logger(self.run_dir, start, self.preset.tensorboard and dist.is_main())
        self.model.train()
        t0 = time.perf_counter()
        bar = progress(total=self.schedule.steps, initial=start, desc=self.desc, smoothing=0.05)
        step = start
        for images, labels in self._loader(start):
            images, labels = self.task.to_device(images, labels, self.device, self.memory_format)
            with torch.autocast(self.device.type, enabled=self.scaler.is_enabled()):
                losses = self.model(images, labels)
            self._check_finite(losses, step)
            total = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if self.schedule.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.unit.parameters(), self.schedule.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            extra_scalars = self.unit.after_step()
            step += 1
            bar.update(1)
            if step % self.preset.log_every == 0 or step == self.schedule.steps:
                scalars = {k: float(v.detach()) for k, v in losses.items()} | extra_scalars
                scalars["lr"] = self.scheduler.get_last_lr()[0]
                logger.log(step, scalars)
                bar.set_postfix(loss=f"{float(total.detach()):.3f}")
            if step % self.preset.checkpoint_every == 0 or step == self.schedule.steps:
                self._save(step)
            if stop_after is not None and step >= stop_after:
                bar.close()
                logger.close()
                return None
        bar.close()
        logger.close()
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics = self.task.evaluate(self.unit.student, self.val_set, self.preset.eval_batch_size, self.device,
                                     amp=self.scaler.is_enabled(),
                                     channels_last=self.memory_format == torch.channels_last)
        return TrainResult(metrics, step, train_s, time.perf_counter() - t1)


class _Logger:
    """CSV log (`log.csv`, one row per logged step, trimmed to the resumed step) and TensorBoard scalars."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool) -> None:
        self.path = run_dir / "log.csv"
        self.fields: list[str] | None = None
        self.main = dist.is_main()
        if self.main and self.path.exists():
            with self.path.open() as handle:
                reader = csv.DictReader(handle)
                rows = [r for r in reader if int(r["step"]) <= start_step]
                self.fields = list(reader.fieldnames or [])
            self._write(rows, "w")
        self.writer = None
        if tensorboard and self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1)

    def _write(self, rows: list[dict[str, Any]], mode: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open(mode, newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields or [], extrasaction="ignore")
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.main:
            return
        row = {"step": step, "time": round(time.time(), 3), **scalars}
        if self.fields is None:
            self.fields = list(row)
            self._write([row], "w")
        else:
            self._write([row], "a")
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
