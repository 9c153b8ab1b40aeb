"""Which patches make the better training set? DQ's question, asked of quantized datasets.

A labelled folder is split once into training and test images (seeded, per class). For every seed,
five training sets are made from the training images and a classifier is trained on each:

``all``        every training original;
``dq``         the DQ-selected originals (:func:`keypatch.data.quantize`'s selection, whole images);
``dq-STRAT``   the same selection stored as the patches ``STRAT`` keeps (``attention`` is DQ's,
               KPP's strategies beside it) and rebuilt by the MAE (:class:`keypatch.data.QuantizedDataset`);
``random``     a uniform random subset of the training originals of the same size (per class).

The classifier is a linear probe: a logistic regression on the pooled features of a frozen
ImageNet network (EfficientNet-Lite1 by default, not attention's Lite0), trained full-batch with a
seeded AdamW, tested on the untouched test originals. With a few hundred photos a probe is what
can be trained without overfitting; its accuracy says how much of each class the training images
still show. Each set's stored bytes are reported with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from keypatch.geometry import load_readable
from keypatch.geometry.files import class_folders
from keypatch.reconstructors.mae import MAE


@dataclass
class TrainingRow:
    """One training set of one seed: its name, size, stored bytes and test accuracy."""

    seed: int
    dataset: str
    n_train: int
    stored_bytes: int
    test_accuracy: float


def stratified_split(labels: Sequence[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, test)`` positions: ``round(test_fraction * n_c)`` of each class to the test side (seeded)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    labels = np.asarray(labels)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = max(1, round(test_fraction * len(idx)))
        test += idx[:n_test].tolist()
        train += idx[n_test:].tolist()
    return sorted(train), sorted(test)


@torch.no_grad()
def pooled_features(clf, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The classifier's pooled features of MAE-normalised ``images`` ``(B, 3, H, W)``."""
    return torch.cat([clf.forward(clf.from_mae(images[s:s + batch_size].to(clf.device)))[1].cpu()
                      for s in range(0, images.shape[0], batch_size)])


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 n_classes: int, seed: int, steps: int = 300, lr: float = 0.01, weight_decay: float = 1e-3) -> float:
    """Test accuracy of a logistic regression on standardised features (full batch, seeded AdamW)."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    head = torch.nn.Linear(xs.shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(xs), train_y).backward()
        opt.step()
    with torch.no_grad():
        return (head(xt).argmax(1) == test_y).float().mean().item()


def _link_folder(files: Sequence[Path], labels: Sequence[int], classes: Sequence[str], root: Path) -> Path:
    """A class-per-folder view of ``files`` made of symbolic links (copies where links fail)."""
    import shutil

    for f, y in zip(files, labels, strict=True):
        dst = root / classes[y] / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            try:
                os.symlink(Path(f).resolve(), dst)
            except OSError:
                shutil.copy2(f, dst)
    return root


def dq_training_experiment(root: str | Path, out: str | Path, model: MAE, *, fraction: float = 0.3,
                           drop: float = 0.75, strategies: Sequence[str] = ("attention", "screened"),
                           seeds: Sequence[int] = (0, 1, 2, 3, 4), test_fraction: float = 0.3, bins: int = 10,
                           features: str = "efficientnet-lite1", progress: bool = True) -> list[TrainingRow]:
    """Train a linear probe on each training set of every seed (see the module docstring).

    The quantized datasets go to ``out/q-STRAT-sSEED`` and share ``out/work`` (embeddings and
    picks), so an image selected by several seeds is given its patches once, and a re-run
    recomputes nothing stored.
    """
    from keypatch.classifiers import get_classifier
    from keypatch.data import QuantizedDataset, quantize

    out = Path(out)
    found = class_folders(root)
    if found is None or len(found[2]) < 2:
        raise ValueError(f"{root} needs at least two class sub-folders with images")
    files, labels, classes = found
    kept, images = load_readable(files, model.config.image_size)
    files, labels = [files[i] for i in kept], [labels[i] for i in kept]
    train, test = stratified_split(labels, test_fraction, 0)
    train_dir = _link_folder([files[i] for i in train], [labels[i] for i in train], classes, out / "train")
    clf = get_classifier(features, device=model.device)
    feats = pooled_features(clf, images)
    y = torch.tensor(labels)
    by_name = {f"{classes[labels[i]]}/{files[i].name}": i for i in train}
    size = {i: files[i].stat().st_size for i in train}
    test_x, test_y = feats[test], y[test]

    def probe(idx_or_x, ys, seed: int) -> float:
        return linear_probe(idx_or_x, ys, test_x, test_y, len(classes), seed)

    rows = []
    for seed in seeds:
        rows.append(TrainingRow(seed, "all", len(train), sum(size.values()), probe(feats[train], y[train], seed)))
        selected: list[int] | None = None
        for strategy in strategies:
            q = quantize(train_dir, fraction, drop, strategy, out / f"q-{strategy}-s{seed}", bins=bins, seed=seed,
                         model=model, work=out / "work", progress=progress)
            names = [e["name"] for e in q.manifest["images"]]
            idx = [by_name[n] for n in names]
            if selected is None:
                selected = idx
                rows.append(TrainingRow(seed, "dq", len(idx), sum(size[i] for i in idx),
                                        probe(feats[idx], y[idx], seed)))
            ds = QuantizedDataset(q.out, model=model)
            rebuilt = torch.cat([ds.reconstruction(list(range(s, min(len(ds), s + 16))))
                                 for s in range(0, len(ds), 16)])
            stored = q.bytes["shards"] + q.bytes["manifest"]
            rows.append(TrainingRow(seed, f"dq-{strategy}", len(idx), stored,
                                    probe(pooled_features(clf, rebuilt), y[idx], seed)))
        assert selected is not None
        rng = np.random.default_rng(1000 + seed)
        rand = []
        for c in range(len(classes)):
            members = [i for i in train if labels[i] == c]
            n_c = sum(labels[i] == c for i in selected)
            rand += rng.choice(members, size=n_c, replace=False).tolist()
        rows.append(TrainingRow(seed, "random", len(rand), sum(size[i] for i in rand),
                                probe(feats[rand], y[rand], seed)))
    return rows


_T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
"""Student's t quantile 0.975 for n samples (n - 1 degrees of freedom)."""


