"""The KPP objective: ``L(S)``, the MAE's masked-patch loss of a visible set ``S``.

``L(S)`` is the mean over the patches not in ``S`` (and over each patch's values) of the squared
error between the MAE's prediction from ``S`` alone and the true normalised pixels: the official
MAE loss with ``norm_pix_loss=False``; 0 when every patch is visible. Every strategy
(:mod:`keypatch.proposers`), the public loss functions and the experiments evaluate visible sets
through an :class:`Objective`; strategies are optimisers over it.
"""

from __future__ import annotations

import torch

from keypatch.geometry import PatchGrid
from keypatch.reconstructors.mae import MAE
from keypatch.reconstructors.precision import autocast, check_precision
from keypatch.reconstructors.scoring import context_losses, loss_context

DEFAULT_CHUNK = 64
"""Visible sets per MAE pass (about ``64 x 196`` decoder rows). On a 2-core AVX2 CPU the speed is
flat from 32 to 256 (``benchmarks/bench_chunk.py``); 64 keeps memory small."""


class Objective:
    """``L`` of visible sets of a batch of images, in memory-bounded batched MAE passes.

    The per-image constants (patch tokens, the loss's per-patch terms, ...) are computed once, when
    the objective is made; every :meth:`score` call reuses them.

    Parameters
    ----------
    model : MAE
        The reconstructor, in eval mode.
    images : torch.Tensor
        ``(B, 3, H, W)`` normalised images (see :func:`keypatch.load_images`), on the model's device.
    chunk_size : int
        Visible sets per MAE pass (bounds memory).
    precision : {"float32", "bfloat16"}
        Compute precision of the passes; the loss is accumulated in float32.

    Attributes
    ----------
    evaluations : torch.Tensor
        ``(B,)`` long, on the model's device: visible sets scored so far per image.
    """

    def __init__(self, model: MAE, images: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK,
                 precision: str = "float32") -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.model = model
        self.grid: PatchGrid = model.grid
        """The model's patch grid."""
        self.device: torch.device = model.device
        """Where the model and every returned tensor live."""
        self.images = images
        self.chunk_size = chunk_size
        self.precision = check_precision(precision)
        with torch.no_grad():
            self.context = loss_context(model, images)
        self.evaluations = torch.zeros(images.shape[0], dtype=torch.long, device=model.device)

    @property
    def batch(self) -> int:
        """Number of images ``B``."""
        return self.images.shape[0]

    @torch.no_grad()
    def score(self, sets: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """``L`` of many visible sets.

        Parameters
        ----------
        sets : torch.Tensor
            ``(M, k)`` long visible patch indices, distinct within a row (``k`` may be 0).
        image_index : torch.Tensor
            ``(M,)`` long: the image of each set.

        Returns
        -------
        torch.Tensor
            ``(M,)`` float32 on the model's device. No host synchronisation.
        """
        self.evaluations.index_add_(0, image_index, torch.ones_like(image_index))  # no host sync (bincount has one)
        m, ctx = sets.shape[0], self.context
        with autocast(self.device, self.precision):
            if m <= self.chunk_size:
                return context_losses(self.model, ctx, sets, image_index)
            out = torch.empty(m, device=sets.device)
            for s in range(0, m, self.chunk_size):
                out[s : s + self.chunk_size] = context_losses(self.model, ctx, sets[s : s + self.chunk_size],
                                                              image_index[s : s + self.chunk_size])
            return out

    def score_each(self, sets: torch.Tensor) -> torch.Tensor:
        """``L`` of one visible set per image, ``sets (B, k)`` -> ``(B,)``."""
        return self.score(sets, torch.arange(self.batch, device=sets.device))

    def step(self, chosen: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``L(chosen + c)`` for every candidate ``c`` of every image (one greedy step, images x candidates).

        Parameters
        ----------
        chosen : torch.Tensor
            ``(B, j)`` patches chosen so far (``j`` may be 0).
        candidates : torch.Tensor
            ``(B, C)`` candidate patches per image (the same count for every image).

        Returns
        -------
        torch.Tensor
            ``(B, C)`` float32.
        """
        b, c = candidates.shape
        sets = torch.cat([chosen[:, None, :].expand(b, c, chosen.shape[1]), candidates[..., None]], dim=2)
        ii = torch.arange(b, device=sets.device).repeat_interleave(c)
        return self.score(sets.reshape(b * c, -1), ii).view(b, c)

    def prefix_losses(self, patches: torch.Tensor) -> torch.Tensor:
        """``L`` of every prefix of each image's ordered patches ``(B, k)`` -> ``(B, k)``."""
        return torch.stack([self.score_each(patches[:, : j + 1]) for j in range(patches.shape[1])], dim=1)


@torch.no_grad()
def losses(model: MAE, images: torch.Tensor, visible: torch.Tensor, image_index: torch.Tensor | None = None, *,
           chunk_size: int = DEFAULT_CHUNK, precision: str = "float32") -> torch.Tensor:
    """``L(S)`` for many visible sets of one or more images.

    Parameters
    ----------
    model : MAE
        The reconstructor.
    images : torch.Tensor
        ``(B, 3, H, W)`` normalised images (or ``(3, H, W)`` for one).
    visible : torch.Tensor or sequence
        ``(M, k)`` patch indices: one visible set per row, all of size ``k`` (or ``(k,)`` for one set).
    image_index : torch.Tensor, optional
        ``(M,)`` image of each set; default all 0.
    chunk_size, precision
        As for :class:`Objective`.

    Returns
    -------
    torch.Tensor
        ``(M,)`` float32 losses, on the model's device.

    Raises
    ------
    ValueError
        For images of the wrong shape or indices outside the grid.
    """
    images, visible, image_index = model.prepare_inputs(images, visible, image_index)
    return Objective(model, images, chunk_size=chunk_size, precision=precision).score(visible, image_index)
