"""Rounds of proposals over a pool: a patch budget spent where it lowers the pool's error most
(:mod:`keypatch.rounds.budget`), and rounds that continue from the patches an earlier one chose
or annotators covered (:mod:`keypatch.rounds.after`)."""

from keypatch.rounds.budget import Allocation, allocate, check_budget, pool_proposals

__all__ = ["Allocation", "allocate", "check_budget", "pool_proposals"]
