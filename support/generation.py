"""Fast sampling for rollout.generate: prompts batched by length, a prompt's KV cache shared by its
samples, finished rows leaving the batch every SEGMENT tokens, our own sampler (one uniform per
row), the LoRA adapter merged or cast while generating, and the LM head given a contiguous input.
Also the decoder's prompt pass that sampling and the update's log-probs share. None of it changes
what is sampled, only how fast (tests/test_rollout.py checks the tokens against one HF call)."""
from __future__ import annotations

import contextlib
import copy
import os

import torch
from tqdm.auto import tqdm


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def lora_merged(model):
    """Generate with the adapter applied cheaply; training's weights are bit-identical on exit.

    float32 bases: W' = W + s*B@A, one matmul per linear instead of W x + s*B(A x) (three more
    kernels per linear per decode step); the saved W is copied back on exit (merge-then-subtract
    would drift by a rounding each rollout). Costs a copy of the adapted weights while generating.
    bf16/fp16 bases: no merge, their 8/11-bit mantissa cannot hold a short run's small delta (a
    bf16 merge lost most of it, LOG.md); instead the float32 adapter runs in the base's dtype,
    where peft would cast every linear's input to float32 and back (a large share of a bf16
    prefill, BENCHMARKS.md); its float32 tensors come back on exit.
    A no-op without LoRA, for quantized (QLoRA) bases, and, in bf16, for adapters a ZeRO-3 or FSDP2
    engine splits (their tensors are the engine's)."""
    from peft.tuners.lora import Linear as LoraLinear
    layers = _lora_layers(model)
    plain = all(type(m) is LoraLinear and type(m.base_layer) is torch.nn.Linear for m in layers)
    dtypes = {m.base_layer.weight.dtype for m in layers} if plain else set()
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    adapter = [p for m in layers for p in (*m.lora_A.parameters(), *m.lora_B.parameters())]
    own = all(type(p.data) is torch.Tensor and not hasattr(p, "ds_id") for p in adapter)
    if dtype in (torch.bfloat16, torch.float16) and own:
        kept = [p.data for p in adapter]
        for p in adapter:
            p.data = p.data.to(dtype)
        try:
            yield
        finally:
            for p, d in zip(adapter, kept):
                p.data = d
        return
    if dtype != torch.float32:
        yield
        return
    saved = []
    with torch.no_grad():
        for m in layers:
            w = m.base_layer.weight
            saved.append(w.detach().clone())
            for name in m.active_adapters:
                w += m.get_delta_weight(name).to(w.dtype)
    try:
        with model.disable_adapter():
            yield
    finally:
        with torch.no_grad():
            for m, w in zip(layers, saved):
                m.base_layer.weight.copy_(w)


def kv_bytes_per_token(model) -> int:
    c = model.config.get_text_config()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return 2 * c.num_hidden_layers * n_kv * head_dim * next(model.parameters()).element_size()


