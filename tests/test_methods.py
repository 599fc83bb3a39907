"""The method registry, taps by module name, the distillation glue and every method's training step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.config import ScheduleConfig, load_preset, merge
from benchmark.engine.distill import DistillationLoss
from benchmark.engine.task_loss import SegmentationLoss, TrainUnit
from benchmark.engine.trainer import Trainer
from benchmark.errors import UserError
from benchmark.tasks import SegmentationTask
from methods import Batch, Distiller, build_method, list_methods, register_method
from methods.base import freeze, use_batch_statistics
from methods.maskd.learn import MaskedTeacher, TokenLearningLoss
from methods.maskd.masks import init_tokens
from methods.maskd.method import label_masks
from methods.taps import TapRecorder, resolve_taps
from tests.conftest import CLASSES4, RandomSegData, TinySegmenter

SEGMENTATION = ["cirkd", "cwd", "fitnet", "ifvd", "kd", "maskd", "skd"]
DETECTION = ["fgd", "maskd_det", "mgd", "mimic"]  # tested in test_detection_methods.py, test_maskd_detection.py
ALL = sorted(SEGMENTATION + DETECTION)


def _pair(classes: int = 4) -> tuple[TinySegmenter, TinySegmenter]:
    torch.manual_seed(0)
    return TinySegmenter(classes, width=8), TinySegmenter(classes, width=16)


def _method(name: str) -> Distiller:
    options = {"cirkd": {"pixel_memory_size": 300, "region_memory_size": 60}, "maskd": {"masks": "random"}}
    return build_method(name, **options.get(name, {}))


# --- registry ------------------------------------------------------------------------------------


def test_registry_lists_every_method_and_rejects_typos_with_suggestions() -> None:
    assert list_methods() == ALL
    with pytest.raises(UserError, match=r"unknown method 'cwdd'. Did you mean 'cwd'"):
        build_method("cwdd")
    with pytest.raises(UserError, match=r"has no option 'tua'. Did you mean 'tau'.*Valid options: feat_weight"):
        build_method("cwd", tua=2.0)
    with pytest.raises(UserError, match="masks='box'"):
        build_method("maskd", masks="box")
    assert build_method("maskd", num_tokens=4).options.num_tokens == 4


def test_register_method_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @register_method("kd")
        class Again(Distiller):
            @dataclass(frozen=True)
            class Options:
                pass


# --- taps ----------------------------------------------------------------------------------------


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.neck = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.neck(x)
        return {"p2": y, "pool": nn.functional.max_pool2d(y, 2)}


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fpn = DictOut()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(x)


def test_taps_read_modules_by_name_including_dict_entries() -> None:
    model = Wrapper()
    x = torch.randn(1, 3, 4, 4)
    with TapRecorder(model, {"p2": "fpn:p2", "pool": "fpn:pool", "conv": "fpn.neck"}) as rec:
        out = model(x)
        taps = rec.collect(["p2", "pool", "conv"])
    assert torch.equal(taps["pool"], out["pool"]) and taps["pool"].shape == (1, 2, 2, 2)
    assert torch.equal(taps["p2"], taps["conv"])
    assert not model.fpn._forward_hooks  # removed on exit
    with pytest.raises(UserError, match=r"no module 'fpn.nek'.*fpn.neck"):
        TapRecorder(model, {"x": "fpn.nek"})
    with TapRecorder(model, {"x": "fpn:p3"}) as rec, pytest.raises(UserError, match=r"no entry 'p3'.*pool"):
        model(x)
    with TapRecorder(model, {"x": "fpn"}) as rec, pytest.raises(UserError, match="pick an entry"):
        model(x)
    with TapRecorder(model, {"x": "fpn.neck"}) as rec, pytest.raises(UserError, match="recorded nothing"):
        rec.collect(["x"])


def test_logical_taps_come_from_the_model_or_the_user() -> None:
    model = TinySegmenter(4)
    assert resolve_taps(model, ("feat",)) == {"feat": "body.3"}
    assert resolve_taps(model, ("feat",), {"feat": "body.2"}) == {"feat": "body.2"}
    with pytest.raises(UserError, match=r"no tap point for \['neck'\].*taps"):
        resolve_taps(model, ("neck",))


# --- distillation glue ---------------------------------------------------------------------------


def test_teacher_is_frozen_hidden_and_follows_the_unit() -> None:
    student, teacher = _pair()
    extra = DistillationLoss(build_method("kd"), student, teacher, (16, 16))
    unit = TrainUnit(student, SegmentationLoss(), extra).train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith(("extra.teacher", "extra._held")) for k in unit.state_dict())
    unit.double()
    assert next(teacher.parameters()).dtype == torch.float64
    unit.float()
    images, labels = RandomSegData(2)[0]
    losses = unit(images[None].repeat(2, 1, 1, 1), labels[None].repeat(2, 1, 1))
    sum(losses.values()).backward()
    assert set(losses) == {"loss_ce", "loss_aux", "loss_kd"}
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_optional_taps_are_used_only_when_both_networks_publish_them() -> None:
    student, teacher = _pair()
    student.tap_points = {"logits": "head"}  # a student without aux logits (like MobileNetV2)
    extra = DistillationLoss(_method("maskd"), student, teacher, (16, 16))
    extra.method.stage(teacher)
    images = torch.randn(2, 3, 16, 16)
    outputs = student(images)
    assert set(extra(images, torch.zeros(2, 16, 16, dtype=torch.long), outputs)) == {"loss_maskd"}


@pytest.mark.parametrize("name", SEGMENTATION)
def test_every_method_trains_the_student_and_only_what_it_should(name: str) -> None:
    student, teacher = _pair()
    method = _method(name)
    extra = DistillationLoss(method, student, teacher, (16, 16))
    method.stage(teacher)  # random tokens for maskd; no stage for the others
    unit = TrainUnit(student, SegmentationLoss(), extra).train()
    groups = unit.parameter_groups()
    optimized = {id(p) for params, _ in groups for p in params}
    data = RandomSegData(4)
    images = torch.stack([data[i][0] for i in range(4)])
    labels = torch.stack([data[i][1] for i in range(4)])
    losses = unit(images, labels)
    method_terms = set(losses) - {"loss_ce", "loss_aux"}
    assert method_terms and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(id(p) in optimized for p in student.parameters())
    if hasattr(method, "adversary"):  # the discriminator has its own optimizer, not the student's
        d_params = list(method.adversary.parameters())
        assert not any(id(p) in optimized for p in d_params)
        before = [p.detach().clone() for p in d_params]
        scalars = unit.after_step()
        assert set(scalars) == {"loss_d"} and scalars["loss_d"] > 0
        assert any(not torch.equal(a, p) for a, p in zip(before, d_params, strict=True))
    else:
        assert unit.after_step() == {}


def test_method_with_own_optimizer_resumes_exactly(tmp_path: Path) -> None:
    """SKD's discriminator (Adam state, spectral-norm vectors) rides in the checkpoint: resume is exact."""

    def trainer(run_dir: Path) -> Trainer:
        preset = merge(load_preset("smoke"), {"checkpoint_every": 3, "log_every": 1})
        student, teacher = _pair()
        unit = TrainUnit(student, SegmentationLoss(), DistillationLoss(build_method("skd"), student, teacher,
                                                                       (16, 16)))
        return Trainer(unit, ScheduleConfig(steps=6, batch_size=4, lr=0.05), preset, RandomSegData(),
                       RandomSegData(4), run_dir, torch.device("cpu"), seed=1, task=SegmentationTask(CLASSES4))

    straight = trainer(tmp_path / "a")
    result = straight.fit()
    assert trainer(tmp_path / "b").fit(stop_after=4) is None
    resumed = trainer(tmp_path / "b")
    again = resumed.fit(resume=True)
    assert again is not None and again.metrics == result.metrics
    for (name, a), b in zip(straight.unit.state_dict().items(), resumed.unit.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert log[0].split(",")[-2:] == ["loss_d", "lr"] and len(log) == 7


def test_cwd_keeps_cirkd_feature_normalisation() -> None:
    student, teacher = _pair()  # 8 vs 16 feature channels
    cirkd = DistillationLoss(build_method("cwd"), student, teacher, (16, 16)).method
    mmrazor = DistillationLoss(build_method("cwd", cirkd_normalisation=False), student, teacher, (16, 16)).method
    assert cirkd.feat_scale == 2.0 and mmrazor.feat_scale == 1.0


# --- MasKD ---------------------------------------------------------------------------------------


def test_label_masks_are_one_per_class_plus_ignore_at_logit_size() -> None:
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 2, 2], [255, 255, 2, 2]]])
    masks = label_masks(labels, (2, 2), num_classes=3)
    assert masks.shape == (1, 4, 2, 2)
    expected = torch.tensor([[[1.0, 0], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [0, 1]], [[0, 0], [1, 0]]])
    assert torch.equal(masks[0], expected)


