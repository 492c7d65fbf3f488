"""docs/one_step.md (written by docs/trace_step.py) and the diagram of docs/algorithm.md stay true
to the code.

The trace page's numbers are checked against the real functions: advantages are
loss.group_advantages of the listed rewards, f(p) = p/(p+gamma) and its gradient weight, the
per-token gradient -A f'(p)/D, the mixed group's size and its one off-policy sequence, the loss
terms against metrics.jsonl. The same checks run on a page made now from the tiny random model
(every section present) and on the committed page (made once with the embedded model).
docs/algorithm.md's mermaid diagram names every stage in order, and the README's copy is the same.
"""
import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

import evaluate
import loss as L
import rollout

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "one_step.md"
FLOW = ROOT / "docs" / "algorithm.md"  # its one mermaid diagram, the data flow of a step

SECTIONS = ["# One real step of Critique-GRPO, traced", "## 1. The question",
            "## 1–2. Sample, then verify", "## 3. Critique", "## 4. Refine",
            "## 5–6. Mix, then advantages", "## 7. The loss: two kinds of tokens",
            "## 7–8. The loss terms and the gradient", "## What this step shows"]
TABLES = ["run", "answers", "groups", "critiques", "refinements", "mixed", "tokens",
          "initial_tokens", "loss", "metrics"]


def trace_step():
    spec = importlib.util.spec_from_file_location("trace_step", ROOT / "docs" / "trace_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Reading the page back
# ---------------------------------------------------------------------------------------------
def traced(text: str, name: str) -> list[list[str]]:
    m = re.search(rf"<!-- trace: {name} -->\n(.*?)<!-- /trace -->", text, flags=re.S)
    assert m, f"no table {name!r}"
    rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in m[1].splitlines()]
    return rows[2:]  # after the header and the |---| line


def value(cell: str) -> float:
    return float(cell.strip("`* ").replace("−", "-"))


def close(a: float, b: float, rel: float = 1e-4) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-12


