"""Detector registry (models as data) built from torchvision: Faster R-CNN, RetinaNet and FCOS with FPN.

Every model is a *bare* torchvision ``FasterRCNN``/``RetinaNet``/``FCOS`` (no subclass, so a student's
state dict loads into the same torchvision classes with ``strict=True``), built with ``weights=None`` and
``weights_backbone=None`` (nothing is downloaded) on ResNet-50, ResNet-101 or ResNeXt-101 **64x4d**
(torchvision's ``resnext101_64x4d``, the paper's X101 variant; torchvision also has 32x8d, unused) through
``_resnet_fpn_extractor``, the function behind torchvision's ``resnet_fpn_backbone``.

FPN levels (``model.backbone`` returns an ``OrderedDict``; keys are torchvision's, strides are of the
padded input, 256 channels each; ``model.fpn_levels`` and ``model.fpn_strides`` hold them in order):

* Faster R-CNN: ``'0' '1' '2' '3' 'pool'`` = P2–P6, strides 4–64. ``'pool'`` is torchvision's
  ``LastLevelMaxPool`` (``max_pool2d(P5, kernel 1, stride 2)``, no parameters); RoI pooling reads
  ``'0'``–``'3'``, the RPN all five (as mmdet's Faster R-CNN FPN).
* RetinaNet and FCOS: ``'0' '1' '2' 'p6' 'p7'`` = P3–P7, strides 8–128, from ``layer2``–``layer4`` plus
  ``LastLevelP6P7`` (3×3 stride-2 convs, ReLU before P7). As in the paper's mmdet configs, RetinaNet's P6
  reads C5 (``add_extra_convs='on_input'``; torchvision's ``retinanet_resnet50_fpn_v2`` does the same)
  and FCOS's reads P5 (``'on_output'``; as torchvision's ``fcos_resnet50_fpn``). torchvision's v1
  ``retinanet_resnet50_fpn`` reads P5 instead, which saves (2048 − 256)·256·9 = 4.1 M parameters.

Tap points (``model.tap_points``, logical name → module path for ``methods.taps``):

* ``fpn`` → ``backbone``: the module returning all levels; pick one with ``backbone:<key>``;
* ``fpn_<i>`` → ``backbone:<key of level i>`` for i = 0..4 (every neck output, MasKD §1.3);
* ``fpn_out_<i>`` → the conv that produces level i before any norm (FGD/MGD's ``fpn_convs.i.conv``):
  ``backbone.fpn.layer_blocks.<i>.0`` for the lateral levels and ``backbone.fpn.extra_blocks.p6``/``.p7``
  for RetinaNet/FCOS's extra levels. Faster's ``pool`` level has no conv, so Faster has ``fpn_out_0..3``
  only, which matches FGD/MGD's 4 levels for two-stage detectors. With no FPN norm (the default) each of
  these equals the level output.

Normalisation and frozen stages. torchvision uses ``FrozenBatchNorm2d`` and freezes ``conv1``/``layer1``
(trainable_layers=3) only when it loads ImageNet weights; with ``weights_backbone=None`` its builders use
plain ``BatchNorm2d`` and train all 5 stages. We follow that rule by default (``norm="bn"``,
``trainable_layers=5``) because our backbones start from scratch or from the embedded stand-in pretraining:
the stand-in's BN statistics describe 64×64 patches of another task (but see bn_eval below), freezing early
stages that learnt from a few thousand patches has no justification, and a randomly initialised FrozenBN is
the identity, i.e. no normalisation at all. Plain BN with the CPU presets' small batches (2–4 images)
trains, but its running statistics can disagree with the batch statistics it trained on, badly so for
RetinaNet (below). ``norm="frozen"`` (torchvision's recipe for real ImageNet weights) keeps the loaded
statistics and affine parameters fixed. With ``norm="bn"`` and ``trainable_layers < 5`` the frozen stages
keep no gradient but their BN still normalises with batch statistics in train mode.

``norm="bn_eval"`` is mmdet's ``norm_eval=True`` with ``requires_grad=True``, the setting of the paper's
configs: BatchNorm that always normalises with its running (i.e. loaded, pretrained) statistics and keeps
its affine parameters trainable (``RunningStatisticsNorm``; same state-dict keys as ``BatchNorm2d``). It
exists because plain BN at batch 4 breaks RetinaNet in eval mode: a RetinaNet R50 fitted to 16 training
images (200 steps, focal loss 0.10 with batch statistics) has focal loss 4.19 on the same images with its
running statistics and scores AP 5.5 on them; with ``bn_eval`` the two losses agree (0.32) and it scores
AP 22.4. Both kept-statistics norms (``KEPT_STATISTICS_NORMS``) need pretrained weights, passed here or
loaded before training, or they normalise with mean 0, var 1 (FrozenBN: the identity) throughout. They are
not required at build time, so a model can be built to receive a whole checkpoint; the harness refuses a
row that is not pretrained with either norm.

Classes: ``num_classes`` counts the background, exactly as torchvision's (labels 1..num_classes−1,
0 = background). RetinaNet and FCOS have no background logit in principle; they keep an unused class-0
logit so one label map serves every family, as torchvision's COCO models do with 91 for all three.

Train vs eval, teachers and students. torchvision detectors return a loss dict in train mode and
detections in eval mode, and never both. A distiller therefore does not call ``model(images, targets)``:

1. ``images, targets, s_feats = detector_features(student, image_list, targets)`` runs the student's
   ``transform`` (resize, normalise, pad /32) and backbone+FPN once (the student's taps fire here);
2. ``t_feats = teacher.backbone(images.tensors)`` under ``no_grad`` with the teacher in **eval** mode
   (BN on running statistics), on the *student's* transformed batch so both see the same pixels
   (``detector_features(teacher, images)`` with an ``ImageList`` does just that);
3. ``detector_losses_from_features(student, images, s_feats, targets)`` gives the task losses.

The MasKD token stage runs ``detector_losses_from_features(teacher, images, masked_t_feats, targets)``
on the eval-mode teacher: the helper computes losses whatever the model's mode (it switches Faster's
``rpn``/``roi_heads`` to train mode for the call and restores them; these hold no BN, and RetinaNet/FCOS
heads have no mode-dependent layers), so the teacher's backbone BN stays in eval mode.
"""

