"""``keypatch experiment meaning``: do key patches keep an image's meaning? (a judge classifier, with intervals)"""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_model, add_output, report


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``meaning``."""
    from keypatch.classifiers import available_classifiers
    from keypatch.proposers import available

    p = sub.add_parser(
        "meaning", help="originals against their MAE reconstructions from each strategy's patches, judged by a "
                        "classifier (top-1/top-5 agreement, KL, feature cosine, PSNR) with 95%% intervals",
        description="Rebuild every image from each strategy's patches at each ratio and let a pretrained classifier "
                    "compare it with the original. Rows go to OUT/meaning.csv (a re-run adds only what is missing); "
                    "OUT/meaning.md holds each mean with its 95%% bootstrap interval and the paired difference from "
                    "--baseline, OUT/meaning.png the curves.")
    p.add_argument("paths", nargs="+", type=v.existing, help="image files and/or folders")
    p.add_argument("--ratios", type=v.ratio, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 0.8])
    p.add_argument("--strategies", nargs="+", default=["screened", "attention", "random"], choices=sorted(available()),
                   metavar="STRATEGY", help="default: screened (greedy's fast twin), attention, random")
    p.add_argument("--judge", default="efficientnet-lite1", choices=sorted(available_classifiers()),
                   help="the classifier that compares (default efficientnet-lite1: not attention's Lite0)")
    p.add_argument("--seen", nargs="*", type=v.existing, default=[],
                   help="the MAE's training images: images with the same content are reported apart")
    p.add_argument("--baseline", default="random", choices=sorted(available()), metavar="STRATEGY",
                   help="the strategy differences are taken from (default random)")
    add_model(p)
    p.add_argument("--out", type=v.out_dir, required=True)
    p.add_argument("--seed", type=v.seed, default=0)
    add_device(p)
    p.add_argument("--batch-size", type=v.positive_int, default=8, help="images per batch")
    add_output(p, json_summary=True)

    def run(args: argparse.Namespace) -> None:
        from keypatch.api import resolve_model
        from keypatch.experiments.meaning import markdown, meaning_experiment, plot, read_rows, summarize

        mae = resolve_model(args.model, args.device)
        csv_path = meaning_experiment(args.paths, args.ratios, args.strategies, mae, args.out / "meaning.csv",
                                      judge=args.judge, seen=args.seen, seed=args.seed, batch_size=args.batch_size,
                                      progress=not args.quiet)
        summary = summarize(read_rows(csv_path), baseline=args.baseline)
        text = "\n".join(f"## {s}\n\n{markdown(summary, s)}" for s in ("all", "unseen", "seen")
                         if any(r["subset"] == s for r in summary))
        (args.out / "meaning.md").write_text(f"judge: {args.judge}, model: {mae.model_id}\n\n{text}")
        plot(summary, args.out / "meaning.png", title=f"judge {args.judge}, model {mae.model_id}")
        report(args, {"summary": summary, "files": [str(csv_path), str(args.out / "meaning.md"),
                                                    str(args.out / "meaning.png")]},
               f"{markdown(summary, 'all', ('top1', 'cosine', 'psnr'))}\nwrote {args.out}/meaning.csv, meaning.md, "
               "meaning.png")

    p.set_defaults(func=run)