def check_page(text: str) -> dict:
    """Every section and table, and numbers that agree with the real functions. Returns what it
    read, for further checks."""
    for heading in SECTIONS:
        assert re.search(rf"^{re.escape(heading)}$", text, flags=re.M), heading
    tables = {name: traced(text, name) for name in TABLES}
    run = {k.replace("`", ""): v for k, v in tables["run"]}
    assert re.match(r"`?(cpu|cuda): ", run["machine"]), run["machine"]
    assert re.match(r"(float32|bfloat16|float16): ", run["dtype"]), run["dtype"]
    assert "torch" in run["versions"] and "transformers" in run["versions"]
    assert re.match(r"\d+ ", run["seed"])
    B, n_init, n, k = map(int, re.match(r"(\d+) × (\d+) \((\d+) sampled \+ (\d+) refinement",
                                        run["questions × group"]).groups())
    assert n + k == n_init
    gamma, c_h, beta = (value(run[key]) for key in ("--gamma γ", "--entropy_coef", "--kl_coef"))
    R = int(run["--max_new_tokens R"])
    score_unfinished = run["--score_unfinished"] == "True"

    # the question shown is an all-wrong group that a correct refinement gives a signal back
    focus = int(re.search(r"Question (\d+) of the step's (\d+)", text)[1]) - 1
    groups = tables["groups"]
    assert len(groups) == B
    row = groups[focus]
    assert row[4].endswith("✓") and row[5] == "yes → no"
    gt = row[1].strip("`")
    answers = tables["answers"]
    rewards = [value(a[3]) for a in answers]
    assert len(answers) == n and rewards == [value(x) for x in row[2].split()]
    assert set(rewards) == {0.0}
    # the reward is the checker's, and 0 for an answer cut at the cap (unless --score_unfinished)
    scored = [a[2] == "EOS" or a[2] == f"cut at {R}" and score_unfinished for a in answers]
    assert all(a[2] == "EOS" or a[2] == f"cut at {R}" for a in answers)
    for (_, extracted, _, reward), counts in zip(answers, scored):
        if not counts:
            assert value(reward) == 0.0
        elif extracted != "–" and evaluate.fast_equal(extracted.strip("`"), gt):
            assert value(reward) == 1.0
    # zero-advantage groups before -> after, as metrics.jsonl counted them
    metrics = {k.strip("`"): v for k, v in tables["metrics"]}
    before = sum(r[5].startswith("yes") for r in groups) / B
    after = sum(r[5].endswith("yes") for r in groups) / B
    assert close(value(metrics["train/zero_adv_frac_before"]), before)
    assert close(value(metrics["train/zero_adv_frac_after"]), after)

    # critiques of every answer; one refinement joins, the one the mixed group holds
    assert len(tables["critiques"]) == n
    refinements = tables["refinements"]
    joins = [r for r in refinements if r[5] == "yes"]
    assert all(r[3] == "EOS" or (r[3] == f"cut at {R}" and (score_unfinished or r[4] == "0"))
               for r in refinements)
    assert len(refinements) == n and len(joins) == k == 1

    # the mixed group: n_init sequences, exactly the last one off-policy, its advantages those of
    # loss.group_advantages before (sampled answers alone) and after mixing
    mixed = tables["mixed"]
    assert len(mixed) == n_init
    off = [r[2] == "**off-policy**" for r in mixed]
    assert off == [False] * n + [True] * k
    assert all(r[2] in ("on-policy", "**off-policy**") for r in mixed)
    mixed_rewards = [value(r[3]) for r in mixed]
    assert mixed_rewards[:n] == rewards and mixed_rewards[n:] == [value(joins[0][4])] == [1.0]
    expected_after = L.group_advantages(torch.tensor(mixed_rewards), torch.zeros(n_init).long())
    expected_before = L.group_advantages(torch.tensor(rewards), torch.zeros(n).long())
    assert all(close(value(r[5]), a) for r, a in zip(mixed, expected_after.tolist()))
    assert all(close(value(r[4]), a) for r, a in zip(mixed[:n], expected_before.tolist()))
    assert [r[4] for r in mixed[n:]] == ["–"] * k
    assert all(a == 0 for a in expected_before) and all(a != 0 for a in expected_after)
    A_off, A_on = expected_after[-1].item(), expected_after[0].item()

    # D = sequences in the step x R: groups with a refinement hold n + k, the others n
    N, R_, D = map(int, re.search(r"D = sequences × R = (\d+) × (\d+) = (\d+)",
                                  " ".join(text.split())).groups())
    sequences = sum(len(r[2].split()) + (len(r[4].split()) - ("✓" in r[4]) if r[4] != "–" else 0)
                    for r in groups)
    assert N == sequences and R_ == R and D == N * R

    # refinement tokens: f(p) = p/(p+gamma), weight gamma p/(p+gamma)^2, and the gradient of the
    # real loss with respect to log p is -A weight / D
    tokens = tables["tokens"]
    assert tokens
    for t, token, p, f, weight, dlogp, formula in tokens:
        p, f, weight, dlogp, formula = map(value, (p, f, weight, dlogp, formula))
        assert 0 < p <= 1
        assert close(f, p / (p + gamma)) and close(f, L.shaping(torch.tensor(p), gamma).item())
        assert close(weight, gamma * p / (p + gamma) ** 2)
        assert close(dlogp, -A_off * weight / D, 1e-3) and close(formula, -A_off * weight / D)
    # sampled-answer tokens: ratio 1 at one update per batch, gradient -A ratio / D
    for t, token, p, ratio, dlogp, formula in tables["initial_tokens"]:
        assert value(ratio) == 1.0
        assert close(value(dlogp), -A_on / D, 1e-3) and close(value(formula), -A_on / D)

    # the loss terms: loss = objective - c_H entropy (+ beta KL), the same loss metrics.jsonl logged
    terms = {r[0]: r[1] for r in tables["loss"]}
    objective, entropy, total = (value(terms[key]) for key in (
        "policy-gradient term (objective)", "entropy (nats per token)", "loss (minimised)"))
    kl = 0.0 if terms["KL to the reference"] == "none" else value(terms["KL to the reference"])
    scale = abs(objective) + abs(c_h * entropy) + abs(total)
    assert abs(total - (objective - c_h * entropy + beta * kl)) <= 1e-5 * scale + 1e-9
    assert close(total, value(terms["loss"]), 1e-5)
    assert math.isfinite(value(terms["grad_norm"])) and value(terms["grad_norm"]) > 0
    return dict(n=n, k=k, B=B, run=run)


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------
def test_trace_of_a_tiny_model_has_every_section_and_consistent_numbers(
        tmp_path, tiny_model_dir, tiny_data, monkeypatch):
    """The trace script's core function on the tiny random model. It cannot add, so one of its
    refinements is made to copy the ground truth from its critique (what the 135M model does): then
    the page shows an all-wrong group getting its signal back, through the real step 5-8 code."""
    real = rollout.generate

    def generate(model, tokenizer, prompts, **kw):
        out = real(model, tokenizer, prompts, **kw)
        if kw.get("desc") == "refine":
            gt = re.search(r"the ground truth is (.+?)\.", tokenizer.decode(prompts[0]))[1]
            out[0] = tokenizer(f"\\boxed{{{gt}}}", add_special_tokens=False)["input_ids"] + \
                [tokenizer.eos_token_id]
        return out
    monkeypatch.setattr(rollout, "generate", generate)
    ts = trace_step()
    flags = ["--eval_limit", "2", "--max_new_tokens", "16", "--prompts_per_step", "2",
             "--n_init", "4", "--micro_batch_tokens", "300", "--eval_every", "0",
             "--dtype", "float32"]
    page, rec = ts.one_step_page(tiny_model_dir, tiny_data[0], tiny_data[1], seed=0, flags=flags)
    assert rollout.generate is generate  # the wrappers are gone again
    read = check_page(page)
    assert (read["B"], read["n"], read["k"]) == (2, 3, 1)
    assert "float32" in read["run"]["dtype"] and "given with --seed" in page
    # the page's refinement prompt is what the policy was given: the chat template around
    # critique.refinement_prompt
    assert "Please re-answer by:" in page and "<|im_start|>assistant" in page