from __future__ import annotations

import contextlib
import difflib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torchvision.models import resnet50, resnet101, resnext101_64x4d
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from benchmark.errors import UserError
from benchmark.models.complexity import Unit, count_gflops, count_params_m
from benchmark.models.segmentors import _few, _read_state_dict

FPN_CHANNELS = 256
# family → returned ResNet stages, FPN level keys, their strides, source of P6 ("c5"/"p5"/None = max-pool).
FAMILIES: dict[str, dict[str, Any]] = {
    "faster_rcnn": {"stages": (1, 2, 3, 4), "levels": ("0", "1", "2", "3", "pool"),
                    "strides": (4, 8, 16, 32, 64), "p6_from": None},
    "retinanet": {"stages": (2, 3, 4), "levels": ("0", "1", "2", "p6", "p7"),
                  "strides": (8, 16, 32, 64, 128), "p6_from": "c5"},
    "fcos": {"stages": (2, 3, 4), "levels": ("0", "1", "2", "p6", "p7"),
             "strides": (8, 16, 32, 64, 128), "p6_from": "p5"},
}
_CLASSES = {"faster_rcnn": FasterRCNN, "retinanet": RetinaNet, "fcos": FCOS}
_RESNETS = {"resnet50": resnet50, "resnet101": resnet101, "resnext101_64x4d": resnext101_64x4d}
DETECTORS: dict[str, dict[str, str]] = {
    f"{family}_{short}": {"family": family, "backbone": backbone}
    for family in ("faster_rcnn", "retinanet", "fcos")
    for short, backbone in (("r50", "resnet50"), ("r101", "resnet101"), ("x101", "resnext101_64x4d"))
    if (family, short) != ("fcos", "x101")
}
BACKBONE_OF: dict[str, str] = {name: spec["backbone"] for name, spec in DETECTORS.items()}
# Detectors of the paper's tables that torchvision cannot build (Table 2 teachers and RepPoints students).
NEEDS_MM_BACKEND: frozenset[str] = frozenset({
    "cascade_mask_rcnn_x101",  # Cascade Mask R-CNN X101-64x4d FPN (20e), Table 2/4/7 teacher
    "reppoints_r50",  # RepPoints R50 (GN neck/head), Table 2 student
    "reppoints_r101",
    "reppoints_x101",  # RepPoints X101, Table 2 teacher
})
MM_BACKEND_NOTE = "needs the OpenMMLab backend"
NORMS = ("bn", "frozen", "bn_eval")
HEAD_NORMS = ("none", "gn")
BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")


