"""Find cached teachers and MasKD token stages for the figures (read only; nothing is trained here).

Layout (`benchmark.engine.cache`): `<cache>/teachers/<model>-<key>/` and `<cache>/stages/tokens-<key>/`, each
with `model.pt` and `meta.json` (written last, so an entry without it is unfinished and skipped). A token stage's
meta names its teacher's key and says whether the tokens were learned with the task loss (`task_loss` true:
"learned", the paper's method) or with the diversity loss alone (false: Fig. 4 (b)).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.engine.cache import CacheEntry
from benchmark.errors import UserError

PAPER_NUM_TOKENS = 8  # preferred when several learned stages exist and --num-tokens is not given
LEARNED_HINT = ("run `python benchmark/run.py --table 3` first (its MasKD column learns the tokens; "
                "`--methods maskd --rows r18` runs only that cell)")
DIVERSITY_HINT = ("run `python benchmark/run.py --table tokens` first (its maskd_diversity and maskd_t8 columns "
                  "learn diversity-only and learned tokens; `--methods maskd_diversity maskd_t8` runs only those)")
TEACHER_HINT = "run `python benchmark/run.py --table 3` first (it trains and caches the teacher)"


@dataclass(frozen=True)
class CachedRecord:
    """A finished cache entry, its key, its meta.json and when that was written."""

    entry: CacheEntry
    key: str
    meta: dict[str, Any]
    mtime: float

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config", {})

    @property
    def miou(self) -> float | None:
        return self.meta.get("miou")


@dataclass(frozen=True)
class TeacherRecord(CachedRecord):
    """A finished teacher cache entry and its meta.json."""

    model: str = ""

    def describe(self) -> str:
        miou = f"{self.miou:.2f}" if isinstance(self.miou, (int, float)) else "?"
        data = self.config.get("data", {}).get("id", "?")
        return f"teacher {self.model} key {self.key}: mIoU {miou}, data {data}"


@dataclass(frozen=True)
class TokenRecord(CachedRecord):
    """A finished MasKD token-stage cache entry (`<cache>/stages/tokens-<key>/`)."""

    @property
    def teacher_key(self) -> str:
        return str(self.meta.get("teacher", ""))

    @property
    def task_loss(self) -> bool:
        return bool(self.config.get("task_loss", True))

    @property
    def num_tokens(self) -> int:
        return int(self.config.get("num_tokens", 0))

    @property
    def variant(self) -> str:
        return "learned" if self.task_loss else "diversity"

    def tokens(self) -> torch.Tensor:
        """The T×K token matrix from the cached state dict."""
        state = self.entry.state_dict()
        tokens = state.get("tokens")
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise UserError(f"token stage {self.entry.root} holds no T×K 'tokens' tensor (keys: "
                            f"{', '.join(state)}); delete {self.entry.root} to relearn it.")
        return tokens.detach().float().cpu()

    def describe(self) -> str:
        miou = f"{self.miou:.2f}" if isinstance(self.miou, (int, float)) else "?"
        steps = self.meta.get("schedule", {}).get("steps", "?")
        return (f"tokens key {self.key}: {self.variant}, T={self.num_tokens}, teacher {self.teacher_key}, "
                f"{steps} steps, masked-teacher mIoU {miou}")


def _finished(folder: Path, prefix: str | None = None) -> Iterable[tuple[CacheEntry, str, str, dict, float]]:
    """(entry, name, key, meta, mtime) of every finished entry under folder; unreadable metas are skipped."""
    if not folder.is_dir():
        return
    for root in sorted(folder.iterdir()):
        name, sep, key = root.name.rpartition("-")
        entry = CacheEntry(root)
        if not sep or not root.is_dir() or not entry.exists() or (prefix is not None and name != prefix):
            continue
        try:
            meta = entry.meta()
        except UserError as err:
            print(f"warning: skipped {err}", file=sys.stderr)
            continue
        yield entry, name, key, meta, entry.meta_path.stat().st_mtime


def list_teachers(cache_dir: Path) -> list[TeacherRecord]:
    """Finished teachers, newest first (by meta.json time)."""
    found = [TeacherRecord(entry, key, meta, mtime, model=name)
             for entry, name, key, meta, mtime in _finished(Path(cache_dir) / "teachers")]
    return sorted(found, key=lambda r: r.mtime, reverse=True)


def list_token_stages(cache_dir: Path, teacher_key: str | None = None, task_loss: bool | None = None,
                      num_tokens: int | None = None) -> list[TokenRecord]:
    """Finished MasKD token stages, newest first, optionally only those of a teacher / variant / T."""
    found = []
    for entry, _, key, meta, mtime in _finished(Path(cache_dir) / "stages", prefix="tokens"):
        record = TokenRecord(entry, key, meta, mtime)
        if meta.get("stage") != "tokens" or record.config.get("method", "maskd") != "maskd":
            continue
        if teacher_key is not None and record.teacher_key != teacher_key:
            continue
        if task_loss is not None and record.task_loss != task_loss:
            continue
        if num_tokens is not None and record.num_tokens != num_tokens:
            continue
        found.append(record)
    return sorted(found, key=lambda r: r.mtime, reverse=True)


def _no_teacher(cache_dir: Path) -> UserError:
    return UserError(f"no cached teacher in {Path(cache_dir) / 'teachers'}; {TEACHER_HINT} (pass --cache-dir if "
                     "your cache is elsewhere).")


def find_teacher(cache_dir: Path, key: str) -> TeacherRecord:
    """The teacher whose key is `key` (or starts with it, when that is unambiguous)."""
    teachers = list_teachers(cache_dir)
    if not teachers:
        raise _no_teacher(cache_dir)
    exact = [t for t in teachers if t.key == key]
    matches = exact or [t for t in teachers if t.key.startswith(key)]
    if len(matches) == 1:
        return matches[0]
    listing = "; ".join(t.describe() for t in teachers)
    what = "matches several teachers" if matches else "matches no cached teacher"
    raise UserError(f"--teacher-key {key!r} {what} in {Path(cache_dir) / 'teachers'}. Cached: {listing}.")


def _teacher_of(cache_dir: Path, stage: TokenRecord) -> TeacherRecord | None:
    return next((t for t in list_teachers(cache_dir) if t.key == stage.teacher_key), None)


def _prefer_paper_t(stages: list[TokenRecord], num_tokens: int | None) -> list[TokenRecord]:
    if num_tokens is not None:
        return stages
    paper = [s for s in stages if s.num_tokens == PAPER_NUM_TOKENS]
    return paper + [s for s in stages if s.num_tokens != PAPER_NUM_TOKENS]


def pick_learned(cache_dir: Path, teacher_key: str | None = None,
                 num_tokens: int | None = None) -> tuple[TeacherRecord, TokenRecord]:
    """Teacher and learned (task + diversity) tokens for Fig. 6: the newest stage, T = 8 preferred."""
    teacher = find_teacher(cache_dir, teacher_key) if teacher_key else None
    stages = list_token_stages(cache_dir, teacher.key if teacher else None, task_loss=True, num_tokens=num_tokens)
    for stage in _prefer_paper_t(stages, num_tokens):
        owner = teacher or _teacher_of(cache_dir, stage)
        if owner is not None:
            return owner, stage
    if stages:
        raise _orphans(cache_dir, stages)
    if teacher is None and not list_teachers(cache_dir):
        raise _no_teacher(cache_dir)
    raise UserError(f"no learned MasKD tokens{_scope(teacher, num_tokens)} in {Path(cache_dir) / 'stages'}; "
                    f"{LEARNED_HINT}.")


def pick_variants(cache_dir: Path, teacher_key: str | None = None,
                  num_tokens: int | None = None) -> tuple[TeacherRecord, TokenRecord, TokenRecord]:
    """Teacher, diversity-only tokens and learned tokens of the same teacher and T, for Fig. 4 (newest pair)."""
    teacher = find_teacher(cache_dir, teacher_key) if teacher_key else None
    diversity = list_token_stages(cache_dir, teacher.key if teacher else None, task_loss=False,
                                  num_tokens=num_tokens)
    if not diversity:
        if teacher is None and not list_teachers(cache_dir):
            raise _no_teacher(cache_dir)
        raise UserError(f"no diversity-only MasKD tokens (task_loss false){_scope(teacher, num_tokens)} in "
                        f"{Path(cache_dir) / 'stages'}; {DIVERSITY_HINT}.")
    for div in _prefer_paper_t(diversity, num_tokens):
        owner = teacher or _teacher_of(cache_dir, div)
        learned = list_token_stages(cache_dir, div.teacher_key, task_loss=True, num_tokens=div.num_tokens)
        if owner is not None and learned:
            return owner, div, learned[0]
    if all(_teacher_of(cache_dir, d) is None for d in diversity):
        raise _orphans(cache_dir, diversity)
    raise UserError(f"diversity-only tokens are cached but no learned tokens of the same teacher and T"
                    f"{_scope(teacher, num_tokens)} (or their teacher entry is gone); {DIVERSITY_HINT}.")


def _orphans(cache_dir: Path, stages: list[TokenRecord]) -> UserError:
    keys = ", ".join(sorted({s.teacher_key for s in stages}))
    return UserError(f"token stages are cached ({', '.join(s.key for s in stages)}) but not their teacher ({keys}) "
                     f"in {Path(cache_dir) / 'teachers'} (a teacher given with --teacher-ckpt is never cached, or the "
                     f"entry was deleted); the figures need its weights: {TEACHER_HINT} without --teacher-ckpt.")


def _scope(teacher: TeacherRecord | None, num_tokens: int | None) -> str:
    parts = ([f"teacher {teacher.key}"] if teacher else []) + ([f"T={num_tokens}"] if num_tokens else [])
    return f" for {', '.join(parts)}" if parts else ""


def describe_cache(cache_dir: Path) -> str:
    """Human-readable listing of the teachers and token stages in a cache (`--list`)."""
    lines = [f"cache {cache_dir}:"]
    teachers, stages = list_teachers(cache_dir), list_token_stages(cache_dir)
    lines += [f"  {t.describe()}" for t in teachers] or ["  no teachers"]
    lines += [f"  {s.describe()}" for s in stages] or ["  no token stages"]
    return "\n".join(lines)
