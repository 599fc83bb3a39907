"""What the embedded datasets share: a seeded, versioned spec naming the cache folder, and generation once,
atomically (into a temporary folder renamed into place, so a killed run leaves nothing half-written)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class GeneratedSpec:
    """Size and seed of an embedded dataset. `name` = `<kind>-v<version>-<h>x<w>-<n_train>-<n_val>-s<seed>` keys
    its cache folder; subclasses set `kind` and `version`."""

    height: int
    width: int
    n_train: int
    n_val: int
    seed: int = 0

    kind = ""
    version = 0

    @property
    def name(self) -> str:
        return f"{self.kind}-v{self.version}-{self.height}x{self.width}-{self.n_train}-{self.n_val}-s{self.seed}"


def ensure_generated(spec: GeneratedSpec, cache_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(folder)` once into `<cache_dir>/data/<spec.name>` (atomically) and return that path.

    The folder holds a `manifest.json` (name, generator version, spec, counts) written last; a folder without
    one is never used. When two processes race, the first to finish wins and the other's copy is dropped.
    """
    target = Path(cache_dir) / "data" / spec.name
    if (target / "manifest.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=target.parent))  # all a killed run leaves
    try:
        write(tmp)
        manifest = {"name": spec.name, "generator_version": spec.version, "spec": asdict(spec),
                    "counts": {"train": spec.n_train, "val": spec.n_val}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
