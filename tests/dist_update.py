"""One update (train.update, steps 7-8) on a fixed hand-made rollout of 4 groups, by one process
(`python tests/dist_update.py OUT CASES`) or by each process of `accelerate launch --num_processes N
tests/dist_update.py OUT CASES` (each taking its whole groups, as train.py does; `--config_file configs/zero3.yaml`
and the others split the weights too). tests/test_processes.py checks that all give the same loss, gradients
(DDP: each process holds them whole) and weight update.

Not a test file itself: the multi-process side has to be a script a launcher starts.
"""
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import loss as L  # noqa: E402
import rollout  # noqa: E402
import train  # noqa: E402
from support import batching, processes  # noqa: E402
from conftest import make_model, make_tokenizer  # noqa: E402

B, N_PER = 4, 4  # groups, sequences per group (the last one a refinement)


def hand_made_rollout(tok, drop_groups=()):
    """(group, prompt, response, reward, off_policy) rows, the same in every process: seeded, not sampled."""
    g = torch.Generator().manual_seed(0)
    prompts = [rollout.question_ids(tok, f"What is {a} + {a + 1}?") for a in range(B)]
    rows = []
    for grp in range(B):
        for i in range(N_PER):
            length = int(torch.randint(1, 9 + 3 * grp, (1,), generator=g))  # later groups longer: more passes
            resp = torch.randint(3, len(tok), (length,), generator=g).tolist() + [tok.eos_token_id]
            reward = float(torch.rand(1, generator=g) < 0.5)
            if grp not in drop_groups:
                rows.append((grp, prompts[grp], resp, reward, i == N_PER - 1))
    return rows


def one_update(procs, aggregation="constant", baseline="none", updates=1, drop_groups=(), kl_coef=0.0):
    """This process's share of one update; returns the loss summed over processes, the reduced gradients and
    the weights after the optimizer step."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    tok = make_tokenizer()
    cfg = train.Config(aggregation=aggregation, baseline=baseline, updates_per_batch=updates, max_new_tokens=12,
                       micro_batch_tokens=48, lr=1e-2, dtype="float32", kl_coef=kl_coef)
    policy = get_peft_model(make_model(tok, init_std=0.5), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(1)
    for name, p in policy.named_parameters():  # LoRA B starts at zero, which leaves A without a gradient
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.1
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    # SGD: the update is -lr x the clipped gradient, comparable
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    prompt = rollout.question_ids(tok, "filler")
    filler = batching.select(batching.pack([prompt], [[tok.eos_token_id]], tok.pad_token_id), [0])
    model, optimizer = procs.prepare(processes.PolicyLogprobs(policy), optimizer, filler)

    per = B // procs.world
    mine = [r for r in hand_made_rollout(tok, drop_groups) if procs.rank * per <= r[0] < (procs.rank + 1) * per]
    seqs = [train.Sequence(prompt, resp, reward, grp - procs.rank * per, off)
            for grp, prompt, resp, reward, off in mine]
    if seqs:
        advantages = L.group_advantages(torch.tensor([s.reward for s in seqs]), torch.tensor([s.group for s in seqs]))
        for s, a, w in zip(seqs, advantages.tolist(), train.sequence_weights(seqs, aggregation, cfg.max_new_tokens)):
            s.advantage, s.weight = a, w
    run = SimpleNamespace(tok=tok, policy=policy, model=model, optimizer=optimizer, ref_model=None,
                          compute_kl=kl_coef > 0)
    sums, health = train.update(cfg, procs, run, seqs, per)
    total = procs.sum({"loss": sums["loss"], "entropy": sums["entropy"], "kl": sums["kl"], **health})
    after = procs.accelerator.get_state_dict(model)  # whole on the main process, whatever the engine
    named = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    return {"loss": total["loss"], "entropy": total["entropy"], "kl": total["kl"], "on_tokens": total.get("on_tokens", 0.0),
            "grad_norm": sums["grad_norm"],
            "grads": {} if procs.split else {n: p.grad.detach().clone() for n, p in named},
            "update": {n: after[f"model.{n}"].float() - b for n, b in before.items()} if after else None}


if __name__ == "__main__":
    from support.processes import Processes
    procs = Processes(output_dir=str(Path(sys.argv[1]).parent))
    results = [one_update(procs, **case) for case in json.loads(sys.argv[2])]
    if procs.is_main:
        torch.save(results, sys.argv[1])
    procs.end()  # destroys the process group: DeepSpeed's CPU processes may abort at exit otherwise
