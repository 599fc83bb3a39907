"""MasKD for detection (``methods/maskd/detection.py``): token stage, distillation, warm-up counter, options."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml
from torch import nn

from benchmark.config import ScheduleConfig, merge, semantic, to_dict
from benchmark.engine.distill import DistillationLoss
from benchmark.engine.task_loss import TrainUnit
from benchmark.errors import UserError
from benchmark.models.detectors import build_detector, detector_features, detector_losses_from_features
from benchmark.tasks.detection import DetectionLoss
from methods import build_method, method_options
from methods.maskd.detection import MasKDDetection, MaskedDetectorTeacher, TokenLearningDetectionLoss, combine_masks
from methods.maskd.loss import masked_feature_loss
from methods.maskd.masks import dice_diversity, token_masks

FAMILIES = ("faster_rcnn", "retinanet")
TASK_TERMS = {"faster_rcnn": ("classifier", "box_reg", "objectness", "rpn_box_reg"),
              "retinanet": ("classification", "bbox_regression")}
LEVELS = [f"fpn_{i}" for i in range(5)]
# Faster R-CNN levels of a 64×64 input (strides 4–64), as probed by the engine.
FASTER_SHAPES = {f"fpn_{i}": torch.Size([2, 256, 16 >> i, 16 >> i]) for i in range(5)}
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "methods" / "maskd_det.yaml"


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 8.0, 50.0, 50.0], [0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 62.0]]),
                "labels": torch.tensor([2, 3, 1])}]
    return images, targets


def teacher_forward(model: nn.Module, images: list[torch.Tensor]):
    return detector_features(model, images)


@pytest.fixture(scope="module")
def pristine() -> dict[str, tuple[nn.Module, nn.Module]]:
    """(teacher, student) per family, never bound: tests deep-copy them, so no hooks or steps leak."""
    torch.manual_seed(0)
    return {family: tuple(build_detector(f"{family}_r50", num_classes=4, min_size=64, max_size=64) for _ in "ts")
            for family in FAMILIES}


def bound(pristine, family: str, **options):
    teacher, student = (copy.deepcopy(m) for m in pristine[family])
    method = build_method("maskd_det", **options)
    extra = DistillationLoss(method, student, teacher, (64, 64), teacher_forward=teacher_forward)
    return method, extra, student, teacher


class FakeTeacher(nn.Module):
    """Just the tap points the stage reads (stage construction needs no forward)."""

    tap_points: ClassVar[dict[str, str]] = {f"fpn_{i}": f"backbone:{key}"
                                            for i, key in enumerate(("0", "1", "2", "3", "pool"))}


def stage_of(**options):
    method = build_method("maskd_det", **options)
    method.bind(FASTER_SHAPES, FASTER_SHAPES)
    return method.stage(FakeTeacher())


# ----------------------------------------------------------------------------------------- token stage


@pytest.mark.parametrize("family", FAMILIES)
def test_stage_trains_tokens_only_with_named_losses(pristine, family: str) -> None:
    method, _, _, teacher = bound(pristine, family)
    assert method.levels == LEVELS
    stage = method.stage(teacher)
    model = stage.model
    assert stage.name == "tokens" and isinstance(model, MaskedDetectorTeacher)
    assert model.level_keys == dict(zip(LEVELS, teacher.fpn_levels, strict=True))
    for level in LEVELS:  # one token set (T = 6, official) and one weighting module per level
        assert model.token_sets[level].tokens.shape == (6, 256)
        assert model.token_sets[level].weighting is not None
    assert all(k.startswith("token_sets.") for k in model.state_dict())  # the teacher is held outside
    unit = TrainUnit(model, stage.loss)
    trainable = {id(p) for params, _ in unit.parameter_groups() for p in params}
    assert trainable == {id(p) for p in model.token_sets.parameters()}

    images, targets = batch()
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    tokens_before = model.token_sets["fpn_0"].tokens.detach().clone()
    losses = unit(images, targets)
    assert list(losses) == [f"loss_task_{n}" for n in TASK_TERMS[family]] + ["loss_div"]
    assert all(torch.isfinite(v) for v in losses.values())
    outputs = model(images, targets)
    features = detector_features(teacher, images)[2]
    for level, key in model.level_keys.items():  # masks per level: N×T×H_l×W_l
        assert outputs["masks"][level].shape == (2, 6, *features[key].shape[-2:])

    sum(losses.values()).backward()
    for name, p in model.token_sets.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(model.token_sets[level].tokens.grad.abs().sum() > 0 for level in LEVELS)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    optimizer = torch.optim.SGD([p for params, _ in unit.parameter_groups() for p in params], lr=0.1)
    optimizer.step()
    assert not torch.equal(model.token_sets["fpn_0"].tokens, tokens_before)
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.named_parameters())
    assert not teacher.training  # eval-mode BN throughout


def test_stage_loss_is_teacher_task_loss_on_weighted_masked_features(pristine) -> None:
    """Hand check on RetinaNet (no random sampling): F̂_l = Σ_k w_k (M_k ⊙ F_l) per level, built token by token,
    through the teacher's own losses; L_div summed over levels."""
    method, _, _, teacher = bound(pristine, "retinanet")
    stage = method.stage(teacher)
    model = stage.model
    with torch.no_grad():  # make the weights far from uniform so that a wrong combination shows
        for level in LEVELS:
            model.token_sets[level].weighting.prob[2].bias.copy_(torch.linspace(-2, 2, 6))
    images, targets = batch()
    losses = TrainUnit(model, stage.loss)(images, targets)

    image_list, scaled, features = detector_features(teacher, images, targets)
    masked, div = type(features)(features), 0.0
    for level, key in zip(LEVELS, teacher.fpn_levels, strict=True):
        feat, tokens = features[key], model.token_sets[level]
        masks = torch.sigmoid(torch.einsum("tc,nchw->nthw", tokens.tokens, feat))
        weights = torch.softmax(tokens.weighting.prob(feat).flatten(1), dim=1)
        masked[key] = sum(weights[:, k, None, None, None] * (masks[:, k:k + 1] * feat) for k in range(6))
        div = div + dice_diversity(masks)
    expected = detector_losses_from_features(teacher, image_list, masked, scaled)
    for name, value in expected.items():
        assert float(losses[f"loss_task_{name}"].detach()) == pytest.approx(float(value.detach()), rel=1e-4, abs=1e-6)
    assert float(losses["loss_div"].detach()) == pytest.approx(float(div.detach()), rel=1e-5)


