"""Shared fixtures: an offline tokenizer trained in-process, tiny random Qwen2 / Llama models, tiny data.

No network: the tokenizer is a byte-level BPE trained on a few hundred lines in well under a second,
with a ChatML template and pad == EOS (as SmolLM2 and Qwen have it).
"""
import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the step-0 evaluation cache (train.py --eval_cache): the tests' own, not the user's
os.environ.setdefault("CRITIQUE_GRPO_EVAL_CACHE", tempfile.mkdtemp(prefix="step0_eval_"))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import critique
    import rollout
    from data.make_data import make_splits
    train, _ = make_splits(20, 2, seed=0)
    corpus = [r["question"] + " " + r["solution"] for r in train] + [
        critique.REFINE_TEMPLATE, critique.CRITIC_SYSTEM_PROMPT, critique.CRITIC_USER_TEMPLATE,
        rollout.SYSTEM_PROMPT, rollout.INSTRUCTION, "The generated solution is correct incorrect, the ground truth is"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|im_end|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok


def make_model(tok, arch: str = "qwen2", seed: int = 0, init_std: float = 0.02):
    """A 2-layer random model. The default init makes it say the same thing to every prompt; a larger
    `init_std` (e.g. 0.5) makes its greedy output depend on the prompt."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
    torch.manual_seed(seed)
    kw = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
              initializer_range=init_std)
    cfg = Qwen2Config(**kw) if arch == "qwen2" else LlamaConfig(**kw)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tok):
    """A saved tiny Qwen2 model + tokenizer directory, loadable like any hub model."""
    d = tmp_path_factory.mktemp("tiny-qwen2")
    make_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_llama_4bit_dir(tmp_path_factory, tok):
    """A tiny Llama that 4-bit loading accepts: bitsandbytes' CPU 4-bit matmul fails on biased layers (Qwen2's
    q/k/v) in backward, and its blocks need hidden sizes >= 64."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    d = tmp_path_factory.mktemp("tiny-llama-128")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None)).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    import json

    from data.make_data import make_splits
    d = tmp_path_factory.mktemp("data")
    train, test = make_splits(8, 2, seed=0)
    for name, rows in (("train", train), ("test", test)):
        with open(d / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(d / "train.jsonl"), str(d / "test.jsonl")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")
    config.addinivalue_line("markers", "slow: starts several processes or kills runs (~7 min on 2 cores); "
                            "left out of `python -m pytest -q`, run by `python -m pytest -q -m slow`")
