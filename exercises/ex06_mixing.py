r"""Exercise 6 (implement): mixing the chosen refinements into the groups (step 5, "mix").

A step samples n_groups * group_size initial responses; response i belongs to group i // group_size.
Some of them were critiqued and refined: refinement j refines initial response refined[j] and has
reward refine_rewards[j]. For each group g, in order:

1. candidates = this group's refinements: the j with refined[j] in the group, in increasing j;
2. chosen = the candidates picked by select_refinements(rewards of the candidates, k,
   selection, rng) (yours, from exercise 5, imported below), mapped back to refinement
   indices j;
   a group without candidates chooses nothing and draws nothing from rng;
3. the group trains on
   - "append" (the paper: sample 7, add 1): every initial response of the group, then the chosen;
   - "replace" (the release: sample 8, overwrite slot 0): the group's initial responses minus its
     first len(chosen), then the chosen.

Return one (group, index, off_policy) tuple per training sequence, group by group: index is an
initial-response index when off_policy is False and a refinement index j when it is True.

Example: 2 groups of 3, refined = [3, 4, 5] (group 1 was all wrong), refine_rewards = [0, 1, 0],
k = 1, "first_correct", "append" ->
    [(0, 0, False), (0, 1, False), (0, 2, False),
     (1, 3, False), (1, 4, False), (1, 5, False), (1, 1, True)]

Questions for yourself (not graded; your instructor has the answers):
  Q1. "append" (7 + 1) against "replace" (8, slot 0 overwritten): what does replace throw
      away, and for which groups does that matter?
  Q2. Why must a group without candidates draw nothing from rng?

Grade:  pytest exercises/test_06_mixing.py
"""
from __future__ import annotations

import random

from exercises.ex05_selection import select_refinements  # noqa: F401  (yours, exercise 5)


def mix_groups(n_groups: int, group_size: int, refined: list[int], refine_rewards: list[float],
               k: int, selection: str, group_mode: str,
               rng: random.Random) -> list[tuple[int, int, bool]]:
    raise NotImplementedError
