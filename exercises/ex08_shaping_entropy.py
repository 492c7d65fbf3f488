r"""Exercise 8 (diagnose): no shaping, or shaping on the wrong tokens: why does entropy rise?

Observed (README Results, LOG.md 2026-11-26): with `--gamma none` (refinement tokens trained with
plain -A * logp) the entropy of refinement and initial tokens rises instead of falling and the gain
over GRPO goes; the official repo's issue 6 reports the same collapse (entropy up, p of refinement
tokens down). Find the mechanism on one position with a 4-token vocabulary.

The policy's logits at one position are LOGITS below: token HIGH is likely (p ~ 0.87), token LOW is
unlikely (p ~ 0.014) -- refinements, written with a critique in context, contain many such tokens
under the bare question. Take the position's token to be a refinement token (off_policy True) of a
correct refinement with advantage A = +1, and compute with the reference code (import loss as L):

    logp = torch.log_softmax(logits, -1)[token]                     (logits with requires_grad)
    loss = L.policy_loss(logp.view(1, 1), logp.detach().view(1, 1), torch.tensor([1.0]),
                         torch.tensor([True]), clip_eps=0.2, gamma=gamma).sum()
    H = L.entropy(logits.view(1, 1, -1)).sum()

  "grad_logp"   d loss / d logp, for each of "low_shaped", "low_unshaped", "high_shaped",
                "high_unshaped" (shaped: gamma = 0.1; unshaped: gamma = None)
  "entropy_change"  the first-order change of H when the logits take a gradient-descent step on
                that loss: dH/d(eta) at eta = 0 of H(logits - eta * grad_logits(loss)), i.e.
                -(grad_logits H . grad_logits loss), for the same four keys
  "most_entropy_raising"  which of the four keys raises H the most
  "on_policy_grad_logp"   d loss / d logp for token HIGH as an *initial-response* token
                (off_policy False, A = +1, old_logp = logp.detach(), the defaults clip_eps=0.2,
                gamma=0.1): what the code does
  "on_policy_grad_logp_if_shaped"  the same if f(p) were wrongly applied to that on-policy token
                (the loss -A * f(p) at p = exp(logp)): what a bug would do

Questions for yourself (not graded): by what factor does shaping damp the low-p token, and the
high-p one? Which direction does pushing up a rare token move the distribution's entropy? What
happens to the initial answers' learning signal if gamma is applied to them too?

Grade:     pytest exercises/test_08_shaping_entropy.py
Solution:  exercises/graders.py, solution_08 (computed with loss.policy_loss and loss.entropy).
"""
from __future__ import annotations

import torch

LOGITS = torch.tensor([4.0, 2.0, -0.1, -2.0])
HIGH, LOW = 0, 2


def answers() -> dict:
    raise NotImplementedError
