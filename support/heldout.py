"""Held-out evaluation inside a training run: greedy answers to every held-out question, scored by
the answer checker, at step 0, every eval_every steps and at the end; the untrained model's
(step 0) evaluation is cached on disk, keyed by everything that determines it."""
from __future__ import annotations

import hashlib
import json
import os
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

import rollout
from evaluate import heldout_answers
from support import generation, models
from support.recording import write_jsonl

# the code an evaluation runs: a change to any of it starts a new step-0 cache
ROOT = Path(__file__).resolve().parents[1]
CODE = ("rollout.py", "evaluate.py", "support/generation.py", "support/checker.py",
        "support/models.py")


def evaluate_when_due(cfg, procs, run, step: int):
    """Held-out accuracy when due (at step 0, every eval_every steps and at the end; greedy; each
    process answers every world-th question), into eval-<step>.jsonl and metrics.jsonl."""
    due = cfg.eval_every and step % cfg.eval_every == 0
    if step == 0 or step == cfg.max_steps or due:
        t_eval = time.perf_counter()
        rows = [dict(r, set=name) for name, rows in run.eval_sets.items() for r in rows]
        cache = step0_cache(cfg, run, rows) if step == 0 and cfg.eval_cache and procs.world == 1 \
            else None
        if cache and cache.exists():
            records = [json.loads(x) for x in cache.read_text().splitlines()]
            procs.log(f"step    0 | reusing the untrained model's evaluation from {cache} "
                      "(--no-eval_cache recomputes it)")
        else:
            with procs.whole_weights("eval"):
                mine = heldout_answers(run.policy, run.tok, procs.shard(rows), run.checker,
                                       max_new_tokens=cfg.max_new_tokens, **run.gen_kw)
            records = procs.unshard(mine)
            if cache:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".{os.getpid()}.tmp")
                write_jsonl(tmp, records, mode="w")
                tmp.rename(cache)
        t_eval = time.perf_counter() - t_eval
        for rec, row in zip(records, rows):
            rec["set"] = row["set"]
        accuracy = run.accuracy[step] = {
            name: float(np.mean([r["correct"] for r in records if r["set"] == name]))
            for name in run.eval_sets}
        sizes = " + ".join(str(len(r)) for r in run.eval_sets.values())
        scores = " | ".join(f"{name} {a:.4f}" for name, a in accuracy.items())
        procs.log(f"step {step:4d} | eval {scores} ({sizes} held-out questions, greedy) | "
                  f"{t_eval:.1f}s")
        metrics = {"step": step, "eval/accuracy": next(iter(accuracy.values())),
                   **{f"eval/{name}/accuracy": a for name, a in accuracy.items()},
                   "time/eval": t_eval}
        if procs.is_main:
            write_jsonl(run.out / f"eval-{step}.jsonl", records, mode="w")
            write_jsonl(run.out / "metrics.jsonl", [metrics])
        procs.track(metrics, step)


def step0_cache(cfg, run, rows: list[dict]) -> Path:
    """The file of a step-0 evaluation, named by everything that determines it: the base weights
    (LoRA starts as the identity, B = 0, so every seed and rank share it), the held-out prompts and
    answers, decoding, batching, dtype, device, CPU kernels, library versions and our code."""
    key = hashlib.sha256()
    for name, p in run.policy.named_parameters():
        if "lora_" not in name:
            flat = p.detach().float().reshape(-1)
            key.update(repr((name, tuple(p.shape), str(p.dtype), flat.sum().item(),
                             flat[:64].tolist(), flat[-64:].tolist())).encode())
    prompts = [rollout.question_ids(run.tok, r["question"]) for r in rows]
    batch = generation.generate_batch_size(run.policy, prompts, cfg.max_new_tokens,
                                           cfg.gen_batch_size)
    key.update(repr((prompts, [(r["answer"], r["set"]) for r in rows], cfg.max_new_tokens, cfg.lora,
                     cfg.merge_lora, run.gen_kw["static_cache"], min(batch, len(prompts)),
                     models.describe_device(str(next(run.policy.parameters()).device.type)),
                     torch.backends.cpu.get_cpu_capability(),
                     [version(m) for m in ("torch", "transformers", "peft", "math-verify")],
                     [(ROOT / f).read_text() for f in CODE])).encode())
    where = os.environ.get("CRITIQUE_GRPO_EVAL_CACHE") or models.cache_root() / "step0_eval"
    return Path(where) / f"{key.hexdigest()[:32]}.jsonl"
