r"""Exercise 4 (implement): mixing the chosen refinements into the groups (step 5, "mix").

A step samples n_groups * group_size initial responses; response i belongs to group i // group_size.
Some of them were critiqued and refined: refinement j refines initial response refined[j] and has
reward refine_rewards[j]. For each group g, in order:

1. candidates = this group's refinements: the j with refined[j] in the group, in increasing j;
2. chosen = the candidates picked by critique.select_refinements(rewards of the candidates, k,
   selection, rng) (you may call it; it is exercise 3), mapped back to refinement indices j;
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

Grade:     pytest exercises/test_04_mixing.py
Solution:  critique.mix_groups.
"""
from __future__ import annotations

import random

import critique  # noqa: F401  (critique.select_refinements is yours to call)


def mix_groups(n_groups: int, group_size: int, refined: list[int], refine_rewards: list[float],
               k: int, selection: str, group_mode: str,
               rng: random.Random) -> list[tuple[int, int, bool]]:
    raise NotImplementedError
