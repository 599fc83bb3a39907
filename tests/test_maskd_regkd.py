"""MasKD detection regression KD (``maskd_det`` options ``reg_kd``/``reg_weight``; kd_reference §1.3, §8.5) and the
tap syntax it relies on (``methods/taps.py``: ``<i`` input taps, optional ``?`` taps, ``name=path`` defaults)."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.engine.distill import DistillationLoss
from benchmark.engine.task_loss import TrainUnit
from benchmark.errors import UserError
from benchmark.models.detectors import build_detector, detector_features
from benchmark.tasks.detection import DetectionLoss, DetectionTask
from methods import build_method
from methods.maskd.detection import REG_DENSE, REG_ROIS
from methods.taps import TapRecorder, resolve_taps

SIZE = 64
BOX_BATCH = 16  # sampled RoIs per image (torchvision's box_batch_size_per_image; 512 officially)
TASK = DetectionTask(("a", "b", "c"), (SIZE, SIZE))  # 3 classes + background = num_classes 4
FAMILIES = ("faster_rcnn", "retinanet")
# Cheap token-stage options: the regression term does not depend on the tokens.
CHEAP = {"masks": "random", "weighting": False, "customization": False}


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 8.0, 50.0, 50.0], [0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 62.0]]),
                "labels": torch.tensor([2, 3, 1])}]
    return images, targets


def build(family: str) -> nn.Module:
    extra = {"box_batch_size_per_image": BOX_BATCH} if family == "faster_rcnn" else {}
    return build_detector(f"{family}_r50", num_classes=4, min_size=SIZE, max_size=SIZE, **extra)


@pytest.fixture(scope="module")
def pristine() -> dict[str, tuple[nn.Module, nn.Module]]:
    """(teacher, student) per family, never bound: tests deep-copy them."""
    torch.manual_seed(0)
    return {family: (build(family), build(family)) for family in (*FAMILIES, "fcos")}


def distiller(teacher: nn.Module, student: nn.Module, **options):
    """The method bound as the engine binds it (DistillationLoss, the task's teacher forward, then the stage)."""
    method = build_method("maskd_det", **{**CHEAP, **options})
    extra = DistillationLoss(method, student, teacher, (SIZE, SIZE), teacher_forward=TASK.teacher_forward)
    method.stage(teacher)
    return method, extra


def pair(pristine, family: str, **options):
    teacher, student = (copy.deepcopy(m) for m in pristine[family])
    method, extra = distiller(teacher, student, **options)
    return method, extra, student, teacher


def bn_eval(model: nn.Module) -> nn.Module:
    """Train mode (losses, RoI sampling) with BN on running statistics, as the frozen teacher's."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


# ----------------------------------------------------------------------------------------- the term


@pytest.mark.parametrize("family", FAMILIES)
def test_term_exists_is_finite_and_gradients_reach_the_student_regression_branch(pristine, family: str) -> None:
    method, extra, student, teacher = pair(pristine, family)
    assert method.reg_kind == {"faster_rcnn": "two_stage", "retinanet": "dense"}[family]
    unit = TrainUnit(student, DetectionLoss(), extra)
    losses = unit(*batch())
    reg = losses["loss_maskd_reg"]
    assert torch.isfinite(reg) and float(reg.detach()) > 0 and reg.dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values())
    reg.backward()
    if family == "faster_rcnn":
        reg_branch, cls_branch = student.roi_heads.box_predictor.bbox_pred, student.roi_heads.box_predictor.cls_score
        assert student.roi_heads.box_head.fc7.weight.grad.abs().sum() > 0
    else:
        reg_branch, cls_branch = student.head.regression_head.bbox_reg, student.head.classification_head.cls_logits
        assert student.head.regression_head.conv[0][0].weight.grad.abs().sum() > 0
    assert reg_branch.weight.grad is not None and reg_branch.weight.grad.abs().sum() > 0
    assert cls_branch.weight.grad is None  # regression KD only (no classification KD, paper eq. 10)
    assert student.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in method.adapters.parameters())  # the feature term's adapters are not involved
    assert not any(k.startswith("teacher") or "._teacher" in k for k in extra.state_dict())  # held, not registered


def test_two_stage_uses_the_student_sampled_rois(pristine) -> None:
    """The teacher's box head runs on exactly the RoIs the student's roi_heads sampled in this step."""
    _, extra, student, teacher = pair(pristine, "faster_rcnn")
    seen = {}
    handle = teacher.roi_heads.box_roi_pool.register_forward_pre_hook(lambda _m, inputs: seen.update(boxes=inputs[1]))
    sampled = {}
    student_handle = student.roi_heads.box_roi_pool.register_forward_pre_hook(
        lambda _m, inputs: sampled.update(boxes=inputs[1]))
    TrainUnit(student, DetectionLoss(), extra)(*batch())
    handle.remove()
    student_handle.remove()
    assert [len(b) for b in sampled["boxes"]] == [BOX_BATCH, BOX_BATCH]  # positives + negatives per image
    assert len(seen["boxes"]) == 2
    for teacher_boxes, student_boxes in zip(seen["boxes"], sampled["boxes"], strict=True):
        assert torch.equal(teacher_boxes, student_boxes)


@pytest.mark.parametrize("family", FAMILIES)
def test_identical_student_and_teacher_give_exactly_zero(pristine, family: str) -> None:
    teacher = copy.deepcopy(pristine[family][0])
    student = copy.deepcopy(teacher)
    _, extra = distiller(teacher, student, reg_weight=3.0)
    bn_eval(student)  # after the engine's shape probe, which restores train mode everywhere
    losses = TrainUnit(student, DetectionLoss(), extra)(*batch())
    assert float(losses["loss_maskd_reg"].detach()) == 0.0
    with torch.no_grad():  # any difference in the student's regression branch shows
        bias = (student.roi_heads.box_predictor.bbox_pred if family == "faster_rcnn"
                else student.head.regression_head.bbox_reg).bias
        bias.add_(0.05)
    assert float(TrainUnit(student, DetectionLoss(), extra)(*batch())["loss_maskd_reg"].detach()) > 0


def test_retinanet_value_is_sum_over_levels_of_l1_means(pristine) -> None:
    """Hand check: Σ_l mean |head_s(F_l) − head_t(F_l)|, each level through the two heads on its own."""
    method, _, student, teacher = pair(pristine, "retinanet", reg_weight=2.0)
    g = torch.Generator().manual_seed(3)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # P3–P7 of a 64×64 input
    maps = [torch.randn(2, 256, h, w, generator=g) for h, w in sizes]
    levels = {f"fpn_{i}": m for i, m in enumerate(maps)}
    s_head, t_head = student.head.regression_head, teacher.head.regression_head
    with torch.no_grad():
        expected = sum(F.l1_loss(s_head([m]), t_head([m])) for m in maps)  # one level at a time
        assert sum(h * w * 9 for h, w in sizes) == s_head(maps).shape[1]  # 9 anchors per location
        # Unequal level sizes: one mean over all rows would be another number.
        assert float(F.l1_loss(s_head(maps), t_head(maps))) != pytest.approx(float(expected), rel=1e-3)
        out = method(None, {**levels, REG_DENSE: s_head(maps)}, levels)
    assert out["loss_maskd_reg"].item() == pytest.approx(2.0 * float(expected), rel=1e-6)


def test_faster_value_is_smooth_l1_on_foreground_deltas(pristine) -> None:
    """Hand check: SmoothL1(β=1, mean) of the foreground-class deltas (background block dropped) of the student's
    predictor and the teacher's box head on the student's RoIs and the teacher's FPN levels."""
    _, extra, student, teacher = pair(pristine, "faster_rcnn")
    recorded = {}
    handles = [student.roi_heads.box_roi_pool.register_forward_pre_hook(lambda _m, i: recorded.update(rois=i[1])),
               student.roi_heads.box_predictor.register_forward_hook(lambda _m, _i, o: recorded.update(deltas=o[1]))]
    images, targets = batch()
    loss = TrainUnit(student, DetectionLoss(), extra)(images, targets)["loss_maskd_reg"]
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        image_list, _, features = detector_features(teacher, images)
        heads = teacher.roi_heads
        target = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, recorded["rois"],
                                                                      image_list.image_sizes)))[1]
    deltas = recorded["deltas"]
    assert deltas.shape == (2 * BOX_BATCH, 4 * 4)
    expected = F.smooth_l1_loss(deltas[:, 4:], target[:, 4:], beta=1.0)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert float(loss.detach()) != pytest.approx(float(F.smooth_l1_loss(deltas, target).detach()), rel=1e-4)


