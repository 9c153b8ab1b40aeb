"""``keypatch experiment budget``: a patch budget over a pool against the same patches spread evenly."""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_model, add_output, report


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``budget``."""
    from keypatch.proposers import available

    p = sub.add_parser("budget", help="a patch budget over a pool against the same patches spread evenly",
                       description="At each budget (patches per image on average), the pool's greedy and the same "
                                   "number on every image, on the same images: the pool's mean L of both with 95%% "
                                   "bootstrap intervals over images, their paired difference, and where the budget "
                                   "went. Writes OUT/budget.csv, OUT/budget.md, OUT/budget.png.")
    p.add_argument("paths", nargs="*", type=v.existing, help="image files and/or folders")
    p.add_argument("--test-photos", action="store_true",
                   help="add the test photos shipped with scikit-image / scikit-learn / matplotlib")
    p.add_argument("--per-image", type=v.positive_int, nargs="+", default=[2, 5, 10], metavar="B",
                   help="budgets, as patches per image on average (default 2 5 10)")
    p.add_argument("--strategy", default="greedy", choices=sorted(available()), metavar="STRATEGY",
                   help="a strategy that takes a budget (greedy, ranked, ...; default greedy)")
    add_model(p)
    add_device(p)
    p.add_argument("--seed", type=v.seed, default=0)
    p.add_argument("--out", type=v.out_dir, required=True)
    add_output(p, json_summary=True)

    def run(args: argparse.Namespace) -> None:
        from keypatch.api import build_proposer, resolve_model
        from keypatch.experiments.budget import budget_experiment, summarize_budget, write_budget
        from keypatch.geometry import list_image_files
        from keypatch.presets import run_settings
        from keypatch.rounds import check_budget

        proposer = build_proposer(args.strategy, run_settings(None))
        check_budget(proposer, 1)  # before any image is read
        images = {str(f): f for f in list_image_files(args.paths)} if args.paths else {}
        if args.test_photos:
            from keypatch.experiments.photos import load_test_photos

            images.update(load_test_photos())
        if not images:
            raise ValueError("give image PATHS and/or --test-photos")
        model = resolve_model(args.model, args.device)
        say = None if args.quiet else (lambda text: print(text, flush=True))
        rows = budget_experiment(images, args.per_image, proposer, model, seed=args.seed, progress=say)
        files = write_budget(rows, args.out, title=f"{args.strategy}, {len(images)} images, model {model.model_id}")
        summary = summarize_budget(rows)
        report(args, {"images": len(images), "summary": summary, "files": [str(f) for f in files]},
               (args.out / "budget.md").read_text() + "wrote " + ", ".join(str(f) for f in files))

    p.set_defaults(func=run)
