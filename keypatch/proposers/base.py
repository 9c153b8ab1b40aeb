"""What every proposer shares: the result type, the registry and the base class."""

from __future__ import annotations

import copy
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from keypatch.geometry import PatchGrid
from keypatch.reconstructors.mae import MAE


@dataclass
class Proposal:
    """The key patches of one image.

    Attributes
    ----------
    patches : list of int
        Patch indices in the order they were chosen.
    losses : list of float
        ``L`` after each patch was added (one per patch; for ``start="center"`` the first is
        ``L({centre})``). Strategies that do not build the set step by step report the losses of
        the prefixes of ``patches``.
    ratio : float
        The requested ratio.
    grid : PatchGrid
        The grid the indices refer to.
    strategy : str
        Registry name of the strategy.
    evaluations : int
        MAE evaluations (visible sets scored) spent on this image.
    seconds : float
        Wall time spent on this image (a batch's time is shared evenly).
    """

    patches: list[int]
    losses: list[float]
    ratio: float
    grid: PatchGrid
    strategy: str
    evaluations: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        """Final ``L`` of the whole set."""
        return self.losses[-1]

    @property
    def k(self) -> int:
        """Number of patches."""
        return len(self.patches)

    def mask(self) -> torch.Tensor:
        """Boolean ``(rows, cols)`` grid, True where a patch is kept."""
        m = torch.zeros(self.grid.n, dtype=torch.bool)
        m[self.patches] = True
        return m.view(self.grid.rows, self.grid.cols)