# ----------------------------------------------------------------------------------------- options and errors


def test_fcos_with_reg_kd_is_refused_and_runs_without(pristine) -> None:
    teacher, student = (copy.deepcopy(m) for m in pristine["fcos"])
    method = build_method("maskd_det", **CHEAP)
    DistillationLoss(method, student, teacher, (SIZE, SIZE), teacher_forward=TASK.teacher_forward)
    with pytest.raises(UserError, match=r"official FCOS config .*has no regression KD.*set reg_kd: false"):
        method.stage(teacher)
    method, extra = distiller(teacher, student, reg_kd=False)
    losses = TrainUnit(student, DetectionLoss(), extra)(*batch())
    assert "loss_maskd" in losses and "loss_maskd_reg" not in losses


def test_teacher_without_regression_branch_is_refused() -> None:
    shapes = {f"fpn_{i}": torch.Size([2, 256, 8 >> i, 8 >> i]) for i in range(3)}
    method = build_method("maskd_det", **CHEAP)
    method.bind({**shapes, REG_DENSE: torch.Size([2, 84 * 9, 4])}, shapes)
    assert method.reg_kind == "dense"
    plain = nn.Module()
    plain.tap_points = {f"fpn_{i}": f"backbone:{i}" for i in range(3)}
    with pytest.raises(UserError, match=r"no such regression branch.*set reg_kd: false"):
        method.stage(plain)
    half = build_method("maskd_det", **CHEAP)
    with pytest.raises(UserError, match="both the student's sampled RoIs and its box deltas"):
        half.bind({**shapes, REG_ROIS: torch.Size([10, 5])}, shapes)
    with pytest.raises(UserError, match="reg_weight"):
        build_method("maskd_det", reg_weight=-1.0)


