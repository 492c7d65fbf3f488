"""What a training run writes after each step: metrics.jsonl (ratios of sums over all processes),
the console line, and samples.jsonl (every answer, critique and refinement). It only records."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import rollout


def write_jsonl(path: Path, records: list[dict], mode: str = "a"):
    with open(path, mode) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def record_step(cfg, procs, run, step: int, t: dict, sums: dict, health: Counter,
                *, rows, n_sampled, texts, rewards, to_refine, critiques, fallbacks, n_truncated,
                refinements, refine_texts, refine_rewards, responses, seqs, trained):
    """After each step: its sums over all processes (times: the slowest's) as metrics.jsonl ratios,
    the console line, and samples.jsonl. Returns the step's metrics."""
    wrong = [j for j, i in enumerate(to_refine) if rewards[i] == 0]
    groups = Counter(s.group for s in seqs)
    rewards_of = {g: {s.reward for s in seqs if s.group == g} for g in groups}
    critic_now = Counter({f"critic/{k}": getattr(run.critic, k, 0)
                          for k in ("calls", "tokens_in", "tokens_out", "transport_failures")})
    phases = ["start", "sample", "verify", "critique", "refine", "update"]
    tot = Counter(procs.sum({
        "reward": sum(rewards), "samples": len(rewards), "groups": len(rows),
        "zero_adv_after": sum(len(r) == 1 for r in rewards_of.values()),
        "zero_adv_before": sum(len({rewards[i] for i in range(g * n_sampled,
                                                               (g + 1) * n_sampled)}) == 1
                               for g in range(len(rows))),
        "refine_reward": sum(refine_rewards), "refined": len(to_refine),
        "wrong_refined": len(wrong),
        "fixed": sum(refine_rewards[j] for j in wrong),
        "refine/groups": len({s.group for s in seqs if s.off_policy}),
        "refine/truncated": n_truncated, "critic/fallbacks": fallbacks,
        "verify/timeouts": run.checker.num_timeouts,
        **{k: critic_now[k] - run.critic_seen[k] for k in critic_now},
        "response_tokens": sum(len(r) for r in responses),
        "refine_tokens": sum(len(r) for r in refinements),
        "examples": len(trained), "example_tokens": sum(len(s.response) for s in trained),
        **{k: sums[k] for k in ("loss", "entropy", "kl")}, **health,
        **{f"time/{b}": t[b] - t[a] for a, b in zip(phases, phases[1:])},
    }))  # a Counter: no health sums read as 0
    run.critic_seen = critic_now
    m = {"step": step, **step_metrics(tot, sums, cfg, run.compute_kl)}
    if procs.is_main:
        write_jsonl(run.out / "metrics.jsonl", [m])
    procs.track(m, step)
    if cfg.baseline != "none" and not tot["examples"]:
        procs.log(f"step {step}: --baseline {cfg.baseline} has nothing to train on; "
                  "no optimizer step")
    refined = not math.isnan(m["refine/reward"])  # nan: no group needed a refinement this step
    procs.log(f"step {step:4d} | reward {m['train/reward']:.3f} | " +
              (f"refine {m['refine/reward']:.3f} fix {m['refine/fix_rate']:.3f}" if refined
               else f"{'no refinement':22s}") +
              f" | zero_adv {m['train/zero_adv_frac_before']:.2f}->"
              f"{m['train/zero_adv_frac_after']:.2f} | loss {m['loss']:+.4f}"
              f" | gnorm {m['grad_norm']:.3f} | ent {m['train/entropy']:.3f}"
              f" | len {m['train/response_len']:.0f} | "
              f"{sum(v for k, v in m.items() if k.startswith('time/')):.1f}s" +
              (f" | critic failed {m['critic/transport_failures']} requests"
               if m["critic/transport_failures"] else ""))
    if cfg.samples_every and step % cfg.samples_every == 0:
        records = [{"step": step, "question": rows[i // n_sampled]["question"],
                    "response": texts[i],
                    "ended": rollout.ended(responses[i], run.eos), "reward": rewards[i]}
                   for i in range(len(texts))]
        for j, i in enumerate(to_refine):
            records[i].update(critique=critiques[j], refinement=refine_texts[j],
                              refinement_ended=rollout.ended(refinements[j], run.eos),
                              refinement_reward=refine_rewards[j])
        records = procs.gather(records)  # every process's groups, in step order
        if procs.is_main:
            write_jsonl(run.out / "samples.jsonl", records)
    return m


def step_metrics(tot: Counter, sums: dict, cfg, compute_kl: bool) -> dict:
    """A step's metrics.jsonl values from its sums over all processes (`tot`) and update()'s
    grad_norm and skipped steps: ratios of sums, so they do not depend on how groups were split."""
    def ratio(a, b):
        return tot[a] / tot[b] if tot[b] else float("nan")
    U = cfg.updates_per_batch
    # a baseline step with nothing to train made no update: its update terms are nan, not 0
    updated = cfg.baseline == "none" or tot["examples"] > 0
    nan = float("nan")
    counts = ("refine/groups", "refine/truncated", "critic/fallbacks", "verify/timeouts",
              "critic/calls", "critic/tokens_in", "critic/tokens_out", "critic/transport_failures")
    return {
        "train/reward": ratio("reward", "samples"),
        "train/zero_adv_frac_before": ratio("zero_adv_before", "groups"),
        "train/zero_adv_frac_after": ratio("zero_adv_after", "groups"),
        "refine/reward": ratio("refine_reward", "refined"),
        "refine/fix_rate": ratio("fixed", "wrong_refined"),
        "refine/count": int(tot["refined"]),
        **{key: int(tot[key]) for key in counts},
        **{f"offpolicy/{name}": ratio(key, "off_tokens") for name, key in
           (("p", "off_p"), ("f_p", "off_f"), ("entropy", "off_entropy"))},
        "train/entropy_initial": tot["on_entropy"] / max(tot["on_tokens"], 1) if updated else nan,
        "train/clip_frac": tot["on_clipped"] / max(tot["on_tokens"], 1) if updated else nan,
        "train/entropy": tot["entropy"] / U if updated else nan,
        "train/response_len": ratio("response_tokens", "samples"),
        "loss": tot["loss"] / U if updated else nan,
        "grad_norm": sums["grad_norm"] if updated else nan,
        "kl": tot["kl"] / U if compute_kl else float("nan"), "skipped_steps": sums["skipped"],
        **({"baseline/examples": int(tot["examples"]),
            "baseline/mean_len": ratio("example_tokens", "examples") if tot["examples"] else 0.0}
           if cfg.baseline != "none" else {}),
        **{k: v for k, v in tot.items() if k.startswith("time/")},
        "tokens_per_s": (tot["response_tokens"] + tot["refine_tokens"]) /
        max(tot["time/sample"] + tot["time/refine"], 1e-9),
    }
