"""`python -m benchmark.figures`: draw the paper's Fig. 6 and Fig. 4 from the cache (no training).

Writes `<out>/fig6_learned_masks.{png,pdf}` (learned tokens; filled by `python benchmark/run.py --table 3`) and
`<out>/fig4_token_variants.{png,pdf}` (random vs L_div-only vs learned tokens; filled by
`python benchmark/run.py --table tokens`). A figure whose cache entry is missing is skipped with the reason;
the exit code is 0 when at least one figure was written, else 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from benchmark.cli import DEFAULT_CACHE
from benchmark.errors import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.figures",
        description="Draw MasKD's Fig. 6 (learned masks of the teacher on val images) and Fig. 4 (random vs "
                    "diversity-only vs learned tokens) from cached teachers and token stages, as PNG and PDF.",
        epilog="The cache is filled by `python benchmark/run.py --table 3` (teacher, learned tokens) and "
               "`python benchmark/run.py --table tokens` (diversity-only tokens).",
    )
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help="the cache the benchmark wrote (default: $KDBENCH_CACHE or ~/.cache/kdbench)")
    p.add_argument("--out", type=Path, default=Path("results/figures"), help="output folder (default: results/figures)")
    p.add_argument("--images", type=int, default=4, help="val images (rows) in Fig. 6 (default: 4)")
    p.add_argument("--variant-images", type=int, default=2, help="val images in Fig. 4 (default: 2)")
    p.add_argument("--teacher-key", help="draw from this teacher (key or unique prefix; default: the newest "
                                         "teacher with the needed token stages)")
    p.add_argument("--num-tokens", type=int, help="only token stages with this T (default: T=8 if cached, "
                                                  "else the newest)")
    p.add_argument("--data-root", type=Path, help="real Cityscapes root, when the teacher was trained on it "
                                                  "(default: the embedded data in the cache)")
    p.add_argument("--device", default="cpu", help="device for the teacher's forward pass (default: cpu)")
    p.add_argument("--only", choices=("fig6", "fig4"), help="draw only this figure")
    p.add_argument("--list", action="store_true", help="list the cached teachers and token stages, then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from benchmark.figures import masks, token_variants
    from benchmark.figures.caches import describe_cache
    from benchmark.figures.common import Teachers

    if args.images < 1 or args.variant_images < 1:
        print("error: --images and --variant-images must be at least 1.", file=sys.stderr)
        return 2
    if args.list:
        print(describe_cache(args.cache_dir))
        return 0
    teachers = Teachers(args.device)
    common = {"cache_dir": args.cache_dir, "out_dir": args.out, "teacher_key": args.teacher_key,
              "num_tokens": args.num_tokens, "data_override": args.data_root, "teachers": teachers}
    jobs = [("fig6", masks.STEM, lambda: masks.make(n_images=args.images, **common)),
            ("fig4", token_variants.STEM, lambda: token_variants.make(n_images=args.variant_images, **common))]
    written, reasons = [], []
    for name, stem, make in jobs:
        if args.only and args.only != name:
            continue
        try:
            paths = make()
        except UserError as err:
            reasons.append(f"{stem}: {err}")
            print(f"skipped {stem}: {err}", file=sys.stderr)
            continue
        written += paths
        print(f"wrote {', '.join(str(p) for p in paths)}")
    if not written:
        print(f"error: no figure written ({len(reasons)} skipped, reasons above).", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
