"""The patch grid of a square image cut into square patches."""

from __future__ import annotations

from dataclasses import dataclass

COUNT_RULES = ("round", "reference")
"""How a ratio becomes a patch count (:meth:`PatchGrid.count`)."""


class OutsideGridError(IndexError, ValueError):
    """A patch index or ``(row, col)`` outside the grid (an IndexError, and a ValueError: a bad value
    given, which the commands report in one line)."""


@dataclass(frozen=True)
class PatchGrid:
    """A ``rows x cols`` grid of ``patch_size`` pixel patches, indexed row-major.

    Parameters
    ----------
    image_size : int
        Side of the (square) image in pixels, e.g. 224.
    patch_size : int
        Side of one (square) patch in pixels, e.g. 16.

    Examples
    --------
    >>> g = PatchGrid(224, 16)
    >>> g.n, g.rows, g.center, g.rc(105)
    (196, 14, 105, (7, 7))
    """

    image_size: int = 224
    patch_size: int = 16

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.patch_size <= 0:
            raise ValueError("image_size and patch_size must be positive")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def rows(self) -> int:
        """Number of patch rows."""
        return self.image_size // self.patch_size

    @property
    def cols(self) -> int:
        """Number of patch columns."""
        return self.rows

    @property
    def n(self) -> int:
        """Number of patches N."""
        return self.rows * self.cols

    @property
    def center(self) -> int:
        """Index of the central patch (row ``rows//2``, col ``cols//2``; 105 on 14x14)."""
        return self.index(self.rows // 2, self.cols // 2)

    def index(self, row: int, col: int) -> int:
        """Row-major index of the patch at ``(row, col)``."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise OutsideGridError(f"({row}, {col}) is outside a {self.rows}x{self.cols} grid")
        return row * self.cols + col

    def rc(self, index: int) -> tuple[int, int]:
        """``(row, col)`` of patch ``index``."""
        if not 0 <= index < self.n:
            raise OutsideGridError(f"patch {index} is outside a grid of {self.n} patches")
        return divmod(index, self.cols)

    def count(self, ratio: float, rule: str = "round") -> int:
        """Number of patches kept at ``ratio``.

        Parameters
        ----------
        ratio : float
            In ``(0, 1]``.
        rule : {"round", "reference"}
            ``"round"``: ``round(ratio * N)`` (the paper's text); ``"reference"``:
            ``int(ratio * N) + 1``, at most ``N`` (the KPP authors' code, which keeps its start
            patch and then adds ``int(ratio * N)``: 50 at ratio 0.25).

        Raises
        ------
        ValueError
            If ``ratio`` is not a number in ``(0, 1]``, ``rule`` is unknown, or the ratio keeps
            less than one patch (``round(ratio * N) == 0``: below ``0.5 / N``).
        """
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        if rule not in COUNT_RULES:
            raise ValueError(f"count rule must be one of {', '.join(COUNT_RULES)}, got {rule!r}")
        if rule == "reference":
            return min(self.n, int(float(ratio) * self.n) + 1)
        k = min(self.n, round(float(ratio) * self.n))
        if k < 1:
            smallest = 0.5 / self.n
            raise ValueError(f"ratio {ratio:g} keeps round({ratio:g} x {self.n}) = 0 patches; the smallest ratio "
                             f"that keeps one of the {self.n} patches is above {smallest:.4g} (e.g. {1 / self.n:.4g})")
        return k

    def distances(self, device=None):
        """``(N, N)`` long tensor of Chebyshev distances between patches, in patches.

        1 for the 8 neighbours of a patch, 2 for the ring around them, and so on.
        """
        import torch

        idx = torch.arange(self.n, device=device)
        r, c = idx // self.cols, idx % self.cols
        return torch.maximum((r[:, None] - r[None]).abs(), (c[:, None] - c[None]).abs())
