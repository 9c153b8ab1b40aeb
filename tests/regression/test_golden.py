"""Golden values: every strategy's picks, losses and evaluation counts on the 13 test photos at r = 0.1.

Recorded with the embedded default model in float32 (``tests/golden/test_photos_r0.1_default.json``);
a change to the objective, the scoring fast path or a strategy that moves a pick or a loss fails here.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from keypatch.api import propose_normalised
from keypatch.experiments.photos import TEST_PHOTOS, load_test_photos
from keypatch.geometry import load_images
from keypatch.proposers import get_proposer
from keypatch.proposers.base import takes_option
from keypatch.reconstructors import load_mae

GOLDEN = json.loads((Path(__file__).parent / "golden" / "test_photos_r0.1_default.json").read_text())

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos():
    found = load_test_photos()
    assert list(found) == GOLDEN["photos"] == list(TEST_PHOTOS), "the golden values need all 13 test photos"
    model = load_mae("default", device="cpu")
    assert model.model_id == GOLDEN["model"], "the embedded weights changed: record new golden values"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-square photos are noted
        return model, load_images(list(found.values()), model.config.image_size)


TIE_FLIPS = 1
"""Photos per strategy whose picks may part from the record at a decision tied within float rounding.

The matrix-product kernels differ between CPUs (AVX2 or AVX-512 code paths), and so do the last
bits of every loss; a decision whose two sides are that close can go either way (seen: ``lazy``
on one photo, from its 18th pick on, recorded on an AVX2 CPU and run on an AVX-512 one)."""


def _parts_at_a_tie(got, want) -> bool:
    """Whether ``got`` equals ``want`` up to a point, then parts with a final loss still within 2%."""
    d = next(i for i, (a, b) in enumerate(zip(got.patches, want["patches"], strict=True)) if a != b)
    return (d > 0 and got.losses[:d] == pytest.approx(want["losses"][:d], rel=1e-5)
            and got.losses[-1] == pytest.approx(want["losses"][-1], rel=0.02))


_RUNS: dict = {}


def _proposals(photos, strategy: str, seed: int = 0):
    """Each strategy's answers on the 13 photos, computed once for the tests of this module."""
    if (strategy, seed) not in _RUNS:
        model, x = photos
        options = {"precision": "float32"} if takes_option(strategy, "precision") else {}
        _RUNS[strategy, seed] = propose_normalised(x, GOLDEN["ratio"], get_proposer(strategy, **options), model,
                                                   seed=seed)
    return _RUNS[strategy, seed]


@pytest.mark.parametrize("strategy", sorted(GOLDEN["strategies"]))
def test_same_picks_and_losses_as_recorded(photos, strategy):
    got = _proposals(photos, strategy)
    flips = []
    for name, p, want in zip(GOLDEN["photos"], got, GOLDEN["strategies"][strategy], strict=True):
        if p.patches != want["patches"]:
            assert _parts_at_a_tie(p, want), (strategy, name)
            flips.append(name)
            continue
        assert p.evaluations == want["evaluations"], (strategy, name)
        assert p.losses == pytest.approx(want["losses"], rel=1e-5), (strategy, name)
    assert len(flips) <= TIE_FLIPS, (strategy, flips)


def test_greedy_beats_random_at_ten_percent(photos):
    """KPP's point on the embedded model: exact greedy's 20 patches rebuild the photos better than
    random ones (three seeds) on nearly every photo, by at least 10% on average."""
    greedy = _proposals(photos, "greedy")
    g = np.array([r.loss for r in greedy])
    rnd = np.mean([[r.loss for r in _proposals(photos, "random", s)] for s in (0, 100, 200)], axis=0)
    assert all(len(r.patches) == 20 and r.patches[0] == 105 for r in greedy)
    wins = (g < rnd).mean()
    gain = 1 - g.mean() / rnd.mean()
    assert wins >= 0.9, f"greedy beat random on {wins:.0%} of the photos"
    assert gain >= 0.10, f"greedy's mean loss is only {gain:.1%} below random's"
