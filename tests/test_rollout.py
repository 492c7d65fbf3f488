"""Padding, masks and log-probs: the layout every loss depends on."""
import pytest
import torch

import rollout
from support import batching, generation, models
from conftest import make_model


def test_cut_at_eos_keeps_first_eos():
    assert rollout.cut_at_eos([5, 6, 0, 7, 0], [0]) == [5, 6, 0]
    assert rollout.cut_at_eos([5, 6], [0]) == [5, 6]


def test_pack_layout_shares_each_distinct_prompt():
    b = batching.pack([[1, 2, 3], [4], [1, 2, 3]], [[7, 0], [8, 9, 0], [6, 0]], pad_id=0)
    assert b["prompt_ids"].tolist() == [[1, 2, 3], [0, 0, 4]] and b["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b["prompt_index"].tolist() == [0, 1, 0]
    assert b["response_ids"].tolist() == [[7, 0, 0], [8, 9, 0], [6, 0, 0]]
    assert b["response_mask"].tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0]]  # the EOS (= pad id 0) is counted
    s = batching.select(b, [2, 0])  # only prompt 0, re-indexed; the all-pad third response column cut
    assert s["prompt_ids"].tolist() == [[1, 2, 3]] and s["prompt_index"].tolist() == [0, 0]
    assert s["response_ids"].tolist() == [[6, 0], [7, 0]] and s["response_mask"].tolist() == [[1, 1], [1, 1]]
    s = batching.select(b, [1])  # the leading all-pad prompt columns cut
    assert s["prompt_ids"].tolist() == [[4]] and s["response_ids"].tolist() == [[8, 9, 0]]


def _full_logits_reference(model, prompts, responses):
    """log pi and entropy of each sequence alone (no padding), from the model's own full logits."""
    lps, ents = [], []
    for p, r in zip(prompts, responses):
        logits = model(torch.tensor([p + r])).logits[0].float()[len(p) - 1: len(p) + len(r) - 1]   # (|r|, V)
        lps.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1))
        ents.append(-(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1))
    return lps, ents


# two groups sharing a prompt each, a group of one, responses of 1 to 4 tokens (1: no response pass at all)
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [5, 6, 7, 8, 9], [10, 11], [12]]
RESPONSES = [[12, 13, 14], [15, 16], [17], [18, 19, 20, 21], [22, 23]]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("chunk", [1, 3, 1024])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_response_logprobs_match_full_logits_alone(tok, arch, chunk, checkpointing):
    """Shared prompt caches (or, under gradient checkpointing, one pass per sequence), chunked LM head,
    trimmed padding columns, batch padding: the same numbers as each sequence alone through the model's
    own forward, for every chunk size."""
    model = make_model(tok, arch)
    if checkpointing:
        models.enable_checkpointing(model)
        model.train()
    batch = batching.pack(PROMPTS, RESPONSES, tok.pad_token_id, R=6)  # 2 all-pad response columns
    lp, ent = rollout.response_logprobs(model, batching.select(batch, list(range(5))), chunk_tokens=chunk)
    with torch.no_grad():
        ref_lp, ref_ent = _full_logits_reference(model.eval(), PROMPTS, RESPONSES)
    assert lp.shape == ent.shape == (5, 4)
    for i, r in enumerate(RESPONSES):
        assert torch.allclose(lp[i, : len(r)], ref_lp[i], atol=1e-5)
        assert torch.allclose(ent[i, : len(r)], ref_ent[i], atol=1e-5)
        assert (lp[i, len(r):] == 0).all() and (ent[i, len(r):] == 0).all()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prompt_gradients_equal_full_logits(tok, checkpointing):
    """Gradients flow through the shared prompt cache (and the recomputed LM-head chunks) exactly as through
    the plain full-logits loss of each sequence alone."""
    batch = batching.pack(PROMPTS, RESPONSES, tok.pad_token_id)
    grads = []
    for ours in (True, False):
        model = make_model(tok)
        if ours:
            if checkpointing:
                models.enable_checkpointing(model)
            model.train()
            lp, ent = rollout.response_logprobs(model, batching.select(batch, list(range(5))), chunk_tokens=2)
            loss = (lp * batch["response_mask"][:, :4]).sum() + ent.sum()
        else:
            ref_lp, ref_ent = _full_logits_reference(model, PROMPTS, RESPONSES)
            loss = sum(x.sum() for x in ref_lp) + sum(x.sum() for x in ref_ent)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-5)


