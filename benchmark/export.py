"""Export a finished run's student as a bare model state dict: `python benchmark/export.py RUN_DIR [-o FILE]`.

A run checkpoint (`<out>/runs/<row>/<method>-seed<k>-<key>/checkpoint.pt`) holds the whole train unit: the
student under `student.`, plus the method's adapters, tokens or discriminators. The export keeps only the
student's tensors, without the prefix, so that `model.load_state_dict(torch.load(f, weights_only=True),
strict=True)` works on the bare segmentor or torchvision detector (MTPD's `pth_transfer.py` does the same
between stages). A sidecar `<file>.json` names the model and the run it came from. A cached teacher
(`<cache>/teachers/<model>-<key>/`) is already bare: pass its `model.pt`'s directory and it is copied as is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.atomic import atomic_write_json
from benchmark.engine.checkpoint import atomic_torch_save, load_checkpoint
from benchmark.errors import UserError

STUDENT_PREFIX = "student."


def student_state(checkpoint: dict[str, Any], source: Path) -> dict[str, torch.Tensor]:
    """The `student.` tensors of a run checkpoint's `model` entry, prefix stripped."""
    model = checkpoint.get("model")
    if not isinstance(model, dict):
        raise UserError(f"{source} has no 'model' state dict; pass a run directory written by benchmark/run.py.")
    state = {k.removeprefix(STUDENT_PREFIX): v for k, v in model.items() if k.startswith(STUDENT_PREFIX)}
    if not state:
        raise UserError(f"{source} holds no '{STUDENT_PREFIX}*' tensors; is it a run checkpoint?")
    return state


def export_run(run_dir: Path, output: Path | None = None) -> Path:
    """Write the student-only state dict of `run_dir` (a run or a cached teacher) and its sidecar JSON."""
    run_dir = Path(run_dir)
    if (run_dir / "model.pt").is_file():  # a cached teacher or stage: already bare
        state = load_checkpoint(run_dir / "model.pt", ("format", "state_dict"), what="cached weights")["state_dict"]
        config: dict[str, Any] = {"source": "cache", "entry": run_dir.name}
    else:
        checkpoint_path = run_dir / "checkpoint.pt"
        if not checkpoint_path.is_file():
            raise UserError(f"{run_dir} holds no checkpoint.pt (nor model.pt); pass the directory of a run "
                            "(<out>/runs/<row>/<method>-seed<k>-<key>/) or of a cached teacher.")
        state = student_state(load_checkpoint(checkpoint_path, ("model", "step"), "run checkpoint"), checkpoint_path)
        config_path = run_dir / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    output = Path(output) if output is not None else run_dir / "student.pt"
    atomic_torch_save(state, output)
    atomic_write_json({"model": config.get("model"), "task": config.get("task"), "run": str(run_dir),
                       "key": config.get("key"), "tensors": len(state)}, output.with_suffix(".json"))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a finished run's directory (or a cached teacher's)")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: RUN_DIR/student.pt)")
    args = parser.parse_args(argv)
    try:
        path = export_run(args.run_dir, args.output)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} (load with model.load_state_dict(torch.load(path, weights_only=True), strict=True))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
