"""Matrix-product FLOPs per image of exact greedy KPP: ours against the paper's loop.

An analytic count (2 FLOPs per multiply-add, the matrix products only) for a one-block decoder,
used in benchmarks/README.md to bound the speed-up any exact implementation can reach::

    python benchmarks/flops.py                      # the embedded default model's shapes
    python benchmarks/flops.py --dim 768 --depth 12 --decoder-dim 512   # ViT-B encoder, 1-block decoder
"""

from __future__ import annotations

import argparse


def flops(k: int, n: int = 196, dim: int = 192, depth: int = 6, ddim: int = 128, pixels: int = 768):
    """``(reference, ours, evaluations)`` for ``k`` patches from the centre start."""
    ref = ours = 0.0
    evals = 0
    for j in range(1, k):  # j patches chosen, n - j candidates
        c, t, masked = n - j, j + 2, n - j - 1  # t: cls + chosen + candidate tokens
        enc = t * depth * 12 * dim * dim + depth * 2 * t * t * dim
        ref_dec = t * dim * ddim + (n + 1) * 12 * ddim * ddim + 2 * (n + 1) ** 2 * ddim + n * ddim * pixels
        our_enc = enc - t * 3 * dim * dim  # first block's qkv precomputed per patch
        # visible keys/values, masked rows (proj + MLP + quadratic loss), attention on visible keys
        our_dec = (t * dim * ddim + t * 2 * ddim * ddim + masked * 10 * ddim * ddim
                   + 2 * n * t * ddim + n * (j + 1) * ddim)
        ref += c * (enc + ref_dec)
        ours += c * (our_enc + our_dec)
        evals += c
    return 2 * ref, 2 * ours, evals


def evaluation_flops(config, visible: int) -> float:
    """Matrix-product FLOPs of one plain MAE evaluation (encoder on ``visible`` patches + cls,
    decoder on all ``N + 1`` positions, every patch predicted) for an
    :class:`~keypatch.reconstructors.MAEConfig`: the model FLOPs that achieved TFLOP/s count."""
    n, t = config.grid.n, visible + 1
    d, dd, r = config.embed_dim, config.decoder_embed_dim, config.mlp_ratio
    per_token = (4 + 2 * r) * 2  # qkv, proj and the MLP, in units of width**2
    enc = config.depth * (per_token * d * d * t + 4 * t * t * d)
    dec = config.decoder_depth * (per_token * dd * dd * (n + 1) + 4 * (n + 1) ** 2 * dd)
    return enc + 2 * d * dd * t + dec + 2 * dd * config.patch_dim * n


def greedy_flops(config, k: int, start: int = 1) -> float:
    """Model FLOPs of exact greedy to ``k`` patches from ``start`` chosen ones (the centre: 1)."""
    n = config.grid.n
    first = evaluation_flops(config, start) if start else 0.0  # L of the start set
    return first + sum((n - j) * evaluation_flops(config, j + 1) for j in range(start, k))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--decoder-dim", type=int, default=128)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.25])
    args = ap.parse_args()
    for r in args.ratios:
        k = round(r * 196)
        ref, ours, evals = flops(k, dim=args.dim, depth=args.depth, ddim=args.decoder_dim)
        print(f"r = {r}: {evals} evaluations, paper's loop {ref / 1e9:.0f} GFLOP, ours {ours / 1e9:.0f} GFLOP "
              f"per image (ratio {ref / ours:.2f})")


if __name__ == "__main__":
    main()
