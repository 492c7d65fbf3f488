"""Graders: each check_*(...) compares an implementation with the reference code, first on
hand-made edge cases (so that the message names the mistake), then on many seeded random inputs.

A failure raises AssertionError with the input and what was expected; an exercise that still
raises NotImplementedError fails with "not implemented yet". tests/test_exercises.py runs every
check on the reference code, on the untouched exercises and on typical wrong answers;
exercises/test_NN_*.py run them on your exercise. The reference answers of the two diagnose
exercises are here too: solution_07, solution_08 and solution_09 (which reads two runs).
"""
from __future__ import annotations

import difflib
import math
import random

import torch

import critique
import loss as L

TOL = dict(rtol=1e-5, atol=1e-6)


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
    except NotImplementedError:
        raise AssertionError(f"not implemented yet: {name} raises NotImplementedError; "
                             f"write its body") from None
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


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a.detach().double(), b.detach().double(), **TOL)


def _fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in t.detach().double().flatten().tolist()) + "]"


def number(answers: dict, key: str, expected: float, label: str = "answers()"):
    """answers[key] is a number within 1e-3 (relative) or 1e-5 (absolute) of expected."""
    __tracebackhide__ = True
    expect(key in answers, f"{label} has no key {key!r}")
    got = answers[key]
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    expect(isinstance(got, (int, float)) and not isinstance(got, bool),
           f"{label}[{key!r}] must be a number (int or float), got {type(got).__name__}")
    expect(math.isclose(got, expected, rel_tol=1e-3, abs_tol=1e-5),
           f"{label}[{key!r}] = {got!r} is wrong")


def numbers(answers: dict, key: str, expected: list[float]):
    """answers[key] is a list of numbers, each as in number()."""
    __tracebackhide__ = True
    expect(key in answers, f"answers() has no key {key!r}")
    got = answers[key]
    got = got.tolist() if isinstance(got, torch.Tensor) else got
    expect(isinstance(got, (list, tuple)) and len(got) == len(expected),
           f"answers()[{key!r}] must be a list of {len(expected)} numbers, got {got!r}")
    bad = [i for i, (g, e) in enumerate(zip(got, expected))
           if not math.isclose(g, e, rel_tol=1e-3, abs_tol=1e-5)]
    expect(not bad, f"answers()[{key!r}] = {list(got)} is wrong at position(s) {bad}")


# ---------------------------------------------------------------------------------------------
# Exercise 1: group advantages (reference: loss.group_advantages)
# ---------------------------------------------------------------------------------------------
def _population_std_version(r, g, eps=1e-6):
    out = torch.empty_like(r, dtype=torch.float64)
    for k in range(int(g.max()) + 1):
        x = r[g == k].double()
        out[g == k] = (x - x.mean()) / (x.std(unbiased=False) + eps)
    return out


