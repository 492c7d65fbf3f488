"""The update's forward + backward, two layouts side by side: every sequence as prompt + response (each
group's prompt run once per sample, as a packed full-sequence forward does), vs each distinct prompt once
with its KV cache shared by the group (`rollout.response_logprobs`, the default); and the LM-head chunk
size. Same model, LoRA, prompts and responses; alternating runs in one process, median of --runs.

    python bench/update.py                                   # embedded model, one default step's 32 sequences
    python bench/update.py --model qwen2.5-0.5b --max_new_tokens 512      # on a GPU
"""
from __future__ import annotations

import argparse
import random
import resource
import statistics
import time

import torch

import models
import rollout
from support import batching
from support import models as loading


def unshared(batch: dict) -> dict:
    """The same sequences with a private copy of the prompt each: no prefix sharing."""
    return {**batch, "prompt_ids": batch["prompt_ids"][batch["prompt_index"]],
            "prompt_mask": batch["prompt_mask"][batch["prompt_index"]],
            "prompt_index": torch.arange(len(batch["prompt_index"]))}


def step(model, batch: dict, chunk: int, budget: int, device) -> tuple[float, int]:
    """One forward + backward over all sequences in token-budget micro-batches: seconds, minor page faults
    (memory the allocator handed back to the OS and touched again)."""
    if device == "cuda":
        torch.cuda.synchronize()
    faults, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    n = len(batch["prompt_index"])
    for idx in batching.micro_batches(batch, list(range(n)), budget):
        logp, ent = rollout.response_logprobs(model, batching.select(batch, idx, device), chunk_tokens=chunk)
        (logp.sum() / n + 0.001 * ent.sum() / n).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=models.CHOICES, default="embedded")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=64, help="responses are 60-100 %% of this long")
    ap.add_argument("--micro_batch_tokens", type=int, default=1536)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = models.load(args.model, args.dtype, device)
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    from data.make_data import make_splits
    rng = random.Random(0)
    questions = [r["question"] for r in make_splits(args.prompts, 0, seed=0)[0][: args.prompts]]
    prompts = [rollout.question_ids(tok, q) for q in questions for _ in range(args.samples)]
    vocab = min(tok.vocab_size, model.config.vocab_size)
    responses = [[rng.randrange(vocab) for _ in range(rng.randint(int(0.6 * args.max_new_tokens), args.max_new_tokens))]
                 for _ in prompts]
    batch = batching.pack(prompts, responses, tok.pad_token_id)
    arms = {"full sequences, chunk 1024": (unshared(batch), 1024),
            "full sequences, chunk 128": (unshared(batch), 128),
            "shared prompts, chunk 1024": (batch, 1024),
            "shared prompts, chunk 128 (default)": (batch, 128)}
    print(f"{args.model} {loading.choose_dtype(args.dtype)[1]}; {len(prompts)} sequences of prompt "
          f"{batch['prompt_mask'].sum(1).float().mean():.0f} + response "
          f"{batch['response_mask'].sum(1).float().mean():.0f} tokens; {loading.describe_device(device)}")
    for name, (b, chunk) in arms.items():  # warm-up
        step(model, b, chunk, args.micro_batch_tokens, device)
    times = {name: [] for name in arms}
    for _ in range(args.runs):
        for name, (b, chunk) in arms.items():
            times[name].append(step(model, b, chunk, args.micro_batch_tokens, device))
    base = statistics.median(t for t, _ in times["full sequences, chunk 1024"])
    for name, runs in times.items():
        ts = [t for t, _ in runs]
        print(f"{name:36s} median {statistics.median(ts):6.2f} s ({', '.join(f'{t:.2f}' for t in ts)}), "
              f"{statistics.median(f for _, f in runs) / 1e3:.0f}k page faults; "
              f"speed-up over full/1024 {base / statistics.median(ts):.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (all arms)")


if __name__ == "__main__":
    main()