def list_detectors(include_mm_backend: bool = False) -> list[str]:
    """Registered detector names (optionally with the ones that need the OpenMMLab backend)."""
    return sorted(set(DETECTORS) | (NEEDS_MM_BACKEND if include_mm_backend else set()))


def _check_name(name: str) -> None:
    if name in DETECTORS:
        return
    if name in NEEDS_MM_BACKEND:
        raise UserError(f"detector {name!r} {MM_BACKEND_NOTE} (mmdet): torchvision has no Cascade Mask R-CNN or "
                        f"RepPoints, so its table rows say '{MM_BACKEND_NOTE}'. torchvision detectors: "
                        f"{', '.join(list_detectors())}")
    close = difflib.get_close_matches(name, list_detectors(include_mm_backend=True), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown detector {name!r}.{hint} Valid detectors: {', '.join(list_detectors())}")


class RunningStatisticsNorm(nn.BatchNorm2d):
    """BatchNorm2d that normalises with its running statistics in train mode too and never updates them
    (mmdet's ``norm_eval=True``); weight and bias still train. State-dict keys are BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        training=False, momentum=0.0, eps=self.eps)


# Norm layers whose statistics never change in training: useful only over pretrained statistics.
KEPT_STATISTICS_NORMS = (RunningStatisticsNorm, misc_nn_ops.FrozenBatchNorm2d)


def build_detector(
    name: str,
    num_classes: int,
    min_size: int | tuple[int, ...] = 800,
    max_size: int = 1333,
    pretrained_backbone: Path | Mapping[str, torch.Tensor] | None = None,
    trainable_layers: int = 5,
    norm: str = "bn",
    anchor_scale: float = 1.0,
    head_norm: str = "none",
    box_loss: str = "l1",
    zero_init_residual: bool = False,
    **detector_kwargs: Any,
) -> nn.Module:
    """Build a registered detector (a bare torchvision model with ``tap_points`` and level attributes).

    ``num_classes`` includes the background (torchvision's convention). ``min_size``/``max_size`` go to
    torchvision's ``GeneralizedRCNNTransform`` (a tuple of ``min_size`` = multi-scale training, one drawn per
    batch in train mode, the last in eval). ``pretrained_backbone``: a classification state dict (file or
    mapping) in torchvision's ResNet layout, loaded as ``load_detector_backbone_weights`` does.
    ``trainable_layers`` (0–5) counts ResNet stages from ``layer4`` down, 5 = all. ``norm`` "bn" (default,
    see the module docstring), "frozen" (``FrozenBatchNorm2d``) or "bn_eval" (mmdet's
    ``norm_eval``: running statistics always, trainable affine); both need pretrained weights before training.
    ``anchor_scale`` multiplies torchvision's default anchor sizes (Faster R-CNN 32–512, RetinaNet 32–512 with 3
    octave scales; FCOS has point anchors and ignores it): small images with small objects need e.g. 0.5, or
    the RPN finds no positive anchor for most objects.
    RetinaNet only: ``head_norm="gn"`` puts GroupNorm(32) after each head conv and ``box_loss`` picks
    torchvision's regression loss ("l1" default, "smooth_l1", "giou", "diou", "ciou"); "gn" with "giou" is
    torchvision's ``retinanet_resnet50_fpn_v2`` head. The defaults are the paper's (mmdet) RetinaNet head.
    ``zero_init_residual`` zeroes the last norm's scale in every residual branch (torchvision's ResNet option;
    pretrained weights overwrite it).
    ``detector_kwargs`` go to the torchvision class (e.g. ``box_detections_per_img``, ``score_thresh``).
    Extra attributes: ``family``, ``fpn_levels``, ``fpn_strides``, ``tap_points``.
    """
    _check_name(name)
    spec = DETECTORS[name]
    family = FAMILIES[spec["family"]]
    if num_classes < 2:
        raise UserError(f"num_classes counts the background (torchvision's convention) and must be ≥ 2, "
                        f"got {num_classes}")
    sizes = min_size if isinstance(min_size, tuple) else (min_size,)
    if not sizes or any(int(s) != s or s < 1 for s in sizes) or max_size < max(sizes):
        raise UserError(f"min_size must be positive integers not above max_size, got min_size={min_size!r}, "
                        f"max_size={max_size!r}")
    if not 0 <= trainable_layers <= 5 or int(trainable_layers) != trainable_layers:
        raise UserError(f"trainable_layers must be an integer from 0 to 5 (5 = all ResNet stages), "
                        f"got {trainable_layers!r}")
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    norm_layer = {"bn": nn.BatchNorm2d, "frozen": misc_nn_ops.FrozenBatchNorm2d, "bn_eval": RunningStatisticsNorm}[norm]
    resnet = _RESNETS[spec["backbone"]](weights=None, norm_layer=norm_layer, zero_init_residual=zero_init_residual)
    c5 = resnet.inplanes  # 2048 after construction
    extra = {None: LastLevelMaxPool(), "c5": LastLevelP6P7(c5, FPN_CHANNELS),
             "p5": LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS)}[family["p6_from"]]
    backbone = _resnet_fpn_extractor(resnet, int(trainable_layers), list(family["stages"]), extra)
    if not anchor_scale > 0:
        raise UserError(f"anchor_scale must be positive, got {anchor_scale!r}")
    if anchor_scale != 1.0 and spec["family"] != "fcos":
        key = "rpn_anchor_generator" if spec["family"] == "faster_rcnn" else "anchor_generator"
        detector_kwargs[key] = _scaled_anchors(spec["family"], anchor_scale)
    detector_kwargs |= _retinanet_head(spec["family"], num_classes, head_norm, box_loss, detector_kwargs)
    model = _CLASSES[spec["family"]](backbone, num_classes, min_size=sizes, max_size=max_size, **detector_kwargs)
    model.family = spec["family"]
    model.fpn_levels = family["levels"]
    model.fpn_strides = family["strides"]
    model.tap_points = _tap_points(spec["family"])
    if pretrained_backbone is not None:
        load_detector_backbone_weights(model, pretrained_backbone)
    return model


def _scaled_anchors(family: str, scale: float) -> AnchorGenerator:
    """torchvision's default anchor generator of `family` with every size multiplied by `scale`."""
    bases = (32, 64, 128, 256, 512)
    octaves = (1.0,) if family == "faster_rcnn" else (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # RetinaNet: 3 scales
    sizes = tuple(tuple(max(1, int(b * o * scale)) for o in octaves) for b in bases)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(bases))


