"""Rollout throughput: a plain `model.generate` loop as TRL's GRPOTrainer runs it without vLLM (every
prompt of the generation batch in one call, dynamic KV cache, unmerged LoRA, no compile) vs our
`rollout.generate` (length-sorted batches sized by memory, a group's prompt run once and its KV cache
copied to its samples, LoRA merged into float32 weights while sampling,
our inverse-CDF sampler instead of torch.multinomial, static cache +
compile on GPU), on the same model, prompts, batch and lengths, alternating in one process.

    python bench/rollout.py                                   # embedded model, 32 sequences (one default step)
    python bench/rollout.py --model qwen2.5-0.5b --num_seqs 256 --max_new_tokens 512   # on a GPU
    python bench/rollout.py --heldout --num_seqs 250 --max_new_tokens 64 --adapter runs/default/checkpoint-10
                                                              # train.py's final evaluation

"ours, one call a batch" is ours before 2026-12-02's second change: every row decoded to the longest
answer of its batch, where ours now lets finished rows leave it every generation.SEGMENT tokens; it gains
as much as a model's answers differ in length, so time it on a trained adapter too.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GenerationConfig

import models
import rollout
from support import generation


def plain_generate(model, tok, prompts, max_new_tokens, temperature):
    """TRL GRPOTrainer's non-vLLM path: one left-padded batch, generate, mask after the first EOS."""
    eos = rollout.eos_ids(tok, model)
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, P - len(p):], mask[r, P - len(p):] = torch.tensor(p), 1
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature or None,
                           top_p=1.0, top_k=0, eos_token_id=eos, pad_token_id=tok.pad_token_id, disable_compile=True)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=cfg)
    return [rollout.cut_at_eos(row.tolist(), eos) for row in out[:, P:].cpu()]


def one_call(fn):
    """fn with rollout.generate running each batch in one `generate` call (no row leaves it)."""
    segment, generation.SEGMENT = generation.SEGMENT, 10**9
    try:
        return fn()
    finally:
        generation.SEGMENT = segment


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    responses = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, responses


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=models.CHOICES, default="embedded")
    ap.add_argument("--num_seqs", type=int, default=32, help="sequences per rollout (prompts x samples)")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (the GRPO group size)")
    ap.add_argument("--max_new_tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--merge_lora", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--static_cache", action=argparse.BooleanOptionalAction, default=None,
                    help="default: on with CUDA")
    ap.add_argument("--batch_size", type=int, default=0, help="ours: sequences per generate call (0 = by memory)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each path after one warm-up run")
    ap.add_argument("--adapter", default=None, help="a trained LoRA adapter (a run's checkpoint-N) instead "
                    "of a random one")
    ap.add_argument("--heldout", action="store_true", help="the default held-out questions, greedy, one "
                    "answer each (train.py's evaluation) instead of --num_seqs training prompts")
    ap.add_argument("--paths", default="", help="the paths to time besides ours, ';'-separated as printed "
                    "(default: all), e.g. 'ours, one call a batch'")
    args = ap.parse_args()
    if args.heldout:
        args.samples, args.temperature = 1, 0.0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    static = device == "cuda" if args.static_cache is None else args.static_cache
    model, tok = models.load(args.model, args.dtype, device)
    if args.adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, args.adapter)
    elif args.lora:
        model = models.add_lora(model)
    model.eval()
    qs = models.questions(-(-args.num_seqs // args.samples), heldout=args.heldout)
    if args.heldout:
        args.num_seqs = min(args.num_seqs, len(qs))
    unique = [rollout.question_ids(tok, q) for q in qs]
    prompts = [p for p in unique for _ in range(args.samples)][: args.num_seqs]
    assert len(prompts) == len(unique) * args.samples, "--num_seqs: a multiple of --samples"

    def ours(desc, **change):
        kw = dict(samples=args.samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  batch_size=args.batch_size, merge_lora=args.merge_lora, static_cache=static, desc=desc)
        return lambda: rollout.generate(model, tok, unique, **{**kw, **change})

    paths = {
        "plain (TRL-style)": lambda: plain_generate(model, tok, prompts, args.max_new_tokens, args.temperature),
        # before 2026-12-02: each of a group's rows ran its prompt
        "ours, prompt per row": lambda: rollout.generate(
            model, tok, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            batch_size=args.batch_size, merge_lora=args.merge_lora, static_cache=static, desc="rows"),
        "ours": ours("ours"),
        # before 2026-12-02: peft ran a bf16 base's float32 adapter in float32 (merge_lora does so in bf16)
        "ours, adapter unmerged": ours("unmerged", merge_lora=False),
        "ours, one call a batch": lambda: one_call(ours("one call")),
    }
    if args.samples == 1:  # nothing to share: the same computation as ours
        del paths["ours, prompt per row"]
    if args.paths:
        paths = {k: v for k, v in paths.items() if k in args.paths.split(";") or k == "ours"}
    times = {k: [] for k in paths}
    tokens = {k: [] for k in paths}
    steps = {k: [] for k in paths}  # decode steps of the longest response
    last = {}
    for rep in range(args.repeats + 1):  # rep 0 warms up (allocator, kernels, compile)
        for name, fn in paths.items():
            torch.manual_seed(rep)
            dt, responses = timed(fn)
            if rep:
                times[name].append(dt)
                tokens[name].append(sum(len(r) for r in responses))
                steps[name].append(max(len(r) for r in responses))
                last[name] = responses
    fp32 = next(model.parameters()).dtype == torch.float32  # generation.lora_merged never merges into bf16 weights
    print(f"model {args.model} ({args.dtype}, LoRA {'merged' if args.merge_lora and args.lora and fp32 else 'on' if args.lora else 'off'}, "
          f"static cache {static}) | {args.num_seqs} seqs x <= {args.max_new_tokens} new tokens | "
          f"{models.device_name()} | {models.versions()}")
    # ms/decode step = rollout time / decode steps of its longest response: exact for one batch (both paths
    # when every sequence fits one generate call), an upper bound on the step when `ours` splits batches
    print(f"{'path':22s} {'s/rollout':>10s} {'tokens':>8s} {'tokens/s':>10s} {'ms/decode step':>15s}")
    tps = {}
    for name in paths:
        t, n = statistics.median(times[name]), statistics.mean(tokens[name])
        tps[name] = n / t
        print(f"{name:22s} {t:10.2f} {n:8.0f} {tps[name]:10.1f} {1000 * t / statistics.mean(steps[name]):15.2f}")
    if args.temperature == 0:  # greedy: how many answers rounding in other shapes or dtypes changed
        print("greedy answers that differ from ours: " + "; ".join(
            f"{name}: {sum(a != b for a, b in zip(last['ours'], last[name]))} of {len(last['ours'])}"
            for name in paths if name not in ("ours", "plain (TRL-style)")))
    print("speed-up (tokens/s): " + "; ".join(f"ours / {name}: {tps['ours'] / tps[name]:.2f}x"
                                              for name in paths if name != "ours"))


if __name__ == "__main__":
    main()
