"""``keypatch ranker fit`` and ``keypatch ranker check``: the ``ranked`` strategy's ranker for your model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from keypatch.cli.common import add_device, add_model, add_output, report

DESCRIPTION = ("fit: fit the ranked strategy's ranker to a model's exact greedy steps on your photos (each photo's "
               "steps are cached, so a stopped fit resumes), then print hit rate and regret on held-out photos. "
               "check: does a ranker serve a model? Its top candidates against exact greedy's steps on your photos.")


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/keypatch/ranker`` (``~/.cache/keypatch/ranker``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "keypatch" / "ranker"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ranker`` with its actions ``fit`` and ``check``."""
    from keypatch.cli import values as v

    p = sub.add_parser("ranker", help="fit the ranked strategy's ranker to your model, or check one",
                       description=DESCRIPTION)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = actions.add_parser("fit", help="fit a ranker to a model's exact greedy steps", description=DESCRIPTION)
    check = actions.add_parser("check", help="hit rate and regret of a ranker against exact greedy on your photos",
                               description=DESCRIPTION)
    for q in (fit, check):
        q.add_argument("paths", nargs="+", type=v.existing, help="photo files and/or folders (searched recursively)")
        add_model(q)
        q.add_argument("--cache", type=v.out_dir, default=None, metavar="DIR",
                       help=f"where each photo's greedy steps are cached (default: {default_cache()})")
        add_device(q)
        add_output(q, json_summary=True)
    fit.add_argument("--ratio", type=v.ratio, default=0.25,
                     help="greedy's steps up to this ratio: the ranker serves ratios up to it (default 0.25)")
    fit.add_argument("--out", type=v.out_file, required=True, metavar="FILE", help="the ranker file written")
    fit.add_argument("--held-out", type=v.drop, default=0.1, metavar="FRACTION",
                     help="photos kept out of the fit for the table at the end (default 0.1; 0: none)")
    fit.add_argument("--own-steps", type=int, default=1, choices=range(0, 4), metavar="N",
                     help="rounds refitted on the ranker's own screened steps, each scored exhaustively (default 1)")
    fit.add_argument("--epochs", type=v.positive_int, default=30)
    fit.add_argument("--weight-decay", type=v.non_negative_float, default=1e-5)
    fit.add_argument("--seed", type=v.seed, default=0)
    check.add_argument("--ratio", type=v.ratio, default=0.25,
                       help="exact greedy's steps up to this ratio (default 0.25)")
    check.add_argument("-o", "--option", action="append", default=[], metavar="ranker=FILE", type=v.option,
                       help="the ranker to check, as ranked takes it (default: the shipped one)")
    fit.set_defaults(func=run_fit)
    check.set_defaults(func=run_check)


def _photos(paths: list[Path]) -> list[Path]:
    from keypatch.geometry.files import list_image_files

    return list_image_files(paths)


def run_fit(args: argparse.Namespace) -> int:
    """``keypatch ranker fit``."""
    import keypatch
    from keypatch.ranker.fit import fit_ranker

    photos = _photos(args.paths)
    model = keypatch.load_mae(args.model, device=args.device)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if not args.json:
            print(line, flush=True)

    result = fit_ranker(photos, model, args.out, ratio=args.ratio, held_out=args.held_out, own_steps=args.own_steps,
                        epochs=args.epochs, weight_decay=args.weight_decay, seed=args.seed,
                        cache=args.cache or default_cache(), progress=not args.quiet, log=log)
    held = result.held_out
    text = [f"wrote {result.out} ({result.train_photos} photos, {result.steps} steps, {result.seconds:.0f} s); "
            f"use it with: keypatch propose ... --strategy ranked -o ranker={result.out} --model {args.model}"]
    if held is not None:
        text += ["", f"held out: {held.photos} photos, {held.steps} steps of exact greedy (never trained on)", "",
                 held.table()]
    summary = {"out": str(result.out), "model": args.model, "train_photos": result.train_photos,
               "held_out_photos": result.held_out_photos, "steps": result.steps, "seconds": result.seconds,
               "held_out": None if held is None else held.as_dict()}
    report(args, summary, "\n".join(text))
    return 0


def run_check(args: argparse.Namespace) -> int:
    """``keypatch ranker check``."""
    import keypatch
    from keypatch.ranker.evaluate import check_ranker
    from keypatch.ranker.files import model_digest, ranker_info

    options = dict(args.option)
    unknown = sorted(set(options) - {"ranker"})
    if unknown:
        raise ValueError(f"-o {unknown[0]}: ranker check takes only -o ranker=FILE")
    ranker = str(options.get("ranker", "default"))
    info = ranker_info(ranker)
    photos = _photos(args.paths)
    model = keypatch.load_mae(args.model, device=args.device)
    result = check_ranker(photos, model, ranker, ratio=args.ratio, cache=args.cache or default_cache(),
                          progress=not args.quiet)
    same = info.model_sha256 == model_digest(model)
    top4 = result.regret["ranker"][4]
    verdict = ("fitted to this model" if same else f"fitted to {info.fitted_to()}, not to this model "
               f"(weights {model_digest(model)})")
    text = [f"ranker {ranker} ({verdict}) on {result.photos} photos, {result.steps} steps of exact greedy to "
            f"r = {args.ratio:g} with {model.model_id}:", "", result.table(), "",
            f"ranked scores the ranker's top 4 at each step: their best is {top4:+.2%} above the step's best "
            f"on average "
            f"(the current error alone: {result.regret['error alone'][4]:+.2%})."]
    summary = {"ranker": ranker, "ranker_sha256": info.digest, "fitted_to": info.model, "same_model": same,
               "model": model.model_id, **result.as_dict()}
    report(args, summary, "\n".join(text))
    return 0
