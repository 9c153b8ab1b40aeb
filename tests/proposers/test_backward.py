"""Backward elimination is exact for its rule: each step removes the brute-force least-missed patch."""

import pytest

import keypatch


def test_each_removal_is_the_brute_force_argmin(toy_model, toy_image):
    result = keypatch.propose(toy_image, 0.75, "backward", toy_model)  # 12 of the 16 patches: 4 removals
    kept = list(range(toy_model.grid.n))
    for _ in range(toy_model.grid.n - 12):
        losses = {p: keypatch.reconstruction_loss(toy_image, [q for q in kept if q != p], model=toy_model)
                  for p in kept}
        ranked = sorted(losses.items(), key=lambda kv: (kv[1], kv[0]))
        assert ranked[1][1] - ranked[0][1] > 1e-6, "a float tie: pick another image"
        kept.remove(ranked[0][0])
    assert result.patches == kept  # ascending, as the strategy returns them
    assert result.loss == pytest.approx(keypatch.reconstruction_loss(toy_image, kept, model=toy_model), abs=1e-6)
    assert result.evaluations == sum(range(13, 17))  # one set per kept patch per step


def test_all_patches_kept_costs_nothing(toy_model, toy_image):
    result = keypatch.propose(toy_image, 1.0, "backward", toy_model)
    assert result.patches == list(range(16)) and result.loss == 0.0 and result.evaluations == 0
