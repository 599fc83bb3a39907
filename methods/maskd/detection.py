"""MasKD for object detection (paper §4, §5.1, Table 4; kd_reference §1.1–1.3, §1.5, §8) as method ``maskd_det``.

Two phases, as in the official code (hunto/MasKD ``mmdetection/{maskd.py, maskd_hook.py}`` for the tokens,
``mmrazor/mmrazor/models/losses/maskd.py`` ``MasKDLoss`` + ``configs/distill/maskd/*`` for the distillation):

1. **Token learning** (``stage``, cached by the engine). The teacher is frozen (eval-mode BN, no gradients;
   official ``MasKDHook._fix_weights`` + ``before_train_iter``). Each FPN level ``l`` has its own receptive tokens
   E_l (T×C, N(0, 0.01)) and, by default, its own mask weighting module (``MaskWeighting``; official
   ``MaskModule(weight_mask=True)`` in every ``mmdetection/configs/maskd/*`` hook). The level output F is replaced
   by the masked feature (paper eq. 7; official ``MaskModule.forward_train``)

       F̂ = Σ_k w_k (M_k ⊙ F),    M_k = σ(e_k · F)   (with weighting off: F̂ = Σ_k M_k ⊙ F, a sum, not a mean)

   and the frozen teacher's **own task loss** is computed once on the masked levels: the tokens are combined in
   feature space before the detector head, there is no per-token task loss to combine. Each level adds its Dice
   diversity (``dice_diversity``, the code's off-diagonal mean), so L_token = L_task + μ Σ_levels L_div (paper
   eq. 6, μ = 1; the hook adds one ``mask_div_loss_<i>`` per level). Only tokens and weighting modules train.
   Official token optimizer [kd_reference §1.2]: Faster R-CNN R101 SGD lr 0.1, momentum 0.9, wd 1e-4 (inherited
   from the base ``faster_rcnn_r50_fpn_2x`` config, flagged there as a probable config bug); RetinaNet/FCOS
   Adam lr 0.01, wd 1e-3; all 2000 iterations, cosine to 1e-6, batch 16. The ``stage_*`` options override the
   preset's ``tokens`` schedule: the defaults are the Faster R-CNN values, and the RetinaNet/FCOS table blocks
   set Adam (``configs/methods/maskd_det.yaml``); the stage length and batch stay the preset's.
   The teacher's transform runs in train mode during token learning (a multi-scale ``min_size`` draws a scale as
   the official training pipeline does); its backbone BN stays in eval mode.

   The stage model's eval-mode forward returns the teacher's detections on levels multiplied by the per-level
   union (max over tokens) of the masks (``stage_eval: union``): **our diagnostic** "masked-teacher AP", not a
   paper number. ``stage_eval: official`` evaluates the training-time F̂ instead, which is what the official hook
   does at test time and what the paper's footnote (Cascade X101: 45.6 → 45.4 AP masked) measures.

2. **Distillation** (``forward``) on every FPN level both detectors publish (``fpn_0`` … ``fpn_4``: P2–P6 for
   Faster R-CNN with its max-pooled level, P3–P7 for RetinaNet/FCOS). Per level a 1×1 conv with bias (PyTorch
   default init) adapts the student, **always**, as the official ``align_module`` (``conv2d``, ``num_modules=5``,
   256 → 256). Tokens and weighting modules come from the stage and are frozen (official ``lr_mult=0`` on
   ``distiller.losses``; here they have no gradient at all). Teacher masks M^t = σ(E F^t) are detached; with
   ``weighting`` the per-image weights w = MaskWeighting(F^t) (N×T, softmax over tokens) give eq. 8/9,
   otherwise eq. 2 (mean over tokens); see ``masked_feature_loss`` (Σ M² (φ(F^s) − F^t)² / Σ M, mean over C, no
   epsilon as the detection code). After ``custom_warmup`` optimizer steps (``customization``), M^r = M^t ⊙ M^s
   with M^s = σ(E φ(F^s)) under no_grad replaces M in numerator and denominator (eq. 9); w still comes from F^t.
   Masks, weights, the loss and L_div are computed in float32 even under AMP (the official code trains in fp32;
   fp16 sums over P2's ~67k pixels at COCO size can overflow). The step counter is the registered buffer
   ``custom_steps`` (bumped in ``after_step``), so it is saved in the run checkpoint and survives a resume (the
   official ``_iter`` is a plain attribute bumped per loss call).
   L = λ1 Σ_levels mean_n Σ_k w_{n,k} L_{n,k}; λ1 = ``weight`` (Faster R-CNN 1, RetinaNet 7 in both configs but
   5 in paper A.5, FCOS 10, RepPoints 10).

**Regression KD** (paper eq. 10; kd_reference §1.3 "Regression KD", §8.5), option ``reg_kd`` (default on, as
the official Faster R-CNN and RetinaNet configs ``mmrazor/configs/distill/maskd/{fpn_r101-fpn_r50,
retinanet_r101-retinanet_r50}_coco.py``), term ``loss_maskd_reg`` = λ2 · L_reg with λ2 = ``reg_weight`` (1).
Classification KD is left out, as in the paper. Table 4 and Table 7 are feature KD only
(kd_reference §1.5), so their rows need ``reg_kd: false``.

* Two-stage (Faster R-CNN). The teacher's box head runs on the **student's** sampled RoIs (the 512 per image,
  positives and negatives, GT boxes added, that the student's ``roi_heads`` sampled this step): official
  ``modules_with_student_inputs`` copies the student's ``bbox_roi_extractor`` input 1 into the teacher's. Here
  the student's ``roi_heads.box_roi_pool`` input 1 is tapped (``reg_rois``, packed K×5 in RoI format) and so is
  its ``box_predictor`` output 1 (``reg_deltas``, K×4C encoded deltas); the method runs the teacher's
  ``box_roi_pool`` → ``box_head`` → ``box_predictor`` on the teacher's tapped FPN levels under no_grad.
  L_reg = SmoothL1(β = 1, mean over elements) between the two delta tensors (official ``mmdet.SmoothL1Loss``
  on ``roi_head.bbox_head.fc_reg``). Layouts: mmdet's class-specific ``fc_reg`` has 4 outputs per
  *foreground* class (80 × 4) and compares them all; torchvision's predictor has 4 per class *including the
  background* (C = K + 1), whose deltas no loss ever trains. Its first 4 columns are dropped, so the compared
  tensor is exactly mmdet's (K × 4 per RoI) and the mean runs over its elements. Both encodings scale deltas the
  same way (torchvision ``BoxCoder`` weights 10, 10, 5, 5 = mmdet ``target_stds`` 0.1, 0.1, 0.2, 0.2).
* RetinaNet. L1 between the student's and the teacher's regression-head outputs (official ``mmdet.L1Loss`` on
  ``bbox_head.retina_reg``). mmrazor records that conv once per level and adds one mean loss per call
  (``SingleTeacherDistiller.compute_distill_loss``: ``loss_kd_reg_head.<i>``), so L_reg = Σ_levels mean |s_l − t_l|,
  each mean over the level's N·H_l·W_l·A·4 elements. torchvision's ``RetinaNetRegressionHead`` returns one
  N×(Σ_l H_l W_l A)×4 tensor, level after level, so it is split by the per-level counts H_l·W_l·A_l (FPN level
  sizes × ``anchor_generator.num_anchors_per_location()``). The student's output is tapped as ``head`` →
  ``bbox_regression`` (``reg_dense``); the teacher's regression head is run by the method on the teacher's
  tapped FPN levels, so the engine's teacher forward stays transform + backbone + FPN and no teacher head runs
  unless regression KD needs it (and then only the regression branch, never the classification one).
* FCOS: the official config has no regression KD (although eq. 10 is stated generally), so ``reg_kd`` on with an
  FCOS teacher is refused, as is a teacher with no regression branch the method can run.

Design. The method never sees the student module, so its side comes through taps; the teacher module is first
seen in ``stage(teacher)``, which keeps a reference outside the module tree (not in the state dict, not trained,
moved by the engine's ``DistillationLoss`` that holds the same teacher) and checks the pair. The student taps are
optional taps with default paths (``methods.taps``: ``name=path?``): a Faster R-CNN fires ``reg_rois`` and
``reg_deltas``, a RetinaNet/FCOS ``reg_dense``; ``bind`` learns from the probed shapes which kind it got. With
none bound (``bind`` called with level shapes only) there is no regression term, and a step in which the
student's heads did not run (a backbone-only forward; never in training) has none either.

Table 4 rows as options (the first four also set ``weighting: false, customization: false``): random tokens =
``masks: random``; L_div only = ``masks: diversity`` (or ``task_loss: false``); L_task only = ``div_weight: 0``;
L_div + L_task = nothing more; + mask weighting = ``customization: false`` alone; + customization = defaults.
The weighting switch acts on the distillation only (the paper lists it under "Feature distillation"), so these
rows share one cached token stage; ``weighting`` needs weights that were trained, i.e. learned masks with
the task loss and ``stage_weighting``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

from benchmark.engine.task_loss import TaskLoss
from benchmark.errors import UserError
from benchmark.models.detectors import detector_features, detector_losses_from_features
from methods.base import Batch, Distiller, HoldsTeacher, Stage
from methods.baselines.detection import FPN_TAPS, _check_runtime_sizes, fpn_levels
from methods.maskd.loss import masked_feature_loss
from methods.maskd.masks import dice_diversity, init_tokens, token_masks
from methods.maskd.method import TOKEN_SEED
from methods.maskd.weighting import MaskWeighting
from methods.registry import register_method

METHOD = "maskd_det"
MASK_SOURCES = ("learned", "diversity", "random")
STAGE_EVALS = ("union", "official")
# Regression KD taps on the student (optional, default paths; see methods.taps): two-stage RoIs and deltas, or the
# dense (one-stage) regression output.
REG_ROIS, REG_DELTAS, REG_DENSE = "reg_rois", "reg_deltas", "reg_dense"
REG_TAPS = (f"{REG_ROIS}=roi_heads.box_roi_pool<1?", f"{REG_DELTAS}=roi_heads.box_predictor:1?",
            f"{REG_DENSE}=head:bbox_regression?")
NO_REG_KD = "set reg_kd: false"


def _fp32_masks(feat: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """σ(E·F) in float32 even under autocast: fp16 sigmoids underflow to 0 and Σ_p M would divide by zero."""
    with torch.autocast(feat.device.type, enabled=False):
        return token_masks(feat.float(), tokens.float())


def combine_masks(masks: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """N×1×H×W factor of the token-learning masked feature F̂ = Σ_k w_k (M_k ⊙ F) = F ⊙ Σ_k w_k M_k.

    ``masks`` N×T×H×W, ``weights`` N×T (each row summing to 1) or None for the unweighted official sum Σ_k M_k
    (``MaskModule.forward_train`` with ``weight_mask=False``: ``out.sum(1)``, not a mean).
    """
    if weights is None:
        return masks.sum(1, keepdim=True)
    return torch.einsum("nthw,nt->nhw", masks, weights.to(masks.dtype)).unsqueeze(1)


class TokenSet(nn.Module):
    """One FPN level's receptive tokens (``tokens``, T×C) and, optionally, its mask weighting module.

    Initialised from ``seed`` only (tokens N(0, 0.01) as ``init_tokens``; weighting as ``MaskWeighting``), without
    touching the global RNG, so a stage's start and the ``random`` variant are the same tokens in every run.
    """

    def __init__(self, channels: int, num_tokens: int, weighting: bool, seed: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(init_tokens(num_tokens, channels, torch.Generator().manual_seed(seed)))
        self.weighting: MaskWeighting | None = None
        if weighting:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.weighting = MaskWeighting(channels, num_tokens)

    def masks(self, feat: torch.Tensor) -> torch.Tensor:
        """N×T×H×W masks σ(E·F) (float32)."""
        return _fp32_masks(feat, self.tokens)

    def weights(self, feat: torch.Tensor) -> torch.Tensor | None:
        """N×T per-image token weights (float32), or None without a weighting module."""
        return None if self.weighting is None else self.weighting(feat).float()


def token_sets(levels: list[str], channels: list[int], num_tokens: int, weighting: bool) -> nn.ModuleDict:
    """One ``TokenSet`` per level tap, seeded ``TOKEN_SEED + level index`` (same in the stage and the distiller)."""
    return nn.ModuleDict({level: TokenSet(c, num_tokens, weighting, TOKEN_SEED + i)
                          for i, (level, c) in enumerate(zip(levels, channels, strict=True))})


def _level_keys(teacher: nn.Module, levels: list[str]) -> dict[str, str]:
    """Level tap → key of the teacher backbone's output dict (``tap_points['fpn_i'] = 'backbone:<key>'``)."""
    points = getattr(teacher, "tap_points", {})
    keys = {}
    for level in levels:
        module, _, key = points.get(level, "").partition(":")
        if module != "backbone" or not key:
            raise UserError(f"method '{METHOD}': the token stage masks the teacher's FPN outputs by key, but the "
                            f"teacher's tap {level!r} is {points.get(level)!r}, not 'backbone:<level key>'; use a "
                            "detector from benchmark.models.detectors (no tap overrides for the FPN levels).")
        keys[level] = key
    return keys


