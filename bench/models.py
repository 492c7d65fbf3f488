"""Models for the benchmarks: the embedded SmolLM2-135M-Instruct, or a randomly initialised model with the
exact shape of a released Qwen2.5 / Llama-3.2 (no download; speed and memory depend on the shape only)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import models  # noqa: E402

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings (from the released configs)
    "qwen2.5-0.5b": ("qwen2", 896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": ("qwen2", 1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-7b": ("qwen2", 3584, 18944, 28, 28, 4, 152064, False),
    "llama-3.2-1b": ("llama", 2048, 8192, 16, 32, 8, 128256, True),
    "llama-3.2-3b": ("llama", 3072, 8192, 28, 24, 8, 128256, True),
}
CHOICES = ["embedded", *SHAPES]


def load(name: str, dtype: str, device: str):
    """(model, tokenizer). Random shapes use the embedded tokenizer (its ids fit every vocabulary)."""
    if name == "embedded":
        return models.load_model_and_tokenizer(models.EMBEDDED_MODEL, dtype=dtype, device=device)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(models.embedded_model_dir())
    return build(SHAPES[name], tok, dtype, device), tok


def build(shape: tuple, tok, dtype: str, device: str):
    """A randomly initialised model of `shape` (a SHAPES value: arch, hidden, intermediate, layers, heads, kv
    heads, vocab, tied) with `tok`'s special tokens. Any tokenizer whose ids fit the vocabulary will do."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
    arch, h, i, n, a, kv, v, tied = shape
    cfg = (Qwen2Config if arch == "qwen2" else LlamaConfig)(
        hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=a, num_key_value_heads=kv,
        vocab_size=v, tie_word_embeddings=tied, max_position_embeddings=32768, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    dt = models.resolve_dtype(dtype)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, dtype=dt)


def add_lora(model, r: int = 16, alpha: int = 32, seed: int = 0):
    """LoRA on all linear layers, as train.py does; B is randomised so the adapter is not a no-op."""
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.copy_(torch.randn(p.shape, generator=g) * 1e-3)
    return model


def questions(n: int, heldout: bool = False) -> list[str]:
    """The first n training questions, or of the held-out sets train.py evaluates on by default."""
    import data
    root = Path(__file__).resolve().parents[1] / "data"
    files = ["test.jsonl", "test_rephrased.jsonl"] if heldout else ["train.jsonl"]
    rows = [r for f in files for r in data.load_rows(str(root / f))]
    return [r["question"] for r in rows[:n]]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"{model}, {torch.get_num_threads()} threads"


def versions() -> str:
    import peft
    import transformers
    return f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
