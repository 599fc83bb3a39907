"""Keyed artefact cache (pretrained backbones, teachers): `<cache>/<kind>/<name>-<key>/{model.pt,meta.json}`.

`meta.json` is written last, so an entry without it is unfinished and is never used.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

import benchmark
from benchmark.atomic import atomic_write_json
from benchmark.engine.checkpoint import atomic_torch_save, load_checkpoint
from benchmark.errors import UserError

WEIGHTS_FORMAT = "kdbench-weights-v1"


def library_versions() -> dict[str, str]:
    """Versions recorded beside every cached artefact and ledger row."""
    return {"kdbench": benchmark.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(terse=True)}


@dataclass(frozen=True)
class CacheEntry:
    root: Path

    @property
    def weights_path(self) -> Path:
        return self.root / "model.pt"

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"cache entry {self.root} has an unreadable meta.json ({err}); delete "
                            f"{self.root} to recompute it.") from err

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = load_checkpoint(self.weights_path, ("format", "state_dict"), what="cached weights")
        if state["format"] != WEIGHTS_FORMAT:
            raise UserError(f"cached weights {self.weights_path} have format {state['format']!r}; delete "
                            f"{self.root} to recompute them.")
        return state["state_dict"]

    def store(self, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        atomic_torch_save({"format": WEIGHTS_FORMAT, "state_dict": state_dict}, self.weights_path)
        atomic_write_json({**meta, "versions": library_versions()}, self.meta_path)


def cache_entry(cache_dir: Path, kind: str, name: str, key: str) -> CacheEntry:
    return CacheEntry(cache_dir / kind / f"{name}-{key}")
