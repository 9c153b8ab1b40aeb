"""The :class:`Classifier` wrapper: one pretrained CNN with its own input convention."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from keypatch.geometry.image import denormalize


class Classifier:
    """A pretrained image classifier, split where keypatch needs it.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"efficientnet-lite0"``.
    model : nn.Module
        The whole network (kept in eval mode, parameters frozen).
    target_layer : nn.Module
        The layer whose output is the last convolutional feature map (GradCAM++ hooks it).
    features : callable
        ``features(x) -> (B, C, h, w)``: the network up to its last feature map (after
        ``target_layer`` and whatever follows it before pooling).
    head : callable
        ``head(pooled) -> logits``: the classifier on the pooled ``(B, C)`` features.
    mean, std : tuple of float
        Per-channel normalisation the network expects on ``[0, 1]`` RGB.
    input_size : int
        Square side the network is fed.

    Notes
    -----
    Every method takes ``[0, 1]`` RGB (``(B, 3, H, W)``, any size) unless it says otherwise;
    :meth:`from_mae` converts the MAE's ImageNet-normalised input first.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        target_layer: nn.Module,
        features: Callable[[torch.Tensor], torch.Tensor],
        head: Callable[[torch.Tensor], torch.Tensor],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        input_size: int = 224,
    ) -> None:
        self.name = name
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.target_layer = target_layer
        self._features = features
        self._head = head
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.input_size = int(input_size)

    def __repr__(self) -> str:
        return f"Classifier({self.name!r}, input_size={self.input_size}, device={self.device})"

    # ------------------------------------------------------------------ placement
    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Classifier:
        """Move the network to ``device`` (in place); returns ``self``."""
        self.model.to(device)
        return self

    # ------------------------------------------------------------------ input
    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` RGB ``(B, 3, H, W)`` -> the network's input: resized to ``input_size``
        (bilinear, antialiased; nothing is cropped) and normalised with its own mean and std."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got {tuple(rgb.shape)}")
        x = rgb.float().to(self.device)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def from_mae(self, images: torch.Tensor) -> torch.Tensor:
        """The MAE's ImageNet-normalised ``(B, 3, H, W)`` batch -> this network's input."""
        return self.preprocess(denormalize(images))

    # ------------------------------------------------------------------ outputs
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map ``(B, C, h, w)`` of a preprocessed batch."""
        return self._features(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, classes), pooled features (B, C))`` of a preprocessed batch, one pass."""
        pooled = self._features(x).mean(dim=(2, 3))
        return self._head(pooled), pooled

    @torch.no_grad()
    def logits(self, rgb: torch.Tensor) -> torch.Tensor:
        """Class scores before softmax of ``[0, 1]`` RGB images."""
        return self.forward(self.preprocess(rgb))[0]

    @torch.no_grad()
    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled last feature map of ``[0, 1]`` RGB images, ``(B, C)``."""
        return self.forward(self.preprocess(rgb))[1]

    @torch.no_grad()
    def predict(self, rgb: torch.Tensor) -> torch.Tensor:
        """Top class of each ``[0, 1]`` RGB image, ``(B,)`` long."""
        return self.logits(rgb).argmax(dim=1)
