r"""Exercise 4 (implement): the shaping function f(p) on refinement tokens, and its gradient.

A refinement is an off-policy sample: the policy wrote it *with a critique in its prompt*, but it is
trained as the answer to the bare question. Its tokens carry no PPO ratio; instead each token's
probability p = pi_theta(y_t | q, y_<t) = exp(logp) goes through

    f(p) = p / (p + gamma),         gamma = 0.1,

and the per-token loss is -A * f(p). What the optimiser sees is the gradient with respect to logp
(every model's output is a log-prob, and d logp / d theta is the usual score function):

    d f / d logp = p * f'(p) = gamma * p / (p + gamma)^2.

Unshaped, -A * logp would give every token the weight 1. Work out Q1 below on paper first.

Implement:
- shaping(p, gamma): f(p), elementwise, differentiable through p (use torch operations).
  gamma must be > 0: with gamma = 0, f == 1 and the gradient is 0, which silently turns the
  refinement off; raise an exception (AssertionError or ValueError) instead. "Shaping off" is
  gamma=None, handled by the caller, not here.
- shaping_grad(p, gamma): d f / d logp at p, elementwise, as a tensor (the closed form above, or
  torch.autograd through your shaping with logp = log(p) as the leaf).

Questions for yourself (not graded; your instructor has the answers):
  Q1. Where is gamma p / (p + gamma)^2 largest, what is it there, and what does it tend to as
      p -> 0 and p -> 1?
  Q2. For which p does a shaped token weigh more than a token the policy is sure of (p = 1)?
      (Look for a symmetry between p and gamma^2 / p.)
  Q3. At gamma = 0.1, roughly how large is the shaped weight of a token with 0.01 < p < 1
      compared with the weight 1 that -A * logp gives every token? Keep the answer for
      exercise 8.

Grade:  pytest exercises/test_04_shaping.py
"""
from __future__ import annotations

import torch


def shaping(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """f(p) = p / (p + gamma), same shape as p."""
    raise NotImplementedError


def shaping_grad(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """d f / d logp = gamma p / (p + gamma)^2, same shape as p."""
    raise NotImplementedError
