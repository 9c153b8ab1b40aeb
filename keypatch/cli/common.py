"""Options and output shared by the sub-commands, defined once.

Every command that computes takes ``--device {auto,cpu,cuda}`` (default ``auto``: the GPU when there
is one); ``-q/--quiet`` turns progress bars off; ``-v/--verbose`` logs each step; commands with a
summary print it as one JSON object on stdout with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEVICES = ("auto", "cpu", "cuda")


def add_model(p: argparse.ArgumentParser, default: str | None = "default", help: str | None = None) -> None:
    """``--model SPEC``: a :func:`keypatch.load_mae` spec."""
    p.add_argument("--model", default=default,
                   help=help or "MAE: 'default' (embedded), 'random:NAME', a weights file or folder, or a hub id")


def add_device(p: argparse.ArgumentParser, what: str = "where to compute") -> None:
    """``--device {auto,cpu,cuda}``, default ``auto``."""
    p.add_argument("--device", choices=DEVICES, default="auto", help=f"{what} (default: auto = cuda if available)")


def add_results(p: argparse.ArgumentParser) -> None:
    """``--out DIR``: the results folder holding ``results.sqlite`` (default ``results``)."""
    from keypatch.batch import DEFAULT_OUT

    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), metavar="DIR",
                   help=f"results folder holding results.sqlite (default: {DEFAULT_OUT})")


def add_output(p: argparse.ArgumentParser, *, progress: bool = True, json_summary: bool = False) -> None:
    """``-q/--quiet`` (when the command has progress bars), ``-v/--verbose`` and, optionally, ``--json``."""
    if progress:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step on stderr")
    if json_summary:
        p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")


def report(args: argparse.Namespace, summary: Any, text: str) -> None:
    """Print ``summary`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(summary, default=str, indent=1))
    else:
        print(text)


def parse_option(text: str) -> tuple[str, int | float | str]:
    """``"key=value"`` -> ``(key, value)``, the value as int, else float, else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


@contextmanager
def command_warnings(command: str) -> Iterator[None]:
    """Warnings raised while ``command`` runs, each shown on a line of its own as
    ``keypatch COMMAND: warning: MESSAGE`` on stderr (through tqdm, so a progress bar is not broken;
    input notes as ``note:``), every time they occur.

    Other packages' deprecation warnings (Ray Data's, for instance, when it reads its settings) are
    addressed to their callers' developers, not to the command's user: they are not shown.
    """

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        from tqdm.auto import tqdm

        from keypatch.geometry import InputNote

        kind = "note" if issubclass(category, InputNote) else "warning"
        tqdm.write(f"keypatch {command}: {kind}: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("always", category=category, module=r"keypatch(\.|$)")
        warnings.showwarning = show
        yield