def check_advantages(fn):
    """fn(rewards, group_ids, scale_by_std=False) against loss.group_advantages."""
    def run(r, g, scale):
        r, g = torch.tensor(r, dtype=torch.float32), torch.tensor(g, dtype=torch.long)
        where = f"rewards={r.tolist()}, group_ids={g.tolist()}, scale_by_std={scale}"
        got = call(fn, r.clone(), g.clone(), scale_by_std=scale)
        got = tensor_result(got, "group_advantages", r.shape, where)
        return r, g, got, L.group_advantages(r, g, scale_by_std=scale), where

    # the hand-worked cases, each with a diagnosis
    r, g, got, want, where = run([1, 0, 0, 0], [0, 0, 0, 0], False)
    expect(not close(got, -want),
           f"sign flipped: A = r - mean(group), not mean - r ({where}: got {_fmt(got)})")
    expect(close(got, want),
           f"{where}: expected {_fmt(want)} (r - mean, mean = 0.25), got {_fmt(got)}")
    r, g, got, want, where = run([1, 0, 0, 0], [0, 0, 0, 0], True)
    expect(not close(got, r - r.mean()),
           f"{where}: scale_by_std=True must divide by (std + eps); got the unscaled {_fmt(got)}")
    expect(not close(got, _population_std_version(r, g)),
           f"{where}: you divided by the population std (sum / n); use Bessel's sum / (n - 1), "
           f"as torch.std does by default: expected {_fmt(want)}, got {_fmt(got)}")
    expect(close(got, want), f"{where}: expected {_fmt(want)} (std = 0.5 with n - 1), "
                             f"got {_fmt(got)}")
    equal_cases = (([0] * 8, [0] * 8, "an all-wrong group"),
                   ([1] * 8, [0] * 8, "an all-right group"),
                   ([1], [0], "a group of one"), ([0, 1], [0, 1], "two groups of one"))
    for scale in (False, True):
        for rewards, ids, what in equal_cases:
            r, g, got, want, where = run(rewards, ids, scale)
            expect(not torch.isnan(got).any(),
                   f"{what} must get A = 0 exactly, got nan ({where}): a group of one has no n - 1 "
                   f"std (torch.std gives nan), and 0 / (0 + eps) needs the eps")
            expect(torch.equal(got.float(), torch.zeros(len(rewards))),
                   f"{what} must get A = 0 exactly ({where}), got {_fmt(got)}")
    for rewards, ids in (([0] * 7 + [1] + [1] + [0] * 6, [0] * 8 + [1] * 7),  # sizes differ
                         ([1, 0, 0, 1, 1, 0], [0, 1, 0, 1, 2, 2])):            # not adjacent
        for scale in (False, True):
            r, g, got, want, where = run(rewards, ids, scale)
            expect(close(got, want),
                   f"{where}: expected {_fmt(want)}, got {_fmt(got)} (groups are given by "
                   f"group_ids: they may differ in size and need not be adjacent)")

    rng = torch.Generator().manual_seed(0)
    for trial in range(100):
        G = int(torch.randint(1, 6, (1,), generator=rng))
        ids = torch.repeat_interleave(torch.arange(G), torch.randint(1, 10, (G,), generator=rng))
        ids = ids[torch.randperm(len(ids), generator=rng)]
        if trial % 2:
            rewards = torch.rand(len(ids), generator=rng)                  # any real rewards
        else:
            rewards = (torch.rand(len(ids), generator=rng) < 0.3).float()  # 0/1: many all-equal
        for scale in (False, True):
            r, g, got, want, where = run(rewards.tolist(), ids.tolist(), scale)
            expect(close(got, want), f"{where}: expected {_fmt(want)}, got {_fmt(got)}")
            for k in range(G):
                if len(set(r[g == k].tolist())) == 1:
                    expect(torch.equal(got[g == k].float(), torch.zeros(int((g == k).sum()))),
                           f"{where}: group {k} is all-equal and must get A = 0 exactly, "
                           f"got {_fmt(got[g == k])}")


