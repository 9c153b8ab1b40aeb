"""The KPP objective: ``L(S)``, the MAE's masked-patch loss of a visible set ``S``.

``L(S)`` is the mean over the patches not in ``S`` (and over each patch's values) of the squared
error between the MAE's prediction from ``S`` alone and the true normalised pixels: the official
MAE loss with ``norm_pix_loss=False``; 0 when every patch is visible. Every strategy
(:mod:`keypatch.proposers`), the public loss functions and the experiments evaluate visible sets
through an :class:`Objective`; strategies are optimisers over it.

An objective has two scoring methods: :meth:`Objective.score` (``L`` of a batch of sets, their
error maps when asked, the precision policy inside) and :meth:`Objective.step` (one greedy step:
``L`` of the chosen set plus each candidate, and the best). Every strategy, the ranker's fitting
(:mod:`keypatch.ranker`) and the benchmarks score through them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from keypatch.geometry import PatchGrid
from keypatch.reconstructors.mae import MAE
from keypatch.reconstructors.precision import DEFAULT_PRECISION, reduced_copy, resolve_precision
from keypatch.reconstructors.scoring import (
    LossContext,
    context_losses,
    context_patch_errors,
    loss_context,
    reduced_context,
)
from keypatch.threads import TUNER

DEFAULT_CHUNK = 0
"""``chunk_size=0``: visible sets per MAE pass sized for the device (:func:`auto_chunk`)."""
CPU_CHUNK = 64
"""Visible sets per MAE pass on CPUs (about ``64 x 196`` decoder rows). On a 2-core AVX2 CPU the
speed is flat from 32 to 256 (``benchmarks/bench_chunk.py``); 64 keeps memory small."""
GPU_MEMORY_SHARE = 0.5
"""Share of a GPU's free memory the activations of one pass may take."""

MIXED_REFINE = 8
"""``precision="mixed"``: candidates per image re-scored in float32 at a step (the lowest in bfloat16)
until the image's bfloat16 error has been measured on this many sets."""
MIXED_FLOOR = 2
"""``precision="mixed"``: candidates per image always re-scored in float32 at a step once its
bfloat16 error has been measured on :data:`MIXED_REFINE` sets (the lowest in bfloat16, besides every
candidate within the margin)."""
MIXED_SAFETY = 2.0
"""``precision="mixed"``: the margin is this many times the largest relative bfloat16 error seen."""