def _t95(n: int) -> float:
    return _T975.get(n, 1.96 + 2.5 / max(n - 1, 1))  # within 1% of the quantile for n > 10


def _interval(v: np.ndarray) -> tuple[float, float]:
    if len(v) < 2:
        return float("nan"), float("nan")
    h = _t95(len(v)) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - h), float(v.mean() + h)


def summarize_training(rows: Sequence[TrainingRow], baseline: str = "dq-attention") -> list[dict]:
    """Per training set: mean test accuracy over seeds with a 95% t-interval, its mean stored bytes,
    and the paired (same seed) difference from ``baseline`` with its 95% t-interval."""
    names = list(dict.fromkeys(r.dataset for r in rows))
    base = {r.seed: r.test_accuracy for r in rows if r.dataset == baseline}
    out = []
    for name in names:
        mine = [r for r in rows if r.dataset == name]
        acc = np.array([r.test_accuracy for r in mine])
        lo, hi = _interval(acc)
        row = {"dataset": name, "seeds": len(mine), "n_train": float(np.mean([r.n_train for r in mine])),
               "bytes": float(np.mean([r.stored_bytes for r in mine])), "accuracy": float(acc.mean()), "lo": lo,
               "hi": hi}
        d = np.array([r.test_accuracy - base[r.seed] for r in mine if r.seed in base])
        if name != baseline and len(d) > 1:
            dlo, dhi = _interval(d)
            row.update(diff=float(d.mean()), diff_lo=dlo, diff_hi=dhi, real=bool(dlo > 0 or dhi < 0))
        out.append(row)
    return out
