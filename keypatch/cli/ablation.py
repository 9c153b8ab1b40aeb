"""``keypatch experiment ablation``: greedy from the central patch vs from nothing, L vs ratio."""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_model, add_output


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ablation``."""
    p = sub.add_parser("ablation", help="initial-patch ablation: start from the centre vs from nothing")
    p.add_argument("paths", nargs="+", type=v.existing, help="image files or folders")
    p.add_argument("--max-ratio", type=v.ratio, default=0.25, help="curve from 1/N up to this ratio")
    add_model(p)
    add_device(p)
    p.add_argument("--out", type=v.out_dir, required=True, help="folder for ablation.csv and ablation.png")
    add_output(p)

    def run(args: argparse.Namespace) -> None:
        from keypatch.api import resolve_model
        from keypatch.experiments.ablation import ablation_curves, write_ablation
        from keypatch.geometry import list_image_files

        files = list_image_files(args.paths)
        model = resolve_model(args.model, args.device)
        model.grid.count(args.max_ratio)  # validate before any work
        curves = ablation_curves(files, args.max_ratio, model, progress=not args.quiet)
        path = write_ablation(curves, model.grid.n, args.out)
        print(f"wrote {path} and {args.out / 'ablation.png'}")

    p.set_defaults(func=run)
