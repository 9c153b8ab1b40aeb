"""Ranked greedy KPP: a small learned ranker chooses the few candidates scored exactly at each step.

``screened`` ranks candidates by the current reconstruction error alone, and exact greedy's next
patch is in that top 8 at well under half of the steps. ``ranked`` replaces the error with a
ranker: a four-layer convolutional net over the patch grid (about 30 thousand parameters) that
reads, per patch, the current error (one MAE pass from the chosen set), how it changed at the last
step, whether the patch is chosen, its pixel variance, how much it differs from its four
neighbours, and its distance from the centre; it outputs a score per patch. It is trained (``tools/ranker/fit.py``)
to put exact greedy's best candidates first, from exact greedy's steps on training photos with
every candidate's ``L``. The shipped weights (``keypatch/weights/ranker_default.safetensors``)
were fitted to the embedded default model; for another MAE they still screen (the inputs are
relative errors and pixel statistics) but fitting them to that model's own steps is better.

Each step scores exactly the ``m`` best-ranked candidates and the ``keep`` best runners-up of the
last step, adds the best of them, and ``rounds`` of neighbour moves
(:func:`keypatch.proposers.swap.refine`) follow: each chosen patch tries the ``moves`` free
neighbours the ranker puts first as additions to the set without that patch. The trade against
exact greedy is measured by ``benchmarks/bench_search.py`` (``docs/results.md``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from keypatch.objective import DEFAULT_CHUNK, Objective
from keypatch.proposers.base import register
from keypatch.proposers.search import SearchProposer, ranks, remaining_count, screened_step, start_state
from keypatch.proposers.swap import refine
from keypatch.reconstructors.precision import DEFAULT_PRECISION
from keypatch.threads import TUNER
from keypatch.untrusted import bounded, refuse

DEFAULT_RANKER = Path(__file__).resolve().parent.parent / "weights" / "ranker_default.safetensors"
"""The shipped ranker, fitted to the embedded default model (``tools/ranker/fit.py``)."""

CHANNELS = 11
"""Inputs per grid cell (:func:`ranker_inputs`)."""


def ranker_inputs(targets: torch.Tensor | None, err: torch.Tensor, prev_err: torch.Tensor, chosen: torch.Tensor,
                  rows: int, cols: int, static: torch.Tensor | None = None) -> torch.Tensor:
    """The ranker's input grid for each image.

    Parameters
    ----------
    targets : torch.Tensor or None
        ``(B, N, D)`` the patches in the MAE's normalised pixel space (None when ``static`` is given).
    err, prev_err : torch.Tensor
        ``(B, N)`` each patch's squared error when rebuilt from the current chosen set, and from
        the set one step before (``err`` again at the first step).
    chosen : torch.Tensor
        ``(B, N)`` bool, the chosen patches.
    rows, cols : int
        The patch grid.
    static : torch.Tensor, optional
        :func:`static_inputs` of ``targets`` when already computed (they do not change with the set).

    Returns
    -------
    torch.Tensor
        ``(B, 11, rows, cols)`` float32: log pixel variance; log mean squared difference to the
        right, lower, left and upper neighbour (0 off the grid); Chebyshev distance from the
        centre in [0, 1]; chosen; error over the mean masked error (clipped at 20) and its log;
        the drop of that error since the last step; 0.1 x log of the mean masked error.
    """
    b, n = err.shape
    if static is None:
        if targets is None:
            raise ValueError("ranker_inputs needs the targets or their static inputs")
        static = static_inputs(targets, rows, cols)
    e = err.float().masked_fill(chosen, 0)
    mean = (e.sum(1) / (~chosen).sum(1).clamp(min=1)).clamp(min=1e-6)
    rel = e / mean[:, None]
    drop = ((prev_err.float() - err.float()) / mean[:, None]).masked_fill(chosen, 0)
    dynamic = [chosen.float(), rel.clamp(max=20), torch.log(rel + 1e-3).masked_fill(chosen, 0),
               drop.clamp(-20, 20), 0.1 * torch.log(mean)[:, None].expand(b, n)]
    return torch.cat([static, torch.stack(dynamic, 1).view(b, len(dynamic), rows, cols)], 1)


def static_inputs(targets: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The first 6 channels of :func:`ranker_inputs`, which depend on the image only: ``(B, 6, rows, cols)``."""
    b, n, d = targets.shape
    t = targets.float()
    x = t.view(b, rows, cols, d)
    dev = t.device
    out = [torch.log(t.var(-1).view(b, rows, cols) + 1e-3)]
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        diff = (x - torch.roll(x, shifts=(-dy, -dx), dims=(1, 2))).pow(2).mean(-1)
        valid = torch.ones(rows, cols, device=dev)  # 0 where the neighbour is off the grid
        if dx:
            valid[:, -1 if dx > 0 else 0] = 0
        if dy:
            valid[-1 if dy > 0 else 0, :] = 0
        out.append(torch.log(diff + 1e-3) * valid)
    yy = torch.linspace(-1, 1, rows, device=dev)[:, None].abs()
    xx = torch.linspace(-1, 1, cols, device=dev)[None, :].abs()
    out.append(torch.maximum(yy, xx).expand(b, rows, cols))
    return torch.stack(out, 1)


