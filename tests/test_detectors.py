"""torchvision detectors by name: forwards, FPN taps, features/losses split, complexity, backbone weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn, retinanet_resnet50_fpn_v2

from benchmark.engine.dist import sync_batch_norms
from benchmark.errors import UserError
from benchmark.models import build_backbone, count_params_m
from benchmark.models.detectors import (
    DETECTORS,
    MM_BACKEND_NOTE,
    NEEDS_MM_BACKEND,
    RunningStatisticsNorm,
    build_detector,
    detector_complexity,
    detector_features,
    detector_losses_from_features,
    list_detectors,
    load_detector_backbone_weights,
)
from methods.base import use_batch_statistics
from methods.taps import TapRecorder, resolve_taps

R50 = {"faster_rcnn": "faster_rcnn_r50", "retinanet": "retinanet_r50", "fcos": "fcos_r50"}
LEVELS = {"faster_rcnn": ["0", "1", "2", "3", "pool"], "retinanet": ["0", "1", "2", "p6", "p7"],
          "fcos": ["0", "1", "2", "p6", "p7"]}
LOSSES = {"faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
          "retinanet": {"classification", "bbox_regression"},
          "fcos": {"classification", "bbox_regression", "bbox_ctrness"}}


def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 60, 96, generator=g)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 8.0, 50.0, 50.0], [0.0, 0.0, 20.0, 20.0]]),
                "labels": torch.tensor([2, 3])}]
    return images, targets


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_detector(name, num_classes=4, min_size=64, max_size=96) for name in list_detectors()}


def test_registry_and_names() -> None:
    assert list_detectors() == sorted(DETECTORS) == sorted(
        f"{f}_{b}" for f in ("faster_rcnn", "retinanet", "fcos") for b in ("r50", "r101", "x101")
        if (f, b) != ("fcos", "x101"))
    assert DETECTORS["retinanet_x101"]["backbone"] == "resnext101_64x4d"
    assert {"cascade_mask_rcnn_x101", "reppoints_x101"} <= NEEDS_MM_BACKEND
    assert set(list_detectors(include_mm_backend=True)) == set(DETECTORS) | NEEDS_MM_BACKEND
    with pytest.raises(UserError, match="Did you mean 'faster_rcnn_r50'") as err:
        build_detector("faster_rcnn_r5", 4)
    assert "retinanet_x101" in str(err.value)
    with pytest.raises(UserError, match=MM_BACKEND_NOTE):
        build_detector("cascade_mask_rcnn_x101", 4)
    with pytest.raises(UserError, match="Did you mean 'reppoints_x101'"):
        build_detector("reppoint_x101", 4)


def test_build_argument_errors() -> None:
    for kwargs, message in (({"num_classes": 1}, "counts the background"),
                            ({"num_classes": 4, "trainable_layers": 6}, "trainable_layers"),
                            ({"num_classes": 4, "norm": "gn"}, "unknown norm"),
                            ({"num_classes": 4, "min_size": 900, "max_size": 800}, "min_size")):
        with pytest.raises(UserError, match=message):
            build_detector("fcos_r50", **kwargs)


@pytest.mark.parametrize("name", list_detectors())
def test_train_and_eval_forward(models: dict[str, nn.Module], name: str) -> None:
    model, (images, targets) = models[name], batch()
    assert model.family == DETECTORS[name]["family"] and list(model.fpn_levels) == LEVELS[model.family]
    assert all(p.requires_grad for p in model.parameters())  # trainable_layers=5 by default
    assert isinstance(model.backbone.body.bn1, nn.BatchNorm2d)
    torch.manual_seed(0)
    with torch.no_grad():
        losses = model.train()(images, targets)
        assert set(losses) == LOSSES[model.family]
        assert all(torch.isfinite(v) for v in losses.values())
        detections = model.eval()(images)
    assert len(detections) == 2
    assert {"boxes", "scores", "labels"} <= set(detections[0])
    assert detections[1]["boxes"].shape[1] == 4


@pytest.mark.parametrize("family", list(R50))
def test_taps_record_every_fpn_level(models: dict[str, nn.Module], family: str) -> None:
    model, (images, _) = models[R50[family]].eval(), batch()
    names = tuple(n for n in model.tap_points if n != "fpn")
    paths = resolve_taps(model, names)
    assert [paths[f"fpn_{i}"] for i in range(5)] == [f"backbone:{k}" for k in LEVELS[family]]
    n_convs = 4 if family == "faster_rcnn" else 5  # Faster's max-pooled level has no conv (FGD/MGD: 4 levels)
    assert sorted(n for n in names if n.startswith("fpn_out_")) == [f"fpn_out_{i}" for i in range(n_convs)]
    with TapRecorder(model, paths) as recorder, torch.no_grad():
        model(images)
        levels = recorder.collect([f"fpn_{i}" for i in range(5)])
        convs = recorder.collect([f"fpn_out_{i}" for i in range(n_convs)])
    padded = model.transform(images)[0].tensors.shape
    assert padded == (2, 3, 64, 96)
    for i, stride in enumerate(model.fpn_strides):
        expected = (2, 256, math.ceil(padded[2] / stride), math.ceil(padded[3] / stride))
        assert levels[f"fpn_{i}"].shape == expected, (family, i)
        if i < n_convs:
            assert torch.equal(convs[f"fpn_out_{i}"], levels[f"fpn_{i}"])
    assert model.fpn_strides[0] == (4 if family == "faster_rcnn" else 8)
    # the logical `fpn` tap is the dict-returning module: pick a level with `:key`, as the distiller does.
    with TapRecorder(model, {"top": f"{model.tap_points['fpn']}:{model.fpn_levels[-1]}"}) as recorder:
        with torch.no_grad():
            _, _, features = detector_features(model, images)
        assert recorder.outputs["top"] is features[model.fpn_levels[-1]]
    with TapRecorder(model, {"all": model.tap_points["fpn"]}), pytest.raises(UserError, match="pick an entry"):
        detector_features(model, images)


@pytest.mark.parametrize("family", list(R50))
def test_features_then_losses_equals_forward(models: dict[str, nn.Module], family: str) -> None:
    model, (images, targets) = models[R50[family]].train(), batch()
    torch.manual_seed(3)
    expected = model(images, targets)
    torch.manual_seed(3)
    image_list, scaled, features = detector_features(model, images, targets)
    assert list(features) == LEVELS[family]
    losses = detector_losses_from_features(model, image_list, features, scaled)
    assert list(losses) == list(expected)
    for key, value in expected.items():
        assert torch.equal(losses[key], value), key
    assert all(m.training for m in model.modules())


def test_losses_from_features_on_eval_teacher(models: dict[str, nn.Module]) -> None:
    """The MasKD token stage: eval-mode teacher (BN on running stats), its own task loss on masked features."""
    teacher, (images, targets) = models["faster_rcnn_r50"].eval(), batch()
    image_list, scaled, features = detector_features(teacher, images, targets)
    masked = {k: 0.5 * v for k, v in features.items()}
    losses = detector_losses_from_features(teacher, image_list, masked, scaled)
    assert set(losses) == LOSSES["faster_rcnn"] and all(torch.isfinite(v) for v in losses.values())
    assert not any(m.training for m in teacher.modules())
    # The student's batch through the teacher: an ImageList skips the teacher's transform.
    assert detector_features(teacher, image_list)[2]["0"].shape == features["0"].shape
    with pytest.raises(UserError, match="mismatched FPN levels"):
        detector_losses_from_features(teacher, image_list, dict(list(features.items())[:4]), scaled)
    with pytest.raises(UserError, match="no positive width"):
        detector_features(teacher, images[:1], [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]),
                                                 "labels": torch.tensor([1])}])


def test_state_dicts_load_into_torchvision_builders() -> None:
    """Faster and FCOS R50 are exactly torchvision's builders without weights (so exports load strictly);
    RetinaNet differs only in P6 reading C5 (mmdet's on_input) instead of P5."""
    with torch.device("meta"):
        for name, builder in (("faster_rcnn_r50", fasterrcnn_resnet50_fpn), ("fcos_r50", fcos_resnet50_fpn)):
            ours = build_detector(name, 5).state_dict()
            theirs = builder(weights=None, weights_backbone=None, num_classes=5).state_dict()
            assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}, name
        retina = build_detector("retinanet_r50", 5)
    assert retina.backbone.fpn.extra_blocks.p6.in_channels == 2048
    assert retina.backbone.fpn.extra_blocks.use_P5 is False