def _retinanet_head(family: str, num_classes: int, head_norm: str, box_loss: str,
                    kwargs: Mapping[str, Any]) -> dict[str, nn.Module]:
    """``{"head": RetinaNetHead}`` for a non-default RetinaNet head, else ``{}``; other families reject the options."""
    if head_norm not in HEAD_NORMS:
        raise UserError(f"unknown head_norm {head_norm!r}; valid: {', '.join(HEAD_NORMS)}")
    if box_loss not in BOX_LOSSES:
        raise UserError(f"unknown box_loss {box_loss!r}; valid: {', '.join(BOX_LOSSES)}")
    if (head_norm, box_loss) == ("none", "l1"):
        return {}
    if family != "retinanet":
        raise UserError(f"head_norm and box_loss are RetinaNet options; {family} has its own head "
                        "(FCOS's already uses GroupNorm)")
    anchors = kwargs.get("anchor_generator") or _scaled_anchors(family, 1.0)
    norm = partial(nn.GroupNorm, 32) if head_norm == "gn" else None
    head = RetinaNetHead(FPN_CHANNELS, anchors.num_anchors_per_location()[0], num_classes, norm_layer=norm)
    head.regression_head._loss_type = box_loss  # torchvision's switch (retinanet_resnet50_fpn_v2 sets "giou")
    return {"head": head}


def _tap_points(family: str) -> dict[str, str]:
    levels = FAMILIES[family]["levels"]
    points = {"fpn": "backbone"}
    points |= {f"fpn_{i}": f"backbone:{key}" for i, key in enumerate(levels)}
    lateral = len(FAMILIES[family]["stages"])
    points |= {f"fpn_out_{i}": f"backbone.fpn.layer_blocks.{i}.0" for i in range(lateral)}
    if FAMILIES[family]["p6_from"] is not None:
        points |= {f"fpn_out_{lateral}": "backbone.fpn.extra_blocks.p6",
                   f"fpn_out_{lateral + 1}": "backbone.fpn.extra_blocks.p7"}
    return points


# ----------------------------------------------------------------------------------------- weights


