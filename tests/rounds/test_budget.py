"""A budget over a pool: the pool's greedy (each next patch to the image where it lowers L most),
exact against a brute-force merge of every image's whole greedy trajectory; rounds that continue."""

import math

import pytest
import torch

import keypatch
from keypatch.proposers import get_proposer
from keypatch.rounds import allocate
from tests.conftest import smooth_images


@pytest.fixture(scope="module")
def pool():
    return smooth_images(5, 64, seed=21)


def brute_pool_greedy(model, images, budget, start="center"):
    """Every image's whole greedy trajectory, then the budget given step by step to the image whose
    next step lowers its L most (ties: the lowest image)."""
    n = model.grid.n
    patches, losses, _ = get_proposer("greedy", start=start).select(model, images, n, 0)
    patches, losses = patches.tolist(), losses.tolist()
    first = 1 if start == "center" else 0
    taken = [first] * images.shape[0]
    empty = keypatch.objective.Objective(model, images).score(torch.empty(images.shape[0], 0, dtype=torch.long))
    current = [losses[i][0] if first else float(empty[i]) for i in range(images.shape[0])]
    for _ in range(budget - first * images.shape[0]):
        gains = [current[i] - losses[i][taken[i]] if taken[i] < n else -math.inf for i in range(images.shape[0])]
        i = max(range(len(gains)), key=lambda j: (gains[j], -j))
        current[i] = losses[i][taken[i]]
        taken[i] += 1
    return [patches[i][: taken[i]] for i in range(images.shape[0])]


@pytest.mark.parametrize("budget,start", [(5, "center"), (17, "center"), (40, "none"), (80, "center")])
def test_the_pools_greedy_is_the_merge_of_the_images_greedy_trajectories(toy_model, pool, budget, start):
    a = allocate(toy_model, pool, get_proposer("greedy", start=start), budget=budget)
    assert a.patches == brute_pool_greedy(toy_model, pool, budget, start)
    assert a.spent == budget == sum(len(p) for p in a.patches)
    exact = keypatch.objective.Objective(toy_model, pool)
    for i, (p, v) in enumerate(zip(a.patches, a.losses, strict=True)):
        assert v[-1] == pytest.approx(float(exact.score(torch.tensor([p]), torch.tensor([i]))), rel=1e-5)


def test_a_budget_beats_the_same_patches_spread_evenly_on_this_pool(toy_model, pool):
    budget = 20  # 4 per image
    a = allocate(toy_model, pool, get_proposer("greedy"), budget=budget)
    even = allocate(toy_model, pool, get_proposer("greedy"), k=budget // pool.shape[0])
    assert sorted(len(p) for p in a.patches) != [4] * 5  # the budget went where it paid
    assert sum(v[-1] for v in a.losses) < sum(v[-1] for v in even.losses)


def test_a_second_round_keeps_the_first_and_adds_its_budget(toy_model, pool):
    one = allocate(toy_model, pool, get_proposer("greedy"), budget=15)
    two = allocate(toy_model, pool, get_proposer("greedy"), budget=15, after=one.patches)
    both = allocate(toy_model, pool, get_proposer("greedy"), budget=30)
    assert all(p[: len(q)] == q for p, q in zip(two.patches, one.patches, strict=True))
    assert sum(map(len, two.patches)) == 30 and two.spent == 15 and two.begun == one.patches
    assert two.patches == both.patches  # the pool's greedy continues exactly where it stopped


def test_ranked_spends_a_budget_and_moves_only_the_patches_it_added(toy_model, pool):
    one = allocate(toy_model, pool, get_proposer("greedy"), budget=10)
    two = allocate(toy_model, pool, get_proposer("ranked"), budget=20, after=one.patches)
    assert sum(map(len, two.patches)) == 30
    assert all(p[: len(q)] == q and len(set(p)) == len(p) for p, q in zip(two.patches, one.patches, strict=True))
    exact = keypatch.objective.Objective(toy_model, pool)
    for i, (p, v) in enumerate(zip(two.patches, two.losses, strict=True)):
        assert v[-1] == pytest.approx(float(exact.score(torch.tensor([p]), torch.tensor([i]))), rel=1e-5)


def test_a_ratio_with_earlier_patches_fills_each_image_to_its_count(toy_model, pool):
    after = [[0], [], [1, 2, 3], [15], [4, 5]]
    out = keypatch.propose_pool(pool, ratio=0.5, model=toy_model, after=after)
    assert [p.k for p in out] == [8] * 5
    assert [p.patches[: len(a)] for p, a in zip(out, after, strict=True)] == after
    assert out[1].patches[0] == toy_model.grid.center  # an image with none begins by the start rule
    assert all(not any(math.isnan(v) for v in p.losses) and len(p.losses) == p.k for p in out)


def test_what_a_budget_cannot_do_fails_before_any_work(toy_model, pool):
    with pytest.raises(ValueError, match="cannot give the 5 images"):
        keypatch.propose_pool(pool, 4, model=toy_model)
    assert sum(p.k for p in keypatch.propose_pool(pool, 4, model=toy_model, start="none")) == 4
    with pytest.raises(ValueError, match="cannot continue"):
        keypatch.propose_pool(pool, 10, "backward", toy_model)
    with pytest.raises(ValueError, match="budget must be a positive"):
        keypatch.propose_pool(pool, 0, model=toy_model)
    with pytest.raises(ValueError, match="not both"):
        keypatch.propose_pool(pool, 10, ratio=0.5, model=toy_model)
    with pytest.raises(ValueError, match="distinct indices"):
        allocate(toy_model, pool, get_proposer("greedy"), budget=10, after=[[1, 1], [], [], [], []])
    with pytest.raises(ValueError, match="distinct indices"):
        allocate(toy_model, pool, get_proposer("greedy"), budget=10, after=[[16], [], [], [], []])
    # more than the pool holds: every image full, the rest unspent
    a = allocate(toy_model, pool[:2], get_proposer("greedy"), budget=40)
    assert [len(p) for p in a.patches] == [16, 16] and a.spent == 32
