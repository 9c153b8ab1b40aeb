"""``keypatch report``: a static HTML gallery of a results folder, to browse a run offline."""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_output, add_results, report
from keypatch.store import count_line

DESCRIPTION = ("Write DIR/report/index.html (or --report DIR2) with its pictures: one section per image, one card "
               "per stored record (strategies, ratios and starts side by side) with the kept patches numbered in "
               "pick order, the reconstruction, the loss-vs-patches curve and the numbers; sortable by loss. Opens "
               "from disk, with no server and no network.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``report``."""
    p = sub.add_parser("report", help="write a static HTML gallery of the stored proposals", description=DESCRIPTION)
    from keypatch.proposers import available

    add_results(p)
    p.add_argument("--report", type=v.out_dir, default=None, metavar="DIR2",
                   help="gallery folder (default: DIR/report)")
    p.add_argument("--strategy", default=None, choices=sorted(available()),
                   help="only records of this strategy")
    p.add_argument("--ratio", type=v.ratio, default=None, help="only records of this ratio")
    add_device(p, "where to reconstruct for the pictures")
    add_output(p, json_summary=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``report`` for parsed ``args``."""
    from keypatch.exports.report import write_report

    s = write_report(args.out, args.report, device=args.device, progress=not args.quiet,
                     strategy=args.strategy, ratio=args.ratio)
    report(args, s, f"{count_line(s['records'], s['images'], s['paths'], s['settings'])} -> {s['index']}")
    return 0
