"""Ranked greedy: its inputs, its shipped ranker, its screen and its ranked moves."""

import pytest
import torch

import keypatch
from keypatch.objective import Objective
from keypatch.proposers import get_proposer
from keypatch.proposers.swap import refine
from keypatch.ranker import DEFAULT_RANKER, PatchRanker, Ranking, load_ranker, ranker_inputs, save_ranker
from tests.conftest import smooth_images


def _images(n: int, size: int = 224) -> torch.Tensor:
    return smooth_images(n, size, seed=7)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return _images(3)


def test_inputs_on_a_known_grid():
    """2x3 grid, 2 values per patch: variances, neighbour differences (0 off the grid), errors."""
    t = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 2.0], [3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]])
    err = torch.tensor([[4.0, 2.0, 1.0, 1.0, 0.0, 9.0]])
    prev = torch.tensor([[5.0, 2.0, 3.0, 1.0, 0.0, 9.0]])
    chosen = torch.tensor([[False, False, False, False, False, True]])
    x = ranker_inputs(t, err, prev, chosen, 2, 3)
    assert x.shape == (1, 11, 2, 3)
    log = torch.log
    assert x[0, 0, 0, 2] == pytest.approx(log(torch.tensor(2.0 + 1e-3)).item())  # var of (0, 2), unbiased
    assert x[0, 1, 0, 0] == pytest.approx(log(torch.tensor(1.0 + 1e-3)).item())  # to the right: (0,0) vs (1,1)
    assert x[0, 1, 0, 2] == 0 and x[0, 2, 1, 0] == 0 and x[0, 3, 0, 0] == 0 and x[0, 4, 0, 1] == 0  # off the grid
    assert x[0, 2, 0, 0] == pytest.approx(log(torch.tensor(9.0 + 1e-3)).item())  # below: (0,0) vs (3,3)
    mean = 8.0 / 5  # the masked patches' errors
    assert x[0, 6].flatten().tolist() == [0, 0, 0, 0, 0, 1]
    assert x[0, 7, 0, 0] == pytest.approx(4 / mean) and x[0, 7, 1, 2] == 0
    assert x[0, 9, 0, 2] == pytest.approx(2 / mean) and x[0, 9, 0, 1] == 0  # the drop since the last step
    assert x[0, 10, 0, 0] == pytest.approx(0.1 * log(torch.tensor(mean)).item())
    assert x[0, 5].eq(1).all()  # Chebyshev distance from the centre: a 2-row grid has no centre row


def test_shipped_ranker_loads_and_round_trips(tmp_path):
    net = load_ranker()
    assert isinstance(net, PatchRanker) and DEFAULT_RANKER.is_file()
    x = torch.randn(2, 11, 14, 14)
    save_ranker(net, tmp_path / "r.safetensors", model="test")
    again = load_ranker(str(tmp_path / "r.safetensors"))
    assert torch.equal(again(x), net(x)) and net(x).shape == (2, 196)


def test_the_stored_settings_name_the_ranker_weights(tmp_path):
    shipped = get_proposer("ranked").settings()
    assert shipped["ranker"] == "default" and len(shipped["ranker_sha256"]) == 16
    other = PatchRanker()
    torch.nn.init.zeros_(other.net[0].weight)
    save_ranker(other, tmp_path / "other.safetensors")
    mine = get_proposer("ranked", ranker=str(tmp_path / "other.safetensors")).settings()
    assert mine["ranker_sha256"] != shipped["ranker_sha256"]
    assert {k: v for k, v in mine.items() if not k.startswith("ranker")} == \
        {k: v for k, v in shipped.items() if not k.startswith("ranker")}


