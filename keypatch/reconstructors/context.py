"""The per-batch constants of the scoring fast path, below both of its users.

:mod:`keypatch.reconstructors.scoring` builds them (:func:`~keypatch.reconstructors.scoring.loss_context`)
and :mod:`keypatch.reconstructors.decoding` reads them; keeping the types here lets each import
them without importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from keypatch.reconstructors.inplace import Workspace

__all__ = ["LossContext", "MaskTokenConstants"]


@dataclass(frozen=True)
class MaskTokenConstants:
    """The first decoder block's terms that involve mask tokens only (``h`` heads of width ``hd``).

    Attributes
    ----------
    residual : torch.Tensor
        ``(N, Dd)``: ``mask_token + pos`` plus the attention's output-projection bias (the residual
        stream of a masked position before its projected attention is added).
    query : torch.Tensor
        ``(h, N, hd)``: the masked positions' queries, already scaled by ``hd ** -0.5``.
    row_max : torch.Tensor
        ``(h, N, 1)``: the row maxima of the query-key scores among masked positions.
    exp_scores_t : torch.Tensor
        ``(h, N, N)``: ``exp(scores - row_max)``, stored keys first.
    value : torch.Tensor
        ``(h, N, hd)``: the masked positions' values.
    exp_value_total : torch.Tensor
        ``(h, N, hd)``: ``exp_scores @ value`` over all keys.
    exp_total : torch.Tensor
        ``(h, N)``: ``exp_scores.sum(-1)`` over all keys.
    key_value : torch.Tensor
        ``(N, 2, h, hd)``: the masked positions' keys and values (for the visible rows' queries
        of a deeper decoder).
    """

    residual: torch.Tensor
    query: torch.Tensor
    row_max: torch.Tensor
    exp_scores_t: torch.Tensor
    value: torch.Tensor
    exp_value_total: torch.Tensor
    exp_total: torch.Tensor
    key_value: torch.Tensor

    def to(self, dtype: torch.dtype) -> MaskTokenConstants:
        """These constants in ``dtype``."""
        return MaskTokenConstants(*(t.to(dtype) for t in (getattr(self, f.name) for f in fields(self))))


@dataclass
class LossContext:
    """Per-batch constants for scoring visible sets of ``B`` images
    (from :func:`~keypatch.reconstructors.scoring.loss_context`).

    Attributes
    ----------
    tokens : torch.Tensor
        ``(B, N, D)`` patch tokens with position embeddings.
    u : torch.Tensor
        ``(B, N, Dd)``: ``W^T (b - t)`` per patch (``W, b`` of ``decoder_pred``, ``t`` the target).
    c : torch.Tensor
        ``(B, N)``: ``||b - t||^2`` per patch.
    gram : torch.Tensor
        ``(Dd, Dd)``: ``W^T W``.
    embedded : torch.Tensor
        ``(B, N+1, D)``: the encoder's input rows, cls token first.
    qkv0 : torch.Tensor
        ``(B, N+1, 3 D)``: the first encoder block's ``qkv(norm1(.))`` of every row of ``embedded``.
    mask_tokens : MaskTokenConstants
        The first decoder block's mask-token constants.
    workspace : dict
        Scratch buffers reused from call to call.
    """

    tokens: torch.Tensor
    u: torch.Tensor
    c: torch.Tensor
    gram: torch.Tensor
    embedded: torch.Tensor
    qkv0: torch.Tensor
    mask_tokens: MaskTokenConstants
    workspace: Workspace = field(default_factory=dict)

    @property
    def batch(self) -> int:
        """Number of images."""
        return self.tokens.shape[0]
