"""Memo of the frozen teacher's tapped outputs per input image (the idea of torchdistill's teacher cache).

On CPU the teacher forward is most of a KD step. When a preset's augmentation yields a finite set of
inputs (flip only: no random scale or crop), every image the student sees has been seen before by some
run, so the teacher's outputs can be looked up instead of recomputed. Entries are keyed by a hash of the
input image's bytes, computed one image at a time (batch of 1), so a cached value is bit-identical to a
freshly computed one and a resumed run matches an uninterrupted one. The memo is saved atomically under
`<cache>/teacher_outputs/` at the end of each run and shared by every run with the same teacher and taps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from benchmark.engine.checkpoint import atomic_torch_save, load_checkpoint

FORMAT = "kdbench-teacher-outputs-v1"


def image_key(image: torch.Tensor) -> str:
    """Content hash of one input image (exact bytes, so two inputs share a key only if they are equal)."""
    return hashlib.blake2b(image.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


class TeacherOutputCache:
    """Per-image teacher outputs for the tap names `names`, persisted at `path`."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path, self.names = path, sorted(names)
        self.entries: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0
        self._dirty = False
        if path.is_file():
            state = load_checkpoint(path, ("format", "names", "entries"), what="teacher-output cache")
            if state["format"] == FORMAT and state["names"] == self.names:
                self.entries = state["entries"]

    def __call__(self, images: torch.Tensor,
                 teacher: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The teacher's tapped outputs for `images` (N×3×H×W): looked up, or computed one image at a time."""
        rows = []
        for image in images:
            key = image_key(image)
            entry = self.entries.get(key)
            if entry is None:
                self.misses += 1
                with torch.no_grad():
                    entry = {n: t[0].detach().cpu() for n, t in teacher(image[None]).items()}
                self.entries[key] = entry
                self._dirty = True
            else:
                self.hits += 1
            rows.append(entry)
        return {n: torch.stack([row[n] for row in rows]).to(images.device) for n in self.names}

    def save(self) -> None:
        """Write the memo (atomically) if this run added entries."""
        if self._dirty:
            atomic_torch_save({"format": FORMAT, "names": self.names, "entries": self.entries}, self.path)
            self._dirty = False
