"""Graders: each check_*(...) compares a student's function or answers with values recorded from
the reference code in exercises/fixtures/ (made by exercises/make_fixtures.py), first on
hand-made edge cases (so that the message names the mistake), then on many seeded random inputs.
No grader calls the reference code, so they work in a student copy whose reference bodies raise
NotImplementedError (exercises/student_copy.py).

A failure raises AssertionError with the input and what was expected; an exercise that still
raises NotImplementedError fails with "not implemented yet". The answers of the by-hand and
diagnose exercises (0, 2, 8) are recorded only as salted digests of their values rounded to 4
significant digits: the fixtures do not show them, though a determined student could search for
them; these graders are a learning aid, not an exam lock. Exercise 9 is graded from the student's
own two runs. tests/test_exercises.py runs every check on the reference code, on the untouched
exercises and on typical wrong answers.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import json
import math
import random
from pathlib import Path

import torch

TOL = dict(rtol=1e-5, atol=1e-6)
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def expect(condition, message: str):
    """assert that survives python -O."""
    __tracebackhide__ = True  # pytest shows the check's line, not this helper's
    if not condition:
        raise AssertionError(message)


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs), with NotImplementedError and crashes turned into AssertionError."""
    __tracebackhide__ = True
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', repr(fn))}"
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        raise AssertionError(f"not implemented yet: {name} raises NotImplementedError "
                             f"({str(e) or 'its body is still a stub'}); write its body") from None
    except AssertionError as e:
        raise AssertionError(f"{name} failed an assertion of its own on "
                             f"{_show(args, kwargs)}: {e}") from e
    except Exception as e:  # a crash is a wrong answer, reported with the input that caused it
        raise AssertionError(f"{name} raised {type(e).__name__}: {e}\n"
                             f"  on {_show(args, kwargs)}") from e


def _show(args, kwargs) -> str:
    def one(x):
        if isinstance(x, torch.Tensor):
            return f"tensor({x.tolist()})" if x.numel() <= 32 else f"tensor{tuple(x.shape)}"
        return "rng" if isinstance(x, random.Random) else repr(x)
    return ", ".join([one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()])


def tensor_result(out, name: str, shape, where: str) -> torch.Tensor:
    expect(isinstance(out, torch.Tensor),
           f"{name} must return a torch.Tensor, got {type(out).__name__} ({where})")
    expect(tuple(out.shape) == tuple(shape),
           f"{name} returned shape {tuple(out.shape)}, expected {tuple(shape)} ({where})")
    expect(out.is_floating_point(), f"{name} must return floats, got {out.dtype} ({where})")
    return out


def close(a: torch.Tensor, b) -> bool:
    b = torch.as_tensor(b, dtype=torch.float64)
    return torch.allclose(a.detach().double(), b, **TOL)


def _fmt(t) -> str:
    t = torch.as_tensor(t, dtype=torch.float64)
    return "[" + ", ".join(f"{v:.6g}" for v in t.detach().flatten().tolist()) + "]"


def load(name: str):
    """A recorded fixture, exercises/fixtures/<name>.json."""
    path = FIXTURES / f"{name}.json"
    expect(path.exists(), f"{path} is missing: the instructor makes it with "
                          f"`python exercises/make_fixtures.py`")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# Answers recorded as digests (exercises 0, 2, 8)
# ---------------------------------------------------------------------------------------------
ZERO = 1e-7          # |x| below this counts as 0
STEPS = range(-300, 301)  # a number is accepted within about 0.3 % (relative) of the answer
HINT_POPULATION_STD = ("you divided by the population std (sum / n); use Bessel's sum / (n - 1), "
                       "as torch.std does by default")
HINT_SIGN = "sign flipped: A = r - mean(group), not mean - r"


def canonical(x: float) -> str:
    """A number as it is digested: 4 significant digits, and 0 for anything below ZERO."""
    return "0" if abs(x) < ZERO else f"{x:.4g}"


def digest(path: str, text: str) -> str:
    return hashlib.sha256(f"critique-grpo exercises|{path}|{text}".encode()).hexdigest()[:20]