def load_detector_backbone_weights(model: nn.Module, source: Path | Mapping[str, torch.Tensor]) -> None:
    """Load classification weights into the detector's ResNet (``model.backbone.body``), strictly.

    ``source`` is a file (read with ``torch.load(weights_only=True)``; a plain state dict or one under
    ``"state_dict"``/``"model"``) or a mapping. Keys may carry ``module.``/``backbone.``/``body.`` prefixes;
    ``fc.*`` is ignored; BN ``num_batches_tracked`` buffers are dropped for FrozenBN and kept as they are
    when missing. The layout is torchvision's (7×7 ``conv1`` stem), e.g. ``torchvision.models.resnet50()``
    or ``benchmark.models.build_backbone("resnet50", stem="torchvision")``. Missing, truncated, foreign or
    mismatching files raise a ``UserError`` naming the problem.
    """
    body = model.backbone.body
    raw = _read_state_dict(Path(source)) if isinstance(source, (str, Path)) else dict(source)
    label = str(source) if isinstance(source, (str, Path)) else "(state dict)"
    loaded: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        for prefix in ("module.", "backbone.", "body."):
            key = key.removeprefix(prefix)
        if not key.startswith("fc."):
            loaded[key] = value
    own = body.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            loaded.setdefault(key, value)
    loaded = {k: v for k, v in loaded.items() if not k.endswith("num_batches_tracked") or k in own}
    missing = [k for k in own if k not in loaded]
    unexpected = [k for k in loaded if k not in own]
    mismatched = [f"{k} {tuple(loaded[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in loaded and loaded[k].shape != v.shape]
    if missing or unexpected or mismatched:
        problems = [f"{what} ({len(keys)}): {_few(keys)}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected),
                                       ("shape mismatch", mismatched)) if keys]
        hint = ("The file has a 3×3 deep (v1s) stem; detectors use torchvision's 7×7 stem: pretrain with "
                "build_backbone(..., stem='torchvision')." if "conv2.weight" in loaded and "conv1.weight" in loaded
                and loaded["conv1.weight"].shape[-1] == 3 else
                f"Use weights of the same backbone architecture ({getattr(model, 'family', '')} backbones: "
                f"{', '.join(sorted(set(BACKBONE_OF.values())))}) in torchvision's layout.")
        raise UserError(f"backbone weights {label} do not fit the detector's {type(body).__name__} "
                        f"({len(own)} keys): {'; '.join(problems)}. {hint}")
    body.load_state_dict(loaded, strict=True)


# ------------------------------------------------------------------------------ features and losses


def _family_of(model: nn.Module) -> str:
    if isinstance(model, GeneralizedRCNN):
        return "faster_rcnn"
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, FCOS):
        return "fcos"
    raise UserError(f"{type(model).__name__} is not a torchvision Faster R-CNN, RetinaNet or FCOS detector")


