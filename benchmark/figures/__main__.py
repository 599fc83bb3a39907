"""`python -m benchmark.figures`: draw the paper's figures from the cache (no training).

Segmentation: `<out>/fig6_learned_masks.{png,pdf}` (learned tokens; filled by `python benchmark/run.py --table 3`)
and `<out>/fig4_token_variants.{png,pdf}` (random vs L_div-only vs learned tokens; filled by
`python benchmark/run.py --table tokens`). Detection (filled by `python benchmark/run.py --table 1`):
`<out>/det_level_masks.{png,pdf}` (learned masks at every FPN level, paper Fig. 1/5) and
`<out>/det_mask_weights.{png,pdf}` (one level's masks with their per-image weights, paper Fig. 3b).
A figure whose cache entry is missing is skipped with the reason; the exit code is 0 when at least one figure
was written, else 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from benchmark.cli import DEFAULT_CACHE
from benchmark.errors import UserError
from benchmark.figures import det_mask_weights

FIGURES = ("fig6", "fig4", "det_levels", "det_weights")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.figures",
        description="Draw MasKD's Fig. 6 (learned masks of the teacher on val images), Fig. 4 (random vs "
                    "diversity-only vs learned tokens) and, for detection, Fig. 1/5 (masks per FPN level) and "
                    "Fig. 3b (masks with their weights) from cached teachers and token stages, as PNG and PDF.",
        epilog="The cache is filled by `python benchmark/run.py --table 3` (teacher, learned tokens), "
               "`python benchmark/run.py --table tokens` (diversity-only tokens) and `python benchmark/run.py "
               "--table 1` (detection teacher and MasKD-det tokens).",
    )
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help="the cache the benchmark wrote (default: $KDBENCH_CACHE or ~/.cache/kdbench)")
    p.add_argument("--out", type=Path, default=Path("results/figures"), help="output folder (default: results/figures)")
    p.add_argument("--images", type=int, default=4, help="val images (rows) in Fig. 6 (default: 4)")
    p.add_argument("--variant-images", type=int, default=2, help="val images in Fig. 4 (default: 2)")
    p.add_argument("--teacher-key", help="draw from this teacher (key or unique prefix; default: the newest "
                                         "teacher with the needed token stages)")
    p.add_argument("--num-tokens", type=int, help="only token stages with this T (default: Fig. 6/4 prefer T=8 if "
                                                  "cached, else the newest; the detection figures take the newest)")
    p.add_argument("--data-root", type=Path, help="real Cityscapes root, when the teacher was trained on it "
                                                  "(default: the embedded data in the cache)")
    p.add_argument("--det-images", type=int, default=2, help="val images in the detection per-level figure "
                                                             "(each a block of one row per FPN level; default: 2)")
    p.add_argument("--det-weight-images", type=int, default=4,
                   help="val images (rows) in the detection masks-with-weights figure (default: 4)")
    p.add_argument("--det-level", default=det_mask_weights.DEFAULT_LEVEL,
                   help="FPN level of the masks-with-weights figure: P-name (P3), tap (fpn_1) or FPN key "
                        f"('1') (default: {det_mask_weights.DEFAULT_LEVEL})")
    p.add_argument("--det-data-root", type=Path, help="real COCO root, when the detection teacher was trained "
                                                      "on it (default: the embedded data in the cache)")
    p.add_argument("--device", default="cpu", help="device for the teacher's forward pass (default: cpu)")
    p.add_argument("--only", nargs="+", choices=FIGURES, metavar="FIGURE",
                   help=f"draw only these figures ({', '.join(FIGURES)})")
    p.add_argument("--list", action="store_true", help="list the cached teachers and token stages, then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from benchmark.figures import det_level_masks, masks, token_variants
    from benchmark.figures.caches import describe_cache
    from benchmark.figures.common import Teachers
    from benchmark.figures.det_common import DetModels, describe_det_cache

    if min(args.images, args.variant_images, args.det_images, args.det_weight_images) < 1:
        print("error: --images, --variant-images, --det-images and --det-weight-images must be at least 1.",
              file=sys.stderr)
        return 2
    if args.list:
        print(describe_cache(args.cache_dir))
        print(f"detection (MasKD-det) in {args.cache_dir}:\n{describe_det_cache(args.cache_dir)}")
        return 0
    teachers = Teachers(args.device)
    common = {"cache_dir": args.cache_dir, "out_dir": args.out, "teacher_key": args.teacher_key,
              "num_tokens": args.num_tokens, "data_override": args.data_root, "teachers": teachers}
    jobs = [("fig6", masks.STEM, lambda: masks.make(n_images=args.images, **common)),
            ("fig4", token_variants.STEM, lambda: token_variants.make(n_images=args.variant_images, **common))]
    det = {"cache_dir": args.cache_dir, "out_dir": args.out, "teacher_key": args.teacher_key,
           "num_tokens": args.num_tokens, "data_override": args.det_data_root, "models": DetModels(args.device)}
    jobs += [("det_levels", det_level_masks.STEM, lambda: det_level_masks.make(n_images=args.det_images, **det)),
             ("det_weights", det_mask_weights.STEM,
              lambda: det_mask_weights.make(n_images=args.det_weight_images, level=args.det_level, **det))]
    written, reasons = [], []
    for name, stem, make in jobs:
        if args.only and name not in args.only:
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
