"""Memory per GPU for the models README 'Scaling' names, computed from their shapes: no GPU, no download.

    python bench/memory.py                                   # the README table (bf16, LoRA r=16)
    python bench/memory.py --micro_batch_tokens 4096 --lora_r 64

Parameters are counted exactly (each model is built on the `meta` device from its released shape,
bench/models.py). Bytes per parameter, as train.py trains:
  weights       bf16: 2; QLoRA: NF4 linears 0.5 + 0.0159 (double-quantized absmax, blocks of 64), the rest bf16
  LoRA adapter  float32 weight + gradient + AdamW's two moments: 16 per adapter parameter
  full          bf16 weight + gradient + AdamW's two moments in bf16 (torch AdamW keeps the parameter's
                dtype) + DDP's gradient bucket: 10 per parameter, on every process (DDP replicates)
  full, split over N processes (configs/*.yaml):
    ZeRO-2      whole bf16 weights 2 + (bf16 gradient 2 + float32 master weight 4 and gradient 4 + AdamW 8) / N
    ZeRO-3      (2 + 2 + 4 + 4 + 8) / N, plus the whole bf16 weights (2) while generating
                (DeepSpeed's communication buckets, a few hundred MB, are left out)
    FSDP2       (bf16 weight 2 + gradient 2 + AdamW in bf16 4) / N, plus the whole weights (2) while generating
Estimates, not counts:
  update activations  one micro-batch of --micro_batch_tokens tokens, bf16, kept for backward: per token and
                layer ~ 8 x hidden + 2 x kv + 4 x intermediate values (norms, q/k/v, attention output,
                residuals, SwiGLU), attention by SDPA (no T x T matrix); with --gradient_checkpointing only
                each layer's input, plus one layer recomputed; plus one LM-head chunk of logits (float32,
                x3 for softmax and its gradient)
  KV cache      2 (K, V) x layers x kv heads x head dim x 2 bytes per token; generate sizes its batch to fit
                half the free memory, so this decides the sampling batch, not whether the run fits
"""
from __future__ import annotations

import argparse

import torch

import models

GB = 1e9


def shape_counts(name: str, lora_r: int) -> dict:
    from transformers import LlamaConfig, Qwen2Config
    arch, h, inter, layers, heads, kv, vocab, tied = models.SHAPES[name]
    cfg = (Qwen2Config if arch == "qwen2" else LlamaConfig)(
        hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied)
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    in_linears = sum(m.weight.numel() for m in linears)  # what NF4 quantizes (bitsandbytes keeps lm_head)
    lora = sum(lora_r * (m.in_features + m.out_features) for m in linears)  # target_modules="all-linear"
    head_dim = h // heads
    return dict(arch=arch, hidden=h, inter=inter, layers=layers, kv_dim=kv * head_dim, vocab=vocab, total=total,
                in_linears=in_linears, lora=lora)


def table(names, lora_r: int, micro_batch_tokens: int, chunk_tokens: int, processes: int) -> str:
    n = processes
    rows = ["| model | parameters | LoRA r=%d parameters | LoRA: fixed | QLoRA: fixed | full (DDP): fixed | "
            "full, ZeRO-2 x%d | full, ZeRO-3 x%d (generating) | full, FSDP x%d (generating) | "
            "update activations, %d tokens (checkpointing off / on) | KV cache per 1k tokens |"
            % (lora_r, n, n, n, micro_batch_tokens),
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        c = shape_counts(name, lora_r)
        adapter = 16 * c["lora"]
        lora_fixed = 2 * c["total"] + adapter
        qlora_fixed = (0.5 + 0.0159) * c["in_linears"] + 2 * (c["total"] - c["in_linears"]) + adapter
        full_fixed = 10 * c["total"]
        zero2, zero3, fsdp = (2 + 18 / n) * c["total"], 20 / n * c["total"], 8 / n * c["total"]
        whole = 2 * c["total"]
        per_token_layer = 2 * (8 * c["hidden"] + 2 * c["kv_dim"] + 4 * c["inter"])  # bytes, bf16
        head = min(chunk_tokens, micro_batch_tokens) * c["vocab"] * 4 * 3
        act_off = micro_batch_tokens * c["layers"] * per_token_layer + head
        act_on = micro_batch_tokens * (c["layers"] * 2 * c["hidden"] + per_token_layer) + head
        kv = 2 * c["layers"] * c["kv_dim"] * 2 * 1000
        rows.append(f"| {name} | {c['total'] / 1e9:.2f} B | {c['lora'] / 1e6:.1f} M | {lora_fixed / GB:.1f} GB | "
                    f"{qlora_fixed / GB:.1f} GB | {full_fixed / GB:.1f} GB | {zero2 / GB:.1f} GB | {zero3 / GB:.1f} "
                    f"({(zero3 + whole) / GB:.1f}) GB | {fsdp / GB:.1f} ({(fsdp + whole) / GB:.1f}) GB | "
                    f"{act_off / GB:.1f} / {act_on / GB:.2f} GB | "
                    f"{kv / GB:.3f} GB |")
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(models.SHAPES))
    ap.add_argument("--lora_r", type=int, default=16)
    ap.add_argument("--micro_batch_tokens", type=int, default=1536, help="train.py's default")
    ap.add_argument("--logprob_chunk", type=int, default=128, help="train.py's default")
    ap.add_argument("--processes", type=int, default=8, help="processes the split-weight engines split over")
    a = ap.parse_args()
    print(table(a.models.split(","), a.lora_r, a.micro_batch_tokens, a.logprob_chunk, a.processes))
