"""``keypatch labels``: annotations back from a Label Studio JSON export, as sparse label masks."""

from __future__ import annotations

import argparse

from keypatch.cli.common import add_output, report

DESCRIPTION = ("One PNG per annotated image of a Label Studio JSON export, at the image's original size: "
               "each pixel a brush, polygon or rectangle result covers holds its label's class id, every "
               "other pixel 255 (ignore_index); DIR/classes.json maps label names to ids. "
               "keypatch.data.SparseLabels pairs the masks with their images for training.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``labels``."""
    from keypatch.cli import values as v

    p = sub.add_parser("labels", help="Label Studio annotations as sparse label masks (255: not annotated)",
                       description=DESCRIPTION)
    p.add_argument("export", type=v.existing_file, nargs="?", default=None,
                   help="a Label Studio JSON export (Export > JSON); none with --project (pulled from Label Studio)")
    p.add_argument("--out", type=v.out_dir, required=True, metavar="DIR", help="folder of NAME.png masks")
    p.add_argument("--classes", type=v.existing_file, default=None, metavar="FILE",
                   help="label names to ids: a JSON list (ids by position) or a name -> id map "
                        "(default: the names found, sorted, from 0)")
    ls = p.add_argument_group("from a running Label Studio", "pull the project's export instead of a file")
    ls.add_argument("--label-studio-url", default=None, type=v.http_url, help="Label Studio's address")
    ls.add_argument("--api-key", default=None, type=v.token,
                    help="a token of Label Studio's (legacy or personal access), sent only to --label-studio-url")
    ls.add_argument("--project", default=None, type=v.positive_int, metavar="ID", help="the project's id")
    add_output(p, progress=False, json_summary=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``keypatch labels``."""
    from keypatch.data.labels import fetch_export, read_classes, write_label_masks

    pull = args.project is not None
    if pull == (args.export is not None):
        raise ValueError("give a Label Studio JSON export, or --project with --label-studio-url and --api-key")
    if pull and not (args.label_studio_url and args.api_key):
        raise ValueError("--project needs --label-studio-url and --api-key")
    classes = read_classes(args.classes) if args.classes else None
    if pull:
        tasks = fetch_export(args.label_studio_url, args.api_key, args.project)
        source = f"{args.label_studio_url.rstrip('/')} project {args.project}"
        got = write_label_masks(tasks, args.out, classes=classes, source=source)
    else:
        got = write_label_masks(args.export, args.out, classes=classes)
    skipped = "; ".join(f"{n} x {why}" for why, n in got.skipped.items())
    report(args, {"out": str(args.out), "masks": len(got.masks), "classes": got.classes, "skipped": got.skipped},
           f"{len(got.masks)} masks in {args.out}, classes {got.classes}" + (f"; not drawn: {skipped}" if skipped
                                                                              else ""))
    return 0
