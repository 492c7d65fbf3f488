"""A run's setup, made once before the loop (`start`), and what the loop asks of it after each step
(`Run`): the processes, the output directory and --resume, the data, the policy (LoRA or full) and
its optimizer, the refiner, the critic (probed before training), the answer checker, and the
state a Ctrl-C checkpoint holds."""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import data
import rollout
from support import batching, models
from support.checker import AnswerChecker
from support.checkpoints import latest_checkpoint, save_last
from support.cli import validate
from support.critics import APICritic, HFCritic
from support.processes import PolicyLogprobs, Processes, rng_state

# fields that may change between a run and its --resume without changing what is trained
RESUMABLE_CHANGES = {"resume", "overwrite", "allow_config_change", "max_steps", "eval_every",
                     "save_every", "samples_every", "eval_limit", "gen_batch_size",
                     "micro_batch_tokens", "logprob_chunk", "gradient_checkpointing", "merge_lora",
                     "static_cache", "report_to", "allow_critic_failures", "eval_cache"}



def start(cfg):
    """The processes (one, or those `accelerate launch` started), the checked config, and the Run:
    everything the loop uses. Returns (cfg, procs, run); cfg may differ from the one given (under
    ZeRO-3 the LM head runs in one chunk)."""
    dtype, why = models.choose_dtype(cfg.dtype)
    procs = Processes(output_dir=cfg.output_dir, report_to=cfg.report_to, dtype=dtype,
                      max_grad_norm=cfg.max_grad_norm)
    # ZeRO-3 gathers the LM head at each call: one call per forward on every process
    if procs.zero3:
        cfg = dataclasses.replace(cfg, logprob_chunk=2**31)
    if procs.split and cfg.load_in_4bit:
        raise SystemExit("error: --load_in_4bit runs under DDP (accelerate launch --multi_gpu), "
                         "not with split weights")
    validate(cfg, procs.world)
    return cfg, procs, setup(cfg, procs, dtype, why)


def setup(cfg, procs: Processes, dtype: torch.dtype, why: str) -> Run:
    """Output directory, data, policy (LoRA or full), optimizer, refiner, critic, checker; resumes
    from the newest checkpoint with --resume."""
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not (cfg.resume or cfg.overwrite):
        raise SystemExit(f"error: {out} already holds a run; pass --resume to continue it or "
                         "--overwrite to replace it")
    procs.barrier()  # every process has looked before the main one deletes
    if cfg.overwrite and not cfg.resume and procs.is_main:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.resume and (out / "config.json").exists() and not cfg.allow_config_change:
        saved = json.loads((out / "config.json").read_text())
        # a field the saved run predates had its default then: compare against that
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
        differ = [f"--{k} {saved.get(k, defaults[k])!r} -> {v!r}"
                  for k, v in dataclasses.asdict(cfg).items()
                  if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v]
        if differ:
            raise SystemExit("error: --resume with a different config: " + ", ".join(differ) +
                             "\n       pass the same flags, or --allow_config_change to resume "
                             "anyway")
    procs.barrier()  # every process has read config.json before the main one rewrites it
    machine = {"device": models.describe_device(procs.device.type),
               "dtype": str(dtype).removeprefix("torch."), "dtype_reason": why,
               "threads": torch.get_num_threads(), "processes": procs.world,
               "torch": torch.__version__}
    procs.log(f"device {machine['device']} | dtype {why}" +
              (f" | {procs.world} processes ({procs.engine})" if procs.world > 1 else ""))
    if procs.is_main:
        config = {**dataclasses.asdict(cfg), "resolved": machine}
        (out / "config.json").write_text(json.dumps(config, indent=2))
    procs.init_trackers(dataclasses.asdict(cfg), out.name)
    # the same initial weights (LoRA's random A) on every process: ZeRO-3 and FSDP keep their slices
    seed_all(cfg.seed)

    load = dict(question_key=cfg.question_key, answer_key=cfg.answer_key,
                solution_key=cfg.solution_key)
    train_rows = data.load_rows(cfg.train_data, **load)
    eval_sets = {Path(src).stem: data.load_rows(src, **load)[: cfg.eval_limit or None]
                 for src in cfg.eval_data.split(",")}
    model_kw = dict(dtype=cfg.dtype, device=procs.device, trust_remote_code=cfg.trust_remote_code)
    with procs.main_first():  # the embedded model is converted once, by the main process
        policy, tok = models.load_model_and_tokenizer(cfg.model, load_in_4bit=cfg.load_in_4bit,
                                                       **model_kw)
    # a question that leaves no room for the response cannot be trained on
    room = cfg.max_context - cfg.max_new_tokens
    fits = [r for r in train_rows if len(rollout.question_ids(tok, r["question"])) <= room]
    if len(fits) < len(train_rows):
        procs.log(f"warning: skipped {len(train_rows) - len(fits)} training questions longer than "
                  "--max_context minus --max_new_tokens")
    if not fits:
        raise SystemExit("error: no training question fits --max_context; raise it or lower "
                         "--max_new_tokens")
    needs_solution = {"sft": "--baseline sft"}.get(cfg.baseline) or \
        ("--critique_type expert" if cfg.critique_type == "expert" else None)
    if needs_solution and not all(r.get("solution") for r in fits):
        raise SystemExit(f"error: {needs_solution} needs a reference solution for every training "
                         "question (name its column with --solution_key)")

    compute_kl = cfg.kl_coef > 0 or cfg.log_kl  # in the loss, or only logged (--log_kl)
    ref_model = None
    if cfg.gradient_checkpointing:
        models.enable_checkpointing(policy)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model
        policy = get_peft_model(policy, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
            task_type="CAUSAL_LM"))
    elif compute_kl:  # full fine-tuning needs its own frozen copy as the KL reference
        ref_model = models.load_model_and_tokenizer(cfg.model, **model_kw)[0].eval()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    # Step 7's log-probs run through the module procs prepares (DDP, ZeRO or FSDP on several
    # processes); sampling, evaluation and checkpoints use `policy`, the same weights
    filler = batching.select(batching.pack([rollout.question_ids(tok, fits[0]["question"])],
                                         [[tok.eos_token_id]], tok.pad_token_id), [0])
    model, optimizer = procs.prepare(PolicyLogprobs(policy), optimizer, filler)
    # each process samples its own groups with its own draws; process 0 draws as one process does
    if procs.rank:
        seed_all(cfg.seed + procs.rank)

    # split weights gather the model anew for each generation: no static cache by default
    static = procs.device.type == "cuda" and not procs.split
    gen_kw = dict(batch_size=cfg.gen_batch_size, merge_lora=cfg.merge_lora,
                  static_cache=static if cfg.static_cache is None else cfg.static_cache)
    refiner, rtok = policy, tok
    if cfg.refiner_model:  # weak-to-strong: its text is re-tokenized for the policy in step 4
        refiner, rtok = models.load_model_and_tokenizer(cfg.refiner_model, **model_kw)
        refiner.eval()
    critic = None
    critic_kw = dict(max_new_tokens=cfg.critic_max_new_tokens, temperature=cfg.critic_temperature,
                     top_p=cfg.critic_top_p)
    if cfg.critique_type == "self":
        critic = HFCritic(policy, tok, **critic_kw, **gen_kw)
    elif cfg.critique_type == "cot" and cfg.critic_base_url:
        critic = APICritic(cfg.critic_base_url, cfg.critic_api_model,
                           api_key_env=cfg.critic_api_key_env, max_tokens=cfg.critic_max_new_tokens,
                           temperature=cfg.critic_temperature, top_p=cfg.critic_top_p)
    elif cfg.critique_type == "cot":
        cm, ctok = models.load_model_and_tokenizer(cfg.critic_model, **model_kw)
        critic = HFCritic(cm.eval(), ctok, **critic_kw, **gen_kw)
    if critic is not None:  # one tiny request: an endpoint that cannot answer stops the run here
        critic.probe()

    run = Run(
        procs=procs, cfg=cfg, out=out, policy=policy, tok=tok, model=model, optimizer=optimizer,
        ref_model=ref_model,
        refiner=refiner, rtok=rtok, critic=critic, checker=AnswerChecker(), gen_kw=gen_kw,
        eos=rollout.eos_ids(tok, policy),
        train_rows=fits, eval_sets=eval_sets, compute_kl=compute_kl, start=0, accuracy={},
        select_rng=random.Random(cfg.seed + procs.rank), critic_seen=Counter())
    # the main process's choice of checkpoint, on every process
    ckpt = procs.broadcast(latest_checkpoint(out)) if cfg.resume else None
    if ckpt:
        run.start = procs.load(ckpt, policy, run.select_rng, cfg.lora)
        procs.log(f"resumed from {ckpt} at step {run.start}")
        if procs.is_main:  # what a killed run wrote after its checkpoint is written again
            for name in ("metrics.jsonl", "samples.jsonl"):
                keep_until_step(out / name, run.start)
    # a Ctrl-C checkpoint holds the last finished step and every process's RNG after it
    run.finished = {"step": run.start, "rngs": procs.gather([rng_state(run.select_rng)])}
    procs.catch_stop(lambda: save_last(procs, run))
    n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in procs.trainable)
    procs.log(f"policy {cfg.model}: {n_trainable:,} trainable parameters; {len(fits)} train "
              "questions; held-out " + " + ".join(f"{len(r)} {k}" for k, r in eval_sets.items()) +
              f"; critique_type={cfg.critique_type}; writing to {out}/")
    return run


