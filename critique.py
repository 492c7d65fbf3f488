"""Critiques (step 3 of the method), the refinement prompt (step 4), refinement selection and
mixing (step 5).

Critique types:
  indicative     "The generated solution is correct." / "... is incorrect."
  indicative_gt  the same, ending ", the ground truth is {answer}."
  cot            a critic model compares a wrong response with the reference solution step by step,
                 ending with "Conclusion: wrong [END]"; correct responses get indicative_gt
  self           cot, with the policy itself as the critic
  expert         no critique: the reference solution joins the group instead (LUFFY-style baseline)
"""
from __future__ import annotations

import random

import rollout

CRITIC_SYSTEM_PROMPT = (
    "You are a science expert. Analyze a student's incorrect solution by comparing it with the "
    "correct solution. Identify any errors and provide a detailed step-by-step explanation of "
    "mistakes. Conclude with: 'Conclusion: wrong [END]'")
CRITIC_USER_TEMPLATE = ("**Question:** {question}\n\n**Student's Answer:** \n{answer}\n\n"
                        "**Correct Solution:** \n{reference}\n\n**Critique:**")
REFINE_TEMPLATE = """Given the following inputs:
**Question**: {question}
**Previous Solution**: {previous}
**Critique**: {critique}

Please re-answer by:
- Correcting potential errors identified in the critique, if they exist.
- Providing clear, step-by-step reasoning.
- Formatting the final answer as `\\boxed{{answer}}`.

Ensure the revised solution addresses all issues raised in the critique."""


def indicative(correct: bool) -> str:
    return f"The generated solution is {'correct' if correct else 'incorrect'}."


def indicative_gt(correct: bool, ground_truth: str) -> str:
    return (f"The generated solution is {'correct' if correct else 'incorrect'}, "
            f"the ground truth is {ground_truth}.")


def reference_or_answer(reference: str | None, ground_truth: str) -> str:
    """What the CoT critic compares against: the reference solution, else the bare final answer."""
    return reference or f"The final answer is \\boxed{{{ground_truth}}}."