def test_micro_batches_respect_the_token_budget():
    """Cost = distinct prompts x longest prompt + rows x longest response (the shared-prompt layout)."""
    b = batching.pack([[1] * 5, [2] * 20, [1] * 5, [3] * 25, [1] * 5], [[4] * 5, [4] * 30, [4] * 10, [4] * 20, [4]],
                     pad_id=0)
    mbs = batching.micro_batches(b, [0, 1, 2, 3, 4], token_budget=70)
    assert sorted(i for mb in mbs for i in mb) == [0, 1, 2, 3, 4]
    # longest response first: [1] = 20 + 30; + seq 3: 2 prompts x 25 + 2 x 30 = 110 > 70; [3] = 25 + 20;
    # + seq 2: 2 x 25 + 2 x 20 = 90 > 70; seqs 2, 0 and 4 share one prompt: 1 x 5 + 3 x 10 = 35
    assert mbs == [[1], [3], [2, 0, 4]]
    assert batching.micro_batches(b, [1, 0], token_budget=10) == [[1], [0]]  # longer than the budget: alone


def test_token_logprobs_equals_log_softmax_gather():
    logits, tokens = torch.randn(2, 3, 11), torch.randint(0, 11, (2, 3))
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(rollout.token_logprobs(logits, tokens), ref, atol=1e-6)


def test_greedy_generate_is_the_same_alone_and_in_a_padded_batch(tok):
    model = make_model(tok)
    prompts = [rollout.question_ids(tok, "What is 3 + 4?"), rollout.question_ids(tok, "Ann has 2 cards and gets 9 more?")]
    batched = rollout.generate(model, tok, prompts, max_new_tokens=8, temperature=0)
    alone = [rollout.generate(model, tok, [p], max_new_tokens=8, temperature=0)[0] for p in prompts]
    assert batched == alone and all(0 < len(r) <= 8 for r in batched)


def test_samples_share_their_prompt_and_come_back_prompt_by_prompt(tok):
    """A group's n samples run their prompt once (one KV cache, copied n times): greedy tokens equal
    those of the prompt repeated n times, in prompt order, also when a call holds only some prompts;
    sampling gives every row its own draws."""
    model = make_model(tok, init_std=0.5)
    prompts = [rollout.question_ids(tok, q) for q in ("What is 3 + 4?", "Ann has 2 cards and gets 9 more?", "7 * 8?")]
    repeated = rollout.generate(model, tok, [p for p in prompts for _ in range(3)], max_new_tokens=10, temperature=0)
    for batch_size in (0, 3, 7):
        shared = rollout.generate(model, tok, prompts, samples=3, max_new_tokens=10, temperature=0,
                                  batch_size=batch_size)
        assert shared == repeated
    assert len({tuple(r) for r in repeated}) > 1
    static = rollout.generate(model, tok, prompts, samples=3, max_new_tokens=10, temperature=0,
                              static_cache=True, batch_size=4)  # fixed shapes: the prompt in every row
    assert static == repeated
    torch.manual_seed(0)
    drawn = rollout.generate(model, tok, prompts[:1], samples=6, max_new_tokens=10, temperature=1.0)
    assert len(drawn) == 6 and len({tuple(r) for r in drawn}) > 1


def test_finished_answers_leave_the_batch_without_changing_any_answer(tok, monkeypatch):
    """generate runs SEGMENT tokens per call and drops the rows that have produced an EOS: greedy and
    sampled answers (same seed) equal those of one call that decodes every row to the end, for
    shared and unshared prompts, and the batches really shrink."""
    model = make_model(tok, init_std=0.5)
    prompts = [rollout.question_ids(tok, q) for q in ("What is 3 + 4?", "Ann has 2 cards and gets 9 more?",
                                                         "7 * 8?", "Is 5 odd?")]
    kw = dict(max_new_tokens=24, samples=3)
    # make answers end at different lengths: two tokens greedy answers say mid-way become EOS
    first = rollout.generate(model, tok, prompts, temperature=0, **kw)
    ends = {first[0][5], first[6][13]} - {t for r in first for t in r[:3]}
    model.generation_config.eos_token_id = sorted(ends)
    widths, generate = [], model.generate
    monkeypatch.setattr(model, "generate", lambda **k: widths.append(len(k["input_ids"])) or generate(**k))

    def answers(segment, temperature, **more):
        monkeypatch.setattr(generation, "SEGMENT", segment)
        widths.clear()
        torch.manual_seed(0)
        return rollout.generate(model, tok, prompts, temperature=temperature, **kw, **more)
    for temperature, more in ((0, {}), (1.0, {}), (0, dict(batch_size=7)), (1.0, dict(batch_size=1))):
        whole, batches = answers(10**6, temperature, **more), list(widths)  # one call a batch
        dropped = answers(4, temperature, **more)
        assert dropped == whole
        assert 1 < len({len(r) for r in whole}) and any(len(r) < 24 for r in whole)
        assert len(widths) > len(batches) and min(widths) < max(batches)  # calls on fewer rows


