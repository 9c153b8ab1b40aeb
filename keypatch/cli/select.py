"""``keypatch select``: choose a subset of an image folder with DQ bins, GraphCut or random."""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_output


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``select``."""
    from keypatch.classifiers import available_classifiers
    from keypatch.selection.bins import SELECTORS

    p = sub.add_parser("select", help="select a subset of images (Dataset Quantization bins, GraphCut, random)",
                       description="Embed every image with a pretrained classifier, then keep round(ratio * n) of "
                                   "them. Writes OUT/selection.json and OUT/contact_sheet.jpg.")
    p.add_argument("paths", nargs="+", type=v.existing, help="image files and/or folders (searched recursively)")
    p.add_argument("--ratio", type=v.ratio, required=True, help="keep ratio in (0, 1]")
    p.add_argument("--method", choices=sorted(SELECTORS), default="dq")
    p.add_argument("--bins", type=v.positive_int, default=10, help="DQ's number of bins (default 10)")
    p.add_argument("--seed", type=v.seed, default=0)
    p.add_argument("--lam", type=v.non_negative_float, default=1.0, help="GraphCut lambda (default 1)")
    p.add_argument("--classifier", default="efficientnet-lite0", choices=sorted(available_classifiers()),
                   help="embedding network (default efficientnet-lite0)")
    add_device(p)
    p.add_argument("--batch-size", type=v.positive_int, default=16)
    p.add_argument("--cache", type=v.out_file, default=None,
                   help="embeddings .npz to reuse (written if missing or stale)")
    p.add_argument("--thumb", type=v.positive_int, default=128, help="contact-sheet thumbnail side")
    p.add_argument("--out", type=v.out_dir, required=True, help="output folder")
    add_output(p)

    def run(args: argparse.Namespace) -> None:
        from keypatch.selection import select_dataset

        res = select_dataset(args.paths, args.ratio, args.method, n_bins=args.bins, seed=args.seed, lam=args.lam,
                             classifier=args.classifier, device=args.device, batch_size=args.batch_size,
                             cache=args.cache, out=args.out, thumb=args.thumb, progress=not args.quiet)
        sizes = [len(b) for b in res.selection.bins]
        print(f"{args.method}: kept {len(res.files)} of {len(res.all_files)} images (bins: {sizes})")
        print(f"wrote {res.json_path} and {res.sheet_path}")

    p.set_defaults(func=run)