def test_combine_masks_hand_case() -> None:
    masks = torch.tensor([[[[0.5, 1.0]], [[0.25, 0.0]]]])  # N=1, T=2, H=1, W=2
    weights = torch.tensor([[0.25, 0.75]])
    assert torch.allclose(combine_masks(masks, weights), torch.tensor([[[[0.3125, 0.25]]]]))
    assert torch.allclose(combine_masks(masks), torch.tensor([[[[0.75, 1.0]]]]))  # official sum, not a mean
    feat = torch.randn(1, 3, 1, 2)
    official = (feat.unsqueeze(1) * masks.unsqueeze(2) * weights[:, :, None, None, None]).sum(1)  # N×T×C×H×W
    assert torch.allclose(feat * combine_masks(masks, weights), official)


def test_stage_diversity_only_has_no_task_loss_and_no_weighting(pristine) -> None:
    method, _, _, teacher = bound(pristine, "faster_rcnn", masks="diversity", weighting=False)
    stage = method.stage(teacher)
    assert all(ts.weighting is None for ts in stage.model.token_sets.values())
    losses = TrainUnit(stage.model, stage.loss)(*batch())
    assert list(losses) == ["loss_div"]
    losses["loss_div"].backward()
    assert all(ts.tokens.grad.abs().sum() > 0 for ts in stage.model.token_sets.values())


