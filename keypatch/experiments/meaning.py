"""Do key patches keep an image's meaning? Originals against their MAE reconstructions, judged by a classifier.

For every image, strategy and keep ratio, the image is rebuilt by the MAE from the strategy's
patches (kept patches pasted back, as DQ trains on them), and a pretrained ImageNet classifier
(the *judge*) compares the rebuilt image with the original:

``top1``    the judge's top class is the same (1) or not (0);
``top5``    the original's top class is among the rebuilt image's five best;
``kl``      KL divergence of the rebuilt image's class distribution from the original's (nats);
``cosine``  cosine similarity of the judge's pooled features;
``psnr``    PSNR of the whole rebuilt image against the original at the model's size (dB, RGB in [0, 1]);
``loss``    the MAE's ``L`` of the kept set (the set itself is the row's ``patches``).

Attention patches come from GradCAM++ of a classifier (EfficientNet-Lite0 by default), so a judge
that is that classifier favours them: the default judge is EfficientNet-Lite1, a different network.
:func:`summarize` gives each mean with a 95% bootstrap interval and each strategy's paired
difference from a baseline with its interval, per subset (images the MAE saw in training apart).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from keypatch.experiments.classify import patches_at_ratios
from keypatch.geometry import denormalize, load_readable
from keypatch.geometry.files import list_image_files
from keypatch.objective import losses
from keypatch.reconstructors.mae import MAE
from keypatch.store.record import sha256_file

MEASURES = ("top1", "top5", "kl", "cosine", "psnr", "loss")
"""The per-image measures, in column order."""

FIELDS = ("image", "sha256", "subset", "strategy", "ratio", *MEASURES, "patches")


@torch.no_grad()
def judge_pairs(judge, originals: torch.Tensor, rebuilt: torch.Tensor,
                reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The judge's measures between MAE-normalised ``originals`` and ``rebuilt`` ``(B, 3, H, W)``;
    ``reference`` is the judge's ``(logits, features)`` of ``originals`` when already computed."""
    lo, fo = reference if reference is not None else judge.forward(judge.from_mae(originals))
    lr, fr = judge.forward(judge.from_mae(rebuilt))
    po, log_pr = lo.softmax(1), lr.log_softmax(1)
    top = lo.argmax(1)
    a = denormalize(originals).clamp(0, 1)
    b = denormalize(rebuilt).clamp(0, 1)
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return {
        "top1": (lr.argmax(1) == top).float(),
        "top5": (lr.topk(5, dim=1).indices == top[:, None]).any(1).float(),
        "kl": (po * (lo.log_softmax(1) - log_pr)).sum(1),
        "cosine": F.cosine_similarity(fo, fr, dim=1),
        "psnr": 10 * torch.log10(1.0 / mse),
    }


def _done(csv_path: Path) -> set[tuple[str, str, float]]:
    if not csv_path.is_file():
        return set()
    with open(csv_path, newline="") as f:
        return {(r["sha256"], r["strategy"], float(r["ratio"])) for r in csv.DictReader(f)}


def _with_fields(csv_path: Path) -> None:
    """Rewrite ``csv_path`` with the columns of :data:`FIELDS` if it was written with others (a CSV of
    an earlier version: its rows keep their values, a column it lacks is left empty), so that rows
    appended now line up with the header."""
    if not csv_path.is_file():
        return
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) == FIELDS:
            return
        rows = list(reader)
    tmp = csv_path.with_name(csv_path.name + ".part")
    with open(tmp, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=FIELDS)
        out.writeheader()
        out.writerows({k: r.get(k) or "" for k in FIELDS} for r in rows)
    tmp.replace(csv_path)


def meaning_experiment(paths, ratios: Sequence[float], strategies: Sequence[str], model: MAE, csv_path: str | Path,
                       *, judge: str = "efficientnet-lite1", seen: Sequence[str | Path] = (), seed: int = 0,
                       batch_size: int = 8, progress: bool = True, **options) -> Path:
    """Measure every image under ``paths`` at every ratio and strategy; rows appended to ``csv_path``.

    Rows already in ``csv_path`` (same image content, strategy and ratio) are not recomputed, so an
    interrupted run resumes and a second call can add ratios or images. Images whose content is
    also under a path of ``seen`` (the MAE's training photos) get subset ``"seen"``, others
    ``"unseen"``. Patches come from :func:`keypatch.experiments.classify.patches_at_ratios`.
    """
    from tqdm.auto import tqdm

    from keypatch.classifiers import get_classifier

    csv_path = Path(csv_path)
    files = list_image_files(paths)
    seen_shas = {sha256_file(f) for f in list_image_files(list(seen))} if seen else set()
    kept, images = load_readable(files, model.config.image_size)
    files = [files[i] for i in kept]
    shas = [sha256_file(f) for f in files]
    clf = get_classifier(judge, device=model.device)
    _with_fields(csv_path)
    done = _done(csv_path)
    new_file = not csv_path.is_file()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    reference: tuple[torch.Tensor, torch.Tensor] | None = None  # the originals, judged once for every strategy

    with open(csv_path, "a", newline="") as f:
        out = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            out.writeheader()
        for strategy in strategies:
            todo = [i for i, s in enumerate(shas) if any((s, strategy, float(r)) not in done for r in ratios)]
            if not todo:
                continue
            x = images[todo].to(model.device)
            if reference is None:
                with torch.no_grad():
                    judged = [clf.forward(clf.from_mae(images[s:s + batch_size].to(model.device)))
                              for s in range(0, len(images), batch_size)]
                reference = (torch.cat([lo for lo, _ in judged]), torch.cat([fo for _, fo in judged]))
            chosen = patches_at_ratios(x, list(ratios), strategy, model, seed, batch_size, progress, **options)
            for r in tqdm(ratios, desc=f"judging {strategy}", disable=not progress):
                for s in range(0, len(todo), batch_size):
                    part = list(range(s, min(len(todo), s + batch_size)))
                    vis = chosen[r][part]
                    rebuilt = model.reconstruct(x[part], vis)
                    rows = [todo[i] for i in part]
                    measures = judge_pairs(clf, x[part], rebuilt, (reference[0][rows], reference[1][rows]))
                    measures["loss"] = losses(model, x[part], vis, torch.arange(len(part), device=model.device))
                    for j, i in enumerate(part):
                        n = todo[i]
                        if (shas[n], strategy, float(r)) in done:
                            continue
                        out.writerow({"image": files[n].name, "sha256": shas[n],
                                      "subset": "seen" if shas[n] in seen_shas else "unseen", "strategy": strategy,
                                      "ratio": float(r), **{k: f"{float(v[j]):.6g}" for k, v in measures.items()},
                                      "patches": " ".join(str(int(p)) for p in vis[j].tolist())})
                f.flush()
    return csv_path


