"""The public API: ``propose``, ``propose_batch``, ``propose_pool``, ``reconstruction_loss``, ``reconstruct``."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from keypatch.geometry import ImageLike, load_images
from keypatch.objective import Objective, losses, prefix_losses
from keypatch.presets import RunSettings, run_settings
from keypatch.proposers import Proposal, Proposer
from keypatch.proposers.base import check_seed, make_proposer, takes_option
from keypatch.reconstructors import MAE, load_mae, resolve_device

ModelLike = MAE | str | None


def resolve_model(model: ModelLike, device: str | torch.device = "auto") -> MAE:
    """An MAE in eval mode on ``device``: ``model`` itself, or :func:`keypatch.load_mae` of its spec.

    ``None`` or ``"default"`` is the embedded default model, loaded once per process and device and
    shared by every later call (do not change its weights; load your own copy with ``load_mae``).
    """
    if isinstance(model, MAE):
        dev = resolve_device(device) if str(device) != "auto" else model.device
        return model.to(dev).eval()
    if model is None or model == "default":
        return _default_model(str(resolve_device(device)))
    return load_mae(model, device=device)


@functools.lru_cache(maxsize=4)
def _default_model(device: str) -> MAE:
    return load_mae("default", device=device)


def check_patches(patches: Sequence[int] | torch.Tensor, n: int) -> list[int]:
    """``patches`` as a list of distinct ints in ``[0, n)``.

    Raises
    ------
    TypeError
        If an entry is not an integer (a float such as 1.5, a bool, a string).
    ValueError
        If the set is empty, or has a repeated or out-of-range index (the message names it).
    """
    if isinstance(patches, torch.Tensor):
        if patches.is_floating_point() or patches.dtype == torch.bool:
            raise TypeError(f"patch indices must be integers, got a {patches.dtype} tensor")
        patches = patches.flatten().tolist()
    out = []
    for p in patches:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
            raise TypeError(f"patch indices must be integers, got {p!r}")
        out.append(int(p))
    if not out:
        raise ValueError("at least one patch must be visible")
    bad = [p for p in out if not 0 <= p < n]
    if bad:
        raise ValueError(f"patch index {bad[0]} is outside the grid's {n} patches [0, {n - 1}]")
    seen: set[int] = set()
    dup = next((p for p in out if p in seen or seen.add(p)), None)
    if dup is not None:
        raise ValueError(f"patch {dup} is given twice; patches must be distinct")
    return out


def propose_normalised(images: torch.Tensor, ratio: float, proposer: Proposer, model: MAE,
                       seed: int = 0, count: str = "round") -> list[Proposal]:
    """:func:`propose_batch` on images already loaded by :func:`keypatch.load_images` (on the model's
    device), with a constructed proposer: what the engines call. ``count`` is the rule that turns
    ``ratio`` into a number of patches (:meth:`~keypatch.geometry.PatchGrid.count`)."""
    k = model.grid.count(ratio, count)
    t0 = time.perf_counter()
    patches, losses, evals = proposer.select(model, images, k, check_seed(seed))
    if torch.isnan(losses).any():
        losses = prefix_losses(Objective(model, images), patches)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / images.shape[0]
    pl, ll = patches.tolist(), losses.tolist()
    return [
        Proposal(pl[i], ll[i], float(ratio), model.grid, proposer.name, evals[i], seconds)
        for i in range(images.shape[0])
    ]


def propose_batch(
    images: Sequence[ImageLike] | torch.Tensor,
    ratio: float,
    strategy: str | Proposer = "greedy",
    model: ModelLike = None,
    *,
    seed: int = 0,
    device: str = "auto",
    preset: str | None = None,
    count: str | None = None,
    resize: str | None = None,
    **options,
) -> list[Proposal]:
    """Key patches of many images at once (images x candidates share each MAE pass).

    Parameters
    ----------
    images : sequence of image-like, or a ``(B, 3, H, W)`` normalised tensor
        Paths, PIL images or arrays, read by the rules of :func:`keypatch.load_image` (resized to
        the model's size and normalised).
    ratio : float
        Fraction of patches to keep, in ``(0, 1]``; ``round(ratio * N)`` patches are chosen (see
        ``count``), and a ratio that keeps less than one patch is a ValueError.
    strategy : str or Proposer
        A registered strategy name (see :func:`keypatch.proposers.available`) or an instance.
    model : MAE, str or None
        An MAE, or a spec for :func:`keypatch.load_mae` (default: the embedded model).
    seed : int
        Seed for randomised strategies. Each image's randomness comes from the seed and its own
        pixels, so an image gets the same answer alone or in any batch.
    device : {"auto", "cpu", "cuda"}
        Where to compute.
    preset : {"paper", "reference"}, optional
        ``"reference"``: the KPP authors' released code (start at patch 98, ``int(ratio * N) + 1``
        patches, bilinear resize); default the paper's text (:mod:`keypatch.presets`).
    count : {"round", "reference"}, optional
        Overrides the preset's count rule (:meth:`~keypatch.geometry.PatchGrid.count`).
    resize : {"bicubic", "bilinear"}, optional
        Overrides the preset's resize filter (for images that are not normalised tensors yet).
    **options
        Strategy options, e.g. ``start="none"`` or ``precision="bfloat16"`` for ``greedy``.

    Returns
    -------
    list of Proposal
        One per image, in input order.

    Raises
    ------
    ValueError
        For no images, a bad ratio, an unknown strategy or option, or an image that breaks the
        loading rules. TypeError for a seed that is not an integer.
    """
    check_seed(seed)
    if isinstance(strategy, Proposer) and options:
        raise ValueError("pass options either to the Proposer instance or as keywords with a strategy name")
    start = options.pop("start", None)
    settings = run_settings(preset, start, count, resize)
    proposer = build_proposer(strategy, settings, options, start_given=start is not None)
    if not isinstance(images, torch.Tensor) and not isinstance(images, (str, Path)) and len(images) == 0:
        raise ValueError("no images given (an empty batch)")
    mae = resolve_model(model, device)
    mae.grid.count(ratio, settings.count)  # a bad ratio fails before any image is read
    x = load_images(images, mae.config.image_size, resize=settings.resize).to(mae.device)
    return propose_normalised(x, ratio, proposer, mae, seed, settings.count)


def build_proposer(strategy: str | Proposer, settings: RunSettings, options: dict | None = None, *,
                   start_given: bool = True) -> Proposer:
    """The proposer of a run with ``settings``: their ``start`` goes to strategies that take one.

    A start that came from a preset (``start_given=False``) is left out for strategies without a
    start (``random``, ``attention``); one given explicitly to them is a ValueError. A ``start`` in
    ``options`` is a start given explicitly (a ValueError when ``start_given`` too).
    """
    options = dict(options or {})
    start = settings.start
    if "start" in options:  # e.g. keypatch serve -o start=none: a start given as an option is given
        if start_given:
            raise ValueError("start is given twice: as an argument and as an option")
        start, start_given = options.pop("start"), True
    if not start_given and not (isinstance(strategy, Proposer) or takes_option(strategy, "start")):
        start = "center"
    return make_proposer(strategy, start, options)


def propose(
    image: ImageLike,
    ratio: float,
    strategy: str | Proposer = "greedy",
    model: ModelLike = None,
    start: str | int | tuple[int, int] | None = None,
    seed: int = 0,
    device: str = "auto",
    preset: str | None = None,
    count: str | None = None,
    resize: str | None = None,
    **options,
) -> Proposal:
    """Key patches of one image.

    Parameters
    ----------
    image : str, Path, PIL.Image, numpy array or tensor
        The image (resized to the model's side, 224x224 bicubic by default, ImageNet-normalised).
    ratio : float
        Fraction of patches to keep, in ``(0, 1]``.
    strategy : str
        ``"greedy"`` (KPP, exact), ``"random"``, or any registered strategy.
    model : MAE, str or None
        The reconstructor or a :func:`keypatch.load_mae` spec; None = the embedded default.
    start : {"center", "none"}, int or (row, col), optional
        For greedy strategies: begin from the central patch (paper, the default), from nothing
        (ablation) or from a given patch (98 in the authors' code).
    seed : int
        Seed for randomised strategies.
    device : {"auto", "cpu", "cuda"}
        Where to compute.
    preset, count, resize
        ``preset="reference"`` reproduces the KPP authors' released code; see :func:`propose_batch`.
    **options
        Further strategy options (e.g. ``precision="float32"``, ``chunk_size=128``).

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
    settings = run_settings(preset, start, count, resize)
    proposer = build_proposer(strategy, settings, options, start_given=start is not None)
    return propose_batch([image], ratio, proposer, model, seed=seed, device=device, count=settings.count,
                         resize=settings.resize)[0]


@torch.no_grad()
def propose_pool(
    images: Sequence[ImageLike] | torch.Tensor,
    budget: int | None = None,
    strategy: str | Proposer = "greedy",
    model: ModelLike = None,
    *,
    ratio: float | None = None,
    after: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    device: str = "auto",
    preset: str | None = None,
    count: str | None = None,
    resize: str | None = None,
    progress: Callable[[int], None] | None = None,
    **options,
) -> list[Proposal]:
    """Key patches of a pool of images: ``budget`` patches in all, each next one given to the image
    where it lowers the pool's mean ``L`` most; or ``ratio`` each, continuing from ``after``.

    Parameters
    ----------
    images, strategy, model, seed, device, preset, count, resize, **options
        As for :func:`propose_batch`. The strategy must grow its answer a patch at a time
        (``greedy``, ``ranked``, ... :meth:`~keypatch.proposers.base.Proposer.stepwise`); another
        is a ValueError before any image is read.
    budget : int, optional
        Patches to add over the pool, start patches included (each image without earlier patches
        begins with the strategy's start patch; ``start="none"``: with nothing). The pool's greedy
        (:mod:`keypatch.rounds.budget`).
    ratio : float, optional
        Instead of a budget: ``round(ratio * N)`` patches per image in all (earlier ones included).
    after : sequence of sequences of int, optional
        Per image, the patches it already has (an earlier round, :mod:`keypatch.rounds.after`
        reads them from files); they stay, first, and are not counted in ``budget``.
    progress : callable, optional
        Called with the number of patches given out so far (budgets only).

    Returns
    -------
    list of Proposal
        One per image, in input order; each its own ``k`` and ratio (``k / N``) and the losses of
        every prefix of its patches.
    """
    from keypatch.rounds import check_budget, pool_proposals

    check_seed(seed)
    if (budget is None) == (ratio is None):
        raise ValueError("give a budget (patches over the pool) or a ratio (per image), not both")
    if isinstance(strategy, Proposer) and options:
        raise ValueError("pass options either to the Proposer instance or as keywords with a strategy name")
    start = options.pop("start", None)
    settings = run_settings(preset, start, count, resize)
    proposer = build_proposer(strategy, settings, options, start_given=start is not None)
    check_budget(proposer, budget)
    if not isinstance(images, torch.Tensor) and not isinstance(images, (str, Path)) and len(images) == 0:
        raise ValueError("no images given (an empty pool)")
    mae = resolve_model(model, device)
    k = None if ratio is None else mae.grid.count(ratio, settings.count)
    x = load_images(images, mae.config.image_size, resize=settings.resize).to(mae.device)
    return pool_proposals(mae, x, proposer, budget=budget, k=k, after=after, seed=check_seed(seed), progress=progress)


def reconstruction_loss(image: ImageLike, patches: Sequence[int], model: ModelLike = None,
                        device: str = "auto", resize: str = "bicubic") -> float:
    """``L(S)``: masked-patch MSE of the MAE's reconstruction from the patches ``S`` alone.

    Independent of every proposer: one MAE pass with exactly ``patches`` visible.

    Parameters
    ----------
    image : image-like
        The image.
    patches : sequence of int
        The visible set ``S``: distinct integer indices in ``[0, N)`` (anything else is a
        TypeError or ValueError naming the offending index).
    model : MAE, str or None
        The reconstructor (default: the embedded model).
    resize : {"bicubic", "bilinear"}
        The filter that brings the image to the model's side (bilinear: the KPP authors' code).

    Returns
    -------
    float
        ``L(S)``; 0.0 when every patch is visible.
    """
    mae = resolve_model(model, device)
    idx = check_patches(patches, mae.grid.n)
    x = load_images([image], mae.config.image_size, resize=resize).to(mae.device)
    return float(losses(mae, x, torch.tensor([idx]))[0])


@torch.no_grad()
def reconstruct(image: ImageLike, patches: Sequence[int], model: ModelLike = None,
                device: str = "auto", resize: str = "bicubic") -> torch.Tensor:
    """The MAE's reconstruction of ``image`` from ``patches``, a normalised ``(3, H, W)`` tensor
    (visible patches pasted back); see :func:`keypatch.geometry.to_pil` to view it. ``resize`` as
    in :func:`reconstruction_loss`."""
    mae = resolve_model(model, device)
    idx = check_patches(patches, mae.grid.n)
    x = load_images([image], mae.config.image_size, resize=resize)[0].to(mae.device)
    return mae.reconstruct(x, idx)