def test_reg_kd_off_and_level_only_binds_have_no_term(pristine) -> None:
    method, extra, student, _ = pair(pristine, "retinanet", reg_kd=False)
    assert method.student_taps == () and method.reg_kind is None
    assert "loss_maskd_reg" not in TrainUnit(student, DetectionLoss(), extra)(*batch())
    shapes = {f"fpn_{i}": torch.Size([2, 8, 4, 4]) for i in range(2)}
    direct = build_method("maskd_det", **CHEAP)  # reg_kd on, but bound to level shapes only
    direct.bind(shapes, shapes)
    feats = {k: torch.randn(v) for k, v in shapes.items()}
    assert list(direct(None, feats, feats)) == ["loss_maskd"]


# ----------------------------------------------------------------------------------------- teacher heads


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_heads_run_only_for_regression_kd(pristine, family: str) -> None:
    """The task's teacher forward never runs a head; regression KD runs only the teacher's regression branch,
    once per step."""
    teacher, student = (copy.deepcopy(m) for m in pristine[family])
    names = (("rpn", "roi_heads", "roi_heads.box_roi_pool", "roi_heads.box_predictor") if family == "faster_rcnn"
             else ("head", "head.classification_head", "head.regression_head"))
    calls: Counter[str] = Counter()
    modules = dict(teacher.named_modules())
    handles = [modules[n].register_forward_pre_hook(lambda _m, _i, n=n: calls.update([n])) for n in names]
    try:
        images, _ = batch()
        with torch.no_grad():
            TASK.teacher_forward(teacher, images)
        assert not calls
        for reg_kd in (False, True):
            student = copy.deepcopy(pristine[family][1])
            _, extra = distiller(teacher, student, reg_kd=reg_kd)
            calls.clear()  # the engine's shape probe runs the whole teacher once
            unit = TrainUnit(student, DetectionLoss(), extra)
            unit(*batch())
            unit(*batch())
            if reg_kd and family == "faster_rcnn":
                assert calls == {"roi_heads.box_roi_pool": 2, "roi_heads.box_predictor": 2}
            elif reg_kd:
                assert calls == {"head.regression_head": 2}
            else:
                assert not calls
    finally:
        for handle in handles:
            handle.remove()


