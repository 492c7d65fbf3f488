"""The exercise graders (exercises/graders.py) are right: each passes the reference code, fails the
untouched exercise with "not implemented yet", and fails typical wrong answers; the fixtures they
read (exercises/fixtures/) are what the reference computes today; the by-hand exercises refuse to
be computed by the reference.

Instructor only: exercises/student_copy.py leaves this file out of a student copy."""
import atexit
import functools
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import critique
import loss as L
from exercises import conftest as exercises_conftest
from exercises import graders as G
from exercises import make_fixtures as MF
from exercises import solutions as S
from exercises import (ex00_grpo_warmup, ex01_advantages, ex02_all_wrong_group,
                       ex03_refinement_prompt, ex04_shaping, ex05_selection, ex06_mixing,
                       ex07_policy_loss, ex08_shaping_entropy, ex09_refine_ft_collapse)

EXERCISES = Path(__file__).resolve().parents[1] / "exercises"


def fake_run(root: Path, name: str, baseline: str, accuracy: tuple, grad_norms: list, answers: list,
             seed: int = 0, critique_type: str = "indicative_gt", refinements=()) -> str:
    """A run directory as train.py writes it: config.json, metrics.jsonl (steps, then evaluations
    at step 0 and the last step), the last evaluation's answers (first set, then another) and
    samples.jsonl (answers, some with a critique and a refinement)."""
    run = root / name
    run.mkdir(parents=True)
    steps = len(grad_norms)
    (run / "config.json").write_text(json.dumps({
        "baseline": baseline, "critique_type": critique_type, "seed": seed, "max_steps": steps,
        "eval_data": "data/test.jsonl,data/test_rephrased.jsonl"}))
    lines = [{"step": 0, "eval/accuracy": accuracy[0]}]
    lines += [{"step": s + 1, "grad_norm": g,
               **({"baseline/examples": s + 1} if baseline != "none" else {})}
              for s, g in enumerate(grad_norms)]
    lines += [{"step": steps, "eval/accuracy": accuracy[1]}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    evals = [{"set": "test", "response": a} for a in answers]
    evals += [{"set": "test_rephrased", "response": "The correct answer is: 3"}] * 4  # 2nd set
    (run / f"eval-{steps}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    samples = [{"step": 5, "question": "q", "response": "2 + 2 = 5", "reward": 0.0,
                "critique": "The generated solution is incorrect, the ground truth is 4.",
                "refinement": text, "refinement_reward": reward} for text, reward in refinements]
    samples += [{"step": 5, "question": "q", "response": "4", "reward": 1.0}]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    return str(run)


