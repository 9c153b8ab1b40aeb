"""The paper's initial-patch ablation: greedy from the central patch vs greedy from nothing.

Greedy search is prefix-consistent: the first ``j`` patches of a run to ``k`` are exactly the
answer for ``j``. So one run per image and start, to the largest ratio, gives the whole curve
``L`` vs ratio (``losses[j-1]`` is ``L`` at ratio ``j / N``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from keypatch.api import propose_batch, resolve_model
from keypatch.geometry import ImageLike, load_readable

log = logging.getLogger("keypatch.ablation")


def ablation_curves(images: Sequence[ImageLike], max_ratio: float = 0.25, model=None, device: str = "auto",
                    progress: bool = True, **options) -> dict[str, np.ndarray]:
    """Per-image loss curves for ``start="center"`` and ``start="none"``.

    Returns
    -------
    dict
        ``{"center": (n_images, k), "none": (n_images, k)}``: ``L`` after 1..k patches.
    """
    mae = resolve_model(model, device)
    out: dict[str, list[list[float]]] = {"center": [], "none": []}
    for img in tqdm(images, desc="ablation", unit="img", disable=not progress):
        kept, x = load_readable([img], mae.config.image_size)  # an unreadable image is skipped with a warning
        if not kept:
            continue
        for start in out:
            out[start].append(propose_batch([x[0]], max_ratio, "greedy", mae, start=start, **options)[0].losses)
        log.info("ablation: %s: L %.4f from the centre, %.4f from nothing", img if isinstance(img, (str, Path))
                 else "image", out["center"][-1][-1], out["none"][-1][-1])
    if not out["center"]:
        raise ValueError(f"none of the {len(images)} images could be read")
    return {k: np.asarray(v) for k, v in out.items()}


def write_ablation(curves: dict[str, np.ndarray], n_patches: int, out_dir: Path) -> Path:
    """Write ``ablation.csv`` (ratio, k, mean L per start, fraction of images where "none" wins)
    and ``ablation.png``; returns the CSV path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    c, n = curves["center"], curves["none"]
    ks = np.arange(1, c.shape[1] + 1)
    path = out_dir / "ablation.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["k", "ratio", "mean_loss_center", "mean_loss_none", "none_better_fraction"])
        for j, k in enumerate(ks):
            w.writerow([k, f"{k / n_patches:.4f}", f"{c[:, j].mean():.5f}", f"{n[:, j].mean():.5f}",
                        f"{(n[:, j] < c[:, j]).mean():.3f}"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks / n_patches, c.mean(0), label="start = central patch (paper)")
    ax.plot(ks / n_patches, n.mean(0), label="start = empty set (ablation)")
    ax.set_xlabel("selection ratio r")
    ax.set_ylabel(f"mean L(S) over {c.shape[0]} images")
    ax.set_title("KPP initial-patch ablation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "ablation.png", dpi=120)
    plt.close(fig)
    return path
