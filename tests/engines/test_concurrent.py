"""Concurrent ``propose`` runs on one store share the work; a killed run's images are taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from keypatch.store import ResultStore


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("concurrent")
    g = np.random.default_rng(0)
    for i in range(24):
        small = g.integers(0, 256, (6, 6, 3)).astype(np.uint8)
        Image.fromarray(small).resize((96, 96), Image.Resampling.BILINEAR).save(d / f"p{i:02d}.png")
    return d


def _cli(photos, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = ("import json, sys; from keypatch.batch import run_propose; "
            "s = run_propose(sys.argv[1], 0.02, model='random:small:0', out_dir=sys.argv[2], progress=False); "
            "print(json.dumps({k: s[k] for k in ('done', 'skipped', 'recomputed', 'failed')}))")
    return subprocess.Popen([sys.executable, "-c", code, str(photos), str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(out):
    with ResultStore(out, create=False) as s:
        return s.records()


def test_two_runs_share_the_work(photos, tmp_path):
    out = tmp_path / "res"
    runs = [_cli(photos, out)]
    time.sleep(1.0)
    runs.append(_cli(photos, out))
    results = []
    for p in runs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    recs = _records(out)
    assert len(recs) == 24 == len({r.sha256 for r in recs})
    assert sum(r["done"] for r in results) == 24 and all(r["recomputed"] == 0 for r in results)
    assert all(r["done"] + r["skipped"] == 24 for r in results)
    assert all(r["done"] > 0 for r in results), results  # both computed a share
    with ResultStore(out, create=False) as s:
        assert s.claims() == []


def test_a_killed_run_is_finished_by_the_next(photos, tmp_path):
    out = tmp_path / "res"
    hang = textwrap.dedent("""
        import sys, time
        import keypatch.api
        from keypatch.batch import run_propose
        real, calls = keypatch.api.propose_normalised, []
        def slow(*a, **k):
            calls.append(1)
            if len(calls) > 5:
                time.sleep(3600)  # holds its claim until killed
            return real(*a, **k)
        keypatch.api.propose_normalised = slow
        run_propose(sys.argv[1], 0.02, model="random:small:0", out_dir=sys.argv[2], progress=False)
    """)
    child = subprocess.Popen([sys.executable, "-c", hang, str(photos), str(out)])
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "results.sqlite").exists():
            try:
                if len(_records(out)) >= 5:
                    break
            except ValueError:
                pass
        time.sleep(0.2)
    time.sleep(0.5)
    with ResultStore(out, create=False) as s:
        assert len(s.claims()) == 2  # the image in flight and the next one, decoded ahead
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert len(_records(out)) == 5
    p = _cli(photos, out)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == {"done": 19, "skipped": 5, "recomputed": 0, "failed": 0}
    recs = _records(out)
    assert len(recs) == 24 == len({r.sha256 for r in recs})
