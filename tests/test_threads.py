"""The thread tuner: it runs on the cores other work leaves free (or, timing, the faster of all threads
and one), follows a change, and never changes a loss."""

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
    tuner = ThreadTuner(probe_every=16, load=False)
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

    tuner = ThreadTuner(probe_every=16, load=False)
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

    def __init__(self):
        super().__init__(load=False)

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


def _stat(path, rows):
    """A fake ``/proc/stat``: the aggregate line, then one ``cpuN`` line per (busy, idle) ticks pair."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for n, (busy, idle) in enumerate(rows):
        lines.append(f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0")
    path.write_text("\n".join(lines + ["intr 1 2 3", "ctxt 5"]) + "\n")


def test_the_load_monitor_counts_others_busy_ticks_less_this_processs_own(tmp_path, monkeypatch):
    """Two CPUs, 100 ticks a second: between two readings half a second apart each CPU ticks 50
    times. Others' work is the busy ticks less this process's own CPU time."""
    stat = tmp_path / "stat"
    now, own = [100.0], [0.0]
    monkeypatch.setattr(threads_mod.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(threads_mod.os, "times", lambda: os.times_result((own[0], 0.0, 0.0, 0.0, 0.0)))
    monkeypatch.setattr(threads_mod.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads_mod.os, "sysconf", lambda name: 100)
    _stat(stat, [(1000, 1000), (1000, 1000)])
    m = threads_mod.LoadMonitor(window=0.25, stat=str(stat), quota=False)
    assert m.usable and m.others() is None and m.threads(2) == 2  # one reading: nothing known, all threads
    now[0], own[0] = 100.5, 0.5  # we ran one core for the half second; someone else the other
    _stat(stat, [(1050, 1000), (1050, 1000)])
    assert m.others() == pytest.approx(1.0) and m.threads(2) == 1
    now[0] += 0.1  # within the window: the same answer, the file not read again
    _stat(stat, [(0, 0), (0, 0)])
    assert m.others() == pytest.approx(1.0)
    now[0], own[0] = 101.0, 1.5  # we ran both cores: no one else
    _stat(stat, [(1100, 1000), (1100, 1000)])
    assert m.others() == pytest.approx(0.0) and m.threads(2) == 2 and m.threads(1) == 1
    now[0], own[0] = 101.5, 1.5  # idle us, one CPU busy 60% by another: 0.6 of a core, 1 thread
    _stat(stat, [(1130, 1020), (1100, 1050)])
    assert m.others() == pytest.approx(0.6) and m.threads(2) == 1
    now[0] = 102.0
    _stat(stat, [(1135, 1065), (1100, 1100)])  # 0.1 of a core: both threads
    assert m.others() == pytest.approx(0.1) and m.threads(2) == 2
    now[0] = 102.5
    stat.write_text("garbage\n")  # a file that stops making sense: the monitor steps aside
    assert m.others() is None and m.threads(2) is None and not m.usable


def test_no_counters_or_a_cpu_quota_fall_back_to_timing(tmp_path, two_threads, monkeypatch):
    assert not threads_mod.LoadMonitor(stat=str(tmp_path / "missing")).usable
    _stat(tmp_path / "one", [(1, 1)])  # fewer CPUs than the affinity mask
    monkeypatch.setattr(threads_mod.os, "sched_getaffinity", lambda pid: {0, 1})
    assert not threads_mod.LoadMonitor(stat=str(tmp_path / "one")).usable
    _stat(tmp_path / "two", [(1, 1), (1, 1)])
    assert threads_mod.LoadMonitor(stat=str(tmp_path / "two"), quota=False).usable
    assert not threads_mod.LoadMonitor(stat=str(tmp_path / "two"), quota=True).usable
    clock = Clock()
    monkeypatch.setattr(threads_mod.time, "perf_counter", clock)
    tuner = ThreadTuner()
    tuner.enabled = True
    tuner.monitor = threads_mod.LoadMonitor(stat=str(tmp_path / "two"), quota=True)
    assert _run(tuner, clock, 4) == [2, 1, 2, 1]  # the timing tuner's first measurements


linux_two_cpus = pytest.mark.skipif(
    not threads_mod.LoadMonitor().usable or len(threads_mod.LoadMonitor().cpus) < 2,
    reason="needs /proc/stat, 2 or more CPUs and no CPU quota")


@linux_two_cpus
def test_a_process_spinning_beside_us_moves_passes_off_its_core(monkeypatch):
    """A real busy process (``python3 -c "while 1: pass"``) beside the tuner: within a second the
    passes run on the cores it leaves (one on a 2-CPU machine); our own computing is never load."""
    tuner = ThreadTuner()
    tuner.enabled = True
    many = len(tuner.monitor.cpus) if tuner.monitor else len(os.sched_getaffinity(0))
    n = torch.get_num_threads()
    torch.set_num_threads(many)
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def work():
        (a @ b).sum()
        return torch.get_num_threads()

    try:
        import time
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # ourselves on every core: the monitor sees no one else
            tuner.run(work, 64)
        own = tuner.monitor.others()
        if own is None or own > 0.4:
            pytest.skip(f"the machine is busy already ({own} cores of other work): a hog's load cannot be told apart")
        hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
        try:
            time.sleep(0.3)
            end = time.monotonic() + 1.5
            used = []
            while time.monotonic() < end:
                used.append(tuner.run(work, 64))
            load = tuner.monitor.others()
        finally:
            hog.kill()
            hog.wait()
    finally:
        torch.set_num_threads(n)
    assert own is not None and load is not None
    assert load >= own + 0.6  # the hog is about one core of load
    late = used[len(used) // 2:]
    assert max(late) <= many - 1 and torch.get_num_threads() == n


def test_any_thread_count_the_monitor_may_choose_gives_the_same_losses(toy_model, monkeypatch):
    """On a machine of more cores the monitor may choose any count between one and all: 1, 2, 3 and 4
    threads (oversubscribed here) give the same bits."""
    from keypatch.geometry import normalize

    small = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    images = [normalize(torch.nn.functional.interpolate(s[None], size=64, mode="bilinear")[0]) for s in small]
    fixed = ThreadTuner()
    fixed.enabled = False
    monkeypatch.setattr(objective_mod, "TUNER", fixed)
    monkeypatch.setattr(ranked_mod, "TUNER", fixed)
    n = torch.get_num_threads()
    out = {}
    try:
        for t in (1, 2, 3, 4):
            torch.set_num_threads(t)
            out[t] = [(p.patches, p.losses) for strategy in ("greedy", "ranked")
                      for p in keypatch.propose_batch(images, 0.5, strategy, toy_model, seed=2)]
    finally:
        torch.set_num_threads(n)
    assert out[1] == out[2] == out[3] == out[4]


class FixedMonitor:
    """A load monitor that says what it is told."""

    def __init__(self, threads):
        self.value = threads

    def threads(self, many):
        return min(many, self.value)


def test_within_a_hold_the_chosen_count_stays_set_between_passes_and_comes_back_after(two_threads):
    """A search holds the count the monitor chose between its passes (its own small operations run
    on it too); outside a hold every pass gives the count back."""
    tuner = ThreadTuner()
    tuner.enabled = True
    tuner.monitor = FixedMonitor(1)
    assert tuner.run(torch.get_num_threads, 4) == 1 and torch.get_num_threads() == 2
    with tuner.hold():
        assert tuner.run(torch.get_num_threads, 4) == 1
        assert torch.get_num_threads() == 1  # between passes
        with tuner.hold():  # nested: one hold
            assert tuner.run(torch.get_num_threads, 4) == 1
        assert torch.get_num_threads() == 1
        tuner.monitor.value = 2  # the other process ended: timing among the 2 free cores, 2 set between passes
        assert tuner.run(torch.get_num_threads, 4) in (1, 2) and torch.get_num_threads() == 2
        tuner.monitor.value = 1
        assert tuner.run(torch.get_num_threads, 4) == 1
    assert torch.get_num_threads() == 2  # the count from before
    with tuner.hold():
        tuner.run(torch.get_num_threads, 4)
        torch.set_num_threads(2)  # someone else sets a count within the hold: it is theirs from then on
        tuner.monitor.value = 8
        assert tuner.run(torch.get_num_threads, 4) in (1, 2) and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2


def test_one_free_core_means_one_thread_without_probes_and_more_means_timing_among_them(two_threads, monkeypatch):
    """Under load (one core free) no pass probes all threads (each probe would cost several passes);
    on a quiet machine the timing tuner still chooses between all threads and one per kind and size."""
    clock = Clock()
    monkeypatch.setattr(threads_mod.time, "perf_counter", clock)
    tuner = ThreadTuner(probe_every=16)
    tuner.enabled = True
    tuner.monitor = FixedMonitor(1)
    assert _run(tuner, clock, 100) == [1] * 100
    tuner.monitor.value = 2  # quiet again: timing, and all threads are faster here
    used = _run(tuner, clock, 100)
    assert used[:4] == [2, 1, 2, 1] and used[4:].count(2) >= 90  # each measured twice, then the faster
    clock.cost = {1: 0.5, 2: 1.0}  # small passes: one thread faster on a quiet machine, and found so
    used = _run(tuner, clock, 100)
    assert used[50:].count(1) >= 45
