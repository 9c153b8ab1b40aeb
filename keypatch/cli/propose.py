"""``keypatch propose``: key patches of image files and folders, stored in a results folder."""

from __future__ import annotations

import argparse
import inspect

from keypatch.cli import values as v
from keypatch.cli.common import (
    add_device,
    add_model,
    add_output,
    add_results,
    report,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``propose``."""
    from keypatch.engines import ENGINES, engine_names
    from keypatch.geometry import COUNT_RULES, RESIZE_FILTERS
    from keypatch.presets import PRESETS
    from keypatch.proposers import available

    p = sub.add_parser(
        "propose", help="find the key patches of images and store them",
        description="Find the key patches of image files (and of the images in folders, recursively). One "
                    "record per image goes into OUT/results.sqlite as soon as it is done; images already "
                    "stored with the same settings are skipped, so a re-run resumes.",
    )
    p.add_argument("paths", nargs="+", type=v.source, metavar="PATH",
                   help="image files and folders, or URIs (file://, and with --engine ray s3://, gs://... read "
                        "by Ray's workers where the images live; docs/scale.md)")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--ratio", type=v.ratio, help="fraction of patches to keep per image, in (0, 1]")
    amount.add_argument("--budget", type=v.positive_int, metavar="N",
                        help="N patches over all the images (start patches included), each next one to the image "
                             "where it lowers the pool's mean loss most (greedy, ranked...; docs/active-learning.md)")
    p.add_argument("--after", type=v.existing, default=None, metavar="PATH",
                   help="continue every image from the patches it already has: a results folder of an earlier "
                        "round, a patch_ids.json, or a Label Studio JSON export (the patches its annotations cover "
                        "half of); they are kept, and not counted in --budget")
    p.add_argument("--strategy", default="greedy", choices=sorted(available()), metavar="STRATEGY",
                   help=f"proposal strategy: {', '.join(available())} (default: greedy = KPP, exact; for datasets "
                        "ranked: on 16 photos nothing was fitted or tuned on, 11-13x faster than greedy on a CPU at a "
                        "mean loss 5-6%% lower at r = 0.1 and 0.25, no photo more than 2%% above its greedy loss; "
                        "docs/strategies.md)")
    p.add_argument("--start", default=None, type=v.start, metavar="center|none|INDEX|ROW,COL",
                   help="greedy-like strategies: begin from the central patch (paper, default), from nothing "
                        "(ablation), or from a patch (98 or 7,0 in the KPP authors' code)")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="paper (default): the paper's text; reference: the KPP authors' released code (start 98, "
                        "int(ratio*N)+1 patches, bilinear resize); --start/--count/--resize override it")
    p.add_argument("--reference", dest="preset", action="store_const", const="reference",
                   help="the same as --preset reference")
    p.add_argument("--count", choices=list(COUNT_RULES), default=None,
                   help="patches kept at a ratio: round(ratio*N) (paper) or int(ratio*N)+1 (authors' code)")
    p.add_argument("--resize", choices=list(RESIZE_FILTERS), default=None,
                   help="resampling filter to the model's side: bicubic (default) or bilinear (authors' code)")
    add_model(p)
    add_device(p)
    add_results(p)
    p.add_argument("--batch-size", type=v.batch_size, default="auto", metavar="auto|N",
                   help="images per MAE batch (default auto: 1 on a CPU; on a GPU as many as fill a pass sized "
                        "from free memory; 8 for Ray actors with GPUs)")
    p.add_argument("--seed", type=v.seed, default=0,
                   help="seed for randomised strategies (random, stochastic, swap, attention's ties); each image "
                        "draws from the seed and its own pixels")
    p.add_argument("--precision", choices=["auto", "float32", "mixed", "bfloat16"], default=None,
                   help="MAE arithmetic of the search strategies: float32 (exact), mixed (bfloat16 screening, "
                        "float32 re-scoring: float32's picks; -v logs its re-scores per image and step), bfloat16 "
                        "(fastest, can change picks); default auto: mixed where bfloat16 is native (CUDA, "
                        "AVX512-BF16/AMX CPUs), else float32")
    ray = p.add_argument_group("engine", "where the job computes: this process, or a Ray cluster (pip install "
                               "'keypatch[ray]'; records stream back into the same store)")
    ray.add_argument("--engine", choices=engine_names(aliases=True), default="process",
                     help="; ".join(f"{name}: {ENGINES[name].description}" for name in engine_names())
                     + " ('local' is the former name of 'process')")
    ray.add_argument("--address", default=None, type=v.ray_address,
                     help="ray: the cluster to join (default: a local instance)")
    ray.add_argument("--workers", type=v.positive_int, default=2,
                     help="ray: model actors (default 2)")
    ray.add_argument("--cpus-per-worker", type=v.positive_float, default=1,
                     help="ray: CPUs (torch threads) per actor (default 1)")
    ray.add_argument("--gpus-per-worker", type=v.non_negative_float, default=0, help="ray: GPUs per actor (default 0)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", type=v.option,
                   help="strategy option, repeatable (e.g. -o eps=0.01 for stochastic, -o top=24 for local, "
                        "-o base=greedy -o rounds=1 for swap)")
    add_output(p, json_summary=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``propose`` for parsed ``args``; 1 when no image could be read."""
    from keypatch.batch import Interrupted, run_propose

    options = dict(args.option)
    # run_propose's own settings (and precision) have flags of their own
    flagged = sorted(set(options) & ({"precision", "count", "resize"} | set(inspect.signature(run_propose).parameters)))
    if flagged:
        raise ValueError(f"-o {flagged[0]}=...: {flagged[0]} has its own flag (see keypatch propose --help)")
    if args.precision:
        options["precision"] = args.precision
    from keypatch.engines import get_engine
    from keypatch.presets import run_settings

    resources = {"address": args.address, "workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
                 "gpus_per_worker": args.gpus_per_worker} if args.engine == "ray" else {}
    settings = run_settings(args.preset, None, args.count, args.resize)
    if args.budget is not None or args.after is not None:
        return _run_pool(args, options, settings)
    try:
        s = run_propose(args.paths, args.ratio, strategy=args.strategy, model=args.model, start=args.start,
                        device=args.device, out_dir=args.out, batch_size=args.batch_size, seed=args.seed,
                        progress=not args.quiet, preset=settings, engine=get_engine(args.engine, **resources),
                        **options)
    except Interrupted as stop:  # what was kept, then the interrupt's usual exit
        _report(args, stop.summary, "interrupted: ")
        raise
    _report(args, s)
    return 1 if s["failed"] == s["found"] else 0


def _run_pool(args: argparse.Namespace, options: dict, settings) -> int:
    """``--budget`` / ``--after``: one search over the whole pool (:func:`keypatch.batch.run_pool`)."""
    from keypatch.batch import run_pool

    if args.engine not in ("process", "local"):
        raise ValueError("--budget and --after search the whole pool at once, in this process: not with --engine ray")
    s = run_pool(args.paths, budget=args.budget, ratio=args.ratio, after=args.after, strategy=args.strategy,
                 model=args.model, start=args.start, device=args.device, out_dir=args.out, seed=args.seed,
                 progress=not args.quiet, preset=settings, **options)
    start = f", start {s['start']}" if s["start"] else ""
    amount = f"budget {s['budget']}: {s['spent']} patches spent" if s["budget"] is not None else \
        f"ratio {s['ratio']:g} = {s['k']} patches each"
    after = f", {s['after']} images continued from {args.after}" if args.after is not None else ""
    mean = f", mean L {s['mean_loss']:.4f}" if s["mean_loss"] is not None else ""
    report(args, s, f"{s['done']} new, {s['skipped']} already stored, {s['failed']} unreadable (of {s['found']}) "
           f"-> {s.get('store')}  [model {s['model_id']}, {s['strategy']}{start}, {amount}{after}{mean}, "
           f"{s['seconds']:.1f} s]")
    return 1 if s["failed"] == s["found"] else 0


def _report(args: argparse.Namespace, s: dict, prefix: str = "") -> None:
    start = f", start {s['start']}" if s["start"] else ""
    report(args, s, f"{prefix}{s['done']} new, {s['skipped']} already stored, {s['failed']} unreadable (of "
           f"{s['found']}) -> {s.get('store')}  [model {s['model_id']}, {s['strategy']}{start}, ratio "
           f"{s['ratio']:g} = {s['k']} patches, {s['seconds']:.1f} s]")
