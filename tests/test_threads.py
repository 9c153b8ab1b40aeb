"""The thread tuner: it runs the faster of all threads and one, follows a change, and never changes a pick."""

from __future__ import annotations

import pytest
import torch

import keypatch
import keypatch.threads as threads_mod
from keypatch.threads import ThreadTuner, set_threads


@pytest.fixture
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


class Clock:
    """A fake ``time.perf_counter`` that a pass advances by the cost of the thread count it runs on."""

    def __init__(self):
        self.now, self.cost = 0.0, {1: 1.0, 2: 0.5}

    def __call__(self):
        return self.now

    def work(self):
        self.now += self.cost[torch.get_num_threads()] * 64
        return torch.get_num_threads()


def _run(tuner, clock, passes):
    return [tuner.run(clock.work, 64) for _ in range(passes)]


def test_the_tuner_takes_the_faster_option_probes_the_other_and_follows_a_change(two_threads, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(threads_mod.time, "perf_counter", clock)
    tuner = ThreadTuner(probe_every=16)
    tuner.enabled = True
    used = _run(tuner, clock, 100)
    assert used[:4] == [2, 1, 2, 1]  # each option measured twice first
    assert used[4:].count(1) <= 100 // 16 // 3 + 1 and used[4:].count(2) >= 90  # all threads, probing one rarely
    assert torch.get_num_threads() == 2  # the count is given back after every pass
    clock.cost = {1: 1.0, 2: 4.0}  # another process takes a core: all threads now 4x slower than one
    used = _run(tuner, clock, 100)
    assert used[:60].count(1) >= 55 and used[60:].count(2) <= 3  # switched within a probe interval
    clock.cost = {1: 1.0, 2: 0.9}  # close: probes come every probe_every passes
    used = _run(tuner, clock, 96)
    assert used[-48:].count(2) >= 40


def test_small_passes_are_not_measured_and_a_fixed_count_turns_tuning_off(two_threads, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(threads_mod.time, "perf_counter", clock)
    tuner = ThreadTuner(min_units=16)
    tuner.enabled = True
    assert [tuner.run(clock.work, 1) for _ in range(5)] == [2] * 5 and tuner.rate == {}
    monkeypatch.setattr(threads_mod, "TUNER", tuner)
    set_threads(1)
    assert torch.get_num_threads() == 1 and not tuner.enabled
    assert [tuner.run(clock.work, 64) for _ in range(3)] == [1, 1, 1] and tuner.rate == {}
    set_threads("auto")
    assert tuner.enabled
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        set_threads(0)


def test_tuning_is_off_by_default_so_a_call_repeats_bit_for_bit(two_threads, toy_model):
    """One thread and two give different last bits for some passes (multi on these images: a pass of 3
    sets), so a timing-driven choice would change results from run to run: it is off unless asked."""
    import keypatch.threads as fresh

    assert ThreadTuner().enabled is False and fresh.TUNER.enabled is False
    from keypatch.geometry import normalize

    small = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(11))  # the contract tests' images
    images = [normalize(torch.nn.functional.interpolate(s[None], size=64, mode="bilinear")[0]) for s in small]
    runs = [[p.losses for p in keypatch.propose_batch(images, 0.5, "multi", toy_model, seed=5)] for _ in range(4)]
    assert all(r == runs[0] for r in runs)
