"""How well cheap signals find exact greedy's next patch, and what screens built on them reach.

``screened`` scores, at each step, only the candidates a cheap signal ranks first. Its quality
is set by how often that signal ranks greedy's pick near the top. This benchmark measures it on
the exact greedy trajectory: at every step of greedy on the test photos it scores every remaining
candidate (exactly, as greedy does), then asks of each signal: if only its top ``m`` had been
scored, how often would greedy's pick have been among them (hit), and how much higher would the
best scored set's ``L`` have been (regret, mean over steps and photos). Signals:

* ``error``: the current reconstruction's squared error per masked patch (one MAE pass);
* ``error + 0.1 box5``: that error plus 0.1x its 5x5 neighbourhood's sum (chosen patches count 0);
* ``last step``: the candidate's exact ``L`` at the previous step (known after an exhaustive
  step; ``screened`` knows it only for the candidates it scored);
* ``min rank``: a candidate's better rank by ``error + 0.1 box5`` and by ``last step``.

Then the second table runs screens that are affordable (a few exact scores per step), with
remembered gains: each candidate's last measured gain ``L(S) - L(S + c)`` kept from whenever it
was last scored (lazy greedy's memory, after one exhaustive first step), the top ``a`` by error
and the top ``b`` by remembered gain scored; then one and two rounds of neighbour moves
(:func:`keypatch.proposers.swap.refine`). Evaluations and final ``L`` against exact greedy; the
seconds are in ``bench_search.py`` (moves score sets of all ``k`` patches, which cost 1.2-1.7x an
average greedy set on the default model).

Run from the repository root::

    python benchmarks/bench_screen.py                 # 13 test photos, r = 0.1 and 0.25, default model
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_threads import cpu_name  # noqa: E402

import keypatch  # noqa: E402
from keypatch.experiments.photos import load_test_photos  # noqa: E402
from keypatch.geometry.image import load_images  # noqa: E402
from keypatch.objective import Objective, ranks, remaining_count  # noqa: E402
from keypatch.proposers.search import start_state  # noqa: E402
from keypatch.proposers.swap import refine  # noqa: E402
from keypatch.ranker.trajectories import greedy_steps  # noqa: E402

SIZES = (4, 8, 16)
"""Screen sizes ``m`` of the first table."""

SCREENS = ({"a": 4, "b": 4}, {"a": 4, "b": 8}, {"a": 2, "b": 6}, {"a": 6, "b": 2})
"""Screens of the second table: top ``a`` by error, top ``b`` by remembered gain."""


def box(err: torch.Tensor, cols: int, width: int = 2) -> torch.Tensor:
    """Sum of ``err (B, N)`` over each patch's ``(2 width + 1)^2`` neighbourhood on the grid."""
    b, n = err.shape
    grid = err.view(b, 1, n // cols, cols)
    return F.conv2d(grid, torch.ones(1, 1, 2 * width + 1, 2 * width + 1), padding=width).view(b, n)


def trajectory(obj: Objective, k: int) -> list[dict]:
    """Exact greedy from the central patch (:func:`keypatch.ranker.trajectories.greedy_steps`) as one
    dict per step: the error map, every candidate's ``L`` (``(B, N)``, inf at the chosen patches)
    and the remaining patches."""
    t = greedy_steps(obj, k)
    return [{"err": t["err"][:, j], "scores": t["scores"][:, j], "remaining": t["scores"][:, j].isfinite()}
            for j in range(k - 1)]


def signal_table(steps: list[dict], cols: int) -> None:
    """Hit rate and regret of each signal's top ``m`` along the greedy trajectory."""
    def last_step(t: int) -> torch.Tensor:
        return -steps[t - 1]["scores"] if t else steps[t]["err"]

    def min_rank(t: int) -> torch.Tensor:
        here = steps[t]
        first = ranks(here["err"] + 0.1 * box(here["err"], cols), here["remaining"])
        return -torch.minimum(first, ranks(last_step(t), here["remaining"])).float()

    signals = {
        "error": lambda t: steps[t]["err"],
        "error + 0.1 box5": lambda t: steps[t]["err"] + 0.1 * box(steps[t]["err"], cols),
        "last step (exhaustive)": last_step,
        "min rank (error + box5, last step)": min_rank,
    }
    print("| signal | " + " | ".join(f"m = {m}: hit, regret" for m in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    for name, fn in signals.items():
        hits, regrets = {m: [] for m in SIZES}, {m: [] for m in SIZES}
        for t, st in enumerate(steps):
            rank = ranks(fn(t), st["remaining"])
            best = st["scores"].amin(1)
            for m in SIZES:
                got = st["scores"].masked_fill(rank >= m, math.inf).amin(1)
                hits[m].append((got == best).float())
                regrets[m].append(got / best - 1)
        cells = [f"{torch.cat(hits[m]).mean():.0%}, {torch.cat(regrets[m]).mean():+.2%}" for m in SIZES]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def remembered_screen(obj: Objective, k: int, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy from the central patch over the top ``a`` by current error and the top ``b`` by
    remembered gain; ``(patches, L)``."""
    nb, n = obj.batch, obj.grid.n
    ar = torch.arange(nb)
    chosen, losses, remaining = start_state(obj, "center")
    current = losses[:, -1]
    cand = remaining_count(remaining, n - 1)
    gain = torch.full((nb, n), -math.inf).scatter_(1, cand, current[:, None] - obj.step(chosen, cand).scores)
    for j in range(1, k):
        by_err = ranks(obj.score(chosen, maps=True)[1], remaining)
        by_gain = ranks(gain.masked_fill(by_err < a, -math.inf), remaining)
        key = torch.where(by_err < a, by_err, torch.where(by_gain < b, n + by_gain, 2 * n + by_err))
        cand = key.masked_fill(~remaining, 4 * n).topk(min(a + b, n - j), dim=1, largest=False).indices
        step = obj.step(chosen, cand)
        gain.scatter_(1, cand, current[:, None] - step.scores)
        pick, current = step.pick, step.loss
        chosen = torch.cat([chosen, pick[:, None]], 1)
        remaining[ar, pick] = False
    return chosen, current


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratios", default="0.1,0.25")
    ap.add_argument("--model", default="default")
    ap.add_argument("--photos", type=int, default=0, help="first N test photos (0: all)")
    args = ap.parse_args()
    photos = load_test_photos()
    names = sorted(photos)[: args.photos or None]
    model = keypatch.load_mae(args.model)
    images = load_images([photos[n] for n in names])
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {cpu_name()}  torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads  model {args.model}")
    print(f"photos ({len(names)}): {', '.join(names)}")
    cols = model.grid.cols
    for ratio in (float(r) for r in args.ratios.split(",")):
        k = round(ratio * model.grid.n)
        obj = Objective(model, images)
        steps = trajectory(obj, k)
        greedy = steps[-1]["scores"].amin(1)
        print(f"\n## r = {ratio} (k = {k}): signals along exact greedy's {k - 1} steps, {len(names)} photos\n")
        signal_table(steps, cols)
        print(f"\n## r = {ratio}: remembered-gain screens, then neighbour moves (L vs exact greedy: mean, worst)\n")
        print("| screen | evals / image | L vs greedy | + 1 round: evals | L | + 2 rounds: evals | L |")
        print("|---|---|---|---|---|---|---|")
        for screen in SCREENS:
            obj = Objective(model, images)
            patches, loss = remembered_screen(obj, k, **screen)
            cells = []
            for _ in range(3):
                gap = loss / greedy - 1
                cells.append(f"{obj.evaluations.float().mean():.0f} | {gap.mean():+.1%} ({gap.max():+.1%})")
                patches, out = refine(obj, patches, loss, 1)
                loss = out[:, -1]
            print(f"| a={screen['a']} b={screen['b']} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
