"""The scoring fast path: ``L`` of many visible sets without materialising predicted pixels.

:func:`loss_context` computes, once per batch of images, everything that does not depend on the
visible set; :func:`context_losses` then scores ``M`` sets of those images. It computes the same
``L`` as the plain model (:meth:`~keypatch.reconstructors.mae.MAE.predict_tokens` followed by
:meth:`~keypatch.reconstructors.mae.MAE.masked_mse`), float rounding aside, by three identities:

* **the loss from the decoder output.** With ``pred = W h + b`` (``decoder_pred``), patch ``n``'s
  summed squared error is ``h^T (W^T W) h + 2 h^T W^T (b - t_n) + ||b - t_n||^2``, so only the
  ``Dd``-wide decoder output ``h`` is needed, and only at the masked positions.
* **set-independent rows.** The first encoder block's ``qkv(norm1(.))`` of a token does not depend
  on the set: it is computed once per image and gathered.
* **mask-token rows of the first decoder block.** A masked position's decoder input is
  ``mask_token + pos``, the same for every set, so its query, key and value, and the softmax
  totals over *all* masked keys, are constants (:class:`MaskTokenConstants`); a set's attention
  is those totals minus its visible patches' terms, merged with its visible tokens' (stable
  softmax). Only the masked rows go through the last decoder block
  (:mod:`keypatch.reconstructors.decoding`, for any decoder depth).

The blocks work in place where they can (:mod:`keypatch.reconstructors.inplace`). Reduced
precision runs a bfloat16 copy of the model on :func:`reduced_context` (the loss's final
quadratic form stays float32).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from keypatch.reconstructors.context import LossContext, MaskTokenConstants
from keypatch.reconstructors.decoding import decode_deep, decode_one_block
from keypatch.reconstructors.inplace import block_, buffer, inplace_ok
from keypatch.reconstructors.mae import MAE

DECODER_BLOCK_SETS = 16
"""Visible sets per decoder pass in :func:`context_losses` on CPUs (bounds the working set to the
caches); GPUs decode a whole pass at once."""


@torch.no_grad()
def loss_context(model: MAE, images: torch.Tensor) -> LossContext:
    """What scoring visible sets of ``images`` ``(B, 3, H, W)`` (normalised, on the model's device) needs."""
    tokens = model.embed(images)
    w, b = model.decoder_pred.weight, model.decoder_pred.bias  # (P, Dd), (P,)
    resid = b - model.targets(images)  # (B, N, P)
    cls = model.cls_token + model.pos_embed[:, :1]  # (1, 1, D)
    embedded = torch.cat([cls.expand(tokens.shape[0], 1, -1), tokens], dim=1)
    blk = model.blocks[0]
    qkv0 = blk.attn.qkv(blk.norm1(embedded))
    consts = mask_token_constants(model)
    return LossContext(tokens, resid @ w, resid.pow(2).sum(-1), w.t() @ w, embedded, qkv0, consts)


def reduced_context(ctx: LossContext, dtype: torch.dtype) -> LossContext:
    """``ctx`` for a copy of the model in ``dtype``: the network's inputs cast (from their float32
    values), the loss's terms (``u``, ``c``, ``gram``) kept in float32."""
    return replace(ctx, tokens=ctx.tokens.to(dtype), embedded=ctx.embedded.to(dtype), qkv0=ctx.qkv0.to(dtype),
                   mask_tokens=ctx.mask_tokens.to(dtype), workspace={})


def mask_token_constants(model: MAE) -> MaskTokenConstants:
    """:class:`MaskTokenConstants` of the model's first decoder block."""
    blk = model.decoder_blocks[0]
    n, dd, h = model.grid.n, model.config.decoder_embed_dim, blk.attn.num_heads
    x0 = (model.mask_token + model.decoder_pos_embed)[0, 1:]  # (N, Dd)
    q0, k0, v0 = blk.attn.qkv(blk.norm1(x0)).view(n, 3, h, dd // h).permute(1, 2, 0, 3)
    q0 = (q0 * (dd // h) ** -0.5).contiguous()
    s0 = q0 @ k0.transpose(1, 2)  # (h, N, N)
    m0 = s0.amax(-1, keepdim=True)
    e0, v0 = torch.exp(s0 - m0), v0.contiguous()
    key_value = torch.stack([k0, v0]).permute(2, 0, 1, 3).contiguous()  # (N, 2, h, hd)
    x0 = x0 + blk.attn.proj.bias if blk.attn.proj.bias is not None else x0
    return MaskTokenConstants(x0, q0, m0, e0.transpose(1, 2).contiguous(), v0, e0 @ v0, e0.sum(-1), key_value)


def masked_patches(visible: torch.Tensor, n: int) -> torch.Tensor:
    """``(M, N - k)`` the patches not in each row of ``visible (M, k)``, ascending (a sort: no host sync)."""
    m, k = visible.shape
    free = torch.ones(m, n, dtype=torch.bool, device=visible.device).scatter_(1, visible, False)
    return ((~free).long() * n + torch.arange(n, device=visible.device)).sort(dim=1).values[:, : n - k]


def context_losses(model: MAE, ctx: LossContext, visible: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """``L`` of ``M`` visible sets of the images behind ``ctx``.

    Parameters
    ----------
    model : MAE
        The model ``ctx`` was made with.
    ctx : LossContext
        From :func:`loss_context`.
    visible : torch.Tensor
        ``(M, k)`` long visible patch indices, distinct within a row.
    image_index : torch.Tensor
        ``(M,)`` long image of each set.

    Returns
    -------
    torch.Tensor
        ``(M,)`` float32 losses (0 where every patch is visible). For reduced precision pass a
        copy of the model in that dtype (:func:`~keypatch.reconstructors.precision.reduced_copy`)
        with :func:`reduced_context`; the final quadratic form is always evaluated in float32.
    """
    m, k = visible.shape
    n = ctx.tokens.shape[1]
    if k >= n:
        return torch.zeros(m, device=visible.device)
    masked = masked_patches(visible, n)
    z = encode(model, ctx, visible, image_index)
    decode = decode_one_block if len(model.decoder_blocks) == 1 else decode_deep
    step = DECODER_BLOCK_SETS if visible.device.type == "cpu" else m
    if m <= step:
        return decode(model, ctx, z, visible, masked, image_index)
    return torch.cat([decode(model, ctx, z[s : s + step], visible[s : s + step], masked[s : s + step],
                             image_index[s : s + step]) for s in range(0, m, step)])


def context_patch_errors(model: MAE, ctx: LossContext, visible: torch.Tensor,
                         image_index: torch.Tensor) -> torch.Tensor:
    """Each masked patch's mean squared error for ``M`` visible sets: ``(M, N)`` float32, 0 at the
    visible patches (arguments as :func:`context_losses`, whose ``L`` is the mean of the masked
    entries). The per-patch terms :func:`context_losses` sums, in one pass per set."""
    m, k = visible.shape
    n = ctx.tokens.shape[1]
    out = torch.zeros(m, n, device=visible.device)
    if k >= n:
        return out
    masked = masked_patches(visible, n)
    z = encode(model, ctx, visible, image_index)
    decode = decode_one_block if len(model.decoder_blocks) == 1 else decode_deep
    return out.scatter_(1, masked, decode(model, ctx, z, visible, masked, image_index, reduce=False).float())


def encode(model: MAE, ctx: LossContext, visible: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """The encoder on ``[cls] + visible`` tokens, projected to the decoder width: ``(M, k+1, Dd)``.

    The first block's ``qkv(norm1(.))`` rows are gathered from ``ctx.qkv0``; where
    :func:`~keypatch.reconstructors.inplace.inplace_ok`, the blocks run in place.
    """
    m = visible.shape[0]
    n1, d = ctx.qkv0.shape[1], ctx.tokens.shape[-1]
    rows = (image_index[:, None] * n1 + F.pad(visible + 1, (1, 0))).view(-1)  # rows of ctx.embedded
    x = ctx.embedded.view(-1, d).index_select(0, rows).view(m, -1, d)
    if not inplace_ok(x, model.cls_token):
        for blk in model.blocks:
            x = blk(x)
        return model.decoder_embed(model.norm(x))
    qkv0 = ctx.qkv0.view(-1, ctx.qkv0.shape[-1])
    qkv0 = torch.index_select(qkv0, 0, rows, out=buffer(ctx.workspace, "qkv", rows.shape[0], qkv0.shape[1], x))
    for i, blk in enumerate(model.blocks):
        block_(blk, x, ctx.workspace, qkv0 if i == 0 else None)
    return model.decoder_embed(model.norm(x))
