"""The instructor's reference answers (not in the student copy: exercises/student_copy.py leaves
this file out, with make_fixtures.py and answer_key.md).

The implement exercises' references are the repository's own functions (REFERENCE below); the
answers of the by-hand and diagnose exercises are computed here with the reference code.
exercises/make_fixtures.py records all of them in exercises/fixtures/, which the graders read;
tests/test_exercises.py checks that every grader passes these references.
"""
from __future__ import annotations

import torch

import critique
import loss as L

# exercise file -> the reference functions the student rewrites, in the grader's argument order
REFERENCE = {
    "ex01_advantages": ("loss", ["group_advantages"]),
    "ex03_refinement_prompt": ("critique", ["refinement_prompt"]),
    "ex04_shaping": ("loss", ["shaping"]),
    "ex05_selection": ("critique", ["select_refinements"]),
    "ex06_mixing": ("critique", ["mix_groups"]),
    "ex07_policy_loss": ("loss", ["policy_loss", "aggregate"]),
}


def shaping_grad(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """d f / d logp by autograd through loss.shaping (float64): exercise 4's shaping_grad."""
    logp = torch.log(p.detach().double()).requires_grad_(True)
    (grad,) = torch.autograd.grad(L.shaping(torch.exp(logp), gamma).sum(), logp)
    return grad


def _advantages(groups: list[list[float]], scale_by_std: bool = False) -> list[list[float]]:
    """loss.group_advantages over several groups, in float64, back as one list per group."""
    rewards = torch.tensor([float(r) for rs in groups for r in rs], dtype=torch.float64)
    ids = torch.tensor([g for g, rs in enumerate(groups) for _ in rs])
    A = L.group_advantages(rewards, ids, scale_by_std=scale_by_std).double()
    return [A[ids == g].tolist() for g in range(len(groups))]


def solution_00(groups: list[list[int]]) -> dict:
    """Exercise 0, computed with loss.group_advantages."""
    A, A_std = _advantages(groups), _advantages(groups, scale_by_std=True)
    return {"baseline_q0": sum(groups[0]) / len(groups[0]),
            "advantages_q0": A[0], "advantages_q1": A[1], "advantages_q2": A[2],
            "advantages_q0_std": A_std[0], "advantages_q2_std": A_std[2],
            "grad_logp_q0": [-a for a in A[0]],  # d(-A ratio)/d logp at ratio 1
            "sum_advantages_q1": float(sum(A[1])),
            "zero_adv_frac": sum(len(set(rs)) == 1 for rs in groups) / len(groups),
            "pushed_up_q1": [i for i, a in enumerate(A[1]) if a > 0]}


def solution_02(initial: list[list[int]], refinement_rewards: dict[int, float]) -> dict:
    """Exercise 2, computed with loss.group_advantages."""
    trained = [[float(r) for r in rs] + ([refinement_rewards[g]] if g in refinement_rewards else [])
               for g, rs in enumerate(initial)]
    A, A_std, before = _advantages(trained), _advantages(trained, True), _advantages(initial)
    return {"advantages_group0_before": before[0], "rewards_group0": trained[0],
            "advantages_group0": A[0],
            "positive_index": next(i for i, a in enumerate(A[0]) if a > 0),
            "advantages_group0_std": A_std[0], "advantages_group1": A[1],
            "advantages_group2": A[2], "sum_advantages_group0": float(sum(A[0])),
            "zero_adv_frac_before": sum(len(set(rs)) == 1 for rs in initial) / len(initial),
            "zero_adv_frac_after": sum(len(set(rs)) == 1 for rs in trained) / len(trained)}


ARMS_08 = {"shaped": (1.0, 0.1), "unshaped": (1.0, None), "control": (0.1, None)}  # (A, gamma)


def solution_08(logits: torch.Tensor, high: int, low: int, rare: int,
                policy_loss=L.policy_loss) -> dict:
    """Exercise 8, computed with loss.policy_loss, loss.shaping and loss.entropy."""
    def grads(token, off, A, gamma):
        z = logits.detach().clone().double().requires_grad_(True)
        logp = torch.log_softmax(z, -1)[token].view(1, 1)
        if gamma == "bug":  # f(p) applied to an on-policy token
            out = -A * L.shaping(torch.exp(logp), 0.1).sum()
        else:
            out = policy_loss(logp, logp.detach(), torch.tensor([A], dtype=torch.float64),
                              torch.tensor([off]), clip_eps=0.2, gamma=gamma).sum()
        g_logp, g_z = torch.autograd.grad(out, (logp, z))
        return float(g_logp), g_z

    z = logits.detach().clone().double().requires_grad_(True)
    (g_H,) = torch.autograd.grad(L.entropy(z.view(1, 1, -1)).sum(), z)
    probs = torch.softmax(logits.double(), -1)
    tokens = {"high": high, "low": low, "rare": rare}
    grad_logp, entropy_change = {}, {}
    for name, token in tokens.items():
        for arm, (A, gamma) in ARMS_08.items():
            grad_logp[f"{name}_{arm}"], g_z = grads(token, True, A, gamma)
            entropy_change[f"{name}_{arm}"] = float(-(g_H * g_z).sum())
    gamma, p_high = 0.1, float(probs[high])
    return {"p": {name: float(probs[t]) for name, t in tokens.items()},
            "grad_logp": grad_logp, "entropy_change": entropy_change,
            "shaped_over_control": {
                n: entropy_change[f"{n}_shaped"] / entropy_change[f"{n}_control"] for n in tokens},
            "crossover_p": gamma ** 2 / p_high,  # the weight is the same at p and gamma^2 / p
            "on_policy_grad_logp": grads(high, False, 1.0, 0.1)[0],
            "on_policy_grad_logp_if_shaped": grads(high, False, 1.0, "bug")[0]}


def solution_09(run_dir: str, reference_dir: str) -> dict:
    """Exercise 9, read from the two runs' files. The phrase: the run of 3 or 4 words in the most
    refine_ft final answers among those in under a tenth of Critique-GRPO's."""
    from exercises import graders as G
    run, ref = G.read_run(run_dir), G.read_run(reference_dir)
    phrases = G.candidate_phrases(run["answers"], ref["answers"])
    phrase = phrases[0] if phrases else ""
    refinements = G.correct_refinements(reference_dir)
    return {"run_dir": str(run_dir), "reference_dir": str(reference_dir),
            "accuracy": {"step0": run["evals"][0], "final": run["evals"][max(run["evals"])]},
            "max_grad_norm": {"refine_ft": max(m["grad_norm"] for m in run["steps"]),
                              "critique_grpo": max(m["grad_norm"] for m in ref["steps"])},
            "examples_per_step": [m.get("baseline/examples", 0) for m in run["steps"]],
            "phrase": phrase,
            "phrase_share": {"refine_ft": G.share_containing(run["answers"], phrase),
                             "critique_grpo": G.share_containing(ref["answers"], phrase)},
            "phrase_in_refinements": G.share_containing(refinements, phrase),
            "correct_refinements": len(refinements)}


def exercise_data() -> dict:
    """The data of the by-hand and diagnose exercises, from the exercise files."""
    from exercises import ex00_grpo_warmup as e0, ex02_all_wrong_group as e2
    from exercises import ex08_shaping_entropy as e8
    return {"ex00": (e0.GROUPS,), "ex02": (e2.INITIAL_REWARDS, e2.REFINEMENT_REWARDS),
            "ex08": (e8.LOGITS, e8.HIGH, e8.LOW, e8.RARE)}


def answers_00() -> dict:
    return solution_00(*exercise_data()["ex00"])


def answers_02() -> dict:
    return solution_02(*exercise_data()["ex02"])


def answers_08() -> dict:
    return solution_08(*exercise_data()["ex08"])


def reference_functions(exercise: str) -> list:
    """The reference functions of an implement exercise, e.g. [loss.policy_loss, loss.aggregate];
    exercise 4's shaping_grad is autograd through loss.shaping."""
    if exercise == "ex04_shaping":
        return [L.shaping, shaping_grad]
    module, names = REFERENCE[exercise]
    return [getattr({"loss": L, "critique": critique}[module], n) for n in names]

