"""A compact ViT masked autoencoder that scores many visible sets in one batched call.

The parameter names follow the official facebookresearch/mae checkpoints (``blocks.N.attn.qkv``,
``decoder_blocks.N...``, ``decoder_pred``), so those load without renaming. The encoder sees the
visible tokens only; the decoder sees all ``N + 1`` positions. Attention uses
:func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keypatch.geometry import PatchGrid, patchify, unpatchify
from keypatch.reconstructors import native
from keypatch.reconstructors.config import MAEConfig


def sincos_pos_embed(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, ``(1, grid**2 [+1], dim)`` (MAE's)."""
    if dim % 4:
        raise ValueError("embedding width must be divisible by 4 for 2-D sin-cos embeddings")
    gh, gw = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))

    def one_axis(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # official order: first half from the w-major meshgrid "x", second from "y"
    emb = np.concatenate([one_axis(gh), one_axis(gw)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


SHORT_SEQUENCE = 100
"""Up to this many tokens, CPU attention is two matmuls and a softmax instead of the fused kernel."""


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(self.qkv(x))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention and output projection from the packed ``qkv (B, n, 3 C)`` projections."""
        return self.proj(self.mix(qkv))

    def mix(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention from the packed ``qkv (B, n, 3 C)`` projections, before the output projection."""
        b, n, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if q.device.type == "cpu" and n <= SHORT_SEQUENCE:
            # two batched matmuls beat the fused CPU kernel on short sequences (1.4-2.6x measured at
            # 12-45 tokens; slower from ~200 on)
            x = torch.matmul(torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5).softmax(-1), v)
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        return x.transpose(1, 2).reshape(b, n, c)


class Mlp(nn.Module):
    """Two-layer GELU MLP (timm naming: ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, qkv_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the in-place inference helpers below apply (no autograd, no autocast, same dtype)."""
    return not (torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type) or x.dtype != weight.dtype)


def _buffer(workspace: dict, key: str, rows: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """A ``(rows, width)`` scratch tensor from ``workspace``, reused from call to call.

    On CPUs a fresh multi-megabyte activation per call costs page faults and cache misses (the
    allocator returns large blocks to the system); writing into one reused buffer avoids them.
    The caller must be done with the previous contents.
    """
    buf = workspace.get((key, width))
    if buf is None or buf.shape[0] < rows or buf.dtype != like.dtype or buf.device != like.device:
        buf = workspace[(key, width)] = torch.empty(rows, width, dtype=like.dtype, device=like.device)
    return buf[:rows]


def _linear_into(lin: nn.Linear, x: torch.Tensor, workspace: dict, key: str) -> torch.Tensor:
    """``lin(x)`` for 2-D ``x``, written into the reused buffer ``key`` of ``workspace``."""
    out = _buffer(workspace, key, x.shape[0], lin.out_features, x)
    if lin.bias is None:
        return torch.mm(x, lin.weight.t(), out=out)
    return torch.addmm(lin.bias, x, lin.weight.t(), out=out)


def _add_linear_(x: torch.Tensor, lin: nn.Linear, a: torch.Tensor) -> torch.Tensor:
    """``x += lin(a)`` in place, for 2-D ``x`` and ``a`` (the residual update as one GEMM)."""
    if lin.bias is not None:
        x.add_(lin.bias)
    return x.addmm_(a, lin.weight.t())


def _mlp_(mlp: Mlp, x: torch.Tensor, h: torch.Tensor, workspace: dict) -> torch.Tensor:
    """``x += mlp(h)`` in place for 2-D ``x, h``, the wide hidden layer in reused buffers."""
    hid = _linear_into(mlp.fc1, h, workspace, "hidden")
    # in place: out of place into a second buffer runs on both threads, but its extra memory
    # traffic made the whole search slower here (352 vs 268 ms of GELU per image at r = 0.1)
    torch.ops.aten.gelu_(hid)
    return _add_linear_(x, mlp.fc2, hid)


def _block_(blk: Block, x: torch.Tensor, workspace: dict, qkv: torch.Tensor | None = None,
            native_attention: bool = False) -> torch.Tensor:
    """``x = blk(x)`` in place for inference, ``x (M, n, D)`` contiguous; ``qkv`` replaces the first projection.

    The same arithmetic as :meth:`Block.forward` up to float rounding (the residual additions
    are folded into the GEMMs), with the wide activations in reused buffers. With
    ``native_attention`` the attention runs in :func:`keypatch.reconstructors.native.encoder_attention`.
    """
    m, n, d = x.shape
    x2 = x.view(m * n, d)
    if qkv is None:
        qkv = _linear_into(blk.attn.qkv, blk.norm1(x2), workspace, "qkv")
    if native_attention:
        att = native.encoder_attention(qkv.view(m, n, -1), blk.attn.num_heads, _buffer(workspace, "att", m * n, d, x))
    else:
        att = blk.attn.mix(qkv.view(m, n, -1)).view(m * n, d)
    _add_linear_(x2, blk.attn.proj, att)
    _mlp_(blk.mlp, x2, blk.norm2(x2), workspace)
    return x


class PatchEmbed(nn.Module):
    """Conv patch embedding (``patch_embed.proj`` as in timm / official MAE)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MAE(nn.Module):
    """ViT masked autoencoder that predicts normalised pixels of every patch.

    Parameters
    ----------
    config : MAEConfig
        The architecture.

    Notes
    -----
    ``L(S)``, the KPP loss, is the mean over masked patches (and over the values of each patch)
    of the squared error between prediction and the normalised image: the official MAE loss
    with ``norm_pix_loss=False``. With no masked patch (all visible) it is 0.
    """

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        g = c.grid
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(c.embed_dim, g.rows), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.layer_norm_eps, c.qkv_bias) for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps)
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            sincos_pos_embed(c.decoder_embed_dim, g.rows), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, c.layer_norm_eps, c.qkv_bias)
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=c.layer_norm_eps)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_dim)
        self.model_id = "unnamed"
        self.decoder_block_sets = 16
        """Visible sets per decoder attention pass in :meth:`context_losses` (bounds the working set)."""
        self.decoder_block_rows = 1024
        """Decoder rows (masked patches) per MLP pass in :meth:`context_losses` (cache-sized)."""
        self.native_kernels = True
        """Use the native CPU attention kernels in :meth:`context_losses` where they are available
        (:mod:`keypatch.reconstructors.native`); False: always the torch code."""
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up
    def reset_parameters(self, seed: int | None = None) -> None:
        """Initialise as the official MAE does (xavier linears, normal(0.02) tokens)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            w = self.patch_embed.proj.weight
            bound = (6.0 / (w.shape[0] + w[0].numel())) ** 0.5
            w.copy_(torch.empty_like(w).uniform_(-bound, bound, generator=gen))
            self.patch_embed.proj.bias.zero_()
            self.cls_token.normal_(0, 0.02, generator=gen)
            self.mask_token.normal_(0, 0.02, generator=gen)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight, generator=gen)
                    if m.bias is not None:
                        m.bias.zero_()
                elif isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()

    @property
    def grid(self) -> PatchGrid:
        """The patch grid of this model."""
        return self.config.grid

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.cls_token.device

    # ------------------------------------------------------------------ pieces
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embeddings, ``(B, N, D)``; computed once per image."""
        return self.patch_embed(images) + self.pos_embed[:, 1:]

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised pixels per patch, ``(B, N, p*p*3)``: what the decoder must predict."""
        return patchify(images, self.config.patch_size)

    def predict_tokens(self, tokens: torch.Tensor, visible: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Predict every patch of many (image, visible set) pairs.

        Parameters
        ----------
        tokens : torch.Tensor
            ``(B, N, D)`` from :meth:`embed`.
        visible : torch.Tensor
            ``(M, k)`` long, the visible patch indices of each set (distinct within a row).
        image_index : torch.Tensor
            ``(M,)`` long, which image each set belongs to.

        Returns
        -------
        torch.Tensor
            ``(M, N, p*p*3)`` predicted patches (the visible ones included).
        """
        return self.decoder_pred(self._decoder_hidden(tokens, visible, image_index))[:, 1:]

    def _encode(self, tokens: torch.Tensor, visible: torch.Tensor, image_index: torch.Tensor,
                ctx: LossContext | None = None) -> torch.Tensor:
        """Encoder on ``[cls] + visible`` tokens, projected to the decoder width: ``(M, k+1, Dd)``.

        With ``ctx`` (from :meth:`loss_context`), inference takes the in-place path
        (:func:`_block_`) and the first block's ``qkv(norm1(.))`` rows are gathered from
        ``ctx.qkv0``: a token's row does not depend on the set.
        """
        m = visible.shape[0]
        if ctx is None or ctx.qkv0 is None or not _fast_path(tokens, self.cls_token):
            x = tokens[image_index[:, None], visible]  # (M, k, D)
            cls = (self.cls_token + self.pos_embed[:, :1]).to(x.dtype).expand(m, -1, -1)
            x = torch.cat([cls, x], dim=1)
            for blk in self.blocks:
                x = blk(x)
            return self.decoder_embed(self.norm(x))
        n1, d = ctx.qkv0.shape[1], tokens.shape[-1]
        # rows of [cls] + tokens (per image) that each set sees, as one flat index
        rows = (image_index[:, None] * n1 + F.pad(visible + 1, (1, 0))).view(-1)
        x = ctx.embedded.view(-1, d).index_select(0, rows).view(m, -1, d)
        qkv0 = ctx.qkv0.view(-1, ctx.qkv0.shape[-1])
        qkv0 = torch.index_select(qkv0, 0, rows, out=_buffer(ctx.workspace, "qkv", rows.shape[0], qkv0.shape[1], x))
        nat = ctx.native and (d // self.blocks[0].attn.num_heads) % 32 == 0
        for i, blk in enumerate(self.blocks):
            _block_(blk, x, ctx.workspace, qkv0 if i == 0 else None, native_attention=nat)
        return self.decoder_embed(self.norm(x))

    def _decoder_hidden(self, tokens: torch.Tensor, visible: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Decoder output after ``decoder_norm`` at all ``N + 1`` positions, ``(M, N+1, Dd)``."""
        m, k = visible.shape
        n = tokens.shape[1]
        x = self._encode(tokens, visible, image_index)  # (M, k+1, Dd)
        dd = x.shape[-1]
        full = self.mask_token.to(x.dtype).expand(m, n + 1, dd).clone()
        full[:, :1] = x[:, :1]
        full.scatter_(1, (visible + 1)[..., None].expand(m, k, dd), x[:, 1:])
        x = full + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_norm(x)

    @staticmethod
    def masked_mse(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``L`` per set: mean squared error over the patches not in ``visible``, ``(M,)`` float32."""
        err = (pred.float() - target.float()).pow(2).mean(-1)  # (M, N)
        masked = torch.ones_like(err).scatter_(1, visible, 0.0)
        count = masked.sum(1)
        return (err * masked).sum(1) / count.clamp_min(1.0)

    # ------------------------------------------------------------------ fast scoring
    @torch.no_grad()
    def loss_context(self, images: torch.Tensor) -> LossContext:
        """What scoring visible sets of ``images`` needs, computed once per batch of images.

        Parameters
        ----------
        images : torch.Tensor
            ``(B, 3, H, W)`` normalised images on the model's device.

        Returns
        -------
        LossContext
            Patch tokens, the per-patch terms of the loss and, for a one-block decoder, the
            decoder's mask-token constants (see :meth:`context_losses`).
        """
        tokens = self.embed(images)
        w, b = self.decoder_pred.weight, self.decoder_pred.bias  # (P, Dd), (P,)
        resid = b - self.targets(images)  # (B, N, P)
        u = resid @ w  # (B, N, Dd): W^T (b - t)
        c = resid.pow(2).sum(-1)  # (B, N): ||b - t||^2
        dec = self._mask_token_attention() if len(self.decoder_blocks) == 1 else None
        cls = self.cls_token + self.pos_embed[:, :1]  # (1, 1, D)
        blk = self.blocks[0]
        embedded = torch.cat([cls.expand(tokens.shape[0], 1, -1), tokens], dim=1)
        qkv0 = blk.attn.qkv(blk.norm1(embedded))
        use_native = (self.native_kernels and images.device.type == "cpu" and self.cls_token.dtype == torch.float32
                      and native.available())
        packed = None
        dec_head = self.config.decoder_embed_dim // self.config.decoder_num_heads
        if use_native and dec is not None and dec_head % 8 == 0:
            _, q0, m0, e0t, _, ev0, es0 = dec
            packed = native.pack_decoder_constants(q0, m0, e0t, ev0, es0)
        return LossContext(tokens, u, c, w.t() @ w, dec, qkv0, embedded, native=use_native, native_decoder=packed)

    def _mask_token_attention(self) -> tuple[torch.Tensor, ...]:
        """Constants of the first decoder block that involve mask tokens only.

        A masked position's input ``mask_token + pos`` does not depend on the visible set, so its
        query, key and value, and the scores of every masked query against every masked key, are
        computed once: ``x0 (N, Dd)`` (the input plus the attention's output-projection bias: the
        residual stream before the projected attention is added), ``q0 (h, N, hd)`` (already
        scaled), ``m0 (h, N, 1)`` (row maxima of the scores), ``e0 = exp(scores - m0)`` stored
        transposed (keys first) ``(h, N, N)``, ``v0 (h, N, hd)``, and the totals over *all* keys
        ``ev0 = e0 @ v0`` ``(h, N, hd)`` and ``es0 = e0.sum(-1)`` ``(h, N)`` (a visible set's
        masked-key sums are these minus its visible keys' terms).
        """
        blk = self.decoder_blocks[0]
        n, dd, h = self.grid.n, self.config.decoder_embed_dim, blk.attn.num_heads
        x0 = (self.mask_token + self.decoder_pos_embed)[0, 1:]  # (N, Dd)
        q0, k0, v0 = blk.attn.qkv(blk.norm1(x0)).view(n, 3, h, dd // h).permute(1, 2, 0, 3)
        q0 = (q0 * (dd // h) ** -0.5).contiguous()
        s0 = q0 @ k0.transpose(1, 2)  # (h, N, N)
        m0 = s0.amax(-1, keepdim=True)
        e0, v0 = torch.exp(s0 - m0), v0.contiguous()
        x0 = x0 + blk.attn.proj.bias if blk.attn.proj.bias is not None else x0
        return x0, q0, m0, e0.transpose(1, 2).contiguous(), v0, e0 @ v0, e0.sum(-1)

    def context_losses(self, ctx: LossContext, visible: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """``L`` of ``M`` visible sets, without materialising predicted pixels.

        With ``pred = W h + b`` the summed squared error of patch ``n`` is
        ``h^T (W^T W) h + 2 h^T W^T (b - t_n) + ||b - t_n||^2``, so only the ``Dd``-wide decoder
        output is needed. For a one-block decoder, a masked position's query, key and value are
        those of ``mask_token + pos`` (precomputed, see :meth:`_mask_token_attention`); its
        softmax over the masked keys comes from precomputed totals, merged (stable softmax) with
        its softmax over the visible tokens; visible positions are not decoded (they are not
        scored). The encoder runs on all ``M`` sets at once, the decoder's attention on blocks of
        :attr:`decoder_block_sets` sets and its MLP on blocks of :attr:`decoder_block_rows` rows
        (cache locality). Without autocast, the blocks update their residual stream in place
        (bias, then one GEMM that adds to it) and keep the wide activations in buffers reused
        from call to call (:func:`_block_`). On a CPU with AVX2 and a C compiler, the encoder's
        and the decoder's attention run in native kernels (:mod:`keypatch.reconstructors.native`;
        same arithmetic, float rounding aside) unless :attr:`native_kernels` is False.

        Parameters
        ----------
        ctx : LossContext
            From :meth:`loss_context`.
        visible : torch.Tensor
            ``(M, k)`` long visible patch indices, distinct within a row.
        image_index : torch.Tensor
            ``(M,)`` long image of each set.

        Returns
        -------
        torch.Tensor
            ``(M,)`` float32 losses. Call it inside :func:`autocast` for reduced precision; the
            final quadratic form is always evaluated in float32.
        """
        m, k = visible.shape
        n = ctx.tokens.shape[1]
        if ctx.decoder is None:
            keep = torch.ones(m, n, device=visible.device).scatter_(1, visible, 0.0)  # (M, N) 1 = masked
            hid = self._decoder_hidden(ctx.tokens, visible, image_index)[:, 1:]  # (M, N, Dd)
            err = self._patch_errors(ctx, hid, image_index[:, None], torch.arange(n, device=visible.device))
            return (err * keep).sum(1) / (keep.sum(1).clamp_min(1.0) * self.config.patch_dim)
        if k >= n:
            return torch.zeros(m, device=visible.device)
        # masked patches of each set, ascending: (M, N-k); a sort, no host synchronisation
        free = torch.ones(m, n, dtype=torch.bool, device=visible.device).scatter_(1, visible, False)
        masked = ((~free).long() * n + torch.arange(n, device=visible.device)).sort(dim=1).values[:, : n - k]
        z = self._encode(ctx.tokens, visible, image_index, ctx)
        step = self.decoder_block_sets
        if m <= step:
            return self._decode_masked(ctx, z, visible, masked, image_index)
        return torch.cat([self._decode_masked(ctx, z[s : s + step], visible[s : s + step], masked[s : s + step],
                                              image_index[s : s + step]) for s in range(0, m, step)])

    def _patch_errors(self, ctx: LossContext, hid: torch.Tensor, img: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Summed squared error of each predicted patch from decoder outputs ``hid (..., Dd)``.

        ``img`` and ``pos`` index (broadcastably) the image and patch of each row of ``hid``.
        Always float32.
        """
        n, dd = ctx.u.shape[1], ctx.u.shape[2]
        flat = (img * n + pos).expand(hid.shape[:-1]).reshape(-1)  # row of each patch in (B N)
        u = ctx.u.view(-1, dd).index_select(0, flat)
        c = ctx.c.view(-1).index_select(0, flat).view(hid.shape[:-1])
        with torch.autocast(hid.device.type, enabled=False):
            hid = hid.float().reshape(-1, dd)
            # h^T G h + 2 h^T u + c, with "G h + 2 u" as one GEMM
            return (torch.linalg.vecdot(hid, torch.addmm(u, hid, ctx.gram, beta=2.0)).view(c.shape) + c)

    def _decode_masked(self, ctx: LossContext, z: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor,
                       image_index: torch.Tensor) -> torch.Tensor:
        """Losses ``(M,)`` from the encoder output ``z (M, k+1, Dd)`` with a one-block decoder."""
        x0, q0, m0, e0t, v0, ev0, es0 = ctx.decoder
        blk = self.decoder_blocks[0]
        m, j, dd = z.shape
        h = q0.shape[0]
        hd = dd // h
        r = masked.shape[1]
        dt = z.dtype
        pos = self.decoder_pos_embed[0].to(dt)[F.pad(visible + 1, (1, 0))]  # (M, k+1, Dd), cls at 0
        kv = F.linear(blk.norm1(z + pos), blk.attn.qkv.weight[dd:], blk.attn.qkv.bias[dd:])
        if ctx.native_decoder is not None and _fast_path(kv, blk.attn.qkv.weight):
            # the same attention in one native kernel, masked rows only (keypatch.reconstructors.native)
            att = native.decoder_attention(ctx.native_decoder, v0, kv, visible, masked)
            return self._masked_errors(ctx, att, masked, image_index)
        kv = kv.view(m, j, 2, h, hd)
        kvis = kv[:, :, 0].permute(2, 3, 0, 1).reshape(h, hd, m * j)  # (h, hd, M j)
        vvis = kv[:, :, 1].permute(2, 0, 1, 3)  # (h, M, j, hd)
        # all in (h, M, N, .) layout; every patch position is queried with its mask-token query
        # (rows of visible positions are computed but not used). The queries are shared by all
        # sets: one product per head, (N, hd) x (hd, M j), rather than M small ones
        sv = torch.bmm(q0.to(dt), kvis).view(h, -1, m, j).transpose(1, 2)  # (h, M, N, j): scores on the visible keys
        # softmax mass on the masked keys: the precomputed totals over all keys minus the visible keys'
        # terms (k columns per set instead of a product with all N)
        ev = e0t.to(dt)[:, visible].transpose(-1, -2)  # (h, M, N, k): exp-scores on the visible patches
        m0 = m0[:, None, :, 0].to(dt)  # (h, 1, N)
        mx = torch.maximum(sv.amax(-1), m0)  # (h, M, N): the stable softmax's row maxima
        pv = torch.exp(sv - mx[..., None])
        alpha = torch.exp(m0 - mx)
        den = (es0.to(dt)[:, None] - ev.sum(-1)).mul_(alpha).add_(pv.sum(-1))  # (h, M, N)
        # one product for both corrections: + visible tokens' values, - visible patches' mask-token
        # values; the totals ev0 come in with one fused multiply-add (few passes over (h, M, N, hd))
        coef = torch.cat([pv, ev.mul(alpha[..., None]).neg_()], dim=-1).div_(den[..., None])
        vals = torch.cat([vvis, v0.to(dt)[:, visible]], dim=2)  # (h, M, j + k, hd)
        num = torch.matmul(coef, vals).addcmul_(ev0.to(dt)[:, None], alpha.div_(den)[..., None])  # (h, M, N, hd)
        # keep the masked positions only: (M * R, Dd) rows, decoded in cache-sized row blocks
        sel = torch.arange(m, device=z.device)[:, None]
        att = num.permute(1, 2, 0, 3)[sel, masked].reshape(m * r, dd)
        return self._masked_errors(ctx, att, masked, image_index)

    def _masked_errors(self, ctx: LossContext, att: torch.Tensor, masked: torch.Tensor,
                       image_index: torch.Tensor) -> torch.Tensor:
        """Losses ``(M,)`` from the attention outputs ``att (M * R, Dd)`` of the masked positions."""
        m, r = masked.shape
        img = image_index[:, None].expand(m, r).reshape(-1)
        pos = masked.reshape(-1)
        rows = self.decoder_block_rows
        err = torch.cat([self._tail(ctx, att[t : t + rows], img[t : t + rows], pos[t : t + rows])
                         for t in range(0, m * r, rows)])
        return err.view(m, r).sum(1) / (r * self.config.patch_dim)

    def _tail(self, ctx: LossContext, att: torch.Tensor, img: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """From attention outputs of masked rows to their summed squared errors (one-block decoder)."""
        blk = self.decoder_blocks[0]
        # ctx.decoder[0] already holds the projection's bias
        if not _fast_path(att, blk.mlp.fc1.weight):
            y = ctx.decoder[0].to(att.dtype)[pos] + F.linear(att, blk.attn.proj.weight)
            y = y + blk.mlp(blk.norm2(y))
        else:
            y = ctx.decoder[0].index_select(0, pos).addmm_(att, blk.attn.proj.weight.t())
            _mlp_(blk.mlp, y, blk.norm2(y), ctx.workspace)
        return self._patch_errors(ctx, self.decoder_norm(y), img, pos)

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def losses(
        self,
        images: torch.Tensor,
        visible: torch.Tensor,
        image_index: torch.Tensor | None = None,
        *,
        chunk_size: int = 256,
        precision: str = "float32",
    ) -> torch.Tensor:
        """``L(S)`` for many visible sets of one or more images, in batched passes.

        Parameters
        ----------
        images : torch.Tensor
            ``(B, 3, H, W)`` normalised images (or ``(3, H, W)`` for one).
        visible : torch.Tensor
            ``(M, k)`` patch indices: one visible set per row, all of size ``k``.
        image_index : torch.Tensor, optional
            ``(M,)`` image of each set; default all 0.
        chunk_size : int
            Sets per forward pass (bounds memory).
        precision : {"float32", "bfloat16"}
            Compute precision; the loss is always accumulated in float32.

        Returns
        -------
        torch.Tensor
            ``(M,)`` float32 losses, on the model's device.
        """
        images, visible, image_index = self._prepare(images, visible, image_index)
        ctx = self.loss_context(images)
        out = torch.empty(visible.shape[0], device=self.device)
        with autocast(self.device, precision):
            for s in range(0, visible.shape[0], chunk_size):
                out[s : s + chunk_size] = self.context_losses(ctx, visible[s : s + chunk_size],
                                                              image_index[s : s + chunk_size])
        return out

    @torch.no_grad()
    def reconstruct(
        self, image: torch.Tensor, visible: torch.Tensor | list[int], *, paste_visible: bool = True
    ) -> torch.Tensor:
        """Rebuild one image from the patches in ``visible``.

        Parameters
        ----------
        image : torch.Tensor
            ``(3, H, W)`` normalised image.
        visible : sequence of int
            The visible patch indices.
        paste_visible : bool
            Put the true visible patches back into the output (as the MAE demo does).

        Returns
        -------
        torch.Tensor
            ``(3, H, W)`` normalised reconstruction.
        """
        images, vis, ii = self._prepare(image[None] if image.dim() == 3 else image, visible, None)
        pred = self.predict_tokens(self.embed(images), vis, ii)
        if paste_visible:
            target = self.targets(images)
            keep = torch.zeros(pred.shape[:2], dtype=torch.bool, device=pred.device)
            keep[0, vis[0]] = True
            pred = torch.where(keep[..., None], target, pred)
        return unpatchify(pred.float(), self.config.patch_size, self.config.in_chans)[0]

    def forward(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Training loss: mean ``L`` over a batch, one visible set per image."""
        ii = torch.arange(images.shape[0], device=images.device)
        pred = self.predict_tokens(self.embed(images), visible, ii)
        return self.masked_mse(pred, self.targets(images), visible).mean()

    def _prepare(
        self, images: torch.Tensor, visible: torch.Tensor | list, image_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.dim() == 3:
            images = images[None]
        c = self.config
        if images.shape[1:] != (c.in_chans, c.image_size, c.image_size):
            raise ValueError(
                f"images must be (B, {c.in_chans}, {c.image_size}, {c.image_size}), got {tuple(images.shape)}"
            )
        visible = torch.as_tensor(visible, dtype=torch.long, device=self.device)
        if visible.dim() == 1:
            visible = visible[None]
        if visible.numel() and (visible.min() < 0 or visible.max() >= c.grid.n):
            raise ValueError(f"patch indices must be in [0, {c.grid.n})")
        if image_index is None:
            image_index = torch.zeros(visible.shape[0], dtype=torch.long, device=self.device)
        image_index = torch.as_tensor(image_index, dtype=torch.long, device=self.device)
        return images.to(self.device, torch.float32), visible, image_index


@dataclass
class LossContext:
    """Per-batch constants for scoring visible sets (see :meth:`MAE.loss_context`).

    Attributes
    ----------
    tokens : torch.Tensor
        ``(B, N, D)`` patch tokens with position embeddings.
    u : torch.Tensor
        ``(B, N, Dd)``: ``W^T (b - t)`` per patch, ``W, b`` = ``decoder_pred``, ``t`` = target pixels.
    c : torch.Tensor
        ``(B, N)``: ``||b - t||^2`` per patch.
    gram : torch.Tensor
        ``(Dd, Dd)``: ``W^T W``.
    decoder : tuple of torch.Tensor or None
        Mask-token constants of a one-block decoder (None for deeper decoders).
    qkv0 : torch.Tensor or None
        ``(B, N+1, 3 D)``: the first encoder block's ``qkv(norm1(.))`` of the cls token and of
        every patch token (a token's projection does not depend on the visible set).
    embedded : torch.Tensor or None
        ``(B, N+1, D)``: the encoder's input rows, the cls token (row 0) and the patch tokens.
    native : bool
        Whether the inference path uses the native CPU attention kernels
        (:mod:`keypatch.reconstructors.native`).
    native_decoder : tuple of torch.Tensor or None
        The decoder constants in the native decoder kernel's layout, when that kernel is used.
    workspace : dict
        Scratch buffers reused from call to call (see :func:`_buffer`).
    """

    tokens: torch.Tensor
    u: torch.Tensor
    c: torch.Tensor
    gram: torch.Tensor
    decoder: tuple[torch.Tensor, ...] | None
    qkv0: torch.Tensor | None = None
    embedded: torch.Tensor | None = None
    native: bool = False
    native_decoder: tuple[torch.Tensor, ...] | None = None
    workspace: dict = field(default_factory=dict)
    """Scratch buffers reused across calls (see :func:`_buffer`)."""


def autocast(device: torch.device, precision: str):
    """Context for ``precision`` ("float32": nothing; "bfloat16": autocast on the device)."""
    if precision in ("float32", "fp32"):
        return nullcontext()
    if precision in ("bfloat16", "bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