@contextmanager
def _transform_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Run the detector's transform (resize/normalise/pad; no BN) in ``training`` mode, then restore it."""
    transform = model.transform
    saved = transform.training
    transform.training = training
    try:
        yield
    finally:
        transform.training = saved


class MaskedDetectorTeacher(HoldsTeacher):
    """The frozen teacher detector with token-masked FPN levels; its parameters are the token sets only.

    Train mode: ``forward(images, targets)`` → ``{"masks": {level: N×T×H×W}, "task": the teacher's loss dict on
    F̂ = Σ_k w_k (M_k ⊙ F)}`` (``"task"`` only when ``task_loss``). Eval mode: ``forward(images)`` → the teacher's
    torchvision detections on levels multiplied by the union max_k M_k (``eval_masks="union"``, our diagnostic)
    or by the training-time combination (``"official"``).
    """

    def __init__(self, teacher: nn.Module, levels: list[str], channels: list[int], num_tokens: int,
                 weighting: bool = True, task_loss: bool = True, eval_masks: str = "union") -> None:
        super().__init__(teacher)
        if eval_masks not in STAGE_EVALS:
            raise UserError(f"method '{METHOD}': stage_eval={eval_masks!r} is not one of {STAGE_EVALS}.")
        self.level_keys = _level_keys(self.teacher, levels)
        self.token_sets = token_sets(levels, channels, num_tokens, weighting)
        self.task_loss, self.eval_masks = task_loss, eval_masks

    def masked_features(self, features: OrderedDict[str, torch.Tensor], union: bool = False
                        ) -> tuple[OrderedDict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(levels with F replaced by F ⊙ combine_masks(M, w) — or F ⊙ max_k M_k if ``union`` —, masks per level)."""
        masked, masks = OrderedDict(features), {}
        for level, key in self.level_keys.items():
            feat, tokens = features[key], self.token_sets[level]
            m = tokens.masks(feat)
            factor = m.amax(1, keepdim=True) if union else combine_masks(m, tokens.weights(feat))
            masked[key] = feat * factor.to(feat.dtype)
            masks[level] = m
        return masked, masks

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        if not self.training:
            return self._detect(images)
        if targets is None:
            raise UserError(f"method '{METHOD}': the token stage trains on the teacher's task loss and needs targets")
        with torch.no_grad(), _transform_mode(self.teacher, True):
            image_list, targets, features = detector_features(self.teacher, images, targets)
        masked, masks = self.masked_features(features)
        outputs: dict[str, Any] = {"masks": masks}
        if self.task_loss:
            outputs["task"] = detector_losses_from_features(self.teacher, image_list, masked, targets)
        return outputs

    @torch.no_grad()
    def _detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        union = self.eval_masks == "union"

        def mask_levels(_module: nn.Module, _inputs: Any, output: OrderedDict[str, torch.Tensor]) -> Any:
            return self.masked_features(output, union=union)[0]

        handle = self.teacher.backbone.register_forward_hook(mask_levels)
        try:
            return self.teacher(list(images))
        finally:
            handle.remove()


class TokenLearningDetectionLoss(TaskLoss):
    """L_token (paper eq. 6): the teacher's own losses on the masked levels (``loss_task_<name>``) plus
    ``loss_div`` = div_weight · Σ_levels L_div (official: one diversity term per FPN level, μ = 1)."""

    def __init__(self, div_weight: float = 1.0) -> None:
        super().__init__()
        self.div_weight = div_weight

    def student_outputs(self, model: nn.Module, images: Any, labels: Any) -> Any:
        return model(images, labels)

    def forward(self, labels: Any, outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        losses = {f"loss_task_{name.removeprefix('loss_')}": value
                  for name, value in outputs.get("task", {}).items()}
        masks = list(outputs["masks"].values())
        with torch.autocast(masks[0].device.type, enabled=False):  # fp32 Gram sums (masks are fp32 already)
            losses["loss_div"] = self.div_weight * sum(dice_diversity(m.float()) for m in masks)
        return losses


@register_method(METHOD)
class MasKDDetection(Distiller):
    """Masked feature distillation on every FPN level with learned receptive tokens (see the module docstring)."""

    optional_taps = FPN_TAPS

    @dataclass(frozen=True)
    class Options:
        num_tokens: int = 6  # T = 6 for every detector (paper §5.1, all configs)
        weight: float = 1.0  # λ1: Faster R-CNN 1; RetinaNet 7 (configs; paper A.5: 5); FCOS 10
        masks: str = "learned"  # learned | diversity (L_div only) | random (untrained N(0, 0.01) tokens)
        task_loss: bool = True  # False = tokens learned with L_div only (same as masks: diversity)
        div_weight: float = 1.0  # μ in eq. 6; 0 = "L_task only"
        weighting: bool = True  # eq. 8/9 per-image token weights (False: eq. 2, mean over tokens)
        customization: bool = True  # M^r = M^t ⊙ M^s after the warm-up (eq. 9)
        custom_warmup: int = 7330  # optimizer steps before customising (Faster R101 → R50 config)
        stage_weighting: bool = True  # train the weighting module in the token stage (official hooks: True)
        stage_eval: str = "union"  # masked-teacher diagnostic: union (max over tokens) | official (F̂)
        # Token-stage optimizer overrides of the preset's `tokens` schedule (None = the preset's value).
        stage_lr: float | None = 0.1
        stage_momentum: float | None = 0.9
        stage_weight_decay: float | None = 1e-4
        stage_lr_floor: float | None = 1e-6
        stage_optimizer: str | None = "sgd"  # sgd | adam | adamw (official RetinaNet/FCOS/Cascade: adam)
        stage_lr_decay: str | None = "cosine"  # official: CosineAnnealing to min_lr 1e-6
        # Regression KD (eq. 10): Faster R-CNN and RetinaNet configs have it (λ2 = 1); FCOS has none (set false).
        reg_kd: bool = True
        reg_weight: float = 1.0  # λ2

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        _validate(options)
        self.levels: list[str] = []
        self.channels: list[int] = []
        self.adapters = nn.ModuleList()
        self.token_sets = nn.ModuleDict()
        self.register_buffer("custom_steps", torch.zeros((), dtype=torch.long))
        self._steps: int | None = None  # Python mirror of custom_steps: no device sync per step
        if options.reg_kd:
            self.student_taps = REG_TAPS
        self.reg_kind: str | None = None  # "two_stage" | "dense" | None (no regression taps bound)
        self._reg_shapes: dict[str, torch.Size] = {}
        self._level_sizes: list[tuple[int, int]] = []  # probed FPN level sizes (dense per-level counts)
        self._pool_keys: dict[str, str] = {}  # level tap → teacher FPN key (two-stage RoI pooling)
        self._pool_stride = 0  # stride of the teacher pooler's first level
        self._teacher: list[nn.Module] = []  # the frozen teacher, seen in stage(); a list keeps it unregistered

    # ------------------------------------------------------------------ binding and the token stage
    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        self.levels = fpn_levels(METHOD, FPN_TAPS, student_shapes, teacher_shapes)
        self.channels = [int(teacher_shapes[t][1]) for t in self.levels]
        self.adapters = nn.ModuleList(nn.Conv2d(int(student_shapes[t][1]), c, kernel_size=1)
                                      for t, c in zip(self.levels, self.channels, strict=True))
        # `random` keeps these (the stage's starting point); otherwise `load_stage` overwrites them.
        self.token_sets = token_sets(self.levels, self.channels, self.options.num_tokens, self.options.weighting)
        self.token_sets.requires_grad_(False)
        self.reg_kind, self._reg_shapes = None, {}
        if self.options.reg_kd:
            self._bind_regression(student_shapes)

    def _bind_regression(self, shapes: dict[str, torch.Size]) -> None:
        """Which regression taps the student fired in the engine's probe: two-stage RoIs + deltas, or dense."""
        two_stage = [name for name in (REG_ROIS, REG_DELTAS) if name in shapes]
        if len(two_stage) == 1:
            raise UserError(f"method '{METHOD}': regression KD needs both the student's sampled RoIs and its box "
                            f"deltas, but only {two_stage[0]!r} was recorded; check the taps, or {NO_REG_KD}.")
        if two_stage:
            self.reg_kind = "two_stage"
        elif REG_DENSE in shapes:
            self.reg_kind = "dense"
        self._reg_shapes = {name: shapes[name] for name in (REG_ROIS, REG_DELTAS, REG_DENSE) if name in shapes}
        self._level_sizes = [tuple(shapes[level][-2:]) for level in self.levels]

    def _stage_task(self) -> bool:
        return self.options.masks == "learned" and self.options.task_loss

    def stage(self, teacher: nn.Module) -> Stage | None:
        if not self.levels:
            raise RuntimeError(f"{METHOD}: stage() before bind() (engine bug)")
        self._attach_teacher(teacher)
        o = self.options
        if o.masks == "random":
            return None
        task = self._stage_task()
        weighting = o.stage_weighting and task  # without the task loss nothing trains the weights
        model = MaskedDetectorTeacher(teacher, self.levels, self.channels, o.num_tokens, weighting, task, o.stage_eval)
        overrides = {"lr": o.stage_lr, "momentum": o.stage_momentum, "weight_decay": o.stage_weight_decay,
                     "lr_floor": o.stage_lr_floor, "optimizer": o.stage_optimizer, "lr_decay": o.stage_lr_decay}
        schedule = {key: value for key, value in overrides.items() if value is not None}
        return Stage(
            name="tokens",
            model=model,
            loss=TokenLearningDetectionLoss(o.div_weight),
            schedule=schedule,
            config={"method": METHOD, "levels": list(self.levels), "level_keys": dict(model.level_keys),
                    "channels": list(self.channels), "num_tokens": o.num_tokens, "task_loss": task,
                    "div_weight": o.div_weight, "weighting": weighting, "eval_masks": o.stage_eval,
                    "token_seed": TOKEN_SEED, "transform": "train"},
        )

    def load_stage(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "token_sets."
        own = self.token_sets.state_dict()
        loaded = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        loaded = {k: v for k, v in loaded.items() if k in own or ".weighting." not in k}
        missing = sorted(set(own) - set(loaded))
        unexpected = sorted(set(loaded) - set(own))
        mismatched = [k for k in own if k in loaded and loaded[k].shape != own[k].shape]
        if missing or unexpected or mismatched:
            raise UserError(f"method '{METHOD}': the token stage's state does not fit the bound levels "
                            f"{self.levels} (missing {missing[:4]}, unexpected {unexpected[:4]}, shape mismatch "
                            f"{mismatched[:4]}); delete the stale stage cache entry.")
        self.token_sets.load_state_dict(loaded, strict=True)

    # ------------------------------------------------------------------ customization warm-up counter
    def _step_count(self) -> int:
        if self._steps is None:
            self._steps = int(self.custom_steps)
        return self._steps

    def after_step(self) -> dict[str, float]:
        self._steps = self._step_count() + 1
        self.custom_steps.fill_(self._steps)
        return {}

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._steps = None  # re-read the restored buffer (resume)

    def customizing(self) -> bool:
        """Whether masks are customised in the next forward (eq. 9): warm-up steps done."""
        return self.options.customization and self._step_count() >= self.options.custom_warmup

    # ------------------------------------------------------------------ regression KD: the teacher's heads
    def _attach_teacher(self, teacher: nn.Module) -> None:
        """Keep the frozen teacher (unregistered) for regression KD and check that the pair supports it."""
        self._teacher = [teacher]
        if not self.options.reg_kd:
            return
        name = type(teacher).__name__
        if isinstance(teacher, FCOS):
            raise UserError(f"method '{METHOD}': regression KD is on, but the official FCOS config "
                            "(mmrazor configs/distill/maskd/fcos_r101-fcos_r50_coco.py) has no regression KD "
                            f"(kd_reference §1.3); {NO_REG_KD} for an FCOS pair.")
        if self.reg_kind is None:
            return  # no regression taps bound (level shapes only): nothing to distil
        wanted = {"two_stage": FasterRCNN, "dense": RetinaNet}[self.reg_kind]
        if not isinstance(teacher, wanted):
            want = "a Faster R-CNN box head" if self.reg_kind == "two_stage" else "a RetinaNet regression head"
            raise UserError(f"method '{METHOD}': regression KD is on and the student's regression output needs "
                            f"{want} on the teacher, but the teacher ({name}) has no such regression branch "
                            "(regression KD exists for Faster R-CNN and RetinaNet pairs of one family); "
                            f"{NO_REG_KD}.")
        if self.reg_kind == "two_stage":
            width = teacher.roi_heads.box_predictor.bbox_pred.out_features
            if self._reg_shapes[REG_DELTAS][-1] != width:
                raise UserError(f"method '{METHOD}': the student's box predictor gives "
                                f"{self._reg_shapes[REG_DELTAS][-1]} deltas per RoI but the teacher's {width}; "
                                f"regression KD compares them class by class, so both need the same num_classes.")
            self._pool_keys = _level_keys(teacher, self.levels)
            strides = dict(zip(getattr(teacher, "fpn_levels", ()), getattr(teacher, "fpn_strides", ()), strict=True))
            first = teacher.roi_heads.box_roi_pool.featmap_names[0]
            if first not in strides:
                raise UserError(f"method '{METHOD}': regression KD pools the teacher's FPN level {first!r} but the "
                                f"teacher ({name}) publishes no stride for it (fpn_levels/fpn_strides); use a "
                                "detector from benchmark.models.detectors.")
            self._pool_stride = strides[first]
        else:
            expected = self._dense_counts(teacher, self._level_sizes)
            if self._reg_shapes[REG_DENSE][1] != sum(expected):
                raise UserError(f"method '{METHOD}': the student's regression output has "
                                f"{self._reg_shapes[REG_DENSE][1]} boxes per image but the RetinaNet teacher's head "
                                f"predicts {sum(expected)} on the same levels (anchors per location differ, or the "
                                f"student is an FCOS, which has no regression KD); {NO_REG_KD} or pair RetinaNets.")

    def _teacher_model(self) -> nn.Module:
        if not self._teacher:
            raise RuntimeError(f"{METHOD}: regression KD needs the teacher, which stage(teacher) hands over; "
                               "forward() before stage() (engine bug)")
        return self._teacher[0]

    @staticmethod
    def _dense_counts(teacher: nn.Module, sizes: list[tuple[int, int]]) -> list[int]:
        """Rows per level of torchvision's concatenated regression output: H_l·W_l·A_l."""
        anchors = teacher.anchor_generator.num_anchors_per_location()
        if len(anchors) != len(sizes):
            raise UserError(f"method '{METHOD}': the RetinaNet teacher has anchors for {len(anchors)} levels but "
                            f"{len(sizes)} FPN levels are distilled; regression KD needs every level.")
        return [h * w * a for (h, w), a in zip(sizes, anchors, strict=True)]

    def _two_stage_reg(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        """SmoothL1(β=1, mean) between the student's deltas and the teacher box head's on the student's RoIs."""
        model = self._teacher_model()
        heads = model.roi_heads
        rois, deltas = student[REG_ROIS].detach(), student[REG_DELTAS]
        features = OrderedDict((self._pool_keys[level], teacher[level]) for level in self.levels)
        missing = [key for key in heads.box_roi_pool.featmap_names if key not in features]
        if missing:
            raise UserError(f"method '{METHOD}': the teacher's RoI pooler reads FPN levels {missing} that are not "
                            f"distilled ({list(features)}); regression KD needs them, or {NO_REG_KD}.")
        first = features[heads.box_roi_pool.featmap_names[0]]
        num_images = first.shape[0]
        boxes = [rois[rois[:, 0] == i, 1:] for i in range(num_images)]
        # Only the scale inference of torchvision's pooler reads image shapes (ratio to the feature size, rounded
        # to a power of 2): the padded input size, level size × stride, gives the exact scales.
        image_shapes = [(first.shape[-2] * self._pool_stride, first.shape[-1] * self._pool_stride)] * num_images
        with torch.no_grad():
            target = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, boxes, image_shapes)))[1]
        if target.shape != deltas.shape:
            raise UserError(f"method '{METHOD}': the teacher's box deltas {tuple(target.shape)} do not match the "
                            f"student's {tuple(deltas.shape)} on the same RoIs (different num_classes?).")
        # Drop the background class's 4 deltas (untrained in torchvision; mmdet's fc_reg has no background).
        student_fg, teacher_fg = deltas[:, 4:], target[:, 4:]
        if student_fg.numel() == 0:
            return deltas.sum() * 0.0
        with torch.autocast(deltas.device.type, enabled=False):
            return F.smooth_l1_loss(student_fg.float(), teacher_fg.float(), beta=1.0)

    def _dense_reg(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ_levels mean |s_l − t_l| between the student's and the teacher's RetinaNet regression outputs."""
        model = self._teacher_model()
        prediction = student[REG_DENSE]
        maps = [teacher[level] for level in self.levels]
        with torch.no_grad():
            target = model.head.regression_head(maps)
        if target.shape != prediction.shape:
            raise UserError(f"method '{METHOD}': the teacher's regression output {tuple(target.shape)} does not "
                            f"match the student's {tuple(prediction.shape)}; pair RetinaNets with the same anchors "
                            f"and input size, or {NO_REG_KD}.")
        counts = self._dense_counts(model, [tuple(m.shape[-2:]) for m in maps])
        total = prediction.new_zeros((), dtype=torch.float32)
        with torch.autocast(prediction.device.type, enabled=False):
            for s, t in zip(prediction.split(counts, dim=1), target.split(counts, dim=1), strict=True):
                total = total + F.l1_loss(s.float(), t.float())
        return total

    def regression_loss(self, student: dict[str, torch.Tensor],
                        teacher: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """L_reg (unweighted), or None when no regression taps are bound or the student's heads did not run."""
        if not self.options.reg_kd or self.reg_kind is None:
            return None
        names = (REG_ROIS, REG_DELTAS) if self.reg_kind == "two_stage" else (REG_DENSE,)
        fired = [name in student for name in names]
        if not any(fired):
            return None  # a backbone-only student forward (a training step always runs the heads)
        if not all(fired):
            raise UserError(f"method '{METHOD}': of the regression taps {list(names)} only "
                            f"{[n for n, f in zip(names, fired, strict=True) if f]} fired in this step.")
        return self._two_stage_reg(student, teacher) if self.reg_kind == "two_stage" else self._dense_reg(
            student, teacher)

    # ------------------------------------------------------------------ distillation
    def forward(self, batch: Batch, student: dict[str, torch.Tensor],
                teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.levels:
            raise RuntimeError(f"{METHOD}: forward() before bind() (engine bug)")
        customize = self.customizing()
        total = 0
        for level, adapter in zip(self.levels, self.adapters, strict=True):
            _check_runtime_sizes(METHOD, level, student[level], teacher[level])
            aligned, target = adapter(student[level]), teacher[level].detach()
            tokens = self.token_sets[level]
            with torch.no_grad():
                masks = tokens.masks(target)
                if customize:
                    masks = masks * tokens.masks(aligned)
                weights = tokens.weights(target) if self.options.weighting else None
            with torch.autocast(aligned.device.type, enabled=False):  # fp32 sums (no-op casts in fp32 runs)
                total = total + masked_feature_loss(aligned.float(), target.float(), masks, weights)
        losses = {"loss_maskd": self.options.weight * total}
        reg = self.regression_loss(student, teacher)
        if reg is not None:
            losses["loss_maskd_reg"] = self.options.reg_weight * reg
        return losses


def _validate(o: MasKDDetection.Options) -> None:
    """One clear message for an option combination that cannot be served."""
    if o.masks not in MASK_SOURCES:
        raise UserError(f"method '{METHOD}': option masks={o.masks!r} is not one of {MASK_SOURCES} (GT masks are a "
                        "segmentation ablation; the paper has no detection GT-box variant).")
    if o.stage_eval not in STAGE_EVALS:
        raise UserError(f"method '{METHOD}': option stage_eval={o.stage_eval!r} is not one of {STAGE_EVALS}.")
    if not o.reg_weight >= 0:
        raise UserError(f"method '{METHOD}': reg_weight (λ2) must be ≥ 0, got {o.reg_weight}.")
    if o.num_tokens < 1 or o.custom_warmup < 0:
        raise UserError(f"method '{METHOD}': num_tokens must be ≥ 1 and custom_warmup ≥ 0, got "
                        f"{o.num_tokens} and {o.custom_warmup}.")
    if o.masks != "random" and not (o.masks == "learned" and o.task_loss) and not o.div_weight:
        raise UserError(f"method '{METHOD}': masks={o.masks!r}, task_loss={o.task_loss} and div_weight=0 leave "
                        "nothing to train the tokens; use masks: random for untrained tokens.")
    if o.weighting and not (o.masks == "learned" and o.task_loss and o.stage_weighting):
        raise UserError(f"method '{METHOD}': weighting needs a weighting module trained by the teacher's task loss "
                        f"(masks: learned, task_loss: true, stage_weighting: true), got masks={o.masks!r}, "
                        f"task_loss={o.task_loss}, stage_weighting={o.stage_weighting}; set weighting: false "
                        "(Table 4's random-token and L_div-only rows have no weighting).")