def test_missing_or_foreign_weights_fail_before_any_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ranker weights"):
        get_proposer("ranked", ranker=str(tmp_path / "none.safetensors"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a keypatch ranker"):
        get_proposer("ranked", ranker=str(tmp_path / "other.safetensors"))


@pytest.mark.parametrize("meta,key", [({"width": "1000000000", "depth": "4"}, "width"),
                                      ({"width": "32", "depth": "100000"}, "depth"),
                                      ({"width": "-32", "depth": "4"}, "width"),
                                      ({"width": "3.2e1", "depth": "4"}, "width"),
                                      ({"depth": "4"}, "width")])
def test_absurd_metadata_sizes_are_refused_before_a_network_is_built(meta, key, tmp_path, monkeypatch):
    """The metadata size the network: they are checked first, and no PatchRanker is made for them."""
    import keypatch.ranker.files as ranked
    from keypatch.untrusted import HostileFileError

    path = tmp_path / "absurd.safetensors"
    save_ranker(PatchRanker(), path)
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)), str(path), metadata={"channels": "11", **meta})
    built = []
    monkeypatch.setattr(ranked, "PatchRanker", lambda *a, **k: built.append(a) or pytest.fail("built from " + str(a)))
    with pytest.raises(HostileFileError, match=f"metadata '{key}'") as err:
        load_ranker(str(path))
    assert str(path) in str(err.value) and built == []


