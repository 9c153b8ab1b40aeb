"""CPU threads that hold up on a shared machine: all of the process's torch threads, or one, by
what each has been taking per scored set.

On a quiet machine the model's passes run fastest on every core. When another process holds a
core, OpenMP's threads wait for the one that is descheduled at every parallel region, and a pass
can take several times longer than on one thread (``benchmarks/bench_threads.py``). With
``set_threads("auto")`` (``--threads auto``) the objective runs its CPU passes through :data:`TUNER`:
it times every pass, keeps an estimate of the seconds per set for the current thread count
(``torch.get_num_threads()``, whatever set it) and for one thread, runs the faster, and re-measures
the other every :attr:`ThreadTuner.probe_every` passes, so it follows a machine whose load changes.

It is off by default: PyTorch's CPU kernels do not give bit-equal results on one thread and on
several for every shape (a pass of 3 sets of the toy model differed in the last bit of a loss), so
a choice made from timings would make the same call give losses that differ in the last bits from
run to run, against keypatch's rule that a result is the same given its inputs and seed.
``set_threads(n)`` (``--threads N``) fixes the count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

__all__ = ["TUNER", "ThreadTuner", "set_threads"]


class ThreadTuner:
    """Chooses, pass by pass, between the current torch thread count and one thread.

    Parameters
    ----------
    probe_every : int
        Passes between two measurements of the option not in use, while the two are within
        ``clear`` of each other; three times as many once one is clearly faster.
    clear : float
        How many times slower the other option must be for the choice to count as clear.
    min_units : int
        The smallest pass (in scored sets) that is measured.
    smoothing : float
        Weight of a new measurement in an option's estimate (exponential moving average).
    """

    def __init__(self, probe_every: int = 16, smoothing: float = 0.5, clear: float = 1.3, min_units: int = 16) -> None:
        self.probe_every, self.smoothing, self.clear, self.min_units = probe_every, smoothing, clear, min_units
        self.enabled = False
        self.reset()

    def reset(self) -> None:
        """Forget the estimates (and the counts of passes per thread count)."""
        self.rate: dict[int, float] = {}
        self.last: dict[int, int] = {}
        self.used: dict[int, int] = {}
        self.passes = 0
        self.many = 0

    def choose(self, many: int) -> int:
        """The thread count for the next pass, given ``many`` threads available: each option is
        measured twice first (the first pass of a process is slow for reasons of its own), then the
        faster runs, and the other is measured again every :attr:`probe_every` passes (three times
        as many when it was :attr:`clear`-ly slower)."""
        options = (many, 1)
        young = [t for t in options if self.used.get(t, 0) < 2]
        if young:
            return min(young, key=lambda t: self.used.get(t, 0))
        best, other = sorted(options, key=lambda t: self.rate[t])
        every = self.probe_every * (3 if self.rate[other] > self.clear * self.rate[best] else 1)
        return other if self.passes - self.last[other] >= every else best

    def run(self, fn: Callable[[], T], units: int) -> T:
        """``fn()`` on the thread count :meth:`choose` gives, timed as ``units`` units of work.

        With tuning off or one thread available, ``fn()`` runs as it is. A pass of fewer than
        :attr:`min_units` units (a final loss, a reconstruction) runs on the faster option and is
        not measured: its time per unit is mostly fixed costs, no guide to the passes that count.
        """
        many = torch.get_num_threads()
        if not self.enabled or many <= 1:
            return fn()
        if many != self.many:  # the count was changed (by the user, or by runs sharing the machine): start anew
            self.reset()
            self.many = many
        if units < self.min_units:
            return _on(min(self.rate, key=self.rate.__getitem__) if len(self.rate) == 2 else many, many, fn)
        threads = self.choose(many)
        start = time.perf_counter()
        out = _on(threads, many, fn)
        seconds = (time.perf_counter() - start) / units
        if threads in self.rate and self.last[threads] == self.passes - 1:  # running on: smooth
            seconds = (1 - self.smoothing) * self.rate[threads] + self.smoothing * seconds
        self.rate[threads], self.last[threads] = seconds, self.passes  # after a gap the new measurement stands
        self.passes += 1
        self.used[threads] = self.used.get(threads, 0) + 1
        return out


def _on(threads: int, many: int, fn: Callable[[], T]) -> T:
    """``fn()`` on ``threads`` torch threads, ``many`` given back afterwards."""
    if threads == many:
        return fn()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(many)


TUNER = ThreadTuner()
"""The process's tuner, shared by every :class:`~keypatch.objective.Objective` on a CPU (off until
``set_threads("auto")``)."""


def set_threads(threads: int | str) -> None:
    """Fix the torch thread count (an int >= 1), or ``"auto"``: let :data:`TUNER` choose between
    the current count and one, pass by pass (faster on a shared machine; losses may then differ
    in the last bits from run to run)."""
    if threads == "auto":
        TUNER.enabled = True
        TUNER.reset()
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}")
    torch.set_num_threads(threads)
    TUNER.enabled = False
