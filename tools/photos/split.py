"""The deterministic train/val split: a hash of each image's bytes and the seed."""

from __future__ import annotations

import hashlib
import re

#: Minimum number of large wallpaper photographs in each of train and val.
MIN_LARGE_PER_SPLIT = 4


def basis_kind(basis: str) -> str:
    return "upstream README" if basis.startswith("upstream README") else basis


def split_fraction(sha: str, seed: int) -> float:
    key = hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest()
    return int(key[:13], 16) / float(16**13)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "img"


def assign_splits(fractions: dict[str, float], large: set[str], val_fraction: float) -> dict[str, str]:
    """``"train"`` or ``"val"`` per image sha: val below ``val_fraction``, then at least
    :data:`MIN_LARGE_PER_SPLIT` of the ``large`` images (or half of them) on each side, moving the
    ones whose fractions lie closest to the other side."""
    split = {sha: ("val" if f < val_fraction else "train") for sha, f in fractions.items()}
    if val_fraction <= 0:
        return split
    ranked = [sha for _, sha in sorted((fractions[s], s) for s in large)]
    need = min(MIN_LARGE_PER_SPLIT, len(ranked) // 2)
    for side, other, order in (("val", "train", ranked), ("train", "val", ranked[::-1])):
        have = sum(split[s] == side for s in ranked)
        for s in order:
            if have >= need:
                break
            if split[s] == other:
                split[s] = side
                have += 1
    return split
