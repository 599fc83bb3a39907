"""Typed configuration: frozen dataclasses filled from YAML strictly (unknown keys are errors).

Layers, later wins: code defaults → preset (`configs/presets/<name>.yaml`) → `--set a.b=value`.
Table specs (`configs/tables/*.yaml`) name rows; a row may override the student schedule.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class DataConfig:
    """Input size and augmentation; `n_train`/`n_val`/`seed` only shape the embedded generator."""

    height: int = 128
    width: int = 256
    n_train: int = 1500
    n_val: int = 200
    seed: int = 0
    flip: bool = True
    scale_range: tuple[float, float] | None = None
    crop: tuple[int, int] | None = None
    workers: int = 2


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs shared by teacher and students (the paper: OS 8, ASPP rates 12/24/36).

    `detector`: per detector family ("faster_rcnn", "retinanet", "fcos"), keyword arguments of its torchvision
    class (e.g. fewer sampled RoIs in small presets).
    """

    output_stride: int = 8
    aspp_rates: tuple[int, int, int] | None = None
    # Segmentation ResNets: start each residual branch's last BN at γ = 0 (see build_backbone).
    zero_init_residual: bool = False
    detector: dict[str, Any] = field(default_factory=dict)


OPTIMIZERS = ("sgd", "adam", "adamw")
PRETRAIN_OPTIMIZERS = ("sgd", "adamw")
LR_DECAYS = ("poly", "cosine")
TEACHER_NORMS = ("running", "batch")


@dataclass(frozen=True)
class ScheduleConfig:
    """SGD + poly LR with the official floor: lr = floor + (lr0 - floor)(1 - it/max)^power.

    ``optimizer`` "adam"/"adamw" and ``lr_decay`` "cosine" (to ``lr_floor``) serve the detection token stages
    (official RetinaNet/FCOS: Adam lr 0.01, wd 1e-3, cosine to 1e-6); Adam ignores ``momentum``.
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    lr_floor: float = 1e-4
    aux_weight: float = 0.4
    # Linear warm-up from warmup_ratio × lr over warmup_steps (mmdet detection recipes), gradient-norm clip.
    warmup_steps: int = 0
    warmup_ratio: float = 0.001
    clip_grad_norm: float | None = None
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr_decay: str = "poly"  # poly | cosine

    def __post_init__(self) -> None:
        for key, valid in (("optimizer", OPTIMIZERS), ("lr_decay", LR_DECAYS)):
            if getattr(self, key) not in valid:
                raise UserError(f"unknown {key} {getattr(self, key)!r}; valid: {', '.join(valid)}.")

    def describe(self) -> str:
        """One line for table captions, e.g. '300 steps x batch 4, SGD lr 0.02 (momentum 0.9), wd 0.0005, poly 0.9
        to 0.0001'."""
        optimizer = {"sgd": f"SGD lr {self.lr} (momentum {self.momentum})", "adam": f"Adam lr {self.lr}",
                     "adamw": f"AdamW lr {self.lr}"}[self.optimizer]
        decay = f"poly {self.poly_power}" if self.lr_decay == "poly" else "cosine"
        text = f"{self.steps} steps x batch {self.batch_size}, {optimizer}, wd {self.weight_decay}, " \
               f"{decay} to {min(self.lr_floor, self.lr)}"
        if self.warmup_steps:
            text += f", linear warm-up {self.warmup_steps} steps"
        if self.clip_grad_norm:
            text += f", grad-norm clip {self.clip_grad_norm}"
        return text


@dataclass(frozen=True)
class PretrainConfig:
    """Stand-in for ImageNet pretraining on the embedded default: multi-label patch classification.

    SGD (momentum 0.9) or AdamW, linear warm-up over ``warmup_steps``, then cosine decay to zero.
    """

    steps: int = 300
    batch_size: int = 32
    patch: int = 64
    n_scenes: int = 600
    lr: float = 0.05
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # sgd | adamw
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in PRETRAIN_OPTIMIZERS:
            raise UserError(f"unknown pretrain optimizer {self.optimizer!r}; valid: {', '.join(PRETRAIN_OPTIMIZERS)}.")


@dataclass(frozen=True)
class Preset:
    """Everything that decides a run's result, plus logging cadence (not part of any key)."""

    name: str = "cpu"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: ScheduleConfig = field(default_factory=ScheduleConfig)
    student: ScheduleConfig = field(default_factory=ScheduleConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    # Method stages on the frozen teacher (MasKD token learning; official: SGD lr 0.1, wd 1e-3, 10k steps).
    tokens: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(steps=10000, batch_size=16, lr=0.1,
                                                                          weight_decay=1e-3))
    # Per-method option overrides for this preset (e.g. CIRKD's memory sized to the embedded data).
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Look the teacher's outputs up per image instead of recomputing them (needs flip-only augmentation).
    cache_teacher_outputs: bool = False
    # How the frozen teacher's BatchNorm layers normalise while distilling and in method stages: "running"
    # (eval mode, the official behaviour; FrozenBN teachers behave the same either way) or "batch" (the current
    # batch's statistics, never updating the buffers; for BN teachers trained with small batches, whose running
    # statistics send some images' features off scale, see configs/presets/cpu.yaml).
    teacher_norm: str = "running"
    # Overrides of the fields above for detection tables (`for_task`): data, schedules, pretraining, methods.
    detection: dict[str, Any] = field(default_factory=dict)
    amp: bool = True
    channels_last: bool = True
    eval_batch_size: int = 8
    log_every: int = 20
    checkpoint_every: int = 100
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.teacher_norm not in TEACHER_NORMS:
            raise UserError(f"unknown teacher_norm {self.teacher_norm!r}; valid: {', '.join(TEACHER_NORMS)}.")