class PatchRanker(nn.Module):
    """A small fully convolutional net: :func:`ranker_inputs` ``(B, 11, R, C)`` -> a score per patch ``(B, R*C)``.

    Larger scores are ranked first. Any grid size works (3x3 convolutions, then a 1x1).
    """

    def __init__(self, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(CHANNELS, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 1))
        self.net = nn.Sequential(*layers)
        self.width, self.depth = width, depth

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs).flatten(1)


def save_ranker(ranker: PatchRanker, path: str | Path, **info: str) -> None:
    """Write ``ranker`` as safetensors, its shape (and ``info``) in the file's metadata."""
    meta = {"width": str(ranker.width), "depth": str(ranker.depth), "channels": str(CHANNELS), **info}
    save_file({k: v.detach().cpu().contiguous() for k, v in ranker.state_dict().items()}, str(path), metadata=meta)


def ranker_file(path: str = "default") -> Path:
    """The weights file behind ``path`` (``"default"``: the shipped one)."""
    return DEFAULT_RANKER if path == "default" else Path(path)


@functools.lru_cache(maxsize=16)
def ranker_digest(path: str = "default") -> str:
    """The first 16 hex digits of the SHA-256 of the ranker's weights file."""
    return hashlib.sha256(ranker_file(path).read_bytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def load_ranker(path: str = "default") -> PatchRanker:
    """A ranker from a safetensors file written by :func:`save_ranker` (``"default"``: the shipped one).

    Raises FileNotFoundError naming the path, or ValueError for a file of another shape, or one
    :func:`check_ranker_file` refuses (checked before the network is built).
    """
    file = ranker_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"no ranker weights at {file}")
    width, depth = check_ranker_file(file)
    ranker = PatchRanker(width, depth)
    ranker.load_state_dict(load_file(str(file)))
    return ranker.eval()


MAX_RANKER_BYTES = 64 << 20
"""The largest ranker file read (the shipped one is some 120 KB)."""
MAX_WIDTH, MAX_DEPTH = 256, 16
"""The widest and deepest ranker built from a file's metadata (at most some 9.5 million weights)."""


def ranker_shapes(width: int, depth: int) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a :class:`PatchRanker`'s state dict, computed without building one."""
    shapes: dict[str, tuple[int, ...]] = {"net.0.weight": (width, CHANNELS, 3, 3), "net.0.bias": (width,)}
    for i in range(1, depth):
        shapes[f"net.{2 * i}.weight"], shapes[f"net.{2 * i}.bias"] = (width, width, 3, 3), (width,)
    shapes[f"net.{2 * depth}.weight"], shapes[f"net.{2 * depth}.bias"] = (1, width, 1, 1), (1,)
    return shapes


