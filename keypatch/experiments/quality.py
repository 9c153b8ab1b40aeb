"""Reconstruction quality of an MAE against a trivial predictor.

The trivial predictor fills every masked patch with the mean colour (per channel) of the visible
patches, in the same normalised pixel space as the MAE's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from keypatch.objective import losses
from keypatch.reconstructors.mae import MAE


def random_visible(n_images: int, n_patches: int, k: int, seed: int, device: torch.device) -> torch.Tensor:
    """``(n_images, k)`` random visible sets, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n_images, n_patches, generator=gen).argsort(1)[:, :k].to(device)


def mean_colour_loss(images: torch.Tensor, visible: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Masked-patch MSE of the mean-colour predictor, one value per image, ``(B,)``.

    Parameters
    ----------
    images : torch.Tensor
        ``(B, 3, H, W)`` normalised.
    visible : torch.Tensor
        ``(B, k)`` visible patch indices.
    patch_size : int
        Patch side.
    """
    from keypatch.geometry import patchify

    b = images.shape[0]
    patches = patchify(images, patch_size).reshape(b, -1, patch_size * patch_size, images.shape[1])
    ii = torch.arange(b, device=images.device)[:, None]
    colour = patches[ii, visible].mean(dim=(1, 2))  # (B, 3)
    err = (patches - colour[:, None, None, :]).pow(2).mean(dim=(2, 3))  # (B, N)
    masked = torch.ones_like(err).scatter_(1, visible, 0.0)
    return (err * masked).sum(1) / masked.sum(1).clamp_min(1.0)


@dataclass
class QualityReport:
    """MAE versus mean-colour predictor on a set of images."""

    n_images: int
    visible_ratio: float
    mae_loss: float
    trivial_loss: float

    @property
    def ratio(self) -> float:
        """``mae_loss / trivial_loss`` (lower is better; the embedded model must reach <= 0.6)."""
        return self.mae_loss / self.trivial_loss


@torch.no_grad()
def evaluate_quality(model: MAE, images: torch.Tensor, visible_ratio: float = 0.25, seed: int = 0,
                     batch_size: int = 32) -> QualityReport:
    """Mean masked-patch MSE of ``model`` and of the trivial predictor, with random visible sets.

    Both are averaged per image, over the same seeded visible sets.
    """
    g = model.grid
    k = g.count(visible_ratio)
    images = images.to(model.device)
    vis = random_visible(images.shape[0], g.n, k, seed, model.device)
    ii = torch.arange(images.shape[0], device=model.device)
    mae = losses(model, images, vis, ii, chunk_size=batch_size)
    triv = mean_colour_loss(images, vis, model.config.patch_size)
    return QualityReport(images.shape[0], visible_ratio, mae.mean().item(), triv.mean().item())
