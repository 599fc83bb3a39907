"""Read tensors out of any `nn.Module` by module name, with forward hooks.

A tap path is ``module[<i][:key][?]``:

* ``module``: a dotted module name as in `named_modules()` (e.g. `decode_head.classifier`); the tap reads its
  output;
* ``<i``: read the module's positional input ``i`` instead (e.g. `roi_heads.box_roi_pool<1`, the proposals
  torchvision's Faster R-CNN pools). An input that is a list or tuple of 2-D tensors with the same width (per-image
  boxes) is packed into one tensor in torchvision's RoI format: the rows concatenated in list order, each prefixed
  by its list index (K×(1+D); `torchvision.ops.poolers._convert_to_roi_format`, mmdet's ``rois``);
* ``:key``: pick one entry of a dict, list or tuple (e.g. `backbone.fpn:0`, `neck:pool`,
  `roi_heads.box_predictor:1`);
* a trailing ``?``: an optional tap. A model without the module gets no hook, and a tap that did not fire in the
  last forward is left out of `collect` instead of being an error, so a method can name the modules of several
  architectures and see in the recorded names which one it got.

Models may publish logical names in a `tap_points` dict (`{"feat": "decode_head.dropout"}`); methods ask for
logical names and `resolve_taps` maps them, with user overrides taking precedence. A method may give a default
path with the name, ``name=path`` (e.g. ``"reg_deltas=roi_heads.box_predictor:1?"``), used when neither the
overrides nor the model's `tap_points` name it; the tap is recorded under ``name``.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from benchmark.errors import UserError


def _hint(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3)
    return f" Close matches: {', '.join(close)}." if close else ""


def resolve_taps(model: nn.Module, wanted: tuple[str, ...], overrides: dict[str, str] | None = None,
                 side: str = "student") -> dict[str, str]:
    """Logical tap name → module path, from `overrides`, else the model's `tap_points`, else the default path
    of a wanted ``name=path`` (keyed ``name``)."""
    points = {**getattr(model, "tap_points", {}), **(overrides or {})}
    resolved: dict[str, str] = {}
    missing = []
    for entry in wanted:
        name, has_default, default = entry.partition("=")
        if name in points:
            resolved[name] = points[name]
        elif has_default:
            resolved[name] = default
        else:
            missing.append(name)
    if missing:
        raise UserError(f"the {side} model ({type(model).__name__}) has no tap point for {missing}; "
                        f"it publishes {sorted(points) or 'none'}. Name the module in the table spec row's `taps`, "
                        f"e.g. taps: {{{missing[0]}: decode_head.classifier}}.")
    return resolved


def parse_tap(path: str) -> tuple[str, int | None, str | None, bool]:
    """``module[<i][:key][?]`` → (module name, input index or None, key or None, optional)."""
    optional = path.endswith("?")
    target, _, key = path.removesuffix("?").partition(":")
    module_name, has_input, index = target.partition("<")
    if has_input and not index.isdigit():
        raise UserError(f"tap '{path}': '<' must be followed by a positional input index, e.g. "
                        f"'{module_name}<1'.")
    return module_name, int(index) if has_input else None, key or None, optional


def _pack_rois(value: Any, path: str) -> torch.Tensor:
    """A list/tuple of K_i×D tensors → one (ΣK_i)×(1+D) tensor, column 0 the list index (torchvision RoI format)."""
    if not value or not all(isinstance(t, torch.Tensor) and t.ndim == 2 for t in value) \
            or len({t.shape[1] for t in value}) != 1:
        raise UserError(f"tap '{path}': the input is a {type(value).__name__} but not of 2-D tensors of one width "
                        "(per-image boxes), which is the only sequence an input tap packs; pick an entry with "
                        f"'{path.removesuffix('?')}:<key>'.")
    return torch.cat([torch.cat([torch.full_like(t[:, :1], i), t], dim=1) for i, t in enumerate(value)])


def _select(output: Any, key: str | None, path: str) -> torch.Tensor:
    if key is not None:
        try:
            output = output[key] if isinstance(output, dict) else output[int(key)]
        except (KeyError, IndexError, ValueError) as err:
            keys = list(output) if isinstance(output, dict) else list(range(len(output)))
            raise UserError(f"tap '{path}': the module output has no entry {key!r} (entries: {keys}).") from err
    if not isinstance(output, torch.Tensor):
        raise UserError(f"tap '{path}' returns {type(output).__name__}, not a tensor; pick an entry with "
                        f"'{path}:<key>'.")
    return output


class TapRecorder:
    """Forward hooks that keep the latest output (or ``<i`` input) of each tapped module, by logical name; an
    optional (``?``) tap on a missing module gets no hook.

    Use as a context manager or call `remove()`; `outputs` is cleared with `clear()` after each step so
    no graph outlives its step.
    """

    def __init__(self, model: nn.Module, taps: dict[str, str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.optional: set[str] = set()  # names whose path ends in '?': may be absent or silent
        self._handles = []
        modules = dict(model.named_modules())
        for name, path in taps.items():
            module_name, index, key, optional = parse_tap(path)
            if optional:
                self.optional.add(name)
            if module_name not in modules:
                if optional:
                    continue
                raise UserError(f"tap '{name}': {type(model).__name__} has no module '{module_name}'."
                                f"{_hint(module_name, [n for n in modules if n])}")
            self._handles.append(modules[module_name].register_forward_hook(self._hook(name, path, index, key)))

    def _hook(self, name: str, path: str, index: int | None, key: str | None):
        def store(_module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if index is None:
                self.outputs[name] = _select(output, key, path)
                return
            if index >= len(inputs):
                raise UserError(f"tap '{path}': the module was called with {len(inputs)} positional inputs, "
                                f"there is no input {index}.")
            value = inputs[index]
            if key is not None or not isinstance(value, (list, tuple)):
                self.outputs[name] = _select(value, key, path)
            else:
                self.outputs[name] = _pack_rois(value, path)

        return store

    def collect(self, names: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
        """The recorded tensors of `names`; a tap that did not fire is an error naming it, unless it is optional
        (then it is left out)."""
        silent = [n for n in names if n not in self.outputs and n not in self.optional]
        if silent:
            raise UserError(f"taps {silent} recorded nothing in the last forward pass: the module is not "
                            "called by the model's forward (pick another module).")
        return {n: self.outputs[n] for n in names if n in self.outputs}

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> TapRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
