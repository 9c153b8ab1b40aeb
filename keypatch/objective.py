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
"""``precision="mixed"``: candidates per image always re-scored in float32 at a step (the lowest in bfloat16)."""
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
        Visible sets per MAE pass (bounds memory); 0 sizes it for the device (:func:`auto_chunk`).
    precision : {"auto", "float32", "bfloat16", "mixed"}
        Compute precision of the passes (:mod:`keypatch.reconstructors.precision`); ``"auto"``
        is resolved for the model and its device. The loss is accumulated in float32. With ``"mixed"``,
        :meth:`score` is float32 and :meth:`step` screens in bfloat16.

    Attributes
    ----------
    evaluations : torch.Tensor
        ``(B,)`` long, on the model's device: visible sets scored so far per image (a set screened
        in bfloat16 and re-scored in float32 counts once).
    refined : int
        ``"mixed"``: candidates re-scored in float32 by :meth:`step`, over all images.
    widened : int
        ``"mixed"``: steps at which the float32 re-scores showed a larger bfloat16 error than the
        margin had assumed, so that more candidates had to be re-scored.
    relative_error : torch.Tensor
        ``(B,)``, ``"mixed"``: per image, the largest ``|L_bf16 - L_fp32| / L_fp32`` seen so far.
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
        self.refined = self.widened = 0
        self.relative_error = torch.zeros(images.shape[0], device=model.device)

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
        if self.precision == "bfloat16":
            return self.screen(sets, image_index)
        self.evaluations.index_add_(0, image_index, torch.ones_like(image_index))  # no host sync (bincount has one)
        return self._passes(self.model, self.context, sets, image_index)

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

    @torch.no_grad()
    def screen(self, sets: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """``L`` of many visible sets in the screening precision: bfloat16 with ``"mixed"`` (and
        ``"bfloat16"``), float32 otherwise. For strategies that rank many sets and confirm the best
        with :meth:`score`; arguments and result as :meth:`score`."""
        self.evaluations.index_add_(0, image_index, torch.ones_like(image_index))
        return self._passes(self.screen_model, self.screen_context, sets, image_index)

    @torch.no_grad()
    def patch_errors(self, sets: torch.Tensor, image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Each masked patch's squared error when an image is rebuilt from a set: ``sets (M, k)`` -> ``(M, N)``.

        One MAE pass per set (counted as one evaluation), in float32, on the scoring fast path
        (:func:`~keypatch.reconstructors.scoring.context_patch_errors`): the mean over each
        patch's values of ``(prediction - normalised pixels)^2``; 0 at the visible patches (``L``
        is the mean of the others). ``image_index (M,)`` names each set's image (default: one set
        per image, ``M = B``). At most ``chunk_size`` sets per pass. No host synchronisation.
        """
        ii = torch.arange(self.batch, device=sets.device) if image_index is None else image_index
        self.evaluations.index_add_(0, ii, torch.ones_like(ii))
        cpu = sets.device.type == "cpu"

        def one(s: slice) -> torch.Tensor:
            def run() -> torch.Tensor:
                return context_patch_errors(self.model, self.context, sets[s], ii[s])

            return TUNER.run(run, len(range(sets.shape[0])[s]), "errors") if cpu else run()

        return torch.cat([one(slice(s, s + self.chunk_size)) for s in range(0, max(sets.shape[0], 1), self.chunk_size)])

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
            ``(B, C)`` float32. With ``precision="mixed"`` the candidates near each image's minimum
            hold float32 scores and the others bfloat16 ones (all above that minimum), so the
            argmin, its ties and its loss are float32's.

        Notes
        -----
        ``"mixed"``: with at most :data:`MIXED_REFINE` candidates per image every one is scored in
        float32 directly (the re-scoring below would score them all). Otherwise every candidate is
        scored in bfloat16; the :data:`MIXED_REFINE` lowest, and every candidate whose bfloat16 loss
        lies within the margin of the bfloat16 minimum, are re-scored in float32. The margin is
        :data:`MIXED_SAFETY` times the image's largest relative bfloat16 error seen so far (at this
        step included). If the re-scores show that a candidate
        outside the re-scored ones could still be the float32 minimum, more are re-scored
        (:attr:`widened` counts those steps). This costs two host synchronisations per step.
        """
        return self.choices(with_each(chosen, candidates))

    @torch.no_grad()
    def step_errors(self, chosen: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`step`, with each candidate set's error map where that costs no more passes.

        Returns
        -------
        tuple
            ``L (B, C)`` as :meth:`step` and ``errors (B, C, N)`` as :meth:`patch_errors` gives them
            for the sets ``chosen + c`` when there are at most :data:`MIXED_REFINE` candidates per
            image and they are scored in float32 (precision ``"float32"`` or ``"mixed"``); ``L``
            is then the mean of the masked patches' errors (:meth:`score`'s up to rounding).
            Otherwise :meth:`step`'s ``L`` and ``None``.
        """
        b, c = candidates.shape
        if self.precision == "bfloat16" or c > MIXED_REFINE:
            return self.step(chosen, candidates), None
        sets = with_each(chosen, candidates)
        ii = torch.arange(b, device=sets.device).repeat_interleave(c)
        err = self.patch_errors(sets.reshape(b * c, -1), ii).view(b, c, -1)
        return err.sum(-1) / (self.grid.n - sets.shape[-1]), err

    @torch.no_grad()
    def choices(self, sets: torch.Tensor) -> torch.Tensor:
        """``L`` of ``C`` alternative visible sets per image, ``sets (B, C, k)`` -> ``(B, C)``, for a
        strategy that keeps the best of them: with ``"mixed"`` screened in bfloat16 and the best
        re-scored in float32 exactly as :meth:`step` does (which calls it)."""
        b, c, _ = sets.shape
        flat = sets.reshape(b * c, -1)
        ii = torch.arange(b, device=sets.device).repeat_interleave(c)
        if self.precision != "mixed" or c <= MIXED_REFINE:  # mixed re-scores that many in float32 anyway
            return self.score(flat, ii).view(b, c)
        return self._refine(self.screen(flat, ii).view(b, c), sets)

    def _refine(self, screened: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
        """``screened (B, C)`` bfloat16 scores with those near each minimum re-scored in float32."""
        b, c = screened.shape
        order = screened.argsort(dim=1, stable=True)  # candidates of each image, lowest bf16 loss first
        rank = torch.arange(c, device=sets.device)
        out, done = screened.clone(), torch.zeros(b, dtype=torch.long, device=sets.device)

        def within(best: torch.Tensor) -> torch.Tensor:  # per image: candidates whose bf16 loss could hide best
            bound = best * (1.0 + MIXED_SAFETY * self.relative_error)
            return (screened <= bound[:, None]).sum(1).clamp(MIXED_REFINE, c)

        need = within(screened.amin(1) * (1.0 + MIXED_SAFETY * self.relative_error))
        while True:
            new = (rank >= done[:, None]) & (rank < need[:, None])  # (B, C) in rank order
            img, pos = new.nonzero(as_tuple=True)  # host sync
            if img.numel() == 0:
                break
            self.widened += bool(done.any())
            cand = order[img, pos]
            exact = self._passes(self.model, self.context, sets[img, cand], img)
            self.refined += img.numel()
            out[img, cand] = exact
            err = (screened[img, cand] - exact).abs() / exact.abs().clamp_min(1e-12)
            self.relative_error = self.relative_error.scatter_reduce(0, img, err, "amax")
            done = torch.maximum(done, need)
            fp32 = torch.where(rank < done[:, None], out.gather(1, order), torch.inf)
            need = torch.maximum(done, within(fp32.amin(1)))
        return out

    def prefix_losses(self, patches: torch.Tensor) -> torch.Tensor:
        """``L`` of every prefix of each image's ordered patches ``(B, k)`` -> ``(B, k)``."""
        return torch.stack([self.score_each(patches[:, : j + 1]) for j in range(patches.shape[1])], dim=1)


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
