"""Detection baselines on FPN taps (methods/baselines/detection.py): mimic, FGD, MGD through the engine."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import methods.baselines.detection as detection
from benchmark.config import CONFIG_DIR, read_yaml
from benchmark.engine.distill import DistillationLoss
from benchmark.engine.task_loss import TrainUnit
from benchmark.errors import UserError
from benchmark.models.detectors import build_detector, detector_features
from benchmark.tasks.detection import DetectionLoss
from methods.base import Batch
from methods.baselines.fgd import FGD_HPARAMS, box_masks
from methods.baselines.mgd import MGD_HPARAMS
from methods.registry import build_method, method_class, method_options

TASK_LOSSES = {"faster_rcnn_r50": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
               "retinanet_r50": {"loss_classification", "loss_bbox_regression"}}
METHOD_LOSSES = {"mimic": {"loss_mimic"}, "mgd": {"loss_mgd"},
                 "fgd": {"loss_fgd_fg", "loss_fgd_bg", "loss_fgd_attn", "loss_fgd_global"}}
SIZE = 64  # = min_size = max_size: the transform keeps the images as they are


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_detector(name, num_classes=4, min_size=SIZE, max_size=SIZE) for name in TASK_LOSSES}


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 8.0, 50.0, 50.0], [0.0, 0.0, 20.0, 20.0]]),
                "labels": torch.tensor([2, 3])}]
    return images, targets


def distill_unit(method: nn.Module, student: nn.Module, teacher: nn.Module) -> TrainUnit:
    extra = DistillationLoss(method, student, teacher, (SIZE, SIZE),
                             teacher_forward=lambda model, images: detector_features(model, images))
    return TrainUnit(student.train(), DetectionLoss(), extra)


def nonzero_grad(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_registered_with_official_defaults() -> None:
    assert method_class("mimic") is detection.Mimic
    assert method_class("fgd") is detection.FGD and method_class("mgd") is detection.MGD
    assert dataclasses.asdict(build_method("mimic").options) == {"weight": 1.0, "always_adapt": True}
    assert dataclasses.asdict(build_method("fgd").options) == FGD_HPARAMS["faster_rcnn"]
    assert dataclasses.asdict(build_method("mgd").options) == MGD_HPARAMS["two_stage"]
    for name in ("mimic", "fgd", "mgd"):  # the configs hold the defaults, as numbers (not YAML strings)
        from_yaml = dataclasses.asdict(method_options(name, **read_yaml(CONFIG_DIR / "methods" / f"{name}.yaml")))
        assert from_yaml == dataclasses.asdict(method_class(name).Options())
    assert build_method("fgd", **FGD_HPARAMS["retinanet"]).options.alpha == 1e-3
    with pytest.raises(UserError, match="temperature"):
        build_method("fgd", temperature=0.0)
    with pytest.raises(UserError, match=r"ratio .* \[0, 1\]"):
        build_method("mgd", ratio=1.5)


@pytest.mark.parametrize("detector", list(TASK_LOSSES))
@pytest.mark.parametrize("name", list(METHOD_LOSSES))
def test_one_training_step(nets: dict[str, nn.Module], monkeypatch: pytest.MonkeyPatch, detector: str,
                           name: str) -> None:
    torch.manual_seed(1)
    teacher, student = copy.deepcopy(nets[detector]), copy.deepcopy(nets[detector])
    with torch.no_grad():  # a teacher that differs from the student
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    method = build_method(name)
    unit = distill_unit(method, student, teacher)
    n_levels = 4 if name != "mimic" and detector.startswith("faster") else 5  # FGD/MGD: 4 levels on two-stage
    assert len(method.levels) == len(method.align) == n_levels
    if name == "mimic":
        assert all(isinstance(a, nn.Conv2d) and a.bias is not None for a in method.align)  # official: always
    else:
        assert all(isinstance(a, nn.Identity) for a in method.align)  # 256 → 256: no align conv
    calls: list[tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]] = []

    def spy(boxes: list[torch.Tensor], shapes: list[tuple[int, int]], feat_hw: tuple[int, int]):
        assert shapes == [(SIZE, SIZE)] * 2
        calls.append((feat_hw, box_masks(boxes, shapes, feat_hw)))
        return calls[-1][1]

    monkeypatch.setattr(detection, "box_masks", spy)
    images, targets = batch()
    losses = unit(images, targets)
    assert set(losses) == TASK_LOSSES[detector] | METHOD_LOSSES[name]
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    distill = sum(losses[k] for k in METHOD_LOSSES[name])
    assert distill > 0
    distill.backward()  # the distillation terms alone reach the student and the method's modules
    assert nonzero_grad(student.backbone.body.conv1) and nonzero_grad(student.backbone.fpn.layer_blocks[0])
    assert all(p.grad is None for p in unit.extra.teacher.parameters())
    assert not any(p.requires_grad for p in unit.extra.teacher.parameters())
    own = {"mimic": ["align"], "fgd": ["student_gc", "teacher_gc"], "mgd": ["generators"]}[name]
    for attr in own:
        assert len(getattr(method, attr)) == n_levels
        assert all(nonzero_grad(m) for m in getattr(method, attr)), attr
    groups = unit.parameter_groups()
    assert {id(p) for p in method.parameters()} <= {id(p) for params, _ in groups for p in params}
    if name == "fgd":  # each level got its own masks, from the original boxes and image sizes
        strides = (4, 8, 16, 32) if detector.startswith("faster") else (8, 16, 32, 64, 128)
        assert [hw for hw, _ in calls] == [(max(SIZE // s, 1),) * 2 for s in strides]
        for hw, (fg, bg) in calls:
            expected = box_masks([t["boxes"] for t in targets], [(SIZE, SIZE)] * 2, hw)
            assert torch.equal(fg, expected[0]) and torch.equal(bg, expected[1])
    else:
        assert not calls


def eval_bn(model: nn.Module) -> nn.Module:
    """Batch-norm on running statistics, as the frozen teacher's (the detector itself stays in train mode)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


