"""``keypatch experiment classify``: fine-tune a ViT on the kept patches only (KPP vs random)."""

from __future__ import annotations

import argparse
import csv

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_model, add_output


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``classify``."""
    from keypatch.proposers import available

    p = sub.add_parser("classify", help="classification accuracy when a ViT sees only the kept patches")
    p.add_argument("root", type=v.out_dir, help="folder with one sub-folder of images per class")
    p.add_argument("--from-manifest", type=v.existing_file,
                   help="first build ROOT from a `python -m tools.photos.prepare` manifest.json (GCompris classes)")
    p.add_argument("--ratios", type=v.ratio, nargs="+", default=[0.05, 0.1, 0.25])
    p.add_argument("--strategies", nargs="+", default=["greedy", "random"], choices=sorted(available()))
    add_model(p)
    add_device(p)
    p.add_argument("--epochs", type=v.positive_int, default=30)
    p.add_argument("--test-fraction", type=v.fraction, default=0.3)
    p.add_argument("--seed", type=v.seed, default=0)
    p.add_argument("--out", type=v.out_dir, required=True, help="folder for classify.csv")
    add_output(p)

    def run(args: argparse.Namespace) -> None:
        from keypatch.api import resolve_model
        from keypatch.experiments.classify import classification_experiment, labelled_from_manifest

        model = resolve_model(args.model, args.device)
        for r in args.ratios:
            model.grid.count(r)
        if args.from_manifest:
            print("classes:", labelled_from_manifest(args.from_manifest, args.root))
        results = classification_experiment(args.root, model, args.ratios, args.strategies,
                                            test_fraction=args.test_fraction, epochs=args.epochs, seed=args.seed,
                                            progress=not args.quiet)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "classify.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["strategy", "ratio", "train_accuracy", "test_accuracy", "n_train", "n_test"])
            for r in results:
                w.writerow([r.strategy, r.ratio, f"{r.train_accuracy:.4f}", f"{r.test_accuracy:.4f}", r.n_train,
                            r.n_test])
                print(f"{r.strategy:>10} r={r.ratio:<5} test accuracy {r.test_accuracy:.3f} "
                      f"(train {r.train_accuracy:.3f}, {r.n_test} test images)")
        print(f"wrote {path}")

    p.set_defaults(func=run)