class Proposer(ABC):
    """A patch-selection strategy.

    Subclasses implement :meth:`propose_batch`, which chooses ``k`` patches for each image of a
    batch. To add a strategy, write one file with a subclass and decorate it with
    :func:`register`.
    """

    name: ClassVar[str] = "base"
    searches_objective: ClassVar[bool] = True
    """Whether the strategy evaluates the objective (MAE passes over visible sets) while choosing.
    False for ``random`` and ``attention``: they choose without it (``evaluations`` is 0) and the
    API computes their losses afterwards. Every strategy gets the model (its grid, its device)."""
    prefix_consistent: ClassVar[bool] = False
    """Whether the first ``j`` patches of an answer for ``k`` are the answer for ``j`` (same image,
    seed and options): then one run to the largest ``k`` serves every smaller one."""
    uses_seed: ClassVar[bool] = False
    """Whether the answer depends on the seed (then the seed is part of a stored record's key)."""
    start_rule: ClassVar[str] = "kept"
    """What the strategy does with its ``start`` patch, and so what a record says of it: ``"kept"``
    (the answer begins with it), ``"moves"`` (a refinement may move it away: stored as ``START
    (may move)``) or ``"ignored"`` (the search does not use it: stored without a start)."""
    options: ClassVar[dict[str, type | tuple[type, ...]]] = {}
    """The keyword options the strategy takes and their types, checked by :func:`get_proposer`."""
    options_pass_through: ClassVar[bool] = False
    """Whether options outside :attr:`options` are accepted and passed on (``swap``: its base's)."""
    takes_begin: ClassVar[bool] = False
    """Whether :meth:`select` takes ``begin``, patches each image already has, and continues from
    them (a round after another; a budget over a pool, :mod:`keypatch.rounds`)."""
    run_options: ClassVar[frozenset[str]] = frozenset({"start", "chunk_size", "batch_size"})
    """Options that do not change the answer (memory, batching) or are stored apart (``start``)."""

    def stepwise(self) -> Proposer | None:
        """This strategy as one whose answers grow a patch at a time, each the first patches of the
        next (what a budget over a pool allocates with, :mod:`keypatch.rounds`): itself where
        :attr:`prefix_consistent`; a copy without its refinement rounds (``rounds=0``) where that
        makes it so (``ranked``, ``screened``: the refinement then runs once each image's count is
        known); None where neither (no budget for it)."""
        if not self.takes_begin:
            return None
        if self.prefix_consistent:
            return self
        if "rounds" in self.options and getattr(self, "rounds", 0):
            twin = copy.copy(self)
            twin.rounds = 0
            return twin if twin.prefix_consistent else None
        return None

    def settings(self) -> dict[str, Any]:
        """The options that determine this strategy's answer, with defaults filled in.

        What a stored record is keyed by (with the ``seed`` where :attr:`uses_seed`): two
        instances with equal settings give the same answer on the same image.
        """
        return {name: getattr(self, name) for name in sorted(self.options) if name not in self.run_options}

    @abstractmethod
    def select(
        self, model: MAE, images: torch.Tensor, k: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Choose ``k`` patches for each image.

        Parameters
        ----------
        model : MAE
            The reconstructor (on its device).
        images : torch.Tensor
            ``(B, 3, H, W)`` normalised, on the model's device.
        k : int
            Patches per image.
        seed : int
            Seed for any randomness.

        Returns
        -------
        patches : torch.Tensor
            ``(B, k)`` long, in order of choice.
        losses : torch.Tensor
            ``(B, k)`` float: ``L`` after each addition, or NaN where the strategy did not compute it.
        evaluations : list of int
            MAE evaluations per image.
        """


_REGISTRY: dict[str, type[Proposer]] = {}


def register(cls: type[Proposer]) -> type[Proposer]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _coerce(strategy: str, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        value = None
    elif isinstance(value, kinds):
        return value
    elif bool in kinds and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # -o batched=false from the command line
    elif float in kinds and isinstance(value, int):
        return float(value)
    elif int in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    names = " or ".join({int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(k, k.__name__)
                        for k in kinds)
    raise ValueError(f"strategy {strategy!r}: option {key} must be {names}, got {value!r}")


def check_options(cls: type[Proposer], options: dict[str, Any], strategy: str | None = None) -> dict[str, Any]:
    """``options`` checked against ``cls.options``: unknown names and wrong types are a ValueError
    naming the option (and the strategy as ``strategy``, default ``cls.name``); numbers are coerced
    (``1`` to ``1.0`` for a float option, ``2.0`` to ``2`` for an integer one)."""
    strategy = strategy or cls.name
    unknown = sorted(set(options) - set(cls.options))
    if unknown and not cls.options_pass_through:
        takes = ", ".join(sorted(cls.options)) or "none"
        raise ValueError(f"strategy {strategy!r} has no option {', '.join(unknown)} (its options: {takes})")
    return {k: _coerce(strategy, k, v, cls.options[k]) if k in cls.options else v for k, v in options.items()}


def get_proposer(name: str | Proposer, **options) -> Proposer:
    """Instantiate the strategy registered as ``name`` with ``options``.

    Raises
    ------
    ValueError
        For an unknown strategy, an unknown option, or an option of the wrong type or value; the
        message names the strategy and the option.
    """
    if isinstance(name, Proposer):
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    return cls(**check_options(cls, options))


def takes_option(strategy: str | Proposer, option: str) -> bool:
    """Whether ``strategy`` (a name or an instance) declares ``option`` (e.g. ``"start"``)."""
    cls = type(strategy) if isinstance(strategy, Proposer) else _REGISTRY.get(strategy)
    return cls is not None and option in cls.options


def make_proposer(strategy: str | Proposer, start: str = "center", options: dict[str, Any] | None = None) -> Proposer:
    """The strategy ``strategy`` with ``options``, and ``start`` where it takes one.

    What :func:`keypatch.propose` and the engines build their proposer with: ``start`` goes to the
    strategies that declare it; a non-default ``start`` for one that does not is a ValueError
    (it would be silently ignored). An instance is returned as it is (then ``options`` must be empty).
    """
    options = dict(options or {})
    if isinstance(strategy, Proposer):
        if options:
            raise ValueError("pass options either to the Proposer instance or with a strategy name")
        return strategy
    if takes_option(strategy, "start") or start != "center":
        options["start"] = start
    return get_proposer(strategy, **options)


def image_seeds(images: torch.Tensor, seed: int) -> list[int]:
    """One seed per image, from ``seed`` and the image's own pixels.

    Randomised strategies draw image ``i``'s randomness from ``image_seeds(images, seed)[i]``, so
    the same image with the same seed gets the same answer whatever the batch, its place in it, the
    order of the run or the machine; different images get independent draws.
    """
    check_seed(seed)
    out = []
    for x in images.detach().to("cpu", torch.float32):
        h = hashlib.blake2b(x.contiguous().numpy().tobytes(), digest_size=8, key=str(int(seed)).encode())
        out.append(int.from_bytes(h.digest(), "little") & ((1 << 63) - 1))
    return out


def check_seed(seed: Any) -> int:
    """``seed`` as an int; TypeError for anything that is not an integer (None, 1.5, "0", True)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def available() -> list[str]:
    """Names of the registered strategies."""
    return sorted(_REGISTRY)

