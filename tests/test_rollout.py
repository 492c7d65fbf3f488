"""Padding, masks and log-probs: the layout every loss depends on."""
import pytest
import torch

import rollout
from conftest import make_model


def test_cut_at_eos_keeps_first_eos():
    assert rollout.cut_at_eos([5, 6, 0, 7, 0], [0]) == [5, 6, 0]
    assert rollout.cut_at_eos([5, 6], [0]) == [5, 6]


def test_pack_layout():
    b = rollout.pack([[1, 2, 3], [4]], [[7, 0], [8, 9, 0]], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 7, 0, 0], [0, 0, 4, 8, 9, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b["response_ids"].tolist() == [[7, 0, 0], [8, 9, 0]]
    assert b["response_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]  # the EOS (= pad id 0) is counted


def _full_logits_reference(model, prompts, responses):
    """log pi and entropy of each sequence alone (no padding), from the model's own full logits."""
    lps, ents = [], []
    for p, r in zip(prompts, responses):
        logits = model(torch.tensor([p + r])).logits[0].float()[len(p) - 1: len(p) + len(r) - 1]   # (|r|, V)
        lps.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1))
        ents.append(-(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1))
    return lps, ents


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_response_logprobs_match_full_logits_alone(tok, arch, chunk):
    """Chunked LM head, trimmed padding columns, batch padding: the same numbers as one unpadded
    sequence through the model's own forward, for every chunk size."""
    model = make_model(tok, arch)
    prompts, responses = [[5, 6, 7, 8, 9], [10, 11]], [[12, 13, 14], [15, 16]]
    batch = rollout.pack(prompts, responses, tok.pad_token_id, R=6)  # 3 all-pad response columns
    with torch.no_grad():
        lp, ent = rollout.response_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_ids"],
                                            batch["response_mask"], chunk_tokens=chunk)
        ref_lp, ref_ent = _full_logits_reference(model, prompts, responses)
    assert lp.shape == ent.shape == (2, 6)
    for i, r in enumerate(responses):
        assert torch.allclose(lp[i, : len(r)], ref_lp[i], atol=1e-5)
        assert torch.allclose(ent[i, : len(r)], ref_ent[i], atol=1e-5)
        assert (lp[i, len(r):] == 0).all() and (ent[i, len(r):] == 0).all()


def test_chunked_logprob_gradients_equal_full_logits(tok):
    """The checkpointed chunks recompute in backward: gradients equal those of the plain full-logits loss."""
    prompts, responses = [[5, 6, 7, 8, 9], [10, 11]], [[12, 13, 14], [15, 16]]
    batch = rollout.pack(prompts, responses, tok.pad_token_id)
    grads = []
    for chunked in (True, False):
        model = make_model(tok)
        if chunked:
            lp, ent = rollout.response_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                                batch["response_ids"], batch["response_mask"], chunk_tokens=2)
            loss = (lp * batch["response_mask"]).sum() + ent.sum()
        else:
            ref_lp, ref_ent = _full_logits_reference(model, prompts, responses)
            loss = sum(x.sum() for x in ref_lp) + sum(x.sum() for x in ref_ent)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_micro_batches_respect_the_token_budget():
    prompts, responses = [5, 20, 10, 25, 5], [5, 30, 10, 20, 0]
    mbs = rollout.micro_batches(prompts, responses, token_budget=100)
    assert sorted(i for mb in mbs for i in mb) == [0, 1, 2, 3, 4]
    assert mbs == [[1], [3, 2], [0, 4]]   # 25+30 > 100/2; 2 x (25+20) = 90; 2 x (5+5) = 20
    assert rollout.micro_batches([300, 10], [5, 5], token_budget=100) == [[0], [1]]  # too long: alone


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
    assert all(not m.disable_adapters for m in rollout._lora_layers(model))      # adapter back on


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
    assert rollout.kv_bytes_per_token(model) == 2 * 2 * 2 * 8 * 4   # K and V, 2 layers, 2 kv heads, dim 8, fp32
    assert 1 <= rollout.auto_batch_size(model, 128) <= 512
    assert rollout.auto_batch_size(model, 128, cap=3) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_static_cache_on_gpu_generates_the_same_tokens(tok):
    model = _lora(make_model(tok, init_std=0.5)).cuda()
    prompts = [rollout.question_ids(tok, q) for q in ("What is 3 + 4?", "Ann has 2 cards and gets 9 more?", "7 * 8?")]
    plain = rollout.generate(model, tok, prompts, max_new_tokens=10, temperature=0)
    fast = rollout.generate(model, tok, prompts, max_new_tokens=10, temperature=0, static_cache=True, merge_lora=True)
    assert fast == plain
