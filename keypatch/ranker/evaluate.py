"""How well a ranker screens for a model: hit rate and regret of its top candidates against exact greedy.

At each of exact greedy's steps (:func:`~keypatch.ranker.trajectories.greedy_steps`, every
candidate's ``L`` known), a signal's top ``m`` candidates *hit* when greedy's best is among them,
and their *regret* is how much higher the best of them is than the step's best ``L``
(``L_top / L_best - 1``, a mean over steps). ``ranked`` scores exactly the ranker's top 4 at each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from keypatch.ranker.net import PatchRanker, ranker_inputs, static_inputs

SIZES = (2, 4, 8, 16)
"""Top-``m`` sizes of the table."""


@dataclass
class Screening:
    """Hit rate and mean regret per top-``m`` size, of each signal, over ``steps`` steps of ``photos`` photos."""

    photos: int
    steps: int
    hit: dict[str, dict[int, float]] = field(default_factory=dict)
    regret: dict[str, dict[int, float]] = field(default_factory=dict)

    def table(self) -> str:
        """A markdown table: a row per signal, ``hit, regret`` per size."""
        sizes = sorted(next(iter(self.hit.values())))
        lines = ["| signal | " + " | ".join(f"top {m}: hit, regret" for m in sizes) + " |",
                 "|---|" + "---|" * len(sizes)]
        for name in self.hit:
            lines.append(f"| {name} | " + " | ".join(f"{self.hit[name][m]:.0%}, {self.regret[name][m]:+.2%}"
                                                     for m in sizes) + " |")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """JSON-ready: photos, steps, hit and regret per signal and size."""
        return {"photos": self.photos, "steps": self.steps,
                "hit": {k: {str(m): v for m, v in d.items()} for k, d in self.hit.items()},
                "regret": {k: {str(m): v for m, v in d.items()} for k, d in self.regret.items()}}


def samples(trajs: list[dict[str, torch.Tensor]], rows: int,
            cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every step of every photo's trajectory (one dict per photo, :func:`~keypatch.ranker.trajectories.trajectories`):
    the ranker's inputs ``(S, 11, rows, cols)``, the candidates' ``L`` ``(S, N)`` (inf at chosen
    patches) and the remaining mask ``(S, N)``."""
    xs, ss, rs = [], [], []
    for d in trajs:
        steps, n = d["err"].shape
        chosen = torch.zeros(steps, n, dtype=torch.bool)
        for t in range(steps):
            chosen[t, d["chosen"][: t + 1]] = True
        err = d["err"]
        prev = torch.cat([err[:1], err[:-1]])
        static = static_inputs(d["targets"][None], rows, cols)
        xs.append(ranker_inputs(None, err, prev, chosen, rows, cols, static.expand(steps, -1, -1, -1)))
        ss.append(d["scores"])
        rs.append(~chosen)
    return torch.cat(xs), torch.cat(ss), torch.cat(rs)


def screening(signals: dict[str, torch.Tensor], s: torch.Tensor, rem: torch.Tensor, photos: int,
              sizes: tuple[int, ...] = SIZES) -> Screening:
    """Hit rate and mean regret of each signal's top ``m`` (``(S, N)``, larger first, ties to the
    lowest index) against the best of ``s`` over the remaining candidates ``rem``."""
    best = s.masked_fill(~rem, math.inf).amin(1)
    out = Screening(photos, s.shape[0])
    for name, sig in signals.items():
        order = torch.sort(-sig.masked_fill(~rem, -math.inf), dim=1, stable=True).indices
        out.hit[name], out.regret[name] = {}, {}
        for m in sizes:
            got = s.gather(1, order[:, :m]).amin(1)
            out.hit[name][m] = float((got == best).float().mean())
            out.regret[name][m] = float((got / best - 1).mean())
    return out


@torch.no_grad()
def score_samples(net: PatchRanker, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``net``'s scores of many inputs ``(S, 11, R, C)`` -> ``(S, N)``."""
    return torch.cat([net(x[i : i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else x.new_zeros(0, 0)


def evaluate(net: PatchRanker, trajs: list[dict[str, torch.Tensor]], rows: int, cols: int,
             sizes: tuple[int, ...] = SIZES) -> Screening:
    """The ranker ``net`` against the current error alone (``screened``'s signal) on ``trajs``."""
    x, s, rem = samples(trajs, rows, cols)
    return screening({"error alone": x[:, 7].flatten(1), "ranker": score_samples(net, x)}, s, rem, len(trajs), sizes)


def check_ranker(photos: list[Path], model, ranker: str = "default", *, ratio: float = 0.25, cache: Path,
                 progress: bool = True) -> Screening:
    """Does the ranker serve ``model`` on these photos? Exact greedy's steps up to ``ratio`` on each
    photo (cached as :func:`~keypatch.ranker.trajectories.trajectories` caches them), then
    :func:`evaluate`."""
    from tqdm.auto import tqdm

    from keypatch.ranker.files import load_ranker
    from keypatch.ranker.trajectories import trajectories

    net = load_ranker(ranker)
    k = model.grid.count(ratio)
    if k < 2:
        raise ValueError(f"ratio {ratio} keeps {k} patch(es): a check needs at least 2 (one step after the centre)")
    with tqdm(total=len(photos), desc="exact greedy steps", unit="photo", disable=not progress) as bar:
        trajs = trajectories(photos, model, k, cache, tick=bar.update)
    return evaluate(net, trajs, model.grid.rows, model.grid.cols)