NON_SEMANTIC = {"name", "description", "workers", "log_every", "checkpoint_every", "tensorboard",
                "eval_batch_size"}
# Fields added after the first release hash into keys only when switched on, so earlier runs keep their keys.
ADDED_LATER = {"warmup_steps": 0, "warmup_ratio": 0.001, "clip_grad_norm": None, "detector": {},
               "optimizer": "sgd", "lr_decay": "poly", "zero_init_residual": False}
TASKS = ("seg", "det")
SCHEDULES = ("teacher", "student", "tokens")


def for_task(preset: Preset, task: str) -> Preset:
    """The preset as a table of `task` uses it: detection tables apply the preset's `detection` overrides.

    A schedule the `detection` block names (teacher, student, tokens) replaces the segmentation one from the
    defaults up, so no segmentation-only choice (e.g. the cpu teacher's AdamW) leaks into detection runs; nor
    does ``model.zero_init_residual``: detection takes it only from the `detection` block.
    """
    if task not in TASKS:
        raise UserError(f"unknown task {task!r} in a table spec; valid tasks: {', '.join(TASKS)}.")
    if task == "seg":
        return preset
    preset = replace(preset, model=replace(preset.model, zero_init_residual=False))
    if not preset.detection:
        return preset
    fresh = {name: ScheduleConfig() for name in SCHEDULES if name in preset.detection}
    return merge(replace(preset, **fresh), {**preset.detection, "detection": {}}, "detection.")


def _unknown_key(key: str, valid: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown config key '{where}{key}'.{hint} Valid keys here: {', '.join(valid)}.")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert one YAML value against a dataclass field type."""
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise UserError(f"config key '{where}' must be a mapping, got {value!r}.")
        return from_dict(hint, value, where + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{where}' must be a list, got {value!r}.")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise UserError(f"config key '{where}' must have {len(args)} values, got {value!r}.")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if hint is float:
        return _as_float(value, where)
    if hint in (int, bool, str) and type(value) is not hint:
        raise UserError(f"config key '{where}' must be {hint.__name__}, got {value!r}.")
    return value


def _as_float(value: Any, where: str) -> float:
    """A number, or a string in exponent notation: PyYAML (YAML 1.1) reads ``1e-4`` as the string '1e-4'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise UserError(f"config key '{where}' must be a number, got {value!r}.")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys with a close-match suggestion."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise _unknown_key(unknown[0], sorted(fields), where)
    kwargs = {k: _coerce(v, hints[k], where + k) for k, v in data.items()}
    return cls(**kwargs)


def merge(base: Any, updates: dict[str, Any], where: str = "") -> Any:
    """Return dataclass `base` with nested `updates` applied (strictly typed)."""
    current = to_dict(base)
    _deep_update(current, updates)
    return from_dict(type(base), current, where)


def _deep_update(target: dict[str, Any], updates: dict[str, Any]) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → plain dict with tuples as lists (YAML/JSON friendly)."""
    return _listify(dataclasses.asdict(obj))


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    return value


def semantic(config: dict[str, Any]) -> dict[str, Any]:
    """Drop non-semantic fields (paths, workers, logging cadence) before hashing a config."""
    return {k: semantic(v) if isinstance(v, dict) else v for k, v in config.items()
            if k not in NON_SEMANTIC and not (k in ADDED_LATER and v == ADDED_LATER[k])}


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with a clear error for missing or malformed files."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level.")
    return data


def available(kind: str) -> list[str]:
    """Names of the shipped configs of one kind ('presets' or 'tables')."""
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))


def load_preset(name: str, overrides: list[str] | None = None) -> Preset:
    """Load `configs/presets/<name>.yaml` and apply `--set a.b=value` overrides."""
    presets = available("presets")
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown preset '{name}'.{hint} Available presets: {', '.join(presets)}.")
    data = {**read_yaml(CONFIG_DIR / "presets" / f"{name}.yaml"), "name": name}
    if overrides:  # the preset's own description no longer tells the whole story: plans and captions say so
        note = f"; with --set {' '.join(overrides)}"
        data["description"] = data.get("description", name) + note
        if "description" in data.get("detection", {}):
            data["detection"] = {**data["detection"], "description": data["detection"]["description"] + note}
    updates = parse_overrides(overrides or [])
    # A section the detection block redefines (e.g. `student`) takes the override too, so `--set student.steps=50`
    # reaches detection tables as well; `--set detection.student.steps=50` reaches them alone.
    mirrored = copy.deepcopy({k: v for k, v in updates.items() if k != "detection" and k in data.get("detection", {})})
    if mirrored:
        _deep_update(mirrored, updates.get("detection", {}))
        updates["detection"] = mirrored
    return merge(from_dict(Preset, data), updates, "--set ")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["teacher.steps=10", "data.flip=false"]` → nested dict (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE (e.g. teacher.steps=200), got '{item}'.")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return nested
