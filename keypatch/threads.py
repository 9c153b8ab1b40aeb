"""CPU threads that hold up on a shared machine: at most as many of torch's threads as the cores other
work leaves free, read from the kernel's counters, and among those all or one, by what each has been
taking per scored set.

On a quiet machine the model's passes run fastest on every core. When another process holds a
core, OpenMP's threads wait for the one that is descheduled at every parallel region, and a pass
can take several times longer than on one thread (``benchmarks/bench_threads.py``), small passes
most. The objective runs its CPU passes through :data:`TUNER` (every kind: losses, error maps, the
``ranked`` strategy's ranker net). On Linux, :class:`LoadMonitor` reads ``/proc/stat`` every
:attr:`LoadMonitor.window` seconds: the CPU time of the cores this process may run on, less this
process's own, is the work of others (other processes, a hypervisor's steal); a pass may use the
cores it leaves free, at most ``torch.get_num_threads()`` (whatever set it). With one core free it
runs on one thread, nothing timed or probed (on a busy machine a probe of all threads costs several
passes); with more, the tuner times: for each kind and size of pass an estimate of the seconds per
unit on the free cores and on one, the faster run, the other re-measured every
:attr:`ThreadTuner.probe_every` passes (on a quiet machine the smallest passes, the ranker's, run
faster on one thread). A change of load is followed within a window or two. Where the counters do
not describe this process's share of the machine (no ``/proc/stat``, or a cgroup CPU quota, as in a
container with a CPU limit), every pass is timed between all threads and one.

Moving a pass between thread counts must not change a loss. PyTorch's CPU matrix products come
from Intel MKL, whose products of few rows give different last bits on one thread and on several
unless MKL's strict reproducibility mode is on; ``import keypatch`` turns it on
(``MKL_CBWR=AUTO,STRICT``, unless the variable is already set) and the tuner is on by default only
where :func:`threads_invariant` finds it in effect (not where MKL ran a product before keypatch
was imported, nor on a torch without MKL). ``set_threads("auto")`` (``--threads auto``) turns it on
regardless; ``set_threads(n)`` (``--threads N``) fixes the count and turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")

__all__ = ["TUNER", "LoadMonitor", "ThreadTuner", "set_threads", "threads_invariant"]

MKL_CBWR_STRICT = 0x10000
"""MKL's flag for its strict reproducibility mode (``mkl_cbwr.h``)."""


@functools.cache
def _mkl_cbwr_get() -> Callable[[int], int] | None:
    """MKL's ``cbwr_get`` from the torch library that holds MKL, or None (no MKL, no such symbol)."""
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        path = os.path.join(os.path.dirname(torch.__file__), "lib", name)
        if not os.path.exists(path):
            continue
        try:
            fn = ctypes.CDLL(path).mkl_serv_cbwr_get
        except (OSError, AttributeError):
            return None
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


def threads_invariant() -> bool:
    """Whether torch's CPU matrix products give the same bits on any thread count: MKL's strict
    reproducibility mode is in effect (``MKL_CBWR=...,STRICT`` read before MKL's first product)."""
    if not torch.backends.mkl.is_available():
        return False
    fn = _mkl_cbwr_get()
    if fn is None:
        return False
    try:
        return bool(fn(-1) & MKL_CBWR_STRICT)  # MKL_CBWR_ALL: the whole setting
    except OSError:
        return False


