"""DQ's patch attention (supplement sec. 1.3): keep the patches a classifier's GradCAM++ finds most important.

For each image: GradCAM++ of a pretrained CNN for its top predicted class on its last feature map;
the map is brought to the MAE's patch grid and the ``k`` highest-scoring patches are kept, highest
first. The MAE then reconstructs the rest, so ``L(S)`` is comparable with KPP's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from keypatch.geometry import PatchGrid
from keypatch.proposers.base import Proposer, image_seeds, register
from keypatch.reconstructors.mae import MAE

PATCH_MODES = ("pixel-mean", "resize")


def patch_scores(maps: torch.Tensor, grid: PatchGrid, mode: str = "pixel-mean") -> torch.Tensor:
    """Per-patch scores ``(B, N)`` on ``grid`` (row-major) from maps ``(B, h, w)`` covering the whole image.

    Parameters
    ----------
    maps : torch.Tensor
        Attention maps of the whole image at any resolution (e.g. GradCAM++'s 7x7).
    grid : PatchGrid
        The MAE's grid.
    mode : {"pixel-mean", "resize"}
        ``"pixel-mean"`` (the DQ supplement's eq. 24): upsample the map bilinearly to the image's
        pixels (``grid.image_size`` square) and average the pixels of each patch.
        ``"resize"`` (DQ's released code): resize the map straight to ``rows x cols`` (bilinear,
        antialiased, as ``torchvision.transforms.functional.resize`` on a tensor).

    Notes
    -----
    When the grid has exactly twice the map's resolution (a 7x7 CAM on the 14x14 grid of 224/16),
    the two modes give the same scores: the bilinear upsampling's knots fall on patch borders, so a
    patch's pixel mean is the value at its centre. They differ on other grids (e.g. 16x16 of 14 px).
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (B, h, w), got {tuple(maps.shape)}")
    m = maps.float()[:, None]
    if mode == "pixel-mean":
        up = F.interpolate(m, size=(grid.image_size, grid.image_size), mode="bilinear", align_corners=False)
        out = F.avg_pool2d(up, kernel_size=grid.patch_size, stride=grid.patch_size)
    elif mode == "resize":
        out = F.interpolate(m, size=(grid.rows, grid.cols), mode="bilinear", align_corners=False, antialias=True)
    else:
        raise ValueError(f"patch mode must be one of {PATCH_MODES}, got {mode!r}")
    return out.flatten(1)


def top_patches(scores: torch.Tensor, k: int, seeds: Sequence[int] | int = 0) -> torch.Tensor:
    """The ``k`` highest-scoring patches of each row of ``scores`` ``(B, N)``, highest first, ``(B, k)``.

    Exact ties are broken by a random order drawn from ``seeds[i]`` for row ``i`` (an int ``seed``
    means ``seed + i``; :meth:`AttentionPatches.select` passes
    :func:`~keypatch.proposers.base.image_seeds`), so a flat map does not fall back to the top-left
    corner.
    """
    b, n = scores.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(b)]
    out = []
    for i in range(b):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seeds[i])).to(scores.device)
        order = torch.sort(scores[i, perm], descending=True, stable=True).indices[:k]
        out.append(perm[order])
    return torch.stack(out)


@register
class AttentionPatches(Proposer):
    """Keep the ``k`` patches with the highest GradCAM++ attention (DQ's patch dropping).

    Parameters
    ----------
    classifier : str or Classifier
        A name from :func:`keypatch.classifiers.available_classifiers` (default
        ``"efficientnet-lite0"``, offline; ``"resnet18"`` is DQ's, needs torchvision) or an instance.
    patch_mode : {"pixel-mean", "resize"}
        How the map becomes per-patch scores (see :func:`patch_scores`); default the supplement's.
    batch_size : int
        Images per classifier pass.
    weights : str, optional
        A local state-dict for the classifier.

    Notes
    -----
    The images given to :meth:`select` are the MAE's (ImageNet-normalised, at the MAE's size); they
    are denormalised, resized to the classifier's input size and normalised its way. The map
    explains the classifier's top predicted class of each image. No MAE evaluation is spent on the
    choice (``losses`` are NaN and filled in by the API).
    """

    name = "attention"
    searches_objective = False
    prefix_consistent = True
    uses_seed = True  # exact ties of the map are broken at random
    options = {"classifier": object, "patch_mode": str, "batch_size": int, "weights": (str, type(None))}

    def __init__(self, classifier="efficientnet-lite0", patch_mode: str = "pixel-mean", batch_size: int = 16,
                 weights: str | None = None) -> None:
        if patch_mode not in PATCH_MODES:
            raise ValueError(f"patch_mode must be one of {PATCH_MODES}, got {patch_mode!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if classifier == "efficientnet-lite0":  # fail before any work when the 'dq' extra is missing
            from keypatch.classifiers import require_dq

            require_dq("strategy 'attention'", weights)
        self.classifier = classifier
        self.patch_mode = patch_mode
        self.batch_size = batch_size
        self.weights = weights

    def settings(self) -> dict:
        """``classifier`` (by name), ``patch_mode`` and ``weights``."""
        name = self.classifier if isinstance(self.classifier, str) else getattr(self.classifier, "name",
                                                                                type(self.classifier).__name__)
        return {"classifier": name, "patch_mode": self.patch_mode, "weights": self.weights}

    def _classifier(self, device: torch.device):
        from keypatch.classifiers import get_classifier

        return get_classifier(self.classifier, device=device, weights=self.weights)

    def attention(self, images: torch.Tensor, grid: PatchGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GradCAM++ of MAE-normalised ``images`` ``(B, 3, H, W)``.

        Returns
        -------
        scores : torch.Tensor
            ``(B, N)`` per-patch scores on ``grid`` (maps min-max normalised per image first).
        maps : torch.Tensor
            ``(B, h, w)`` normalised maps at the classifier's feature resolution.
        classes : torch.Tensor
            ``(B,)`` the top predicted class each map explains.
        """
        from keypatch.cams import classifier_cam, normalize_maps

        clf = self._classifier(images.device)
        maps, classes = [], []
        for s in range(0, images.shape[0], self.batch_size):
            res = classifier_cam(clf, clf.from_mae(images[s : s + self.batch_size]))
            maps.append(normalize_maps(res.maps))
            classes.append(res.classes)
        m = torch.cat(maps).to(images.device)
        return patch_scores(m, grid, self.patch_mode), m, torch.cat(classes).to(images.device)

    def select(self, model: MAE, images: torch.Tensor, k: int, seed: int):
        scores, _, _ = self.attention(images, model.grid)
        patches = top_patches(scores, k, image_seeds(images, seed)).to(model.device)
        b = images.shape[0]
        return patches, torch.full((b, k), float("nan"), device=model.device), [0] * b
