"""``keypatch prepare-photos``: build the training photo folder from Debian packages."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``prepare-photos``."""
    p = sub.add_parser("prepare-photos", help="extract licensed photos from Debian packages for training")
    p.add_argument("--out", type=Path, required=True, help="output folder (train/, val/, manifest.json)")
    p.add_argument("--cache", type=Path, required=True, help="folder for the .deb files and their extraction")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--max-side", type=int, default=640)
    p.add_argument("--seed", type=int, default=0)

    def run(args: argparse.Namespace) -> None:
        from keypatch.training.photos import prepare_photos

        summary = prepare_photos(args.out, args.cache, val_fraction=args.val_fraction, max_side=args.max_side,
                                 seed=args.seed)
        print(summary)

    p.set_defaults(func=run)