def test_complexity(models: dict[str, nn.Module]) -> None:
    params = detector_complexity("retinanet_r50", 1280, 800, num_classes=4).params_m
    assert params == pytest.approx(count_params_m(models["retinanet_r50"]))
    # mmdet's get_flops example (RetinaNet R50 FPN, 80 classes, input 1280×800): 239.32 GFLOPs (MACs), 37.74 M
    # trainable params (mmdet freezes the stem and layer1, ≈0.23 M, and has no background logit).
    retina = detector_complexity("retinanet_r50", 1280, 800, num_classes=81)
    assert retina.gflops == pytest.approx(239.32, rel=0.01)
    assert retina.params_m == pytest.approx(37.74 + 0.25, abs=0.02)
    faster_mac = detector_complexity("faster_rcnn_r50", 320, 320).gflops
    faster_paper = detector_complexity("faster_rcnn_r50", 320, 320, unit="paper").gflops
    assert detector_complexity("faster_rcnn_r50", 320, 320, unit="flop").gflops == pytest.approx(2 * faster_mac)
    box_head_macs = 1000 * (256 * 7 * 7 * 1024 + 1024 * 1024 + 1024 * 81 * 5) / 1e9  # linear layers
    assert faster_mac - faster_paper == pytest.approx(box_head_macs, rel=1e-6)


