r"""Exercise 7 (implement): the per-token Critique-GRPO loss and its aggregation (step 7).

Shapes: N sequences (initial responses and refinements, flattened), R response positions (padded).
logp[i, t] = log pi_theta(y_it | q, y_i<t) under the *bare* question, old_logp the same under
the policy that sampled (detached), advantages (N,) one per sequence, off_policy (N,) True for
refinements.

policy_loss: the loss to MINIMISE, per token (N, R):
- initial responses (off_policy False), PPO's clipped surrogate with ratio = exp(logp - old_logp):
      clip_eps None:  -A * ratio
      clip_eps eps:   max(-A * ratio, -A * clamp(ratio, 1 - eps, 1 + eps))
                      (= -min(A ratio, A clip(ratio)), PPO's surrogate)
- refinements (off_policy True): no ratio and no clip (they were not sampled from this prompt):
      gamma None:     -A * logp                                 (shaping off)
      gamma g:        -A * f(exp(logp)),  f(p) = p / (p + g)   (exercise 4: your shaping,
                      imported below)
Every (i, t) gets a value, padding included; the mask is applied by aggregate.

aggregate(per_token, mask, denom, seq_weights=None): the scalar loss
      sum_i sum_t mask[i, t] * w_i * per_token[i, t] / denom,     w_i = seq_weights[i] or 1.
denom is a constant the caller computes once per optimizer step (Dr.GRPO: sequences in the
whole step x max_new_tokens). Do not replace it by anything computed from the tensors you are
given (the number of real tokens, N * R of this call): the trainer splits a step into
micro-batches that do not fit in memory together, calls aggregate on each and adds the
gradients, so
      aggregate(first half) + aggregate(second half) == aggregate(whole batch)     (same denom).
Padding (mask 0) may hold any finite value and must get zero gradient.

Questions for yourself (not graded; your instructor has the answers):
  Q1. Why do refinement tokens get no ratio and no clip? What would the "old" probability of a
      refinement token even be?
  Q2. With one update per batch of samples (the default) the clip never fires. Why, and when
      does it?
  Q3. Why divide by a constant rather than by the number of real tokens (two reasons: one about
      micro-batches, one about long and short answers)?

Grade:  pytest exercises/test_07_policy_loss.py
"""
from __future__ import annotations

import torch

from exercises.ex04_shaping import shaping  # noqa: F401  (yours, exercise 4)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                off_policy: torch.Tensor, *, clip_eps: float | None,
                gamma: float | None) -> torch.Tensor:
    """(N, R) per-token loss."""
    raise NotImplementedError


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, denom: float,
              seq_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar: masked (optionally per-sequence weighted) token sum / denom."""
    raise NotImplementedError
