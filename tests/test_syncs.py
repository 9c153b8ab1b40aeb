"""Host synchronisations: the counter itself, and the searches held to "no host sync inside a step"."""

import pytest
import torch

from keypatch.objective import Objective, with_each
from keypatch.proposers import get_proposer
from keypatch.syncs import HostSyncs
from tests.conftest import smooth_images

pytestmark = pytest.mark.filterwarnings("ignore::keypatch.ranker.RankerWarning")  # the ranker fitted to another model


def test_the_counter_counts_the_reads_of_device_values_and_nothing_else():
    t = torch.arange(6)
    with HostSyncs() as s:
        _ = (t * 2 + 1).sum(0)  # device work only
        _ = torch.where(t > 2, t, 0)
        _ = t.to("cpu"), t.to("cpu:0"), t.cpu(), t.to(t)  # a CPU tensor is on the host already
        _ = torch.empty(6, dtype=torch.long).copy_(t)
        _ = t.repeat_interleave(2)
    assert s.count == 0
    with HostSyncs() as s:
        _ = bool((t > 3).any())
        _ = t.sum().item()
        _ = t.tolist()
        _ = t.nonzero()
        _ = torch.where(t > 2)
        _ = t[t > 3]
        t2 = t.clone()
        t2[t2 > 3] = 0
        _ = t.repeat_interleave(t)
        _ = int(t[0])
        _ = torch.equal(t, t), 3 in t
        _ = torch.full((2,), t[0])
    assert dict(s.calls) == {"__bool__": 1, "item": 1, "tolist": 1, "nonzero": 1, "where (one argument)": 1,
                             "__getitem__ (mask)": 1, "__setitem__ (mask)": 1, "repeat_interleave": 1, "__int__": 1,
                             "equal": 1, "__contains__": 1, "full (size or value from a tensor)": 1}
    assert s.count == 12


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return smooth_images(2, 224, seed=3)


def test_float32_scores_and_steps_never_wait_for_the_device(tiny224, images):
    objective = Objective(tiny224, images, precision="float32")
    chosen = torch.tensor([[90, 3], [7, 100]])
    candidates = torch.tensor([[1, 2, 4, 5, 6], [0, 1, 2, 3, 4]])
    with HostSyncs() as s:
        objective.score(chosen)
        objective.score(with_each(chosen, candidates))
        objective.score(chosen, maps=True)
        objective.step(chosen, candidates, maps=True)
        objective.step(chosen, candidates)
    assert s.count == 0, dict(s.calls)


def _syncs(model, images, name: str, k: int, **options) -> int:
    proposer = get_proposer(name, **options)
    proposer.select(model, images, 2, 0)  # the model's digest (ranked) and lazy set-up, once per model
    with HostSyncs() as s:
        proposer.select(model, images, k, 0)
    return s.count


@pytest.mark.parametrize("name", ["greedy", "ranked"])
def test_a_float32_search_waits_a_fixed_number_of_times_whatever_k(tiny224, images, name):
    """greedy: once (the evaluations handed back); ranked: also once for its round of moves."""
    few, many = (_syncs(tiny224, images, name, k, precision="float32") for k in (6, 14))
    assert few == many <= 2


@pytest.mark.parametrize("name", ["greedy", "ranked"])
def test_a_mixed_search_waits_at_most_twice_a_step_and_once_a_move(tiny224, images, name):
    """With "mixed", a step's float32 re-scores are chosen on the host (two waits, more when the
    margin widens); a ranked move's re-scores too (one wait per patch)."""
    k = 12
    proposer = get_proposer(name, precision="mixed")
    proposer.select(tiny224, images, 2, 0)
    objective = proposer.objective(tiny224, images)
    with HostSyncs() as s:
        proposer.search(objective, k, [0, 0])
    steps = k - 1  # the centre first
    moves = k if name == "ranked" else 0
    assert s.count <= 2 * steps + objective.widened + moves + 1, dict(s.calls)
    assert s.calls["nonzero"] >= steps  # the re-scores' rows are read: the count is not vacuous


@pytest.mark.cuda
def test_on_cuda_float32_scores_and_steps_run_under_cuda_s_sync_check(images):
    """CUDA's own check (``set_sync_debug_mode("error")``) agrees: a float32 step never waits."""
    from keypatch.reconstructors import load_mae

    model = load_mae("default", device="cuda")
    objective = Objective(model, images.cuda(), precision="float32")
    chosen = torch.tensor([[90, 3], [7, 100]], device="cuda")
    candidates = torch.tensor([[1, 2, 4, 5, 6], [0, 1, 2, 3, 4]], device="cuda")
    objective.step(chosen, candidates, maps=True)  # lazy set-up (workspaces, kernels) outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        objective.score(with_each(chosen, candidates))
        objective.step(chosen, candidates, maps=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
