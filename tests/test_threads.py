"""The thread tuner: it runs the faster of all threads and one, follows a change, and never changes a loss."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import keypatch
import keypatch.objective as objective_mod
import keypatch.ranker.ranking as ranked_mod
import keypatch.threads as threads_mod
from keypatch.threads import ThreadTuner, set_threads, threads_invariant


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


def test_each_kind_and_size_of_pass_gets_its_own_choice_and_a_fixed_count_turns_tuning_off(two_threads, monkeypatch):
    """Under contention small passes lose most to all threads (a region waits for its descheduled
    thread whatever its size): small ones must move to one thread while large ones stay on two."""
    now = [0.0]
    monkeypatch.setattr(threads_mod.time, "perf_counter", lambda: now[0])

    def work(units):
        def fn():
            t = torch.get_num_threads()
            per_unit = {1: 1.0, 2: 0.6} if units >= 64 else {1: 1.0, 2: 3.0}  # small passes: slower on 2
            now[0] += per_unit[t] * units
            return t
        return fn

    tuner = ThreadTuner(probe_every=16)
    tuner.enabled = True
    used_small, used_large, used_ranker = [], [], []
    for _ in range(60):
        used_small.append(tuner.run(work(4), 4))
        used_large.append(tuner.run(work(128), 128))
        used_ranker.append(tuner.run(work(128), 128, "ranker"))
    assert used_small[:4] == [2, 1, 2, 1] and used_small[4:].count(1) >= 52
    assert used_large[4:].count(2) >= 52 and used_ranker[4:].count(2) >= 52
    assert set(tuner.choices) == {("loss", 3), ("loss", 8), ("ranker", 8)}
    assert tuner.used[1] + tuner.used[2] == 180
    # a new kind starts on the count its nearest size found faster, and is probed after probe_every passes
    first = [tuner.run(work(5), 5, "errors") for _ in range(20)]
    assert first[:16] == [1] * 16 and first[16:18] == [2, 2] and first[18:] == [1, 1]  # measured twice, then 1
    assert tuner.run(work(200), 200, "errors") == 2  # nearest in size: the large loss passes
    monkeypatch.setattr(threads_mod, "TUNER", tuner)
    set_threads(1)
    assert torch.get_num_threads() == 1 and not tuner.enabled
    assert [tuner.run(work(64), 64) for _ in range(3)] == [1, 1, 1]
    set_threads("auto")
    assert tuner.enabled
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        set_threads(0)


needs_mkl = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch without MKL")


@needs_mkl
def test_import_turns_on_mkls_strict_mode_so_small_products_match_on_any_thread_count(two_threads):
    """Products of few rows (a pass of 1-3 small sets) differ in the last bit between one thread
    and two under MKL's default mode; keypatch's import turns the strict mode on."""
    assert threads_invariant()
    g = torch.Generator().manual_seed(0)
    for rows in (6, 9, 10):
        x, w, b = torch.randn(rows, 32, generator=g), torch.randn(96, 32, generator=g), torch.randn(96, generator=g)
        torch.set_num_threads(1)
        one = torch.addmm(b, x, w.t())
        torch.set_num_threads(2)
        assert torch.equal(one, torch.addmm(b, x, w.t()))


@needs_mkl
def test_without_strict_mode_the_tuner_stays_off_unless_asked():
    code = ("import torch; torch.ones(8, 8) @ torch.ones(8, 8); import keypatch; "  # MKL ran before keypatch
            "from keypatch.threads import TUNER, threads_invariant, set_threads; "
            "TUNER.run(lambda: 0, 64); print(threads_invariant(), TUNER.enabled); "
            "set_threads('auto'); print(TUNER.enabled)")
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]
    env["MKL_CBWR"] = "AUTO"  # the user's own setting is kept
    out = subprocess.run([sys.executable, "-c", code.replace("torch.ones(8, 8) @ torch.ones(8, 8); ", "")],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


class Alternating(ThreadTuner):
    """A tuner that moves every pass, however small and of whatever kind, to the other thread count."""

    calls = 0

    def choose(self, many, key=("loss", 0)):
        self.choices.setdefault(key, threads_mod._Choice())
        self.calls += 1
        return 1 if self.calls % 2 else many


def test_tuning_is_on_by_default_and_moving_passes_between_thread_counts_changes_no_loss(
        two_threads, toy_model, monkeypatch):
    """The contract tests' images with ``multi`` (passes of 1-3 sets among them): every pass alternately
    on one thread and two gives the bits of every pass on two."""
    assert ThreadTuner().enabled is None
    from keypatch.geometry import normalize

    small = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(11))  # the contract tests' images
    images = [normalize(torch.nn.functional.interpolate(s[None], size=64, mode="bilinear")[0]) for s in small]

    def losses():
        return [(p.patches, p.losses) for strategy in ("multi", "ranked")
                for p in keypatch.propose_batch(images, 0.5, strategy, toy_model, seed=5)]

    fixed = ThreadTuner()
    fixed.enabled = False
    monkeypatch.setattr(objective_mod, "TUNER", fixed)
    monkeypatch.setattr(ranked_mod, "TUNER", fixed)
    expected = losses()
    tuner = Alternating()
    tuner.enabled = True
    monkeypatch.setattr(objective_mod, "TUNER", tuner)
    monkeypatch.setattr(ranked_mod, "TUNER", tuner)
    assert losses() == expected
    assert tuner.used.get(1, 0) >= 5 and tuner.used.get(2, 0) >= 5
    assert {kind for kind, _ in tuner.choices} == {"loss", "errors", "ranker"}  # every kind of pass moved
    monkeypatch.undo()
    torch.set_num_threads(2)
    threads_mod.TUNER.run(lambda: 0, 64)
    assert threads_mod.TUNER.enabled is threads_invariant()
