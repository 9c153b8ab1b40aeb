"""The decoder half of the scoring fast path: from encoder outputs to ``L``, masked rows only.

:func:`decode_one_block` serves one-block decoders, :func:`decode_deep` any deeper one (ViT-B/L/H's
8 blocks). Both use the identities listed in :mod:`keypatch.reconstructors.scoring`:

* **first block, masked rows.** A masked position's input is ``mask_token + pos``, the same for
  every set: its residual, query, key and value are constants, and its attention is the softmax
  totals over all masked keys (:class:`~keypatch.reconstructors.scoring.MaskTokenConstants`)
  corrected for the set's visible patches (:func:`masked_rows_attention`). Only the ``k + 1``
  visible rows (cls included) are projected.
* **last block.** Only the masked rows' outputs enter the loss: queries, projection and MLP run
  on those rows only (keys and values on all).
* **the loss.** From the decoder output ``h`` by the quadratic form of :func:`patch_errors`; no
  pixel prediction is materialised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from keypatch.reconstructors.context import LossContext, MaskTokenConstants
from keypatch.reconstructors.inplace import Workspace, inplace_ok, mlp_, run_block
from keypatch.reconstructors.mae import MAE, SHORT_SEQUENCE, Block

DECODER_BLOCK_ROWS = 1024
"""Decoder rows (masked patches) per MLP pass of a one-block decoder (cache-sized)."""


def patch_errors(ctx: LossContext, hid: torch.Tensor, img: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Summed squared error of each predicted patch from decoder outputs ``hid (..., Dd)`` (float32).

    ``img`` and ``pos`` index (broadcastably) the image and patch of each row of ``hid``.
    """
    n, dd = ctx.u.shape[1], ctx.u.shape[2]
    flat = (img * n + pos).expand(hid.shape[:-1]).reshape(-1)  # row of each patch in (B N)
    u = ctx.u.view(-1, dd).index_select(0, flat)
    c = ctx.c.view(-1).index_select(0, flat).view(hid.shape[:-1])
    with torch.autocast(hid.device.type, enabled=False):
        hid = hid.float().reshape(-1, dd)
        # h^T G h + 2 h^T u + c, with "G h + 2 u" as one GEMM
        return torch.linalg.vecdot(hid, torch.addmm(u, hid, ctx.gram, beta=2.0)).view(c.shape) + c


