"""``keypatch reconstruct``: a quantized dataset's images rebuilt by the MAE, written as an ImageFolder."""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_output, report


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``reconstruct``."""
    p = sub.add_parser(
        "reconstruct", help="rebuild a quantized dataset's images with the MAE (an ImageFolder of PNGs)",
        description="Rebuild every image of a folder written by keypatch quantize from its kept patches: the MAE "
                    "predicts the dropped patches and the kept ones are pasted back. Writes OUT/CLASS/NAME.png; "
                    "images already written are skipped, so a re-run resumes.")
    p.add_argument("dataset", type=v.existing_dir, metavar="DIR", help="a quantized dataset (keypatch quantize)")
    p.add_argument("--out", type=v.out_dir, required=True, metavar="FOLDER", help="the ImageFolder to write")
    p.add_argument("--model", default=None, type=v.model,
                   help="MAE (default: the one the patches were chosen with, from the manifest)")
    add_device(p)
    p.add_argument("--batch-size", type=v.positive_int, default=16, help="images per MAE pass (default 16)")
    add_output(p, json_summary=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``reconstruct`` for parsed ``args``."""
    from keypatch.data import reconstruct_folder

    s = reconstruct_folder(args.dataset, args.out, args.model, device=args.device, batch_size=args.batch_size,
                           progress=not args.quiet)
    report(args, s, f"{s['written']} written, {s['skipped']} already there -> {s['out']}")
    return 0