def check_ranker_file(file: Path) -> tuple[int, int]:
    """``(width, depth)`` of a ranker file when it is sound, read from its header alone: the file at
    most :data:`MAX_RANKER_BYTES`, a safetensors file whose metadata say ``channels`` 11, ``width``
    and ``depth`` within :data:`MAX_WIDTH` and :data:`MAX_DEPTH`, and whose tensors are exactly
    the floating-point ones of that shape. A weights file may come from anyone, and the network is
    sized by its metadata: anything else is a :class:`~keypatch.untrusted.HostileFileError` naming
    the file and the key, before anything is allocated."""
    size = file.stat().st_size
    if size > MAX_RANKER_BYTES:
        raise refuse(file, "the file", f"is {size:,} bytes, more than the {MAX_RANKER_BYTES:,} a ranker may be")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as exc:  # safetensors' own error type: not a safetensors file, a damaged header
        raise refuse(file, "the file", f"is not a safetensors file ({str(exc)[:200]})") from None
    if meta.get("channels") != str(CHANNELS):
        raise refuse(file, "metadata 'channels'", f"is {str(meta.get('channels'))[:40]!r}: not a keypatch ranker "
                     f"with {CHANNELS} input channels (metadata {json.dumps(meta)[:300]})")
    width = bounded(meta.get("width"), 1, MAX_WIDTH, file=file, entry="metadata 'width'", text=True)
    depth = bounded(meta.get("depth"), 1, MAX_DEPTH, file=file, entry="metadata 'depth'", text=True)
    want = ranker_shapes(width, depth)
    for key in sorted(set(want) | set(found)):
        if key not in found:
            raise refuse(file, f"tensor {key!r}", f"is missing (width {width}, depth {depth})")
        if key not in want:
            raise refuse(file, f"tensor {key[:80]!r}", f"is not one of a ranker of width {width} and depth {depth}")
        shape, dtype = found[key]
        if shape != want[key] or dtype not in ("F16", "BF16", "F32", "F64"):
            raise refuse(file, f"tensor {key!r}", f"is {dtype} {list(shape)}, not floats of shape {list(want[key])} "
                         f"(width {width}, depth {depth})")
    return width, depth


