"""Engine units: LR schedule, sampler, confusion matrix, task loss, checkpoints, NaN guard, exact resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmark.config import PretrainConfig, ScheduleConfig, load_preset, merge
from benchmark.engine.checkpoint import atomic_torch_save, load_checkpoint
from benchmark.engine.evaluate import ConfusionMatrix
from benchmark.engine.pretrain import _standin_lr_factor, train_standin
from benchmark.engine.sampler import StepBatchSampler
from benchmark.engine.task_loss import ExtraLoss, SegmentationLoss, TrainUnit
from benchmark.engine.trainer import NonFiniteLossError, Trainer, build_optimizer, lr_factor
from benchmark.errors import UserError
from benchmark.models import build_backbone
from benchmark.tasks import SegmentationTask
from tests.conftest import CLASSES4, RandomSegData, TinySegmenter


def test_poly_lr_has_the_official_floor() -> None:
    schedule = ScheduleConfig(steps=100, lr=0.02, lr_floor=1e-4, poly_power=0.9)
    assert lr_factor(0, schedule) == pytest.approx(1.0)
    assert lr_factor(50, schedule) == pytest.approx(0.5382072976, rel=1e-8)
    assert lr_factor(100, schedule) * 0.02 == pytest.approx(1e-4)


def test_cosine_lr_and_adam_for_token_stages() -> None:
    """mmcv CosineAnnealing to min_lr: lr = floor + (lr0 - floor)(1 + cos(pi t/T))/2; Adam ignores momentum."""
    schedule = ScheduleConfig(steps=100, lr=0.01, lr_floor=1e-6, lr_decay="cosine", optimizer="adam",
                              weight_decay=1e-3)
    assert lr_factor(0, schedule) == pytest.approx(1.0)
    assert lr_factor(50, schedule) * 0.01 == pytest.approx(1e-6 + (0.01 - 1e-6) * 0.5)
    assert lr_factor(25, schedule) * 0.01 == pytest.approx(1e-6 + (0.01 - 1e-6) * (1 + 2 ** -0.5) / 2)
    assert lr_factor(100, schedule) * 0.01 == pytest.approx(1e-6)
    optimizer = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.01}], schedule)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["weight_decay"] == 1e-3
    with pytest.raises(UserError, match="unknown optimizer 'adm'; valid: sgd, adam, adamw"):
        ScheduleConfig(optimizer="adm")
    with pytest.raises(UserError, match="unknown lr_decay"):
        ScheduleConfig(lr_decay="step")


def test_sampler_is_deterministic_resumable_and_sharded() -> None:
    full = list(StepBatchSampler(10, 2, total_steps=12, seed=3))
    assert full == list(StepBatchSampler(10, 2, total_steps=12, seed=3))
    assert full[7:] == list(StepBatchSampler(10, 2, total_steps=12, seed=3, start_step=7))
    assert full != list(StepBatchSampler(10, 2, total_steps=12, seed=4))
    epoch0 = [i for batch in full[:5] for i, _ in batch]
    assert sorted(epoch0) == list(range(10))  # one epoch = a permutation
    ranks = [[i for b in StepBatchSampler(10, 1, 5, seed=3, rank=r, world=2) for i, _ in b] for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(10))
    with pytest.raises(UserError, match="fewer than one batch"):
        StepBatchSampler(3, 2, 5, seed=0, world=2)


def test_confusion_matrix_iou_by_hand() -> None:
    matrix = ConfusionMatrix(4)
    matrix.update(torch.tensor([0, 1, 1, 2, 3]), torch.tensor([0, 1, 2, 255, 255]))
    iou = matrix.class_iou()
    assert iou[:3] == [1.0, 0.5, 0.0] and math.isnan(iou[3])  # class 3 absent from GT and prediction
    assert matrix.miou() == pytest.approx(50.0)


def test_segmentation_loss_values_by_hand() -> None:
    labels = torch.tensor([[[0, 1], [2, 255]]])
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, 0] = math.log(2.0)  # p(class 0) = 2/4 at the first pixel
    losses = SegmentationLoss(aux_weight=0.4)(labels, {"out": logits, "aux": torch.zeros(1, 3, 2, 2)})
    expected = (math.log(4 / 2) + 2 * math.log(3)) / 3  # mean over the 3 labelled pixels
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-6)
    assert losses["loss_aux"].item() == pytest.approx(0.4 * math.log(3), rel=1e-6)
    assert set(SegmentationLoss()(labels, {"out": logits})) == {"loss_ce"}


def test_checkpoint_writes_are_atomic_and_loads_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    atomic_torch_save({"format": "x", "step": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        atomic_torch_save({"bad": lambda: 0}, path)
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError, match="truncated, corrupt or not a PyTorch file"):
        load_checkpoint(path)
    atomic_torch_save({"weights": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="not one of ours: it lacks step"):
        load_checkpoint(path, ("step",))
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def _trainer(run_dir: Path, unit: TrainUnit | None = None, steps: int = 6, **schedule_options: Any) -> Trainer:
    preset = merge(load_preset("smoke"), {"checkpoint_every": 3, "log_every": 1})
    schedule = ScheduleConfig(**({"steps": steps, "batch_size": 4, "lr": 0.05} | schedule_options))
    torch.manual_seed(0)
    unit = unit or TrainUnit(TinySegmenter(4), SegmentationLoss())
    return Trainer(unit, schedule, preset, RandomSegData(), RandomSegData(4), run_dir, torch.device("cpu"),
                   seed=1, task=SegmentationTask(CLASSES4))


@pytest.mark.parametrize("schedule", [{}, {"optimizer": "adamw", "lr": 1e-3, "lr_decay": "cosine"}],
                         ids=["sgd-poly", "adamw-cosine"])
def test_resume_after_interruption_gives_the_same_result(tmp_path: Path, schedule: dict[str, Any]) -> None:
    """Exact resume, also for AdamW (its moment estimates live in the checkpoint's optimizer state)."""
    straight = _trainer(tmp_path / "a", **schedule)
    result = straight.fit()
    assert result is not None and result.steps == 6 and result.metrics["miou"] > 0
    # finished: the checkpoint keeps the weights only; a run killed while evaluating resumes to the same metrics
    assert set(load_checkpoint(tmp_path / "a" / "checkpoint.pt")) == {"format", "step", "model"}
    evaluated_again = _trainer(tmp_path / "a", **schedule).fit(resume=True)
    assert evaluated_again is not None and evaluated_again.metrics == result.metrics
    interrupted = _trainer(tmp_path / "b", **schedule)
    assert interrupted.fit(stop_after=4) is None  # killed after step 4; last checkpoint is step 3
    with pytest.raises(UserError, match="--resume"):
        _trainer(tmp_path / "b", **schedule).fit()
    resumed = _trainer(tmp_path / "b", **schedule)
    again = resumed.fit(resume=True)
    assert again is not None and again.metrics == result.metrics
    for (name, a), b in zip(straight.unit.state_dict().items(), resumed.unit.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    steps = [int(line.split(",")[0]) for line in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


class _NanAfter(ExtraLoss):
    """Extra loss term that turns NaN at a given call."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, images: torch.Tensor, labels: torch.Tensor, outputs: dict) -> dict[str, torch.Tensor]:
        self.calls += 1
        value = outputs["out"].mean() * 0
        return {"loss_weird": value + (math.nan if self.calls >= self.at else 0.0)}


def test_nan_loss_stops_with_step_and_term_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    unit = TrainUnit(TinySegmenter(4), SegmentationLoss(), extra=_NanAfter(at=5))
    trainer = _trainer(tmp_path, unit)
    with pytest.raises(NonFiniteLossError, match=r"step 5: loss_weird=nan; the last good checkpoint is kept"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_standin_lr_warms_up_linearly_then_follows_the_cosine() -> None:
    cfg = PretrainConfig(steps=10, warmup_steps=4)
    factors = [_standin_lr_factor(cfg, step) for step in (0, 3, 5, 10)]
    assert factors == pytest.approx([0.25 * 0.5 * (1 + math.cos(0)), 0.5 * (1 + math.cos(0.3 * math.pi)),
                                     0.5 * (1 + math.cos(0.5 * math.pi)), 0.0])
    assert _standin_lr_factor(PretrainConfig(steps=10), 0) == 1.0  # no warm-up: the cosine alone


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_standin_pretraining_takes_either_optimizer(optimizer: str) -> None:
    preset = merge(load_preset("smoke"), {"pretrain": {"optimizer": optimizer, "lr": 0.01, "warmup_steps": 1}})
    before = build_backbone("resnet18", output_stride=32).state_dict()
    state, metrics = train_standin("resnet18", preset, torch.device("cpu"))
    assert state.keys() == before.keys() and 0 <= metrics["heldout_label_accuracy"] <= 100
    assert any(not torch.equal(state[k], before[k]) for k in state if k.endswith("conv1.weight"))
