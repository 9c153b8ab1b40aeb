"""``keypatch serve`` under load: 50 concurrent /predict requests against ``keypatch propose`` on the same images.

Distinct images (crops of the test photos, so no answer comes from the store) are split into 50
requests of 1-4 tasks each (seeded); a few requests also carry a task whose image is broken. All
requests are sent at once from 50 threads to a backend on 127.0.0.1. The same images, in another
results folder, go through ``run_propose`` with the same model, strategy, ratio and batch size.
Printed: both wall times, their ratio (serve over propose), and the checks: every request
answered, every good task a mask, every broken task an error, the model loaded once.

Run from the repository root::

    python benchmarks/bench_serve.py                 # default model, greedy, r = 0.05
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_threads import cpu_name  # noqa: E402

from keypatch.batch import run_propose  # noqa: E402
from keypatch.experiments.photos import load_test_photos  # noqa: E402
from keypatch.serve import Backend, BackendServer, ImageSource  # noqa: E402


def make_images(folder: Path, n: int) -> list[str]:
    """``n`` distinct JPEG crops of the test photos in ``folder``; their names."""
    photos = list(load_test_photos().values())
    names = []
    for i in range(n):
        a = photos[i % len(photos)]
        j = i // len(photos)
        h, w = a.shape[:2]
        crop = a[j * 7 % (h // 4): h - j * 3 % (h // 4), j * 5 % (w // 4): w - j * 11 % (w // 4)]
        names.append(f"img{i:03d}.jpg")
        Image.fromarray(crop).save(folder / names[-1], quality=90)
    (folder / "broken.jpg").write_bytes(b"this is not an image")
    return names


def split(names: list[str], requests: int, rng: np.random.Generator) -> list[list[str]]:
    """``names`` cut into ``requests`` consecutive groups of 1-4."""
    sizes = np.ones(requests, dtype=int)
    while sizes.sum() < len(names):
        i = rng.integers(requests)
        if sizes[i] < 4:
            sizes[i] += 1
    groups, start = [], 0
    for s in sizes:
        groups.append(names[start:start + s])
        start += s
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=125)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--strategy", default="greedy")
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--thread", action="store_true", help="the model in a background thread (Backend's default)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    docroot = work / "images"
    docroot.mkdir()
    names = make_images(docroot, args.images)
    groups = split(names, args.requests, rng)
    broken = set(rng.choice(args.requests, 5, replace=False).tolist())
    print(f"# bench_serve: {args.images} images in {args.requests} requests of 1-4 tasks (+1 broken task in "
          f"{len(broken)} requests); {args.model}, {args.strategy}, r = {args.ratio}, batch {args.batch_size}, "
          f"model in the {'background' if args.thread else 'main'} thread; "
          f"{cpu_name()}; {time.strftime('%Y-%m-%d')}")

    t0 = time.perf_counter()
    summary = run_propose([docroot / n for n in names], args.ratio, args.strategy, args.model, device="cpu",
                          out_dir=work / "propose", batch_size=args.batch_size, progress=False)
    propose_s = time.perf_counter() - t0
    assert summary["done"] == args.images, summary

    import keypatch.api as api

    loads = []
    load_mae = api.load_mae
    api.load_mae = lambda *a, **k: loads.append(a) or load_mae(*a, **k)  # count the backend's model loads
    api._default_model.cache_clear()
    backend = Backend(args.ratio, args.strategy, args.model, work / "serve", device="cpu",
                      batch_size=args.batch_size, source=ImageSource(document_root=docroot), thread=args.thread)
    server = BackendServer(backend, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def call(i: int) -> tuple[list[str], dict]:
        refs = groups[i] + (["broken.jpg"] if i in broken else [])
        body = json.dumps({"tasks": [{"id": j, "data": {"image": r}} for j, r in enumerate(refs)]}).encode()
        req = urllib.request.Request(server.url + "/predict", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as resp:
            return refs, json.loads(resp.read())

    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(args.requests)
    pending = pool.map(call, range(args.requests))
    if args.thread:
        answers = list(pending)
    else:  # as keypatch serve does: the model in the main thread, the requests in others
        done: list = []
        threading.Thread(target=lambda: (done.extend(pending), backend.close()), daemon=True).start()
        backend.serve_batches()
        answers = done
    serve_s = time.perf_counter() - t0
    pool.shutdown()
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        healthy = json.loads(r.read())["status"] == "UP"
    server.shutdown()
    backend.close()

    answered = sum(len(a["results"]) == len(refs) for refs, a in answers)
    masks = sum(bool(p["result"]) for refs, a in answers for r, p in zip(refs, a["results"], strict=True)
                if r != "broken.jpg")
    errors = sum("error" in p for refs, a in answers for r, p in zip(refs, a["results"], strict=True)
                 if r == "broken.jpg")
    print(f"keypatch propose : {propose_s:7.1f} s ({args.images / propose_s:.2f} images/s)")
    print(f"keypatch serve   : {serve_s:7.1f} s ({args.images / serve_s:.2f} images/s), "
          f"{backend.stats['batches']} model batches")
    print(f"serve / propose  : {serve_s / propose_s:.2f}x (target <= 1.3x)")
    print(f"requests answered {answered}/{args.requests}; masks {masks}/{args.images}; broken tasks with an error "
          f"{errors}/{len(broken)}; model loads {len(loads)}; healthy after: {healthy}")


if __name__ == "__main__":
    main()