def test_stage_eval_returns_detections_on_union_masked_levels(pristine) -> None:
    method, _, _, teacher = bound(pristine, "retinanet")
    model = method.stage(teacher).model.eval()
    images, _ = batch()
    seen = {}
    head_hook = teacher.head.register_forward_pre_hook(lambda _m, inputs: seen.update(maps=inputs[0]))
    hooks_before = len(teacher.backbone._forward_hooks)
    detections = model(images)
    head_hook.remove()
    assert len(detections) == 2 and all(set(d) == {"boxes", "labels", "scores"} for d in detections)
    assert len(teacher.backbone._forward_hooks) == hooks_before  # the masking hook is removed
    features = detector_features(teacher, images)[2]
    for level, key, seen_map in zip(LEVELS, teacher.fpn_levels, seen["maps"], strict=True):
        union = token_masks(features[key], model.token_sets[level].tokens).amax(1, keepdim=True)
        assert torch.allclose(seen_map, features[key] * union, atol=1e-6)


# ----------------------------------------------------------------------------------------- stage → distiller


def test_load_stage_round_trip(pristine) -> None:
    method, _, _, teacher = bound(pristine, "faster_rcnn")
    stage = method.stage(teacher)
    with torch.no_grad():
        for p in stage.model.parameters():
            p.add_(torch.randn_like(p))
    state = stage.model.state_dict()
    method.load_stage(state)
    for key, value in method.token_sets.state_dict().items():
        assert torch.equal(value, state[f"token_sets.{key}"])
    assert not any(p.requires_grad for p in method.token_sets.parameters())

    no_weights = build_method("maskd_det", weighting=False, customization=False)
    no_weights.bind(FASTER_SHAPES, FASTER_SHAPES)
    no_weights.load_stage(state)  # tokens only
    assert torch.equal(no_weights.token_sets["fpn_4"].tokens, state["token_sets.fpn_4.tokens"])
    assert no_weights.token_sets["fpn_4"].weighting is None

    other = build_method("maskd_det", num_tokens=4)
    other.bind(FASTER_SHAPES, FASTER_SHAPES)
    with pytest.raises(UserError, match="does not fit"):
        other.load_stage(state)


def test_random_tokens_are_the_stage_starting_point(pristine) -> None:
    learned, _, _, teacher = bound(pristine, "faster_rcnn")
    start = learned.stage(teacher).model.token_sets
    random = build_method("maskd_det", masks="random", weighting=False, customization=False)
    random.bind(FASTER_SHAPES, FASTER_SHAPES)
    assert random.stage(teacher) is None
    for level in LEVELS:
        assert torch.equal(random.token_sets[level].tokens, start[level].tokens)


# ----------------------------------------------------------------------------------------- distillation


@pytest.mark.parametrize("family", FAMILIES)
def test_distillation_gradients_reach_student_and_adapters_only(pristine, family: str) -> None:
    method, extra, student, teacher = bound(pristine, family, custom_warmup=0)  # customization active
    method.load_stage(method.stage(teacher).model.state_dict())
    assert len(method.adapters) == 5 and all(isinstance(a, nn.Conv2d) for a in method.adapters)  # always (official)
    unit = TrainUnit(student, DetectionLoss(), extra)
    trainable = {id(p) for params, _ in unit.parameter_groups() for p in params}
    assert {id(p) for p in method.adapters.parameters()} <= trainable
    assert not trainable & {id(p) for p in method.token_sets.parameters()}
    assert not trainable & {id(p) for p in teacher.parameters()}
    assert "method.custom_steps" in extra.state_dict()  # the warm-up counter goes into the run checkpoint

    losses = unit(*batch())
    assert "loss_maskd" in losses and all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_maskd"].detach()) > 0
    losses["loss_maskd"].backward()
    assert all(a.weight.grad is not None and a.weight.grad.abs().sum() > 0 for a in method.adapters)
    assert student.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.token_sets.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_identical_student_and_teacher_give_zero_loss(pristine) -> None:
    teacher = copy.deepcopy(pristine["faster_rcnn"][0])
    student = copy.deepcopy(teacher)
    method = build_method("maskd_det", custom_warmup=0)
    extra = DistillationLoss(method, student, teacher, (64, 64), teacher_forward=teacher_forward)
    with torch.no_grad():
        for adapter in method.adapters:
            adapter.weight.copy_(torch.eye(256).view(256, 256, 1, 1))
            adapter.bias.zero_()
    assert method.customizing()
    images, targets = batch()
    student.eval()  # the same BN statistics as the frozen teacher
    detector_features(student, images)  # fires the student's taps
    assert float(extra(images, targets, None)["loss_maskd"].detach()) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        method.adapters[2].bias.fill_(0.1)
    detector_features(student, images)
    assert float(extra(images, targets, None)["loss_maskd"].detach()) > 0


