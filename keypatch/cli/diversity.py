"""``keypatch experiment diversity``: coverage and spread of GraphCut, DQ-bin and random subsets across
keep ratios."""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_output


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``diversity``."""
    from keypatch.classifiers import available_classifiers
    from keypatch.experiments.diversity_plot import DEFAULT_RATIOS

    p = sub.add_parser("diversity", help="diversity of GraphCut / DQ / random subsets of an image folder",
                       description="Embed the images, select subsets at each ratio with GraphCut, DQ bins and "
                                   "random, and report coverage, spread and centrality (CSV + plot).")
    p.add_argument("paths", nargs="+", type=v.existing, help="image files and/or folders")
    p.add_argument("--ratios", type=v.ratio, nargs="+", default=list(DEFAULT_RATIOS))
    p.add_argument("--bins", type=v.positive_int, default=10)
    p.add_argument("--seeds", type=v.positive_int, default=10, help="seeds averaged for DQ and random")
    p.add_argument("--lam", type=v.non_negative_float, default=1.0)
    p.add_argument("--classifier", default="efficientnet-lite0", choices=sorted(available_classifiers()))
    add_device(p)
    p.add_argument("--cache", type=v.out_file, default=None, help="embeddings .npz to reuse")
    p.add_argument("--csv", type=v.out_file, required=True)
    p.add_argument("--plot", type=v.out_file, required=True)
    add_output(p)

    def run(args: argparse.Namespace) -> None:
        from keypatch.experiments.diversity_plot import run_diversity

        rows = run_diversity(args.paths, args.ratios, n_bins=args.bins, seeds=args.seeds, lam=args.lam,
                             classifier=args.classifier, device=args.device, cache=args.cache, out_csv=args.csv,
                             out_plot=args.plot, progress=not args.quiet)
        print(f"{'method':9s} {'ratio':>6s} {'k':>4s} {'coverage':>9s} {'spread':>7s} {'central':>7s}")
        for r in rows:
            print(f"{r['method']:9s} {r['ratio']:6.3f} {r['k']:4d} {r['coverage']:9.4f} {r['spread']:7.4f} "
                  f"{r['centrality']:7.3f}")
        print(f"wrote {args.csv} and {args.plot}")

    p.set_defaults(func=run)
