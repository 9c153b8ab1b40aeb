"""In-place inference helpers for the scoring fast path: transformer blocks without fresh activations.

On CPUs a fresh multi-megabyte activation per call costs page faults and cache misses (the
allocator returns large blocks to the system). These helpers fold the residual additions into
the matrix products and write the wide activations into buffers reused from call to call. They
compute what :meth:`keypatch.reconstructors.mae.Block.forward` computes, up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from keypatch.reconstructors.mae import Block, Mlp

Workspace = dict
"""Scratch buffers keyed by ``(name, width)``, kept for the life of a scoring context."""


def inplace_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the in-place helpers apply: no autograd, no autocast, and ``x`` in the weights' dtype."""
    return not (torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type) or x.dtype != weight.dtype)


def buffer(workspace: Workspace, key: str, rows: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """A ``(rows, width)`` scratch tensor from ``workspace`` (grown when too small).

    The caller must be done with the previous contents of ``key``.
    """
    buf = workspace.get((key, width))
    if buf is None or buf.shape[0] < rows or buf.dtype != like.dtype or buf.device != like.device:
        buf = workspace[(key, width)] = torch.empty(rows, width, dtype=like.dtype, device=like.device)
    return buf[:rows]


def linear_into(lin: nn.Linear, x: torch.Tensor, workspace: Workspace, key: str) -> torch.Tensor:
    """``lin(x)`` for 2-D ``x``, written into the reused buffer ``key``."""
    out = buffer(workspace, key, x.shape[0], lin.out_features, x)
    if lin.bias is None:
        return torch.mm(x, lin.weight.t(), out=out)
    return torch.addmm(lin.bias, x, lin.weight.t(), out=out)


def add_linear_(x: torch.Tensor, lin: nn.Linear, a: torch.Tensor) -> torch.Tensor:
    """``x += lin(a)`` in place, for 2-D ``x`` and ``a`` (the residual update as one GEMM)."""
    if lin.bias is not None:
        x.add_(lin.bias)
    return x.addmm_(a, lin.weight.t())


def mlp_(mlp: Mlp, x: torch.Tensor, h: torch.Tensor, workspace: Workspace) -> torch.Tensor:
    """``x += mlp(h)`` in place for 2-D ``x, h``, the wide hidden layer in a reused buffer."""
    hid = linear_into(mlp.fc1, h, workspace, "hidden")
    # in place: out of place into a second buffer runs on both threads, but its extra memory
    # traffic made the whole search slower on a 2-core CPU (352 vs 268 ms of GELU per image at r = 0.1)
    torch.ops.aten.gelu_(hid)
    return add_linear_(x, mlp.fc2, hid)


def block_(blk: Block, x: torch.Tensor, workspace: Workspace, qkv: torch.Tensor | None = None) -> torch.Tensor:
    """``x = blk(x)`` in place, ``x (M, n, D)`` contiguous; ``qkv`` (``(M n, 3 D)``) replaces the first projection."""
    m, n, d = x.shape
    x2 = x.view(m * n, d)
    if qkv is None:
        qkv = linear_into(blk.attn.qkv, blk.norm1(x2), workspace, "qkv")
    att = blk.attn.mix(qkv.view(m, n, -1)).view(m * n, d)
    add_linear_(x2, blk.attn.proj, att)
    mlp_(blk.mlp, x2, blk.norm2(x2), workspace)
    return x


def run_block(blk: Block, x: torch.Tensor, workspace: Workspace) -> torch.Tensor:
    """``blk(x)``: in place (:func:`block_`) where :func:`inplace_ok`, else the module's forward."""
    if inplace_ok(x, blk.attn.qkv.weight) and x.is_contiguous():
        return block_(blk, x, workspace)
    return blk(x)
