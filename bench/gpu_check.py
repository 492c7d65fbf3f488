"""One GPU check, ready for the day a GPU is lent: every GPU figure BENCHMARKS.md leaves open, in one
table, in under 8 minutes on one H100/H200-class GPU, with nothing from a model hub.

    python bench/gpu_check.py --out runs/gpu_check          # on a GPU: writes runs/gpu_check.{json,md,log}
    python bench/gpu_check.py --tiny                        # CPU smoke run of the same code (< ~1 min)
    python bench/gpu_check.py --dry_run                     # the table's rows, results empty

Models are random-initialised from the released Qwen2.5-0.5B / 1.5B / 7B shapes (bench/models.py); the
tokenizer is the test suite's offline one (tests/conftest.py make_tokenizer: a byte-level BPE trained in
well under a second, ChatML template), so nothing is downloaded. Speed and memory depend on the shapes only.
Every response runs to its full length: the EOS id the samplers stop on is replaced by one past the
vocabulary (`full_length`), in both rollout paths and inside train.main, so every path does the same work.

Rows, by job (`--jobs` picks jobs):
  rollout   tokens/s of ours (`rollout.generate` as train.py calls it: static cache + compile on CUDA) vs
            the plain `model.generate` call TRL's GRPOTrainer makes without vLLM (bench/rollout.py's
            `plain_generate`: one batch, dynamic cache, unmerged LoRA, no compile), at 64 and 256 sequences;
            ms per decode step with the static cache + torch.compile vs the dynamic cache (64 sequences,
            a steady call / max_new_tokens, prefill included), and the compile time (first call - steady
            call, in a fresh process with a fresh inductor cache)
  step      seconds per training step (train.main, as bench/step.py runs it; the held-out evaluation at
            step 0 and the end is stubbed out, it is not part of a step), GRPO vs Critique-GRPO; with
            random weights every answer is wrong, so every group is refined: Critique-GRPO's worst case
  mem_*     torch.cuda.max_memory_allocated over one train.main step (GRPO, 1 prompt x 8 samples x 1024
            tokens, --gradient_checkpointing) from loading the model to the optimizer step: LoRA and QLoRA
            (--load_in_4bit, bitsandbytes) at 1.5B, and QLoRA at 7B if the budget has room. Sampling is
            replaced by random full-length responses (`random_responses`: 1024 eager decode steps of a 7B
            4-bit model would take the budget); what it would add, the KV cache of 8 x (prompt + 1024)
            tokens (0.5 GB at 7B), is far below the update's peak and is given beside each figure
A row that cannot run says why (no CUDA, no bitsandbytes GPU kernels, not enough budget left) instead of
failing. On CUDA each job runs in its own process with a time limit (a job that overruns is killed and its
missing rows say so; rows it finished are kept), so the whole stays under --budget seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# the repository root first: `rollout` is the root's rollout.py, not bench/rollout.py
for p in (str(BENCH), str(ROOT)):
    if p in sys.path:
        sys.path.remove(p)
sys.path[:0] = [str(ROOT), str(BENCH)]
from support import models as loading  # noqa: E402

TINY_SHAPES = {  # the released shapes' architecture at toy sizes: the CPU smoke run
    "qwen2.5-0.5b": ("qwen2", 64, 128, 2, 4, 2, 512, True),
    "qwen2.5-1.5b": ("qwen2", 96, 192, 2, 4, 2, 512, True),
    "qwen2.5-7b": ("qwen2", 128, 256, 2, 4, 2, 512, False),
}
JOBS = ["rollout", "step", "mem_lora_1.5b", "mem_qlora_1.5b", "mem_qlora_7b"]
JOB_ROWS = {"rollout": ["rollout_small", "rollout_large", "decode_static", "decode_dynamic", "compile"],
            "step": ["step_grpo", "step_critique"], "mem_lora_1.5b": ["mem_lora_1.5b"],
            "mem_qlora_1.5b": ["mem_qlora_1.5b"], "mem_qlora_7b": ["mem_qlora_7b"]}
# seconds on a GPU: the time limit of each job, and the least worth starting it with
JOB_BUDGET = {"rollout": 180, "step": 170, "mem_lora_1.5b": 50, "mem_qlora_1.5b": 50, "mem_qlora_7b": 150}
JOB_MIN = {"rollout": 60, "step": 60, "mem_lora_1.5b": 25, "mem_qlora_1.5b": 25, "mem_qlora_7b": 90}
TEMPERATURE = 0.7  # train.py's default
SAMPLES = 8        # sequences per question in the rollout rows (train.py's --n_init)
GIB = 2 ** 30


# ---------------------------------------------------------------------------------------------
# Settings and rows
# ---------------------------------------------------------------------------------------------
def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="toy shapes, 8/16 sequences, 8 tokens: a CPU smoke run")
    ap.add_argument("--out", help="write the table to OUT.json and OUT.md (and the jobs' output to OUT.log)")
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated subset of: {', '.join(JOBS)}")
    ap.add_argument("--budget", type=float, help="seconds for the whole check (default 465 on a GPU)")
    ap.add_argument("--job_timeout", action="append", default=[], metavar="JOB=S",
                    help="override one job's time limit (seconds)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each job in its own process with a time limit (default: on CUDA)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max_new_tokens", type=int, help="rollout and step rows (default 256; --tiny 8)")
    ap.add_argument("--seqs", help="the two rollout batch sizes (default 64,256; --tiny 8,16)")
    ap.add_argument("--step_steps", type=int, help="train.main steps per arm, the first a warm-up (3; --tiny 2)")
    ap.add_argument("--mem_new_tokens", type=int, help="tokens per sample in the memory rows (1024; --tiny 8)")
    ap.add_argument("--dry_run", action="store_true", help="print the rows with empty results; run nothing")
    ap.add_argument("--job", help=argparse.SUPPRESS)       # run one job in this process (a child)
    ap.add_argument("--job_out", help=argparse.SUPPRESS)   # where that child writes its rows
    ap.add_argument("--work_dir", help=argparse.SUPPRESS)  # saved random models, shared by the children
    a = ap.parse_args(argv)
    gpu = dict(max_new_tokens=256, seqs="64,256", step_steps=3, mem_new_tokens=1024, budget=465.0)
    tiny = dict(max_new_tokens=8, seqs="8,16", step_steps=2, mem_new_tokens=8, budget=600.0)
    for k, v in (tiny if a.tiny else gpu).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.seqs = [int(s) for s in str(a.seqs).split(",")]
    a.jobs = [j.strip() for j in a.jobs.split(",") if j.strip()]
    bad = [j for j in a.jobs if j not in JOBS]
    if bad or len(a.seqs) != 2:
        ap.error(f"unknown job {bad}" if bad else "--seqs takes two batch sizes, e.g. 64,256")
    a.step_prompts, a.step_samples = (2, 4) if a.tiny else (4, 8)
    a.mem_samples = 4 if a.tiny else 8
    return a


def shape(a, name: str) -> tuple:
    import models
    return (TINY_SHAPES if a.tiny else models.SHAPES)[name]


def label(a, name: str) -> str:
    if a.tiny:
        _, h, _, n, *_ = TINY_SHAPES[name]
        return f"tiny qwen2 (hidden {h}, {n} layers; {name} stand-in)"
    return {"qwen2.5-0.5b": "Qwen2.5-0.5B", "qwen2.5-1.5b": "Qwen2.5-1.5B", "qwen2.5-7b": "Qwen2.5-7B"}[name] \
        + " shape, random init"


def row_specs(a) -> list[dict]:
    """Every row of the table, in order: id, job, what it checks, and with what."""
    R, (s1, s2) = a.max_new_tokens, a.seqs
    m05 = label(a, "qwen2.5-0.5b")
    roll = f"{m05}, LoRA r16, T {TEMPERATURE}, EOS suppressed"
    timed_steps = "step 2" if a.step_steps == 2 else f"median of steps 2-{a.step_steps}"
    step = f"{m05}, `train.main`, {a.step_prompts} prompts x {a.step_samples}, {R} tokens, {timed_steps}"
    mem = (f"`train.main`, 1 step of GRPO, 1 prompt x {a.mem_samples} x {a.mem_new_tokens} tokens, "
           "`--gradient_checkpointing`, sampling stubbed (random responses)")
    rows = [
        ("rollout_small", "rollout", "rollout tokens/s: ours vs plain `generate` (TRL-style)",
         f"{roll}; {s1} seqs x {R} tokens"),
        ("rollout_large", "rollout", "rollout tokens/s: ours vs plain `generate` (TRL-style)",
         f"{roll}; {s2} seqs x {R} tokens"),
        ("decode_static", "rollout", "ms / decode step: static cache + torch.compile",
         f"ours, {s1} seqs; steady call / {R}"),
        ("decode_dynamic", "rollout", "ms / decode step: dynamic cache", f"ours, {s1} seqs; steady call / {R}"),
        ("compile", "rollout", "compile time of the static cache",
         f"first call - steady call, {s1} seqs (then {s2}: a new shape)"),
        ("step_grpo", "step", "s / training step: GRPO", step),
        ("step_critique", "step",
         f"s / training step: Critique-GRPO (indicative_gt, {a.step_samples - 1} + 1)",
         f"{step}; every group all-wrong (random weights), so every answer is refined"),
        ("mem_lora_1.5b", "mem_lora_1.5b", "peak GPU memory: LoRA step", f"{label(a, 'qwen2.5-1.5b')}; {mem}"),
        ("mem_qlora_1.5b", "mem_qlora_1.5b", "peak GPU memory: QLoRA step (`--load_in_4bit`)",
         f"{label(a, 'qwen2.5-1.5b')}; {mem}"),
        ("mem_qlora_7b", "mem_qlora_7b", "peak GPU memory: QLoRA step, the one-24-GB-GPU case",
         f"{label(a, 'qwen2.5-7b')}; {mem}"),
    ]
    return [dict(id=i, job=j, check=c, setting=s) for i, j, c, s in rows]


# ---------------------------------------------------------------------------------------------
# Helpers shared by the jobs
# ---------------------------------------------------------------------------------------------
def load_file(name: str, path: Path):
    """A module from a file, under its own name (bench/rollout.py would shadow the root's rollout)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def offline_tokenizer():
    """The test suite's tokenizer: trained in-process, no hub (tests/conftest.py make_tokenizer)."""
    return load_file("critique_grpo_conftest", ROOT / "tests" / "conftest.py").make_tokenizer()


@contextlib.contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def full_length():
    """Responses never stop early: the EOS ids every sampler here asks `rollout.eos_ids` for become one id
    past the model's vocabulary, which no sampler can draw (our path, the plain path and train.main)."""
    import rollout
    return patched(rollout, "eos_ids", lambda tokenizer, model: [model.config.get_text_config().vocab_size])


def sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def free_memory():
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unique_graphs() -> int:
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return 0


def save_random(a, ctx, name: str) -> str:
    """A directory train.py loads like any model: random weights of `name`'s shape + the offline
    tokenizer. Built on the job's device, written once per check (children share work_dir)."""
    import models
    out = Path(ctx.work_dir) / name
    if not (out / "config.json").exists():
        model = models.build(shape(a, name), ctx.tok, a.dtype, ctx.device)
        tmp = out.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        ctx.tok.save_pretrained(tmp)
        del model
        free_memory()
        tmp.rename(out)
    return str(out)


class ExactMatchChecker:
    """train.py's answer checker without math-verify (missing on a bare GPU image): exact and numeric
    matches only. Random weights answer nothing right either way; only the verify time differs (tiny)."""
    num_timeouts = 0

    def __call__(self, responses, ground_truths):
        import evaluate
        out = []
        for r, g in zip(responses, ground_truths):
            pred = evaluate.extract_answer(r)
            out.append(float(pred is not None and evaluate.fast_equal(pred, str(g))))
        return out

    def close(self):
        pass


def random_responses():
    """`rollout.generate` replaced by random full-length responses (ids past the tokenizer's special ones)."""
    import rollout
    import torch

    def generate(model, tokenizer, prompts, *, max_new_tokens, samples=1, **_):
        vocab = min(len(tokenizer), model.config.get_text_config().vocab_size)
        rows = len(prompts) * samples  # train.py samples a group's n answers from one prompt
        g = torch.Generator().manual_seed(rows)
        return torch.randint(2, vocab, (rows, max_new_tokens), generator=g).tolist()
    return patched(rollout, "generate", generate)


def train_run(a, model_dir: str, flags: list[str], sample: bool = True) -> tuple[list[dict], float | None,
                                                                                  float | None]:
    """train.main on `model_dir` with `flags` (bench/step.py's run_ours, plus a stub for the held-out
    evaluation; sample=False: random responses instead of sampling): (per-step metrics, peak allocated GiB,
    peak reserved GiB; None off CUDA)."""
    import torch
    import train
    cuda = torch.cuda.is_available()
    from support import run_setup
    # no held-out evaluation and no checkpoint: the step alone is timed
    patches = [full_length() if sample else random_responses(),
               patched(train, "evaluate_when_due", lambda *_, **__: None),
               patched(train, "save_when_due", lambda *_, **__: None)]
    if importlib.util.find_spec("math_verify") is None:
        patches.append(patched(run_setup, "AnswerChecker", ExactMatchChecker))
    with tempfile.TemporaryDirectory() as out, contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        free_memory()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        train.main(["--model", model_dir, "--output_dir", out, "--dtype", a.dtype,
                    "--train_data", str(ROOT / "data" / "train.jsonl"),
                    "--eval_data", str(ROOT / "data" / "test.jsonl"), "--eval_every", "0", "--save_every", "0",
                    "--samples_every", "0", *flags])
        peak = (torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB) if cuda \
            else (None, None)
        path = Path(out) / "metrics.jsonl"
        metrics = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    free_memory()
    return [m for m in metrics if "loss" in m], *peak


def step_seconds(m: dict) -> float:
    return sum(v for k, v in m.items() if k.startswith("time/"))


# ---------------------------------------------------------------------------------------------
# Jobs: each emits its rows (JOB_ROWS) as it finishes them
# ---------------------------------------------------------------------------------------------
def job_rollout(a, ctx):
    import models
    import rollout
    plain_generate = load_file("bench_rollout", BENCH / "rollout.py").plain_generate
    cuda, R, (s1, s2) = ctx.device == "cuda", a.max_new_tokens, a.seqs
    model = models.add_lora(models.build(shape(a, "qwen2.5-0.5b"), ctx.tok, a.dtype, ctx.device)).eval()
    qs = models.questions(-(-max(s1, s2) // SAMPLES))
    all_prompts = [rollout.question_ids(ctx.tok, q) for q in qs for _ in range(SAMPLES)]
    prompts = {n: all_prompts[:n] for n in (s1, s2)}
    short = []  # calls whose responses stopped before max_new_tokens (should be none)

    def ours(n, static):
        t, out = timed(lambda: rollout.generate(model, ctx.tok, prompts[n], max_new_tokens=R,
                                                temperature=TEMPERATURE, merge_lora=True,
                                                static_cache=static, desc="ours"))
        tokens = sum(len(o) for o in out)
        if tokens < n * R:
            short.append(f"ours {n}")
        return t, tokens

    def plain(n, max_new_tokens=R):
        t, out = timed(lambda: plain_generate(model, ctx.tok, prompts[n], max_new_tokens, TEMPERATURE))
        tokens = sum(len(o) for o in out)
        if tokens < n * max_new_tokens:
            short.append(f"plain {n}")
        return t, tokens

    def ratio_row(rid, n, t_plain, n_plain, t_ours, n_ours, how):
        tp, to = n_plain / t_plain, n_ours / t_ours
        ctx.emit(rid, "ok", f"ours {to:,.0f} tok/s{how}, plain {tp:,.0f} tok/s: **{to / tp:.2f}x**" +
                 (f" (early stops: {', '.join(short)})" if short else ""),
                 ours_tokens_per_s=to, plain_tokens_per_s=tp, ratio=to / tp, seqs=n, max_new_tokens=R)

    no_compile = "skipped: no CUDA (transformers compiles the static cache only on a GPU)"
    with full_length():
        # the static cache at the small batch: the first call compiles (CUDA), the second runs steady
        g0 = unique_graphs()
        t_first, _ = ours(s1, True)
        t_static, _ = ours(s1, True)
        graphs = unique_graphs() - g0
        if cuda:
            ctx.emit("decode_static", "ok", f"{1000 * t_static / R:.2f} ms" +
                     ("" if graphs else " (no graph was compiled: transformers did not compile)"),
                     ms_per_step=1000 * t_static / R, compiled_graphs=graphs)
            ctx.emit("compile", "ok", f"{t_first - t_static:.1f} s ({graphs} graphs)",
                     compile_s=t_first - t_static, compiled_graphs=graphs)
        else:
            ctx.emit("decode_static", "skipped", f"{no_compile}; uncompiled here: {1000 * t_static / R:.2f} ms",
                     uncompiled_ms_per_step=1000 * t_static / R)
            ctx.emit("compile", "skipped", no_compile)
        timed(lambda: rollout.generate(model, ctx.tok, prompts[s1], max_new_tokens=2, temperature=TEMPERATURE,
                                       merge_lora=True, static_cache=False))  # warm-up of this path
        t_dynamic, _ = ours(s1, False)
        speedup = f"; static + compile: **{t_dynamic / t_static:.2f}x** faster" if cuda else ""
        ctx.emit("decode_dynamic", "ok", f"{1000 * t_dynamic / R:.2f} ms{speedup}",
                 ms_per_step=1000 * t_dynamic / R)
        # ours = what train.py runs on this device: the static cache on CUDA, the dynamic one elsewhere
        how = "" if cuda else " (dynamic cache: no CUDA)"
        plain(s1, 2)  # warm-up: the sampling kernels of generate's own path
        t_plain, n_plain = plain(s1)
        ratio_row("rollout_small", s1, t_plain, n_plain, t_static if cuda else t_dynamic, s1 * R, how)
        t_plain, n_plain = plain(s2)
        if cuda:
            g0 = unique_graphs()
            t_first, _ = ours(s2, True)  # a new batch shape: compiled again
            t_ours, n_ours = ours(s2, True)
            ctx.emit("compile", "ok", f"{ctx.rows['compile']['values']['compile_s']:.1f} s "
                     f"({graphs} graphs); a new shape ({s2} rows): {t_first - t_ours:.1f} s "
                     f"({unique_graphs() - g0} graphs)", **ctx.rows["compile"]["values"],
                     new_shape_compile_s=t_first - t_ours)
        else:
            t_ours, n_ours = ours(s2, False)
        ratio_row("rollout_large", s2, t_plain, n_plain, t_ours, n_ours, how)
    del model
    free_memory()


def job_step(a, ctx):
    model_dir = save_random(a, ctx, "qwen2.5-0.5b")
    common = ["--prompts_per_step", str(a.step_prompts), "--n_init", str(a.step_samples),
              "--max_new_tokens", str(a.max_new_tokens), "--max_steps", str(a.step_steps)]
    verifier = "" if importlib.util.find_spec("math_verify") else "; verifier: exact match (no math-verify)"
    med = {}
    for rid, ctype in (("step_grpo", "none"), ("step_critique", "indicative_gt")):
        metrics, peak, _ = train_run(a, model_dir, [*common, "--critique_type", ctype])
        timed_steps = metrics[1:] or metrics
        med[rid] = statistics.median(step_seconds(m) for m in timed_steps)
        split = {k: statistics.median(m.get(f"time/{k}", 0.0) for m in timed_steps)
                 for k in ("sample", "refine", "update")}
        text = f"{med[rid]:.2f} s (sample {split['sample']:.2f}, refine {split['refine']:.2f}, " \
               f"update {split['update']:.2f})"
        if rid == "step_critique":
            text += f": **{med[rid] / med['step_grpo']:.2f}x** GRPO"
        if peak is not None:
            text += f"; peak {peak:.2f} GiB"
        ctx.emit(rid, "ok", text + verifier, s_per_step=med[rid], steps=[step_seconds(m) for m in metrics],
                 peak_gib=peak, **{f"{k}_s": v for k, v in split.items()},
                 **({"ratio_to_grpo": med[rid] / med["step_grpo"]} if rid == "step_critique" else {}))


def bnb_unavailable(device: str) -> str | None:
    """Why a QLoRA step cannot run here, or None."""
    if device != "cuda":
        return "skipped: no CUDA (bitsandbytes' 4-bit kernels: its CPU path fails on Qwen2's biased q/k/v)"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "skipped: bitsandbytes is not installed (carry its wheel: BENCHMARKS.md, GPU check)"
    try:
        import bitsandbytes as bnb
        import torch
        x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
        q, state = bnb.functional.quantize_4bit(x, quant_type="nf4")
        bnb.functional.dequantize_4bit(q, state)
        torch.cuda.synchronize()
    except Exception as e:  # no kernels for this CUDA, a broken install...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"skipped: bitsandbytes has no working GPU kernels here ({type(e).__name__}: {first})"
    return None


def job_mem(a, ctx, name: str, qlora: bool):
    rid = f"mem_{'qlora' if qlora else 'lora'}_{name.removeprefix('qwen2.5-')}"
    cuda = ctx.device == "cuda"
    if qlora and (why := bnb_unavailable(ctx.device)):
        ctx.emit(rid, "skipped", why)
        return
    model_dir = save_random(a, ctx, name)
    R = a.mem_new_tokens
    flags = ["--critique_type", "none", "--max_steps", "1", "--prompts_per_step", "1",
             "--n_init", str(a.mem_samples), "--max_new_tokens", str(R), "--max_context", str(max(1024, R + 1024)),
             "--gradient_checkpointing", *(["--load_in_4bit"] if qlora else [])]
    t, (metrics, peak, reserved) = timed(lambda: train_run(a, model_dir, flags, sample=False))
    if not cuda:  # the path ran (what the smoke run checks); the figure needs a GPU
        ctx.emit(rid, "skipped", f"skipped: no CUDA (torch.cuda.max_memory_allocated); the step ran on the CPU "
                 f"in {t:.1f} s", wall_s=t)
        return
    _, h, _, layers, heads, kv, *_ = shape(a, name)
    kv_gib = a.mem_samples * (128 + R) * 2 * layers * kv * (h // heads) * 2 / GIB  # bf16 K and V, prompt <= 128
    fits = (f"; {'fits' if reserved + 0.5 <= 24 else 'does not fit'} a 24 GiB GPU (reserved + ~0.5 GiB CUDA "
            "context)") if name == "qwen2.5-7b" else ""
    ctx.emit(rid, "ok", f"**{peak:.2f} GiB** allocated ({reserved:.2f} GiB reserved){fits}; sampling's KV "
             f"cache would be {kv_gib:.2f} GiB; {t:.0f} s", peak_gib=peak, reserved_gib=reserved,
             kv_cache_gib=kv_gib, wall_s=t)


JOB_FN = {"rollout": job_rollout, "step": job_step,
          "mem_lora_1.5b": lambda a, ctx: job_mem(a, ctx, "qwen2.5-1.5b", False),
          "mem_qlora_1.5b": lambda a, ctx: job_mem(a, ctx, "qwen2.5-1.5b", True),
          "mem_qlora_7b": lambda a, ctx: job_mem(a, ctx, "qwen2.5-7b", True)}


class Ctx:
    """What a job works with: the device, the shared work_dir, the offline tokenizer (built on first use),
    and emit(row id, status, result, **values)."""

    def __init__(self, work_dir: str, rows: dict, job_out: str | None):
        import torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.work_dir, self.rows, self.job_out, self._tok = work_dir, rows, job_out, None

    @property
    def tok(self):
        if self._tok is None:
            # conftest would otherwise make a temporary step-0 evaluation cache dir (evaluation is stubbed here)
            os.environ.setdefault("CRITIQUE_GRPO_EVAL_CACHE", str(Path(self.work_dir) / "step0_eval"))
            self._tok = offline_tokenizer()
        return self._tok

    def emit(self, rid: str, status: str, result: str, **values):
        self.rows[rid] = dict(status=status, result=result, values=values)
        if self.job_out:  # a child: every finished row is on disk at once, so a kill keeps it
            tmp = self.job_out + ".tmp"
            Path(tmp).write_text(json.dumps(self.rows))
            os.replace(tmp, self.job_out)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def markdown(meta: dict, table: list[dict]) -> str:
    lines = [meta["title"], "", "| check | setting | result |", "|---|---|---|"]
    for r in table:
        lines.append(f"| {r['check']} | {r['setting']} | {r['result']} |")
    return "\n".join(lines) + "\n"


def write_out(out: str | None, meta: dict, table: list[dict]) -> None:
    if not out:
        return
    base = out[: -len(Path(out).suffix)] if Path(out).suffix in (".json", ".md") else out
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    Path(base + ".json").write_text(json.dumps({"meta": meta, "rows": table}, indent=2) + "\n")
    Path(base + ".md").write_text(markdown(meta, table))


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for m in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out.append(f"{m} {version(m)}")
        except PackageNotFoundError:
            out.append(f"{m} not installed")
    return ", ".join(out)


def last_error(log: Path) -> str:
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.exists() else []
    errs = [x for x in lines if "Error" in x or x.startswith("error")]
    return ((errs or lines or ["no output"])[-1])[:300]


def run_child(a, job: str, timeout: float, work_dir: str, log: Path) -> tuple[dict, str | None]:
    """The job in a fresh process, killed (with everything it started) at `timeout` seconds: (rows, why
    rows are missing)."""
    job_out, job_log = Path(work_dir) / f"{job}.json", Path(work_dir) / f"{job}.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "--job", job, "--job_out", str(job_out),
            "--work_dir", work_dir, "--dtype", a.dtype, "--max_new_tokens", str(a.max_new_tokens),
            "--seqs", ",".join(map(str, a.seqs)), "--step_steps", str(a.step_steps),
            "--mem_new_tokens", str(a.mem_new_tokens), *(["--tiny"] if a.tiny else [])]
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               TORCHINDUCTOR_CACHE_DIR=str(Path(work_dir) / "inductor"))  # the first compile is a cold one
    why = None
    with open(job_log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=ROOT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            if rc:
                why = f"failed (exit {rc}): {last_error(job_log)}"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # its own process group: it and its checker workers
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            why = f"timed out: killed at its {timeout:.0f} s limit"
    with open(log, "a") as f:
        f.write(f"===== {job} =====\n{job_log.read_text(errors='replace')}\n")
    rows = json.loads(job_out.read_text()) if job_out.exists() else {}
    return rows, why


@contextlib.contextmanager
def output_to(path: Path):
    """This process's stdout and stderr, and those of every process it starts (train.py's answer checkers),
    into `path`: file descriptors 1 and 2, not only sys.stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_inline(a, job: str, work_dir: str, log: Path) -> tuple[dict, str | None]:
    rows: dict = {}
    why = None
    with output_to(log):
        print(f"===== {job} =====", flush=True)
        try:
            JOB_FN[job](a, Ctx(work_dir, rows, None))
        except BaseException as e:  # SystemExit from train.py's checks included
            if isinstance(e, KeyboardInterrupt):
                raise
            import traceback
            traceback.print_exc()
            why = f"failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
    free_memory()
    return rows, why


def main(argv=None):
    a = parse(argv)
    if a.tiny and not a.dry_run:  # toy shapes are all overhead: one thread beats two on a busy CPU (10x here)
        import torch
        torch.set_num_threads(1)
    if a.job:  # a child: one job, rows to --job_out
        JOB_FN[a.job](a, Ctx(a.work_dir, {}, a.job_out))
        return
    t0 = time.perf_counter()
    specs = row_specs(a)
    title = ("**GPU check** (`bench/gpu_check.py`" + (" --tiny: SMOKE RUN on toy shapes, NOT a measurement" if a.tiny
                                                        else "") + ")")
    if a.dry_run:
        table = [dict(s, status="", result="", values={}) for s in specs]
        meta = dict(title=title + ": rows only (--dry_run)", dry_run=True)
        print(markdown(meta, table), end="")
        write_out(a.out, meta, table)
        return
    import torch

    import rollout
    cuda = torch.cuda.is_available()
    isolate = cuda if a.isolate is None else a.isolate
    # a job run alone (--jobs step) has the whole budget, e.g. to rerun one that overran its share
    timeouts = dict(JOB_BUDGET) if not a.tiny and len(a.jobs) > 1 else {j: a.budget for j in JOBS}
    for spec in a.job_timeout:
        j, _, s = spec.partition("=")
        timeouts[j] = float(s)
    work_dir = tempfile.mkdtemp(prefix="gpu_check_")
    base = (a.out[: -len(Path(a.out).suffix)] if Path(a.out).suffix in (".json", ".md") else a.out) if a.out \
        else None
    log = Path(base + ".log") if base else Path(work_dir).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    results, job_s = {}, {}
    device = loading.describe_device("cuda" if cuda else "cpu")
    dtype = str(loading.choose_dtype(a.dtype)[0]).removeprefix("torch.")

    def report() -> tuple[dict, list[dict]]:
        table = [dict(s, **results.get(s["id"], dict(status="pending", result="pending"))) for s in specs]
        for r in table:
            r.setdefault("values", {})
        wall = time.perf_counter() - t0
        meta = dict(title=f"{title}: {device} | {dtype} | {versions()} | {time.strftime('%Y-%m-%d')} | {wall:.0f} s",
                    device=device, dtype=dtype, versions=versions(), date=time.strftime("%Y-%m-%d"), wall_s=wall,
                    job_s=job_s, budget_s=a.budget, isolated=isolate, tiny=a.tiny, log=str(log),
                    max_new_tokens=a.max_new_tokens, seqs=a.seqs)
        return meta, table

    try:
        for job in JOBS:
            ids = JOB_ROWS[job]
            if job not in a.jobs:
                results.update({i: dict(status="skipped", result="skipped: not run (--jobs)") for i in ids})
                continue
            left = a.budget - (time.perf_counter() - t0)
            timeout = min(timeouts[job], left)
            least = 0 if a.tiny else JOB_MIN[job]
            if timeout < max(least, 1):
                results.update({i: dict(status="skipped", result=f"skipped: {max(left, 0):.0f} s of the "
                                        f"{a.budget:.0f} s budget left; it needs ~{least} s (run it alone: "
                                        f"--jobs {job})") for i in ids})
                continue
            print(f"gpu_check: {job} (limit {timeout:.0f} s) ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            rows, why = run_child(a, job, timeout, work_dir, log) if isolate else run_inline(a, job, work_dir, log)
            job_s[job] = time.perf_counter() - t
            print(f"gpu_check: {job} done in {job_s[job]:.0f} s" + (f": {why}" if why else ""),
                  file=sys.stderr, flush=True)
            for i in ids:
                results[i] = rows.get(i) or dict(status="timed out" if why and why.startswith("timed out")
                                                 else "failed", result=why or "failed: the job emitted no row")
            write_out(a.out, *report())  # the table so far: a run stopped from outside keeps it
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    meta, table = report()
    print(markdown(meta, table), end="")
    write_out(a.out, meta, table)


if __name__ == "__main__":
    main()