def _cpu_quota() -> bool:
    """Whether a cgroup CPU quota limits this process (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``):
    then ``/proc/stat``'s idle time is not time this process could have."""
    try:
        with open("/proc/self/cgroup", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        path = path.strip().lstrip("/")
        if controllers == "":  # v2: every controller in one tree
            candidates = [os.path.join("/sys/fs/cgroup", path, "cpu.max"), "/sys/fs/cgroup/cpu.max"]
        elif "cpu" in controllers.split(","):
            root = os.path.join("/sys/fs/cgroup", controllers)
            candidates = [os.path.join(root, path, "cpu.cfs_quota_us"), os.path.join(root, "cpu.cfs_quota_us"),
                          "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"]
        else:
            continue
        for name in candidates:
            try:
                with open(name, encoding="ascii") as f:
                    value = f.read().split()
            except OSError:
                continue
            if value and value[0] not in ("max", "-1"):
                return True
            break
    return False


class LoadMonitor:
    """How many of this process's CPUs other work keeps busy, from the kernel's counters (Linux).

    Every :attr:`window` seconds (at most; only when asked) it reads the ``cpuN`` lines of
    ``/proc/stat`` for the CPUs in this process's affinity mask and this process's CPU time
    (:func:`os.times`); between two readings, the busy time of those CPUs (user, nice, system, irq,
    softirq, steal) less this process's own, divided by the time elapsed, is the number of cores
    other work held. Our own threads (spinning in OpenMP's barrier or not) never count as load.

    Parameters
    ----------
    window : float
        Seconds between two readings (the kernel counts in ticks of 1/100 s: a window of 0.25 s on
        2 cores measures the others' share to about 4%).
    stat : str
        The file to read (tests pass a fake).
    quota : bool or None
        Whether a cgroup CPU quota limits the process (None: read it from ``/proc/self/cgroup``);
        under a quota the monitor is unusable.
    """

    def __init__(self, window: float = 0.25, stat: str = "/proc/stat", quota: bool | None = None) -> None:
        self.window, self.stat = window, stat
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = list(range(os.cpu_count() or 1))
        self._last = None if (_cpu_quota() if quota is None else quota) else self._sample()
        self.usable = self._last is not None
        """False where the counters cannot be read or do not describe this process's share."""
        self.load: float | None = None
        """Cores other work held over the last window (None before two readings)."""

    def _sample(self) -> tuple[float, int, int, float] | None:
        """(monotonic seconds, busy ticks, all ticks of our CPUs, our CPU seconds), or None."""
        want = {f"cpu{c}" for c in self.cpus}
        busy = total = 0
        seen = 0
        try:
            with open(self.stat, encoding="ascii") as f:
                for line in f:
                    if not line.startswith("cpu"):
                        break
                    fields = line.split()
                    if fields[0] not in want:
                        continue
                    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
                    if len(ticks) < 8:
                        return None
                    busy += ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
                    total += sum(ticks)
                    seen += 1
        except (OSError, ValueError):
            return None
        if seen != len(want):
            return None
        t = os.times()
        return time.monotonic(), busy, total, t.user + t.system

    def others(self) -> float | None:
        """Cores that other work held over the last window, or None (unusable, or not yet two readings)."""
        if not self.usable:
            return None
        last = self._last
        if last is not None and time.monotonic() - last[0] < self.window:
            return self.load
        now = self._sample()
        if now is None:
            self.usable = False
            return None
        self._last = now
        if last is not None and now[2] > last[2]:
            elapsed = (now[2] - last[2]) / len(self.cpus)  # ticks of wall time, per CPU
            others = (now[1] - last[1]) - (now[3] - last[3]) * self.hz
            self.load = min(float(len(self.cpus)), max(0.0, others / elapsed))
        return self.load

    def threads(self, many: int) -> int | None:
        """The thread count for a pass: the cores others leave free, rounded, between 1 and ``many``
        (``many`` in the first window); None where the monitor is unusable."""
        if not self.usable:
            return None
        load = self.others()
        if load is None:
            return many if self.usable else None
        return max(1, min(many, int(len(self.cpus) - load + 0.5)))


class _Choice:
    """What the tuner knows of one kind and size of pass: seconds per unit for each thread count."""

    def __init__(self) -> None:
        self.rate: dict[int, float] = {}
        self.last: dict[int, int] = {}
        self.used: dict[int, int] = {}
        self.timed: dict[int, int] = {}
        self.passes = 0


class ThreadTuner:
    """Chooses, pass by pass, the torch thread count of the objective's CPU passes.

    Where :class:`LoadMonitor` can read the machine's load (Linux, no cgroup CPU quota), a pass may
    use the cores that other work leaves free (at most the current ``torch.get_num_threads()``): one
    free core, one thread. Otherwise it chooses between those cores and one by timing: passes are told
    apart by their kind (``"loss"``, ``"errors"``, ``"ranker"``...) and their size (units in powers
    of two): a pass of 4 sets is not a pass of 196 sets. Small passes lose the most to a busy core
    (a parallel region waits for its descheduled thread whatever the work in it), and are the ones a
    quiet machine may run faster on one thread, so each (kind, size) has its own estimates and its
    own choice.

    Parameters
    ----------
    probe_every : int
        Timing: passes of one kind and size between two measurements of the option not in use,
        while the two are within ``clear`` of each other; three times as many once one is clearly faster.
    clear : float
        How many times slower the other option must be for the choice to count as clear.
    smoothing : float
        Weight of a new measurement in an option's estimate (exponential moving average).
    prefer : float
        How many times faster one thread must be for a kind and size of pass to leave all threads
        (under contention it is 2-4 times faster; on a quiet machine small passes tie within noise).
    load : bool
        Read the machine's load where it can (False: always time).
    """

    def __init__(self, probe_every: int = 16, smoothing: float = 0.5, clear: float = 1.3, prefer: float = 1.15,
                 load: bool = True) -> None:
        self.probe_every, self.smoothing, self.clear, self.prefer = probe_every, smoothing, clear, prefer
        self.enabled: bool | None = None
        """True: tune; False: run every pass as it is; None (the default): tune where
        :func:`threads_invariant`, decided at the first pass."""
        self.load = load
        self.holding, self.base, self.applied = False, 0, 0
        self.monitor: LoadMonitor | None = None
        """The load monitor, made at the first tuned pass where ``load``."""
        self.reset()

    def reset(self) -> None:
        """Forget the estimates (and the counts of passes per thread count)."""
        self.choices: dict[tuple[str, int], _Choice] = {}
        self.many = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Within it, the count the load monitor chooses stays set between passes, so that a search's
        own small operations (its sorts, top-k and bookkeeping between passes) run on it too; the
        count from before comes back at the end (unless something else changed it meanwhile).
        Nested holds are one. Without a usable monitor (timing), passes switch and restore as always."""
        if self.holding:
            yield
            return
        self.holding, self.base = True, torch.get_num_threads()
        self.applied = self.base
        try:
            yield
        finally:
            self.holding = False
            if torch.get_num_threads() == self.applied != self.base:
                torch.set_num_threads(self.base)

    @property
    def used(self) -> dict[int, int]:
        """Passes run so far on each thread count, every kind and size together."""
        out: dict[int, int] = {}
        for c in self.choices.values():
            for t, n in c.used.items():
                out[t] = out.get(t, 0) + n
        return out

    def choose(self, many: int, key: tuple[str, int] = ("loss", 0)) -> int:
        """The thread count for the next pass of ``key`` (kind, size), given ``many`` threads
        available. The first kind and size measured runs each option twice first (the first pass
        of a process is slow for reasons of its own); a later one starts on :attr:`prior`, the
        count the others found faster, and is measured on the other after :attr:`probe_every`
        passes. Then the faster runs, and the other is measured again every :attr:`probe_every`
        passes (three times as many when it was :attr:`clear`-ly slower)."""
        c = self.choices.setdefault(key, _Choice())
        options = (many, 1)
        prior = self.prior(key, many) if many not in c.rate or 1 not in c.rate else None
        if prior in options:  # a new kind or size: start where the nearest measured passes are faster
            other = 1 if prior == many else many
            return other if c.passes >= self.probe_every else prior
        young = [t for t in options if c.timed.get(t, 0) < 2]
        if young:
            return min(young, key=lambda t: c.timed.get(t, 0))
        # one thread must be faster by ``prefer`` to be taken: a quiet machine's small passes time
        # too noisily to leave all threads on a near tie
        best = 1 if c.rate[1] * self.prefer < c.rate[many] else many
        other = many if best == 1 else 1
        every = self.probe_every * (3 if c.rate[other] > self.clear * c.rate[best] else 1)
        return other if c.passes - c.last[other] >= every else best

    def run(self, fn: Callable[[], T], units: int, kind: str = "loss") -> T:
        """``fn()`` on one thread where the load monitor finds one core free, else on the count
        :meth:`choose` gives among the free cores (all threads where the load cannot be read) for a
        pass of ``kind`` and ``units`` units of work (sets scored, images ranked), timed per unit.

        With tuning off or one thread available, ``fn()`` runs as it is.
        """
        many = torch.get_num_threads()
        if self.holding:  # the count we set stands for the one from before the hold, unless changed since
            if many == self.applied:
                many = self.base
            else:
                self.base = self.applied = many
        if self.enabled is None:  # MKL's mode is settled once it has run a product (the context's, before any pass)
            self.enabled = threads_invariant()
        if not self.enabled or many <= 1:
            return fn()
        if many != self.many:  # the count was changed (by the user, or by runs sharing the machine): start anew
            self.reset()
            self.many = many
        key = (kind, max(1, int(units)).bit_length())
        if self.load and self.monitor is None:
            self.monitor = LoadMonitor()
        free = self.monitor.threads(many) if self.monitor is not None and self.load else None
        cap = many if free is None else free  # the threads a pass may have: what others leave free
        after = cap if self.holding else many  # the count left set between passes
        if self.holding:
            self.applied = cap
        if cap == 1:  # one core free: one thread, nothing to time or probe
            c = self.choices.setdefault(key, _Choice())
            c.passes += 1
            c.used[1] = c.used.get(1, 0) + 1
            return _run_on(1, after, fn)
        threads = self.choose(cap, key)  # among the free cores: all of them or one, by timing
        c = self.choices[key]
        start = time.perf_counter()
        out = _run_on(threads, after, fn)
        seconds = (time.perf_counter() - start) / max(1, units)
        if threads in c.rate and c.last[threads] == c.passes - 1:  # running on: smooth
            seconds = (1 - self.smoothing) * c.rate[threads] + self.smoothing * seconds
        c.rate[threads], c.last[threads] = seconds, c.passes  # after a gap the new measurement stands
        c.passes += 1
        c.used[threads] = c.used.get(threads, 0) + 1
        c.timed[threads] = c.timed.get(threads, 0) + 1
        return out

    def prior(self, key: tuple[str, int], many: int | None = None) -> int | None:
        """The faster of ``many`` (default: the count in use) and one thread for the measured kind and
        size of pass nearest ``key`` (the nearest size, of the same kind where there is a choice), or
        None before any is measured on both."""
        many = self.many if many is None else many
        known = [(abs(size - key[1]), k != key[0], k, size) for (k, size), c in self.choices.items()
                 if many in c.rate and 1 in c.rate and (k, size) != key]
        if not known:
            return None
        *_, kind, size = min(known)
        rate = self.choices[(kind, size)].rate
        return 1 if rate[1] * self.prefer < rate[many] else many


def _run_on(threads: int, after: int, fn: Callable[[], T]) -> T:
    """``fn()`` on ``threads`` torch threads, the count ``after`` set afterwards."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        if torch.get_num_threads() != after:
            torch.set_num_threads(after)


TUNER = ThreadTuner()
"""The process's tuner, shared by every :class:`~keypatch.objective.Objective` on a CPU (on where
:func:`threads_invariant`, or after ``set_threads("auto")``)."""


def set_threads(threads: int | str) -> None:
    """Fix the torch thread count (an int >= 1; tuning off), or ``"auto"``: let :data:`TUNER` choose
    between the current count and one, pass by pass, even where :func:`threads_invariant` is false
    (then losses may differ in the last bits from run to run)."""
    if threads == "auto":
        TUNER.enabled = True
        TUNER.reset()
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}")
    torch.set_num_threads(threads)
    TUNER.enabled = False
