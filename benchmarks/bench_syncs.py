"""Host synchronisations per search call, as the code makes them, on any device (a CPU included).

    python benchmarks/bench_syncs.py [--model default] [--photos 2] [--ratio 0.1] [--before DIR]

For ``greedy`` and ``ranked`` in ``float32`` and ``mixed``: the calls that make the host wait for
the device (:class:`keypatch.syncs.HostSyncs`) during one warm ``select`` of ``--photos`` test
photos, by kind, and per step. ``--before DIR`` counts the keypatch in the checkout ``DIR`` too (in
a child process; the counter is this checkout's ``keypatch/syncs.py``, loaded by its path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import importlib.util, json, sys, warnings
warnings.simplefilter("ignore")
import keypatch
from keypatch.experiments.photos import load_test_photos
from keypatch.proposers import get_proposer
spec = importlib.util.spec_from_file_location("syncs", sys.argv[1])
syncs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(syncs)
model = keypatch.load_mae(sys.argv[2])
images = keypatch.load_images(list(load_test_photos().values())[: int(sys.argv[3])], model.config.image_size)
k = model.grid.count(float(sys.argv[4]))
rows = []
for name in ("greedy", "ranked"):
    for precision in ("float32", "mixed"):
        proposer = get_proposer(name, precision=precision)
        proposer.select(model, images, 2, 0)  # warm: the model's digest (ranked), lazy set-up
        with syncs.HostSyncs() as s:
            proposer.select(model, images, k, 0)
        rows.append({"strategy": name, "precision": precision, "k": k, "count": s.count, "calls": dict(s.calls)})
print(json.dumps(rows))
"""


def count(path: str | None, model: str, photos: int, ratio: float) -> list[dict]:
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = path
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "keypatch" / "syncs.py"), model, str(photos),
                          str(ratio)], env=env, capture_output=True, text=True, check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--photos", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--before", default=None, help="a checkout whose keypatch is counted too")
    args = ap.parse_args()
    runs = [("now", str(ROOT))] + ([("before", args.before)] if args.before else [])
    print(f"# host syncs per select call: model {args.model}, {args.photos} photos, ratio {args.ratio}")
    print(f"{'keypatch':8s} {'strategy':8s} {'precision':9s} {'k':>3s} {'syncs':>6s} {'per step':>8s}  by kind")
    for label, path in runs:
        for r in count(path, args.model, args.photos, args.ratio):
            print(f"{label:8s} {r['strategy']:8s} {r['precision']:9s} {r['k']:3d} {r['count']:6d} "
                  f"{r['count'] / max(1, r['k'] - 1):8.2f}  {r['calls']}", flush=True)


if __name__ == "__main__":
    main()
