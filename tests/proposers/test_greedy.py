"""KPP is exact: every greedy step picks the brute-force argmin of reconstruction_loss."""

import numpy as np
import pytest

import keypatch
from keypatch.geometry import to_pil


def brute_force_step(model, image, chosen):
    losses = {c: keypatch.reconstruction_loss(image, chosen + [c], model=model)
              for c in range(model.grid.n) if c not in chosen}
    return losses


@pytest.mark.parametrize("start", ["center", "none"])
def test_each_step_is_the_brute_force_argmin(toy_model, toy_image, start):
    result = keypatch.propose(toy_image, 0.5, model=toy_model, start=start)
    assert len(result.patches) == 8 == len(result.losses)
    chosen = []
    if start == "center":
        assert result.patches[0] == toy_model.grid.center == 10
        chosen = [10]
    for step, pick in enumerate(result.patches[len(chosen):], start=len(chosen)):
        losses = brute_force_step(toy_model, toy_image, chosen)
        ranked = sorted(losses.items(), key=lambda kv: (kv[1], kv[0]))
        best, runner_up = ranked[0], ranked[1]
        if runner_up[1] - best[1] > 1e-6:  # a clear winner must be picked exactly
            assert pick == best[0], f"step {step}: picked {pick}, brute force says {best[0]}"
        else:  # a float tie: either is exact
            assert losses[pick] <= best[1] + 1e-6
        assert result.losses[step] == pytest.approx(losses[pick], abs=1e-5)
        chosen.append(pick)
    assert result.loss == pytest.approx(keypatch.reconstruction_loss(toy_image, result.patches, model=toy_model),
                                        abs=1e-5)


def test_losses_of_the_first_step(toy_model, toy_image):
    r = keypatch.propose(toy_image, 0.25, model=toy_model, start="center")
    assert r.losses[0] == pytest.approx(keypatch.reconstruction_loss(toy_image, [10], model=toy_model), abs=1e-6)
    r_none = keypatch.propose(toy_image, 0.0625, model=toy_model, start="none")  # one patch
    best = min(brute_force_step(toy_model, toy_image, []).items(), key=lambda kv: kv[1])
    assert r_none.patches == [best[0]]


@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.25, 0.5, 1.0])
def test_patch_count_is_round_r_n(toy_model, toy_image, ratio):
    r = keypatch.propose(toy_image, ratio, model=toy_model)
    expected = max(1, round(ratio * 16))
    assert len(r.patches) == len(set(r.patches)) == expected
    assert r.ratio == ratio
    if ratio == 1.0:
        assert r.loss == 0.0 and sorted(r.patches) == list(range(16))


@pytest.mark.parametrize("ratio,k", [(0.05, 10), (0.1, 20)])
def test_paper_geometry_starts_at_patch_105(tiny224, ratio, k):
    img = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    r = keypatch.propose(img, ratio, model=tiny224, start="center")
    assert r.patches[0] == 105 and len(r.patches) == k and r.grid.n == 196
    assert r.evaluations == 1 + sum(196 - j for j in range(1, k))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_random_counts_on_the_paper_grid(tiny224, ratio):
    img = np.zeros((224, 224, 3), np.uint8)
    r = keypatch.propose(img, ratio, strategy="random", model=tiny224, seed=3)
    assert len(set(r.patches)) == round(ratio * 196)


@pytest.mark.parametrize("bad", [0, 1.5, -1])
def test_bad_ratio(toy_model, toy_image, bad):
    with pytest.raises(ValueError, match="ratio"):
        keypatch.propose(toy_image, bad, model=toy_model)


def test_bad_strategy_and_start(toy_model, toy_image):
    with pytest.raises(ValueError, match="unknown strategy"):
        keypatch.propose(toy_image, 0.25, strategy="nope", model=toy_model)
    with pytest.raises(ValueError, match="start"):
        keypatch.propose(toy_image, 0.25, model=toy_model, start="corner")


def test_deterministic(toy_model, toy_image):
    a = keypatch.propose(toy_image, 0.25, strategy="random", model=toy_model, seed=7)
    b = keypatch.propose(toy_image, 0.25, strategy="random", model=toy_model, seed=7)
    c = keypatch.propose(toy_image, 0.25, strategy="random", model=toy_model, seed=8)
    assert a.patches == b.patches and a.patches != c.patches
    g1 = keypatch.propose(toy_image, 0.25, model=toy_model)
    g2 = keypatch.propose(toy_image, 0.25, model=toy_model)
    assert g1.patches == g2.patches and g1.losses == g2.losses


def test_batch_equals_single(toy_model, toy_image):
    other = toy_image.flip(-1)
    batch = keypatch.propose_batch([toy_image, other], 0.25, model=toy_model)
    for img, res in zip([toy_image, other], batch, strict=True):
        single = keypatch.propose(img, 0.25, model=toy_model)
        assert res.patches == single.patches
        assert np.allclose(res.losses, single.losses, atol=1e-6)


def test_random_prefix_losses(toy_model, toy_image):
    r = keypatch.propose(toy_image, 0.25, strategy="random", model=toy_model, seed=0)
    for j in range(len(r.patches)):
        assert r.losses[j] == pytest.approx(
            keypatch.reconstruction_loss(toy_image, r.patches[: j + 1], model=toy_model), abs=1e-6)


def test_reconstruction_loss_validates(toy_model, toy_image):
    with pytest.raises(ValueError, match="distinct"):
        keypatch.reconstruction_loss(toy_image, [1, 1], model=toy_model)
    with pytest.raises(ValueError, match="outside the grid"):
        keypatch.reconstruction_loss(toy_image, [99], model=toy_model)


def test_reconstruct_returns_an_image(toy_model, toy_image):
    out = keypatch.reconstruct(toy_image, [0, 5], model=toy_model)
    assert out.shape == (3, 64, 64)
    assert to_pil(out).size == (64, 64)
