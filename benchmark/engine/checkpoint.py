"""Atomic checkpoint and file writes; safe loading (`weights_only=True`) with user-facing errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmark.atomic import atomic_write
from benchmark.errors import UserError


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temp file in the same folder, then rename: a kill never leaves half a file."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: Path, required: tuple[str, ...] = (), what: str = "checkpoint") -> dict[str, Any]:
    """Load a torch file with `weights_only=True`; missing/corrupt/foreign files raise UserError."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}. Check the path.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign pickles
        raise UserError(
            f"{what} {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "it is truncated, corrupt or not a PyTorch file. Point to a good file or delete this one "
            "to recompute it."
        ) from err
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path} holds a {type(obj).__name__}, not a state dict.")
    require_keys(obj, required, path, what)
    return obj


def require_keys(obj: dict[str, Any], required: tuple[str, ...], path: Path, what: str) -> None:
    """UserError naming the keys of `required` that a loaded checkpoint lacks."""
    missing = [key for key in required if key not in obj]
    if missing:
        raise UserError(
            f"{what} {path} is not one of ours: it lacks {', '.join(missing)}. "
            "Point to a checkpoint written by this suite."
        )


def load_state_strict(module: torch.nn.Module, state: dict[str, Any], source: Path, what: str) -> None:
    """`load_state_dict(strict=True)` with a readable UserError on mismatched keys or shapes."""
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as err:
        detail = " ".join(str(err).split())[:400]
        raise UserError(
            f"{what} {source} does not fit the model ({detail}). It was written for another "
            "architecture or preset; give weights of the same model."
        ) from err