def read_rows(csv_path: str | Path) -> list[dict]:
    """The rows of a meaning CSV, numbers as floats."""
    with open(csv_path, newline="") as f:
        return [{**r, "ratio": float(r["ratio"]), **{m: float(r[m]) for m in MEASURES}} for r in csv.DictReader(f)]


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(rows: Sequence[dict], baseline: str = "random", subsets: Sequence[str] = ("all", "unseen", "seen"),
              n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per subset, ratio, strategy and measure: ``n``, ``mean``, its 95% interval, and the paired
    difference from ``baseline`` on the same images with its interval (``diff``, ``diff_lo``,
    ``diff_hi``; a difference whose interval excludes 0 is marked ``real``)."""
    table = []
    for subset in subsets:
        sub = [r for r in rows if subset == "all" or r["subset"] == subset]
        for ratio in sorted({r["ratio"] for r in sub}):
            at = [r for r in sub if r["ratio"] == ratio]
            base = {r["sha256"]: r for r in at if r["strategy"] == baseline}
            for strategy in sorted({r["strategy"] for r in at}):
                mine = [r for r in at if r["strategy"] == strategy]
                for m in MEASURES:
                    v = np.array([r[m] for r in mine])
                    lo, hi = bootstrap_ci(v, n_boot, seed)
                    row = {"subset": subset, "ratio": ratio, "strategy": strategy, "measure": m, "n": len(v),
                           "mean": float(v.mean()), "lo": lo, "hi": hi}
                    paired = [(r[m], base[r["sha256"]][m]) for r in mine if r["sha256"] in base]
                    if strategy != baseline and len(paired) > 1:
                        d = np.array([a - b for a, b in paired])
                        dlo, dhi = bootstrap_ci(d, n_boot, seed)
                        row.update(diff=float(d.mean()), diff_lo=dlo, diff_hi=dhi, real=bool(dlo > 0 or dhi < 0))
                    table.append(row)
    return table


def markdown(summary: Sequence[dict], subset: str = "all", measures: Sequence[str] = MEASURES) -> str:
    """One table per measure: strategies as rows, ratios as columns, ``mean [lo, hi]``."""
    parts = []
    rows = [r for r in summary if r["subset"] == subset]
    ratios = sorted({r["ratio"] for r in rows})
    for m in measures:
        cells = {(r["strategy"], r["ratio"]): r for r in rows if r["measure"] == m}
        if not cells:
            continue
        head = f"| {m} ({subset}) | " + " | ".join(f"r = {q:g}" for q in ratios) + " |"
        lines = [head, "|---" * (len(ratios) + 1) + "|"]
        for s in sorted({k[0] for k in cells}):
            vals = []
            for q in ratios:
                c = cells.get((s, q))
                vals.append("" if c is None else f"{c['mean']:.3g} [{c['lo']:.3g}, {c['hi']:.3g}] (n={c['n']})")
            lines.append(f"| {s} | " + " | ".join(vals) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot(summary: Sequence[dict], path: str | Path, subset: str = "all", title: str = "",
         measures: Sequence[str] = MEASURES) -> Path:
    """Each of ``measures`` against the keep ratio, one line per strategy with its 95% interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary if r["subset"] == subset]
    fig, axes = plt.subplots(1, len(measures), figsize=(4 * len(measures), 3.4))
    for ax, m in zip(axes, measures, strict=True):
        for s in sorted({r["strategy"] for r in rows}):
            pts = sorted((r["ratio"], r["mean"], r["lo"], r["hi"]) for r in rows if r["strategy"] == s
                         and r["measure"] == m)
            if not pts:
                continue
            q, mean, lo, hi = map(np.array, zip(*pts, strict=True))
            ax.plot(q, mean, marker="o", label=s)
            ax.fill_between(q, lo, hi, alpha=0.2)
        ax.set_xscale("log")
        ratios = sorted({r["ratio"] for r in rows})
        ax.set_xticks(ratios, [f"{q:g}" for q in ratios])
        ax.minorticks_off()
        ax.set_xlabel("keep ratio")
        ax.set_title(m)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
