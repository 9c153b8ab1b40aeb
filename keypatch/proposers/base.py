"""What every proposer shares: the result type, the registry and the base class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

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
    extra: dict = field(default_factory=dict)

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
    needs_model: ClassVar[bool] = True
    """Whether the strategy scores visible sets with the MAE while choosing."""
    prefix_consistent: ClassVar[bool] = False
    """Whether the first ``j`` patches of an answer for ``k`` are the answer for ``j`` (same image,
    seed and options): then one run to the largest ``k`` serves every smaller one."""

    def __init__(self, **options) -> None:
        if options:
            raise TypeError(f"strategy {self.name!r} got unknown options: {', '.join(sorted(options))}")

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


def get_proposer(name: str | Proposer, **options) -> Proposer:
    """Instantiate the strategy registered as ``name`` with ``options``."""
    if isinstance(name, Proposer):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as exc:  # unknown or misspelt option
        raise ValueError(f"strategy {name!r}: {exc}") from exc


def available() -> list[str]:
    """Names of the registered strategies."""
    return sorted(_REGISTRY)


StepCallback = Callable[[int, int], None]
