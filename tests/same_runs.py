"""A refactor proves itself: short tiny runs give the same files before and after it.

    python tests/same_runs.py HEAD~1          # the runs on that revision and on the working tree, compared
    python tests/same_runs.py record DIR      # only the working tree's runs, into DIR
    python tests/same_runs.py compare A B     # two recorded directories

Seven 3-step runs of a tiny random Qwen2 (tests/conftest.py) on the embedded task's generator: the default,
`--critique_type none`, `--baseline sft`, `--no-lora --log_kl`, `--updates_per_batch 2`, two processes (gloo)
and ZeRO-3 on two processes (gloo). Compared: every metrics.jsonl value but times, the eval files, the samples,
config.json, and every tensor of the last checkpoint (weights or adapter, optimizer state, RNG states), all
exactly. One thread per process, so float32 sums come out in one order. Takes ~3-5 minutes per revision on 2
cores; not part of the suite (it needs a second revision), run it before committing a change meant to keep
behaviour.
"""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--eval_limit", "2", "--max_new_tokens", "12", "--prompts_per_step", "2", "--n_init", "4",
        "--micro_batch_tokens", "300", "--critic_max_new_tokens", "12", "--lr", "1e-2", "--samples_every", "1",
        "--eval_every", "1", "--save_every", "3", "--max_steps", "3", "--dtype", "float32"]
RUNS = {  # name: (engine: None = one process, "ddp", "zero3"; flags)
    "default": (None, []),
    "grpo": (None, ["--critique_type", "none"]),
    "sft": (None, ["--baseline", "sft"]),
    "full_kl": (None, ["--no-lora", "--log_kl"]),
    "two_updates": (None, ["--updates_per_batch", "2"]),
    "two_processes": ("ddp", []),
    "zero3": ("zero3", []),
}


def make_inputs(d: Path):
    """The tiny model and data every revision trains on (made once, by the working tree's conftest)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from conftest import make_model, make_tokenizer
    from data.make_data import make_splits
    tok = make_tokenizer()
    make_model(tok).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    train, test = make_splits(8, 2, seed=0)
    for name, rows in (("train", train), ("test", test)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def record(code: Path, inputs: Path, out: Path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(code),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for name, (engine, flags) in RUNS.items():
        argv = ["train.py", "--model", str(inputs / "model"), "--train_data", str(inputs / "train.jsonl"),
                "--eval_data", str(inputs / "test.jsonl"), "--output_dir", str(out / name), *TINY, *flags]
        if engine:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = str(s.getsockname()[1])
            how = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"] \
                if engine == "ddp" else ["--config_file", f"configs/{engine}.yaml"]
            argv = ["-m", "accelerate.commands.launch", *how, "--num_processes", "2", "--main_process_port", port,
                    *argv]
        p = subprocess.run([sys.executable, *argv], cwd=code, env=env, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"{name} failed in {code}:\n{p.stdout[-2000:]}{p.stderr[-4000:]}")
        print(f"  {name}: done", flush=True)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(a: Path, b: Path) -> list[str]:
    import torch
    from safetensors.torch import load_file
    diffs = []
    for name in RUNS:
        ra, rb = a / name, b / name
        files = sorted(p.relative_to(ra) for p in ra.rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(rb) for p in rb.rglob("*") if p.is_file())
        if files != files_b:
            diffs.append(f"{name}: files differ: {set(map(str, files)) ^ set(map(str, files_b))}")
            continue
        for f in files:
            fa, fb = ra / f, rb / f
            if f.suffix == ".jsonl":
                la = [json.loads(x) for x in open(fa)]
                lb = [json.loads(x) for x in open(fb)]
                if len(la) != len(lb):
                    diffs.append(f"{name}/{f}: {len(la)} vs {len(lb)} lines")
                for x, y in zip(la, lb):
                    if list(x) != list(y):
                        diffs.append(f"{name}/{f} step {x.get('step')}: keys {list(x)} vs {list(y)}")
                    for k in x:
                        if not (k.startswith("time/") or k == "tokens_per_s") and not same(x[k], y.get(k)):
                            diffs.append(f"{name}/{f} step {x.get('step')}: {k} {x[k]!r} vs {y.get(k)!r}")
            elif f.name == "config.json" and f.parent == Path("."):
                ca, cb = json.loads(fa.read_text()), json.loads(fb.read_text())
                for path in ("model", "train_data", "eval_data", "output_dir"):  # where each ran
                    ca.pop(path), cb.pop(path)
                if ca != cb:
                    keys = sorted(k for k in {*ca, *cb} if ca.get(k, "(absent)") != cb.get(k, "(absent)"))
                    diffs.append(f"{name}/{f}: " + ", ".join(
                        f"{k} {ca.get(k, '(absent)')!r} vs {cb.get(k, '(absent)')!r}" for k in keys))
            elif f.suffix == ".safetensors":
                ta, tb = load_file(fa), load_file(fb)
                if ta.keys() != tb.keys() or any(not torch.equal(ta[k], tb[k]) for k in ta):
                    diffs.append(f"{name}/{f}: tensors differ")
            elif f.suffix == ".pt":
                if not equal_objects(torch.load(fa, weights_only=False), torch.load(fb, weights_only=False)):
                    diffs.append(f"{name}/{f}: differs")
    return diffs


def equal_objects(x, y) -> bool:
    import numpy as np
    import torch
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and np.array_equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(equal_objects(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(equal_objects(u, v) for u, v in zip(x, y))
    if hasattr(x, "__dict__") and not isinstance(x, type):  # e.g. DeepSpeed's loss scaler
        return type(x) is type(y) and equal_objects(vars(x), vars(y))
    return same(x, y)


def main(argv):
    if argv[:1] == ["record"]:
        out = Path(argv[1])
        with tempfile.TemporaryDirectory() as tmp:
            make_inputs(Path(tmp))
            record(ROOT, Path(tmp), out)
        return
    if argv[:1] == ["compare"]:
        diffs = compare(Path(argv[1]), Path(argv[2]))
    else:
        rev = argv[0] if argv else "HEAD"
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            make_inputs(tmp)
            (tmp / "code").mkdir()
            archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp / "code")], input=archive, check=True)
            print(f"{rev}:", flush=True)
            record(tmp / "code", tmp, tmp / "before")
            print("working tree:", flush=True)
            record(ROOT, tmp, tmp / "after")
            diffs = compare(tmp / "before", tmp / "after")
            shutil.rmtree(tmp / "code")
    print("\n".join(diffs) if diffs else f"same: {len(RUNS)} runs, every value and tensor equal (times aside)")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