def critic_messages(question: str, answer: str, reference: str) -> list[dict]:
    user = CRITIC_USER_TEMPLATE.format(question=question, answer=answer, reference=reference)
    return [{"role": "system", "content": CRITIC_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def verdict_agrees(critique: str | None) -> bool:
    """The critic only sees wrong responses; a critique that does not conclude 'wrong' disagrees
    with the verifier and is regenerated (the paper's filter)."""
    return critique is not None and "conclusion: wrong" in critique.lower()


def refinement_prompt(question: str, previous: str, critique: str) -> str:
    return REFINE_TEMPLATE.format(question=question, previous=previous, critique=critique)


def truncate_tokens(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut `text` to its first `max_tokens` tokens so that prompt + refinement fit the context."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True), True


def refine(refiner, rtok, tok, questions: list[str], previous: list[str], critiques: list[str], *,
           room: int, **sampling) -> tuple[list[list[int]], int]:
    """Step 4: the refiner (the same, not yet updated policy, or a weaker model) answers each
    question again, given its previous answer and that answer's critique. Returns the refinements
    in the policy's tokens (tok), and how many previous answers were cut so that the refinement
    prompt fits `room` tokens. sampling: rollout.generate's, as for the answers."""
    prompts, n_truncated = [], 0
    for q, prev, c in zip(questions, previous, critiques):
        # the previous solution is cut so that prompt + refinement fit --max_context
        bare = rollout.chat_ids(rtok, refinement_prompt(q, "", c))
        prev, cut = truncate_tokens(rtok, prev, max(room - len(bare), 0))
        n_truncated += cut
        prompts.append(rollout.chat_ids(rtok, refinement_prompt(q, prev, c)))
    refinements = rollout.generate(refiner, rtok, prompts, desc="refine", **sampling) \
        if prompts else []
    if rtok is not tok:  # weak-to-strong: the refiner's text, in the policy's tokens
        reos = rollout.eos_ids(rtok, refiner)
        texts = rtok.batch_decode(refinements, skip_special_tokens=True)
        refinements = [rollout.policy_tokens(tok, text, sampling["max_new_tokens"],
                                             rollout.ended(y, reos))
                       for text, y in zip(texts, refinements)]
    return refinements, n_truncated


def make_critiques(critique_type: str, *, questions: list[str], responses: list[str],
                   correct: list[bool], ground_truths: list[str], references: list[str | None],
                   critic=None, tries: int = 3) -> tuple[list[str], int]:
    """One critique per response. Returns (critiques, number of CoT critiques that fell back to the
    ground-truth critique after `tries` attempts that failed or disagreed with the verifier).
    Requests that failed outright are counted apart in the critic's `transport_failures`."""
    if critique_type == "indicative":
        return [indicative(c) for c in correct], 0
    if critique_type == "indicative_gt":
        return [indicative_gt(c, gt) for c, gt in zip(correct, ground_truths)], 0
    if critique_type == "expert":
        return [""] * len(correct), 0
    assert critique_type in ("cot", "self") and critic is not None, critique_type
    out = [indicative_gt(c, gt) for c, gt in zip(correct, ground_truths)]  # correct ones keep this
    todo = [i for i, c in enumerate(correct) if not c]
    for _ in range(tries):
        if not todo:
            break
        refs = [reference_or_answer(references[i], ground_truths[i]) for i in todo]
        texts = critic([critic_messages(questions[i], responses[i], r) for i, r in zip(todo, refs)])
        for i, t in zip(todo, texts):
            if verdict_agrees(t):
                out[i] = t
        todo = [i for i, t in zip(todo, texts) if not verdict_agrees(t)]
    return out, len(todo)  # whatever is left keeps the ground-truth critique


def select_refinements(rewards: list[float], k: int, mode: str, rng: random.Random) -> list[int]:
    """Indices of the k refinements (of one prompt) that join its group.

    first_correct: correct ones first (in order), then the first remaining ones (the release);
    correct_then_random: correct ones first, then random remaining ones (the paper);
    random: k at random (the paper's 'random refinement' ablation)."""
    idx = list(range(len(rewards)))
    if mode == "random":
        return sorted(rng.sample(idx, min(k, len(idx))))
    correct = [i for i in idx if rewards[i] > 0]
    rest = [i for i in idx if rewards[i] <= 0]
    if mode == "correct_then_random":
        rest = rng.sample(rest, len(rest))
    else:
        assert mode == "first_correct", mode
    return (correct + rest)[:k]


def mix_groups(n_groups: int, n_sampled: int, refined: list[int], refine_rewards: list[float],
               k: int, selection: str, group_mode: str,
               rng: random.Random) -> list[tuple[int, int, bool]]:
    """Step 5: which sequences each group trains on. Initial response i belongs to group
    i // n_sampled; refinement j refines initial response refined[j]. Per group, select_refinements
    picks up to k of its refinements; append mode keeps every initial response and adds them (the
    paper: 7 + 1), replace mode drops the group's first len(chosen) initial responses for them (the
    release: 8 with slot 0 overwritten).

    Returns (group, index, off_policy) per training sequence, group by group: index is into the
    initial responses when off_policy is False, into the refinements when it is True."""
    out = []
    for g in range(n_groups):
        members = list(range(g * n_sampled, (g + 1) * n_sampled))
        candidates = [j for j, i in enumerate(refined) if i in members]  # this group's refinements
        chosen = [candidates[c] for c in select_refinements(
            [refine_rewards[j] for j in candidates], k, selection, rng)] if candidates else []
        keep = members[len(chosen):] if group_mode == "replace" else members
        out += [(g, i, False) for i in keep] + [(g, j, True) for j in chosen]
    return out

