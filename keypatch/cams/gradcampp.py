"""GradCAM++ (Chattopadhyay et al., 2018), batched, for any CNN with a hookable feature layer.

For class ``c`` with score ``Y^c`` (before softmax), feature map ``A^k`` of the target layer and its
gradient ``g^k_ij = dY^c / dA^k_ij``, GradCAM++ weighs channel ``k`` by

    w^c_k = sum_ij alpha^kc_ij * relu(g^k_ij),
    alpha^kc_ij = g^2 / (2 g^2 + sum_ab A^k_ab * g^3)     (evaluated at ij; 0 where that is undefined),

the closed form of the higher-order derivatives for an exponential of the score, and the map is
``L^c_ij = relu(sum_k w^c_k A^k_ij)`` (the DQ supplement's eq. 23).

Why not a library (measured here, torch 2.13 CPU): ``grad-cam`` (jacobgil/pytorch-grad-cam 1.5.7)
cannot be installed beside the pinned torch: pip resolves it to torch 2.14.1 + torchvision 0.29.1 +
the CUDA wheels + opencv. ``torchcam`` 0.5.0 installs cleanly, but its ``GradCAMpp`` divides
``alpha[mask]`` in place, which with a boolean mask divides a copy: its maps are exactly those of the
weights ``sum g^2 relu(g)`` (max abs difference 0.0 on a toy CNN), not GradCAM++; after min-max
normalisation they differ from the formula above by up to 0.20. So this module implements the
formula itself (about forty lines), with tests against a hand-computed case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def gradcampp_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Channel weights ``w^c_k``, ``(B, C)``, from ``(B, C, h, w)`` activations and gradients."""
    a, g = activations.double(), grads.double()
    g2 = g * g
    denom = 2.0 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g
    ok = (g != 0) & (denom != 0)
    alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(g))
    return (alpha * torch.relu(g)).sum(dim=(2, 3)).to(activations.dtype)


def gradcampp_map(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """GradCAM++ map ``relu(sum_k w_k A_k)``, ``(B, h, w)``, not normalised."""
    w = gradcampp_weights(activations, grads)
    return torch.relu((w[:, :, None, None] * activations).sum(dim=1))


def normalize_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise each ``(h, w)`` map of a ``(B, h, w)`` batch to ``[0, 1]`` (flat maps -> 0)."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(maps)


@dataclass
class CAMResult:
    """GradCAM++ of a batch.

    Attributes
    ----------
    maps : torch.Tensor
        ``(B, h, w)`` maps at the target layer's resolution, >= 0, not normalised.
    classes : torch.Tensor
        ``(B,)`` the class each map explains (the top prediction unless one was given).
    logits : torch.Tensor
        ``(B, classes)`` scores before softmax.
    """

    maps: torch.Tensor
    classes: torch.Tensor
    logits: torch.Tensor


class GradCAMPlusPlus:
    """GradCAM++ extractor for ``forward`` with a hook on ``target_layer``.

    Parameters
    ----------
    forward : callable
        ``forward(x) -> logits (B, classes)``, e.g. the model itself.
    target_layer : nn.Module
        Its output is the feature map ``A`` (must run exactly once per forward).

    Notes
    -----
    The hook lives only for the duration of a call. Parameters need not require gradients: the
    input is made to require them, and only ``dY/dA`` is computed (no backward into the input or
    the weights). Each image's map depends on its own score only (the model must be in eval mode,
    so that batch norm does not mix images).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], target_layer: nn.Module) -> None:
        self.forward = forward
        self.target_layer = target_layer

    def __call__(self, x: torch.Tensor, class_idx: torch.Tensor | list[int] | int | None = None) -> CAMResult:
        """GradCAM++ maps of the preprocessed batch ``x`` for ``class_idx`` (default: top class)."""
        store: list[torch.Tensor] = []

        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            store.append(output)

        handle = self.target_layer.register_forward_hook(hook)
        try:
            # works inside no_grad and inference_mode too (an inference tensor is cloned into a normal one)
            with torch.inference_mode(False), torch.enable_grad():
                logits = self.forward(x.detach().clone().requires_grad_(True))
                if len(store) != 1:
                    raise RuntimeError(f"the target layer ran {len(store)} times in one forward; expected once")
                if class_idx is None:
                    classes = logits.detach().argmax(dim=1)
                else:
                    classes = torch.as_tensor(class_idx, dtype=torch.long, device=logits.device)
                    classes = classes.expand(logits.shape[0]).clone() if classes.dim() == 0 else classes
                scores = logits.gather(1, classes[:, None]).sum()
                (grads,) = torch.autograd.grad(scores, store[0])
        finally:
            handle.remove()
        acts = store[0].detach()
        return CAMResult(gradcampp_map(acts, grads.detach()), classes, logits.detach())
