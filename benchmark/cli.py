"""`python benchmark/run.py --table 3`: plan, train (teacher cached, students per seed), ledger, table."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from benchmark.config import available, load_preset, semantic, to_dict
from benchmark.errors import UserError
from benchmark.plan import table_names

DEFAULT_CACHE = Path(os.environ.get("KDBENCH_CACHE", Path.home() / ".cache" / "kdbench"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmark/run.py",
        description="Train teachers (cached) and students, record every run in a ledger and write the "
                    "paper's tables with the paper's numbers beside ours.",
        epilog="Example: python benchmark/run.py --table 3 --preset cpu --seeds 0 1 2",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", help=f"paper table to reproduce ({', '.join(table_names())})")
    what.add_argument("--config", type=Path, help="a table spec YAML (same format as configs/tables/)")
    p.add_argument("--preset", help=f"{', '.join(available('presets'))}; default: gpu with CUDA, else cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="student seeds (default: 0)")
    p.add_argument("--rows", nargs="+", help="only these row ids of the table (default: all)")
    p.add_argument("--methods", nargs="+", help="only these method columns of the table (default: all)")
    p.add_argument("--data-root", type=Path, help="real Cityscapes root (default: embedded synthetic data)")
    p.add_argument("--out", type=Path, default=Path("results"), help="ledger, runs and tables (default: results/)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help="embedded data, pretrained backbones and teachers (default: $KDBENCH_CACHE or "
                        "~/.cache/kdbench)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--teacher-ckpt", type=Path, help="use these teacher weights instead of training one")
    p.add_argument("--backbone-weights", nargs="+", default=[], metavar="NAME=PATH",
                   help="ImageNet weights per backbone, e.g. resnet18=r18.pth (torchvision state dicts)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override preset values, e.g. student.steps=100 data.workers=0 (repeatable; a section "
                        "the preset's detection block redefines takes it too; detection.KEY=VALUE: detection only)")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs from their checkpoints")
    p.add_argument("--force", action="store_true", help="retrain runs the ledger already has")
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs, cache state, time) and exit")
    return p


def _device(name: str | None) -> torch.device:
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device '{name}': use cpu, cuda or cuda:N.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def _user_weights(items: list[str]) -> dict[str, Path]:
    from benchmark.models import BACKBONE_OF

    valid = sorted(set(BACKBONE_OF.values()))
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in valid:
            raise UserError(f"--backbone-weights expects NAME=PATH with NAME in {', '.join(valid)}; got '{item}'.")
        if not Path(path).is_file():
            raise UserError(f"--backbone-weights {name}: file not found: {path}")
        weights[name] = Path(path)
    return weights


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from benchmark.harness import run_table

        device = _device(args.device)
        preset_name = args.preset or ("gpu" if device.type == "cuda" else "cpu")
        preset = load_preset(preset_name, args.overrides)
        preset_key = hashlib.sha1(json.dumps(semantic(to_dict(preset)), sort_keys=True).encode()).hexdigest()[:10]
        return run_table(args, preset, preset_key, device, _user_weights(args.backbone_weights))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are in the ledger; continue the others with --resume.", file=sys.stderr)
        return 130
