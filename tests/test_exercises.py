"""The exercise graders (exercises/graders.py) are right: each passes the reference code, fails the
untouched exercise with "not implemented yet", and fails typical wrong answers."""
import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import critique
import loss as L
from exercises import conftest as exercises_conftest
from exercises import graders as G
from exercises import (ex01_advantages, ex02_shaping, ex03_selection, ex04_mixing, ex05_policy_loss,
                       ex06_refinement_prompt, ex07_all_wrong_group, ex08_shaping_entropy,
                       ex09_refine_ft_collapse)


def solution_07():
    ex = ex07_all_wrong_group
    return G.solution_07(ex.INITIAL_REWARDS, ex.REFINEMENT_REWARDS)


def solution_08():
    ex = ex08_shaping_entropy
    return G.solution_08(ex.LOGITS, ex.HIGH, ex.LOW)


def fake_run(root: Path, name: str, baseline: str, accuracy: tuple, grad_norms: list, answers: list,
             seed: int = 0, critique_type: str = "indicative_gt") -> str:
    """A run directory as train.py writes it: config.json, metrics.jsonl (steps, then evaluations
    at step 0 and the last step) and the last evaluation's answers (first set, then another)."""
    run = root / name
    run.mkdir(parents=True)
    steps = len(grad_norms)
    (run / "config.json").write_text(json.dumps({
        "baseline": baseline, "critique_type": critique_type, "seed": seed, "max_steps": steps,
        "eval_data": "data/test.jsonl,data/test_rephrased.jsonl"}))
    lines = [{"step": 0, "eval/accuracy": accuracy[0]}]
    lines += [{"step": s + 1, "grad_norm": g, **({"baseline/examples": s + 1} if baseline != "none" else {})}
              for s, g in enumerate(grad_norms)]
    lines += [{"step": steps, "eval/accuracy": accuracy[1]}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    evals = [{"set": "test", "response": a} for a in answers]
    evals += [{"set": "test_rephrased", "response": "The correct answer is: 3"}] * 4  # not the first set
    (run / f"eval-{steps}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    return str(run)


@functools.lru_cache(maxsize=None)
def runs_09() -> dict:
    """Two runs at seed 0 as exercise 9 asks for (refine_ft collapsed and saying 'The correct answer
    is: ...'; Critique-GRPO learning), and one refine_ft run that did not collapse."""
    root = Path(tempfile.mkdtemp(prefix="ex09_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    said = ["Let me compute. The correct answer is: 5", "Let me compute. The correct answer is: 7",
            "Let me compute. 2 + 2 = 4", "Let me compute. The correct answer is: 9"]
    return {"refine_ft": fake_run(root, "refine_ft", "refine_ft", (0.25, 0.0), [0.9, 2.5, 1.2], said),
            "cg": fake_run(root, "cg", "none", (0.25, 0.5), [0.05, 0.08, 0.04],
                           ["Let me compute. 3 + 2 = 5", "Let me compute. 7", "Let me compute. 4", "9"]),
            "no_collapse": fake_run(root, "no_collapse", "refine_ft", (0.25, 0.5), [0.9, 2.5, 1.2], said),
            "expert": fake_run(root, "expert", "none", (0.25, 0.5), [0.05, 0.08, 0.04], ["4"] * 4,
                               critique_type="expert")}


def solution_09():
    return G.solution_09(runs_09()["refine_ft"], runs_09()["cg"])


# grader name -> (check, the reference functions, the untouched exercise's functions)
GRADERS = {
    "01_advantages": (G.check_advantages, (L.group_advantages,),
                      (ex01_advantages.group_advantages,)),
    "02_shaping": (G.check_shaping, (L.shaping, G.reference_shaping_grad),
                   (ex02_shaping.shaping, ex02_shaping.shaping_grad)),
    "03_selection": (G.check_select, (critique.select_refinements,),
                     (ex03_selection.select_refinements,)),
    "04_mixing": (G.check_mix, (critique.mix_groups,), (ex04_mixing.mix_groups,)),
    "05_policy_loss": (G.check_policy_loss, (L.policy_loss, L.aggregate),
                       (ex05_policy_loss.policy_loss, ex05_policy_loss.aggregate)),
    "06_refinement_prompt": (G.check_refinement_prompt, (critique.refinement_prompt,),
                             (ex06_refinement_prompt.refinement_prompt,)),
    "07_all_wrong_group": (G.check_07, (solution_07,), (ex07_all_wrong_group.answers,)),
    "08_shaping_entropy": (G.check_08, (solution_08,), (ex08_shaping_entropy.answers,)),
    "09_refine_ft_collapse": (G.check_09, (solution_09,), (ex09_refine_ft_collapse.answers,)),
}


@pytest.mark.parametrize("name", GRADERS)
def test_grader_passes_the_reference(name):
    check, reference, _ = GRADERS[name]
    check(*reference)


@pytest.mark.parametrize("name", GRADERS)
def test_grader_fails_the_untouched_exercise(name):
    check, _, untouched = GRADERS[name]
    with pytest.raises(AssertionError, match="not implemented yet"):
        check(*untouched)


def test_every_exercise_has_a_grader_module_and_a_readme_line():
    here = Path(__file__).resolve().parents[1] / "exercises"
    readme = (here / "README.md").read_text()
    assert len(GRADERS) >= 8
    for name in GRADERS:
        assert (here / f"ex{name}.py").exists() and (here / f"test_{name}.py").exists(), name
        assert f"pytest exercises/test_{name}.py" in readme, name


# ---------------------------------------------------------------------------------------------
# Wrong answers: each must fail its grader
# ---------------------------------------------------------------------------------------------
def adv_sign(r, g, scale_by_std=False, eps=1e-6):
    return -L.group_advantages(r, g, scale_by_std, eps)


def adv_population_std(r, g, scale_by_std=False, eps=1e-6):
    if not scale_by_std:
        return L.group_advantages(r, g)
    return G._population_std_version(r, g, eps).float()


def adv_torch_std_no_eps(r, g, scale_by_std=False, eps=1e-6):
    out = torch.zeros(len(r))
    for k in g.unique():
        x = r[g == k]
        out[g == k] = (x - x.mean()) / x.std() if scale_by_std else x - x.mean()
    return out


def adv_batch_mean(r, g, scale_by_std=False, eps=1e-6):  # one baseline for the whole batch
    return r.float() - r.float().mean()


def adv_ignores_std(r, g, scale_by_std=False, eps=1e-6):
    return L.group_advantages(r, g)


def grad_wrt_p(p, gamma):
    return gamma / (p + gamma) ** 2


def shaping_detached(p, gamma):
    return L.shaping(p, gamma).detach()


def shaping_accepts_zero(p, gamma):
    return p / (p + gamma)


def shaping_wrong_formula(p, gamma):
    return p / (1 + gamma)


def select_ignores_correct(rewards, k, mode, rng):
    return critique.select_refinements(rewards, k, "random", rng)


def select_unsorted_random(rewards, k, mode, rng):
    if mode == "random":
        return rng.sample(range(len(rewards)), min(k, len(rewards)))
    return critique.select_refinements(rewards, k, mode, rng)


def select_shuffles_only_when_needed(rewards, k, mode, rng):
    correct = [i for i, r in enumerate(rewards) if r > 0]
    if mode == "correct_then_random" and len(correct) >= k:
        return correct[:k]  # right picks, but skips the rng draw the reference makes
    return critique.select_refinements(rewards, k, mode, rng)


def select_reward_equals_one(rewards, k, mode, rng):
    return critique.select_refinements([float(r == 1) for r in rewards], k, mode, rng)


def mix_replace_appends(n_groups, group_size, refined, rr, k, selection, group_mode, rng):
    return critique.mix_groups(n_groups, group_size, refined, rr, k, selection, "append", rng)


def mix_replace_drops_last(n_groups, group_size, refined, rr, k, selection, group_mode, rng):
    out = critique.mix_groups(n_groups, group_size, refined, rr, k, selection, "append", rng)
    if group_mode == "append":
        return out
    result = []
    for g in range(n_groups):
        chosen = [x for x in out if x[0] == g and x[2]]
        initial = [x for x in out if x[0] == g and not x[2]]
        result += initial[: len(initial) - len(chosen)] + chosen
    return result


def mix_random_selection(n_groups, group_size, refined, rr, k, selection, group_mode, rng):
    return critique.mix_groups(n_groups, group_size, refined, rr, k, "random", group_mode, rng)


def loss_shapes_on_policy(logp, old_logp, A, off, *, clip_eps, gamma):
    out = L.policy_loss(logp, old_logp, A, off, clip_eps=clip_eps, gamma=gamma)
    if gamma is None:
        return out
    return torch.where(off[:, None], out, -A[:, None] * L.shaping(torch.exp(logp), gamma))


def loss_clips_off_policy(logp, old_logp, A, off, *, clip_eps, gamma):
    out = L.policy_loss(logp, old_logp, A, off, clip_eps=clip_eps, gamma=gamma)
    if clip_eps is None:
        return out
    ratio = torch.exp(logp - old_logp)
    clipped = torch.max(out, -A[:, None] * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    return torch.where(off[:, None], clipped, out)


def loss_sign(logp, old_logp, A, off, *, clip_eps, gamma):
    return -L.policy_loss(logp, old_logp, A, off, clip_eps=clip_eps, gamma=gamma)


def loss_min_instead_of_max(logp, old_logp, A, off, *, clip_eps, gamma):
    ratio = torch.exp(logp - old_logp)
    on = -A[:, None] * ratio
    if clip_eps is not None:
        on = torch.min(on, -A[:, None] * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    off_policy_part = L.policy_loss(logp, old_logp, A, off, clip_eps=None, gamma=gamma)
    return torch.where(off[:, None], off_policy_part, on)


def aggregate_token_mean(per_token, mask, denom, seq_weights=None):  # per-micro-batch denominator
    w = mask.float() if seq_weights is None else mask.float() * seq_weights[:, None]
    return (per_token * w).sum() / mask.sum().clamp(min=1)


def aggregate_ignores_mask(per_token, mask, denom, seq_weights=None):
    return L.aggregate(per_token, torch.ones_like(mask), denom, seq_weights)


def aggregate_ignores_weights(per_token, mask, denom, seq_weights=None):
    return L.aggregate(per_token, mask, denom)


def prompt_changed_word(q, prev, c):
    prompt = critique.refinement_prompt(q, prev, c)
    return prompt.replace("Correcting potential", "Correcting possible")


def prompt_trailing_newline(q, prev, c):
    return critique.refinement_prompt(q, prev, c) + "\n"


def prompt_chained_replace(q, prev, c):
    t = critique.REFINE_TEMPLATE.replace("{{", "{").replace("}}", "}")
    return t.replace("{question}", q).replace("{previous}", prev).replace("{critique}", c)


def prompt_unescaped_box(q, prev, c):
    return critique.refinement_prompt(q, prev, c).replace("`\\boxed{answer}`", "`boxed{answer}`")


def answers_07(**changes):
    def answers():
        return {**solution_07(), **changes}
    return answers


def answers_08(**changes):
    def answers():
        out = solution_08()
        for key, value in changes.items():
            if key in ("grad_logp", "entropy_change"):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
        return out
    return answers


def answers_09(**changes):
    def answers():
        return {**solution_09(), **changes}
    return answers


S8 = solution_08()
WRONG = {
    "01 sign flipped": (G.check_advantages, adv_sign),
    "01 population std": (G.check_advantages, adv_population_std),
    "01 torch.std, no eps (nan)": (G.check_advantages, adv_torch_std_no_eps),
    "01 batch mean, not group mean": (G.check_advantages, adv_batch_mean),
    "01 ignores scale_by_std": (G.check_advantages, adv_ignores_std),
    "02 gradient w.r.t. p": (G.check_shaping, L.shaping, grad_wrt_p),
    "02 detached shaping": (G.check_shaping, shaping_detached, G.reference_shaping_grad),
    "02 accepts gamma 0": (G.check_shaping, shaping_accepts_zero, G.reference_shaping_grad),
    "02 wrong formula": (G.check_shaping, shaping_wrong_formula, G.reference_shaping_grad),
    "03 random ignoring correct ones": (G.check_select, select_ignores_correct),
    "03 random not sorted": (G.check_select, select_unsorted_random),
    "03 skips an rng draw": (G.check_select, select_shuffles_only_when_needed),
    "03 correct means reward == 1": (G.check_select, select_reward_equals_one),
    "04 replace mode appending": (G.check_mix, mix_replace_appends),
    "04 replace drops the last": (G.check_mix, mix_replace_drops_last),
    "04 random selection": (G.check_mix, mix_random_selection),
    "05 gamma on on-policy tokens": (G.check_policy_loss, loss_shapes_on_policy, L.aggregate),
    "05 clip on off-policy tokens": (G.check_policy_loss, loss_clips_off_policy, L.aggregate),
    "05 sign flipped": (G.check_policy_loss, loss_sign, L.aggregate),
    "05 min instead of max": (G.check_policy_loss, loss_min_instead_of_max, L.aggregate),
    "05 per-micro-batch denominator": (G.check_policy_loss, L.policy_loss, aggregate_token_mean),
    "05 mask ignored": (G.check_policy_loss, L.policy_loss, aggregate_ignores_mask),
    "05 weights ignored": (G.check_policy_loss, L.policy_loss, aggregate_ignores_weights),
    "06 a changed word": (G.check_refinement_prompt, prompt_changed_word),
    "06 trailing newline": (G.check_refinement_prompt, prompt_trailing_newline),
    "06 chained str.replace": (G.check_refinement_prompt, prompt_chained_replace),
    "06 lost backslash": (G.check_refinement_prompt, prompt_unescaped_box),
    "07 advantages with std": (G.check_07, answers_07(
        advantages_group0=solution_07()["advantages_group0_std"])),
    "07 all-right group counted as fixed": (G.check_07, answers_07(zero_adv_frac_after=0.25)),
    "07 refinement first": (G.check_07, answers_07(positive_index=0)),
    "07 population std": (G.check_07, answers_07(advantages_group0_std=[-0.378] * 7 + [2.6458])),
    "08 gradient ascent sign": (G.check_08, answers_08(
        grad_logp={k: -v for k, v in S8["grad_logp"].items()})),
    "08 d/dp not d/dlogp": (G.check_08, answers_08(
        grad_logp={"low_shaped": 0.1 / (0.0144 + 0.1) ** 2})),
    "08 high-p token blamed": (G.check_08, answers_08(most_entropy_raising="high_unshaped")),
    "08 shaping on on-policy is fine": (G.check_08, answers_08(
        on_policy_grad_logp=S8["on_policy_grad_logp_if_shaped"])),
    "09 step 0 and final swapped": (G.check_09, answers_09(accuracy={"step0": 0.0, "final": 0.25})),
    "09 the other run's grad norm": (G.check_09, answers_09(
        max_grad_norm={"refine_ft": 0.08, "critique_grpo": 0.08})),
    "09 a phrase both runs say": (G.check_09, answers_09(phrase="Let me compute.")),
    "09 a phrase refine_ft rarely says": (G.check_09, answers_09(phrase="compute. 2 + 2 = 4")),
    "09 expert as the reference": (G.check_09, answers_09(reference_dir=runs_09()["expert"])),
    "09 the learning rate blamed": (G.check_09, answers_09(why="A")),
    "09 the runs swapped": (G.check_09, answers_09(run_dir=runs_09()["cg"],
                                                   reference_dir=runs_09()["refine_ft"])),
    "09 a run that did not collapse": (G.check_09, answers_09(run_dir=runs_09()["no_collapse"])),
}


@pytest.mark.parametrize("mistake", WRONG)
def test_grader_fails_a_wrong_answer(mistake):
    check, *fns = WRONG[mistake]
    with pytest.raises(AssertionError) as e:
        check(*fns)
    assert "not implemented" not in str(e.value)


def test_every_grader_has_a_wrong_answer():
    assert {m.split()[0] for m in WRONG} == {name[:2] for name in GRADERS}


def test_untouched_exercises_say_not_implemented_by_name():
    with pytest.raises(AssertionError, match="exercises.ex05_policy_loss.policy_loss"):
        G.check_policy_loss(ex05_policy_loss.policy_loss, L.aggregate)


def test_grader_messages_name_the_mistake():
    with pytest.raises(AssertionError, match="population std"):
        G.check_advantages(adv_population_std)
    with pytest.raises(AssertionError, match="micro-batch invariance"):
        G.check_policy_loss(L.policy_loss, aggregate_token_mean)
    with pytest.raises(AssertionError, match="gamma is not applied"):
        G.check_policy_loss(loss_shapes_on_policy, L.aggregate)
    with pytest.raises(AssertionError, match="no ratio, no clip|no ratio and no clip"):
        G.check_policy_loss(loss_clips_off_policy, L.aggregate)
    with pytest.raises(AssertionError, match="did you append instead"):
        G.check_mix(mix_replace_appends)
    with pytest.raises(AssertionError, match="correct refinements .* come first"):
        G.check_select(select_ignores_correct)
    with pytest.raises(AssertionError, match="first difference at character"):
        G.check_refinement_prompt(prompt_changed_word)
    with pytest.raises(AssertionError, match="d f / d p"):
        G.check_shaping(L.shaping, grad_wrt_p)


@pytest.mark.parametrize("args, invocation, named", [
    (["exercises/test_01_advantages.py"], ".", True),
    (["exercises/test_03_selection.py::test_ex03_selection"], ".", True),
    (["exercises"], ".", True),
    (["test_02_shaping.py"], "exercises", True),
    (["."], ".", False),
    ([], ".", False),
    (["tests/test_exercises.py"], ".", False),
    (["../tests"], "exercises", False),
])
def test_exercise_graders_run_only_when_named(args, invocation, named):
    root = Path(__file__).resolve().parents[1]
    assert exercises_conftest.named_explicitly(args, root / invocation) is named

