"""A faithful re-implementation of the greedy loop of the KPP paper's code, for benchmarking only.

The paper's search (``KPP_main.py`` / ``KPP_utils.search`` in CA-TT-AC/key-patch-proposer) works
on one image at a time and, at every step, builds from scratch, for *all* remaining candidates
at once (one batch):

* the visible index lists ``chosen + [candidate]`` and the gathered visible tokens;
* the full permutation ``ids_keep`` (visible first, then the masked patches in order), its
  inverse ``ids_restore`` by ``argsort`` and the binary mask by ``gather``;
* the encoder pass on ``[cls] + visible``; the decoder input by concatenating mask tokens and
  un-shuffling with ``gather``; the decoder pass on all ``N + 1`` positions;
* the full ``(C, N, p*p*3)`` pixel prediction, the target by ``patchify`` and the per-set
  masked MSE; then ``argmin``.

This module does the same, in float32, with the weights of a :class:`keypatch.reconstructors.MAE`
(the same network as the fast path). The transformer blocks are evaluated as the paper's code
evaluates them (timm 0.3.2 ``Block``: pre-norm, attention as ``softmax(q k^T / sqrt(d)) v`` with
explicit matrices, GELU MLP); ``fused=True`` uses keypatch's own blocks (PyTorch's fused
``scaled_dot_product_attention``) instead, to show how much of the speed-up fusion alone gives.
It is not a registered strategy; ``benchmarks/bench_kpp.py`` times it against
:class:`keypatch.proposers.greedy.Greedy`.
It starts from the central patch like ``Greedy(start="center")`` by default, so that the two must
choose the same patches; ``start=98``, :func:`reference_count` and :func:`load_reference_image`
give the authors' released behaviour (start patch, patch count, resize), which keypatch's
``preset="reference"`` reproduces (``tests/regression/test_reference.py``).
"""

from __future__ import annotations

import torch

from keypatch.geometry import patchify
from keypatch.reconstructors.mae import MAE, Block


def _step_inputs(n: int, chosen: list[int], device: torch.device):
    """Index tensors of one step, rebuilt from Python lists as the reference does."""
    remaining = sorted(set(range(n)) - set(chosen))
    c = len(remaining)
    keep = torch.cat(
        [torch.tensor(chosen).unsqueeze(0).expand(c, -1), torch.tensor(remaining).unsqueeze(1)], dim=1
    ).to(device)  # (C, j+1): the visible patches of each candidate set
    everything = torch.arange(n).repeat(c, 1).to(device)
    is_masked = torch.ones_like(everything).scatter_(1, keep, 0).bool()
    masked = everything[is_masked].reshape(c, -1)  # (C, N-j-1), ascending
    ids_restore = torch.argsort(torch.cat([keep, masked], dim=1), dim=1)
    mask = torch.ones(c, n, device=device)
    mask[:, : keep.shape[1]] = 0
    mask = torch.gather(mask, 1, ids_restore)  # 1 = masked, in patch order
    return remaining, keep, ids_restore, mask


def _block(blk: Block, x: torch.Tensor, fused: bool) -> torch.Tensor:
    """One transformer block, as timm 0.3.2 computes it (or keypatch's fused block)."""
    if fused:
        return blk(x)
    b, n, c = x.shape
    h = blk.attn.num_heads
    qkv = blk.attn.qkv(blk.norm1(x)).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (c // h) ** -0.5).softmax(dim=-1)
    x = x + blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
    return x + blk.mlp(blk.norm2(x))


def _forward(model: MAE, tokens: torch.Tensor, keep: torch.Tensor, ids_restore: torch.Tensor,
             fused: bool = False) -> torch.Tensor:
    """Encoder on the visible tokens, decoder on all positions: ``(C, N, p*p*3)`` predictions."""
    c = keep.shape[0]
    x = tokens.expand(c, -1, -1)[torch.arange(c, device=keep.device).unsqueeze(1), keep]
    cls = model.cls_token + model.pos_embed[:, :1, :]
    x = torch.cat([cls.expand(c, -1, -1), x], dim=1)
    for blk in model.blocks:
        x = _block(blk, x, fused)
    x = model.decoder_embed(model.norm(x))
    n = ids_restore.shape[1]
    mask_tokens = model.mask_token.repeat(c, n + 1 - x.shape[1], 1)
    rest = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    rest = torch.gather(rest, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], rest], dim=1) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        x = _block(blk, x, fused)
    return model.decoder_pred(model.decoder_norm(x))[:, 1:, :]


def _batch_loss(model: MAE, image: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    target = patchify(image, model.config.patch_size)
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum(dim=-1) / mask.sum(dim=-1)


def load_reference_image(path, size: int = 224) -> torch.Tensor:
    """An image file as the authors' code reads it: ``Image.open(path).convert("RGB")``, then
    ``transforms.Resize((size, size))`` (on a PIL image: PIL's bilinear filter), ``ToTensor`` and
    ``Normalize`` with the ImageNet mean and std; ``(3, size, size)``."""
    import numpy as np
    from PIL import Image

    pil = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (x - mean) / std


def reference_count(n: int, ratio: float) -> int:
    """Patches the authors' loop ends with: its start patch, then ``int(n * ratio)`` more."""
    return int(n * ratio) + 1


@torch.no_grad()
def reference_kpp(model: MAE, image: torch.Tensor, k: int, fused: bool = False,
                  start: int | None = None) -> tuple[list[int], list[float]]:
    """Greedy KPP of one image the way the paper's loop computes it.

    Parameters
    ----------
    model : MAE
        The reconstructor (float32).
    image : torch.Tensor
        ``(3, H, W)`` or ``(1, 3, H, W)`` normalised image on the model's device.
    k : int
        Patches to choose, the start patch included.
    fused : bool
        Use keypatch's blocks (fused attention) instead of timm 0.3.2's explicit attention.
    start : int, optional
        The first patch: the centre by default (the paper's text, keypatch's ``start="center"``);
        98 in the authors' released code (``KPP_main.py``: ``patch_list = [98]``).

    Returns
    -------
    patches : list of int
        In order of choice (the start patch first).
    losses : list of float
        The minimum ``L`` of each step (one fewer than ``patches``: the start is not scored).
    """
    image = image if image.dim() == 4 else image[None]
    tokens = model.embed(image)
    n = tokens.shape[1]
    chosen = [model.grid.center if start is None else int(start)]
    losses: list[float] = []
    while len(chosen) < k:
        remaining, keep, ids_restore, mask = _step_inputs(n, chosen, tokens.device)
        loss = _batch_loss(model, image, _forward(model, tokens, keep, ids_restore, fused), mask)
        losses.append(float(loss.min().cpu()))
        chosen.append(int(remaining[int(torch.argmin(loss))]))
    return chosen, losses
