"""Ranked greedy KPP: a small learned ranker chooses the few candidates scored exactly at each step.

``screened`` ranks candidates by the current reconstruction error alone, and exact greedy's next
patch is in that top 8 at well under half of the steps. ``ranked`` replaces the error with a
ranker (:mod:`keypatch.ranker`): a small convolutional net over the patch grid that reads each
patch's current error, pixel statistics and place, fitted to put exact greedy's best candidates
first. The shipped weights were fitted to the embedded default model; with another model
``ranked`` warns once and keeps running (the ranker still screens: its inputs are relative errors
and pixel statistics), and ``keypatch ranker fit`` fits one to that model's own steps.

Each step scores exactly the ``m`` best-ranked candidates and the ``keep`` best runners-up of the
last step, adds the best of them, and ``rounds`` of neighbour moves
(:func:`keypatch.proposers.swap.refine`) follow: each chosen patch tries the ``moves`` free
patches within ``reach`` that the ranker puts first as additions to the set without that patch. The trade against
exact greedy is measured by ``benchmarks/bench_search.py`` (``docs/results.md``).
"""

from __future__ import annotations

import math

import torch

from keypatch.objective import DEFAULT_CHUNK, Objective, ranks
from keypatch.proposers.base import register
from keypatch.proposers.search import SearchProposer, begun, screened_step, start_state
from keypatch.proposers.swap import refine
from keypatch.ranker import Ranking, load_ranker, ranker_digest
from keypatch.ranker.files import warn_other_model
from keypatch.reconstructors.mae import MAE
from keypatch.reconstructors.precision import DEFAULT_PRECISION


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
        Chebyshev radius of those moves (1: the 8 neighbours; 2: the 24 patches around it).
    moves : int
        Destinations tried per patch in a round of moves: the free patches within ``reach`` the ranker scores
        highest as additions to the set without that patch (:meth:`Ranking.without_each`, once,
        from the set the greedy pass ends with); 0: every one, as ``swap``'s rounds.
    within : int
        From the second round of moves on, a patch is tried again only when a move since its last
        try left from or landed within this Chebyshev distance of it (0: after any move in its
        image, as ``swap``'s rounds; :func:`~keypatch.proposers.swap.refine`).
    ranker : str
        A ranker file (``keypatch ranker fit``, :func:`keypatch.ranker.save_ranker`); ``"default"``:
        the shipped one, fitted to the embedded default model. A ranker fitted to another model
        than the one in use gives one :class:`~keypatch.ranker.RankerWarning`.
    start, chunk_size, precision
        As for ``greedy`` (see :class:`~keypatch.proposers.search.SearchProposer`).

    Notes
    -----
    A step costs the ranker (negligible) and ``m + errors + keep`` scored sets, all images
    batched; the float32 scores come with their error maps, so the ranker reads the chosen set's
    map without another pass (one more pass per image at the first step, and at every step with
    precision ``"bfloat16"``). With ``"mixed"`` the candidates are screened in bfloat16 and those
    near each image's minimum re-scored in float32 with their maps (:meth:`Objective.step`):
    float32's picks and maps. The moves cost ``k`` passes per
    image once (the error maps of the ``k`` sets without one patch, batched) and ``moves k`` per
    round (with ``moves=0``, every free patch within ``reach``: up to ``24 k`` at ``reach=2``); an
    image whose round moved nothing is done. An image's ranker scores do not depend on the images
    beside it (image by image on a CPU, fixed groups on a GPU: :data:`~keypatch.ranker.ranking.GPU_GROUP`)
    and ties go to the lowest patch index, so the picks are deterministic and the same alone as
    in a batch. With ``rounds > 0`` only the final ``L`` is known (shorter
    prefixes NaN; the public API recomputes them).
    """

    name = "ranked"
    takes_begin = True
    start_rule = "moves"
    options = {**SearchProposer.options, "m": int, "errors": int, "keep": int, "rounds": int, "reach": int,
               "moves": int, "within": int, "ranker": str}

    def __init__(self, m: int = 4, errors: int = 2, keep: int = 0, rounds: int = 1, reach: int = 2, moves: int = 3,
                 within: int = 0, ranker: str = "default", start: str = "center", chunk_size: int = DEFAULT_CHUNK,
                 precision: str = DEFAULT_PRECISION) -> None:
        super().__init__(start, chunk_size, precision)
        if m < 1 or min(errors, keep, rounds, moves, within) < 0 or reach < 1:
            raise ValueError(f"m must be >= 1, errors, keep, rounds, moves and within >= 0 and reach >= 1, got "
                             f"m={m}, errors={errors}, keep={keep}, rounds={rounds}, reach={reach}, moves={moves}, "
                             f"within={within}")
        self.m, self.errors, self.keep = int(m), int(errors), int(keep)
        self.rounds, self.reach, self.moves, self.within = int(rounds), int(reach), int(moves), int(within)
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

    def select(self, model: MAE, images: torch.Tensor, k: int, seed: int, begin: torch.Tensor | None = None):
        """As every search strategy's, after warning once when the ranker was fitted to another model."""
        warn_other_model(self.ranker, model)
        return super().select(model, images, k, seed, begin)

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
                      rank.without_each, self.moves, fixed=begun(objective), within=self.within)