def test_backbone_weights_files(tmp_path: Path, models: dict[str, nn.Module]) -> None:
    resnet = torchvision.models.resnet50()
    state = {f"backbone.{k}": v for k, v in resnet.state_dict().items()}  # fc.* included, ignored
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "r50.pth")
    for norm in ("bn", "frozen"):
        model = build_detector("faster_rcnn_r50", 4, 64, 96, pretrained_backbone=tmp_path / "r50.pth", norm=norm)
        body = model.backbone.body
        assert torch.equal(body.layer4[2].conv3.weight, resnet.layer4[2].conv3.weight)
        assert torch.equal(body.layer1[0].bn1.running_var, resnet.layer1[0].bn1.running_var)
    assert isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)
    target = models["faster_rcnn_r50"]
    # The project's stand-in layout (torchvision stem) loads as it is, also from a mapping.
    load_detector_backbone_weights(target, build_backbone("resnet50", stem="torchvision").state_dict())
    raw = (tmp_path / "r50.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 3])
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    torch.save(build_backbone("resnet50").state_dict(), tmp_path / "deep.pth")
    for file, message in (("absent.pth", "not found"), ("cut.pth", "truncated or not a PyTorch checkpoint"),
                          ("r18.pth", r"do not fit .*shape mismatch"), ("deep.pth", "deep \\(v1s\\) stem")):
        with pytest.raises(UserError, match=message):
            load_detector_backbone_weights(target, tmp_path / file)


def test_anchor_scale_shrinks_the_default_anchors() -> None:
    faster = build_detector("faster_rcnn_r50", 4, min_size=64, max_size=64, anchor_scale=0.5)
    assert faster.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    retina = build_detector("retinanet_r50", 4, min_size=64, max_size=64, anchor_scale=0.5)
    assert retina.anchor_generator.sizes[0] == (16, 20, 25) and retina.anchor_generator.sizes[-1] == (256, 322, 406)
    default = build_detector("retinanet_r50", 4, min_size=64, max_size=64)
    assert default.anchor_generator.sizes[0] == (32, 40, 50)  # torchvision's own default, unchanged
    with pytest.raises(UserError, match="anchor_scale must be positive"):
        build_detector("faster_rcnn_r50", 4, min_size=64, max_size=64, anchor_scale=0.0)


def test_zero_init_residual_zeroes_each_bottlenecks_last_norm_and_nothing_else() -> None:
    torch.manual_seed(0)
    plain = build_detector("fcos_r50", 4, 64, 64, norm="bn_eval").state_dict()
    torch.manual_seed(0)
    zeroed = build_detector("fcos_r50", 4, 64, 64, norm="bn_eval", zero_init_residual=True).state_dict()
    changed = {k for k, v in zeroed.items() if not torch.equal(v, plain[k])}
    assert len(changed) == 16 and all(k.endswith(".bn3.weight") and not zeroed[k].any() for k in changed)


def test_retinanet_v2_head_is_torchvisions() -> None:
    """head_norm="gn" + box_loss="giou" is torchvision's retinanet_resnet50_fpn_v2 (P6 from C5 in both)."""
    with torch.device("meta"):
        ours = build_detector("retinanet_r50", 5, head_norm="gn", box_loss="giou")
        theirs = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=5)
        scaled = build_detector("retinanet_r50", 5, anchor_scale=0.5, head_norm="gn")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.head.regression_head._loss_type == "giou"
    assert isinstance(scaled.head.classification_head.conv[0][1], nn.GroupNorm)
    assert scaled.head.regression_head._loss_type == "l1"
    assert scaled.anchor_generator.sizes[0] == (16, 20, 25)
    for name, kwargs, message in (("retinanet_r50", {"head_norm": "bn"}, "unknown head_norm 'bn'; valid: none, gn"),
                                  ("retinanet_r50", {"box_loss": "iou"}, "unknown box_loss 'iou'"),
                                  ("fcos_r50", {"head_norm": "gn"}, "RetinaNet options; fcos")):
        with pytest.raises(UserError, match=message), torch.device("meta"):
            build_detector(name, 5, **kwargs)


