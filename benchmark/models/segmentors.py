"""Segmentor registry (models as data), the ``Segmentor`` module and backbone-weight loading."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.models.backbones import Backbone, build_backbone
from benchmark.models.heads import aspp_head, fcn_head, psp_head

# head: "aspp" | "psp"; channels: decode-head width (hunto/MasKD values); aux: FCN head on the aux stage.
MODELS: dict[str, dict[str, Any]] = {
    "deeplabv3_r101": {"backbone": "resnet101", "head": "aspp", "channels": 256, "aux": True},
    "deeplabv3_r50": {"backbone": "resnet50", "head": "aspp", "channels": 256, "aux": True},
    "deeplabv3_r18": {"backbone": "resnet18", "head": "aspp", "channels": 128, "aux": True},
    "deeplabv3_mbv2": {"backbone": "mobilenetv2", "head": "aspp", "channels": 128, "aux": False},
    "pspnet_r101": {"backbone": "resnet101", "head": "psp", "channels": 512, "aux": True},
    "pspnet_r18": {"backbone": "resnet18", "head": "psp", "channels": 128, "aux": True},
}
BACKBONE_OF: dict[str, str] = {name: spec["backbone"] for name, spec in MODELS.items()}
PAPER_ASPP_RATES: dict[int, tuple[int, int, int]] = {8: (12, 24, 36), 16: (6, 12, 18)}


def list_models() -> list[str]:
    """Registered segmentor names."""
    return sorted(MODELS)


class Segmentor(nn.Module):
    """Backbone + decode head (+ auxiliary FCN head on the stride-8 ``layer3`` features).

    ``forward`` returns ``{"out": logits}`` and, when ``aux_head`` exists, ``"aux"`` (train and eval), both
    at feature resolution (not upsampled). ``tap_points`` maps ``logits``, ``aux_logits`` (aux models only),
    ``feat`` (pre-classifier head feature) and ``backbone`` (last backbone stage) to module paths for hooks.
    """

    def __init__(
        self, backbone: Backbone, decode_head: nn.Sequential, aux_head: nn.Sequential | None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.tap_points = {
            "logits": "decode_head.classifier",
            "feat": "decode_head.dropout",
            "backbone": f"backbone.{backbone.last_stage}",
        }
        if aux_head is not None:
            self.tap_points["aux_logits"] = "aux_head.classifier"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        aux_in, feat = self.backbone.forward_stages(x)
        out = {"out": self.decode_head(feat)}
        if self.aux_head is not None:
            out["aux"] = self.aux_head(aux_in)
        return out


def _check_name(name: str) -> None:
    if name in MODELS:
        return
    close = difflib.get_close_matches(name, MODELS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown model {name!r}.{hint} Valid models: {', '.join(list_models())}")


def build_segmentor(
    name: str,
    num_classes: int = 19,
    output_stride: int = 8,
    aspp_rates: tuple[int, int, int] | None = None,
    stem: str = "deep",
    zero_init_residual: bool = False,
) -> Segmentor:
    """Build a registered segmentor.

    ``output_stride`` 8 (paper: layer3/layer4 dilated 2/4) or 16 (layer4 dilated 2). ``aspp_rates`` None
    means the paper's (12, 24, 36) at OS8 and (6, 12, 18) at OS16; models without ASPP (PSPNet) ignore it, so
    one preset value serves a whole table. ``stem`` "deep"
    (paper, v1s) or "torchvision" (7×7, loads torchvision ImageNet weights); ignored by MobileNetV2, as is
    ``zero_init_residual`` (see ``build_backbone``).
    """
    _check_name(name)
    spec = MODELS[name]
    if output_stride not in PAPER_ASPP_RATES:
        raise UserError(f"output_stride must be 8 or 16 for segmentation, got {output_stride}")
    if num_classes < 1:
        raise UserError(f"num_classes must be positive, got {num_classes}")
    if aspp_rates is not None and (len(aspp_rates) != 3 or any(int(r) != r or r < 1 for r in aspp_rates)):
        raise UserError(f"aspp_rates must be three positive integers, got {aspp_rates!r}")
    backbone = build_backbone(spec["backbone"], output_stride, stem, zero_init_residual)
    if spec["head"] == "aspp":
        rates = tuple(aspp_rates) if aspp_rates is not None else PAPER_ASPP_RATES[output_stride]
        head = aspp_head(backbone.out_channels, spec["channels"], num_classes, rates)
    else:
        head = psp_head(backbone.out_channels, spec["channels"], num_classes)
    aux = fcn_head(backbone.aux_channels, num_classes) if spec["aux"] else None
    return Segmentor(backbone, head, aux)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone weights not found: {path}; check the path or pretrain/download them first")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UserError(
            f"cannot read backbone weights {path} ({type(exc).__name__}: {reason}); "
            "the file is truncated or not a PyTorch checkpoint, re-download or re-export it"
        ) from exc
    while isinstance(obj, dict) and ("state_dict" in obj or "model" in obj):
        obj = obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"{path} is not a state dict (expected a mapping of parameter names to tensors, optionally under "
            "'state_dict' or 'model'); save it with torch.save(model.state_dict(), path)"
        )
    return obj


def _strip(key: str) -> str:
    for prefix in ("module.", "backbone."):
        key = key.removeprefix(prefix)
    return key


def _few(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_backbone_weights(model: Segmentor, path: Path) -> None:
    """Load classification weights into ``model.backbone`` (strict, after the normalisations below).

    Accepts a plain state dict or one under ``"state_dict"``/``"model"``; keys may carry a ``backbone.``
    (or DDP ``module.``) prefix; classifier keys (``fc.*``, ``classifier.*``, MobileNetV2's final 1×1
    conv ``features.18.*``) are ignored; missing BN ``num_batches_tracked`` buffers are kept as they are.
    """
    backbone = model.backbone
    ignored = ("fc.", "classifier.", *backbone.unused_prefixes)
    raw = _read_state_dict(path)
    loaded = {_strip(k): v for k, v in raw.items() if not _strip(k).startswith(ignored)}
    own = backbone.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            loaded.setdefault(key, value)
    missing = [k for k in own if k not in loaded]
    unexpected = [k for k in loaded if k not in own]
    mismatched = [
        f"{k} {tuple(loaded[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in loaded and loaded[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label} ({len(keys)}): {_few(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mismatched),
            )
            if keys
        ]
        raise UserError(
            f"backbone weights {path} do not fit {type(backbone).__name__} "
            f"({len(own)} keys): {'; '.join(problems)}. {_stem_hint(loaded, own)}"
        )
    backbone.load_state_dict(loaded, strict=True)


def _stem_hint(loaded: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    """Name the fix when the file and model differ only in stem type, else a generic one."""
    file_kernel = loaded["conv1.weight"].shape[-1] if "conv1.weight" in loaded else None
    model_kernel = own["conv1.weight"].shape[-1] if "conv1.weight" in own else None
    if file_kernel == 7 and model_kernel == 3:
        return "The file has a 7×7 torchvision stem: build the model with stem='torchvision'."
    if file_kernel == 3 and model_kernel == 7:
        return "The file has a 3×3 deep (v1s) stem: build the model with stem='deep'."
    return "Use weights of the same backbone architecture (see BACKBONE_OF) and stem."
