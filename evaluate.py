"""Answer extraction and checking (the training reward is the evaluation metric, except that
train.py scores an answer cut at its token cap 0, unless --score_unfinished), and held-out
evaluation of a policy (the paper's benchmarks, from the command line: benchmark.py).

Reward (step 2 of the method): 1 if the extracted final answer equals the ground truth, else 0.
Extraction: the content of the last brace-matched \\boxed{...}; else "the answer is X"; else the
last number. Comparison: a cheap exact/numeric match first, then math-verify on both sides wrapped
in \\boxed{}, which support/checker.py runs in worker processes under a hard timeout (a timeout
scores 0 and is counted).
"""
from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*([^\n$]+?)\s*\$?\s*(?:\.\s|\.$|\n|$)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces matched."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j].strip()
    return None  # unbalanced: the response was cut inside the box


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _normalize(s: str) -> str:
    s = re.sub(r"\\(left|right|!|,|;|\s)", "", s)
    s = s.replace("$", "").replace(" ", "")
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


def fast_equal(pred: str, gt: str) -> bool:
    """Exact match after whitespace/LaTeX-spacing normalisation, or equal plain numbers. Never a
    false positive; anything it cannot decide goes to math-verify."""
    a, b = _normalize(pred), _normalize(gt)
    if a == b:
        return True
    try:
        return float(a.replace(",", "")) == float(b.replace(",", ""))
    except ValueError:
        return False


def math_equal(pred: str, gt: str) -> bool:
    """math-verify on both sides wrapped in \\boxed{} (runs in the worker process)."""
    from math_verify import parse, verify
    gold = parse("\\boxed{" + gt + "}")
    answer = parse("\\boxed{" + pred + "}")
    return bool(gold) and bool(answer) and bool(verify(gold, answer))



# ---------------------------------------------------------------------------------------------
# Held-out accuracy (train.py's evaluation); the paper's benchmarks are benchmark.py's
# ---------------------------------------------------------------------------------------------
def choice_letter(response: str) -> str | None:
    """The option letter a response settles on: its \\boxed{} or "answer is (X)" content, as
    a letter."""
    m = re.match(r"^\W*(?:\\text\{)?\(?([A-J])\)?(?:\W|$)", extract_answer(response) or "")
    return m.group(1) if m else None


def grade(rows: list[dict], responses: list[str], checker) -> list[float]:
    """Math rows through the answer checker (the training reward), multiple choice on the letter."""
    scores = [float(choice_letter(t) == r["answer"].strip().upper()) if r.get("choice") else None
              for r, t in zip(rows, responses)]
    math_idx = [i for i, s in enumerate(scores) if s is None]
    checked = checker([responses[i] for i in math_idx], [rows[i]["answer"] for i in math_idx])
    for i, s in zip(math_idx, checked):
        scores[i] = s
    return scores


def heldout_answers(model, tokenizer, rows: list[dict], checker, *, max_new_tokens: int,
                    **gen_kw) -> list[dict]:
    """Greedy pass@1 on rows (train.py's held-out evaluation): one record per row, its "correct"
    the verdict (accuracy = their mean). gen_kw: rollout.generate's batch_size / merge_lora /
    static_cache."""
    import rollout  # here, not at the top: the checker's workers import this file without torch
    prompts = [rollout.question_ids(tokenizer, r["question"]) for r in rows]
    responses = rollout.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 temperature=0, desc="eval", **gen_kw)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    scores = grade(rows, texts, checker)
    return [record(r, t, c) for r, t, c in zip(rows, texts, scores)]


def record(row: dict, response: str, correct: float) -> dict:
    """One saved generation: what was asked, said, extracted, expected, and the verdict."""
    return {"question": row["question"], "response": response, "ground_truth": row["answer"],
            "correct": bool(correct),
            "extracted": choice_letter(response) if row.get("choice") else extract_answer(response)}

