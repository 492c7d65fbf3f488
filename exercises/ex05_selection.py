r"""Exercise 5 (implement): which refinements of one question join its group (step 5, "select").

Each question whose answers were critiqued has several refinements, with 0/1 rewards (a reward > 0
counts as correct). k of them join the group. Three rules, named by --selection:

- "first_correct" (the release): the correct ones first, in order, then the first remaining ones;
  return the first k of that list.
- "correct_then_random" (the paper): the correct ones first, in order, then the remaining (wrong)
  ones in random order; the first k of that list.
- "random" (the paper's ablation): k indices at random (all of them if fewer than k), sorted.

Randomness must come from `rng` (a random.Random), drawn exactly like this, because training shares
one rng across all groups and a run must repeat exactly:
- "random": sorted(rng.sample(indices, min(k, len(indices)))) with indices = [0, 1, ..., n-1];
- "correct_then_random": wrong = rng.sample(wrong, len(wrong)) (one call, even when k is already
  filled by correct ones); "first_correct" draws nothing.

Returns a list of indices into `rewards`, of length min(k, len(rewards)).

Questions for yourself (not graded; your instructor has the answers):
  Q1. Why does the paper put correct refinements first, and what does the "random" ablation
      measure?
  Q2. The picks can be right while the number of random draws differs. Why does the grader
      still fail that, and what would it break in a real run?

Grade:  pytest exercises/test_05_selection.py
"""
from __future__ import annotations

import random


def select_refinements(rewards: list[float], k: int, mode: str, rng: random.Random) -> list[int]:
    raise NotImplementedError