def masked_rows_attention(mt: MaskTokenConstants, kvis: torch.Tensor, vvis: torch.Tensor,
                          visible: torch.Tensor) -> torch.Tensor:
    """The first decoder block's attention of every patch position queried with its mask-token query.

    Parameters
    ----------
    mt : MaskTokenConstants
        The block's mask-token constants.
    kvis, vvis : torch.Tensor
        ``(M, j, h, hd)``: keys and values of the ``j = k + 1`` visible rows (cls first).
    visible : torch.Tensor
        ``(M, k)`` visible patches.

    Returns
    -------
    torch.Tensor
        ``(h, M, N, hd)``, before the output projection. The rows of visible positions are
        computed but mean nothing (a visible position is not queried with the mask token).
    """
    m, j, h, hd = kvis.shape
    dt = kvis.dtype
    kflat = kvis.permute(2, 3, 0, 1).reshape(h, hd, m * j)  # (h, hd, M j)
    vvis = vvis.permute(2, 0, 1, 3)  # (h, M, j, hd)
    # the queries are shared by all sets: one product per head, (N, hd) x (hd, M j), not M small ones
    sv = torch.bmm(mt.query.to(dt), kflat).view(h, -1, m, j).transpose(1, 2)  # (h, M, N, j) visible-key scores
    # softmax mass on the masked keys: the totals over all keys minus the visible patches' terms
    ev = mt.exp_scores_t.to(dt)[:, visible].transpose(-1, -2)  # (h, M, N, k)
    m0 = mt.row_max[:, None, :, 0].to(dt)  # (h, 1, N)
    mx = torch.maximum(sv.amax(-1), m0)  # (h, M, N): the stable softmax's row maxima
    pv = torch.exp(sv - mx[..., None])
    alpha = torch.exp(m0 - mx)
    den = (mt.exp_total.to(dt)[:, None] - ev.sum(-1)).mul_(alpha).add_(pv.sum(-1))  # (h, M, N)
    # one product for both corrections: + visible tokens' values, - visible patches' mask-token values;
    # the totals come in with one fused multiply-add
    coef = torch.cat([pv, ev.mul(alpha[..., None]).neg_()], dim=-1).div_(den[..., None])
    vals = torch.cat([vvis, mt.value.to(dt)[:, visible]], dim=2)  # (h, M, j + k, hd)
    return torch.matmul(coef, vals).addcmul_(mt.exp_value_total.to(dt)[:, None], alpha.div_(den)[..., None])


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(hd)) v`` for ``q (M, h, r, hd)`` and ``k, v (M, h, n, hd)`` -> ``(M, r, h hd)``."""
    if q.device.type == "cpu" and k.shape[2] <= SHORT_SEQUENCE:
        x = torch.matmul(torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5).softmax(-1), v)
    else:
        x = F.scaled_dot_product_attention(q, k, v)
    return x.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def proj_mlp(blk: Block, residual: torch.Tensor, att: torch.Tensor, workspace: Workspace) -> torch.Tensor:
    """``y = residual + proj(att)`` then ``y + mlp(norm2(y))`` for 2-D rows; ``residual`` is consumed.

    ``residual`` must already hold the projection's bias. In place where
    :func:`~keypatch.reconstructors.inplace.inplace_ok`.
    """
    if not inplace_ok(att, blk.mlp.fc1.weight):
        y = residual + F.linear(att, blk.attn.proj.weight)
        return y + blk.mlp(blk.norm2(y))
    y = residual.addmm_(att, blk.attn.proj.weight.t())
    return mlp_(blk.mlp, y, blk.norm2(y), workspace)


def _visible_rows(model: MAE, z: torch.Tensor, visible: torch.Tensor, queries: bool = True):
    """The first decoder block on the visible rows: ``(x, qkv, index)``.

    ``x (M, j, Dd)`` the residual stream (``z`` plus position), ``qkv (M, j, 3, h, hd)`` (without
    the queries, ``(M, j, 2, h, hd)``, when not ``queries``) and ``index (M, j)`` the rows'
    decoder positions (cls at 0).
    """
    blk = model.decoder_blocks[0]
    m, j, dd = z.shape
    h = blk.attn.num_heads
    index = F.pad(visible + 1, (1, 0))
    x = z + model.decoder_pos_embed[0].to(z.dtype)[index]
    w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
    if not queries:
        w, b = w[dd:], (b[dd:] if b is not None else None)
    return x, F.linear(blk.norm1(x), w, b).view(m, j, -1, h, dd // h), index


def decode_one_block(model: MAE, ctx: LossContext, z: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor,
                     image_index: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """Losses ``(M,)`` from the encoder output ``z (M, k+1, Dd)`` with a one-block decoder
    (``reduce=False``: each masked patch's mean squared error, ``(M, R)`` in the order of ``masked``)."""
    blk = model.decoder_blocks[0]
    m, _, dd = z.shape
    r = masked.shape[1]
    _, kv, _ = _visible_rows(model, z, visible, queries=False)
    num = masked_rows_attention(ctx.mask_tokens, kv[:, :, 0], kv[:, :, 1], visible)
    # the masked positions only: (M R, Dd) rows, decoded in cache-sized row blocks (rows of a contiguous
    # copy gathered with index_select, faster on a CPU than advanced indexing of the permuted view)
    n = num.shape[2]
    flat = (torch.arange(m, device=z.device)[:, None] * n + masked).view(-1)
    att = num.permute(1, 2, 0, 3).reshape(m * n, dd).index_select(0, flat)
    img = image_index[:, None].expand(m, r).reshape(-1)
    pos = masked.reshape(-1)
    residual = ctx.mask_tokens.residual  # holds the projection's bias
    errs = []
    for t in range(0, m * r, DECODER_BLOCK_ROWS):
        rows = slice(t, t + DECODER_BLOCK_ROWS)
        y = proj_mlp(blk, residual.to(att.dtype).index_select(0, pos[rows]), att[rows], ctx.workspace)
        errs.append(patch_errors(ctx, model.decoder_norm(y), img[rows], pos[rows]))
    err = torch.cat(errs).view(m, r)
    return err.sum(1) / (r * model.config.patch_dim) if reduce else err / model.config.patch_dim


def _first_block(model: MAE, ctx: LossContext, z: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The first decoder block's output at all ``N + 1`` positions, ``(M, N+1, Dd)`` (deep decoders)."""
    mt = ctx.mask_tokens
    blk = model.decoder_blocks[0]
    m, j, dd = z.shape
    n = mt.residual.shape[0]
    xv, qkv, index = _visible_rows(model, z, visible)
    num = masked_rows_attention(mt, qkv[:, :, 1], qkv[:, :, 2], visible)  # (h, M, N, hd)
    # the visible rows' queries against every key: the masked positions' keys and values are constants
    keys = torch.cat([qkv[:, :1, 1:], mt.key_value.to(z.dtype)[None].expand(m, -1, -1, -1, -1)], dim=1)
    rows = index[..., None, None, None].expand(m, j, *keys.shape[2:])
    keys = keys.scatter(1, rows, qkv[:, :, 1:])  # (M, N+1, 2, h, hd)
    att_vis = attend(qkv[:, :, 0].transpose(1, 2), keys[:, :, 0].transpose(1, 2), keys[:, :, 1].transpose(1, 2))
    att = torch.empty(m, n + 1, dd, dtype=z.dtype, device=z.device)
    att[:, 1:] = num.permute(1, 2, 0, 3).reshape(m, n, dd)
    att.scatter_(1, index[..., None].expand(m, j, dd), att_vis)
    x = torch.empty_like(att)
    x[:, 1:] = mt.residual.to(z.dtype)
    bias = blk.attn.proj.bias
    x.scatter_(1, index[..., None].expand(m, j, dd), xv + bias if bias is not None else xv)
    return proj_mlp(blk, x.view(-1, dd), att.view(-1, dd), ctx.workspace).view(m, n + 1, dd)


def decode_deep(model: MAE, ctx: LossContext, z: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor,
                image_index: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """Losses ``(M,)`` from the encoder output ``z (M, k+1, Dd)`` with a decoder of two or more blocks
    (``reduce=False``: as :func:`decode_one_block`)."""
    m, r = masked.shape
    x = _first_block(model, ctx, z, visible)
    *middle, last = model.decoder_blocks[1:]
    for blk in middle:
        x = run_block(blk, x, ctx.workspace)
    # the last block: keys and values of all rows, everything else on the masked rows only
    n1, dd = x.shape[1], x.shape[2]
    h = last.attn.num_heads
    qkv = last.attn.qkv(last.norm1(x)).view(m, n1, 3, h, dd // h)
    rows = (torch.arange(m, device=x.device)[:, None], masked + 1)
    att = attend(qkv[:, :, 0][rows].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2))
    bias = last.attn.proj.bias
    y = x[rows].reshape(m * r, dd)
    y = proj_mlp(last, y.add_(bias) if bias is not None else y, att.reshape(m * r, dd), ctx.workspace)
    err = patch_errors(ctx, model.decoder_norm(y).view(m, r, dd), image_index[:, None], masked)
    return err.sum(1) / (r * model.config.patch_dim) if reduce else err / model.config.patch_dim