def auto_chunk(model: MAE) -> int:
    """Visible sets per MAE pass for ``model``'s device: :data:`CPU_CHUNK` on CPUs; on GPUs as many
    as :data:`GPU_MEMORY_SHARE` of the free memory holds (float32 activations of a decoder block
    over all ``N + 1`` positions, the MLP's wide layer included), 64 to 16384."""
    if model.device.type != "cuda":
        return CPU_CHUNK
    c = model.config
    free, _ = torch.cuda.mem_get_info(model.device)
    per_set = 4 * (c.grid.n + 1) * c.decoder_embed_dim * (2 * c.mlp_ratio + 8)
    return int(min(16384, max(CPU_CHUNK, GPU_MEMORY_SHARE * free // per_set)))


def auto_batch(model: MAE) -> int:
    """Images per batch for ``model``'s device (``--batch-size auto``): 1 on CPUs (a step of one
    image's candidates fills the cores, and a busy core hurts less); on GPUs as many images as a
    step's candidates fill one pass of :func:`auto_chunk` sets, 1 to 256."""
    if model.device.type != "cuda":
        return 1
    return int(min(256, max(1, auto_chunk(model) // model.grid.n)))


class Step(NamedTuple):
    """One greedy step (:meth:`Objective.step`)."""

    pick: torch.Tensor
    """``(B,)`` the added patch."""
    loss: torch.Tensor
    """``(B,)`` ``L`` of the set with it."""
    cand: torch.Tensor
    """``(B, C)`` the scored candidates."""
    scores: torch.Tensor
    """``(B, C)`` their ``L``."""
    errors: torch.Tensor | None
    """``(B, N)`` the error map of the set with the pick, when asked for and free; else None."""


class Objective:
    """``L`` of visible sets of a batch of images, in memory-bounded batched MAE passes.

    The per-image constants (patch tokens, the loss's per-patch terms, ...) are computed once, when
    the objective is made; every :meth:`score` and :meth:`step` call reuses them.

    Parameters
    ----------
    model : MAE
        The reconstructor, in eval mode.
    images : torch.Tensor
        ``(B, 3, H, W)`` normalised images (see :func:`keypatch.load_images`), on the model's device.
    chunk_size : int
        Visible sets per MAE pass (bounds memory); 0 sizes it for the device (:func:`auto_chunk`).
    precision : {"auto", "float32", "bfloat16", "mixed"}
        Compute precision of the passes (:mod:`keypatch.reconstructors.precision`); ``"auto"``
        is resolved for the model and its device. The loss is accumulated in float32. With ``"mixed"``,
        sets are scored in float32 and alternatives (a greedy step's candidates) screened in
        bfloat16 (:meth:`score`'s notes).

    Attributes
    ----------
    evaluations : torch.Tensor
        ``(B,)`` long, on the model's device: visible sets scored so far per image (a set screened
        in bfloat16 and re-scored in float32 counts once).
    refined : int
        ``"mixed"``: alternatives re-scored in float32 (:meth:`score`, :meth:`step`), over all images.
    relative_error : torch.Tensor
        ``(B,)``, ``"mixed"``: per image, the largest ``|L_bf16 - L_fp32| / L_fp32`` seen so far.
    begin : torch.Tensor or None
        ``(B, j0)`` long: patches each image already has (a round that continues an earlier one),
        from which a search begins instead of its start rule; they stay in its answer, first.
        Set by :meth:`~keypatch.proposers.search.SearchProposer.select`; None: the start rule.
    """

    def __init__(self, model: MAE, images: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK,
                 precision: str = DEFAULT_PRECISION) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ValueError(f"chunk_size must be a positive integer (or 0: sized for the device), got {chunk_size!r}")
        self.model = model
        self.grid: PatchGrid = model.grid
        """The model's patch grid."""
        self.device: torch.device = model.device
        """Where the model and every returned tensor live."""
        self.images = images
        self.chunk_size = chunk_size or auto_chunk(model)
        self.precision = resolve_precision(precision, model.device, model.config.embed_dim)
        with torch.no_grad():
            self.context = loss_context(model, images)
        if self.precision == "float32":
            self.screen_model, self.screen_context = model, self.context
        else:
            self.screen_model = reduced_copy(model, torch.bfloat16)
            self.screen_context = reduced_context(self.context, torch.bfloat16)
        self.evaluations = torch.zeros(images.shape[0], dtype=torch.long, device=model.device)
        self.refined = 0
        self._widened = torch.zeros((), dtype=torch.long, device=model.device)  # read only on request: no sync
        self.relative_error = torch.zeros(images.shape[0], device=model.device)
        self.spread = torch.zeros(images.shape[0], device=model.device)
        """``(B,)``, ``"mixed"``: per image, the largest deviation of a re-scored candidate's relative
        bfloat16 error from the mean of its step's re-scored candidates (the part of the error that
        can reorder a step's candidates; the mean shifts them all alike)."""
        self.compared = torch.zeros(images.shape[0], dtype=torch.long, device=model.device)
        """``(B,)``: sets whose bfloat16 and float32 ``L`` were both computed, per image."""
        self.begin: torch.Tensor | None = None

    @property
    def widened(self) -> int:
        """``"mixed"``: steps at which the float32 re-scores showed a larger bfloat16 error than the
        margin had assumed, so that more candidates had to be re-scored (reading it synchronises)."""
        return int(self._widened)

    @property
    def batch(self) -> int:
        """Number of images ``B``."""
        return self.images.shape[0]

    @torch.no_grad()
    def score(self, sets: torch.Tensor, image_index: torch.Tensor | None = None, *, maps: bool = False,
              screen: bool = False,
              below: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``L`` of a batch of visible sets: the one way to score sets.

        Parameters
        ----------
        sets : torch.Tensor
            ``(M, k)`` long visible patch indices, distinct within a row (``k`` may be 0), the image
            of each row given by ``image_index``; or ``(B, C, k)``: ``C`` alternative sets of each
            image, of which the caller keeps the best (the precision policy below).
        image_index : torch.Tensor, optional
            ``(M,)`` long, the image of each row of a ``(M, k)`` batch; default: one set per image
            (``M = B``). Not given with ``(B, C, k)`` sets.
        maps : bool
            Also return each set's error map: every patch's squared error when the image is rebuilt
            from the set, the mean over its values of ``(prediction - normalised pixels)^2``, 0 at
            the visible patches (``L`` is the mean of the others). Always float32, one pass per
            set; ``L`` is then that mean (:meth:`score`'s without maps up to rounding).
        screen : bool
            Sets to be ranked, the best of them confirmed by a later call without ``screen``:
            scored in the screening precision (bfloat16 with ``"mixed"``; float32 with ``"float32"``).
        below : torch.Tensor, optional
            ``(M,)`` a bound per set of a ``(M, k)`` batch: the caller keeps a set only if its ``L``
            lies below its bound (a move that must lower ``L``). With ``"mixed"``, the sets are
            screened in bfloat16 and those that could lie below their bound re-scored in float32
            (the notes); every ``L`` below its bound is then float32's, and the others may be
            bfloat16's, all above their bounds.

        Returns
        -------
        torch.Tensor or tuple
            ``L`` ``(M,)`` (``(B, C)`` for alternatives), float32 on the model's device; with
            ``maps``, ``(L, errors)``, errors ``(M, N)`` (``(B, C, N)``). No host synchronisation
            but in the ``"mixed"`` policy for alternatives.

        Notes
        -----
        The precision policy. ``"float32"``: every set exactly. ``"bfloat16"``: every set in
        bfloat16. ``"mixed"``: a ``(M, k)`` batch in float32 (bfloat16 with ``screen``); ``C``
        alternatives per image in bfloat16 first, then the lowest few (:data:`MIXED_REFINE` until
        the image's bfloat16 error has been measured on that many sets, :data:`MIXED_FLOOR` after)
        and every alternative whose float32 loss could lie below the float32 minimum re-scored in
        float32 (all of them at once where ``C`` is at most :data:`MIXED_FLOOR`), so that the
        argmin, its ties and its loss are float32's (the others get their bfloat16 loss less the
        step's offset, all above that minimum). The bfloat16 error of a step's sets is mostly an
        offset they share: the rule reads the offset off the step's re-scores and allows
        :data:`MIXED_SAFETY` times the largest deviation from it seen on the image
        (:attr:`spread`; :meth:`_refine`); if the re-scores show that an alternative outside them
        could still be the float32 minimum, more are re-scored (:attr:`widened` counts those
        calls). This costs two host synchronisations per call or more. With ``below``: a set is
        re-scored in float32 when its bfloat16 ``L`` lies within :data:`MIXED_SAFETY` times the
        image's largest relative bfloat16 error above its bound, and every set
        of an image whose bfloat16 error has been measured on fewer than :data:`MIXED_REFINE`
        sets (the float32 re-scores measure it); one host synchronisation.
        """
        if sets.dim() == 3:
            if image_index is not None:
                raise ValueError("alternatives (B, C, k) name their images by their first axis: no image_index")
            b, c, _ = sets.shape
            flat = sets.reshape(b * c, -1)
            ii = torch.arange(b, device=sets.device).repeat_interleave(c)
            if maps:
                loss, err = self._maps(flat, ii)
                return loss.view(b, c), err.view(b, c, -1)
            if screen:
                return self._screen(flat, ii).view(b, c)
            if self.precision != "mixed" or c <= MIXED_FLOOR:  # mixed would re-score them all
                return self._exact(flat, ii).view(b, c)
            return self._refine(self._screen(flat, ii).view(b, c), sets)[0]
        ii = torch.arange(self.batch, device=sets.device) if image_index is None else image_index
        if maps:
            return self._maps(sets, ii)
        if screen:
            return self._screen(sets, ii)
        if below is not None and self.precision == "mixed":
            return self._below(sets, ii, below)
        return self._exact(sets, ii)

    @torch.no_grad()
    def step(self, chosen: torch.Tensor, candidates: torch.Tensor, *, maps: bool = False) -> Step:
        """One greedy step: ``L(chosen + c)`` for every candidate ``c`` of every image, and the best.

        Every greedy-like strategy, the ranker's fitting and the benchmarks take their steps here.

        Parameters
        ----------
        chosen : torch.Tensor
            ``(B, j)`` patches chosen so far (``j`` may be 0).
        candidates : torch.Tensor
            ``(B, C)`` candidate patches per image (the same count for every image), in ascending
            index order so that ties go to the lowest patch index.
        maps : bool
            Also give the error map of each image's new set (:attr:`Step.errors`, float32) where
            that costs no further passes: with ``"float32"``, at most :data:`MIXED_REFINE`
            candidates per image; with ``"mixed"``, any number (the candidates re-scored in
            float32 are scored with their maps, the pick among them); the ``L`` of a set scored
            with its map is the mean of its masked patches' errors. Otherwise ``errors`` is None.

        Returns
        -------
        Step
            ``pick (B,)`` the candidate with the lowest ``L`` (the first on ties), ``loss (B,)`` its
            ``L``, ``cand`` the candidates, ``scores (B, C)`` every candidate's ``L`` (as
            :meth:`score` gives alternatives: with ``"mixed"`` float32 near each image's minimum),
            ``errors``. No host synchronisation in float32.
        """
        b, c = candidates.shape
        sets = with_each(chosen, candidates)
        ar = torch.arange(b, device=candidates.device)
        if maps and self.precision == "mixed" and c > MIXED_FLOOR:
            scores, errors = self._refine(self.score(sets, screen=True), sets, maps=True)
            best = scores.argmin(dim=1)  # a float32 score: every other lies above the float32 minimum
            return Step(candidates[ar, best], scores[ar, best], candidates, scores, errors)
        errors = None
        if maps and self.precision != "bfloat16" and c <= MIXED_REFINE:
            scores, errors = self.score(sets, maps=True)
        else:
            scores = self.score(sets)
        best = scores.argmin(dim=1)  # first minimum: lowest index on ties
        return Step(candidates[ar, best], scores[ar, best], candidates, scores,
                    None if errors is None else errors[ar, best])

    def _floor(self) -> torch.Tensor:
        """``(B,)``: candidates per image ``"mixed"`` re-scores at a step whatever the margin
        (:data:`MIXED_REFINE` until the image's bfloat16 error is measured on that many sets, then
        :data:`MIXED_FLOOR`)."""
        return torch.where(self.compared < MIXED_REFINE, MIXED_REFINE, MIXED_FLOOR)

    def _exact(self, sets: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """``L`` of ``(M, k)`` sets in the scoring precision (float32 but with ``"bfloat16"``)."""
        if self.precision == "bfloat16":
            return self._screen(sets, image_index)
        self.evaluations.index_add_(0, image_index, torch.ones_like(image_index))  # no host sync (bincount has one)
        return self._passes(self.model, self.context, sets, image_index)

    def _screen(self, sets: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """``L`` of ``(M, k)`` sets in the screening precision."""
        self.evaluations.index_add_(0, image_index, torch.ones_like(image_index))
        return self._passes(self.screen_model, self.screen_context, sets, image_index)

    def _passes(self, model: MAE, ctx: LossContext, sets: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """``L`` of ``sets`` with ``model`` on ``ctx``, ``chunk_size`` sets per pass (on a CPU, each pass
        on the thread count :data:`keypatch.threads.TUNER` chooses when it is on)."""
        m = sets.shape[0]
        cpu = sets.device.type == "cpu"

        def one(s: slice) -> torch.Tensor:
            if not cpu:
                return context_losses(model, ctx, sets[s], image_index[s])
            return TUNER.run(lambda: context_losses(model, ctx, sets[s], image_index[s]), len(range(m)[s]))

        if m <= self.chunk_size:
            return one(slice(0, m))
        out = torch.empty(m, device=sets.device)
        size = -(-m // -(-m // self.chunk_size))  # passes of equal size, at most chunk_size sets each
        for s in range(0, m, size):
            out[s : s + size] = one(slice(s, s + size))
        return out

    def _maps(self, sets: torch.Tensor, ii: torch.Tensor, count: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L (M,), errors (M, N))`` of ``(M, k)`` sets, in float32, one pass per set, on the scoring
        fast path (:func:`~keypatch.reconstructors.scoring.context_patch_errors`); counted in
        :attr:`evaluations` unless ``count`` is false (sets already counted when screened)."""
        if count:
            self.evaluations.index_add_(0, ii, torch.ones_like(ii))
        cpu = sets.device.type == "cpu"

        def one(s: slice) -> torch.Tensor:
            def run() -> torch.Tensor:
                return context_patch_errors(self.model, self.context, sets[s], ii[s])

            return TUNER.run(run, len(range(sets.shape[0])[s]), "errors") if cpu else run()

        err = torch.cat([one(slice(s, s + self.chunk_size)) for s in range(0, max(sets.shape[0], 1), self.chunk_size)])
        return err.sum(-1) / (self.grid.n - sets.shape[-1]), err

    def _compare(self, screened: torch.Tensor, exact: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """Record sets re-scored in float32: ``refined``, ``compared`` and each image's largest
        relative bfloat16 error (``screened`` against ``exact``, the sets' images ``img``); returns
        the sets' signed relative errors."""
        self.refined += img.numel()
        rel = (screened - exact) / exact.abs().clamp_min(1e-12)
        self.relative_error = self.relative_error.scatter_reduce(0, img, rel.abs(), "amax")
        self.compared.index_add_(0, img, torch.ones_like(img))
        return rel

    def _below(self, sets: torch.Tensor, ii: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """``"mixed"``: ``L`` of ``(M, k)`` sets, float32's wherever it may lie below ``bound (M,)``."""
        out = self._screen(sets, ii)
        margin = 1.0 + MIXED_SAFETY * self.relative_error[ii]
        # a set with bound -inf is kept by no caller (a padded slot): not re-scored to measure the error either
        unsure = (out <= bound * margin) | ((self.compared[ii] < MIXED_REFINE) & bound.isfinite())
        rows = unsure.nonzero(as_tuple=True)[0]  # host sync
        if rows.numel():
            exact = self._passes(self.model, self.context, sets[rows], ii[rows])
            self._compare(out[rows], exact, ii[rows])
            out[rows] = exact
        return out

    def _refine(self, screened: torch.Tensor, sets: torch.Tensor,
                maps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``screened (B, C)`` bfloat16 scores with those near each minimum re-scored in float32;
        with ``maps`` re-scored with their error maps, and the map of each image's lowest
        ``(B, N)`` returned beside the scores (else None).

        A candidate ``c`` whose float32 ``L`` could lie below the best float32 ``L`` so far, ``b``,
        is re-scored: ``bf16_c <= b (1 + e + MIXED_SAFETY * spread)``, where ``e`` is the mean
        relative bfloat16 error of this step's re-scored candidates (an offset shared by the
        step's sets) and :attr:`spread` the largest deviation from it seen on the image. The
        others' scores are their bfloat16 ``L`` divided by ``1 + e``, all above that minimum."""
        b, c = screened.shape
        dev = sets.device
        order = screened.argsort(dim=1, stable=True)  # candidates of each image, lowest bf16 loss first
        rank = torch.arange(c, device=dev)
        out, done = screened.clone(), torch.zeros(b, dtype=torch.long, device=dev)
        floor = self._floor()  # fixed for the call: the re-scores below measure the error
        errors = torch.zeros(b, c, self.grid.n, device=dev) if maps else None
        rel = torch.zeros(b, c, device=dev)  # this step's relative bfloat16 errors, where re-scored
        scored = torch.zeros(b, c, dtype=torch.bool, device=dev)

        def within(bound: torch.Tensor) -> torch.Tensor:  # per image: candidates re-scored, lowest bf16 first
            return torch.maximum((screened <= bound[:, None]).sum(1), floor).clamp(max=c)

        # before any re-score: the offset unknown, the float32 minimum about the bfloat16 one
        need = within(screened.amin(1) * (1.0 + MIXED_SAFETY * self.spread))
        while True:
            new = (rank >= done[:, None]) & (rank < need[:, None])  # (B, C) in rank order
            img, pos = new.nonzero(as_tuple=True)  # host sync
            if img.numel() == 0:
                break
            self._widened += done.any()
            cand = order[img, pos]
            if maps:
                exact, err = self._maps(sets[img, cand], img, count=False)
                errors[img, cand] = err
            else:
                exact = self._passes(self.model, self.context, sets[img, cand], img)
            out[img, cand] = exact
            rel[img, cand] = self._compare(screened[img, cand], exact, img)
            scored[img, cand] = True
            offset = torch.where(scored, rel, 0.0).sum(1) / scored.sum(1).clamp_min(1)
            deviation = torch.where(scored, (rel - offset[:, None]).abs(), 0.0).amax(1)
            self.spread = torch.maximum(self.spread, deviation)
            done = torch.maximum(done, need)
            best = torch.where(scored, out, torch.inf).amin(1)
            need = torch.maximum(done, within(best * (1.0 + offset + MIXED_SAFETY * self.spread)))
        # the others: their bfloat16 L less the step's offset, each above the float32 minimum
        out = torch.where(scored, out, screened / (1.0 + offset[:, None]))
        if errors is None:
            return out, None
        return out, errors[torch.arange(b, device=dev), out.argmin(dim=1)]


def prefix_losses(objective: Objective, patches: torch.Tensor) -> torch.Tensor:
    """``L`` of every prefix of each image's ordered patches ``(B, k)`` -> ``(B, k)``."""
    return torch.stack([objective.score(patches[:, : j + 1]) for j in range(patches.shape[1])], dim=1)


def remaining_count(remaining: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, N)`` bool with ``count`` True entries per row -> ``(B, count)`` their indices, ascending.

    A sort instead of boolean indexing, so that it needs no host synchronisation on a GPU. A row
    with fewer True entries is filled up with values ``>= N`` (``N`` plus the index of a False
    entry), so that ``out < N`` marks its True ones.
    """
    n = remaining.shape[1]
    key = (~remaining).long() * n + torch.arange(n, device=remaining.device)
    return key.sort(dim=1).values[:, :count]


def ranks(signal: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Each patch's rank by ``signal (B, N)``, largest first, ties to the lowest index (a stable
    sort); patches not ``allowed`` after all the others."""
    order = torch.sort(-signal.masked_fill(~allowed, -math.inf), dim=1, stable=True).indices
    position = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, position)


def with_each(chosen: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``chosen (B, j)`` plus each of ``candidates (B, C)``: the ``(B, C, j + 1)`` sets one greedy step scores."""
    b, c = candidates.shape
    return torch.cat([chosen[:, None, :].expand(b, c, chosen.shape[1]), candidates[..., None]], dim=2)


@torch.no_grad()
def losses(model: MAE, images: torch.Tensor, visible: torch.Tensor, image_index: torch.Tensor | None = None, *,
           chunk_size: int = DEFAULT_CHUNK, precision: str = DEFAULT_PRECISION) -> torch.Tensor:
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