# ---------------------------------------------------------------------------------------------
# Exercise 2: shaping (reference: loss.shaping, its gradient by autograd)
# ---------------------------------------------------------------------------------------------
def reference_shaping_grad(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """d f / d logp by autograd through loss.shaping (float64)."""
    logp = torch.log(p.detach().double()).requires_grad_(True)
    (grad,) = torch.autograd.grad(L.shaping(torch.exp(logp), gamma).sum(), logp)
    return grad


def check_shaping(shaping, shaping_grad):
    """shaping(p, gamma) against loss.shaping (values, and autograd through it);
    shaping_grad(p, gamma) against autograd through loss.shaping."""
    p = torch.tensor([1e-8, 1e-4, 0.01, 0.05, 0.1, 0.2, 0.5, 0.9, 0.999, 1.0], dtype=torch.float64)
    for gamma in (0.1, 0.01, 0.5, 1.0):
        where = f"p={p.tolist()}, gamma={gamma}"
        f = tensor_result(call(shaping, p.clone(), gamma), "shaping", p.shape, where)
        want = L.shaping(p, gamma)
        expect(close(f, want),
               f"shaping: expected f(p) = p / (p + gamma) = {_fmt(want)}, got {_fmt(f)} ({where})")
        # the loss differentiates through p = exp(logp): your f must carry the gradient
        logp = torch.log(p).requires_grad_(True)
        out = call(shaping, torch.exp(logp), gamma)
        expect(isinstance(out, torch.Tensor) and out.requires_grad,
               f"shaping must be differentiable through p (torch operations, no detach) ({where})")
        (g_auto,) = torch.autograd.grad(out.sum(), logp)
        want_g = reference_shaping_grad(p, gamma)
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
    rng = torch.Generator().manual_seed(1)
    for _ in range(20):
        p = torch.rand(5, 3, generator=rng, dtype=torch.float64).clamp(min=1e-6)
        gamma = float(torch.rand(1, generator=rng)) * 0.5 + 0.01
        where = f"random p of shape (5, 3), gamma={gamma:.4f}"
        f = tensor_result(call(shaping, p, gamma), "shaping", p.shape, where)
        expect(close(f, L.shaping(p, gamma)), f"shaping differs from p / (p + gamma) ({where})")
        g = tensor_result(call(shaping_grad, p, gamma), "shaping_grad", p.shape, where)
        expect(close(g, reference_shaping_grad(p, gamma)),
               f"shaping_grad differs from gamma p / (p + gamma)^2 ({where})")


# ---------------------------------------------------------------------------------------------
# Exercise 3: refinement selection (reference: critique.select_refinements)
# ---------------------------------------------------------------------------------------------
RNG_CALLS = {"random": "sorted(rng.sample(range(n), min(k, n)))",
             "correct_then_random": "rng.sample(wrong, len(wrong))", "first_correct": "none"}


def check_select(fn):
    """fn(rewards, k, mode, rng) against critique.select_refinements, identically seeded rngs."""
    cases = [([0, 1, 0, 1], 1), ([0, 0, 0], 2), ([1, 1, 1], 2), ([0, 1], 5), ([], 1),
             ([1, 0, 0, 0, 0, 1], 3), ([0.0, 0.5, 0.0], 1), ([1, 0, 1, 0], 0)]
    py = random.Random(3)
    for _ in range(120):
        rewards = [float(py.random() < 0.35) for _ in range(py.randint(1, 9))]
        cases.append((rewards, py.randint(1, 4)))
    for seed, (rewards, k) in enumerate(cases):
        for mode in ("first_correct", "correct_then_random", "random"):
            where = f"rewards={rewards}, k={k}, mode={mode!r}, rng=random.Random({seed})"
            mine, ref = random.Random(seed), random.Random(seed)
            got = call(fn, list(rewards), k, mode, mine)
            want = critique.select_refinements(list(rewards), k, mode, ref)
            expect(isinstance(got, list) and all(isinstance(i, int) for i in got),
                   f"return a list of int indices, got {got!r} ({where})")
            expect(len(got) == min(k, len(rewards)),
                   f"return min(k, len(rewards)) = {min(k, len(rewards))} indices, got {got} "
                   f"({where})")
            expect(all(0 <= i < len(rewards) for i in got),
                   f"index out of range in {got} ({where})")
            if mode != "random":
                correct = [i for i, r in enumerate(rewards) if r > 0][:k]
                expect(got[: len(correct)] == correct,
                       f"{mode}: the correct refinements (reward > 0) come first, in order: "
                       f"expected the list to start with {correct}, got {got} ({where})")
            expect(got == want, f"expected {want}, got {got} ({where}); with the same seed, draw "
                                f"from rng exactly as the docstring says: {RNG_CALLS[mode]}")
            expect(mine.random() == ref.random(),
                   f"the picks are right but your function drew a different amount of randomness "
                   f"from rng than the reference ({where}); the trainer shares one rng over all "
                   f"groups, so every later group would differ")


# ---------------------------------------------------------------------------------------------
# Exercise 4: mixing (reference: critique.mix_groups)
# ---------------------------------------------------------------------------------------------
def check_mix(fn):
    """fn(n_groups, group_size, refined, refine_rewards, k, selection, group_mode, rng) against
    critique.mix_groups, identically seeded rngs."""
    example = (2, 3, [3, 4, 5], [0.0, 1.0, 0.0], 1, "first_correct")
    cases = [example + ("append",), example + ("replace",),
             (3, 4, [], [], 1, "correct_then_random", "append"),               # nothing refined
             (1, 1, [0], [1.0], 1, "first_correct", "replace"),                # a group of one
             (2, 2, [0, 1, 2, 3], [1.0, 0.0, 0.0, 1.0], 2, "random", "replace"),
             (2, 3, [5, 0, 4], [0.0, 1.0, 1.0], 1, "first_correct", "append")]  # unsorted
    py = random.Random(4)
    for _ in range(150):
        G, n = py.randint(1, 4), py.randint(1, 8)
        refined = sorted(py.sample(range(G * n), py.randint(0, G * n)))
        if py.random() < 0.2:
            py.shuffle(refined)
        cases.append((G, n, refined, [float(py.random() < 0.4) for _ in refined], py.randint(0, 3),
                      py.choice(["first_correct", "correct_then_random", "random"]),
                      py.choice(["append", "replace"])))
    for seed, (G, n, refined, rr, k, selection, mode) in enumerate(cases):
        where = (f"n_groups={G}, group_size={n}, refined={refined}, refine_rewards={rr}, k={k}, "
                 f"selection={selection!r}, group_mode={mode!r}, rng=random.Random({seed})")
        mine, ref = random.Random(seed), random.Random(seed)
        got = call(fn, G, n, list(refined), list(rr), k, selection, mode, mine)
        want = critique.mix_groups(G, n, list(refined), list(rr), k, selection, mode, ref)
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
        expect(mine.random() == ref.random(),
               f"right result, but a different amount of randomness drawn from rng ({where}): draw "
               f"only through select_refinements, and only for groups that have candidates")


# ---------------------------------------------------------------------------------------------
# Exercise 5: per-token loss and aggregation (reference: loss.policy_loss, loss.aggregate)
# ---------------------------------------------------------------------------------------------
def _one_token(fn, logp, old, A, off, clip_eps, gamma):
    x = torch.tensor([[logp]], dtype=torch.float64, requires_grad=True)
    out = call(fn, x, torch.tensor([[old]], dtype=torch.float64),
               torch.tensor([A], dtype=torch.float64), torch.tensor([off]),
               clip_eps=clip_eps, gamma=gamma)
    out = tensor_result(out, "policy_loss", (1, 1), f"one token, logp={logp:.4f}")
    (g,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    return float(out.detach()), 0.0 if g is None else float(g)


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


def check_policy_loss(policy_loss, aggregate):
    """policy_loss(logp, old_logp, A, off_policy, clip_eps=, gamma=) and aggregate(per_token, mask,
    denom, seq_weights) against loss.policy_loss / loss.aggregate: values, gradients, padding,
    micro-batch invariance."""
    for p, p_old, A, off, clip_eps, gamma, what in SINGLE_TOKENS:
        args = (math.log(p), math.log(p_old), A, off, clip_eps, gamma)
        got, want = _one_token(policy_loss, *args), _one_token(L.policy_loss, *args)
        ok = all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(got, want))
        expect(ok, f"{what}.\n  logp=log({p}), old_logp=log({p_old}), A={A}, off_policy={off}, "
                   f"clip_eps={clip_eps}, gamma={gamma}\n  expected loss {want[0]:.6f}, "
                   f"d loss / d logp {want[1]:.6f}; got {got[0]:.6f}, {got[1]:.6f}")

    # random batches: values and gradients
    rng = torch.Generator().manual_seed(5)
    for trial in range(60):
        N, R = (int(torch.randint(lo, hi, (1,), generator=rng)) for lo, hi in ((1, 7), (1, 8)))
        p = torch.rand(N, R, generator=rng, dtype=torch.float64) * 0.999 + 1e-6
        p[0, 0] = 1e-6 if trial % 3 == 0 else 0.999999                     # near 0 and near 1
        logp = torch.log(p)
        old = logp + 0.6 * torch.randn(N, R, generator=rng, dtype=torch.float64)  # clips fire
        A = torch.randn(N, generator=rng, dtype=torch.float64)
        A[torch.rand(N, generator=rng) < 0.2] = 0.0
        off = torch.rand(N, generator=rng) < 0.4
        clip_eps, gamma = (None, 0.2)[trial % 2], (None, 0.1, 0.3)[trial % 3]
        where = (f"a random batch N={N}, R={R}, clip_eps={clip_eps}, gamma={gamma}, "
                 f"off_policy={off.tolist()}")
        x1, x2 = logp.clone().requires_grad_(True), logp.clone().requires_grad_(True)
        got = call(policy_loss, x1, old, A, off, clip_eps=clip_eps, gamma=gamma)
        got = tensor_result(got, "policy_loss", (N, R), where)
        want = L.policy_loss(x2, old, A, off, clip_eps=clip_eps, gamma=gamma)
        for rows, kind in ((~off, "initial-response (on-policy)"),
                           (off, "refinement (off-policy)")):
            expect(close(got[rows], want[rows]), f"{where}: wrong values on {kind} rows: expected "
                                                 f"{_fmt(want[rows])}, got {_fmt(got[rows])}")
        w = torch.rand(N, R, generator=rng, dtype=torch.float64)
        (g1,) = torch.autograd.grad((got * w).sum(), x1, allow_unused=True)
        (g2,) = torch.autograd.grad((want * w).sum(), x2)
        expect(close(torch.zeros_like(g2) if g1 is None else g1, g2),
               f"{where}: right values, wrong gradient w.r.t. logp (is something detached that "
               f"should not be, or the other way round?)")

    # aggregation: the constant denominator, weights, padding, micro-batch invariance
    for trial in range(60):
        N, R = (int(torch.randint(lo, hi, (1,), generator=rng)) for lo, hi in ((2, 9), (1, 8)))
        lengths = torch.randint(0, R + 1, (N,), generator=rng)
        mask = torch.arange(R)[None, :] < lengths[:, None]                   # padding after the end
        per_token = torch.randn(N, R, generator=rng, dtype=torch.float64)
        per_token[~mask] = 1000.0                                            # garbage where padded
        weights = None if trial % 2 else torch.rand(N, generator=rng, dtype=torch.float64) + 0.1
        denom = float(N * R * (1 + trial % 3))
        where = (f"aggregate on N={N}, R={R}, lengths={lengths.tolist()}, denom={denom}, "
                 f"seq_weights {'None' if weights is None else 'given'}")
        x1, x2 = per_token.clone().requires_grad_(True), per_token.clone().requires_grad_(True)
        got = call(aggregate, x1, mask, denom, weights)
        want = L.aggregate(x2, mask, denom, weights)
        expect(isinstance(got, torch.Tensor) and got.dim() == 0,
               f"aggregate must return a scalar tensor ({where})")
        (g1,) = torch.autograd.grad(got, x1, allow_unused=True)
        (g2,) = torch.autograd.grad(want, x2)
        g1 = torch.zeros_like(g2) if g1 is None else g1
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
        expect(close(got, want), f"{where}: expected {float(want.detach()):.6f} = "
                                 f"sum(mask * w * per_token) / denom, got {whole:.6f}")
        expect(close(g1, g2), f"{where}: right value, wrong gradient")

    # the two together, as step 7 uses them: padding gets no gradient through the whole loss
    N, R = 4, 5
    logp = torch.log(torch.rand(N, R, generator=rng, dtype=torch.float64) * 0.9 + 0.05)
    logp.requires_grad_(True)
    mask = torch.arange(R)[None, :] < torch.tensor([5, 3, 1, 0])[:, None]
    A = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    off = torch.tensor([False, True, False, True])
    per_tok = call(policy_loss, logp, logp.detach(), A, off, clip_eps=0.2, gamma=0.1)
    (g,) = torch.autograd.grad(call(aggregate, per_tok, mask, N * R), logp)
    expect(float(g[~mask].abs().sum()) == 0.0,
           "aggregate(policy_loss(...)) put gradient on padding tokens")


# ---------------------------------------------------------------------------------------------
# Exercise 6: the refinement prompt (reference: critique.refinement_prompt)
# ---------------------------------------------------------------------------------------------
def _diff(want: str, got: str) -> str:
    i = next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    lines = difflib.unified_diff(want.splitlines(), got.splitlines(), "expected", "yours",
                                 lineterm="", n=0)
    return (f"first difference at character {i}: expected {want[max(0, i - 20): i + 20]!r}, "
            f"yours {got[max(0, i - 20): i + 20]!r}\n" + "\n".join(lines))


def check_refinement_prompt(fn):
    """fn(question, previous, critique) against critique.refinement_prompt, character for
    character."""
    cases = [("What is 2 + 3?", "2 + 3 = 6. The answer is \\boxed{6}.",
              "The generated solution is incorrect, the ground truth is 5."),
             ("", "", ""),
             ("Solve $x^2 = 4$ for x > 0.\nGive x.", "Step 1: x = 2\n\nStep 2: done. \\boxed{2}",
              "The generated solution is correct, the ground truth is 2."),
             ("Café: 3 × 4 = ?", "It's 12 — \\boxed{12}", "Conclusion: wrong [END]"),
             ("What is {x} if x = 1?", "{previous} {critique} {question}",
              "a {critique} inside {}"),
             ("  leading and trailing spaces  ", "\ttab", "line\r\nbreaks")]
    for q, prev, c in cases:
        got = call(fn, q, prev, c)
        want = critique.refinement_prompt(q, prev, c)
        expect(isinstance(got, str), f"return a str, got {type(got).__name__}")
        hint = ""
        if got != want and "{" in q + prev + c:
            hint = ("\n(the inputs contain text that looks like a field, e.g. '{critique}': fill "
                    "each field once; chained str.replace substitutes inside already-filled text)")
        expect(got == want, f"for question={q!r}, previous={prev!r}, critique={c!r}:\n"
                            f"{_diff(want, got)}{hint}")


# ---------------------------------------------------------------------------------------------
# Exercise 7 (diagnose): a correct refinement in an all-wrong group
# ---------------------------------------------------------------------------------------------
def solution_07(initial: list[list[int]], refinement_rewards: dict[int, float]) -> dict:
    """The reference answers, computed with loss.group_advantages."""
    trained = [[float(r) for r in rs] + ([refinement_rewards[g]] if g in refinement_rewards else [])
               for g, rs in enumerate(initial)]
    rewards = torch.tensor([r for rs in trained for r in rs])
    ids = torch.tensor([g for g, rs in enumerate(trained) for _ in rs])
    A = L.group_advantages(rewards, ids)
    A_std = L.group_advantages(rewards, ids, scale_by_std=True)
    a0 = A[ids == 0].tolist()
    return {"rewards_group0": trained[0], "advantages_group0": a0,
            "positive_index": next(i for i, a in enumerate(a0) if a > 0),
            "advantages_group0_std": A_std[ids == 0].tolist(),
            "advantages_group2": A[ids == 2].tolist(),
            "sum_advantages_group0": float(sum(a0)),
            "zero_adv_frac_before": sum(len(set(rs)) == 1 for rs in initial) / len(initial),
            "zero_adv_frac_after": sum(len(set(rs)) == 1 for rs in trained) / len(trained)}


def check_07(answers_fn):
    """answers_fn() -> dict, against solution_07 on the exercise's data."""
    from exercises import ex07_all_wrong_group as ex
    want = solution_07(ex.INITIAL_REWARDS, ex.REFINEMENT_REWARDS)
    got = call(answers_fn)
    expect(isinstance(got, dict), f"answers() must return a dict, got {type(got).__name__}")
    numbers(got, "rewards_group0", want["rewards_group0"])
    numbers(got, "advantages_group0", want["advantages_group0"])
    expect(got.get("positive_index") == want["positive_index"],
           f"answers()['positive_index'] = {got.get('positive_index')!r} is wrong")
    numbers(got, "advantages_group0_std", want["advantages_group0_std"])
    numbers(got, "advantages_group2", want["advantages_group2"])
    for key in ("sum_advantages_group0", "zero_adv_frac_before", "zero_adv_frac_after"):
        number(got, key, want[key])


# ---------------------------------------------------------------------------------------------
# Exercise 8 (diagnose): shaping and entropy
# ---------------------------------------------------------------------------------------------
def solution_08(logits: torch.Tensor, high: int, low: int) -> dict:
    """The reference answers, computed with loss.policy_loss, loss.shaping and loss.entropy."""
    def grads(token, off, gamma):
        z = logits.detach().clone().double().requires_grad_(True)
        logp = torch.log_softmax(z, -1)[token]
        lp = logp.view(1, 1)
        if gamma == "bug":  # f(p) applied to an on-policy token
            loss = -L.shaping(torch.exp(lp), 0.1).sum()
        else:
            loss = L.policy_loss(lp, lp.detach(), torch.tensor([1.0], dtype=torch.float64),
                                 torch.tensor([off]), clip_eps=0.2, gamma=gamma).sum()
        g_logp, g_z = torch.autograd.grad(loss, (logp, z))
        return float(g_logp), g_z

    z = logits.detach().clone().double().requires_grad_(True)
    (g_H,) = torch.autograd.grad(L.entropy(z.view(1, 1, -1)).sum(), z)
    grad_logp, entropy_change = {}, {}
    for tok_name, token in (("low", low), ("high", high)):
        for shape_name, gamma in (("shaped", 0.1), ("unshaped", None)):
            key = f"{tok_name}_{shape_name}"
            grad_logp[key], g_z = grads(token, True, gamma)
            entropy_change[key] = float(-(g_H * g_z).sum())
    return {"grad_logp": grad_logp, "entropy_change": entropy_change,
            "most_entropy_raising": max(entropy_change, key=entropy_change.get),
            "on_policy_grad_logp": grads(high, False, 0.1)[0],
            "on_policy_grad_logp_if_shaped": grads(high, False, "bug")[0]}


def check_08(answers_fn):
    """answers_fn() -> dict, against solution_08 on the exercise's data."""
    from exercises import ex08_shaping_entropy as ex
    want = solution_08(ex.LOGITS, ex.HIGH, ex.LOW)
    got = call(answers_fn)
    expect(isinstance(got, dict), f"answers() must return a dict, got {type(got).__name__}")
    for group in ("grad_logp", "entropy_change"):
        expect(isinstance(got.get(group), dict),
               f"answers()[{group!r}] must be a dict with keys {sorted(want[group])}")
        for key, value in want[group].items():
            number(got[group], key, value, label=f"answers()[{group!r}]")
    expect(got.get("most_entropy_raising") == want["most_entropy_raising"],
           f"answers()['most_entropy_raising'] = {got.get('most_entropy_raising')!r} is wrong")
    number(got, "on_policy_grad_logp", want["on_policy_grad_logp"])
    number(got, "on_policy_grad_logp_if_shaped", want["on_policy_grad_logp_if_shaped"])


# ---------------------------------------------------------------------------------------------
# Exercise 9 (diagnose, on your own run): the refine_ft collapse
# ---------------------------------------------------------------------------------------------
def read_run(run_dir) -> dict:
    """A train.py run's config, per-step metrics, evaluations ({step: accuracy}) and the answers
    of its last evaluation on the first held-out set."""
    import json
    from pathlib import Path
    run = Path(run_dir)
    expect((run / "config.json").exists() and (run / "metrics.jsonl").exists(),
           f"{run} is not a train.py run directory (no config.json / metrics.jsonl): run the "
           f"exercise's commands first")
    config = json.loads((run / "config.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    evals = {m["step"]: m["eval/accuracy"] for m in metrics if "eval/accuracy" in m}
    expect(len(evals) >= 2 and max(evals) == config["max_steps"],
           f"{run} has no final evaluation (evaluated steps {sorted(evals)}): let the run finish")
    first_set = Path(config["eval_data"].split(",")[0]).stem
    final = [json.loads(line) for line in (run / f"eval-{max(evals)}.jsonl").read_text().splitlines()
             if line]
    return {"config": config, "steps": [m for m in metrics if "grad_norm" in m], "evals": evals,
            "answers": [r["response"] for r in final if r.get("set", first_set) == first_set]}


def share_containing(texts: list[str], phrase: str) -> float:
    """The share of texts that contain phrase (case and runs of white space ignored)."""
    def norm(text):
        return " ".join(text.split()).lower()
    return sum(norm(phrase) in norm(t) for t in texts) / max(len(texts), 1)


def solution_09(run_dir: str, reference_dir: str) -> dict:
    """The reference answers, read from the two runs' files. The phrase: the word 4-gram in the
    most refine_ft final answers among those in under a tenth of Critique-GRPO's."""
    run, ref = read_run(run_dir), read_run(reference_dir)
    counts: dict[str, int] = {}
    for text in run["answers"]:
        words = text.split()
        for g in {" ".join(words[i: i + 4]) for i in range(len(words) - 3)}:
            counts[g] = counts.get(g, 0) + 1
    phrases = [g for g in sorted(counts, key=lambda g: (-counts[g], g))
               if len(g) >= 10 and share_containing(run["answers"], g) >= 0.5
               and share_containing(ref["answers"], g) < 0.1]
    return {"run_dir": str(run_dir), "reference_dir": str(reference_dir),
            "accuracy": {"step0": run["evals"][0], "final": run["evals"][max(run["evals"])]},
            "max_grad_norm": {"refine_ft": max(m["grad_norm"] for m in run["steps"]),
                              "critique_grpo": max(m["grad_norm"] for m in ref["steps"])},
            "examples_per_step": [m.get("baseline/examples", 0) for m in run["steps"]],
            "phrase": phrases[0] if phrases else "", "why": "B"}


def check_09(answers_fn):
    """answers_fn() -> dict, checked against the runs it names: they are the right kinds of run,
    the refine_ft run collapsed, and the numbers, phrase and diagnosis agree with their files."""
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
    want = solution_09(got["run_dir"], got["reference_dir"])
    expect(want["accuracy"]["final"] < want["accuracy"]["step0"],
           f"your refine_ft run did not collapse (held-out accuracy {want['accuracy']['step0']:.3f}"
           f" -> {want['accuracy']['final']:.3f}): look at its answers anyway, and try another "
           f"--seed for both runs")
    expect(want["phrase"], f"no run of 4 words is in at least half of {got['run_dir']}'s final "
           "answers and in under a tenth of the reference's: this collapse has no phrase to find; "
           "try another --seed for both runs")
    for group in ("accuracy", "max_grad_norm"):
        expect(isinstance(got.get(group), dict),
               f"answers()[{group!r}] must be a dict with keys {sorted(want[group])}")
        for key, value in want[group].items():
            number(got[group], key, value, label=f"answers()[{group!r}]")
    numbers(got, "examples_per_step", want["examples_per_step"])
    phrase = got.get("phrase")
    expect(isinstance(phrase, str) and len(phrase.strip()) >= 10,
           "answers()['phrase'] must be words of at least 10 characters")
    in_run, in_ref = share_containing(run["answers"], phrase), share_containing(ref["answers"], phrase)
    expect(in_run >= 0.5, f"{phrase!r} is in {in_run:.0%} of refine_ft's final answers, not at "
           f"least half: read {got['run_dir']}/eval-{max(run['evals'])}.jsonl")
    expect(in_ref < 0.1, f"{phrase!r} is also in {in_ref:.0%} of Critique-GRPO's final answers: "
           f"find what refine_ft says that a plain answer does not")
    expect(got.get("why") == want["why"], f"answers()['why'] = {got.get('why')!r}: not what these "
           f"numbers support (compare --baseline sft, which trains by NLL at the same lr and "
           f"does not collapse)")