def test_loss_value_weighting_customization_and_lambda() -> None:
    """The distiller's value is λ1 Σ_levels masked_feature_loss with M^t (then M^t ⊙ M^s after the warm-up)."""
    shapes = {"fpn_0": torch.Size([2, 8, 4, 4]), "fpn_1": torch.Size([2, 8, 2, 2])}
    student_shapes = {k: torch.Size([2, 4, *v[2:]]) for k, v in shapes.items()}  # 4 → 8 channels: adapted
    method = build_method("maskd_det", weight=7.0, custom_warmup=2)
    method.bind(student_shapes, shapes)
    g = torch.Generator().manual_seed(1)
    student = {k: torch.randn(v, generator=g) for k, v in student_shapes.items()}
    teacher = {k: torch.randn(v, generator=g) for k, v in shapes.items()}
    with torch.no_grad():
        for ts in method.token_sets.values():
            ts.tokens.normal_(0, 1, generator=g)

    def expected(customize: bool) -> float:
        total = 0.0
        for level, adapter in zip(method.levels, method.adapters, strict=True):
            s, t, ts = adapter(student[level]), teacher[level], method.token_sets[level]
            masks = token_masks(t, ts.tokens)
            if customize:
                masks = masks * token_masks(s, ts.tokens)
            total += float(masked_feature_loss(s, t, masks, ts.weighting(t)).detach())
        return 7.0 * total

    batch_ = None
    first = float(method(batch_, student, teacher)["loss_maskd"].detach())
    assert first == pytest.approx(expected(False), rel=1e-5)
    assert not method.customizing()
    method.after_step()
    method.after_step()
    assert method.customizing() and int(method.custom_steps) == 2
    second = float(method(batch_, student, teacher)["loss_maskd"].detach())
    assert second == pytest.approx(expected(True), rel=1e-5) and second != pytest.approx(first)
    no_custom = build_method("maskd_det", customization=False, custom_warmup=0)
    no_custom.bind(student_shapes, shapes)
    assert not no_custom.customizing()


def test_warmup_counter_is_a_buffer_that_survives_resume() -> None:
    method = build_method("maskd_det", custom_warmup=3)
    method.bind(FASTER_SHAPES, FASTER_SHAPES)
    assert "custom_steps" in dict(method.named_buffers())
    for _ in range(3):
        assert not method.customizing()
        assert method.after_step() == {}
    assert method.customizing()
    state = method.state_dict()
    assert int(state["custom_steps"]) == 3
    resumed = build_method("maskd_det", custom_warmup=3)
    resumed.bind(FASTER_SHAPES, FASTER_SHAPES)
    assert not resumed.customizing()
    resumed.load_state_dict(state)
    assert resumed.customizing() and resumed._step_count() == 3
    resumed.after_step()
    assert int(resumed.custom_steps) == 4


