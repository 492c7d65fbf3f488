"""Rollout: chat prompts, sampling responses with HF `generate`, and per-token log-probs of sampled
responses under the policy.

Layout used everywhere (the same as TRL and verl): prompts are LEFT-padded to P columns and
responses RIGHT-padded to R columns, so response token j of every row sits at column P + j and the
hidden state that predicts it is at column P + j - 1. That lets the training forward run the LM head
on response positions only, never on the prompt (`response_logprobs`). How sampling is made fast
(batching, shared prompt caches, our sampler) is support/generation.py's; loading models is
support/models.py's.
"""
from __future__ import annotations

import torch

import loss as L
from support import generation
from support.generation import positions, prompt_pass

# The prompt format of the released training and validation files (verl parquet).
SYSTEM_PROMPT = "You are a helpful assistant."
INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."


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



def policy_tokens(tok, text: str, R: int, finished: bool = True) -> list[int]:
    """Text written elsewhere (a reference solution, a weaker refiner) as a policy response: at
    most R tokens, ending in EOS; a text its writer did not finish, or one cut to fit, has none."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if finished and len(ids) < R else ids[:R]


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
             top_p: float = 1.0, samples: int = 1, desc: str = "generate",
             **speed) -> list[list[int]]:
    """`samples` responses per prompt, prompt by prompt (prompt i's are rows i*samples ...), from
    softmax(logits / temperature) cut to the top_p nucleus; temperature 0 = greedy. Each response is
    its tokens up to and including the first EOS, or max_new_tokens tokens without one (cut).
    speed: batch_size / merge_lora / static_cache, which change how fast, not what is sampled
    (support/generation.py)."""
    eos = eos_ids(tokenizer, model)
    new = generation.sample(model, prompts, eos=eos, pad=tokenizer.pad_token_id,
                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            samples=samples, desc=desc, **speed)
    return [cut_at_eos(tokens, eos) for tokens in new]


# ---------------------------------------------------------------------------------------------
# Training-time forward
# ---------------------------------------------------------------------------------------------
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



def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) from logits (..., V) and tokens (...) -> (...), without keeping a full
    log-softmax: logsumexp is reduced at once, only the chosen logit is gathered."""
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
