"""The patch ranker of the ``ranked`` strategy: a small learned model, its files, fitting and checking.

* :mod:`~keypatch.ranker.net`: the network and its inputs;
* :mod:`~keypatch.ranker.files`: safetensors files that record the model they were fitted to;
* :mod:`~keypatch.ranker.ranking`: the ranker at work on an :class:`~keypatch.objective.Objective`;
* :mod:`~keypatch.ranker.trajectories`: exact greedy's steps with every candidate's ``L`` (cached);
* :mod:`~keypatch.ranker.fit` and :mod:`~keypatch.ranker.evaluate`: ``keypatch ranker fit`` and
  ``keypatch ranker check``.
"""

from keypatch.ranker.files import (
    DEFAULT_RANKER,
    RankerInfo,
    RankerWarning,
    load_ranker,
    model_digest,
    ranker_digest,
    ranker_info,
    save_ranker,
)
from keypatch.ranker.net import PatchRanker, ranker_inputs, static_inputs
from keypatch.ranker.ranking import Ranking

__all__ = ["DEFAULT_RANKER", "PatchRanker", "RankerInfo", "RankerWarning", "Ranking", "load_ranker", "model_digest",
           "ranker_digest", "ranker_info", "ranker_inputs", "save_ranker", "static_inputs"]
