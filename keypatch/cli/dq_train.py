"""``keypatch experiment dq-train``: which patches make the better training set (DQ's question), with intervals."""

from __future__ import annotations

import argparse
import json

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_model, add_output, report


def training_table(summary: list[dict], baseline: str) -> str:
    """The summary as a markdown table."""
    lines = [f"| training set | images | stored bytes | test accuracy [95% CI] | minus {baseline} [95% CI] |",
             "|---|---|---|---|---|"]
    for r in summary:
        diff = (f"{r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]{' *' if r['real'] else ''}"
                if "diff" in r else "")
        lines.append(f"| {r['dataset']} | {r['n_train']:.0f} | {r['bytes']:,.0f} | {r['accuracy']:.3f} "
                     f"[{r['lo']:.3f}, {r['hi']:.3f}] | {diff} |")
    return "\n".join(lines) + "\n"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``dq-train``."""
    from keypatch.classifiers import available_classifiers
    from keypatch.proposers import available

    p = sub.add_parser(
        "dq-train", help="train on all originals, DQ-selected originals, DQ sets rebuilt from each strategy's "
                         "patches, and a random subset; test accuracy over seeds with intervals",
        description="Split LABELLED (one sub-folder per class) into training and test images once; for each seed "
                    "quantize the training images with each strategy (keypatch quantize), rebuild them with the MAE "
                    "and train a linear probe on each training set; test on the original test images. Writes "
                    "OUT/dq_train.json and OUT/dq_train.md.")
    p.add_argument("root", type=v.existing_dir, metavar="LABELLED", help="a folder with one sub-folder per class")
    p.add_argument("--fraction", type=v.ratio, default=0.3, help="DQ's share of each class kept (default 0.3)")
    p.add_argument("--drop", type=v.drop, default=0.75, help="share of each image's patches dropped (default 0.75)")
    p.add_argument("--strategies", nargs="+", default=["attention", "screened"], choices=sorted(available()),
                   metavar="STRATEGY", help="who keeps the patches (default: attention = DQ's, screened = KPP's)")
    p.add_argument("--seeds", type=v.positive_int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--test-fraction", type=v.fraction, default=0.3, help="test share of each class (default 0.3)")
    p.add_argument("--bins", type=v.positive_int, default=10, help="DQ's bins per class (default 10)")
    p.add_argument("--features", default="efficientnet-lite1", choices=sorted(available_classifiers()),
                   help="the frozen network under the linear probe (default efficientnet-lite1)")
    add_model(p)
    add_device(p)
    p.add_argument("--out", type=v.out_dir, required=True)
    add_output(p, json_summary=True)

    def run(args: argparse.Namespace) -> None:
        from dataclasses import asdict

        from keypatch.api import resolve_model
        from keypatch.experiments.dq_training import dq_training_experiment, summarize_training

        mae = resolve_model(args.model, args.device)
        rows = dq_training_experiment(args.root, args.out, mae, fraction=args.fraction, drop=args.drop,
                                      strategies=args.strategies, seeds=range(args.seeds),
                                      test_fraction=args.test_fraction, bins=args.bins, features=args.features,
                                      progress=not args.quiet)
        baseline = f"dq-{args.strategies[0]}"
        summary = summarize_training(rows, baseline)
        doc = {"rows": [asdict(r) for r in rows], "summary": summary, "model": mae.model_id,
               "features": args.features, "fraction": args.fraction, "drop": args.drop}
        (args.out / "dq_train.json").write_text(json.dumps(doc, indent=1))
        table = training_table(summary, baseline)
        (args.out / "dq_train.md").write_text(table)
        report(args, doc, f"{table}\nwrote {args.out}/dq_train.json, dq_train.md")

    p.set_defaults(func=run)
