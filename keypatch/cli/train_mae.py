"""``keypatch train-mae``: train a small MAE on a folder of photos."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``train-mae``."""
    from keypatch.training import train

    p = sub.add_parser("train-mae", help="train a small MAE on photos (resumable)", description=train.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_arguments(p)
    p.set_defaults(func=train.run)