def test_level_errors() -> None:
    method = build_method("maskd_det")
    with pytest.raises(UserError, match="publishes none"):
        method.bind({}, {})
    small = {k: torch.Size([2, 256, v[2] // 2, v[3] // 2]) for k, v in FASTER_SHAPES.items()}
    with pytest.raises(UserError, match="mismatched FPN levels"):
        method.bind(FASTER_SHAPES, small)
    method.bind(FASTER_SHAPES, FASTER_SHAPES)
    feats = {k: torch.randn(v) for k, v in FASTER_SHAPES.items()}
    other = dict(feats, fpn_0=torch.randn(2, 256, 8, 8))
    with pytest.raises(UserError, match="resized the batch differently"):
        method(None, other, feats)


# ----------------------------------------------------------------------------------------- options


def test_yaml_defaults_are_the_options_defaults() -> None:
    assert method_options("maskd_det", **yaml.safe_load(CONFIG.read_text())) == MasKDDetection.Options()


@pytest.mark.parametrize("options, match", [
    ({"masks": "gt"}, "not one of"),
    ({"stage_eval": "mean"}, "not one of"),
    ({"num_tokens": 0}, "num_tokens"),
    ({"masks": "random"}, "weighting needs"),
    ({"masks": "diversity"}, "weighting needs"),
    ({"task_loss": False, "div_weight": 0.0, "weighting": False}, "nothing to train"),
    ({"stage_weighting": False}, "weighting needs"),
])
def test_bad_option_combinations(options, match) -> None:
    with pytest.raises(UserError, match=match):
        build_method("maskd_det", **options)


def test_table4_rows_map_to_stages() -> None:
    ablation = {"weighting": False, "customization": False}
    assert stage_of(masks="random", **ablation) is None
    div_only = stage_of(masks="diversity", **ablation)
    assert div_only.config == stage_of(task_loss=False, **ablation).config  # one cache entry
    assert div_only.config["task_loss"] is False and div_only.config["weighting"] is False
    task_only = stage_of(div_weight=0.0, **ablation)
    assert task_only.config["task_loss"] is True and task_only.config["div_weight"] == 0.0
    full = stage_of()
    assert full.config == stage_of(**ablation).config == stage_of(customization=False).config  # shared tokens
    assert full.config["weighting"] is True and full.config["levels"] == LEVELS
    json.dumps(full.config)  # hashed into the cache key
    assert full.schedule == {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "lr_floor": 1e-6,
                             "optimizer": "sgd", "lr_decay": "cosine"}
    merged = merge(ScheduleConfig(steps=4, batch_size=2, lr=0.5, weight_decay=1e-3), full.schedule)
    assert (merged.steps, merged.lr, merged.weight_decay, merged.lr_floor) == (4, 0.1, 1e-4, 1e-6)
    assert (merged.optimizer, merged.lr_decay) == ("sgd", "cosine")
    preset_only = stage_of(stage_lr=None, stage_momentum=None, stage_weight_decay=None, stage_lr_floor=None,
                           stage_optimizer=None, stage_lr_decay=None)
    assert preset_only.schedule == {}
    adam = stage_of(stage_optimizer="adam", stage_lr=0.01, stage_weight_decay=1e-3)  # RetinaNet/FCOS blocks
    assert merge(ScheduleConfig(), adam.schedule).optimizer == "adam"
    # Same stage config: the optimizer enters the stage key through the merged schedule instead.
    assert stage_of(**ablation).config == stage_of(stage_optimizer="adam", **ablation).config
    assert semantic(to_dict(merge(ScheduleConfig(), adam.schedule))) != semantic(
        to_dict(merge(ScheduleConfig(), full.schedule)))
    assert stage_of(num_tokens=2).config["num_tokens"] == 2


def test_losses_stay_float32_under_autocast() -> None:
    """AMP: masks, the masked loss and L_div are float32 (fp16 sums over P2's pixels could overflow)."""
    shapes = {"fpn_0": torch.Size([2, 8, 4, 4])}
    method = build_method("maskd_det", custom_warmup=0)
    method.bind(shapes, shapes)
    g = torch.Generator().manual_seed(2)
    student, teacher = ({"fpn_0": torch.randn(shapes["fpn_0"], generator=g)} for _ in range(2))
    reference = float(method(None, student, teacher)["loss_maskd"].detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method(None, student, teacher)["loss_maskd"]
        masks = {"fpn_0": method.token_sets["fpn_0"].masks(teacher["fpn_0"].bfloat16())}
        div = TokenLearningDetectionLoss()(None, {"masks": masks})["loss_div"]
    assert loss.dtype == torch.float32 and float(loss.detach()) == pytest.approx(reference, rel=0.05)
    assert masks["fpn_0"].dtype == torch.float32 and div.dtype == torch.float32