@register
class RankedGreedy(SearchProposer):
    """Greedy over the candidates a learned ranker puts first, then neighbour moves.

    Parameters
    ----------
    m : int
        Best-ranked candidates scored exactly at each step.
    errors : int
        Further candidates scored at each step: the patches the MAE currently rebuilds worst that the
        ranker left out (``screened``'s screen; 0: none).
    keep : int
        Best runners-up of the previous step scored again (0: none).
    rounds : int
        Rounds of neighbour moves after the greedy pass (0: none), as ``swap``'s.
    reach : int
        Chebyshev radius of those moves (1: the 8 neighbours).
    moves : int
        Destinations tried per patch in a round of moves: the free neighbours the ranker scores
        highest as additions to the set without that patch (:meth:`Ranking.without_each`, once,
        from the set the greedy pass ends with); 0: every free neighbour, as ``swap``'s rounds.
    ranker : str
        Weights written by :func:`save_ranker` (``tools/ranker/fit.py``); ``"default"``: the
        shipped ones, fitted to the embedded default model.
    start, chunk_size, precision
        As for ``greedy`` (see :class:`~keypatch.proposers.search.SearchProposer`).

    Notes
    -----
    A step costs the ranker (negligible) and ``m + errors + keep`` scored sets, all images
    batched; scored in float32, their error maps come with their ``L``, so the ranker reads the
    chosen set's map without another pass (one more pass per image at the first step, and at
    every step when the candidates are scored in bfloat16). The moves cost ``k`` passes per
    image once (the error maps of the ``k`` sets without one patch, batched) and ``moves k`` per
    round (``8 k`` with ``moves=0``); an image whose round moved nothing is done. The ranker runs
    image by image and ties go to the lowest patch index, so the picks are deterministic and
    the same alone as in a batch. With ``rounds > 0`` only the final ``L`` is known (shorter
    prefixes NaN; the public API recomputes them).
    """

    name = "ranked"
    start_rule = "moves"
    options = {**SearchProposer.options, "m": int, "errors": int, "keep": int, "rounds": int, "reach": int,
               "moves": int, "ranker": str}

    def __init__(self, m: int = 4, errors: int = 0, keep: int = 0, rounds: int = 2, reach: int = 1, moves: int = 2,
                 ranker: str = "default", start: str = "center", chunk_size: int = DEFAULT_CHUNK,
                 precision: str = DEFAULT_PRECISION) -> None:
        super().__init__(start, chunk_size, precision)
        if m < 1 or min(errors, keep, rounds, moves) < 0 or reach < 1:
            raise ValueError(f"m must be >= 1, errors, keep, rounds and moves >= 0 and reach >= 1, got m={m}, "
                             f"errors={errors}, keep={keep}, rounds={rounds}, reach={reach}, moves={moves}")
        self.m, self.errors, self.keep = int(m), int(errors), int(keep)
        self.rounds, self.reach, self.moves = int(rounds), int(reach), int(moves)
        self.ranker = str(ranker)
        load_ranker(self.ranker)  # a missing or foreign file fails here, before any MAE pass

    @property
    def prefix_consistent(self) -> bool:  # type: ignore[override]
        """Without neighbour moves no step depends on ``k``."""
        return self.rounds == 0

    def settings(self) -> dict:
        """The options, with the ranker's weights named by their digest too (``ranker_sha256``): a
        record made with other weights under the same path is not the same result."""
        return {**super().settings(), "ranker_sha256": ranker_digest(self.ranker)}

    @torch.no_grad()
    def search(self, objective: Objective, k: int, seeds: list[int]):
        chosen, losses, remaining = start_state(objective, self.start)
        b, n, dev = objective.batch, objective.grid.n, objective.device
        rank = Ranking(objective, load_ranker(self.ranker))
        picks, step_losses = [chosen], [losses]
        runner = torch.full((b, n), math.inf, device=dev)  # last step's scores (inf: not scored)
        err = None  # the chosen set's error map when the last step gave it
        for j in range(chosen.shape[1], k):
            sets = torch.cat(picks, dim=1)
            by_rank = ranks(rank(sets, err), remaining)
            top = by_rank < self.m
            # the largest current errors and the best runners-up of the last step that the ranker left out
            by_err = ranks(rank.last.masked_fill(top, -math.inf), remaining)
            top_err = (by_err < self.errors) & ~top
            by_runner = ranks(-runner.masked_fill(top | top_err, math.inf), remaining)
            top_runner = (by_runner < self.keep) & runner.isfinite() & ~top & ~top_err
            key = torch.where(top, by_rank, torch.where(top_err, n + by_err, torch.where(
                top_runner, 2 * n + by_runner, 3 * n + by_rank)))
            count = min(self.m + self.errors + self.keep, n - j)
            pick, loss, cand, scores, err = screened_step(objective, sets, key, count, remaining, errors=True)
            picks.append(pick[:, None])
            step_losses.append(loss[:, None])
            runner = torch.full((b, n), math.inf, device=dev).scatter_(1, cand, scores)
        patches, losses = torch.cat(picks, dim=1), torch.cat(step_losses, dim=1)
        if self.rounds == 0 or k >= n:
            return patches, losses
        return refine(objective, patches, losses[:, -1].to(dev, torch.float32), self.rounds, self.reach,
                      rank.without_each, self.moves)


