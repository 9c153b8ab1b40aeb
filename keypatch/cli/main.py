"""``keypatch`` command: one sub-command per module in this package.

To add a command: write ``keypatch/cli/NAME.py`` with ``add_parser(subparsers)`` (which sets
``func`` on its parser via ``set_defaults``) and add its module name to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sqlite3
import sys

COMMANDS = ["propose", "export", "report", "store", "select", "quantize", "reconstruct", "serve", "experiment",
            "ranker", "labels"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    from keypatch import __version__
    from keypatch.cli.values import Parser

    parser = Parser(prog="keypatch", description="Find the key patches of images with an MAE.")
    parser.add_argument("--version", action="version", version=f"keypatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"keypatch.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with a one-line message)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad value (2, its one line printed), --help or --version (0)
        return exc.code if isinstance(exc.code, int) else 0
    name = " ".join(filter(None, [args.command, getattr(args, "experiment", None)]))  # e.g. "experiment compare"
    verbose = getattr(args, "verbose", 0) or 0
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(name)s: %(message)s")
    logging.getLogger("keypatch").setLevel(level)  # -v: each image; -vv: each step too
    try:
        if getattr(args, "threads", None) is not None:
            from keypatch.threads import set_threads

            set_threads(args.threads)
        from keypatch.cli.common import command_warnings

        with command_warnings(name):
            result = args.func(args)
    except (ValueError, OSError, RuntimeError, sqlite3.Error) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"keypatch {name}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished records are kept", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
