"""Options and output shared by the sub-commands, defined once.

Every command that computes takes ``--device {auto,cpu,cuda}`` (default ``auto``: the GPU when there
is one); ``-q/--quiet`` turns progress bars off; ``-v/--verbose`` logs each step; commands with a
summary print it as one JSON object on stdout with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEVICES = ("auto", "cpu", "cuda")


def add_model(p: argparse.ArgumentParser, default: str | None = "default", help: str | None = None) -> None:
    """``--model SPEC``: a :func:`keypatch.load_mae` spec."""
    from keypatch.cli import values

    p.add_argument("--model", default=default, type=values.model,
                   help=help or "MAE: 'default' (embedded), 'random:NAME', a weights file or folder, or a hub id")


def add_device(p: argparse.ArgumentParser, what: str = "where to compute") -> None:
    """``--device {auto,cpu,cuda}``, default ``auto``, and ``--threads auto|N`` for CPUs."""
    from keypatch.cli import values

    p.add_argument("--device", choices=DEVICES, default="auto", help=f"{what} (default: auto = cuda if available)")
    p.add_argument("--threads", type=values.threads, default=None, metavar="auto|N",
                   help="CPU threads (default: as many of torch's threads as the cores other processes leave free, "
                        "read from /proc/stat every quarter second, or where that cannot be read all threads or one, "
                        "whichever has been faster; the same losses on any count, where MKL's strict mode is on, as "
                        "import keypatch sets it); N fixes the count; auto tunes even without strict mode (losses "
                        "may then differ in the last bits from run to run)")


def add_results(p: argparse.ArgumentParser) -> None:
    """``--out DIR``: the results folder holding ``results.sqlite`` (default ``results``)."""
    from keypatch.batch import DEFAULT_OUT
    from keypatch.cli import values

    p.add_argument("--out", type=values.out_dir, default=Path(DEFAULT_OUT), metavar="DIR",
                   help=f"results folder holding results.sqlite (default: {DEFAULT_OUT})")


def add_output(p: argparse.ArgumentParser, *, progress: bool = True, json_summary: bool = False) -> None:
    """``-q/--quiet`` (when the command has progress bars), ``-v/--verbose`` and, optionally, ``--json``."""
    if progress:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log each image on stderr (-vv: each step too)")
    if json_summary:
        p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")


def strict(value: Any) -> Any:
    """``value`` made strict JSON: NaN and infinities become null, paths and other objects strings,
    tuples lists, numpy scalars and arrays numbers and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "tolist"):  # numpy / torch
        return strict(value.tolist())
    return str(value)


def report(args: argparse.Namespace, summary: dict[str, Any], text: str) -> None:
    """Print ``summary`` as one strict JSON object with ``--json`` (no NaN or infinity: null), else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(strict(summary), indent=1, allow_nan=False))
    else:
        print(text)


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