@pytest.mark.parametrize("name,options", [("mimic", {"always_adapt": False}), ("fgd", {})])
def test_identical_networks_give_zero(nets: dict[str, nn.Module], name: str, options: dict) -> None:
    teacher = copy.deepcopy(nets["faster_rcnn_r50"])
    unit = distill_unit(build_method(name, **options), copy.deepcopy(teacher), teacher)
    eval_bn(unit.student)
    images, targets = batch()
    losses = unit(images, targets)
    terms = METHOD_LOSSES[name]  # FGD: fg, bg, attention and (identity GcBlocks at init) global
    assert {k: losses[k].item() for k in terms} == dict.fromkeys(terms, 0.0)
    assert all(losses[k].item() > 0 for k in TASK_LOSSES["faster_rcnn_r50"])


def test_mimic_hand_computed() -> None:
    method = build_method("mimic", weight=2.0, always_adapt=False)
    method.bind({"fpn_0": torch.Size([1, 1, 1, 2]), "fpn_1": torch.Size([1, 1, 1, 1])},
                {"fpn_0": torch.Size([1, 2, 1, 2]), "fpn_1": torch.Size([1, 1, 1, 1])})
    assert isinstance(method.align[0], nn.Conv2d) and isinstance(method.align[1], nn.Identity)
    with torch.no_grad():
        method.align[0].weight.copy_(torch.tensor([[2.0], [0.0]]).view(2, 1, 1, 1))
        method.align[0].bias.copy_(torch.tensor([0.0, 1.0]))
    student = {"fpn_0": torch.tensor([[[[1.0, 2.0]]]]), "fpn_1": torch.tensor([[[[1.0]]]])}
    teacher = {"fpn_0": torch.tensor([[[[2.0, 3.0]], [[0.0, 1.0]]]]), "fpn_1": torch.tensor([[[[3.0]]]])}
    # level 0: φ(s) = [[2, 4], [1, 1]] vs [[2, 3], [0, 1]] → squares 0, 1, 1, 0 → mean 0.5; level 1: (1 − 3)² = 4.
    loss = method(Batch([torch.zeros(3, 4, 4)], None), student, teacher)["loss_mimic"]
    assert loss.item() == pytest.approx(2.0 * (0.5 + 4.0))


def test_mgd_masks_follow_the_global_rng() -> None:
    method = build_method("mgd", alpha=1.0, ratio=0.5)
    shapes = {f"fpn_out_{i}": torch.Size([2, 4, 6, 6]) for i in range(2)}
    method.bind(shapes, shapes)
    g = torch.Generator().manual_seed(0)
    feats = [{k: torch.randn(v, generator=g) for k, v in shapes.items()} for _ in range(2)]

    def loss() -> float:
        return method(Batch(None, None), *feats)["loss_mgd"].item()

    torch.manual_seed(5)
    state = torch.get_rng_state()
    first, second = loss(), loss()
    assert first != second  # a fresh mask each step
    torch.set_rng_state(state)  # what the trainer restores on resume
    assert loss() == first


def test_level_errors(nets: dict[str, nn.Module]) -> None:
    with pytest.raises(UserError, match=r"mismatched FPN levels.*spatial sizes differ.*same detector family"):
        distill_unit(build_method("fgd"), copy.deepcopy(nets["retinanet_r50"]), copy.deepcopy(nets["faster_rcnn_r50"]))
    shape = torch.Size([2, 256, 8, 8])
    with pytest.raises(UserError, match="publishes none of them"):
        build_method("mgd").bind({"feat": shape}, {"fpn_out_0": shape})
    with pytest.raises(UserError, match="mismatched FPN levels"):
        build_method("mimic").bind({"fpn_0": shape, "fpn_1": shape}, {"fpn_0": shape})
    method = build_method("mimic")
    method.bind({"fpn_0": shape}, {"fpn_0": shape})
    with pytest.raises(UserError, match="same min_size/max_size"):  # per-step guard (e.g. multi-scale student)
        method(Batch(None, None), {"fpn_0": torch.zeros(2, 256, 8, 8)}, {"fpn_0": torch.zeros(2, 256, 6, 8)})
