"""Golden values: every strategy's picks, losses and evaluation counts on the 13 test photos at r = 0.1.

Recorded with the embedded default model (``tests/golden/test_photos_r0.1_default.json``); a change
to the objective, the scoring fast path or a strategy that moves a pick or a loss fails here.
"""

import json
import warnings
from pathlib import Path

import pytest

from keypatch.api import propose_normalised
from keypatch.experiments.photos import TEST_PHOTOS, load_test_photos
from keypatch.geometry import load_images
from keypatch.proposers import get_proposer
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


@pytest.mark.parametrize("strategy", sorted(GOLDEN["strategies"]))
def test_same_picks_and_losses_as_recorded(photos, strategy):
    model, x = photos
    got = propose_normalised(x, GOLDEN["ratio"], get_proposer(strategy), model, seed=0)
    for name, p, want in zip(GOLDEN["photos"], got, GOLDEN["strategies"][strategy], strict=True):
        assert p.patches == want["patches"], (strategy, name)
        assert p.evaluations == want["evaluations"], (strategy, name)
        assert p.losses == pytest.approx(want["losses"], rel=1e-5), (strategy, name)