def test_chat_prompt_has_system_instruction_and_generation_prompt(tok):
    text = tok.decode(rollout.question_ids(tok, "What is 1 + 1?"))
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 1 + 1?\n"
                    "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
                    "<|im_start|>assistant\n")


def _lora(model, seed=1):
    from peft import LoraConfig, get_peft_model
    m = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    torch.manual_seed(seed)
    for n, p in m.named_parameters():
        if "lora_B" in n:  # B = 0 at init would make the merge trivially exact
            p.data.normal_(0, 0.5)
    return m


def test_merged_lora_generates_the_same_tokens_and_restores_the_weights(tok):
    model = _lora(make_model(tok, init_std=0.5))
    prompts = [rollout.question_ids(tok, "What is 3 + 4?"), rollout.question_ids(tok, "Ann has 2 cards and gets 9 more?")]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain = rollout.generate(model, tok, prompts, max_new_tokens=10, temperature=0)
    merged = rollout.generate(model, tok, prompts, max_new_tokens=10, temperature=0, merge_lora=True)
    with model.disable_adapter():
        base = rollout.generate(model, tok, prompts, max_new_tokens=10, temperature=0)
    assert merged == plain and base != plain           # the adapter matters, and the merge keeps it
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # bit-identical afterwards
    assert all(not m.disable_adapters for m in generation._lora_layers(model))      # adapter back on


def test_bf16_weights_are_never_merged(tok):
    """bf16 cannot hold a small LoRA delta (W + BA rounds most of BA away): generation keeps it apart."""
    model = _lora(make_model(tok, init_std=0.5)).to(torch.bfloat16)
    for m in generation._lora_layers(model):  # a delta of 0.1 % of W, the size a short run learns
        m.lora_B["default"].weight.data.fill_(1e-3 * m.base_layer.weight.abs().mean() / m.lora_A["default"].weight.abs().sum(1).mean())
    w = generation._lora_layers(model)[0].base_layer.weight
    delta = generation._lora_layers(model)[0].get_delta_weight("default")
    assert ((w.float() + delta.float()).to(torch.bfloat16).float() - w.float() - delta.float()).norm() > 0.2 * delta.float().norm()
    before = w.detach().clone()
    with generation.lora_merged(model):
        assert torch.equal(w, before) and not generation._lora_layers(model)[0].disable_adapters  # adapter still applied


def test_bf16_bases_run_their_float32_adapter_in_bf16_while_generating(tok):
    """Generating on a bf16 base, the float32 adapter runs in bf16 (no float32 casts around every linear): the
    logits move by a rounding, far less than the adapter moves them, and on exit the adapter's parameters hold
    their float32 tensors again, bit for bit."""
    model = _lora(make_model(tok, init_std=0.5)).to(torch.bfloat16)
    adapter = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in adapter:  # as train.py keeps them
        p.data = p.data.float()
    kept = [p.detach().clone() for p in adapter]
    ids = torch.tensor([rollout.question_ids(tok, "What is 3 + 4?")])
    with torch.no_grad():
        full = model(ids).logits.float()
        with model.disable_adapter():
            base = model(ids).logits.float()
        with generation.lora_merged(model):
            assert all(p.dtype == torch.bfloat16 for p in adapter)
            half = model(ids).logits.float()
    assert all(p.dtype == torch.float32 and torch.equal(p, d) for p, d in zip(adapter, kept))
    assert (half - full).norm() < 0.05 * (full - base).norm()


