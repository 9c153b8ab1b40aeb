"""The ranker as a part of the package: greedy trajectories, fitting, files that name their model, checking."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import keypatch
from keypatch.cli.main import main
from keypatch.objective import Objective
from keypatch.ranker import RankerWarning, Ranking, load_ranker, model_digest, ranker_info, ranker_inputs, save_ranker
from keypatch.ranker import files as ranker_files
from keypatch.ranker.evaluate import samples, screening
from keypatch.ranker.fit import fit_ranker, held_out_split, train
from keypatch.ranker.trajectories import greedy_steps, trajectories
from tests.conftest import smooth_images


@pytest.fixture
def toy_photos(tmp_path):
    """Four smooth random 64x64 photos as PNG files (the toy model's size)."""
    d = tmp_path / "photos"
    d.mkdir()
    x = smooth_images(4, 64, seed=3)
    for i, img in enumerate(x):
        arr = ((img - img.amin()) / (img.amax() - img.amin()) * 255).permute(1, 2, 0).byte().numpy()
        Image.fromarray(arr).save(d / f"p{i}.png")
    return sorted(d.glob("*.png"))


@pytest.fixture(autouse=True)
def warned_anew():
    ranker_files._WARNED.clear()
    yield
    ranker_files._WARNED.clear()


def test_greedy_steps_are_exact_greedy_with_every_candidate_scored(toy_model):
    images = smooth_images(2, 64, seed=2)
    t = greedy_steps(Objective(toy_model, images), 5)
    greedy = keypatch.propose_batch(images, 5 / 16, "greedy", toy_model)
    assert [row.tolist() for row in t["chosen"]] == [p.patches for p in greedy]
    assert t["scores"].shape == (2, 4, 16) and t["err"].shape == (2, 4, 16)
    for j in range(4):  # the chosen patches are inf, every other candidate scored, the pick the lowest
        assert t["scores"][:, j].isinf().sum(1).tolist() == [j + 1, j + 1]
        assert t["scores"][:, j].amin(1).tolist() == pytest.approx([p.losses[j + 1] for p in greedy], rel=1e-5)


def test_a_ranker_trains_saves_loads_and_its_own_steps_pick_the_best_of_its_top_m(toy_model, tmp_path):
    images = smooth_images(2, 64, seed=2)
    t = greedy_steps(Objective(toy_model, images), 5)
    per_photo = [{k: v[i] for k, v in t.items()} for i in range(2)]
    x, s, rem = samples(per_photo, 4, 4)
    assert x.shape == (8, 11, 4, 4) and rem.sum().item() == sum(2 * (15 - j) for j in range(4))
    net = train(x, s, rem, 4, 4, tau=0.01, epochs=2, seed=0)
    save_ranker(net, tmp_path / "r.safetensors")
    assert torch.equal(load_ranker(str(tmp_path / "r.safetensors"))(x), net(x))
    objective = Objective(toy_model, images)
    own = greedy_steps(objective, 5, Ranking(objective, net), m=2)
    for j in range(4):  # each pick is the better of the ranker's top 2 at that step
        chosen = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, own["chosen"][:, : j + 1], True)
        inputs = ranker_inputs(own["targets"], own["err"][:, j], own["err"][:, max(j - 1, 0)], chosen, 4, 4)
        with torch.no_grad():
            top = torch.sort(-net(inputs).masked_fill(chosen, -math.inf), dim=1, stable=True).indices[:, :2]
        best = top.gather(1, own["scores"][:, j].gather(1, top).argmin(1, keepdim=True))[:, 0]
        assert own["chosen"][:, j + 1].tolist() == best.tolist()


def test_screening_counts_hits_and_regret_on_a_known_case():
    s = torch.tensor([[1.0, 2.0, 4.0, math.inf], [3.0, 1.5, 2.0, 1.0]])
    rem = torch.tensor([[True, True, True, False], [True, True, True, True]])
    signal = torch.tensor([[0.0, 5.0, 4.0, 9.0], [9.0, 1.0, 2.0, 0.0]])  # row 0 top 1: patch 1; row 1: patch 0
    got = screening({"x": signal}, s, rem, photos=2, sizes=(1, 2, 3))
    assert got.hit["x"] == {1: 0.0, 2: 0.0, 3: 0.5}  # row 0's top 3 hold its best (patch 0); row 1's never
    assert got.regret["x"][1] == pytest.approx((2.0 / 1.0 - 1 + 3.0 / 1.0 - 1) / 2)
    assert got.regret["x"][2] == pytest.approx((2.0 - 1 + 2.0 - 1) / 2)
    assert "| x |" in got.table() and got.as_dict()["steps"] == 2


def test_trajectories_are_cached_per_photo_and_a_damaged_file_is_computed_again(toy_model, toy_photos, tmp_path,
                                                                                monkeypatch):
    cache = tmp_path / "cache"
    first = trajectories(toy_photos[:3], toy_model, 4, cache)
    files = sorted(cache.rglob("*.pt"))
    assert len(files) == 3 and all(model_digest(toy_model) in str(f) for f in files)
    calls = []
    real = greedy_steps

    def counting(objective, k, *a, **kw):
        calls.append(objective.batch)
        return real(objective, k, *a, **kw)

    monkeypatch.setattr("keypatch.ranker.trajectories.greedy_steps", counting)
    again = trajectories(toy_photos[:3], toy_model, 4, cache)
    assert calls == [] and all(torch.equal(a["scores"], b["scores"]) for a, b in zip(first, again, strict=True))
    files[0].write_bytes(b"not a torch file")
    trajectories(toy_photos[:3], toy_model, 4, cache)
    assert calls == [1]  # only the damaged photo again


