"""Fast KPP: the optimised scoring is exact, and the approximate strategies behave as documented."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import keypatch
from keypatch.objective import losses as set_losses
from keypatch.proposers import get_proposer
from keypatch.proposers.search import remaining_count
from keypatch.proposers.stochastic import sample_size
from keypatch.reconstructors import MAE, MAEConfig, load_mae

APPROX = ["lazy", "stochastic", "multi", "local"]
TOY_OPTIONS = {"local": {"radius": 1, "top": 2}}  # the defaults re-score all of a 4x4 grid


def _images(n: int, size: int = 64) -> torch.Tensor:
    from keypatch.geometry import normalize

    g = torch.Generator().manual_seed(5)
    return torch.stack([
        normalize(torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size, mode="bilinear")[0])
        for _ in range(n)
    ])


def _plain_losses(model: MAE, images: torch.Tensor, sets: torch.Tensor, ii: torch.Tensor) -> torch.Tensor:
    """The textbook loss: full pixel predictions, then the masked MSE (no algebraic shortcut)."""
    with torch.no_grad():
        pred = model.predict_tokens(model.embed(images), sets, ii)
        return model.masked_mse(pred, model.targets(images)[ii], sets)


@pytest.mark.parametrize("decoder_depth", [1, 2, 3])
def test_fast_losses_equal_full_predictions(decoder_depth):
    cfg = MAEConfig(image_size=64, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                    decoder_depth=decoder_depth, decoder_num_heads=4)
    model = MAE(cfg)
    model.reset_parameters(seed=3)
    with torch.no_grad():  # make the mask token and biases matter
        model.mask_token.normal_(0, 0.5)
        model.decoder_pred.bias.normal_(0, 0.3)
    model.eval()
    x = _images(3)
    g = torch.Generator().manual_seed(0)
    for k in (0, 1, 4, 15, 16):
        sets = torch.stack([torch.randperm(16, generator=g)[:k] for _ in range(7)])
        ii = torch.arange(7) % 3
        fast = set_losses(model, x, sets, ii, chunk_size=3)
        assert torch.allclose(fast, _plain_losses(model, x, sets, ii), rtol=1e-5, atol=1e-6), k
        if k == 16:
            assert (fast == 0).all()


@pytest.mark.parametrize("decoder_depth", [1, 2])
def test_fast_patch_errors_equal_full_predictions(decoder_depth):
    """Objective.score(maps=True): each masked patch's error as the textbook prediction gives it, 0 at
    the visible ones, and their mean is L."""
    from keypatch.objective import Objective

    cfg = MAEConfig(image_size=64, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                    decoder_depth=decoder_depth, decoder_num_heads=4)
    model = MAE(cfg)
    model.reset_parameters(seed=4)
    with torch.no_grad():
        model.mask_token.normal_(0, 0.5)
    model.eval()
    x = _images(3)
    obj = Objective(model, x)
    g = torch.Generator().manual_seed(1)
    for k in (0, 5, 16):
        sets = torch.stack([torch.randperm(16, generator=g)[:k] for _ in range(3)])
        loss, err = obj.score(sets, maps=True)
        with torch.no_grad():
            pred = model.predict_tokens(model.embed(x), sets, torch.arange(3))
        plain = (pred - model.targets(x)).pow(2).mean(-1)
        masked = torch.ones(3, 16, dtype=torch.bool).scatter_(1, sets, False)
        assert torch.allclose(err[masked], plain[masked], rtol=1e-5, atol=1e-6) and (err[~masked] == 0).all()
        if k < 16:
            assert torch.allclose(err.sum(1) / (16 - k), obj.score(sets), rtol=1e-5)
            assert torch.allclose(loss, obj.score(sets), rtol=1e-5)
    # a step's error maps (when its few candidates are scored in float32) are those of its sets,
    # and chunked passes over several images' sets give each set's own map
    small = Objective(model, x, chunk_size=4)
    chosen, cand = torch.tensor([[3, 9], [0, 15], [5, 6]]), torch.tensor([[1, 2, 4], [7, 8, 9], [10, 11, 12]])
    step = small.step(chosen, cand, maps=True)
    assert torch.allclose(step.scores, small.step(chosen, cand).scores, rtol=1e-5)
    best = step.scores.argmin(1)
    assert step.pick.tolist() == cand[torch.arange(3), best].tolist()
    assert torch.allclose(step.loss, step.scores.amin(1))
    with_pick = torch.cat([chosen, step.pick[:, None]], 1)
    assert torch.allclose(step.errors, obj.score(with_pick, maps=True)[1], atol=1e-6)
    for c in range(3):  # every candidate's set scored as its own set would be
        alone = obj.score(torch.cat([chosen, cand[:, c : c + 1]], 1))
        assert torch.allclose(step.scores[:, c], alone, rtol=1e-5)
    many = torch.tensor([[c for c in range(16) if c not in (3, 9)][:9]] * 3)
    assert small.step(chosen[:1].expand(3, 2), many, maps=True).errors is None  # more than MIXED_REFINE: no map


def test_exact_greedy_matches_brute_force_on_the_toy_grid(toy_model):
    """Every step's pick is the argmin of the plain (full-prediction) loss over all candidates."""
    x = _images(2)
    for start in ("center", "none"):
        res = keypatch.propose_batch(x, 0.5, "greedy", toy_model, start=start, chunk_size=5)
        for i, r in enumerate(res):
            chosen = [10] if start == "center" else []
            for step, pick in enumerate(r.patches[len(chosen):], start=len(chosen)):
                cand = [c for c in range(16) if c not in chosen]
                sets = torch.tensor([chosen + [c] for c in cand])
                plain = _plain_losses(toy_model, x, sets, torch.full((len(cand),), i))
                order = plain.argsort(stable=True)
                best, second = plain[order[0]].item(), plain[order[1]].item()
                if second - best > 1e-6:
                    assert pick == cand[order[0]], (start, i, step)
                else:
                    assert plain[cand.index(pick)].item() <= best + 1e-6
                assert r.losses[step] == pytest.approx(plain[cand.index(pick)].item(), abs=1e-5)
                chosen.append(pick)