def test_masked_teacher_learns_only_tokens_and_masks_its_logits() -> None:
    _, teacher = _pair()
    masked = MaskedTeacher(teacher, num_tokens=3, num_classes=4, seed=0)
    assert [n for n, _ in masked.named_parameters()] == ["tokens"]
    assert torch.equal(masked.tokens.detach(), init_tokens(3, 4, torch.Generator().manual_seed(0)))
    images = torch.randn(2, 3, 16, 16)
    out = masked.train()(images)
    assert not teacher.training
    logits = teacher(images)["out"]
    masks = torch.sigmoid(torch.einsum("tc,nchw->nthw", masked.tokens.detach(), logits))
    assert torch.allclose(out["out"], (masks.sum(1, keepdim=True) * logits), atol=1e-6)
    assert out["masks"].shape == (2, 3, 8, 8) and "aux" in out
    labels = torch.randint(0, 4, (2, 16, 16))
    terms = TokenLearningLoss()(labels, out)
    assert set(terms) == {"loss_div", "loss_ce", "loss_aux"}
    sum(terms.values()).backward()
    assert masked.tokens.grad is not None and all(p.grad is None for p in teacher.parameters())
    assert set(TokenLearningLoss(task=False)(labels, out)) == {"loss_div"}


def test_maskd_stage_is_defined_by_its_mask_source() -> None:
    _, teacher = _pair()
    for masks, task in (("learned", True), ("diversity", False)):
        method = build_method("maskd", masks=masks, num_tokens=3)
        method.bind({"logits": torch.Size([2, 4, 8, 8])}, {"logits": torch.Size([2, 4, 8, 8])})
        stage = method.stage(teacher)
        assert stage is not None and stage.config["task_loss"] is task and stage.config["num_tokens"] == 3
        method.load_stage({"tokens": torch.ones(3, 4)})
        assert torch.equal(method.tokens, torch.ones(3, 4))
    for masks in ("random", "gt"):
        method = build_method("maskd", masks=masks)
        method.bind({"logits": torch.Size([2, 4, 8, 8])}, {"logits": torch.Size([2, 4, 8, 8])})
        assert method.stage(teacher) is None
    assert method.forward(Batch(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)),
                          {"logits": torch.ones(1, 4, 2, 2)}, {"logits": torch.ones(1, 4, 2, 2)})["loss_maskd"] == 0
    with pytest.raises(ValueError, match="differ in classes or resolution"):
        method.bind({"logits": torch.Size([2, 4, 8, 8])}, {"logits": torch.Size([2, 4, 16, 16])})


