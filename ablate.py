"""Run a grid of train.py arms x seeds, one run per directory, resumable.

    python ablate.py --arms dr_grpo,cg_gt,cg_indicative --seeds 0,1,2 --grid_dir runs/grid
    python ablate.py --arms grpo,my_arm --arm "my_arm=--critique_type indicative --lr 3e-4" --max_steps 20
    python ablate.py --arms dr_grpo,cg_gt --seeds 0,1,2,3 --gpus 0,1,2,3     # 4 runs side by side, one per GPU
    python ablate.py --arms dr_grpo,cg_gt --seeds 0-7 --gpus 0,0,0,0         # 4 at a time sharing GPU 0

An arm is a name and a set of train.py flags (PRESETS below, --arm NAME=FLAGS, or --arms_file with
one `NAME=FLAGS` per line). Any flag ablate.py does not know (--model, --max_steps, ...) goes to every
run. Run k of arm A lives in <grid_dir>/A/seed<k>/ (train.py's output_dir: config.json, metrics.jsonl,
eval-<step>.jsonl, checkpoints), its console output in <grid_dir>/A/seed<k>.log. A run that finished holds DONE and is skipped when the grid
is started again; one that was interrupted after a checkpoint continues with --resume, one interrupted
before any checkpoint starts over. Summarise a grid with report.py.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from support.checkpoints import latest_checkpoint  # the one rule for "a finished checkpoint" (not a half-written .tmp)

# The paper's rows that fit one node (its baselines and ablations, docs/algorithm.md). Flags are
# train.py's.
PRESETS: dict[str, str] = {
    # no critique, no refinement
    "grpo": "--critique_type none --aggregation seq_mean --scale_adv_by_std",  # 1/|y| and std scaling
    "dr_grpo": "--critique_type none",  # our loss without refinements: constant normaliser, no std
    "r1_grpo_kl": "--critique_type none --aggregation seq_mean --scale_adv_by_std --kl_coef 0.04",
    # Critique-GRPO critique types (default: indicative with ground truth, one refinement per all-wrong group)
    "cg_gt": "--critique_type indicative_gt",
    "cg_indicative": "--critique_type indicative",
    "cg_cot": "--critique_type cot",    # needs --critic_model DIR or --critic_base_url URL
    "cg_self": "--critique_type self",
    "cg_w2s": "--critique_type indicative_gt",  # weak-to-strong: add --refiner_model WEAKER_MODEL
    "expert": "--critique_type expert",  # LUFFY-style: the reference solution joins the group
    # refinement selection, shaping, scope and initial:refined ratio (group of 8)
    "cg_random": "--selection random",
    "cg_no_shaping": "--gamma none",
    "cg_wrong": "--refine_scope wrong",
    "cg_ratio_7_1": "--n_refine 1",
    "cg_ratio_3_1": "--n_refine 2",
    "cg_ratio_1_1": "--n_refine 4",
    # supervised baselines in the same loop (token-mean NLL of chosen texts)
    "sft": "--baseline sft",
    "raft": "--baseline raft",
    "refine_ft": "--baseline refine_ft",
    "critique_ft": "--baseline critique_ft --critique_type cot",  # needs --critic_model DIR or --critic_base_url
}
# Named comparisons: --arms accepts these names too
GROUPS: dict[str, str] = {
    "paper_critiques": "dr_grpo,cg_gt,cg_indicative,cg_no_shaping",   # the README's Results grid
    "critique_or_answer": "cg_indicative,cg_gt,expert",  # is the gain the critique, or just a correct answer?
    "baselines": "sft,raft,refine_ft",
}
NEEDS = {"cg_w2s": ("--refiner_model",)}  # flags a preset cannot run without (train.py checks cot itself)


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' or '0-2,7'."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def read_arms(args) -> dict[str, list[str]]:
    defined = {name: flags.split() for name, flags in PRESETS.items()}
    lines = list(args.arm)
    if args.arms_file:
        lines += [ln.strip() for ln in Path(args.arms_file).read_text().splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#")]
    for line in lines:
        name, eq, flags = line.partition("=")
        if not eq or not name.strip():
            raise SystemExit(f"error: an arm is NAME=FLAGS, got {line!r}")
        defined[name.strip()] = flags.split()
    names = [a for a in args.arms.split(",") if a] if args.arms else [ln.partition("=")[0].strip() for ln in lines]
    names = list(dict.fromkeys(n for a in names for n in (GROUPS[a].split(",") if a in GROUPS else [a])))
    unknown = [a for a in names if a not in defined]
    if unknown:
        raise SystemExit(f"error: unknown arm(s) {', '.join(unknown)}; presets: {', '.join(PRESETS)}; "
                         "define one with --arm NAME=FLAGS")
    return {a: defined[a] for a in names}


def run_command(run_dir: Path, arm_flags: list[str], common: list[str], seed: int) -> list[str]:
    """train.py's command line for one run: what was finished is skipped by the caller; a run with a
    checkpoint resumes; anything else in the directory (a start killed before its first checkpoint) is replaced."""
    resume = latest_checkpoint(run_dir) is not None
    return [sys.executable, "train.py", *common, *arm_flags, "--seed", str(seed), "--output_dir", str(run_dir),
            "--resume" if resume else "--overwrite"]


def final_accuracy(run_dir: Path) -> dict[str, tuple[float, float]]:
    """{eval set: (first eval's accuracy, last eval's)} from metrics.jsonl."""
    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval/accuracy" in r]
    if not evals:
        return {}
    sets = [k.split("/")[1] for k in evals[-1] if k.startswith("eval/") and k.count("/") == 2]
    return {s: (evals[0][f"eval/{s}/accuracy"], evals[-1][f"eval/{s}/accuracy"]) for s in sets}


def evaluate_run(run_dir: Path, eval_args: list[str]):
    """benchmark.py on a finished run's last checkpoint, once (a run already scored is skipped)."""
    if not (run_dir / "DONE").exists() or (run_dir / "evaluate" / "results.json").exists():
        return
    cfg = json.loads((run_dir / "config.json").read_text())
    last = latest_checkpoint(run_dir)
    weights = ["--model", cfg["model"], "--adapter", str(last)] if cfg["lora"] else ["--model", str(last)]
    cmd = [sys.executable, "benchmark.py", *weights, "--dtype", cfg["dtype"],
           "--output_dir", str(run_dir / "evaluate"), *eval_args]
    print(f"[{run_dir.parent.name} seed {run_dir.name.removeprefix('seed')}] evaluate: {' '.join(cmd[1:])}", flush=True)
    with open(run_dir.with_suffix(".log"), "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent)
    if rc != 0:
        print(f"  benchmark.py FAILED (exit {rc}): see {run_dir.with_suffix('.log')}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="other flags go to every train.py run")
    ap.add_argument("--arms", default="", help=f"comma list of arm names (presets: {', '.join(PRESETS)}) or "
                                               f"groups of them ({', '.join(f'{g}={a}' for g, a in GROUPS.items())})")
    ap.add_argument("--arm", action="append", default=[], help="define an arm: NAME=FLAGS (repeatable)")
    ap.add_argument("--arms_file", default=None, help="a file of NAME=FLAGS lines ('#' comments)")
    ap.add_argument("--seeds", default="0,1,2", help="'0,1,2' or '0-4'")
    ap.add_argument("--grid_dir", default="runs/grid")
    ap.add_argument("--gpus", default="", help="comma list of CUDA device ids, one run at a time on each entry; "
                                               "repeat an id to share a GPU ('0,0'); empty = one run at a time")
    ap.add_argument("--evaluate", default=None, metavar="ARGS",
                    help="after the runs, score each run's last checkpoint with benchmark.py ARGS (e.g. \"--data "
                         "critique_grpo_eval.parquet --max_new_tokens 1024\"); results in "
                         "<run>/evaluate/, read by report.py. The held-out sets train.py scores need nothing")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run when several run at once "
                                                           "(0 = cores / runs)")
    args, common = ap.parse_known_args(argv)
    arms = read_arms(args)
    for a in arms:
        if a in NEEDS and not any(c.split("=")[0] in NEEDS[a] for c in common + arms[a]):
            raise SystemExit(f"error: arm {a} needs {' or '.join(NEEDS[a])}")
    grid = Path(args.grid_dir)
    todo = [(a, s) for s in parse_seeds(args.seeds) for a in arms]  # seed-major: a partial grid stays balanced
    slots = args.gpus.split(",") if args.gpus else [None]
    threads = args.threads or max(1, (os.cpu_count() or 1) // len(slots))
    grid.mkdir(parents=True, exist_ok=True)
    (grid / "grid.json").write_text(json.dumps({"arms": {a: " ".join(f) for a, f in arms.items()},
                                                "common": " ".join(common), "seeds": parse_seeds(args.seeds)}, indent=1))
    lock, queue, failed, running, stop = threading.Lock(), list(todo), [], set(), threading.Event()
    t0 = time.perf_counter()

    def worker(slot: str | None):
        while True:
            with lock:
                if not queue or stop.is_set():
                    return
                arm, seed = queue.pop(0)
            run_dir = grid / arm / f"seed{seed}"
            if (run_dir / "DONE").exists():
                print(f"[{arm} seed {seed}] finished earlier, skipped", flush=True)
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = run_command(run_dir, arms[arm], common, seed)
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            if len(slots) > 1:
                env["OMP_NUM_THREADS"] = str(threads)
            print(f"[{arm} seed {seed}] start{' on GPU ' + slot if slot is not None else ''}: "
                  f"{' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            with open(run_dir.with_suffix(".log"), "a") as log:  # beside the run: --overwrite empties run_dir
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=Path(__file__).resolve().parent)
                running.add(proc)
                rc = proc.wait()
                running.discard(proc)
            spent = run_dir / "ablate_wall.json"  # wall of earlier, interrupted attempts that this one resumed
            wall = time.perf_counter() - start + (json.loads(spent.read_text())["wall_s"] if spent.exists() else 0.0)
            if run_dir.exists():
                spent.write_text(json.dumps({"wall_s": wall}))
            if stop.is_set():
                print(f"[{arm} seed {seed}] interrupted (exit {rc}); the next start continues it", flush=True)
                continue
            if rc != 0:
                failed.append((arm, seed))
                print(f"[{arm} seed {seed}] FAILED (exit {rc}) after {wall:.0f}s: see {run_dir.with_suffix('.log')}", flush=True)
                continue
            (run_dir / "DONE").write_text(json.dumps({"wall_s": wall}))
            acc = " | ".join(f"{s} {a:.3f} -> {b:.3f}" for s, (a, b) in final_accuracy(run_dir).items())
            print(f"[{arm} seed {seed}] done in {wall:.0f}s: {acc}", flush=True)

    def on_sigterm(signum, frame):  # a scheduler's SIGTERM: stop like Ctrl-C, each run saves its checkpoint
        for p in list(running):
            p.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    threads_ = [threading.Thread(target=worker, args=(s,)) for s in slots]
    for th in threads_:
        th.start()
    # Wait by polling: a Thread.join interrupted by Ctrl-C may return early the next time (CPython), and the
    # grid must not exit while a run is still writing its checkpoint.
    alive = lambda: any(th.is_alive() for th in threads_)
    try:
        while alive():
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C reached the runs too (one process group): they save a checkpoint and exit
        stop.set()
        print("interrupted: waiting for the running runs to save a checkpoint ...", flush=True)
        while alive():
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:  # another Ctrl-C: the runs are saving; keep waiting for them
                pass
        print(f"grid {grid} stopped; run the same command again to continue it", flush=True)
        return 130
    if args.evaluate is not None:
        for arm, seed in todo:
            evaluate_run(grid / arm / f"seed{seed}", args.evaluate.split())
    print(f"grid {grid}: {len(todo) - len(failed)}/{len(todo)} runs finished in {time.perf_counter() - t0:.0f}s; "
          f"summarise with: python report.py {grid}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
