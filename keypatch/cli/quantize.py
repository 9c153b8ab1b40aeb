"""``keypatch quantize``: Dataset Quantization of an image folder, stored as its images' kept patches."""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_model, add_output, report


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``quantize``."""
    from keypatch.classifiers import available_classifiers
    from keypatch.data.codec import DEFAULT_CODEC
    from keypatch.proposers import available

    p = sub.add_parser(
        "quantize", help="Dataset Quantization: select images with DQ's bins, store only their kept patches",
        description="Select FRACTION of each class of SRC (one sub-folder per class, or a plain folder) with "
                    "DQ's bins sampled uniformly, choose each selected image's kept patches (1 - DROP of them) "
                    "with a strategy, and store only those patches: OUT/manifest.json and OUT/shard-*.tar "
                    "(WebDataset). OUT/work/ keeps the embeddings, the selection and the picks, so a re-run "
                    "resumes and writes the same bytes. Rebuild the images with keypatch reconstruct or "
                    "keypatch.data.QuantizedDataset.")
    p.add_argument("src", type=v.existing_dir, metavar="SRC", help="image folder (class sub-folders: labelled)")
    p.add_argument("--fraction", type=v.ratio, required=True, help="share of each class's images kept, in (0, 1]")
    p.add_argument("--drop", type=v.drop, required=True,
                   help="share of each image's patches dropped, in [0, 1) (DQ: 0.2)")
    p.add_argument("--patches", default="greedy", choices=sorted(available()), metavar="STRATEGY",
                   help=f"who chooses the kept patches: {', '.join(available())} (default greedy = KPP; attention "
                        "is DQ's GradCAM++; backward is exact and cheaper than greedy when most patches are kept)")
    p.add_argument("--out", type=v.out_dir, required=True, metavar="DIR", help="the quantized dataset's folder")
    p.add_argument("--bins", type=v.positive_int, default=10, help="DQ's bins per class (default 10)")
    p.add_argument("--seed", type=v.seed, default=0, help="seed of the sampling and of randomised strategies")
    p.add_argument("--codec", type=v.codec, default=DEFAULT_CODEC,
                   help="how kept patches are encoded: webp (lossless, default), png, webp:Q or jpeg:Q (lossy)")
    p.add_argument("--classifier", default="efficientnet-lite0", choices=sorted(available_classifiers()),
                   help="network whose features place images in bins (default efficientnet-lite0)")
    p.add_argument("--per-shard", type=v.positive_int, default=1000, help="images per shard (default 1000)")
    add_model(p)
    add_device(p)
    p.add_argument("--batch-size", type=v.positive_int, default=1, help="images per MAE batch (default: 1)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", type=v.option,
                   help="strategy option, repeatable (as for keypatch propose)")
    add_output(p, json_summary=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``quantize`` for parsed ``args``."""
    from keypatch.data import quantize

    r = quantize(args.src, args.fraction, args.drop, args.patches, args.out, bins=args.bins, seed=args.seed,
                 model=args.model, codec=args.codec, classifier=args.classifier, device=args.device,
                 batch_size=args.batch_size, per_shard=args.per_shard, progress=not args.quiet, **dict(args.option))
    b = r.bytes
    selected = sum(c[0] for c in r.counts.values())
    found = sum(c[1] for c in r.counts.values())
    summary = {"out": str(r.out), "counts": r.counts, "bytes": b, "selection_reused": r.selection_reused,
               "picks": {k: r.picks[k] for k in ("done", "skipped", "failed", "model_id", "strategy", "k")},
               "seconds": r.seconds}
    per_class = ", ".join(f"{c or 'all'} {s}/{n}" for c, (s, n) in r.counts.items())
    report(args, summary,
           f"kept {selected} of {found} images ({per_class}); {r.picks['k']} patches each by {r.picks['strategy']} "
           f"({r.picks['done']} new picks, {r.picks['skipped']} stored)\n"
           f"bytes: kept patches {b['payload']:,} = {b['payload'] / b['reencoded']:.1%} of the selected images "
           f"re-encoded whole at the model's size with {args.codec} ({b['reencoded']:,}), "
           f"{b['payload'] / b['originals']:.1%} of their files ({b['originals']:,}); shards {b['shards']:,} "
           f"(tar headers and entries {b['shards'] - b['payload']:,}), manifest {b['manifest']:,}\n-> {r.out}")
    return 0