def test_static_cache_with_bucketed_shapes_generates_the_same_tokens(tok):
    """The GPU fast path (static cache; transformers compiles it on CUDA) pads prompts to a power of two (>= 64)
    and batches to a power of two: the padding must not change a single greedy token."""
    model = make_model(tok, init_std=0.5)
    prompts = [rollout.question_ids(tok, q) for q in ("What is 3 + 4?", "Ann has 2 cards and gets 9 more?", "7 * 8?")]
    plain = rollout.generate(model, tok, prompts, max_new_tokens=10, temperature=0)
    static = rollout.generate(model, tok, prompts, max_new_tokens=10, temperature=0, static_cache=True, batch_size=4)
    assert static == plain and len({tuple(r) for r in plain}) > 1


def test_auto_batch_size_follows_memory(tok):
    model = make_model(tok)
    assert generation.kv_bytes_per_token(model) == 2 * 2 * 2 * 8 * 4   # K and V, 2 layers, 2 kv heads, dim 8, fp32
    assert 1 <= generation.auto_batch_size(model, 128) <= 512
    assert generation.auto_batch_size(model, 128, cap=3) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_static_cache_on_gpu_generates_the_same_tokens(tok):
    model = _lora(make_model(tok, init_std=0.5)).cuda()
    prompts = [rollout.question_ids(tok, q) for q in ("What is 3 + 4?", "Ann has 2 cards and gets 9 more?", "7 * 8?")]
    plain = rollout.generate(model, tok, prompts, max_new_tokens=10, temperature=0)
    fast = rollout.generate(model, tok, prompts, max_new_tokens=10, temperature=0, static_cache=True, merge_lora=True)
    assert fast == plain


def test_decode_step_samples_softmax_over_temperature_within_top_p():
    """Hand-worked: logits log([.5, .3, .15, .05]) at T=1 with top_p 0.7 keep the two tokens whose mass reaches
    0.7, renormalised to [.625, .375, 0, 0]; at T=0.5 without a cut, p ∝ p^2 = [.25, .09, .0225, .0025] / .365."""
    class Bar:
        n = 0
        def update(self, k):
            self.n += k
    torch.manual_seed(0)
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().repeat(20000, 1)
    for T, top_p, want in ((1.0, 0.7, [0.625, 0.375, 0, 0]), (0.5, 1.0, [0.25 / .365, 0.09 / .365, 0.0225 / .365, 0.0025 / .365])):
        bar = Bar()
        step = generation._DecodeStep(T, top_p, eos=[3], bar=bar, rows=20000)
        scores = step(torch.zeros(20000, 5, dtype=torch.long), logits)
        assert (scores == 0).sum(-1).eq(1).all() and torch.isinf(scores).sum(-1).eq(3).all()  # one finite token a row
        freq = torch.bincount(scores.argmax(-1), minlength=4).float() / 20000
        assert freq.tolist() == pytest.approx(want, abs=0.012)
        assert bar.n == 20000
    # the next call counts only rows that have not produced an EOS (token 3) yet
    ids = torch.tensor([[1, 3], [1, 2]])
    step, bar = generation._DecodeStep(0.0, 1.0, eos=[3], bar=Bar(), rows=2), None
    step(ids[:, :1], logits[:2])
    assert step.bar.n == 2 and step(ids, logits[:2]).equal(logits[:2]) and step.bar.n == 3  # greedy: scores untouched


@pytest.mark.parametrize("flags, isa, want, why", [
    (["avx512f", "avx512_bf16"], "AVX512", torch.bfloat16, "natively (AVX512_BF16)"),
    (["avx512f", "avx512_bf16", "amx_bf16"], "AVX2", torch.float32, "torch runs AVX2 kernels here"),
    (["avx2"], "AVX2", torch.float32, "this CPU has no native bf16"),
])
def test_auto_dtype_says_what_it_chose_and_why(flags, isa, want, why):
    dtype, reason = models.choose_dtype("auto", cpu_flags=flags, isa=isa)
    assert dtype == want and why in reason and reason.startswith(f"auto -> {str(want).removeprefix('torch.')}")
    assert models.choose_dtype("float32") == (torch.float32, "float32 (--dtype float32)")


def test_adapter_on_the_embedded_model_names_the_hub_model(tmp_path, tiny_model_dir, monkeypatch):
    """An adapter saved on the embedded model must name its hub model, not this machine's cache path."""
    import json

    from peft import LoraConfig, get_peft_model
    monkeypatch.setattr(models, "embedded_model_dir", lambda: tiny_model_dir)
    model, _ = models.load_model_and_tokenizer(models.EMBEDDED_MODEL, dtype="float32")
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path, save_embedding_layers=False)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        models.EMBEDDED_HUB_NAME