def test_teacher_output_cache_matches_live_teacher_and_persists(tmp_path: Path) -> None:
    student, teacher = _pair()
    live = DistillationLoss(build_method("fitnet"), student, teacher, (16, 16))
    cached = DistillationLoss(build_method("fitnet"), student, teacher, (16, 16), teacher_cache=(tmp_path, "t0"))
    cached.method.load_state_dict(live.method.state_dict())
    student.eval()  # no dropout: the student side is the same in both calls
    memo = cached.teacher_cache
    assert memo is not None and memo.names == ["feat", "logits"]
    images = torch.randn(3, 3, 16, 16)
    labels = torch.zeros(3, 16, 16, dtype=torch.long)
    expected = {k: v.detach() for k, v in live(images, labels, student(images)).items()}
    for _ in range(2):
        got = cached(images, labels, student(images))
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6)
    assert (memo.misses, memo.hits) == (3, 3)
    # Batch-of-1 entries: the same image in another batch gets bit-identical teacher outputs.
    single = memo(images[1:2], cached._run_teacher)
    assert torch.equal(single["logits"][0], memo(images, cached._run_teacher)["logits"][1])
    memo.save()
    again = DistillationLoss(build_method("fitnet"), student, teacher, (16, 16), teacher_cache=(tmp_path, "t0"))
    assert again.teacher_cache is not None and len(again.teacher_cache.entries) == 3
    assert len(list(tmp_path.glob("t0-*.pt"))) == 1


def test_batch_statistics_teacher_normalises_each_batch_and_keeps_its_state() -> None:
    """teacher_norm 'batch': (x − mean_batch) / sqrt(var_batch + eps) · γ + β in any mode; buffers untouched."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    nn.init.uniform_(net[1].weight, 0.5, 2.0)
    nn.init.uniform_(net[1].bias, -1.0, 1.0)
    net[1].running_mean.fill_(5.0)  # running statistics far from the batch's, as in the cpu detection teacher
    before = {k: v.clone() for k, v in net.state_dict().items()}
    freeze(net)
    assert use_batch_statistics(net) == 1 and use_batch_statistics(net) == 0  # idempotent
    x = torch.randn(3, 3, 8, 8) * 4 + 2
    feat = net[0](x)
    mean, var = feat.mean((0, 2, 3), keepdim=True), feat.var((0, 2, 3), unbiased=False, keepdim=True)
    bn = net[1]
    expected = torch.relu((feat - mean) / torch.sqrt(var + bn.eps) * bn.weight[:, None, None] + bn.bias[:, None, None])
    assert not net.training
    torch.testing.assert_close(net(x), expected)
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(p.requires_grad for p in net.parameters())
