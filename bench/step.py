"""One full training step, ours vs TRL's GRPOTrainer, with matching settings (same model, LoRA r16 on all
linear layers, 4 prompts x 8 samples, <= 96 new tokens, temperature 0.7, Dr.GRPO constant aggregation,
no KL, one update per rollout, no gradient checkpointing). Each run is a fresh subprocess; the first step
is warm-up, the median of the others is reported, with the peak memory of the process.

    pip install -r bench/requirements.txt
    python bench/step.py                       # ours GRPO, ours Critique-GRPO, TRL GRPO on the embedded model
    python bench/step.py --model qwen2.5-0.5b  # a random-init Qwen2.5-0.5B shape (on a GPU)
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from support import models as loading  # noqa: E402

RUNS = {  # name -> (implementation, critique type)
    "ours GRPO": ("ours", "none"),
    "ours Critique-GRPO": ("ours", "indicative_gt"),
    "TRL GRPO": ("trl", "none"),
}


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def save_model(name: str, dtype: str) -> str:
    """A local directory train.py can load: the embedded model, or a random-init shape."""
    import models
    if name == "embedded":
        return loading.embedded_model_dir()
    out = Path(tempfile.gettempdir()) / "critique_grpo_bench" / f"{name}-hf"
    if not (out / "config.json").exists():
        model, tok = models.load(name, dtype, "cpu")
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


def run_ours(model_dir: str, critique_type: str, a) -> list[float]:
    import train
    with tempfile.TemporaryDirectory() as out:
        train.main(["--model", model_dir, "--critique_type", critique_type, "--max_steps", str(a.steps),
                    "--prompts_per_step", str(a.prompts), "--n_init", str(a.samples),
                    "--max_new_tokens", str(a.max_new_tokens), "--dtype", a.dtype, "--output_dir", out,
                    "--eval_every", "0", "--eval_limit", "1", "--save_every", "0", "--samples_every", "0",
                    "--entropy_coef", "0", *a.ours_args])
        metrics = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    return [sum(v for k, v in m.items() if k.startswith("time/")) for m in metrics if "loss" in m]


def run_trl(model_dir: str, a) -> list[float]:
    import data
    import rollout
    from datasets import Dataset
    from support.checker import AnswerChecker
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = data.load_rows(str(ROOT / "data" / "train.jsonl"))
    ds = Dataset.from_list([{"prompt": [{"role": "system", "content": rollout.SYSTEM_PROMPT},
                                        {"role": "user", "content": r["question"] + rollout.INSTRUCTION}],
                             "answer": r["answer"]} for r in rows])
    checker = AnswerChecker()

    def correctness(completions, answer, **_):
        return checker([c[-1]["content"] for c in completions], answer)

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    dt = loading.resolve_dtype(a.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt)
    micro = 8
    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(), max_steps=a.steps, learning_rate=5e-4, weight_decay=0.01, max_grad_norm=1.0,
        per_device_train_batch_size=micro, gradient_accumulation_steps=a.prompts * a.samples // micro,
        num_generations=a.samples, max_completion_length=a.max_new_tokens, temperature=0.7, top_p=1.0, top_k=0,
        beta=0.0, epsilon=0.2, loss_type="dr_grpo", scale_rewards="none", num_iterations=1,
        gradient_checkpointing=False, bf16=dt == torch.bfloat16, use_cpu=not torch.cuda.is_available(),
        logging_steps=1, report_to="none", save_strategy="no", seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=correctness, args=cfg, train_dataset=ds, processing_class=tok,
                          peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"), callbacks=[Timer()])
    trainer.train()
    checker.close()
    return times


def main():
    import models
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=models.CHOICES, default="embedded")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of: {', '.join(RUNS)}")
    ap.add_argument("--steps", type=int, default=4, help="steps per run; the first is warm-up")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=96)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--ours_args", nargs=argparse.REMAINDER, default=[], help="extra train.py flags (last)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    model_dir = save_model(a.model, a.dtype)

    if a.worker:  # one run in this process; the parent reads the last line
        impl, critique_type = RUNS[a.worker]
        times = run_ours(model_dir, critique_type, a) if impl == "ours" else run_trl(model_dir, a)
        print(json.dumps({"times": times, "peak_gib": peak_memory_gib()}))
        return

    results = {}
    for name in a.runs.split(","):
        # --worker goes first, so the user's --ours_args (argparse.REMAINDER) stays last
        proc = subprocess.run([sys.executable, __file__, "--worker", name, *sys.argv[1:]], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: step times {[round(t, 1) for t in results[name]['times']]}", flush=True)

    print(f"\nmodel {a.model} ({a.dtype}) | {a.prompts} prompts x {a.samples} samples, <= {a.max_new_tokens} new tokens "
          f"| {models.device_name()} | {models.versions()}")
    print(f"{'run':22s} {'s/step':>8s} {'peak GiB':>9s}")
    med = {}
    for name, r in results.items():
        med[name] = statistics.median(r["times"][1:] or r["times"])
        print(f"{name:22s} {med[name]:8.1f} {r['peak_gib']:9.2f}")
    if "ours GRPO" in med and "TRL GRPO" in med:
        print(f"TRL GRPO / ours GRPO (s/step): {med['TRL GRPO'] / med['ours GRPO']:.2f}x")
    if "ours GRPO" in med and "ours Critique-GRPO" in med:
        print(f"ours Critique-GRPO / ours GRPO (s/step): {med['ours Critique-GRPO'] / med['ours GRPO']:.2f}x")


if __name__ == "__main__":
    main()
