"""``keypatch experiment``: the papers' experiments, one sub-command each (ablation, budget, classify,
compare, diversity, dq-train, meaning), apart from the product commands at the top level."""

from __future__ import annotations

import argparse
import importlib

EXPERIMENTS = ["ablation", "budget", "classify", "compare", "diversity", "dq_train", "meaning"]
"""The modules of ``keypatch.cli`` that each add one experiment's parser."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``experiment`` and its experiments."""
    p = sub.add_parser("experiment",
                       help="the papers' experiments: ablation, budget, classify, compare, diversity, dq-train, "
                            "meaning",
                       description="The experiments of the KPP paper and the DQ supplement, as commands.")
    inner = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name in EXPERIMENTS:
        importlib.import_module(f"keypatch.cli.{name}").add_parser(inner)
