"""Dataset-level selection: GraphCut (vs brute force), DQ bins, sampling, diversity metrics, the command."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from keypatch.geometry import list_image_files
from keypatch.selection import (
    cosine_similarity,
    diversity_metrics,
    diversity_study,
    dq_bins,
    graphcut_greedy,
    graphcut_value,
    sample_bins,
    select_dataset,
    select_indices,
)
from keypatch.selection.bins import allocate, bin_sizes
from keypatch.selection.diversity import centrality, coverage, spread
from keypatch.selection.embed import load_embeddings, save_embeddings
from keypatch.selection.graphcut import l2_normalize


def _emb(n: int, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _brute_greedy(sim: np.ndarray, budget: int, lam: float) -> list[int]:
    chosen: list[int] = []
    for _ in range(budget):
        rest = [e for e in range(sim.shape[0]) if e not in chosen]
        chosen.append(max(rest, key=lambda e: (graphcut_value(sim, chosen + [e], lam), -e)))
    return chosen


@pytest.mark.parametrize("seed,lam", [(0, 1.0), (1, 1.0), (2, 0.5), (3, 2.0)])
def test_graphcut_equals_brute_force_greedy(seed, lam):
    sim = cosine_similarity(_emb(9, seed=seed))
    got = graphcut_greedy(sim, 6, lam)
    assert got.tolist() == _brute_greedy(sim, 6, lam)


def test_graphcut_on_a_non_cosine_similarity_and_prefixes():
    rng = np.random.default_rng(5)
    a = rng.random((8, 8))
    sim = (a + a.T) / 2  # arbitrary symmetric non-negative, non-constant diagonal
    assert graphcut_greedy(sim, 5).tolist() == _brute_greedy(sim, 5, 1.0)
    full = graphcut_greedy(sim, 8)
    assert sorted(full.tolist()) == list(range(8))
    for b in range(9):
        assert graphcut_greedy(sim, b).tolist() == full[:b].tolist()


def test_cosine_similarity():
    s = cosine_similarity(_emb(10))
    assert np.allclose(s, s.T) and s.min() >= 0 and s.max() <= 1 and np.allclose(np.diag(s), 1)


def test_bins_are_disjoint_and_cover():
    emb = _emb(53, seed=3)
    bins = dq_bins(emb, n_bins=7)
    assert len(bins) == 7
    assert [len(b) for b in bins] == bin_sizes(53, 7)
    allidx = np.concatenate(bins)
    assert sorted(allidx.tolist()) == list(range(53))  # disjoint and covering
    # bin 0 is GraphCut on everything; bin 1 GraphCut on what remains
    sim = cosine_similarity(emb)
    assert bins[0].tolist() == graphcut_greedy(sim, len(bins[0])).tolist()
    rest = np.setdiff1d(np.arange(53), bins[0])
    assert bins[1].tolist() == rest[graphcut_greedy(sim[np.ix_(rest, rest)], len(bins[1]))].tolist()
    with pytest.raises(ValueError):
        dq_bins(emb[:3], n_bins=4)


def test_allocate_is_proportional_and_exact():
    rng = np.random.default_rng(0)
    for sizes, total in [([10, 10, 10], 7), ([5, 17, 3, 9], 11), ([4, 4], 8), ([6], 1)]:
        q = allocate(sizes, total, rng)
        assert sum(q) == total
        for s, k in zip(sizes, q, strict=True):
            exact = s * total / sum(sizes)
            assert np.floor(exact) <= k <= np.ceil(exact) and k <= s


def test_dq_sampling_is_seeded_and_uniform_per_bin():
    emb = _emb(60, seed=4)
    bins = dq_bins(emb, n_bins=6)
    a, b, c = sample_bins(bins, 0.25, seed=1), sample_bins(bins, 0.25, seed=1), sample_bins(bins, 0.25, seed=2)
    assert np.array_equal(a.indices, b.indices) and not np.array_equal(a.indices, c.indices)
    assert len(a.indices) == 15 == len(set(a.indices.tolist()))
    for idx, b_of in zip(a.indices, a.bin_of, strict=True):
        assert idx in bins[b_of]
    assert sorted(np.bincount(a.bin_of, minlength=6).tolist()) == [2, 2, 2, 3, 3, 3]  # 2.5 per bin of 10
    # each member of a bin is equally likely to be drawn
    counts = np.zeros(60)
    for s in range(150):
        counts[sample_bins(bins, 0.5, seed=s).indices] += 1
    assert counts.min() > 0.5 * 75 and counts.max() < 1.5 * 75


def test_select_indices_methods():
    emb = _emb(40, seed=6)
    for method in ("dq", "graphcut", "random"):
        sel = select_indices(emb, 0.1, method, n_bins=4, seed=0)
        assert len(sel.indices) == 4 == len(set(sel.indices.tolist())) and sel.method == method
    assert select_indices(emb, 0.1, "graphcut").indices.tolist() == graphcut_greedy(cosine_similarity(emb), 4).tolist()
    with pytest.raises(ValueError, match="method"):
        select_indices(emb, 0.1, "kmeans")
    with pytest.raises(ValueError, match="ratio"):
        select_indices(emb, 0.0)


def test_diversity_metrics_golden():
    x = l2_normalize(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    assert coverage(x, np.arange(4)) == pytest.approx(0.0, abs=1e-7)
    assert coverage(x, np.array([0])) == pytest.approx((0 + 2**0.5 + 2 + 2**0.5) / 4)
    assert spread(x, np.array([0, 1])) == pytest.approx(2**0.5)
    assert spread(x, np.array([0])) == 0.0
    assert centrality(x, np.array([0, 2])) == pytest.approx(1.0)
    m = diversity_metrics(x, np.array([0, 1]))
    assert set(m) == {"coverage", "spread", "centrality"}


def test_graphcut_is_central_on_a_blob():
    # the supplement's claim on synthetic data: at a small ratio GraphCut sits near the centre
    emb = _emb(300, d=8, seed=7) + 3.0  # a cloud around a common direction
    rows = diversity_study(emb, [0.02], seeds=5, n_bins=10, progress=False)
    by = {r["method"]: r for r in rows}
    assert by["graphcut"]["centrality"] < by["dq"]["centrality"] and by["graphcut"]["centrality"] < 0.9
    assert by["graphcut"]["spread"] < by["random"]["spread"]


def _folder(tmp_path, n=12):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        arr = (rng.random((20 + i, 30, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(sub / f"img{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_select_dataset_writes_json_and_contact_sheet(tmp_path):
    root = _folder(tmp_path / "data")
    files = list_image_files(root)
    assert len(files) == 12
    emb = _emb(12, seed=8)
    res = select_dataset(root, 0.5, "dq", n_bins=3, seed=0, embeddings=emb, out=tmp_path / "out", progress=False)
    doc = json.loads(res.json_path.read_text())
    assert doc["n_selected"] == 6 and doc["n_total"] == 12 and doc["bin_sizes"] == [4, 4, 4]
    assert [e["bin"] for e in doc["selected"]] == res.bins
    assert res.json_path.parent == tmp_path / "out"
    assert all((root / e["file"]).is_file() for e in doc["selected"])
    assert Image.open(res.sheet_path).size[0] > 100


def test_select_command_with_cached_embeddings(tmp_path):
    from keypatch.cli.main import main

    root = _folder(tmp_path / "data")
    cache = tmp_path / "emb.npz"
    files = list_image_files(root)
    save_embeddings(cache, files, _emb(12, seed=9).astype(np.float32), "efficientnet-lite0")
    assert load_embeddings(cache, files, "efficientnet-lite0") is not None
    assert load_embeddings(cache, files[:-1], "efficientnet-lite0") is None  # stale cache is ignored
    rc = main(["select", str(root), "--ratio", "0.25", "--method", "graphcut", "--cache", str(cache),
               "--out", str(tmp_path / "sel"), "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert doc["method"] == "graphcut" and doc["n_selected"] == 3
    assert (tmp_path / "sel" / "contact_sheet.jpg").is_file()


def test_bin_sizes():
    assert bin_sizes(10, 3) == [4, 3, 3]
    assert list(itertools.accumulate(bin_sizes(275, 10)))[-1] == 275
