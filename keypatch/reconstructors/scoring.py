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
* **mask-token attention (one-block decoders).** A masked position's decoder input is
  ``mask_token + pos``, the same for every set, so its query, key and value, and the softmax
  totals over *all* masked keys, are constants (:class:`MaskTokenConstants`); a set's attention
  is those totals minus its visible patches' terms, merged with its visible tokens' (stable
  softmax). Deeper decoders run their blocks on all ``N + 1`` positions.

Without autocast the blocks work in place (:mod:`keypatch.reconstructors.inplace`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from keypatch.reconstructors.inplace import Workspace, block_, buffer, inplace_ok, mlp_, run_block
from keypatch.reconstructors.mae import MAE


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
    """

    residual: torch.Tensor
    query: torch.Tensor
    row_max: torch.Tensor
    exp_scores_t: torch.Tensor
    value: torch.Tensor
    exp_value_total: torch.Tensor
    exp_total: torch.Tensor


@dataclass
class LossContext:
    """Per-batch constants for scoring visible sets of ``B`` images (from :func:`loss_context`).

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
    mask_tokens : MaskTokenConstants or None
        For a one-block decoder; None for deeper decoders.
    workspace : dict
        Scratch buffers reused from call to call.
    """

    tokens: torch.Tensor
    u: torch.Tensor
    c: torch.Tensor
    gram: torch.Tensor
    embedded: torch.Tensor
    qkv0: torch.Tensor
    mask_tokens: MaskTokenConstants | None
    workspace: Workspace = field(default_factory=dict)

    @property
    def batch(self) -> int:
        """Number of images."""
        return self.tokens.shape[0]


DECODER_BLOCK_SETS = 16
"""Visible sets per decoder pass in :func:`context_losses` (bounds the working set)."""
DECODER_BLOCK_ROWS = 1024
"""Decoder rows (masked patches) per MLP pass of a one-block decoder (cache-sized)."""


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
    consts = mask_token_constants(model) if len(model.decoder_blocks) == 1 else None
    return LossContext(tokens, resid @ w, resid.pow(2).sum(-1), w.t() @ w, embedded, qkv0, consts)


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
    x0 = x0 + blk.attn.proj.bias if blk.attn.proj.bias is not None else x0
    return MaskTokenConstants(x0, q0, m0, e0.transpose(1, 2).contiguous(), v0, e0 @ v0, e0.sum(-1))


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
        ``(M,)`` float32 losses (0 where every patch is visible). Call it inside
        :func:`~keypatch.reconstructors.precision.autocast` for reduced precision; the final
        quadratic form is always evaluated in float32.
    """
    m, k = visible.shape
    n = ctx.tokens.shape[1]
    if k >= n:
        return torch.zeros(m, device=visible.device)
    masked = masked_patches(visible, n)
    z = encode(model, ctx, visible, image_index)
    decode = _decode_one_block if ctx.mask_tokens is not None else _decode_deep
    step = DECODER_BLOCK_SETS
    if m <= step:
        return decode(model, ctx, z, visible, masked, image_index)
    return torch.cat([decode(model, ctx, z[s : s + step], visible[s : s + step], masked[s : s + step],
                             image_index[s : s + step]) for s in range(0, m, step)])


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


def _decode_deep(model: MAE, ctx: LossContext, z: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor,
                 image_index: torch.Tensor) -> torch.Tensor:
    """Losses ``(M,)`` from the encoder output ``z (M, k+1, Dd)``: every decoder block on all positions."""
    m, k = visible.shape
    n, dd = ctx.tokens.shape[1], z.shape[-1]
    x = model.mask_token.to(z.dtype).expand(m, n + 1, dd).clone()
    x[:, :1] = z[:, :1]
    x.scatter_(1, (visible + 1)[..., None].expand(m, k, dd), z[:, 1:])
    x += model.decoder_pos_embed.to(z.dtype)
    for blk in model.decoder_blocks:
        x = run_block(blk, x, ctx.workspace)
    hid = model.decoder_norm(x[torch.arange(m, device=z.device)[:, None], masked + 1])  # (M, R, Dd)
    err = patch_errors(ctx, hid, image_index[:, None], masked)
    return err.sum(1) / (masked.shape[1] * model.config.patch_dim)


def _decode_one_block(model: MAE, ctx: LossContext, z: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor,
                      image_index: torch.Tensor) -> torch.Tensor:
    """Losses ``(M,)`` from the encoder output ``z (M, k+1, Dd)`` with a one-block decoder."""
    mt = ctx.mask_tokens
    blk = model.decoder_blocks[0]
    m, j, dd = z.shape
    h = mt.query.shape[0]
    hd = dd // h
    r = masked.shape[1]
    dt = z.dtype
    pos = model.decoder_pos_embed[0].to(dt)[F.pad(visible + 1, (1, 0))]  # (M, k+1, Dd), cls at 0
    kv = F.linear(blk.norm1(z + pos), blk.attn.qkv.weight[dd:], blk.attn.qkv.bias[dd:]).view(m, j, 2, h, hd)
    kvis = kv[:, :, 0].permute(2, 3, 0, 1).reshape(h, hd, m * j)  # (h, hd, M j)
    vvis = kv[:, :, 1].permute(2, 0, 1, 3)  # (h, M, j, hd)
    # all in (h, M, N, .) layout; every patch position is queried with its mask-token query (rows of
    # visible positions are computed but not used). The queries are shared by all sets: one product
    # per head, (N, hd) x (hd, M j), rather than M small ones
    sv = torch.bmm(mt.query.to(dt), kvis).view(h, -1, m, j).transpose(1, 2)  # (h, M, N, j) visible-key scores
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
    num = torch.matmul(coef, vals).addcmul_(mt.exp_value_total.to(dt)[:, None], alpha.div_(den)[..., None])
    # the masked positions only: (M R, Dd) rows, decoded in cache-sized row blocks
    att = num.permute(1, 2, 0, 3)[torch.arange(m, device=z.device)[:, None], masked].reshape(m * r, dd)
    img = image_index[:, None].expand(m, r).reshape(-1)
    pos_flat = masked.reshape(-1)
    rows = DECODER_BLOCK_ROWS
    err = torch.cat([_one_block_tail(model, ctx, att[t : t + rows], img[t : t + rows], pos_flat[t : t + rows])
                     for t in range(0, m * r, rows)])
    return err.view(m, r).sum(1) / (r * model.config.patch_dim)


def _one_block_tail(model: MAE, ctx: LossContext, att: torch.Tensor, img: torch.Tensor,
                    pos: torch.Tensor) -> torch.Tensor:
    """From the attention outputs of masked rows to their summed squared errors (one-block decoder)."""
    blk = model.decoder_blocks[0]
    residual = ctx.mask_tokens.residual  # holds the projection's bias
    if not inplace_ok(att, blk.mlp.fc1.weight):
        y = residual.to(att.dtype)[pos] + F.linear(att, blk.attn.proj.weight)
        y = y + blk.mlp(blk.norm2(y))
    else:
        y = residual.index_select(0, pos).addmm_(att, blk.attn.proj.weight.t())
        mlp_(blk.mlp, y, blk.norm2(y), ctx.workspace)
    return patch_errors(ctx, model.decoder_norm(y), img, pos)
