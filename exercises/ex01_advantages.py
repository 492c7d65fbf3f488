r"""Exercise 1 (implement): the group advantage, step 6 of Critique-GRPO.

GRPO has no value network. Its baseline for a response is the mean reward of the answers to
the same question (its *group*). For a sequence i in group G (initial responses and refinements
alike):

    A_i = r_i - mean_{j in G} r_j                       (the paper; --scale_adv_by_std off)
    A_i = (r_i - mean_{j in G} r_j) / (std_G + eps)     (the release; scale_by_std=True)

    std_G = sqrt( sum_{j in G} (r_j - mean)^2 / (|G| - 1) )     Bessel's n - 1, as torch.std
    with |G| - 1 replaced by 1 for a group of one, and eps = 1e-6.

Rules the grader checks:
- groups may differ in size and their members need not be adjacent (group_ids like [0, 1, 0, 2]);
- an all-equal group (all wrong, all right, or a group of one) gets A = 0 *exactly*, never NaN;
- the result is a float tensor of shape (N,), one advantage per sequence.

Questions for yourself (not graded; your instructor has the answers):
  Q1. Why must an all-equal group give exactly 0 rather than "something tiny"? Think of what
      scale_by_std=True does to 1e-7 / (0 + eps), and of a group of one under torch.std.
  Q2. Why can the trainer not compute the mean over the whole batch instead of per group?

Grade:  pytest exercises/test_01_advantages.py
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool = False,
                     eps: float = 1e-6) -> torch.Tensor:
    """rewards (N,) floats, group_ids (N,) ints in 0..G-1 -> advantages (N,)."""
    raise NotImplementedError