def test_tensors_that_do_not_fit_the_metadata_are_refused_naming_the_key(tmp_path):
    from safetensors.torch import save_file

    from keypatch.untrusted import HostileFileError

    net = PatchRanker(width=8, depth=2)
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {"channels": "11", "width": "8", "depth": "2"}
    for name, change in (("net.2.weight", torch.zeros(8, 8, 5, 5)), ("net.0.bias", torch.zeros(8, dtype=torch.int64)),
                         ("net.9.weight", torch.zeros(1))):
        bad = {**tensors, name: change}
        save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
        with pytest.raises(HostileFileError, match=name.replace(".", r"\.")):
            load_ranker(str(tmp_path / "bad.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(HostileFileError, match="not a safetensors file"):
        load_ranker(str(tmp_path / "junk.safetensors"))
    save_file(tensors, str(tmp_path / "fine.safetensors"), metadata=meta)
    assert load_ranker(str(tmp_path / "fine.safetensors")).width == 8


def test_a_screen_as_wide_as_the_grid_without_moves_is_exact_greedy(toy_model):
    images = _images(3, size=64)
    wide = keypatch.propose_batch(images, 0.5, "ranked", toy_model, m=16, keep=0, rounds=0)
    exact = keypatch.propose_batch(images, 0.5, "greedy", toy_model)
    for w, e in zip(wide, exact, strict=True):
        assert w.patches == e.patches and w.losses == pytest.approx(e.losses, abs=1e-6)
        assert w.evaluations == e.evaluations + 8 - 1  # one error pass per step (the centre is given)


def test_the_screen_scores_m_plus_errors_plus_keep_sets_per_step(tiny224, photos):
    for errors in (0, 2):
        p = keypatch.propose(photos[0], 0.1, "ranked", tiny224, m=3, keep=2, errors=errors, rounds=0)
        # the centre and its error map, then m + errors + keep sets per step (their maps come with their scores)
        assert p.evaluations == 1 + 1 + 19 * (3 + errors + 2)


def test_ranked_moves_only_lower_the_loss_and_with_every_neighbour_are_plain_moves(tiny224, photos):
    start = torch.arange(20).expand(3, 20).clone()  # the first 20 patches: a poor set

    def run(moves):
        objective = Objective(tiny224, photos)
        current = objective.score(start)
        ranking, calls = Ranking(objective, load_ranker()), []

        def rank(patches):
            calls.append(patches)
            return ranking.without_each(patches)

        patches, losses = refine(objective, start, current, 2, 1, rank if moves else None, moves)
        assert (losses[:, -1] < current).all()
        assert torch.allclose(losses[:, -1], objective.score(patches), rtol=1e-6)
        return patches, objective.evaluations, len(calls)

    few, few_evals, rounds = run(2)
    assert rounds == 1  # the ranking once, before the first round
    plain, _, _ = run(0)
    assert (few_evals <= 1 + 20 + 2 * 2 * 20).all()  # 20 error maps, then <= 2 moves per patch and round
    every, _, _ = run(8)  # every free neighbour of the 8
    assert torch.equal(every, plain)


def test_moves_retried_only_near_a_change_lower_the_loss_with_fewer_sets(tiny224, photos):
    """``within``: a patch is retried only near the moves made since its last try; reaching the whole
    grid it is the plain rule (any change in the image), exactly."""
    start = torch.arange(20).expand(3, 20).clone()

    def run(within):
        objective = Objective(tiny224, photos)
        current = objective.score(start)
        patches, losses = refine(objective, start, current, 4, 1, within=within)
        assert (losses[:, -1] < current).all()
        assert torch.allclose(losses[:, -1], objective.score(patches), rtol=1e-6)
        return patches, losses[:, -1], objective.evaluations

    plain, plain_loss, plain_evals = run(0)
    whole, whole_loss, whole_evals = run(13)  # every cell of the 14x14 grid lies within 13 of every other
    assert torch.equal(whole, plain) and torch.equal(whole_loss, plain_loss) and torch.equal(whole_evals, plain_evals)
    local, _, local_evals = run(1)
    assert (local_evals <= plain_evals).all() and (local_evals < plain_evals).any()
    assert not torch.equal(local, start)


def test_moves_are_ranked_as_additions_to_the_set_without_the_patch(tiny224, photos):
    sets = torch.tensor([[97, 3, 150, 60], [0, 195, 14, 98], [5, 6, 7, 8]])
    objective = Objective(tiny224, photos)
    ranking = Ranking(objective, load_ranker())
    scores = ranking.without_each(sets)
    assert scores.shape == (3, 4, 196)
    assert (objective.evaluations == 4).all()  # one error map per set without one patch
    for i in range(4):
        smaller = torch.cat([sets[:, :i], sets[:, i + 1 :]], 1)
        fresh = Ranking(objective, load_ranker())  # no earlier error map: the change reads 0
        assert torch.allclose(scores[:, i], fresh(smaller), atol=1e-5)
    assert ranking.last is None


def test_batch_equals_one_by_one_with_ranked_moves(tiny224, photos):
    together = keypatch.propose_batch(photos, 0.1, "ranked", tiny224, moves=2)
    for i, p in enumerate(together):
        alone = keypatch.propose(photos[i], 0.1, "ranked", tiny224, moves=2)
        assert alone.patches == p.patches and alone.loss == p.loss


def test_more_ranked_moves_than_cells_within_reach_are_every_cell(toy_model):
    """``moves`` above the cells within ``reach`` (or the grid) tries each free one once, as ``moves=0``."""
    x = smooth_images(2, 64, seed=5)
    for k in (3, 9, 14):
        every = get_proposer("ranked", moves=0, reach=1).select(toy_model, x, k, 0)
        many = get_proposer("ranked", moves=30, reach=1).select(toy_model, x, k, 0)
        assert torch.equal(many[0], every[0]) and torch.equal(many[1][:, -1], every[1][:, -1])


def test_options_are_checked():
    with pytest.raises(ValueError, match="m must be >= 1"):
        get_proposer("ranked", m=0)
    with pytest.raises(ValueError, match="errors, keep, rounds, moves and within >= 0"):
        get_proposer("ranked", moves=-1)
    with pytest.raises(ValueError, match="within=-1"):
        get_proposer("ranked", within=-1)


def test_the_ranker_in_fixed_groups_scores_an_image_alike_alone_and_beside_others():
    """GPUs run the ranker on groups of GPU_GROUP images (the last padded): an image's scores are the
    same bits whatever the number of images, as they are image by image on a CPU."""
    from keypatch.ranker.ranking import grouped

    net = load_ranker()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11 * 3, 11, 14, 14, generator=g)  # 11 images, 3 rows each (the moves' k sets)
    with torch.no_grad():
        together = grouped(net, x, 3, 4)
        for i in range(11):
            alone = grouped(net, x[3 * i : 3 * i + 3], 3, 4)
            assert torch.equal(alone, together[3 * i : 3 * i + 3])
        assert together.shape == (33, 196)
        assert torch.allclose(grouped(net, x, 3, 1), together, atol=1e-4)  # image by image: equal up to rounding
