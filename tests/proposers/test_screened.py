"""Screened greedy: its screen, its rounds of moves (patch by patch and batched), its options."""

import pytest
import torch

import keypatch
from keypatch.objective import Objective
from keypatch.proposers import get_proposer
from keypatch.proposers.swap import refine, refine_batched
from tests.conftest import smooth_images


def _images(n: int, size: int = 224) -> torch.Tensor:
    return smooth_images(n, size, seed=3)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return _images(3)


def test_a_screen_as_wide_as_the_grid_without_moves_is_exact_greedy(toy_model):
    images = _images(3, size=64)
    wide = keypatch.propose_batch(images, 0.5, "screened", toy_model, m=16, keep=0, rounds=0)
    exact = keypatch.propose_batch(images, 0.5, "greedy", toy_model)
    for w, e in zip(wide, exact, strict=True):
        assert w.patches == e.patches and w.losses == pytest.approx(e.losses, abs=1e-6)
        assert w.evaluations == e.evaluations + 8 - 1  # one error pass per step (the centre is given)


@pytest.mark.parametrize("batched", [False, True])
def test_moves_only_lower_the_loss_and_report_it(tiny224, photos, batched):
    """On the 14x14 grid at r = 0.1: the rounds never raise L, and the L they report is the set's."""
    before = keypatch.propose_batch(photos, 0.1, "screened", tiny224, rounds=0)
    after = keypatch.propose_batch(photos, 0.1, "screened", tiny224, rounds=3, batched=batched)
    for image, b, a in zip(photos, before, after, strict=True):
        assert len(set(a.patches)) == 20 and a.loss <= b.loss
        assert a.loss == pytest.approx(keypatch.reconstruction_loss(image, a.patches, model=tiny224), rel=1e-5)
    assert any(a.patches != b.patches for a, b in zip(after, before, strict=True))  # some patch moved


@pytest.mark.parametrize("fn", [refine, refine_batched])
def test_a_round_from_a_poor_set_moves_it_and_keeps_the_float32_loss(tiny224, photos, fn):
    objective = Objective(tiny224, photos)
    start = torch.arange(20).expand(3, 20).clone()  # the first 20 patches: a poor set
    current = objective.score(start)
    patches, losses = fn(objective, start, current, rounds=2)
    assert patches.shape == (3, 20) and all(len(set(row.tolist())) == 20 for row in patches)
    assert torch.isnan(losses[:, :-1]).all()
    assert torch.allclose(losses[:, -1], objective.score(patches), rtol=1e-6)
    assert (losses[:, -1] < current).all()


def test_batched_moves_are_the_same_image_by_image(tiny224, photos):
    together = keypatch.propose_batch(photos, 0.1, "screened", tiny224, batched=True)
    for i, p in enumerate(together):
        alone = keypatch.propose(photos[i], 0.1, "screened", tiny224, batched=True)
        assert alone.patches == p.patches and alone.loss == p.loss


def test_options_are_checked():
    with pytest.raises(ValueError, match="m must be >= 1"):
        get_proposer("screened", m=0)
    with pytest.raises(ValueError, match="option batched must be true/false"):
        get_proposer("screened", batched=3)
    assert get_proposer("screened", batched="false").batched is False  # -o batched=false
    assert get_proposer("swap", base="screened").base.name == "screened"
