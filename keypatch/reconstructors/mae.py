"""The masked autoencoder (He et al., 2022): a ViT encoder on the visible patches, a light decoder on all.

The parameter names follow the official facebookresearch/mae checkpoints (``blocks.N.attn.qkv``,
``decoder_blocks.N...``, ``decoder_pred``), so those load without renaming. The encoder sees the
visible tokens only (plus the cls token); the decoder sees all ``N + 1`` positions, mask tokens
where patches are hidden, and predicts every patch's normalised pixels. This module is the plain
model (training forward, :meth:`MAE.reconstruct`); scoring many visible sets fast is
:mod:`keypatch.reconstructors.scoring`, which computes the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keypatch.geometry import PatchGrid, patchify, unpatchify
from keypatch.reconstructors.config import MAEConfig
from keypatch.reconstructors.precision import ieee_convolutions


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
            # two batched matmuls beat the fused CPU kernel on short sequences (slower on long ones;
            # docs/results.md)
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
        """Patch tokens with position embeddings, ``(B, N, D)``; computed once per image (a float32
        convolution in full float32 on a GPU too: :func:`~keypatch.reconstructors.precision.ieee_convolutions`)."""
        with ieee_convolutions(images.device):
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
        z = self.encode(tokens, visible, image_index)
        return self.decoder_pred(self.decode(z, visible, tokens.shape[1]))[:, 1:]

    def encode(self, tokens: torch.Tensor, visible: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Encoder on ``[cls] + visible`` tokens, projected to the decoder width: ``(M, k+1, Dd)``."""
        x = tokens[image_index[:, None], visible]  # (M, k, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).to(x.dtype).expand(visible.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.decoder_embed(self.norm(x))

    def decode(self, z: torch.Tensor, visible: torch.Tensor, n: int) -> torch.Tensor:
        """Decoder output after ``decoder_norm`` at all ``N + 1`` positions, ``(M, N+1, Dd)``.

        ``z`` ``(M, k+1, Dd)`` from :meth:`encode` fills the cls and visible positions; every other
        position gets the mask token; then the decoder's position embedding and blocks.
        """
        m, k = visible.shape
        dd = z.shape[-1]
        full = self.mask_token.to(z.dtype).expand(m, n + 1, dd).clone()
        full[:, :1] = z[:, :1]
        full.scatter_(1, (visible + 1)[..., None].expand(m, k, dd), z[:, 1:])
        x = full + self.decoder_pos_embed.to(z.dtype)
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

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def reconstruct(
        self, image: torch.Tensor, visible: torch.Tensor | list[int], *, paste_visible: bool = True
    ) -> torch.Tensor:
        """Rebuild images from the patches in ``visible``.

        Parameters
        ----------
        image : torch.Tensor
            ``(3, H, W)`` normalised image, or a batch ``(B, 3, H, W)``. Only the visible patches'
            pixels are read.
        visible : sequence of int, or (B, k) ints
            The visible patch indices (one row per image of a batch; every row the same length).
        paste_visible : bool
            Put the true visible patches back into the output (as the MAE demo does).

        Returns
        -------
        torch.Tensor
            ``(3, H, W)`` normalised reconstruction, ``(B, 3, H, W)`` for a batch.
        """
        batched = image.dim() == 4
        images = image if batched else image[None]
        vis = torch.as_tensor(visible, dtype=torch.long)
        vis = vis if vis.dim() == 2 else vis[None]
        if vis.shape[0] != images.shape[0]:
            raise ValueError(f"{vis.shape[0]} visible sets for {images.shape[0]} images")
        images, vis, ii = self.prepare_inputs(images, vis, torch.arange(images.shape[0]))
        pred = self.predict_tokens(self.embed(images), vis, ii)
        if paste_visible:
            keep = torch.zeros(pred.shape[:2], dtype=torch.bool, device=pred.device)
            keep.scatter_(1, vis, True)
            pred = torch.where(keep[..., None], self.targets(images), pred)
        out = unpatchify(pred.float(), self.config.patch_size, self.config.in_chans)
        return out if batched else out[0]

    def forward(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Training loss: mean ``L`` over a batch, one visible set per image."""
        ii = torch.arange(images.shape[0], device=images.device)
        pred = self.predict_tokens(self.embed(images), visible, ii)
        return self.masked_mse(pred, self.targets(images), visible).mean()

    def prepare_inputs(
        self, images: torch.Tensor, visible: torch.Tensor | list, image_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images (B, 3, H, W) float32, visible (M, k) long, image_index (M,) long)`` on the model's
        device, checked: a ValueError for images of the wrong shape or indices outside the grid."""
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
