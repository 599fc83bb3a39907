"""Backbone pretraining: real ImageNet weights from a user file, else a cached stand-in on embedded data.

The stand-in trains the backbone (output stride 32) with a linear head to recognise which classes appear
in small patches of procedurally generated scenes that are disjoint from the train and val images
(multi-label BCE): street patches over the 19 Cityscapes classes for segmentation, object-centred crops
over the 8 categories for detection (ImageNet is object-centric; detectors learn their heads far faster on
a backbone that already tells the objects apart). It is *not* ImageNet: it gives the backbone filters of
this domain, so that "pretrained vs scratch" means something on the embedded default.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import Preset, PretrainConfig, semantic, to_dict
from benchmark.data.cityscapes import normalize_images
from benchmark.data.pretrain_set import make_object_crop_set, make_patch_classification_set
from benchmark.data.synthetic import GENERATOR_VERSION
from benchmark.engine import dist
from benchmark.engine.cache import cache_entry
from benchmark.models import build_backbone, load_backbone_weights
from benchmark.progress import progress


@dataclass(frozen=True)
class Standin:
    """What a task's stand-in pretraining builds: the ResNet stem of its models and its patch set."""

    stem: str
    patches: Callable[[int, int, int, int, int], tuple[np.ndarray, np.ndarray]]


SEGMENTATION_STANDIN = Standin("deep", make_patch_classification_set)
DETECTION_STANDIN = Standin("torchvision", make_object_crop_set)


def file_digest(path: Path) -> str:
    """Short sha1 of a file's bytes (keys of runs that use user-given weights)."""
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _zero_init_residual(backbone: str, preset: Preset) -> bool:
    """The preset's ``model.zero_init_residual``, which ResNets and ResNeXts take (MobileNetV2 has no residual BN)."""
    return preset.model.zero_init_residual and backbone.startswith(("resnet", "resnext"))


def pretrain_key(backbone: str, preset: Preset, standin: Standin = SEGMENTATION_STANDIN) -> str:
    """Cache key of a stand-in; the segmentation one keeps its original key (stem and patch set implied)."""
    parts = (backbone, semantic(to_dict(preset.pretrain)), preset.data.height, preset.data.width, GENERATOR_VERSION)
    if _zero_init_residual(backbone, preset):
        parts = (*parts, "zero_init_residual")
    blob = repr(parts if standin == SEGMENTATION_STANDIN else (*parts, standin.stem, standin.patches.__name__))
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def backbone_source(backbone: str, preset: Preset, user_weights: dict[str, Path],
                    standin: Standin = SEGMENTATION_STANDIN) -> str:
    """A short string naming the pretrained weights a run starts from (part of its key)."""
    if backbone in user_weights:
        return f"user:{user_weights[backbone].name}:{file_digest(user_weights[backbone])}"
    return f"embedded-pretrain:{pretrain_key(backbone, preset, standin)}"


def pretrained_backbone_state(backbone: str, preset: Preset, cache_dir: Path, device: torch.device,
                              user_weights: dict[str, Path],
                              standin: Standin = SEGMENTATION_STANDIN) -> Path | dict[str, torch.Tensor]:
    """User weights file if given, else the cached (or freshly trained) stand-in state dict."""
    if backbone in user_weights:
        return user_weights[backbone]
    entry = cache_entry(cache_dir, "pretrained", backbone, pretrain_key(backbone, preset, standin))
    if not entry.exists() and dist.is_main():
        t0 = time.perf_counter()
        state, metrics = train_standin(backbone, preset, device, standin)
        entry.store(state, {"backbone": backbone, "pretrain": to_dict(preset.pretrain),
                            "wall_s": round(time.perf_counter() - t0, 1), **metrics})
    dist.barrier()
    return entry.state_dict()


def _standin_lr_factor(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up over ``cfg.warmup_steps``, times cosine decay from 1 to 0 over ``cfg.steps``."""
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return warmup * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))


def train_standin(backbone_name: str, preset: Preset, device: torch.device,
                  standin: Standin = SEGMENTATION_STANDIN) -> tuple[dict, dict]:
    """Multi-label patch classification; returns the backbone state dict and held-out metrics."""
    cfg: PretrainConfig = preset.pretrain
    patches, targets = standin.patches(cfg.n_scenes, preset.data.height, preset.data.width, cfg.patch,
                                       preset.data.seed)
    images = normalize_images(torch.from_numpy(patches))
    labels = torch.from_numpy(targets)
    n_val = max(1, len(images) // 10)
    train_x, train_y, val_x, val_y = images[n_val:], labels[n_val:], images[:n_val], labels[:n_val]
    backbone = build_backbone(backbone_name, output_stride=32, stem=standin.stem,
                              zero_init_residual=_zero_init_residual(backbone_name, preset))
    model = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(backbone.out_channels, labels.shape[1])).to(device)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_standin_lr_factor, cfg))
    generator = torch.Generator().manual_seed(preset.data.seed)
    torch.manual_seed(preset.data.seed)
    model.train()
    for _ in progress(range(cfg.steps), desc=f"pretrain {backbone_name}"):
        index = torch.randint(len(train_x), (cfg.batch_size,), generator=generator)
        x = train_x[index]
        flip = torch.rand(cfg.batch_size, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(device)
        loss = F.binary_cross_entropy_with_logits(model(x), train_y[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(val_x[i : i + 64].to(device)).cpu() for i in range(0, n_val, 64)]) > 0
    exact = (predicted == val_y.bool()).float().mean().item()
    majority = ((train_y.mean(0) > 0.5) == val_y.bool()).float().mean().item()  # what no learning scores
    return backbone.state_dict(), {"heldout_label_accuracy": round(100 * exact, 2),
                                   "heldout_majority_accuracy": round(100 * majority, 2),
                                   "heldout_patches": n_val, "train_patches": len(train_x)}


def load_into(segmentor: nn.Module, source: Path | dict[str, torch.Tensor]) -> None:
    """Load pretrained weights (a user file or a cached state dict) into a segmentor's backbone."""
    if isinstance(source, Path):
        load_backbone_weights(segmentor, source)
    else:
        segmentor.backbone.load_state_dict(source, strict=True)
