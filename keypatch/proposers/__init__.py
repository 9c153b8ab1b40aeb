"""Proposers: patch-selection strategies behind one registry.

A new strategy is one file with a :class:`Proposer` subclass decorated with :func:`register`, and
one import line below; ``tests/proposers/test_contract.py`` then checks it with every other strategy. A
strategy that searches over the KPP objective subclasses
:class:`keypatch.proposers.search.SearchProposer` and implements ``search(objective, k, seeds)``
(``start``, ``chunk_size`` and ``precision`` come with it): it chooses the visible sets, and the
:class:`~keypatch.objective.Objective` scores them and counts the evaluations.
"""

from keypatch.proposers import attention as _attention  # noqa: F401  (registers "attention")
from keypatch.proposers import backward as _backward  # noqa: F401  (registers "backward")
from keypatch.proposers import greedy as _greedy  # noqa: F401  (registers "greedy")
from keypatch.proposers import lazy as _lazy  # noqa: F401  (registers "lazy")
from keypatch.proposers import local as _local  # noqa: F401  (registers "local")
from keypatch.proposers import multi as _multi  # noqa: F401  (registers "multi")
from keypatch.proposers import random as _random  # noqa: F401  (registers "random")
from keypatch.proposers import ranked as _ranked  # noqa: F401  (registers "ranked")
from keypatch.proposers import screened as _screened  # noqa: F401  (registers "screened")
from keypatch.proposers import stochastic as _stochastic  # noqa: F401  (registers "stochastic")
from keypatch.proposers import swap as _swap  # noqa: F401  (registers "swap")
from keypatch.proposers.base import Proposal, Proposer, available, get_proposer, register

__all__ = ["Proposal", "Proposer", "available", "get_proposer", "register"]