def test_greedy_batch_chunking_does_not_change_picks(toy_model):
    x = _images(3)
    a = keypatch.propose_batch(x, 0.5, "greedy", toy_model, chunk_size=1000)
    b = keypatch.propose_batch(x, 0.5, "greedy", toy_model, chunk_size=7)
    singles = [keypatch.propose(x[i], 0.5, model=toy_model, chunk_size=3) for i in range(3)]
    for ra, rb, rs in zip(a, b, singles, strict=True):
        assert ra.patches == rb.patches == rs.patches
        assert ra.losses == pytest.approx(rs.losses, abs=1e-6)


def test_reference_loop_reimplementation_picks_like_greedy():
    spec = importlib.util.spec_from_file_location(
        "reference_loop", Path(__file__).resolve().parents[2] / "benchmarks" / "reference_loop.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    model = load_mae("random:toy:1", device="cpu")
    x = _images(2)
    for i in range(2):
        patches, losses = ref.reference_kpp(model, x[i], 8)
        g = keypatch.propose(x[i], 0.5, model=model)
        assert patches == g.patches
        assert losses == pytest.approx(g.losses[1:], abs=1e-5)


def test_remaining_count_is_sorted_and_sync_free():
    rem = torch.ones(2, 6, dtype=torch.bool)
    rem[0, [1, 4]] = False
    rem[1, [0, 5]] = False
    assert remaining_count(rem, 4).tolist() == [[0, 2, 3, 5], [1, 2, 3, 4]]


@pytest.mark.parametrize("name", APPROX)
@pytest.mark.parametrize("start", ["center", "none"])
def test_approximate_strategies_spend_fewer_evaluations_than_greedy(toy_model, name, start):
    """The approximations' point (the contract of every strategy is in test_contract.py)."""
    x = _images(3)
    exact = keypatch.propose_batch(x, 0.5, "greedy", toy_model, start=start)
    res = keypatch.propose_batch(x, 0.5, name, toy_model, start=start, **TOY_OPTIONS.get(name, {}))
    for r, e in zip(res, exact, strict=True):
        if start == "center":
            assert r.patches[0] == 10
        assert 0 < r.evaluations < e.evaluations


def test_degenerate_settings_reduce_to_exact_greedy(toy_model):
    x = _images(2)
    exact = [r.patches for r in keypatch.propose_batch(x, 0.5, "greedy", toy_model)]
    for name, opts in [("lazy", {"batch": 16}), ("stochastic", {"eps": 1e-9}), ("multi", {"per_step": 1}),
                       ("local", {"top": 16})]:
        assert [r.patches for r in keypatch.propose_batch(x, 0.5, name, toy_model, **opts)] == exact, name


def test_local_rescores_the_neighbourhood_and_the_stale_top(toy_model):
    x = _images(2)
    r = keypatch.propose_batch(x, 0.5, "local", toy_model, radius=0, top=3)
    # centre, all 15 candidates, then exactly `top` per later step but the last
    assert [r_.evaluations for r_ in r] == [1 + 15 + 3 * 6] * 2
    r1 = keypatch.propose_batch(x, 0.5, "local", toy_model, radius=1, top=1)
    for r_ in r1:  # each step: the free neighbours of the last pick (at most 8) plus one
        assert 1 + 15 + 6 < r_.evaluations <= 1 + 15 + 9 * 6
    with pytest.raises(ValueError, match="radius"):
        get_proposer("local", radius=-1)


def test_lazy_evaluations(toy_model):
    x = _images(2)
    r = keypatch.propose_batch(x, 0.5, "lazy", toy_model, batch=2)
    # centre, all 15 candidates once, then at least one round of 2 per later step
    assert all(r_.evaluations >= 1 + 15 + 2 * 6 for r_ in r)


def test_stochastic_is_seeded_and_uses_the_sample_size(toy_model):
    x = _images(2)
    a = keypatch.propose_batch(x, 0.5, "stochastic", toy_model, seed=1, eps=0.3)
    b = keypatch.propose_batch(x, 0.5, "stochastic", toy_model, seed=1, eps=0.3)
    assert [r.patches for r in a] == [r.patches for r in b]
    others = [keypatch.propose_batch(x, 0.5, "stochastic", toy_model, seed=s, eps=0.3)[0].patches for s in range(2, 8)]
    assert any(p != a[0].patches for p in others)
    s = sample_size(16, 8, 0.3)
    assert s == math.ceil(16 / 8 * math.log(1 / 0.3)) == 3
    assert a[0].evaluations == 1 + 7 * s
    # one image alone with seed s equals the first image of a batch with seed s
    single = keypatch.propose(x[0], 0.5, "stochastic", toy_model, seed=1, eps=0.3)
    assert single.patches == a[0].patches
    with pytest.raises(ValueError, match="eps"):
        get_proposer("stochastic", eps=1.5)


def test_multi_adds_separated_patches(toy_model):
    x = _images(1)
    r = keypatch.propose(x[0], 0.5, "multi", toy_model, per_step=3, min_distance=2)
    assert r.evaluations == 1 + 15 + 12 + 9  # steps after the centre add 3, 3, 1 patches
    for step in (r.patches[1:4], r.patches[4:7]):
        for a in step:
            for b in step:
                if a != b:
                    assert max(abs(a // 4 - b // 4), abs(a % 4 - b % 4)) >= 2


def test_bfloat16_mode_runs_and_reports_its_gap(toy_model):
    x = _images(2)
    fp32 = keypatch.propose_batch(x, 0.5, "greedy", toy_model)
    bf16 = keypatch.propose_batch(x, 0.5, "greedy", toy_model, precision="bfloat16")
    for i, (a, b) in enumerate(zip(fp32, bf16, strict=True)):
        assert len(set(b.patches)) == 8
        exact_loss_of_bf16_picks = keypatch.reconstruction_loss(x[i], b.patches, model=toy_model)
        assert abs(exact_loss_of_bf16_picks / a.loss - 1) < 0.05
        assert b.loss == pytest.approx(exact_loss_of_bf16_picks, rel=0.05)  # bf16 losses are close
    sets = torch.tensor([[0, 5, 9], [1, 2, 3]])
    lo = set_losses(toy_model, x[0], sets, precision="bfloat16")
    assert lo.dtype == torch.float32 and torch.allclose(lo, set_losses(toy_model, x[0], sets), rtol=0.05)
    with pytest.raises(ValueError, match="precision"):
        get_proposer("lazy", precision="float16")


def test_swap_never_worse_than_its_base_and_ends_in_a_local_optimum(toy_model):
    x = _images(3)
    base = keypatch.propose_batch(x, 0.25, "greedy", toy_model)
    res = keypatch.propose_batch(x, 0.25, "swap", toy_model, base="greedy", rounds=10)
    for i, (g, r) in enumerate(zip(base, res, strict=True)):
        assert sorted(set(r.patches)) == sorted(r.patches) and len(r.patches) == 4
        assert r.loss <= g.loss + 1e-6
        assert r.loss == pytest.approx(keypatch.reconstruction_loss(x[i], r.patches, model=toy_model), abs=1e-5)
        assert r.evaluations > g.evaluations
        # local optimum: no single move of a patch to a free 8-neighbour lowers the plain loss
        moves = []
        for j, p in enumerate(r.patches):
            for q in range(16):
                if q not in r.patches and max(abs(q // 4 - p // 4), abs(q % 4 - p % 4)) == 1:
                    moves.append(r.patches[:j] + [q] + r.patches[j + 1:])
        plain = _plain_losses(toy_model, x, torch.tensor(moves), torch.full((len(moves),), i))
        assert plain.min().item() >= r.loss - 1e-5
    assert any(r.patches != g.patches for g, r in zip(base, res, strict=True))  # it did move something


def test_swap_options(toy_model):
    x = _images(2)
    local = keypatch.propose_batch(x, 0.5, "local", toy_model)
    same = keypatch.propose_batch(x, 0.5, "swap", toy_model, base="local", rounds=0)
    assert [r.patches for r in same] == [r.patches for r in local]
    assert [r.evaluations for r in same] == [r.evaluations for r in local]
    # the default base: stochastic greedy, eps=0.2 unless given; deterministic given the seed
    sto = keypatch.propose_batch(x, 0.5, "stochastic", toy_model, eps=0.2, seed=3)
    sw = keypatch.propose_batch(x, 0.5, "swap", toy_model, seed=3)
    assert [r.patches for r in sw] == [r.patches for r in keypatch.propose_batch(x, 0.5, "swap", toy_model, seed=3)]
    assert all(s.loss <= b.loss + 1e-6 for s, b in zip(sw, sto, strict=True))
    assert [s.evaluations > b.evaluations for s, b in zip(sw, sto, strict=True)] == [True, True]
    assert get_proposer("swap", eps=0.05).base.eps == 0.05
    # a base that does not know L of its whole set (multi reports NaN): scored once, then refined
    multi = keypatch.propose_batch(x, 0.5, "multi", toy_model)
    refined = keypatch.propose_batch(x, 0.5, "swap", toy_model, base="multi", rounds=1)
    for m, r in zip(multi, refined, strict=True):
        assert r.loss <= m.loss + 1e-6 and r.evaluations > m.evaluations + 1
    with pytest.raises(ValueError, match="base"):
        get_proposer("swap", base="random")
    with pytest.raises(ValueError, match="stochastic"):  # an option no strategy knows
        get_proposer("swap", depth=3)
    with pytest.raises(ValueError, match="rounds"):
        get_proposer("swap", rounds=-1)
