"""Read tensors out of any `nn.Module` by module name, with forward hooks.

A tap path is a dotted module name as in `named_modules()` (e.g. `decode_head.classifier`), optionally
followed by `:key` to pick one entry of a module that returns a dict, list or tuple (e.g. `backbone.fpn:0`
or `neck:pool`). Models may publish logical names in a `tap_points` dict (`{"feat": "decode_head.dropout"}`);
methods ask for logical names and `resolve_taps` maps them, with user overrides taking precedence.
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
    """Logical tap name → module path, from `overrides`, else the model's `tap_points`."""
    points = {**getattr(model, "tap_points", {}), **(overrides or {})}
    missing = [name for name in wanted if name not in points]
    if missing:
        raise UserError(f"the {side} model ({type(model).__name__}) has no tap point for {missing}; "
                        f"it publishes {sorted(points) or 'none'}. Name the module in the table spec row's `taps`, "
                        f"e.g. taps: {{{missing[0]}: decode_head.classifier}}.")
    return {name: points[name] for name in wanted}


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
    """Forward hooks that keep the latest output of each tapped module, by logical name.

    Use as a context manager or call `remove()`; `outputs` is cleared with `clear()` after each step so
    no graph outlives its step.
    """

    def __init__(self, model: nn.Module, taps: dict[str, str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for name, path in taps.items():
            module_name, _, key = path.partition(":")
            if module_name not in modules:
                raise UserError(f"tap '{name}': {type(model).__name__} has no module '{module_name}'."
                                f"{_hint(module_name, [n for n in modules if n])}")
            self._handles.append(modules[module_name].register_forward_hook(self._hook(name, path, key or None)))

    def _hook(self, name: str, path: str, key: str | None):
        def store(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.outputs[name] = _select(output, key, path)

        return store

    def collect(self, names: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
        """The recorded tensors of `names`; a tap that did not fire is an error naming it."""
        silent = [n for n in names if n not in self.outputs]
        if silent:
            raise UserError(f"taps {silent} recorded nothing in the last forward pass: the module is not "
                            "called by the model's forward (pick another module).")
        return {n: self.outputs[n] for n in names}

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
