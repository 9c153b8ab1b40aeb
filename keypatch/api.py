"""The public API: ``propose``, ``propose_batch``, ``reconstruction_loss``, ``reconstruct``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from keypatch.geometry import ImageLike, load_images
from keypatch.proposers import Proposal, Proposer, get_proposer
from keypatch.reconstructors import MAE, load_mae, resolve_device

ModelLike = MAE | str | None


def _model(model: ModelLike, device: str | torch.device) -> MAE:
    if isinstance(model, MAE):
        dev = resolve_device(device) if str(device) != "auto" else model.device
        return model.to(dev).eval()
    return load_mae(model or "default", device=device)


@torch.no_grad()
def prefix_losses(model: MAE, images: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """``L`` of every prefix of each image's ordered patches, ``(B, k)``: batched per prefix length."""
    b, k = patches.shape
    ii = torch.arange(b, device=model.device)
    return torch.stack([model.losses(images, patches[:, : j + 1], ii) for j in range(k)], dim=1)


def propose_batch(
    images: Sequence[ImageLike] | torch.Tensor,
    ratio: float,
    strategy: str | Proposer = "greedy",
    model: ModelLike = None,
    *,
    seed: int = 0,
    device: str = "auto",
    **options,
) -> list[Proposal]:
    """Key patches of many images at once (images x candidates share each MAE pass).

    Parameters
    ----------
    images : sequence of image-like, or a ``(B, 3, H, W)`` normalised tensor
        Paths, PIL images or arrays are loaded, resized to the model's size and normalised.
    ratio : float
        Fraction of patches to keep, in ``(0, 1]``; ``round(ratio * N)`` patches are chosen.
    strategy : str or Proposer
        A registered strategy name (see :func:`keypatch.proposers.available`) or an instance.
    model : MAE, str or None
        An MAE, or a spec for :func:`keypatch.load_mae` (default: the embedded model).
    seed : int
        Seed for randomised strategies (image ``i`` of the batch uses ``seed + i``).
    device : {"auto", "cpu", "cuda"}
        Where to compute.
    **options
        Strategy options, e.g. ``start="none"`` or ``precision="bfloat16"`` for ``greedy``.

    Returns
    -------
    list of Proposal
        One per image, in input order.
    """
    mae = _model(model, device)
    k = mae.grid.count(ratio)
    if isinstance(strategy, Proposer) and options:
        raise ValueError("pass options either to the Proposer instance or as keywords with a strategy name")
    proposer = get_proposer(strategy, **options)
    x = load_images(images, mae.config.image_size).to(mae.device)
    t0 = time.perf_counter()
    patches, losses, evals = proposer.select(mae, x, k, seed)
    if torch.isnan(losses).any():
        losses = prefix_losses(mae, x, patches)
    if mae.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / x.shape[0]
    pl, ll = patches.tolist(), losses.tolist()
    return [
        Proposal(pl[i], ll[i], float(ratio), mae.grid, proposer.name, evals[i], seconds)
        for i in range(x.shape[0])
    ]


def propose(
    image: ImageLike,
    ratio: float,
    strategy: str | Proposer = "greedy",
    model: ModelLike = None,
    start: str = "center",
    seed: int = 0,
    device: str = "auto",
    **options,
) -> Proposal:
    """Key patches of one image.

    Parameters
    ----------
    image : str, Path, PIL.Image, numpy array or tensor
        The image (resized to 224x224 bicubic for the default model, ImageNet-normalised).
    ratio : float
        Fraction of patches to keep, in ``(0, 1]``.
    strategy : str
        ``"greedy"`` (KPP, exact), ``"random"``, or any registered strategy.
    model : MAE, str or None
        The reconstructor or a :func:`keypatch.load_mae` spec; None = the embedded default.
    start : {"center", "none"}
        For greedy strategies: begin from the central patch (paper) or from nothing (ablation).
    seed : int
        Seed for randomised strategies.
    device : {"auto", "cpu", "cuda"}
        Where to compute.
    **options
        Further strategy options (e.g. ``precision="bfloat16"``, ``chunk_size=128``).

    Returns
    -------
    Proposal
        ``.patches`` (ordered), ``.losses`` (one per patch), ``.loss``, ``.ratio``, ``.grid``.

    Examples
    --------
    >>> import keypatch
    >>> r = keypatch.propose("photo.jpg", ratio=0.1)        # doctest: +SKIP
    >>> r.patches[:3], round(r.loss, 3)                      # doctest: +SKIP
    ([105, 92, 18], 0.412)
    """
    proposer = strategy if isinstance(strategy, Proposer) else get_proposer(
        strategy, **({"start": start} if _takes_start(strategy) else {}), **options)
    return propose_batch([image], ratio, proposer, model, seed=seed, device=device)[0]


def _takes_start(strategy: str) -> bool:
    import inspect

    from keypatch.proposers.base import _REGISTRY

    cls = _REGISTRY.get(strategy)
    return cls is not None and "start" in inspect.signature(cls.__init__).parameters


@torch.no_grad()
def reconstruction_loss(image: ImageLike, patches: Sequence[int], model: ModelLike = None,
                        device: str = "auto") -> float:
    """``L(S)``: masked-patch MSE of the MAE's reconstruction from the patches ``S`` alone.

    Independent of every proposer: one MAE pass with exactly ``patches`` visible.

    Parameters
    ----------
    image : image-like
        The image.
    patches : sequence of int
        The visible set ``S`` (distinct indices in ``[0, N)``).
    model : MAE, str or None
        The reconstructor (default: the embedded model).

    Returns
    -------
    float
        ``L(S)``; 0.0 when every patch is visible.
    """
    mae = _model(model, device)
    idx = list(patches)
    if len(set(idx)) != len(idx):
        raise ValueError("patches must be distinct")
    if not idx:
        raise ValueError("at least one patch must be visible")
    x = load_images([image], mae.config.image_size).to(mae.device)
    return float(mae.losses(x, torch.tensor([idx]))[0])


@torch.no_grad()
def reconstruct(image: ImageLike, patches: Sequence[int], model: ModelLike = None,
                device: str = "auto") -> torch.Tensor:
    """The MAE's reconstruction of ``image`` from ``patches``, a normalised ``(3, H, W)`` tensor
    (visible patches pasted back); see :func:`keypatch.geometry.to_pil` to view it."""
    mae = _model(model, device)
    x = load_images([image], mae.config.image_size)[0].to(mae.device)
    return mae.reconstruct(x, list(patches))
