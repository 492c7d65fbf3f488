"""One update (train.optimise, steps 7-8) on a fixed hand-made rollout of 4 groups, by one process
(`python tests/dist_update.py OUT CASES`) or by each process of `accelerate launch --num_processes N
tests/dist_update.py OUT CASES` (each taking its whole groups, as train.py does; `--config_file configs/zero3.yaml`
and the others split the weights too). tests/test_processes.py checks that all give the same loss, gradients
(DDP: each process holds them whole) and weight update.

Not a test file itself: the multi-process side has to be a script a launcher starts.
"""
import json
import sys
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import loss as L  # noqa: E402
import rollout  # noqa: E402
import train  # noqa: E402
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


def one_update(accelerator, aggregation="constant", baseline="none", updates=1, drop_groups=(), kl_coef=0.0):
    """This process's share of one update; returns the loss summed over processes, the reduced gradients and
    the weights after the optimizer step."""
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
    trainable = [p for p in policy.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(trainable, lr=cfg.lr)  # the update is -lr x the clipped gradient: comparable
    model, optimizer = accelerator.prepare(rollout.PolicyLogprobs(policy), optimizer, device_placement=None
                                           if train.deepspeed(accelerator) else [False, False])
    trainable = [p for p in policy.parameters() if p.requires_grad]  # FSDP2 has replaced them

    rank, world = accelerator.process_index, accelerator.num_processes
    per = B // world
    mine = [r for r in hand_made_rollout(tok, drop_groups) if rank * per <= r[0] < (rank + 1) * per]
    seq_group = [r[0] - rank * per for r in mine]
    off_policy = torch.tensor([r[4] for r in mine], dtype=torch.bool)
    advantages = L.group_advantages(torch.tensor([r[3] for r in mine]), torch.tensor(seq_group)) if mine \
        else torch.zeros(0)
    counts = Counter(zip(seq_group, off_policy.tolist()))
    seq_weights = torch.tensor([1.0 / counts[(g_, o)] for g_, o in zip(seq_group, off_policy.tolist())]) \
        if aggregation == "paper" else torch.ones(len(mine))
    batch = rollout.pack([r[1] for r in mine], [r[2] for r in mine], tok.pad_token_id) if mine else None
    prompt = rollout.question_ids(tok, "filler")
    filler = rollout.select(rollout.pack([prompt], [[tok.eos_token_id]], tok.pad_token_id), [0], accelerator.device)
    sharded = train.split_weights(accelerator)
    sums, health = train.optimise(cfg, accelerator, model, policy, None, optimizer, trainable, batch, filler,
                                  seq_group=seq_group, advantages=advantages, off_policy=off_policy,
                                  seq_weights=seq_weights, n_groups=per, compute_kl=kl_coef > 0)
    total = train.all_processes(accelerator, {"loss": sums["loss"], "entropy": sums["entropy"], "kl": sums["kl"],
                                              **health})
    after = accelerator.get_state_dict(model)  # whole on the main process, whatever the engine
    named = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    return {"loss": total["loss"], "entropy": total["entropy"], "kl": total["kl"], "on_tokens": total.get("on_tokens", 0.0),
            "grad_norm": sums["grad_norm"],
            "grads": {} if sharded else {n: p.grad.detach().clone() for n, p in named},
            "update": {n: after[f"model.{n}"].float() - b for n, b in before.items()} if after else None}


if __name__ == "__main__":
    acc = train.start_processes(train.Config(dtype="float32"))[0]
    results = [one_update(acc, **case) for case in json.loads(sys.argv[2])]
    if acc.is_main_process:
        torch.save(results, sys.argv[1])
    acc.end_training()  # destroys the process group: DeepSpeed's CPU processes may abort at exit otherwise