def test_backbone_only_student_forward_has_no_term(pristine) -> None:
    _, extra, student, _ = pair(pristine, "faster_rcnn")
    images, targets = batch()
    detector_features(student, images)  # fires the level taps only
    assert "loss_maskd_reg" not in extra(images, targets, None)


# ----------------------------------------------------------------------------------------- tap syntax


class Pool(nn.Module):
    def forward(self, feats: torch.Tensor, boxes: list[torch.Tensor], scale: float) -> torch.Tensor:
        return feats.mean() * scale + sum(b.sum() for b in boxes)


class Net(nn.Module):
    tap_points = {"pooled": "pool"}  # noqa: RUF012 (a model's published taps, as the detectors')

    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool()

    def forward(self, feats: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        return self.pool(feats, boxes, 2.0)


def test_input_taps_pack_boxes_in_roi_format() -> None:
    model, feats = Net(), torch.randn(1, 2, 3, 3)
    boxes = [torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.zeros(0, 4), torch.tensor([[5.0, 6, 7, 8], [0, 0, 1, 1]])]
    with TapRecorder(model, {"rois": "pool<1", "feats": "pool<0", "box": "pool<1:2", "out": "pool"}) as rec:
        out = model(feats, boxes)
        taps = rec.collect(["rois", "feats", "box", "out"])
    assert torch.equal(taps["rois"], torch.tensor([[0.0, 1, 2, 3, 4], [2, 5, 6, 7, 8], [2, 0, 0, 1, 1]]))
    assert torch.equal(taps["feats"], feats) and torch.equal(taps["box"], boxes[2]) and torch.equal(taps["out"], out)
    with TapRecorder(model, {"x": "pool<5"}), pytest.raises(UserError, match="no input 5"):
        model(feats, boxes)
    with pytest.raises(UserError, match="positional input index"):
        TapRecorder(model, {"x": "pool<a"})


def test_optional_taps_and_default_paths() -> None:
    model, feats = Net(), torch.randn(1, 2, 3, 3)
    assert resolve_taps(model, ("pooled", "rois=pool<1?", "pooled=other")) == {"pooled": "pool", "rois": "pool<1?"}
    assert resolve_taps(model, ("rois=pool<1?",), {"rois": "pool<1"}) == {"rois": "pool<1"}  # overrides win
    with TapRecorder(model, {"absent": "roi_heads.box_predictor:1?", "out": "pool"}) as rec:
        assert "absent" in rec.optional
        model(feats, [torch.ones(1, 4)])
        assert list(rec.collect(["absent", "out"])) == ["out"]  # no module: no hook, left out
        rec.clear()
        assert rec.collect(["absent"]) == {}
        with pytest.raises(UserError, match="recorded nothing"):
            rec.collect(["out"])  # a required tap that did not fire is still an error
    with pytest.raises(UserError, match="no module"):
        TapRecorder(model, {"absent": "roi_heads.box_predictor:1"})
