r"""Exercise 2 (implement): the shaping function f(p) on refinement tokens, and its gradient.

A refinement is an off-policy sample: the policy wrote it *with a critique in its prompt*, but it is
trained as the answer to the bare question. Its tokens carry no PPO ratio; instead each token's
probability p = pi_theta(y_t | q, y_<t) = exp(logp) goes through

    f(p) = p / (p + gamma),         gamma = 0.1,

and the per-token loss is -A * f(p). What the optimiser sees is the gradient with respect to logp
(every model's output is a log-prob, and d logp / d theta is the usual score function):

    d f / d logp = p * f'(p) = gamma * p / (p + gamma)^2.

Unshaped, -A * logp would give every token the weight 1. Work out (on paper first) where
gamma * p / (p + gamma)^2 is largest and what it tends to as p -> 0 and p -> 1.

Implement:
- shaping(p, gamma): f(p), elementwise, differentiable through p (use torch operations).
  gamma must be > 0: with gamma = 0, f == 1 and the gradient is 0, which silently turns the
  refinement off; raise an exception (AssertionError or ValueError) instead. "Shaping off" is
  gamma=None, handled by the caller, not here.
- shaping_grad(p, gamma): d f / d logp at p, elementwise, as a tensor (the closed form above, or
  torch.autograd through your shaping with logp = log(p) as the leaf).

Grade:     pytest exercises/test_02_shaping.py
Solution:  loss.shaping; the gradient by autograd, as in
           tests/test_loss.py::test_shaping_gradient_at_half.
"""
from __future__ import annotations

import torch


def shaping(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """f(p) = p / (p + gamma), same shape as p."""
    raise NotImplementedError


def shaping_grad(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """d f / d logp = gamma p / (p + gamma)^2, same shape as p."""
    raise NotImplementedError
