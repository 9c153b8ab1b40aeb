"""Proposers: patch-selection strategies behind one registry.

A new strategy is one file with a :class:`Proposer` subclass decorated with :func:`register`, and
one import line below.
"""

from keypatch.proposers import greedy as _greedy  # noqa: F401  (registers "greedy")
from keypatch.proposers import random as _random  # noqa: F401  (registers "random")
from keypatch.proposers.base import Proposal, Proposer, available, get_proposer, register

__all__ = ["Proposal", "Proposer", "available", "get_proposer", "register"]