def _spec(value, path: str) -> dict:
    if isinstance(value, dict):
        return {"dict": {k: _spec(v, f"{path}.{k}") for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [_spec(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"int": digest(path, str(value))}
    return {"number": digest(path, canonical(float(value)))}


def hash_answers(salt: str, answers: dict, hints: dict | None = None) -> dict:
    """The fixture of a by-hand or diagnose exercise: each answer's digests, and those of typical
    wrong answers with what is wrong (hints: key -> [(wrong value, message)])."""
    return {"salt": salt,
            "answers": {k: _spec(v, f"{salt}/{k}") for k, v in answers.items()},
            "hints": {k: [{"spec": _spec(v, f"{salt}/{k}"), "message": m} for v, m in hs]
                      for k, hs in (hints or {}).items()}}


def _scalar(got):
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        return got.item()
    return got


def _match(got, spec: dict, path: str) -> str | None:
    """None if got is the recorded answer, else what is wrong with it."""
    got = _scalar(got)
    if "dict" in spec:
        if not isinstance(got, dict):
            return f"must be a dict with keys {sorted(spec['dict'])}, got {got!r}"
        missing = [k for k in spec["dict"] if k not in got]
        if missing:
            return f"has no key(s) {missing}"
        bad = [k for k, s in spec["dict"].items() if _match(got[k], s, f"{path}.{k}")]
        return f"is wrong at key(s) {bad}: {got!r}" if bad else None
    if "list" in spec:
        got = got.tolist() if isinstance(got, torch.Tensor) else got
        n = len(spec["list"])
        if not isinstance(got, (list, tuple)) or len(got) != n:
            return f"must be a list of {n} values, got {got!r}"
        bad = [i for i, (g, s) in enumerate(zip(got, spec["list"])) if _match(g, s, f"{path}[{i}]")]
        return f"= {list(got)} is wrong at position(s) {bad}" if bad else None
    if "int" in spec:
        if not isinstance(got, int) or isinstance(got, bool):
            return f"must be an int, got {got!r}"
        return None if digest(path, str(got)) == spec["int"] else f"= {got!r} is wrong"
    if not isinstance(got, (int, float)) or isinstance(got, bool) or not math.isfinite(got):
        return f"must be a finite number (int or float), got {got!r}"
    forms = ({canonical(got)} if abs(got) < ZERO
             else {canonical(got * (1 + k * 1e-5)) for k in STEPS})
    return None if spec["number"] in {digest(path, f) for f in forms} else f"= {got!r} is wrong"


def check_hashed(got, name: str):
    """got (an answers() dict) against the recorded answers of fixture `name`."""
    __tracebackhide__ = True
    fx = load(name)
    expect(isinstance(got, dict), f"answers() must return a dict, got {type(got).__name__}")
    for key, spec in fx["answers"].items():
        expect(key in got, f"answers() has no key {key!r}")
        path = f"{fx['salt']}/{key}"
        problem = _match(got[key], spec, path)
        if problem:
            hints = [h["message"] for h in fx["hints"].get(key, [])
                     if _match(got[key], h["spec"], path) is None]
            raise AssertionError(f"answers()[{key!r}] {problem}" +
                                 "".join(f"\n  ({h})" for h in hints))


FORBIDDEN_IMPORTS = {"loss", "critique", "train", "rollout", "evaluate", "exercises", "support"}


def by_hand(source: str, exercise: str):
    """A by-hand exercise may not import the repository's code (the reference, the graders or
    another exercise): it asks for numbers worked out on paper or in plain Python."""
    if source is None:
        return
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["exercises" if node.level else (node.module or "")]
        elif isinstance(node, ast.Name) and node.id in ("__import__", "importlib"):
            names = [node.id]
        bad = [n for n in names if n.split(".")[0] in FORBIDDEN_IMPORTS | {"__import__",
                                                                          "importlib"}]
        if bad:
            raise AssertionError(f"exercise {exercise} is worked by hand: your file imports "
                                 f"{bad[0]!r} (line {node.lineno}); compute the numbers yourself")


# ---------------------------------------------------------------------------------------------
# Exercise 0 (by hand): GRPO's advantage
# ---------------------------------------------------------------------------------------------
def check_00(answers_fn, source: str | None = None):
    """answers_fn() -> dict, against the recorded answers; source: the exercise file's text."""
    by_hand(source, "0")
    check_hashed(call(answers_fn), "ex00_grpo_warmup")


# ---------------------------------------------------------------------------------------------
# Exercise 1: group advantages
# ---------------------------------------------------------------------------------------------
def _population_std_version(r, g, eps=1e-6):
    out = torch.empty_like(r, dtype=torch.float64)
    for k in range(int(g.max()) + 1):
        x = r[g == k].double()
        out[g == k] = (x - x.mean()) / (x.std(unbiased=False) + eps)
    return out


def check_advantages(fn):
    """fn(rewards, group_ids, scale_by_std=False) against the recorded loss.group_advantages."""
    for c in load("ex01_advantages"):
        r = torch.tensor(c["rewards"], dtype=torch.float32)
        g = torch.tensor(c["group_ids"], dtype=torch.long)
        scale, label = c["scale"], c["label"]
        want = torch.tensor(c["expected"], dtype=torch.float64)
        where = f"rewards={r.tolist()}, group_ids={g.tolist()}, scale_by_std={scale}"
        got = call(fn, r.clone(), g.clone(), scale_by_std=scale)
        got = tensor_result(got, "group_advantages", r.shape, where)
        if label == "one_right":
            expect(not close(got, -want), f"{HINT_SIGN} ({where}: got {_fmt(got)})")
            expect(close(got, want),
                   f"{where}: expected {_fmt(want)} (r - mean, mean = 0.25), got {_fmt(got)}")
        elif label == "one_right_std":
            expect(not close(got, r - r.mean()), f"{where}: scale_by_std=True must divide by "
                                                 f"(std + eps); got the unscaled {_fmt(got)}")
            expect(not close(got, _population_std_version(r, g)),
                   f"{where}: {HINT_POPULATION_STD}: expected {_fmt(want)}, got {_fmt(got)}")
            expect(close(got, want), f"{where}: expected {_fmt(want)} (std = 0.5 with n - 1), "
                                     f"got {_fmt(got)}")
        elif label == "equal":
            what = c["what"]
            expect(not torch.isnan(got).any(),
                   f"{what} must get A = 0 exactly, got nan ({where}): a group of one has no "
                   f"n - 1 std (torch.std gives nan), and 0 / (0 + eps) needs the eps")
            expect(torch.equal(got.float(), torch.zeros(len(r))),
                   f"{what} must get A = 0 exactly ({where}), got {_fmt(got)}")
        elif label == "groups":
            expect(close(got, want),
                   f"{where}: expected {_fmt(want)}, got {_fmt(got)} (groups are given by "
                   f"group_ids: they may differ in size and need not be adjacent)")
        else:
            expect(close(got, want), f"{where}: expected {_fmt(want)}, got {_fmt(got)}")
            for k in range(int(g.max()) + 1):
                if len(set(r[g == k].tolist())) == 1:
                    expect(torch.equal(got[g == k].float(), torch.zeros(int((g == k).sum()))),
                           f"{where}: group {k} is all-equal and must get A = 0 exactly, "
                           f"got {_fmt(got[g == k])}")


# ---------------------------------------------------------------------------------------------
# Exercise 2 (by hand): a correct refinement in an all-wrong group
# ---------------------------------------------------------------------------------------------
def check_02(answers_fn, source: str | None = None):
    """answers_fn() -> dict, against the recorded answers; source: the exercise file's text."""
    by_hand(source, "2")
    check_hashed(call(answers_fn), "ex02_all_wrong_group")


# ---------------------------------------------------------------------------------------------
# Exercise 3: the refinement prompt
# ---------------------------------------------------------------------------------------------
def _diff(want: str, got: str) -> str:
    i = next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    lines = difflib.unified_diff(want.splitlines(), got.splitlines(), "expected", "yours",
                                 lineterm="", n=0)
    return (f"first difference at character {i}: expected {want[max(0, i - 20): i + 20]!r}, "
            f"yours {got[max(0, i - 20): i + 20]!r}\n" + "\n".join(lines))


def check_refinement_prompt(fn):
    """fn(question, previous, critique) against the recorded critique.refinement_prompt,
    character for character."""
    for c in load("ex03_refinement_prompt"):
        q, prev, crit, want = c["question"], c["previous"], c["critique"], c["expected"]
        got = call(fn, q, prev, crit)
        expect(isinstance(got, str), f"return a str, got {type(got).__name__}")
        hint = ""
        if got != want and "{" in q + prev + crit:
            hint = ("\n(the inputs contain text that looks like a field, e.g. '{critique}': fill "
                    "each field once; chained str.replace substitutes inside already-filled text)")
        expect(got == want, f"for question={q!r}, previous={prev!r}, critique={crit!r}:\n"
                            f"{_diff(want, got)}{hint}")


# ---------------------------------------------------------------------------------------------
# Exercise 4: shaping
# ---------------------------------------------------------------------------------------------
def check_shaping(shaping, shaping_grad):
    """shaping(p, gamma) against the recorded loss.shaping (values, and autograd through it);
    shaping_grad(p, gamma) against the recorded autograd through loss.shaping."""
    fx = load("ex04_shaping")
    p = torch.tensor(fx["grid"]["p"], dtype=torch.float64)
    for c in fx["grid"]["per_gamma"]:
        gamma, want, want_g = c["gamma"], c["f"], c["grad"]
        where = f"p={p.tolist()}, gamma={gamma}"
        f = tensor_result(call(shaping, p.clone(), gamma), "shaping", p.shape, where)
        expect(close(f, want),
               f"shaping: expected f(p) = p / (p + gamma) = {_fmt(want)}, got {_fmt(f)} ({where})")
        # the loss differentiates through p = exp(logp): your f must carry the gradient
        logp = torch.log(p).requires_grad_(True)
        out = call(shaping, torch.exp(logp), gamma)
        expect(isinstance(out, torch.Tensor) and out.requires_grad,
               f"shaping must be differentiable through p (torch operations, no detach) ({where})")
        (g_auto,) = torch.autograd.grad(out.sum(), logp)
        expect(close(g_auto, want_g),
               f"autograd through your shaping gives d f / d logp = {_fmt(g_auto)}, expected "
               f"{_fmt(want_g)} ({where})")
        g = tensor_result(call(shaping_grad, p.clone(), gamma), "shaping_grad", p.shape, where)
        expect(not close(g, gamma / (p + gamma) ** 2),
               f"shaping_grad returned d f / d p = gamma / (p + gamma)^2; the optimiser sees "
               f"d f / d logp = p * d f / d p ({where})")
        expect(close(g, want_g), f"shaping_grad: expected gamma p / (p + gamma)^2 = "
                                 f"{_fmt(want_g)}, got {_fmt(g)} ({where})")
    # the landmarks of the default gamma
    g = call(shaping_grad, torch.tensor([0.1, 1e-9], dtype=torch.float64), 0.1)
    expect(abs(float(g[0]) - 0.25) < 1e-6, f"at p = gamma the gradient is its maximum "
                                           f"gamma^2 / (2 gamma)^2 = 0.25, got {float(g[0])}")
    expect(abs(float(g[1])) < 1e-7, f"as p -> 0 the gradient -> 0, got {float(g[1])} at p = 1e-9")
    # gamma = 0 is not "off"
    try:
        out = shaping(torch.tensor([0.3, 0.7]), 0.0)
    except NotImplementedError:
        raise AssertionError("not implemented yet: shaping raises NotImplementedError") from None
    except Exception:
        out = None  # rejected: right
    expect(out is None, f"shaping(p, 0.0) must raise (AssertionError or ValueError): gamma = 0 "
                        f"gives f = 1 everywhere ({out}) and a zero gradient, silently switching "
                        f"refinements off; 'off' is gamma=None, handled by the caller")
    for c in fx["random"]:
        p, gamma = torch.tensor(c["p"], dtype=torch.float64), c["gamma"]
        where = f"random p of shape (5, 3), gamma={gamma:.4f}"
        f = tensor_result(call(shaping, p, gamma), "shaping", p.shape, where)
        expect(close(f, c["f"]), f"shaping differs from p / (p + gamma) ({where})")
        g = tensor_result(call(shaping_grad, p, gamma), "shaping_grad", p.shape, where)
        expect(close(g, c["grad"]), f"shaping_grad differs from gamma p / (p + gamma)^2 ({where})")


# ---------------------------------------------------------------------------------------------
# Exercise 5: refinement selection
# ---------------------------------------------------------------------------------------------
RNG_CALLS = {"random": "sorted(rng.sample(range(n), min(k, n)))",
             "correct_then_random": "rng.sample(wrong, len(wrong))", "first_correct": "none"}


def check_select(fn):
    """fn(rewards, k, mode, rng) against the recorded critique.select_refinements, with the same
    seeds, and the randomness it drew."""
    for c in load("ex05_selection"):
        rewards, k, mode, seed, want = c["rewards"], c["k"], c["mode"], c["seed"], c["expected"]
        where = f"rewards={rewards}, k={k}, mode={mode!r}, rng=random.Random({seed})"
        mine = random.Random(seed)
        got = call(fn, list(rewards), k, mode, mine)
        expect(isinstance(got, list) and all(isinstance(i, int) for i in got),
               f"return a list of int indices, got {got!r} ({where})")
        expect(len(got) == min(k, len(rewards)),
               f"return min(k, len(rewards)) = {min(k, len(rewards))} indices, got {got} "
               f"({where})")
        expect(all(0 <= i < len(rewards) for i in got), f"index out of range in {got} ({where})")
        if mode != "random":
            correct = [i for i, r in enumerate(rewards) if r > 0][:k]
            expect(got[: len(correct)] == correct,
                   f"{mode}: the correct refinements (reward > 0) come first, in order: "
                   f"expected the list to start with {correct}, got {got} ({where})")
        expect(got == want, f"expected {want}, got {got} ({where}); with the same seed, draw "
                            f"from rng exactly as the docstring says: {RNG_CALLS[mode]}")
        expect(mine.random() == c["next_random"],
               f"the picks are right but your function drew a different amount of randomness "
               f"from rng than the reference ({where}); the trainer shares one rng over all "
               f"groups, so every later group would differ")


# ---------------------------------------------------------------------------------------------
# Exercise 6: mixing
# ---------------------------------------------------------------------------------------------
def check_mix(fn):
    """fn(n_groups, group_size, refined, refine_rewards, k, selection, group_mode, rng) against
    the recorded critique.mix_groups, with the same seeds, and the randomness it drew."""
    for c in load("ex06_mixing"):
        G, n, refined, rr = c["n_groups"], c["group_size"], c["refined"], c["refine_rewards"]
        k, selection, mode, seed = c["k"], c["selection"], c["group_mode"], c["seed"]
        want = [tuple(x) for x in c["expected"]]
        where = (f"n_groups={G}, group_size={n}, refined={refined}, refine_rewards={rr}, k={k}, "
                 f"selection={selection!r}, group_mode={mode!r}, rng=random.Random({seed})")
        mine = random.Random(seed)
        got = call(fn, G, n, list(refined), list(rr), k, selection, mode, mine)
        expect(isinstance(got, list), f"return a list of (group, index, off_policy) tuples, got "
                                      f"{type(got).__name__} ({where})")
        got = [tuple(x) for x in got]
        for g in range(G):
            n_chosen = sum(1 for x in want if x[0] == g and x[2])
            n_initial = sum(1 for x in got if x[0] == g and not x[2])
            if mode == "append":
                expect(n_initial == n, f"append keeps all {n} initial responses of group {g}, got "
                                       f"{n_initial} ({where})")
            else:
                expect(n_initial == n - n_chosen,
                       f"replace: group {g} chose {n_chosen} refinement(s), so it keeps "
                       f"{n - n_chosen} of its {n} initial responses (the first {n_chosen} go), "
                       f"got {n_initial}: did you append instead? ({where})")
        expect(got == want, f"expected\n    {want}\ngot\n    {got}\n({where})")
        expect(mine.random() == c["next_random"],
               f"right result, but a different amount of randomness drawn from rng ({where}): draw "
               f"only through select_refinements, and only for groups that have candidates")


# ---------------------------------------------------------------------------------------------
# Exercise 7: per-token loss and aggregation
# ---------------------------------------------------------------------------------------------
def _one_token(fn, logp, old, A, off, clip_eps, gamma):
    x = torch.tensor([[logp]], dtype=torch.float64, requires_grad=True)
    out = call(fn, x, torch.tensor([[old]], dtype=torch.float64),
               torch.tensor([A], dtype=torch.float64), torch.tensor([off]),
               clip_eps=clip_eps, gamma=gamma)
    out = tensor_result(out, "policy_loss", (1, 1), f"one token, logp={logp:.4f}")
    (g,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    return float(out.detach()), 0.0 if g is None else float(g)


def check_policy_loss(policy_loss, aggregate):
    """policy_loss(logp, old_logp, A, off_policy, clip_eps=, gamma=) and aggregate(per_token, mask,
    denom, seq_weights) against the recorded loss.policy_loss / loss.aggregate: values,
    gradients, padding, micro-batch invariance."""
    fx = load("ex07_policy_loss")
    for c in fx["single_tokens"]:
        p, p_old, A, off, clip_eps, gamma = (c[k] for k in ("p", "p_old", "A", "off", "clip_eps",
                                                            "gamma"))
        got = _one_token(policy_loss, math.log(p), math.log(p_old), A, off, clip_eps, gamma)
        want = (c["loss"], c["grad"])
        ok = all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(got, want))
        expect(ok, f"{c['what']}.\n  logp=log({p}), old_logp=log({p_old}), A={A}, "
                   f"off_policy={off}, clip_eps={clip_eps}, gamma={gamma}\n  expected loss "
                   f"{want[0]:.6f}, d loss / d logp {want[1]:.6f}; got {got[0]:.6f}, {got[1]:.6f}")

    # random batches: values and gradients
    for c in fx["batches"]:
        logp = torch.tensor(c["logp"], dtype=torch.float64)
        old = torch.tensor(c["old_logp"], dtype=torch.float64)
        A, off = torch.tensor(c["A"], dtype=torch.float64), torch.tensor(c["off"])
        clip_eps, gamma, (N, R) = c["clip_eps"], c["gamma"], logp.shape
        want, want_g = torch.tensor(c["expected"]), torch.tensor(c["grad"])
        where = (f"a random batch N={N}, R={R}, clip_eps={clip_eps}, gamma={gamma}, "
                 f"off_policy={off.tolist()}")
        x1 = logp.clone().requires_grad_(True)
        got = call(policy_loss, x1, old, A, off, clip_eps=clip_eps, gamma=gamma)
        got = tensor_result(got, "policy_loss", (N, R), where)
        for rows, kind in ((~off, "initial-response (on-policy)"),
                           (off, "refinement (off-policy)")):
            expect(close(got[rows], want[rows]), f"{where}: wrong values on {kind} rows: expected "
                                                 f"{_fmt(want[rows])}, got {_fmt(got[rows])}")
        w = torch.tensor(c["w"], dtype=torch.float64)
        (g1,) = torch.autograd.grad((got * w).sum(), x1, allow_unused=True)
        expect(close(torch.zeros_like(want_g) if g1 is None else g1, want_g),
               f"{where}: right values, wrong gradient w.r.t. logp (is something detached that "
               f"should not be, or the other way round?)")

    # aggregation: the constant denominator, weights, padding, micro-batch invariance
    for c in fx["aggregates"]:
        per_token = torch.tensor(c["per_token"], dtype=torch.float64)
        mask = torch.tensor(c["mask"], dtype=torch.bool)
        weights = None if c["weights"] is None else torch.tensor(c["weights"], dtype=torch.float64)
        denom, (N, R) = c["denom"], per_token.shape
        where = (f"aggregate on N={N}, R={R}, lengths={mask.sum(1).tolist()}, denom={denom}, "
                 f"seq_weights {'None' if weights is None else 'given'}")
        x1 = per_token.clone().requires_grad_(True)
        got = call(aggregate, x1, mask, denom, weights)
        expect(isinstance(got, torch.Tensor) and got.dim() == 0,
               f"aggregate must return a scalar tensor ({where})")
        (g1,) = torch.autograd.grad(got, x1, allow_unused=True)
        g1 = torch.zeros_like(per_token) if g1 is None else g1
        expect(float(g1[~mask].abs().sum()) == 0.0,
               f"padding tokens (mask 0) must get zero gradient ({where})")
        h = N // 2
        parts = [call(aggregate, per_token[s], mask[s], denom,
                      None if weights is None else weights[s]) for s in (slice(0, h), slice(h, N))]
        whole = float(got.detach())
        expect(math.isclose(float(parts[0] + parts[1]), whole, rel_tol=1e-9, abs_tol=1e-12),
               f"micro-batch invariance: aggregate(first {h} rows) + aggregate(the other "
               f"{N - h}) = {float(parts[0] + parts[1]):.6f}, but aggregate(all {N}) = "
               f"{whole:.6f} with the same denom ({where}); divide by the given denom only, "
               f"never by a count of this call's tokens")
        expect(close(got, c["expected"]), f"{where}: expected {c['expected']:.6f} = "
                                          f"sum(mask * w * per_token) / denom, got {whole:.6f}")
        expect(close(g1, c["grad"]), f"{where}: right value, wrong gradient")

    # the two together, as step 7 uses them: padding gets no gradient through the whole loss
    N, R = 4, 5
    logp = torch.log(torch.linspace(0.05, 0.95, N * R, dtype=torch.float64).view(N, R))
    logp.requires_grad_(True)
    mask = torch.arange(R)[None, :] < torch.tensor([5, 3, 1, 0])[:, None]
    A = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    off = torch.tensor([False, True, False, True])
    per_tok = call(policy_loss, logp, logp.detach(), A, off, clip_eps=0.2, gamma=0.1)
    (g,) = torch.autograd.grad(call(aggregate, per_tok, mask, N * R), logp)
    expect(float(g[~mask].abs().sum()) == 0.0,
           "aggregate(policy_loss(...)) put gradient on padding tokens")


# ---------------------------------------------------------------------------------------------
# Exercise 8 (diagnose): shaping, its control, and entropy
# ---------------------------------------------------------------------------------------------
def check_08(answers_fn):
    """answers_fn() -> dict, against the recorded answers."""
    check_hashed(call(answers_fn), "ex08_shaping_entropy")


# ---------------------------------------------------------------------------------------------
# Exercise 9 (diagnose, on your own run): the refine_ft collapse
# ---------------------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def read_run(run_dir) -> dict:
    """A train.py run's config, per-step metrics, evaluations ({step: accuracy}) and the answers
    of its last evaluation on the first held-out set."""
    run = Path(run_dir)
    expect((run / "config.json").exists() and (run / "metrics.jsonl").exists(),
           f"{run} is not a train.py run directory (no config.json / metrics.jsonl): run the "
           f"exercise's commands first")
    config = json.loads((run / "config.json").read_text())
    metrics = _jsonl(run / "metrics.jsonl")
    evals = {m["step"]: m["eval/accuracy"] for m in metrics if "eval/accuracy" in m}
    expect(len(evals) >= 2 and max(evals) == config["max_steps"],
           f"{run} has no final evaluation (evaluated steps {sorted(evals)}): let the run finish")
    first_set = Path(config["eval_data"].split(",")[0]).stem
    final = _jsonl(run / f"eval-{max(evals)}.jsonl")
    return {"config": config, "steps": [m for m in metrics if "grad_norm" in m], "evals": evals,
            "answers": [r["response"] for r in final if r.get("set", first_set) == first_set]}


def correct_refinements(run_dir) -> list[str]:
    """The refinements with reward > 0 that a run recorded in its samples.jsonl."""
    path = Path(run_dir) / "samples.jsonl"
    expect(path.exists(), f"{run_dir} has no samples.jsonl (train.py writes one every "
                          f"--samples_every steps): run the exercise's commands as given")
    return [r["refinement"] for r in _jsonl(path)
            if r.get("refinement") is not None and (r.get("refinement_reward") or 0) > 0]


def share_containing(texts: list[str], phrase: str) -> float:
    """The share of texts that contain phrase (case and runs of white space ignored)."""
    def norm(text):
        return " ".join(text.split()).lower()
    return sum(norm(phrase) in norm(t) for t in texts) / max(len(texts), 1) if phrase else 0.0


def candidate_phrases(answers: list[str], reference_answers: list[str]) -> list[str]:
    """Runs of 3 or 4 words (at least 10 characters) in at least half of `answers` and in under a
    tenth of `reference_answers`, the most frequent first."""
    counts: dict[str, int] = {}
    for text in answers:
        words = text.split()
        for g in {" ".join(words[i: i + n]) for n in (3, 4) for i in range(len(words) - n + 1)}:
            counts[g] = counts.get(g, 0) + 1
    return [g for g in sorted(counts, key=lambda g: (-counts[g], g))
            if len(g) >= 10 and share_containing(answers, g) >= 0.5
            and share_containing(reference_answers, g) < 0.1]


def _number(got: dict, key: str, expected: float, label: str = "answers()"):
    __tracebackhide__ = True
    expect(key in got, f"{label} has no key {key!r}")
    value = _scalar(got[key])
    expect(isinstance(value, (int, float)) and not isinstance(value, bool),
           f"{label}[{key!r}] must be a number (int or float), got {type(value).__name__}")
    expect(math.isclose(value, expected, rel_tol=1e-3, abs_tol=1e-5),
           f"{label}[{key!r}] = {value!r} is wrong")


def check_09(answers_fn):
    """answers_fn() -> dict, checked against the runs it names: they are the right kinds of run,
    the refine_ft run collapsed, and the numbers and phrase agree with their files."""
    got = call(answers_fn)
    expect(isinstance(got, dict), f"answers() must return a dict, got {type(got).__name__}")
    for key in ("run_dir", "reference_dir"):
        expect(isinstance(got.get(key), str), f"answers()[{key!r}] must be a directory (str)")
    run, ref = read_run(got["run_dir"]), read_run(got["reference_dir"])
    expect(run["config"]["baseline"] == "refine_ft",
           f"{got['run_dir']} was run with --baseline {run['config']['baseline']}, not refine_ft")
    expect(ref["config"]["baseline"] == "none" and ref["config"]["critique_type"] in
           ("indicative", "indicative_gt", "cot", "self"),
           f"{got['reference_dir']} is not a Critique-GRPO run (baseline "
           f"{ref['config']['baseline']}, critique_type {ref['config']['critique_type']})")
    expect(run["config"]["seed"] == ref["config"]["seed"],
           f"the two runs have different seeds ({run['config']['seed']} and "
           f"{ref['config']['seed']}): compare them at the same seed")
    accuracy = {"step0": run["evals"][0], "final": run["evals"][max(run["evals"])]}
    expect(accuracy["final"] < accuracy["step0"],
           f"your refine_ft run did not collapse (held-out accuracy {accuracy['step0']:.3f}"
           f" -> {accuracy['final']:.3f}): look at its answers anyway, and try another "
           f"--seed for both runs")
    norms = {"refine_ft": max(m["grad_norm"] for m in run["steps"]),
             "critique_grpo": max(m["grad_norm"] for m in ref["steps"])}
    for group, want in (("accuracy", accuracy), ("max_grad_norm", norms)):
        expect(isinstance(got.get(group), dict),
               f"answers()[{group!r}] must be a dict with keys {sorted(want)}")
        for key, value in want.items():
            _number(got[group], key, value, label=f"answers()[{group!r}]")
    examples = [m.get("baseline/examples", 0) for m in run["steps"]]
    mine = got.get("examples_per_step")
    mine = mine.tolist() if isinstance(mine, torch.Tensor) else mine
    expect(isinstance(mine, (list, tuple)) and len(mine) == len(examples),
           f"answers()['examples_per_step'] must be a list of {len(examples)} numbers, one per "
           f"training step, got {mine!r}")
    bad = [i for i, (a, b) in enumerate(zip(mine, examples)) if not math.isclose(a, b)]
    expect(not bad, f"answers()['examples_per_step'] = {list(mine)} is wrong at position(s) {bad}")

    phrase = got.get("phrase")
    expect(isinstance(phrase, str) and len(phrase.strip()) >= 10,
           "answers()['phrase'] must be words of at least 10 characters")
    in_run = share_containing(run["answers"], phrase)
    in_ref = share_containing(ref["answers"], phrase)
    if in_run < 0.5 or in_ref >= 0.1:
        expect(candidate_phrases(run["answers"], ref["answers"]),
               f"no run of 3 or 4 words is in at least half of {got['run_dir']}'s final answers and "
               f"in under a tenth of the reference's: this collapse has no phrase to find; try "
               f"another --seed for both runs")
    expect(in_run >= 0.5, f"{phrase!r} is in {in_run:.0%} of refine_ft's final answers, not at "
           f"least half: read {got['run_dir']}/eval-{max(run['evals'])}.jsonl")
    expect(in_ref < 0.1, f"{phrase!r} is also in {in_ref:.0%} of Critique-GRPO's final answers: "
           f"find what refine_ft says that a plain answer does not")
    expect(isinstance(got.get("phrase_share"), dict),
           "answers()['phrase_share'] must be a dict with keys ['critique_grpo', 'refine_ft']")
    for key, value in (("refine_ft", in_run), ("critique_grpo", in_ref)):
        _number(got["phrase_share"], key, value, label="answers()['phrase_share']")
    refinements = correct_refinements(got["reference_dir"])
    _number(got, "correct_refinements", len(refinements))
    _number(got, "phrase_in_refinements", share_containing(refinements, phrase))
