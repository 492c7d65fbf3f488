r"""Exercise 8 (diagnose): without shaping, entropy rises. Which part of shaping prevents it?

Observed (LOG.md has the runs): with `--gamma none` (refinement tokens trained with
plain -A * logp) the entropy of refinement and initial tokens rises instead of falling and the gain
over GRPO goes; the official repo's issue 6 reports the same collapse (entropy up, p of refinement
tokens down). Two explanations fit that observation:

  (a) shaping damps rare tokens *relative to likely ones*: f(p) = p / (p + gamma) gives a token
      the policy would never say a small weight, so the refinement cannot drag the distribution
      towards it;
  (b) shaping scales the *whole* refinement term down: at gamma = 0.1 the weight
      gamma p / (p + gamma)^2 is about 0.1 for most tokens (exercise 4, Q3), ten times below the
      weight 1 of every on-policy token, so refinements simply push less.

To tell them apart you need a control: an "unshaped x 0.1" arm, -0.1 * A * logp, which has (b)'s
overall scale and none of (a)'s dependence on p. Work on one position with a 4-token vocabulary:
the policy's logits are LOGITS; token HIGH is likely, LOW is unlikely, RARE is rarer still. Take
the position's token to be a refinement token (off_policy True) of a correct refinement, and
compute, for each token t in {HIGH, LOW, RARE} and each arm:

  "shaped"     policy_loss with A = +1,   gamma = 0.1
  "unshaped"   policy_loss with A = +1,   gamma = None    (-logp)
  "control"    policy_loss with A = +0.1, gamma = None    (-0.1 * logp: unshaped x 0.1)

with your policy_loss from exercise 7 (`from exercises.ex07_policy_loss import policy_loss`) and
the entropy `loss.entropy` (H = logsumexp(z) - sum softmax(z) z; not an exercise):

    z = LOGITS.double().requires_grad_(True)
    logp = torch.log_softmax(z, -1)[t].view(1, 1)
    loss = policy_loss(logp, logp.detach(), torch.tensor([A], dtype=torch.float64),
                       torch.tensor([True]), clip_eps=0.2, gamma=gamma).sum()

Fill in `answers()` (every value a number; keys of the inner dicts "<token>_<arm>", e.g.
"low_control", with token in high / low / rare and arm in shaped / unshaped / control):

  "p"             {"high": ..., "low": ..., "rare": ...}: softmax(LOGITS) at the three tokens
  "grad_logp"     d loss / d logp, for all 9 "<token>_<arm>" keys
  "entropy_change"  the first-order change of H when the logits take a gradient-descent step on
                  that loss: d/d(eta) of H(z - eta * grad_z loss) at eta = 0, which is
                  -(grad_z H . grad_z loss), for all 9 keys
  "shaped_over_control"  {"high", "low", "rare"}: entropy_change of "shaped" divided by that of
                  "control", per token (1 = shaping acts exactly like the x 0.1 scale)
  "crossover_p"   the probability p < p_HIGH at which a shaped token weighs exactly as much as
                  the HIGH token does (solve gamma p / (p + gamma)^2 = that weight by hand)
  "on_policy_grad_logp"   d loss / d logp for token HIGH as an *initial-response* token
                  (off_policy False, A = +1, old_logp = logp.detach(), clip_eps=0.2, gamma=0.1)
  "on_policy_grad_logp_if_shaped"  the same if f(p) were wrongly applied to that on-policy
                  token (the loss -A * f(p) at p = exp(logp), gamma = 0.1): what a bug would do

Questions for yourself (not graded; your instructor has the answers):
  Q1. For LOW and for RARE, which explanation does the control support: is shaped close to
      control, or far below it? What decides which case a token falls in?
  Q2. Pushing up a token raises the entropy of this position for LOW and RARE but lowers it for
      HIGH. What property of the token decides the direction?
  Q3. The refinement of docs/one_step.md has tokens with p from 2.5e-06 to 0.9. Which of its
      tokens does shaping treat like the control, and which does it damp far more?
  Q4. What happens to the initial answers' learning signal if gamma is applied to them too?
  Q5. What run would settle (a) against (b) on the real model, and what would it need that
      train.py does not have?

Grade:  pytest exercises/test_08_shaping_entropy.py
"""
from __future__ import annotations

import torch

LOGITS = torch.tensor([4.0, 2.0, -0.1, -2.0])
HIGH, LOW, RARE = 0, 2, 3


def answers() -> dict:
    raise NotImplementedError
