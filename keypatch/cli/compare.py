"""``keypatch experiment compare``: mean L(S) of patch strategies across keep ratios (CSV + plot)."""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_model, add_output, report


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``compare``."""
    from keypatch.classifiers import available_classifiers
    from keypatch.proposers import available

    p = sub.add_parser("compare", help="compare patch strategies (e.g. greedy, attention, random) by mean L(S)",
                       description="Run each strategy at each ratio on each image and score its set with one MAE "
                                   "pass. Writes OUT/compare.csv, OUT/summary.csv, OUT/summary.md, OUT/compare.png.")
    p.add_argument("paths", nargs="*", type=v.existing, help="image files and/or folders")
    p.add_argument("--test-photos", action="store_true",
                   help="add the test photos shipped with scikit-image / scikit-learn / matplotlib")
    p.add_argument("--ratios", type=v.ratio, nargs="+", default=[0.05, 0.1, 0.25])
    p.add_argument("--strategies", nargs="+", default=["greedy", "attention", "random"],
                   choices=sorted(available()))
    add_model(p)
    p.add_argument("--out", type=v.out_dir, required=True)
    p.add_argument("--seed", type=v.seed, default=0)
    add_device(p)
    p.add_argument("--batch-size", type=v.positive_int, default=8, help="images per batch")
    p.add_argument("--greedy-start", choices=["center", "none"], default=None, help="greedy's first patch")
    p.add_argument("--patch-mode", choices=["pixel-mean", "resize"], default=None, help="attention's per-patch scores")
    p.add_argument("--classifier", default=None, choices=sorted(available_classifiers()),
                   help="attention's classifier (default efficientnet-lite0)")
    add_output(p, json_summary=True)

    def run(args: argparse.Namespace) -> None:
        from keypatch.experiments.compare import markdown_table, run_compare
        from keypatch.geometry import list_image_files

        options: dict[str, dict] = {}
        if args.greedy_start:
            options.setdefault("greedy", {})["start"] = args.greedy_start
        if args.patch_mode:
            options.setdefault("attention", {})["patch_mode"] = args.patch_mode
        if args.classifier:
            options.setdefault("attention", {})["classifier"] = args.classifier
        images = args.paths
        if args.test_photos:
            from keypatch.experiments.photos import load_test_photos

            images = {str(f): f for f in list_image_files(args.paths)} if args.paths else {}
            images.update(load_test_photos())
        elif not args.paths:
            raise ValueError("give image PATHS and/or --test-photos")
        rows, summary = run_compare(images, args.ratios, args.strategies, args.model, args.out, seed=args.seed,
                                    device=args.device, batch_size=args.batch_size, options=options,
                                    progress=not args.quiet)
        files = {name: str(args.out / name) for name in ("compare.csv", "summary.csv", "summary.md", "compare.png")}
        report(args, {"images": len({r["image"] for r in rows}), "summary": summary, "files": files},
               f"{markdown_table(summary)}\nwrote {', '.join(files.values())}")

    p.set_defaults(func=run)