@functools.lru_cache(maxsize=None)
def runs_09() -> dict:
    """Two runs at seed 0 as exercise 9 asks for (refine_ft collapsed and saying 'The correct answer
    is: ...'; Critique-GRPO learning, whose correct refinements say it too), and one refine_ft run
    that did not collapse."""
    root = Path(tempfile.mkdtemp(prefix="ex09_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    said = ["Let me compute. The correct answer is: 5", "Let me compute. The correct answer is: 7",
            "Let me compute. 2 + 2 = 4", "Let me compute. The correct answer is: 9"]
    refinements = [("The correct answer is: 4", 1.0), ("2 + 2 = 4. The correct answer is: 4", 1.0),
                   ("2 + 2 is 4", 1.0), ("The correct answer is: 5", 0.0)]
    return {"refine_ft": fake_run(root, "refine_ft", "refine_ft", (0.25, 0.0), [0.9, 2.5, 1.2],
                                  said),
            "cg": fake_run(root, "cg", "none", (0.25, 0.5), [0.05, 0.08, 0.04],
                           ["Let me compute. 3 + 2 = 5", "Let me compute. 7", "Let me compute. 4",
                            "9"], refinements=refinements),
            "no_collapse": fake_run(root, "no_collapse", "refine_ft", (0.25, 0.5),
                                    [0.9, 2.5, 1.2], said),
            "expert": fake_run(root, "expert", "none", (0.25, 0.5), [0.05, 0.08, 0.04], ["4"] * 4,
                               critique_type="expert")}


def solution_09():
    return S.solution_09(runs_09()["refine_ft"], runs_09()["cg"])


def source(module) -> str:
    return Path(module.__file__).read_text()


# grader name -> (check, the reference, the untouched exercise, keyword arguments of the check)
GRADERS = {
    "00_grpo_warmup": (G.check_00, (S.answers_00,), (ex00_grpo_warmup.answers,),
                       {"source": source(ex00_grpo_warmup)}),
    "01_advantages": (G.check_advantages, (L.group_advantages,),
                      (ex01_advantages.group_advantages,), {}),
    "02_all_wrong_group": (G.check_02, (S.answers_02,), (ex02_all_wrong_group.answers,),
                           {"source": source(ex02_all_wrong_group)}),
    "03_refinement_prompt": (G.check_refinement_prompt, (critique.refinement_prompt,),
                             (ex03_refinement_prompt.refinement_prompt,), {}),
    "04_shaping": (G.check_shaping, (L.shaping, S.shaping_grad),
                   (ex04_shaping.shaping, ex04_shaping.shaping_grad), {}),
    "05_selection": (G.check_select, (critique.select_refinements,),
                     (ex05_selection.select_refinements,), {}),
    "06_mixing": (G.check_mix, (critique.mix_groups,), (ex06_mixing.mix_groups,), {}),
    "07_policy_loss": (G.check_policy_loss, (L.policy_loss, L.aggregate),
                       (ex07_policy_loss.policy_loss, ex07_policy_loss.aggregate), {}),
    "08_shaping_entropy": (G.check_08, (S.answers_08,), (ex08_shaping_entropy.answers,), {}),
    "09_refine_ft_collapse": (G.check_09, (solution_09,), (ex09_refine_ft_collapse.answers,), {}),
}


@pytest.mark.parametrize("name", GRADERS)
def test_grader_passes_the_reference(name):
    check, reference, _, kwargs = GRADERS[name]
    check(*reference, **kwargs)


@pytest.mark.parametrize("name", GRADERS)
def test_grader_fails_the_untouched_exercise(name):
    check, _, untouched, kwargs = GRADERS[name]
    with pytest.raises(AssertionError, match="not implemented yet"):
        check(*untouched, **kwargs)


def test_every_exercise_has_a_grader_module_and_a_readme_line():
    readme = (EXERCISES / "README.md").read_text()
    on_disk = {p.stem[2:] for p in EXERCISES.glob("ex[0-9][0-9]_*.py")}
    assert on_disk == set(GRADERS)
    for name in GRADERS:
        assert (EXERCISES / f"test_{name}.py").exists(), name
        assert f"pytest exercises/test_{name}.py" in readme, name


def test_graders_never_call_the_reference():
    """The graders import neither loss nor critique (a student copy's raise NotImplementedError)."""
    text = (EXERCISES / "graders.py").read_text()
    assert "import loss" not in text and "import critique" not in text
    assert "solution_" not in text and "solutions" not in text.replace("exercises/solutions", "")


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


def answers_with(reference, **changes):
    """The reference answers of a by-hand or diagnose exercise, with some replaced (a dict value
    is merged into the reference's dict)."""
    def answers():
        out = reference()
        for key, value in changes.items():
            out[key] = {**out[key], **value} if isinstance(out.get(key), dict) else value
        return out
    return answers


S0, S2, S8 = S.answers_00(), S.answers_02(), S.answers_08()
WRONG = {
    "00 sign flipped": (G.check_00, answers_with(
        S.answers_00, advantages_q0=[-a for a in S0["advantages_q0"]])),
    "00 population std": (G.check_00, answers_with(
        S.answers_00, advantages_q0_std=[1.732, -0.5774, -0.5774, -0.5774])),
    "00 all-equal group with std is nan": (G.check_00, answers_with(
        S.answers_00, advantages_q2_std=[math.nan] * 4)),
    "00 gradient of the reward, not the loss": (G.check_00, answers_with(
        S.answers_00, grad_logp_q0=S0["advantages_q0"])),
    "00 all-right group counted as learning": (G.check_00, answers_with(
        S.answers_00, zero_adv_frac=0.25)),
    "00 the wrong answer pushed up": (G.check_00, answers_with(S.answers_00, pushed_up_q1=[1])),
    "00 computed with the reference": (functools.partial(
        G.check_00, source="import loss\n"), S.answers_00),
    "02 advantages with std": (G.check_02, answers_with(
        S.answers_02, advantages_group0=S2["advantages_group0_std"])),
    "02 all-right group counted as fixed": (G.check_02, answers_with(
        S.answers_02, zero_adv_frac_after=0.25)),
    "02 refinement first": (G.check_02, answers_with(S.answers_02, positive_index=0)),
    "02 population std": (G.check_02, answers_with(
        S.answers_02, advantages_group0_std=[-0.378] * 7 + [2.6458])),
    "02 rounded to 2 digits": (G.check_02, answers_with(
        S.answers_02, advantages_group1=[round(a, 2) for a in S2["advantages_group1"]])),
    "02 a string for a number": (G.check_02, answers_with(
        S.answers_02, zero_adv_frac_before="1/2")),
    "02 computed with your exercise 1": (functools.partial(
        G.check_02, source="from exercises.ex01_advantages import group_advantages\n"),
        S.answers_02),
    "03 a changed word": (G.check_refinement_prompt, prompt_changed_word),
    "03 trailing newline": (G.check_refinement_prompt, prompt_trailing_newline),
    "03 chained str.replace": (G.check_refinement_prompt, prompt_chained_replace),
    "03 lost backslash": (G.check_refinement_prompt, prompt_unescaped_box),
    "01 sign flipped": (G.check_advantages, adv_sign),
    "01 population std": (G.check_advantages, adv_population_std),
    "01 torch.std, no eps (nan)": (G.check_advantages, adv_torch_std_no_eps),
    "01 batch mean, not group mean": (G.check_advantages, adv_batch_mean),
    "01 ignores scale_by_std": (G.check_advantages, adv_ignores_std),
    "04 gradient w.r.t. p": (G.check_shaping, L.shaping, grad_wrt_p),
    "04 detached shaping": (G.check_shaping, shaping_detached, S.shaping_grad),
    "04 accepts gamma 0": (G.check_shaping, shaping_accepts_zero, S.shaping_grad),
    "04 wrong formula": (G.check_shaping, shaping_wrong_formula, S.shaping_grad),
    "05 random ignoring correct ones": (G.check_select, select_ignores_correct),
    "05 random not sorted": (G.check_select, select_unsorted_random),
    "05 skips an rng draw": (G.check_select, select_shuffles_only_when_needed),
    "05 correct means reward == 1": (G.check_select, select_reward_equals_one),
    "06 replace mode appending": (G.check_mix, mix_replace_appends),
    "06 replace drops the last": (G.check_mix, mix_replace_drops_last),
    "06 random selection": (G.check_mix, mix_random_selection),
    "07 gamma on on-policy tokens": (G.check_policy_loss, loss_shapes_on_policy, L.aggregate),
    "07 clip on off-policy tokens": (G.check_policy_loss, loss_clips_off_policy, L.aggregate),
    "07 sign flipped": (G.check_policy_loss, loss_sign, L.aggregate),
    "07 min instead of max": (G.check_policy_loss, loss_min_instead_of_max, L.aggregate),
    "07 per-micro-batch denominator": (G.check_policy_loss, L.policy_loss, aggregate_token_mean),
    "07 mask ignored": (G.check_policy_loss, L.policy_loss, aggregate_ignores_mask),
    "07 weights ignored": (G.check_policy_loss, L.policy_loss, aggregate_ignores_weights),
    "08 gradient ascent sign": (G.check_08, answers_with(
        S.answers_08, grad_logp={k: -v for k, v in S8["grad_logp"].items()})),
    "08 d/dp not d/dlogp": (G.check_08, answers_with(
        S.answers_08, grad_logp={"low_shaped": -0.1 / (0.0144 + 0.1) ** 2})),
    "08 control without the 0.1": (G.check_08, answers_with(
        S.answers_08, entropy_change={"low_control": S8["entropy_change"]["low_unshaped"]})),
    "08 shaped over unshaped, not over the control": (G.check_08, answers_with(
        S.answers_08, shaped_over_control={n: S8["grad_logp"][f"{n}_shaped"] /
                                           S8["grad_logp"][f"{n}_unshaped"] for n in S8["p"]})),
    "08 crossover at p = gamma": (G.check_08, answers_with(S.answers_08, crossover_p=0.1)),
    "08 shaping on on-policy is fine": (G.check_08, answers_with(
        S.answers_08, on_policy_grad_logp=S8["on_policy_grad_logp_if_shaped"])),
    "08 the old answers (no control, no rare token)": (G.check_08, answers_with(
        S.answers_08, shaped_over_control=None)),
    "09 step 0 and final swapped": (G.check_09, answers_with(
        solution_09, accuracy={"step0": 0.0, "final": 0.25})),
    "09 the other run's grad norm": (G.check_09, answers_with(
        solution_09, max_grad_norm={"refine_ft": 0.08, "critique_grpo": 0.08})),
    "09 a phrase both runs say": (G.check_09, answers_with(solution_09, phrase="Let me compute.")),
    "09 a phrase refine_ft rarely says": (G.check_09, answers_with(
        solution_09, phrase="compute. 2 + 2 = 4")),
    "09 expert as the reference": (G.check_09, answers_with(
        solution_09, reference_dir=runs_09()["expert"])),
    "09 the runs swapped": (G.check_09, answers_with(solution_09, run_dir=runs_09()["cg"],
                                                     reference_dir=runs_09()["refine_ft"])),
    "09 a run that did not collapse": (G.check_09, answers_with(
        solution_09, run_dir=runs_09()["no_collapse"])),
    "09 phrase shares swapped": (G.check_09, answers_with(
        solution_09, phrase_share={"refine_ft": 0.0, "critique_grpo": 0.75})),
    "09 all refinements, not the correct ones": (G.check_09, answers_with(
        solution_09, phrase_in_refinements=0.75, correct_refinements=4)),
}


@pytest.mark.parametrize("mistake", WRONG)
def test_grader_fails_a_wrong_answer(mistake):
    check, *fns = WRONG[mistake]
    with pytest.raises(AssertionError) as e:
        check(*fns)
    assert "not implemented" not in str(e.value)


def test_every_grader_has_a_wrong_answer():
    assert {m.split()[0] for m in WRONG} == {name[:2] for name in GRADERS}


def test_reference_answers_are_the_documented_ones():
    """The numbers the exercises and docs/course.md reason with (a 10x scale, not rare-token
    damping, at p = 0.014; damping at p = 0.002)."""
    assert S0["advantages_q0"] == [0.75, -0.25, -0.25, -0.25]
    assert S2["advantages_group0"][-1] == pytest.approx(0.875)
    ratio = S8["shaped_over_control"]
    assert ratio["low"] == pytest.approx(1.098, abs=1e-3)
    assert ratio["high"] == pytest.approx(0.928, abs=1e-3)
    assert ratio["rare"] == pytest.approx(0.206, abs=1e-3)
    assert S8["crossover_p"] == pytest.approx(0.01154, abs=1e-5)
    assert S8["p"]["low"] == pytest.approx(0.0144, abs=1e-4)
    assert S8["p"]["rare"] == pytest.approx(0.00215, abs=1e-5)


def test_hashed_answers_accept_rounding_and_nothing_far():
    path = "ex99/x"
    spec = G._spec(0.7142857, path)
    for ok in (0.714, 0.7143, 0.71428, 0.7145):
        assert G._match(ok, spec, path) is None, ok
    for bad in (0.71, 0.72, -0.714, 0.0, 7.142):
        assert G._match(bad, spec, path) is not None, bad
    zero = G._spec(0.0, path)
    assert G._match(1e-12, zero, path) is None and G._match(1e-3, zero, path) is not None
    assert G._match(True, G._spec(1, path), path) is not None  # a bool is not a number


def test_untouched_exercises_say_not_implemented_by_name():
    with pytest.raises(AssertionError, match="exercises.ex07_policy_loss.policy_loss"):
        G.check_policy_loss(ex07_policy_loss.policy_loss, L.aggregate)


def test_grader_messages_name_the_mistake():
    with pytest.raises(AssertionError, match="population std"):
        G.check_advantages(adv_population_std)
    with pytest.raises(AssertionError, match="population std"):
        G.check_02(WRONG["02 population std"][1])
    with pytest.raises(AssertionError, match="worked by hand: your file imports 'loss'"):
        WRONG["00 computed with the reference"][0](S.answers_00)
    with pytest.raises(AssertionError, match="divide by the control"):
        G.check_08(WRONG["08 shaped over unshaped, not over the control"][1])
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


# ---------------------------------------------------------------------------------------------
# The fixtures are what the reference computes today
# ---------------------------------------------------------------------------------------------
def same(a, b, path="") -> list[str]:
    """Where two fixtures differ (numbers within 1e-8 relative count as the same)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in same(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return [] if math.isclose(a, b, rel_tol=1e-8, abs_tol=1e-12) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("name", sorted(MF.COMPUTE))
def test_recorded_outputs_are_what_the_reference_computes_today(name):
    committed = G.load(name)
    recomputed = MF.COMPUTE[name](MF.strip_outputs(committed))
    assert same(committed, json.loads(MF.dumps(recomputed))) == []
    # and the inputs are the generator's (a changed generator needs make_fixtures.py)
    assert same(MF.strip_outputs(committed), json.loads(MF.dumps(MF.INPUTS[name]()))) == []


@pytest.mark.parametrize("name", sorted(MF.HASHED))
def test_recorded_answers_are_the_reference_answers_today(name):
    assert G.load(name) == json.loads(MF.dumps(MF.HASHED[name]()))


def test_a_drifted_reference_is_caught():
    committed = G.load("ex01_advantages")
    drifted = MF.compute_01(MF.strip_outputs(committed), fn=adv_population_std)
    assert same(committed, json.loads(MF.dumps(drifted)))
    changed = dict(S2, advantages_group0=[0.0] * 8)
    assert G.hash_answers("ex02", changed)["answers"] != G.load("ex02_all_wrong_group")["answers"]


@pytest.mark.parametrize("args, invocation, named", [
    (["exercises/test_01_advantages.py"], ".", True),
    (["exercises/test_05_selection.py::test_ex05_selection"], ".", True),
    (["exercises"], ".", True),
    (["test_04_shaping.py"], "exercises", True),
    (["."], ".", False),
    ([], ".", False),
    (["tests/test_exercises.py"], ".", False),
    (["../tests"], "exercises", False),
])
def test_exercise_graders_run_only_when_named(args, invocation, named):
    root = Path(__file__).resolve().parents[1]
    assert exercises_conftest.named_explicitly(args, root / invocation) is named