def test_committed_trace_page_is_consistent():
    """docs/one_step.md, made with the embedded model: its numbers agree with loss.py whatever CPU
    runs this test, and it says on what machine, dtype and versions it was made, with which seed
    and how the seed was chosen."""
    text = PAGE.read_text()
    read = check_page(text)
    assert (read["B"], read["n"], read["k"]) == (4, 7, 1)
    assert "python docs/trace_step.py" in text and "python train.py --model embedded" in text
    assert re.search(r"^Seed \d+: ", text, flags=re.M)


# ---------------------------------------------------------------------------------------------
# docs/algorithm.md's diagram
# ---------------------------------------------------------------------------------------------
STAGES = ["question", "sampled answers", "verifier", "critique", "refinement prompt",
          "refinement, verified", "refinement re-attached to the BARE question",
          "off-policy tokens"]
NODE = re.compile(r'^\s*(\w+)\s*(?:[\[{(]+"([^"]*)"[\]})]+)?\s*$')
EDGE = re.compile(r'\s*-->\s*(?:\|"[^"]*"\|\s*)?')


def mermaid_graph(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Node labels and edges of the page's one mermaid flowchart."""
    blocks = re.findall(r"^```mermaid\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, "docs/algorithm.md holds one mermaid block"
    lines = blocks[0].strip().splitlines()
    assert lines[0].startswith("flowchart") and len(lines) <= 20, "short enough for the README"
    labels, edges = {}, {}
    for line in lines[1:]:
        ends = []
        for part in EDGE.split(line):
            m = NODE.match(part)
            assert m, f"cannot read {part!r} in {line!r}"
            ends.append(m[1])
            if m[2]:
                labels[m[1]] = m[2]
        for a, b in zip(ends, ends[1:]):
            edges.setdefault(a, set()).add(b)
    return labels, edges


def test_flow_diagram_names_every_stage_in_order():
    labels, edges = mermaid_graph(FLOW.read_text())
    node = {}
    for stage in STAGES:
        found = [n for n, label in labels.items() if label.startswith(stage)]
        assert len(found) == 1, f"one box of the diagram starts with {stage!r}"
        node[stage] = found[0]
    node["on-policy tokens"] = next(n for n, lb in labels.items() if lb.startswith("on-policy"))
    assert "−A · ratio" in labels[node["on-policy tokens"]]
    assert "−A · f(p)" in labels[node["off-policy tokens"]]

    def reachable(a: str, avoid: str | None = None) -> set[str]:
        seen, todo = set(), [a]
        while todo:
            for b in edges.get(todo.pop(), ()):
                if b not in seen and b != avoid:
                    seen.add(b)
                    todo.append(b)
        return seen
    for a, b in zip(STAGES, STAGES[1:]):
        assert node[b] in reachable(node[a]), f"{a} -> {b}"
    assert node["on-policy tokens"] in reachable(node["verifier"])
    # the refinement reaches the loss only re-attached to the bare question
    assert node["off-policy tokens"] not in reachable(node["refinement, verified"],
                                                      avoid=node[STAGES[-2]]), \
        "the refinement reaches the loss without being re-attached to the bare question"


def test_readme_diagram_is_the_one_in_algorithm_md():
    """The README shows docs/algorithm.md's diagram: a copy must not drift from the checked one."""
    readme = re.findall(r"^```mermaid\n(.*?)^```", (ROOT / "README.md").read_text(),
                        flags=re.S | re.M)
    flow = re.findall(r"^```mermaid\n(.*?)^```", FLOW.read_text(), flags=re.S | re.M)
    assert all(block == flow[0] for block in readme)