def test_bn_eval_normalises_with_running_statistics_and_trains_affine() -> None:
    model = build_detector("retinanet_r50", 4, 64, 64, norm="bn_eval")
    bn = model.backbone.body.layer1[0].bn1
    with torch.no_grad():
        bn.running_mean.fill_(2.0), bn.running_var.fill_(4.0), bn.weight.fill_(3.0), bn.bias.fill_(1.0)
    x = torch.randn(2, bn.num_features, 5, 5) * 7 + 3
    bn.train()
    out = bn(x)
    assert torch.allclose(out, 3.0 * (x - 2.0) / torch.sqrt(torch.tensor(4.0) + bn.eps) + 1.0, atol=1e-5)
    assert torch.equal(bn.running_mean, torch.full_like(bn.running_mean, 2.0))  # no momentum update
    out.sum().backward()
    assert bn.weight.grad is not None and bn.bias.grad.abs().sum() > 0
    # The state dict is BatchNorm2d's: it loads strictly into the bare torchvision RetinaNet.
    plain = build_detector("retinanet_r50", 4, 64, 64)
    plain.load_state_dict(model.state_dict(), strict=True)
    # teacher_norm: batch leaves it alone: a bn_eval teacher never trained on batch statistics.
    assert use_batch_statistics(model) == 0 and use_batch_statistics(plain) > 0


def test_sync_batch_norms_keeps_kept_statistics_norms() -> None:
    """SyncBN on CUDA DDP replaces plain BN only: bn_eval must not go back to batch statistics."""
    plain, kept = build_detector("fcos_r50", 4, 64, 64), build_detector("fcos_r50", 4, 64, 64, norm="bn_eval")
    plain_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    kept_bn = sum(isinstance(m, RunningStatisticsNorm) for m in kept.modules())
    assert plain_bn == kept_bn == 53  # ResNet-50: stem + 16 blocks × 3 + 4 downsample BNs
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in sync_batch_norms(plain).modules()) == plain_bn
    synced = sync_batch_norms(kept)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == 0
    assert sum(type(m) is RunningStatisticsNorm for m in synced.modules()) == kept_bn


def test_frozen_norm_builds_without_weights_and_takes_them_later() -> None:
    """FrozenBN is built first and filled by the loader (the harness's order; a checkpoint loads the same way)."""
    model = build_detector("faster_rcnn_r50", 4, 64, 96, norm="frozen")
    resnet = torchvision.models.resnet50()
    with torch.no_grad():
        resnet.layer2[0].bn1.running_var.uniform_(0.5, 2.0)
    load_detector_backbone_weights(model, resnet.state_dict())
    frozen = model.backbone.body.layer2[0].bn1
    assert isinstance(frozen, torchvision.ops.FrozenBatchNorm2d)
    assert torch.equal(frozen.running_var, resnet.layer2[0].bn1.running_var)
