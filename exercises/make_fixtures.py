"""Record what the reference code computes, for the graders: exercises/fixtures/<exercise>.json.

    python exercises/make_fixtures.py            # (re)write every fixture
    python exercises/make_fixtures.py --check    # exit 1 if a committed fixture differs

The graders (exercises/graders.py) compare a student's function with these recorded values, never
with the reference code itself, so a student copy (exercises/student_copy.py) can grade without
the reference bodies. Inputs come from seeded `random.Random` (the standard library's generator,
the same on every platform); expected outputs are the reference's, rounded to 10 significant
digits (the graders' tolerance is 1e-5 relative). The answers of the by-hand and diagnose
exercises are stored only as salted digests (see graders.digest): a student copy does not show
them in plain text. tests/test_exercises.py recomputes every fixture from the reference and fails
if one has drifted. Instructor only: not in the student copy.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import critique  # noqa: E402
import loss as L  # noqa: E402
from exercises import graders as G  # noqa: E402
from exercises import solutions as S  # noqa: E402


def r8(x: float) -> float:
    """An input, rounded to 8 significant digits (short in JSON, exact once read back)."""
    return float(f"{x:.8g}")


def out(t) -> list | float:
    """An expected output, rounded to 10 significant digits."""
    if isinstance(t, torch.Tensor):
        t = t.detach().double().tolist()
    if isinstance(t, list):
        return [out(x) for x in t]
    return float(f"{float(t):.10g}")


# ---------------------------------------------------------------------------------------------
# Implement exercises: inputs, then the reference's outputs
# ---------------------------------------------------------------------------------------------
def inputs_01() -> list[dict]:
    cases = [dict(label="one_right", rewards=[1, 0, 0, 0], group_ids=[0, 0, 0, 0], scale=False),
             dict(label="one_right_std", rewards=[1, 0, 0, 0], group_ids=[0, 0, 0, 0],
                  scale=True)]
    equal = (([0] * 8, [0] * 8, "an all-wrong group"), ([1] * 8, [0] * 8, "an all-right group"),
             ([1], [0], "a group of one"), ([0, 1], [0, 1], "two groups of one"))
    for scale in (False, True):
        cases += [dict(label="equal", what=what, rewards=r, group_ids=g, scale=scale)
                  for r, g, what in equal]
    for r, g in (([0] * 7 + [1] + [1] + [0] * 6, [0] * 8 + [1] * 7),   # sizes differ
                 ([1, 0, 0, 1, 1, 0], [0, 1, 0, 1, 2, 2])):             # not adjacent
        cases += [dict(label="groups", rewards=r, group_ids=g, scale=s) for s in (False, True)]
    rng = random.Random(0)
    for trial in range(100):
        G_ = rng.randint(1, 5)
        ids = [g for g in range(G_) for _ in range(rng.randint(1, 9))]
        rng.shuffle(ids)
        if trial % 2:
            rewards = [round(rng.random(), 4) for _ in ids]                # any real rewards
        else:
            rewards = [float(rng.random() < 0.3) for _ in ids]            # 0/1: many all-equal
        cases += [dict(label="random", rewards=rewards, group_ids=ids, scale=s)
                  for s in (False, True)]
    return cases


def compute_01(cases: list[dict], fn=L.group_advantages) -> list[dict]:
    for c in cases:
        r = torch.tensor(c["rewards"], dtype=torch.float32)
        c["expected"] = out(fn(r, torch.tensor(c["group_ids"]), scale_by_std=c["scale"]))
    return cases


def inputs_03() -> list[dict]:
    cases = [("What is 2 + 3?", "2 + 3 = 6. The answer is \\boxed{6}.",
              "The generated solution is incorrect, the ground truth is 5."),
             ("", "", ""),
             ("Solve $x^2 = 4$ for x > 0.\nGive x.", "Step 1: x = 2\n\nStep 2: done. \\boxed{2}",
              "The generated solution is correct, the ground truth is 2."),
             ("Café: 3 × 4 = ?", "It's 12 — \\boxed{12}", "Conclusion: wrong [END]"),
             ("What is {x} if x = 1?", "{previous} {critique} {question}",
              "a {critique} inside {}"),
             ("  leading and trailing spaces  ", "\ttab", "line\r\nbreaks")]
    return [dict(question=q, previous=p, critique=c) for q, p, c in cases]


def compute_03(cases: list[dict], fn=critique.refinement_prompt) -> list[dict]:
    for c in cases:
        c["expected"] = fn(c["question"], c["previous"], c["critique"])
    return cases


def inputs_04() -> dict:
    grid = [1e-8, 1e-4, 0.01, 0.05, 0.1, 0.2, 0.5, 0.9, 0.999, 1.0]
    rng = random.Random(1)
    rand = []
    for _ in range(20):
        p = [[r8(max(rng.random(), 1e-6)) for _ in range(3)] for _ in range(5)]
        rand.append(dict(p=p, gamma=r8(rng.random() * 0.5 + 0.01)))
    return dict(grid=dict(p=grid, per_gamma=[dict(gamma=g) for g in (0.1, 0.01, 0.5, 1.0)]),
                random=rand)


def compute_04(fx: dict, shaping=L.shaping, shaping_grad=S.shaping_grad) -> dict:
    p = torch.tensor(fx["grid"]["p"], dtype=torch.float64)
    for c in fx["grid"]["per_gamma"]:
        c["f"], c["grad"] = out(shaping(p, c["gamma"])), out(shaping_grad(p, c["gamma"]))
    for c in fx["random"]:
        p = torch.tensor(c["p"], dtype=torch.float64)
        c["f"], c["grad"] = out(shaping(p, c["gamma"])), out(shaping_grad(p, c["gamma"]))
    return fx


def inputs_05() -> list[dict]:
    cases = [([0, 1, 0, 1], 1), ([0, 0, 0], 2), ([1, 1, 1], 2), ([0, 1], 5), ([], 1),
             ([1, 0, 0, 0, 0, 1], 3), ([0.0, 0.5, 0.0], 1), ([1, 0, 1, 0], 0)]
    py = random.Random(3)
    for _ in range(120):
        cases.append(([float(py.random() < 0.35) for _ in range(py.randint(1, 9))],
                      py.randint(1, 4)))
    return [dict(rewards=[float(r) for r in rewards], k=k, mode=mode, seed=seed)
            for seed, (rewards, k) in enumerate(cases)
            for mode in ("first_correct", "correct_then_random", "random")]


def compute_05(cases: list[dict], fn=critique.select_refinements) -> list[dict]:
    for c in cases:
        rng = random.Random(c["seed"])
        c["expected"] = fn(list(c["rewards"]), c["k"], c["mode"], rng)
        c["next_random"] = rng.random()  # how much randomness the call drew
    return cases


def inputs_06() -> list[dict]:
    example = (2, 3, [3, 4, 5], [0.0, 1.0, 0.0], 1, "first_correct")
    cases = [example + ("append",), example + ("replace",),
             (3, 4, [], [], 1, "correct_then_random", "append"),               # nothing refined
             (1, 1, [0], [1.0], 1, "first_correct", "replace"),                # a group of one
             (2, 2, [0, 1, 2, 3], [1.0, 0.0, 0.0, 1.0], 2, "random", "replace"),
             (2, 3, [5, 0, 4], [0.0, 1.0, 1.0], 1, "first_correct", "append")]  # unsorted
    py = random.Random(4)
    for _ in range(150):
        G_, n = py.randint(1, 4), py.randint(1, 8)
        refined = sorted(py.sample(range(G_ * n), py.randint(0, G_ * n)))
        if py.random() < 0.2:
            py.shuffle(refined)
        cases.append((G_, n, refined, [float(py.random() < 0.4) for _ in refined],
                      py.randint(0, 3), py.choice(["first_correct", "correct_then_random",
                                                   "random"]), py.choice(["append", "replace"])))
    keys = ("n_groups", "group_size", "refined", "refine_rewards", "k", "selection", "group_mode")
    return [dict(zip(keys, c), seed=seed) for seed, c in enumerate(cases)]


def compute_06(cases: list[dict], fn=critique.mix_groups) -> list[dict]:
    for c in cases:
        rng = random.Random(c["seed"])
        got = fn(c["n_groups"], c["group_size"], list(c["refined"]), list(c["refine_rewards"]),
                 c["k"], c["selection"], c["group_mode"], rng)
        c["expected"] = [list(x) for x in got]
        c["next_random"] = rng.random()
    return cases


# (p, p_old, A, off_policy, clip_eps, gamma, what it is): hand-worked single tokens
SINGLE_TOKENS = [
    (0.5, 0.5, 1.0, False, 0.2, 0.1, "an initial-response token at ratio 1 (the default: one "
                                     "update per rollout): loss -A, gradient -A; gamma is not "
                                     "applied to it"),
    (0.9, 0.6, 1.0, False, 0.2, 0.1, "an initial-response token with ratio 1.5 > 1 + eps and "
                                     "A > 0: the clip holds the loss at -A (1 + eps), gradient 0"),
    (0.9, 0.6, -1.0, False, 0.2, 0.1, "an initial-response token with ratio 1.5 and A < 0: max() "
                                      "keeps the unclipped -A ratio, gradient -A ratio"),
    (0.3, 0.6, -1.0, False, 0.2, 0.1, "an initial-response token with ratio 0.5 < 1 - eps and "
                                      "A < 0: clipped, gradient 0"),
    (0.9, 0.6, 1.0, False, None, 0.1, "clip_eps=None (the release): -A ratio, never clipped"),
    (0.5, 0.5, 1.0, True, 0.2, 0.1, "a refinement token: -A f(p), gradient "
                                    "-A gamma p / (p + gamma)^2"),
    (0.5, 0.2, 1.0, True, 0.2, 0.1, "a refinement token whose old_logp differs (ratio 2.5): "
                                    "refinements have no ratio and no clip, only -A f(p)"),
    (0.05, 0.5, -2.0, True, 0.2, 0.1, "a refinement token with A < 0 and ratio 0.1: no ratio, "
                                      "no clip"),
    (0.5, 0.2, 1.5, True, 0.2, None, "a refinement token with gamma=None (shaping off): -A logp, "
                                     "gradient -A"),
]


def inputs_07() -> dict:
    singles = [dict(p=p, p_old=po, A=A, off=off, clip_eps=ce, gamma=g, what=what)
               for p, po, A, off, ce, g, what in SINGLE_TOKENS]
    rng = random.Random(5)

    def randn():
        return rng.gauss(0.0, 1.0)

    batches = []
    for trial in range(60):
        N, R = rng.randint(1, 6), rng.randint(1, 7)
        p = [[rng.random() * 0.999 + 1e-6 for _ in range(R)] for _ in range(N)]
        p[0][0] = 1e-6 if trial % 3 == 0 else 0.999999                        # near 0 and 1
        logp = [[r8(math.log(x)) for x in row] for row in p]
        old = [[r8(x + 0.6 * randn()) for x in row] for row in logp]         # clips fire
        A = [r8(randn()) if rng.random() >= 0.2 else 0.0 for _ in range(N)]
        off = [rng.random() < 0.4 for _ in range(N)]
        w = [[r8(rng.random()) for _ in range(R)] for _ in range(N)]
        batches.append(dict(logp=logp, old_logp=old, A=A, off=off, clip_eps=(None, 0.2)[trial % 2],
                            gamma=(None, 0.1, 0.3)[trial % 3], w=w))
    aggregates = []
    for trial in range(60):
        N, R = rng.randint(2, 8), rng.randint(1, 7)
        lengths = [rng.randint(0, R) for _ in range(N)]
        mask = [[t < n for t in range(R)] for n in lengths]                  # padding at the end
        per_token = [[r8(randn()) if m else 1000.0 for m in row] for row in mask]  # garbage pads
        weights = None if trial % 2 else [r8(rng.random() + 0.1) for _ in range(N)]
        aggregates.append(dict(per_token=per_token, mask=mask, weights=weights,
                               denom=float(N * R * (1 + trial % 3))))
    return dict(single_tokens=singles, batches=batches, aggregates=aggregates)


def compute_07(fx: dict, policy_loss=L.policy_loss, aggregate=L.aggregate) -> dict:
    for c in fx["single_tokens"]:
        x = torch.tensor([[math.log(c["p"])]], dtype=torch.float64, requires_grad=True)
        y = policy_loss(x, torch.tensor([[math.log(c["p_old"])]], dtype=torch.float64),
                        torch.tensor([c["A"]], dtype=torch.float64), torch.tensor([c["off"]]),
                        clip_eps=c["clip_eps"], gamma=c["gamma"])
        (g,) = torch.autograd.grad(y.sum(), x)
        c["loss"], c["grad"] = out(y.sum()), out(g.sum())
    for c in fx["batches"]:
        x = torch.tensor(c["logp"], dtype=torch.float64, requires_grad=True)
        y = policy_loss(x, torch.tensor(c["old_logp"], dtype=torch.float64),
                        torch.tensor(c["A"], dtype=torch.float64), torch.tensor(c["off"]),
                        clip_eps=c["clip_eps"], gamma=c["gamma"])
        (g,) = torch.autograd.grad((y * torch.tensor(c["w"], dtype=torch.float64)).sum(), x)
        c["expected"], c["grad"] = out(y), out(g)
    for c in fx["aggregates"]:
        x = torch.tensor(c["per_token"], dtype=torch.float64, requires_grad=True)
        w = None if c["weights"] is None else torch.tensor(c["weights"], dtype=torch.float64)
        y = aggregate(x, torch.tensor(c["mask"]), c["denom"], w)
        (g,) = torch.autograd.grad(y, x)
        c["expected"], c["grad"] = out(y), out(g)
    return fx


# ---------------------------------------------------------------------------------------------
# By-hand and diagnose exercises: salted digests of the answers, and of typical wrong answers
# ---------------------------------------------------------------------------------------------
def population_std(groups: list[list[float]]) -> list[list[float]]:
    out_ = []
    for rs in groups:
        x = torch.tensor([float(r) for r in rs], dtype=torch.float64)
        out_.append(((x - x.mean()) / (x.std(unbiased=False) + 1e-6)).tolist())
    return out_


def hashed_00() -> dict:
    (groups,) = S.exercise_data()["ex00"]
    want = S.solution_00(groups)
    hints = {"advantages_q0_std": [(population_std(groups)[0], G.HINT_POPULATION_STD)],
             "advantages_q0": [([-a for a in want["advantages_q0"]], G.HINT_SIGN)],
             "grad_logp_q0": [(want["advantages_q0"], "d loss / d logp of -A * ratio at "
                               "ratio 1 is -A, not A: the loss is minimised")]}
    return G.hash_answers("ex00", want, hints)


def hashed_02() -> dict:
    initial, refinement_rewards = S.exercise_data()["ex02"]
    want = S.solution_02(initial, refinement_rewards)
    trained0 = want["rewards_group0"]
    hints = {"advantages_group0_std": [(population_std([trained0])[0], G.HINT_POPULATION_STD)],
             "advantages_group0": [(want["advantages_group0_std"], "that is divided by the "
                                    "std; this key asks for r - mean, the paper's advantage")],
             "positive_index": [(0, "the refinement is appended after the 7 initial answers")],
             "zero_adv_frac_after": [(0.25, "after mixing, an all-right group still has "
                                      "all-equal rewards, and so does a group whose refinement "
                                      "was wrong")],
             "advantages_group0_before": [([-1 / 7] * 7, "before mixing the group is its 7 "
                                           "initial answers alone")]}
    return G.hash_answers("ex02", want, hints)


def hashed_08() -> dict:
    want = S.answers_08()
    w = {k: -v for k, v in want["grad_logp"].items()}
    hints = {"grad_logp": [({k: -v for k, v in want["grad_logp"].items()},
                            "the sign: d loss / d logp of a loss to MINIMISE, A > 0")],
             "on_policy_grad_logp": [(want["on_policy_grad_logp_if_shaped"], "f(p) is applied "
                                      "to refinement (off-policy) tokens only")],
             "shaped_over_control": [({n: w[f"{n}_shaped"] for n in want["p"]},
                                      "that is shaped over *unshaped*; divide by the control "
                                      "(unshaped x 0.1)")]}
    return G.hash_answers("ex08", want, hints)


# ---------------------------------------------------------------------------------------------
INPUTS = {"ex01_advantages": inputs_01, "ex03_refinement_prompt": inputs_03,
          "ex04_shaping": inputs_04, "ex05_selection": inputs_05, "ex06_mixing": inputs_06,
          "ex07_policy_loss": inputs_07}
COMPUTE = {"ex01_advantages": compute_01, "ex03_refinement_prompt": compute_03,
           "ex04_shaping": compute_04, "ex05_selection": compute_05, "ex06_mixing": compute_06,
           "ex07_policy_loss": compute_07}
HASHED = {"ex00_grpo_warmup": hashed_00, "ex02_all_wrong_group": hashed_02,
          "ex08_shaping_entropy": hashed_08}


def strip_outputs(fx):
    """The inputs of a recorded fixture (its expected outputs removed), to recompute them."""
    drop = {"expected", "next_random", "f", "grad", "loss"}
    if isinstance(fx, dict):
        return {k: strip_outputs(v) for k, v in fx.items() if k not in drop}
    if isinstance(fx, list):
        return [strip_outputs(v) for v in fx]
    return fx


def build() -> dict[str, object]:
    """Every fixture, from freshly generated inputs and the reference code."""
    fixtures = {name: COMPUTE[name](make()) for name, make in INPUTS.items()}
    fixtures.update({name: make() for name, make in HASHED.items()})
    return fixtures


def dumps(fx) -> str:
    return json.dumps(fx, ensure_ascii=False, separators=(",", ":")) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed fixtures instead of writing them")
    args = parser.parse_args(argv)
    G.FIXTURES.mkdir(exist_ok=True)
    differ = []
    for name, fx in build().items():
        path = G.FIXTURES / f"{name}.json"
        if args.check:
            if not path.exists() or json.loads(path.read_text()) != json.loads(dumps(fx)):
                differ.append(name)
        else:
            path.write_text(dumps(fx))
            print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")
    if differ:
        print(f"fixtures differ from the reference: {differ}; run python exercises/"
              f"make_fixtures.py")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