def auto_batch_size(model, seq_len: int, memory_fraction: float = 0.5, cap: int = 512) -> int:
    """Sequences per generate call that fit `memory_fraction` of free memory: the KV cache of
    seq_len tokens plus the float32 logits and sampling buffers of one decode step (~3 x vocab)."""
    vocab = model.config.get_text_config().vocab_size
    per_seq = seq_len * kv_bytes_per_token(model) + 3 * 4 * vocab
    device = next(model.parameters()).device
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(max(1, min(cap, memory_fraction * free // per_seq)))


class _DecodeStep:
    """A logits processor `generate` calls once per decode step, with the scores (B, V) of the next
    token.

    Progress: moves the bar by the rows still running (a row is done once it has produced an EOS).
    Sampling (temperature > 0): draws the next token itself and returns a score row where only that
    token is finite, so `generate`, run greedy, picks it. One uniform per row inverted through the
    CDF of softmax(scores / T) (nucleus-cut for top_p < 1), where torch.multinomial, which
    `generate` samples with, draws an exponential per vocabulary entry: ~30 ms a step for 28 rows x
    49k tokens on 2 CPU cores, against < 1 ms here (bench/rollout.py). The same distribution, other
    random draws."""

    def __init__(self, temperature: float, top_p: float, eos: list[int], bar, rows: int,
                 width: int = 0):
        # rows: real, not padding; width: the batch's rows when it started (0: rows)
        self.temperature, self.top_p, self.bar, self.rows = temperature, top_p, bar, rows
        self.eos, self.width = torch.tensor(eos), width or rows
        self.segment(torch.arange(self.width))

    def segment(self, active: torch.Tensor):
        """A new `generate` call on the batch's rows `active` (none of them finished)."""
        self.active, self.done = active, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.done is None:  # first step of a call: no row has finished
            device = input_ids.device  # moved once a call, not every decode step
            self.eos, self.active = self.eos.to(device), self.active.to(device)
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
        else:
            self.done |= torch.isin(input_ids[:, -1], self.eos)
        self.bar.update(int((~self.done & (self.active < self.rows)).sum()))
        if self.temperature <= 0:
            return scores
        probs = torch.softmax(scores / self.temperature, dim=-1)                           # (B, V)
        if self.top_p < 1.0:  # keep the smallest set of top tokens whose mass reaches top_p
            sorted_p, order = probs.sort(dim=-1, descending=True)
            sorted_p[(sorted_p.cumsum(-1) - sorted_p) >= self.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        cdf = probs.cumsum(-1)                                                             # (B, V)
        # a uniform for every row the batch started with, finished or not: a row's draws do not
        # depend on which others are still running
        u = torch.rand(self.width, 1, device=cdf.device)[self.active]
        u = u * cdf[:, -1:]                                                                # (B, 1)
        # the first token whose cdf > u
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)        # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


def generate_batch_size(model, prompts: list[list[int]], max_new_tokens: int,
                        batch_size: int) -> int:
    """Sequences per generate call: batch_size, or (0) as many as fit in half the free memory.
    How prompts are batched changes greedy answers slightly (padding), so it is part of what an
    evaluation is (train.py's step-0 cache key)."""
    longest = max((len(p) for p in prompts), default=0)
    return batch_size or auto_batch_size(model, _pow2(max(longest, 64)) + max_new_tokens)


@torch.no_grad()
def sample(model, prompts: list[list[int]], *, eos: list[int], pad: int, max_new_tokens: int,
           temperature: float, top_p: float = 1.0, samples: int = 1, batch_size: int = 0,
           merge_lora: bool = False, static_cache: bool = False,
           desc: str = "generate") -> list[list[int]]:
    """rollout.generate's tokens: `samples` continuations per prompt, prompt by prompt, each the
    new tokens of its row (rollout.generate cuts them after the first EOS). temperature 0 = greedy.

    A prompt's samples share it: its KV cache is computed once and copied to each of them (a GRPO
    group's prompt runs once instead of n times; with the static cache every row runs it).

    Prompts are sorted by length so a batch holds similar lengths (less padding); results come
    back in the input order. Every SEGMENT
    tokens the rows that have produced one leave the batch (`_decode`), and a batch stops when all
    have. batch_size 0 = as many as fit in memory.
    Sampling and the progress bar (generated tokens) are `_DecodeStep`'s.
    merge_lora: see `lora_merged`. static_cache: a preallocated KV cache, which transformers
    compiles (CUDA graphs) on GPU; prompt lengths and batches are padded to powers of two (prompts
    to >= 64), so a run compiles a handful of shapes once instead of new ones every step. The padded
    rows take random draws, so sampled tokens differ from the dynamic-cache path (greedy ones do
    not).
    """
    from transformers import GenerationConfig
    device = next(model.parameters()).device
    # A fresh config: the model's own generation_config may carry top_k=50, repetition penalties...
    # Greedy here: when sampling, _DecodeStep has already drawn the token and left only it finite.
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                               pad_token_id=pad,
                               **(dict(cache_implementation="static") if static_cache else {}))
    if static_cache or min(map(len, prompts), default=0) < 2:
        prompts, samples = [p for p in prompts for _ in range(samples)], 1
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batch_size = generate_batch_size(model, prompts, max_new_tokens, batch_size)
    per_call = max(1, batch_size // samples)  # prompts per generate call
    out: list[list[int] | None] = [None] * (len(prompts) * samples)
    was_training = model.training
    model.eval()
    # each bucketed shape is one compiled graph; the default limit (8) would fall back to eager
    if static_cache:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # disable=None: no bar when not on a terminal
    bar = tqdm(total=len(out) * max_new_tokens, desc=f"{desc} ({len(out)} seqs)",
               unit="tok", leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)
    with lora_merged(model) if merge_lora else contextlib.nullcontext(), _contiguous_head(model):
        for s in range(0, len(order), per_call):
            idx = order[s: s + per_call]
            P = max(len(prompts[i]) for i in idx)
            rows = len(idx)
            # fixed shapes: padded rows are copies of the first prompt, dropped below
            if static_cache:
                P, rows = _pow2(max(P, 64)), min(_pow2(len(idx)), max(batch_size, len(idx)))
            ids = torch.full((rows, P), pad, dtype=torch.long)
            mask = torch.zeros((rows, P), dtype=torch.long)
            for r in range(rows):
                p = prompts[idx[r] if r < len(idx) else idx[0]]
                ids[r, P - len(p):] = torch.tensor(p)
                mask[r, P - len(p):] = 1
            ids, mask, shared = ids.to(device), mask.to(device), {}
            if samples > 1:  # all but the last prompt token: generate runs that one per row
                shared = _prompt_cache(model, ids[:, :-1], mask[:, :-1], samples)
                ids, mask = ids.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0)
            step = _DecodeStep(temperature, top_p, eos, bar, len(idx) * samples, len(ids))
            counted = bar.n
            new = _decode(model, ids, mask, gen_cfg, step, shared,
                          max_new_tokens if static_cache else SEGMENT)
            for r, i in enumerate(idx):
                for j in range(samples):
                    out[i * samples + j] = new[r * samples + j]
            # the budget this batch did not use
            bar.total -= len(idx) * samples * max_new_tokens - (bar.n - counted)
            bar.refresh()
    bar.close()
    model.train(was_training)
    return out  # type: ignore[return-value]



@contextlib.contextmanager
def _contiguous_head(model):
    """A prefill hands the LM head the prompts' last positions, a strided (B, 1, H) view of the
    hidden states; torch's matmul runs that as a bmm over B contiguous copies of the (H, vocab)
    weight (for the embedded model, most of a prefill's time in a profile: BENCHMARKS.md). Made
    contiguous, it is one mm."""
    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        hook.remove()


# new tokens per `generate` call; between calls, rows that have finished leave the batch
SEGMENT = 8


def _decode(model, ids, mask, gen_cfg, step, cache: dict, segment: int) -> list[list[int]]:
    """`generate` on left-padded prompts ids (B, P), `segment` new tokens per call: after each call
    the rows that have produced an EOS leave the batch with their KV-cache rows, so a batch stops
    decoding answers that have ended (`generate` alone runs every row to the longest answer). The
    next call takes the sequences so far and the cache, which holds all but the last token, and
    runs that token per row. Greedy tokens are those of one call, sampled ones too (see
    `_DecodeStep`), up to rounding in the smaller batches. Returns each row's new tokens (B lists).
    """
    from transformers import DynamicCache, LogitsProcessorList
    new: list[list[int]] = [[] for _ in range(len(ids))]
    active, left = torch.arange(len(ids)), gen_cfg.max_new_tokens
    if segment < left and not cache:
        cache = {_cache_kwarg(model.get_decoder()): DynamicCache()}
    gen_cfg = copy.copy(gen_cfg)  # the caller's keeps its max_new_tokens
    while True:
        step.segment(active)
        gen_cfg.max_new_tokens = min(segment, left)
        seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                              logits_processor=LogitsProcessorList([step]), **cache)
        tokens = seqs[:, ids.shape[1]:]                                                  # (b, s)
        for r, a in enumerate(active.tolist()):
            new[a] += tokens[r].tolist()
        left -= tokens.shape[1]
        running = ~torch.isin(tokens, step.eos).any(1)                                   # (b,)
        if left <= 0 or not running.any():
            return new
        keep = running.nonzero().squeeze(1)
        next(iter(cache.values())).batch_select_indices(keep)
        ids, mask = seqs[keep], torch.cat([mask, torch.ones_like(tokens)], 1)[keep]
        active = active[keep.cpu()]


def _prompt_cache(model, ids: torch.Tensor, mask: torch.Tensor, copies: int) -> dict:
    """The KV cache of left-padded prompts (U, P), each row repeated `copies` times, as the keyword
    `generate` takes it."""
    _, cache, kw = prompt_pass(model.get_decoder(), ids, mask)
    cache.batch_repeat_interleave(copies)
    return {kw: cache}


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _cache_kwarg(backbone) -> str:
    """transformers 5 calls the KV-cache argument `cache`, 4.x `past_key_values`."""
    import inspect
    params = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from an attention mask, as `generate` makes them: left padding shifts
    nothing."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def prompt_pass(backbone, ids: torch.Tensor, mask: torch.Tensor):
    """Left-padded prompts (U, P) through the decoder once: their hidden states (U, P, H), their KV
    cache, and the keyword the model takes that cache by (sampling and the update share prompts)."""
    from transformers import DynamicCache
    cache, kw = DynamicCache(), _cache_kwarg(backbone)
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                      use_cache=True, **{kw: cache}).last_hidden_state
    return hidden, cache, kw


