"""``keypatch compare``: mean L(S) of strategies across ratios, CSV + plot (random weights, tiny ratios)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from keypatch.experiments.compare import markdown_table, summarize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    for name in ("coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).resize((224, 224), Image.Resampling.BICUBIC).save(folder / f"{name}.jpg")
    return folder


def test_compare_command(photos, tmp_path, capsys):
    import json

    from keypatch.cli.main import main

    out = tmp_path / "cmp"
    rc = main(["experiment", "compare", str(photos), "--ratios", "0.005", "0.01", "--strategies", "greedy",
               "attention", "random", "--model", "random:small", "--device", "cpu", "--greedy-start", "none",
               "--out", str(out), "--quiet", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)["summary"]  # --json: one object, the summary rows in it
    assert len(printed) == 6 and {r["strategy"] for r in printed} == {"greedy", "attention", "random"}
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 2 * 3 * 2  # images x strategies x ratios
    assert {r["strategy"] for r in rows} == {"greedy", "attention", "random"}
    assert {int(r["k"]) for r in rows} == {1, 2}  # round(0.005 * 196), round(0.01 * 196)
    for r in rows:
        assert np.isfinite(float(r["loss"])) and float(r["loss"]) > 0
        assert len(r["patches"].split()) == int(r["k"])
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert len(summary) == 6 and all(int(s["n_images"]) == 2 for s in summary)
    # with start="none" greedy's first patch is the best single patch: no worse than any other at k = 1
    loss = {(r["image"], r["strategy"], r["k"]): float(r["loss"]) for r in rows}
    for (img, st, k), v in loss.items():
        if st == "greedy" and k == "1":
            assert v <= min(loss[img, "random", k], loss[img, "attention", k]) + 1e-6
    assert (out / "compare.png").stat().st_size > 1000
    assert "| greedy |" in (out / "summary.md").read_text()


def test_compare_on_named_arrays(tmp_path):
    from keypatch.experiments.compare import run_compare

    rng = np.random.default_rng(0)
    images = {"noise": (rng.random((50, 70, 3)) * 255).astype(np.uint8), "flat": np.full((64, 64, 3), 128, np.uint8)}
    rows, summary = run_compare(images, [0.25], ["attention", "random"], "random:toy", tmp_path, device="cpu",
                                progress=False)
    assert [r["image"] for r in rows] == ["noise", "flat", "noise", "flat"] and all(r["k"] == 4 for r in rows)
    assert {s["strategy"]: s["vs_random"] for s in summary}["random"] == pytest.approx(1.0)
    import keypatch  # each image timed alone, with the batch's seed: the picks of a batched proposal

    batched = keypatch.propose_batch(list(images.values()), 0.25, "random", "random:toy", seed=0, device="cpu")
    assert [r["patches"] for r in rows if r["strategy"] == "random"] == [" ".join(map(str, b.patches)) for b in batched]


def test_summary_and_table():
    rows = [{"image": i, "strategy": s, "ratio": r, "k": 2, "loss": v, "seconds": 1.0}
            for i, s, r, v in [("x", "a", 0.1, 1.0), ("y", "a", 0.1, 3.0), ("x", "b", 0.1, 2.0), ("x", "a", 0.2, 0.5)]]
    summ = {(s["strategy"], s["ratio"]): s for s in summarize(rows, baseline="b")}
    assert summ["a", 0.1]["mean_loss"] == pytest.approx(2.0)
    assert summ["a", 0.1]["vs_b"] == pytest.approx(0.5)  # only image x has a baseline: 1.0 / 2.0
    assert summ["a", 0.1]["sem_loss"] == pytest.approx(np.std([1.0, 3.0], ddof=1) / 2**0.5)
    table = markdown_table(list(summ.values()))
    assert "r = 0.1" in table and "| b | 2.0000 ± 0.0000 | — |" in table