class Ranking:
    """The ranker's score of every patch given each image's chosen set, for one objective.

    Keeps the images' targets and the last error map, ``last`` (the ranker reads how the error changed).
    """

    def __init__(self, objective: Objective, net: PatchRanker) -> None:
        self.objective, self.grid = objective, objective.grid
        self.net = net.to(objective.device)
        targets = objective.model.targets(objective.images).float()
        self.static = static_inputs(targets, self.grid.rows, self.grid.cols)
        self.last: torch.Tensor | None = None

    def __call__(self, sets: torch.Tensor, err: torch.Tensor | None = None) -> torch.Tensor:
        """``sets (B, j)`` chosen patches -> ``(B, N)`` scores; one MAE pass per image for their error
        map unless it is given (``err (B, N)`` as :meth:`Objective.patch_errors`); it is then :attr:`last`."""
        if err is None:
            err = self.objective.patch_errors(sets)
        chosen = torch.zeros_like(err, dtype=torch.bool).scatter_(1, sets, True)
        inputs = ranker_inputs(None, err, err if self.last is None else self.last, chosen,
                               self.grid.rows, self.grid.cols, self.static)
        self.last = err
        # image by image: a convolution's result must not depend on the batch it ran in
        return self._net(lambda: torch.cat([self.net(inputs[i : i + 1]) for i in range(inputs.shape[0])]),
                         inputs.shape[0])

    def _net(self, fn, units: int) -> torch.Tensor:  # noqa: ANN001 - a closure over the net's calls
        """The ranker's calls ``fn()``, on a CPU on the thread count :data:`~keypatch.threads.TUNER` chooses."""
        return TUNER.run(fn, units, "ranker") if self.objective.device.type == "cpu" else fn()

    def without_each(self, sets: torch.Tensor) -> torch.Tensor:
        """Where to move each chosen patch: ``sets (B, k)`` -> ``(B, k, N)``, row ``i`` the ranker's
        score of every patch as an addition to the set without its patch ``i`` (the question the
        ranker was fitted to answer). One MAE pass per patch of each set (``k`` per image, batched);
        the error maps' changes read as 0. Does not change :attr:`last`."""
        b, k = sets.shape
        idx = torch.arange(k, device=sets.device)
        others = idx.expand(k, k)[idx[None, :] != idx[:, None]].view(k, k - 1)  # row i: every index but i
        smaller = sets[:, others].reshape(b * k, k - 1)
        ii = torch.arange(b, device=sets.device).repeat_interleave(k)
        err = self.objective.patch_errors(smaller, ii)
        chosen = torch.zeros_like(err, dtype=torch.bool).scatter_(1, smaller, True)
        inputs = ranker_inputs(None, err, err, chosen, self.grid.rows, self.grid.cols, self.static[ii])
        # image by image (each image's k sets in one call): the same result alone as in a batch
        return self._net(lambda: torch.cat([self.net(inputs[i * k : (i + 1) * k]) for i in range(b)]),
                         b * k).view(b, k, -1)


@torch.no_grad()
def greedy_steps(objective: Objective, k: int, ranking: Ranking | None = None, m: int = 6) -> dict[str, torch.Tensor]:
    """Greedy from the central patch to ``k`` patches, every remaining candidate scored at every
    step: what a ranker is fitted to and judged by (``tools/ranker/fit.py``, ``benchmarks/bench_screen.py``).

    Without ``ranking`` the steps are exact greedy's; with one, each step adds the best of the
    ``m`` candidates it ranks first (the states a ranker meets when it screens).

    Returns
    -------
    dict
        On the CPU: ``chosen (B, k)``; per step, the error map ``err (B, k-1, N)`` of the set before
        it and every candidate's ``L`` in ``scores (B, k-1, N)`` (inf at the chosen patches);
        ``targets (B, N, D)``.
    """
    b, n, dev = objective.batch, objective.grid.n, objective.device
    chosen, _, remaining = start_state(objective, "center")
    errs, scores_all = [], []
    for j in range(1, k):
        cand = remaining_count(remaining, n - j)
        scores = torch.full((b, n), math.inf, device=dev).scatter_(1, cand, objective.step(chosen, cand))
        if ranking is None:
            errs.append(objective.patch_errors(chosen))
            pick = scores.argmin(1)
        else:
            top = ranks(ranking(chosen), remaining) < m
            errs.append(ranking.last)
            pick = scores.masked_fill(~top, math.inf).argmin(1)
        scores_all.append(scores)
        chosen = torch.cat([chosen, pick[:, None]], 1)
        remaining[torch.arange(b, device=dev), pick] = False
    targets = objective.model.targets(objective.images).float()
    out = {"chosen": chosen, "err": torch.stack(errs, 1), "scores": torch.stack(scores_all, 1), "targets": targets}
    return {key: v.cpu() for key, v in out.items()}