def test_an_unreadable_photo_is_left_out_with_a_warning(toy_model, toy_photos, tmp_path):
    bad = toy_photos[0].parent / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        got = trajectories([bad, *toy_photos[:2]], toy_model, 3, tmp_path / "cache")
    assert len(got) == 2 and all(t["chosen"].shape == (3,) for t in got)


def test_held_out_split_is_by_content_and_never_everything(toy_photos):
    train_files, held = held_out_split(toy_photos, 0.25)
    assert len(held) == 1 and sorted(train_files + held) == toy_photos
    assert held_out_split(list(reversed(toy_photos)), 0.25)[1] == held  # by content, not order
    assert held_out_split(toy_photos[:2], 0.9)[0] and held_out_split(toy_photos, 0.0)[1] == []
    with pytest.raises(ValueError, match="held_out"):
        held_out_split(toy_photos, 1.0)


def test_a_fitted_ranker_names_its_model_and_ranked_warns_only_for_another(toy_model, toy_photos, tmp_path):
    out = tmp_path / "toy.safetensors"
    lines = []
    result = fit_ranker(toy_photos, toy_model, out, ratio=0.25, held_out=0.25, own_steps=1, epochs=2,
                        cache=tmp_path / "cache", progress=False, log=lines.append)
    info = ranker_info(str(out))
    assert info.model == toy_model.model_id and info.model_sha256 == model_digest(toy_model)
    assert info.photos == "3" and float(info.ratio_max) == 0.25 and result.held_out_photos == 1
    assert result.held_out is not None and result.held_out.steps == 3 and "ranker" in result.held_out.table()
    assert result.steps == 2 * 3 * 3  # greedy's steps and the ranker's own, 3 photos of 3 steps each
    images = smooth_images(2, 64, seed=9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keypatch.propose_batch(images, 0.25, "ranked", toy_model, ranker=str(out))
        assert not [w for w in caught if issubclass(w.category, RankerWarning)]
        keypatch.propose_batch(images, 0.25, "ranked", toy_model)  # the shipped ranker: another model's
        keypatch.propose_batch(images, 0.25, "ranked", toy_model)
    said = [str(w.message) for w in caught if issubclass(w.category, RankerWarning)]
    assert len(said) == 1 and "keypatch ranker fit" in said[0] and toy_model.model_id in said[0]


def test_model_digest_follows_the_weights(toy_model):
    other = keypatch.load_mae("random:toy:1")
    same = keypatch.load_mae("random:toy:0")
    assert model_digest(toy_model) == model_digest(same) != model_digest(other)


def _png_dir(tmp_path, n=3, size=224):
    d = tmp_path / "pool"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(d / f"img{i}.png")
    return d


def test_cli_propose_ranked_warns_until_a_ranker_is_fitted_to_the_model(tmp_path, capsys, monkeypatch):
    """The issue's must-show, as written: random:small:1 with the shipped ranker warns naming
    `keypatch ranker fit`; after `keypatch ranker fit ... --ratio 0.05 --out F`, `-o ranker=F` does not."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    photos = _png_dir(tmp_path)
    model = ["--model", "random:small:1"]
    assert main(["propose", str(photos), "--strategy", "ranked", "--ratio", "0.05", "--out", str(tmp_path / "a"),
                 "--quiet", *model]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "keypatch ranker fit" in err and "random:small:1" in err
    f = tmp_path / "small1.safetensors"
    assert main(["ranker", "fit", str(photos), *model, "--ratio", "0.05", "--out", str(f), "--quiet",
                 "--held-out", "0.34", "--epochs", "2", "--own-steps", "0"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {f}" in out and "held out: 1 photos" in out and "| ranker |" in out
    assert (tmp_path / "xdg" / "keypatch" / "ranker").is_dir()
    assert main(["propose", str(photos), "--strategy", "ranked", "--ratio", "0.05", "-o", f"ranker={f}",
                 "--out", str(tmp_path / "b"), "--quiet", *model]) == 0
    assert "ranker" not in capsys.readouterr().err
    assert main(["ranker", "check", str(photos), *model, "--ratio", "0.05", "-o", f"ranker={f}", "--json",
                 "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["same_model"] is True and got["photos"] == 3 and got["steps"] == 3 * 9
    assert set(got["regret"]) == {"error alone", "ranker"}
    assert main(["ranker", "check", str(photos), *model, "--ratio", "0.05", "-o", "m=3", "--quiet"]) == 2
    assert "only -o ranker=FILE" in capsys.readouterr().err


def test_the_shipped_ranker_names_the_embedded_model():
    """The shipped ranker was fitted to the embedded default model: ranked with it gives no warning."""
    info = ranker_info("default")
    assert info.model.startswith("default@") and int(info.photos) >= 200
    assert ranker_files.warn_other_model("default", keypatch.load_mae("default"))
