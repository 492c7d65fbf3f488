"""The Critique-GRPO objective as pure tensor functions (no model, no config).

Letters, used in every shape comment:
    N   sequences: initial responses and refinements of all groups, flattened
    R   response length, padded (tokens after the first EOS are padding)
    V   vocabulary size
    r   0/1 reward of a sequence;  A  its advantage (one value per sequence, broadcast over tokens)
    p   pi_theta(y_t | q, y_<t) of a response token;  logp = log p
    gamma   shaping temperature of f(p) = p / (p + gamma)
Equations are named after arXiv 2506.03106 (v6, sec. 3): [GRPO] the clipped surrogate,
[Adv] the group advantage, [Shape] the shaping function f, [Obj] the Critique-GRPO objective.
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale_by_std: bool = False,
                     eps: float = 1e-6) -> torch.Tensor:
    """[Adv] A_i = r_i - mean(r over i's group); with scale_by_std, divided by (std + eps).

    std is the unbiased (Bessel, n - 1) estimate, as torch.std and the released verl code use.
    Groups may differ in size (the paper refines only all-wrong groups). An all-equal group gets
    A = 0 exactly: r - mean is 0, and 0 / (std + eps) = 0 (a group of one has std 0 here, not NaN).
    """
    assert rewards.dim() == 1 and rewards.shape == group_ids.shape  # (N,)
    rewards = rewards.float()
    G = int(group_ids.max()) + 1
    count = torch.zeros(G).index_add_(0, group_ids, torch.ones_like(rewards))          # (G,)
    mean = torch.zeros(G).index_add_(0, group_ids, rewards) / count                    # (G,)
    centered = rewards - mean[group_ids]                                               # (N,)
    if not scale_by_std:
        return centered
    sq = torch.zeros(G).index_add_(0, group_ids, centered ** 2)                         # (G,)
    std = (sq / (count - 1).clamp(min=1)).sqrt()                                       # (G,) Bessel
    return centered / (std[group_ids] + eps)


def shaping(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """[Shape] f(p) = p / (p + gamma). d f / d logp = gamma p / (p + gamma)^2: small for tokens the
    policy already finds likely (p -> 1) and for very unlikely ones, largest at p = gamma."""
    assert gamma > 0, ("gamma = 0 makes f == 1 and kills the gradient; "
                       "use gamma=None to turn shaping off")
    return p / (p + gamma)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                off_policy: torch.Tensor, *, clip_eps: float | None,
                gamma: float | None) -> torch.Tensor:
    """Per-token loss (N, R) to be MINIMISED (= minus the [Obj] integrand).

    On-policy tokens (initial responses): [GRPO] -A * ratio, ratio = exp(logp - old_logp),
    PPO-clipped at 1 +- clip_eps when clip_eps is set (the paper's equation), unclipped when None
    (the release). Off-policy tokens (refinements): -A * f(p) with p = exp(logp) [Shape]: no
    behaviour ratio, no clip; with gamma None, -A * logp (shaping off).
    """
    N, R = logp.shape                                                           # (N, R)
    assert old_logp.shape == (N, R) and advantages.shape == (N,) and off_policy.shape == (N,)
    A = advantages[:, None]                                                     # (N, 1)
    ratio = torch.exp(logp - old_logp)                                          # (N, R)
    on = -A * ratio                                                             # [GRPO] unclipped
    if clip_eps is not None:
        on = torch.max(on, -A * ratio.clamp(1 - clip_eps, 1 + clip_eps))        # [GRPO] clipped
    # [Obj] refinement term
    off = -A * (logp if gamma is None else shaping(torch.exp(logp), gamma))
    return torch.where(off_policy[:, None], off, on)                            # (N, R)


def off_policy_health(logp: torch.Tensor, ent: torch.Tensor, mask: torch.Tensor,
                      off_policy: torch.Tensor, old_logp: torch.Tensor, clip_eps: float | None,
                      gamma: float | None) -> dict[str, torch.Tensor]:
    """Sums (divide by the counts) that show whether off-policy training is healthy (the official
    repo's issue 6: collapse with rising entropy): p and [Shape] f(p) of refinement tokens under the
    bare question, token entropy of refinements vs initial responses, and how many initial tokens
    the [GRPO] clip cuts."""
    off = mask & off_policy[:, None]  # (N, R) refinement tokens
    on = mask & ~off_policy[:, None]  # (N, R) initial-response tokens
    p = torch.exp(logp.detach())
    ratio = torch.exp(logp.detach() - old_logp)
    clipped = (ratio - 1).abs() > clip_eps if clip_eps is not None else torch.zeros_like(on)
    return {"off_tokens": off.sum(), "off_p": (p * off).sum(),
            "off_f": ((p if gamma is None else shaping(p, gamma)) * off).sum(),
            "off_entropy": (ent.detach() * off).sum(), "on_tokens": on.sum(),
            "on_entropy": (ent.detach() * on).sum(), "on_clipped": (clipped & on).sum()}


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, denom: float,
              seq_weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum over tokens (optionally weighted per sequence) / a constant denominator.

    The constant (sequences in the whole mini-batch, over every process, x max response length,
    Dr.GRPO style; the whole step when updates_per_batch is 1) does not depend on how the mini-batch
    is split into micro-batches, so summing micro-batch losses gives the mini-batch's loss.
    """
    assert per_token.shape == mask.shape                                               # (N, R)
    w = mask.float() if seq_weights is None else mask.float() * seq_weights[:, None]
    return (per_token * w).sum() / denom


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy H = logsumexp(z) - sum softmax(z) z of the policy, (N, R, V) -> (N, R)."""
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate exp(ref - logp) - (ref - logp) - 1 >= 0 (Schulman's k3,
    as DeepSeek-R1's GRPO); used only for the R1-GRPO-with-KL baseline."""
    d = ref_logp - logp                                                               # (N, R)
    return torch.exp(d) - d - 1