def keep_until_step(path: Path, step: int):
    if path.exists():
        lines = [x for x in path.read_text().splitlines(True) if json.loads(x)["step"] <= step]
        path.write_text("".join(lines))


def seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Run(SimpleNamespace):
    """Everything the loop uses (policy, tok, refiner, rtok, critic, checker, eos, gen_kw, ...), and
    what it asks of the run between steps."""

    def critic_check(self, metrics: dict, step: int):
        """A run is the arm its name says: a step whose critiques all failed to arrive (the critic
        answered none of its requests) stops the run, unless --allow_critic_failures."""
        if metrics["critic/transport_failures"] and not metrics["critic/calls"] and \
                not self.cfg.allow_critic_failures:
            raise SystemExit(
                f"error: step {step}: no critique arrived from the critic "
                f"({getattr(self.critic, 'last_error', '')}); stopping rather than training on "
                "ground-truth critiques under the name of this arm. Fix the critic and --resume "
                "(from the last checkpoint), or pass --allow_critic_failures")

    def finish_step(self, step: int):
        """`step` is trained and recorded: a Ctrl-C checkpoint from now on holds it, with every
        process's RNG after it."""
        self.finished = {"step": step, "rngs": self.procs.gather([rng_state(self.select_rng)])}

    def close(self, started: float) -> dict:
        """End the checker's workers and the trackers; print the held-out accuracy before -> after.
        Returns the headline (first) held-out set's accuracy per evaluated step."""
        self.checker.close()
        self.procs.end()
        if len(self.accuracy) >= 2:
            first, last = min(self.accuracy), max(self.accuracy)
            self.procs.log("held-out accuracy: " + " | ".join(
                f"{name} step {first} {a:.4f} -> step {last} {self.accuracy[last][name]:.4f}"
                for name, a in self.accuracy[first].items()) +
                f" | {time.perf_counter() - started:.0f}s wall")
        return {s: next(iter(a.values())) for s, a in self.accuracy.items()}