def detector_features(
    model: nn.Module,
    images: Sequence[torch.Tensor] | torch.Tensor | ImageList,
    targets: list[dict[str, torch.Tensor]] | None = None,
) -> tuple[ImageList, list[dict[str, torch.Tensor]] | None, OrderedDict[str, torch.Tensor]]:
    """Run ``model.transform`` (unless ``images`` already is an ``ImageList``) and ``model.backbone`` once.

    Returns ``(images, targets, features)``: the resized/normalised/padded batch, the targets with boxes
    rescaled to it (``None`` stays ``None``; targets pass through unchanged with an ``ImageList``) and the
    FPN levels (an ``OrderedDict`` keyed as ``model.fpn_levels``). Modes are left as they are; hooks on
    ``backbone`` or its children fire. As in ``model.forward``, the train-mode transform draws the scale of
    a multi-scale ``min_size`` from torch's RNG.
    """
    _family_of(model)
    if not isinstance(images, ImageList):
        if targets is not None and len(targets) != len(images):
            raise UserError(f"{len(images)} images but {len(targets)} targets")
        images, targets = model.transform(list(images), targets)
        for index, target in enumerate(targets or []):
            boxes = target["boxes"]
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise UserError(f"target {index}: boxes must be an N×4 tensor (x1, y1, x2, y2), got "
                                f"{tuple(boxes.shape)}")
            bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if bad.any():
                raise UserError(f"target {index}: box {boxes[bad][0].tolist()} has no positive width and height "
                                "(boxes are x1, y1, x2, y2 in pixels)")
    features = model.backbone(images.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    return images, targets, features


@contextlib.contextmanager
def _train_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (and their children) in train mode, then restore every submodule's own mode."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.train()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def detector_losses_from_features(
    model: nn.Module,
    images: ImageList,
    features: Mapping[str, torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The detector's task losses computed from given FPN ``features`` (the rest of ``model.forward``).

    Faster R-CNN: ``rpn`` then ``roi_heads`` (both temporarily in train mode, so proposal numbers and the
    random fg/bg samplers are the training ones; seed torch for reproducibility). RetinaNet: ``head`` +
    ``anchor_generator`` + ``compute_loss``; FCOS: the same plus the per-level anchor counts. Returns the
    same keys, in the same order, as ``model(images, targets)`` in train mode, and equal values when
    ``features`` are the model's own (same seed). ``images``/``targets`` come from ``detector_features``.
    """
    family = _family_of(model)
    if targets is None:
        raise UserError("detector losses need targets (boxes and labels per image)")
    levels = getattr(model, "fpn_levels", None)
    if levels is not None and tuple(features) != tuple(levels):
        raise UserError(f"mismatched FPN levels: the {type(model).__name__} expects {list(levels)}, "
                        f"got {list(features)}")
    if family == "faster_rcnn":
        with _train_mode(model.rpn, model.roi_heads):
            proposals, proposal_losses = model.rpn(images, features, targets)
            _, detector_losses = model.roi_heads(features, proposals, images.image_sizes, targets)
        return {**detector_losses, **proposal_losses}
    maps = list(features.values())
    head_outputs = model.head(maps)
    anchors = model.anchor_generator(images, maps)
    if family == "retinanet":
        return model.compute_loss(targets, head_outputs, anchors)
    return model.compute_loss(targets, head_outputs, anchors, [m.size(2) * m.size(3) for m in maps])


# ------------------------------------------------------------------------------------- complexity


class Complexity(NamedTuple):
    params_m: float
    gflops: float


class _DenseForward(nn.Module):
    """Backbone + FPN + dense heads on one image; Faster adds its box head on ``rois`` pooled RoIs.

    Leaves out the transform, anchors, box decoding, NMS and RoIAlign (no multiply-adds, data-dependent),
    like mmdet's ``forward_dummy`` that mmdet's ``get_flops.py`` counts (1000 RoIs for two-stage models).
    """

    def __init__(self, model: nn.Module, rois: int) -> None:
        super().__init__()
        self.model = model
        self.rois = rois

    def forward(self, x: torch.Tensor) -> Any:
        features = self.model.backbone(x)
        maps = list(features.values())
        if not isinstance(self.model, GeneralizedRCNN):
            return self.model.head(maps)
        objectness = self.model.rpn.head(maps)
        heads = self.model.roi_heads
        pooled = x.new_zeros(self.rois, self.model.backbone.out_channels, *heads.box_roi_pool.output_size)
        return objectness, heads.box_predictor(heads.box_head(pooled))


def detector_complexity(
    name: str,
    height: int = 800,
    width: int = 1333,
    num_classes: int = 81,
    unit: Unit = "mac",
    rois: int = 1000,
    **build_kwargs: Any,
) -> Complexity:
    """Parameters (M) and G(FL)OPs of detector ``name`` on one ``3×height×width`` input, on the meta device.

    Params: every parameter of the model (``count_params_m``; BN affine included, FrozenBN has none).
    FLOPs: ``count_gflops`` of backbone + FPN + heads at exactly ``height×width`` (the transform, which
    resizes and pads to /32, is skipped: pass the padded size you mean), plus Faster R-CNN's box head on
    ``rois`` RoIs. Default ``unit="mac"`` is what mmcv's counter (the usual detection "GFLOPs") reports;
    ``"paper"`` counts convs only (not the box head's linear layers). ``num_classes`` 81 = COCO + background.
    """
    if height < 1 or width < 1 or rois < 0:
        raise UserError(f"height, width must be positive and rois ≥ 0, got {height}, {width}, {rois}")
    build_kwargs.setdefault("min_size", min(height, width))
    build_kwargs.setdefault("max_size", max(height, width))
    with torch.device("meta"):
        model = build_detector(name, num_classes, **build_kwargs)
    return Complexity(count_params_m(model), count_gflops(_DenseForward(model.eval(), rois), height, width, unit))
