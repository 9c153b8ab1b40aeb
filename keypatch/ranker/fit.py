"""Fitting a ranker to a model: put exact greedy's best candidates first.

1. Exact greedy (from the central patch, up to the ratio) on each training photo, recording at every
   step the error map and every candidate's ``L`` (:mod:`keypatch.ranker.trajectories`, cached).
2. A :class:`~keypatch.ranker.net.PatchRanker` trained on them: cross-entropy against
   ``softmax(-(L_c - L_best) / (tau L_best))`` over the remaining candidates, with the grid's flips
   and transposes as augmentation; then (``own_steps``) refitted with the steps the ranker itself
   takes when it screens, every candidate of those scored too (DAgger).
3. On the held-out photos (never trained on): hit rate and regret (:mod:`keypatch.ranker.evaluate`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from keypatch.ranker.evaluate import Screening, evaluate, samples
from keypatch.ranker.files import model_digest, save_ranker
from keypatch.ranker.net import FLIPS, PatchRanker
from keypatch.ranker.trajectories import photo_key, trajectories


@dataclass
class FitResult:
    """What :func:`fit_ranker` did: the file, the photos on each side, and the held-out table (None
    without held-out photos)."""

    out: Path
    train_photos: int
    held_out_photos: int
    steps: int
    seconds: float
    held_out: Screening | None


def held_out_split(files: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """``(train, held_out)``: the ``round(fraction * n)`` photos with the lowest hash of their bytes
    held out (at least one when ``fraction > 0`` and there are two photos; never all)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"held_out must be in [0, 1), got {fraction}")
    count = round(fraction * len(files))
    if fraction > 0 and len(files) >= 2:
        count = min(max(count, 1), len(files) - 1)
    keys = [photo_key(f) for f in files]
    order = sorted(range(len(files)), key=lambda i: keys[i])
    held = set(order[:count])
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def train(x: torch.Tensor, s: torch.Tensor, rem: torch.Tensor, rows: int, cols: int, *, tau: float = 0.01,
          epochs: int = 30, seed: int = 0, weight_decay: float = 1e-5, width: int = 32, depth: int = 4) -> PatchRanker:
    """A ranker trained on inputs ``x (S, 11, R, C)`` to put the candidates with the lowest ``s (S, N)`` first."""
    torch.manual_seed(seed)
    net = PatchRanker(width, depth)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=weight_decay)
    best = s.masked_fill(~rem, math.inf).amin(1, keepdim=True)
    target = torch.softmax((-(s - best) / (tau * best)).masked_fill(~rem, -math.inf), 1)
    rest = list(range(5, x.shape[1]))
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            xb, tb, rb = x[idx], target[idx].view(-1, 1, rows, cols), rem[idx].view(-1, 1, rows, cols)
            for dims, order in zip(((3,), (2,), None), FLIPS, strict=True):
                if torch.rand(()) < 0.5:
                    if dims is None:
                        if rows != cols:
                            continue
                        xb, tb, rb = xb.transpose(2, 3), tb.transpose(2, 3), rb.transpose(2, 3)
                    else:
                        xb, tb, rb = xb.flip(dims), tb.flip(dims), rb.flip(dims)
                    xb = xb[:, order + rest]
            logits = net(xb).masked_fill(~rb.flatten(1), -1e9)
            loss = -(tb.flatten(1) * torch.log_softmax(logits, 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def fit_ranker(photos: list[Path], model, out: str | Path, *, ratio: float = 0.25, held_out: float = 0.1,
               own_steps: int = 1, epochs: int = 30, tau: float = 0.01, weight_decay: float = 1e-5, seed: int = 0,
               cache: Path, progress: bool = True, log=print) -> FitResult:  # noqa: ANN001 - a print-like callable
    """Fit a ranker to ``model``'s exact greedy steps on ``photos`` and write it to ``out``.

    Parameters
    ----------
    photos : list of Path
        Photo files; ``held_out`` of them (by a hash of their bytes) are kept out of the fit for the table.
    model : MAE
        The model whose greedy steps the ranker learns; its id and weights' digest go in the file.
    out : path
        The safetensors file written (:func:`~keypatch.ranker.files.save_ranker`).
    ratio : float
        Greedy's steps up to this ratio (the ranker then serves ratios up to it).
    held_out, own_steps, epochs, tau, weight_decay, seed
        The split, rounds on the ranker's own steps (DAgger), and training.
    cache : Path
        Where each photo's trajectory is cached (a rerun resumes; :func:`~keypatch.ranker.trajectories.trajectories`).
    progress : bool
        Progress bars on stderr.
    log : callable
        Receives one line per stage.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    k = model.grid.count(ratio)
    if k < 2:
        raise ValueError(f"ratio {ratio} keeps {k} patch(es) of {model.grid.n}: a ranker needs at least 2 "
                         "(one step after the centre)")
    if not photos:
        raise ValueError("no photos to fit a ranker on")
    train_files, held_files = held_out_split(photos, held_out)
    rows, cols = model.grid.rows, model.grid.cols

    def collect(files: list[Path], policy: PatchRanker | None, what: str) -> list[dict]:
        with tqdm(total=len(files), desc=what, unit="photo", disable=not progress) as bar:
            return trajectories(files, model, k, cache, policy=policy, tick=bar.update)

    log(f"fitting to {getattr(model, 'model_id', 'the model')} (weights {model_digest(model)}): "
        f"{len(train_files)} photos, {len(held_files)} held out, k = {k} (r = {ratio:g})")
    train_set = collect(train_files, None, "exact greedy steps")
    held = collect(held_files, None, "held-out greedy steps") if held_files else []
    if not train_set:
        raise ValueError("none of the photos to fit on could be read")
    used = len(train_set)
    net = None
    steps = 0
    for round_ in range(own_steps + 1):
        if round_:  # the last ranker's own states, every candidate scored (one DAgger round)
            train_set = train_set + collect(train_files, net, f"ranker's own steps ({round_})")
        x, s, rem = samples(train_set, rows, cols)
        t0 = time.perf_counter()
        net = train(x, s, rem, rows, cols, tau=tau, epochs=epochs, seed=seed, weight_decay=weight_decay)
        steps = len(x)
        log(f"trained on {used} photos ({steps} steps) in {time.perf_counter() - t0:.0f} s")
    assert net is not None
    save_ranker(net, out, model=getattr(model, "model_id", "unnamed"), model_sha256=model_digest(model),
                ratio_min=f"{2 / model.grid.n:.4g}", ratio_max=f"{k / model.grid.n:.4g}",
                photos=str(used), own_steps=str(own_steps), epochs=str(epochs), tau=f"{tau:g}",
                weight_decay=f"{weight_decay:g}", fitted=time.strftime("%Y-%m-%d"))
    table = evaluate(net, held, rows, cols) if held else None
    return FitResult(Path(out), used, len(held), steps, time.perf_counter() - start, table)
