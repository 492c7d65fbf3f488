"""Answer extraction and checking (the training reward IS the evaluation metric), and held-out
evaluation of a policy.

    python evaluate.py --model embedded --data data/test.jsonl
    python evaluate.py --model embedded --adapter runs/default/checkpoint-10 --data data/test.jsonl

Reward (step 2 of the method): 1 if the extracted final answer equals the ground truth, else 0.
Extraction: the content of the last brace-matched \\boxed{...}; else "the answer is X"; else the
last number. Comparison: a cheap exact/numeric match first, then math-verify on both sides wrapped
in \\boxed{} in a worker process killed after a hard timeout (math-verify's own timeout uses
signals and does nothing outside the main thread). A timeout scores 0 and is counted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*([^\n$]+?)\s*\$?\s*(?:\.\s|\.$|\n|$)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces matched."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j].strip()
    return None  # unbalanced: the response was cut inside the box


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _normalize(s: str) -> str:
    s = re.sub(r"\\(left|right|!|,|;|\s)", "", s)
    s = s.replace("$", "").replace(" ", "")
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


def fast_equal(pred: str, gt: str) -> bool:
    """Exact match after whitespace/LaTeX-spacing normalisation, or equal plain numbers. Never a
    false positive; anything it cannot decide goes to math-verify."""
    a, b = _normalize(pred), _normalize(gt)
    if a == b:
        return True
    try:
        return float(a.replace(",", "")) == float(b.replace(",", ""))
    except ValueError:
        return False


def math_equal(pred: str, gt: str) -> bool:
    """math-verify on both sides wrapped in \\boxed{} (runs in the worker process)."""
    from math_verify import parse, verify
    gold = parse("\\boxed{" + gt + "}")
    answer = parse("\\boxed{" + pred + "}")
    return bool(gold) and bool(answer) and bool(verify(gold, answer))


# ---------------------------------------------------------------------------------------------
# Checker: persistent worker processes, each killed and replaced if it overruns the timeout
# ---------------------------------------------------------------------------------------------
def _die_with(parent: int):
    """End this process as soon as `parent` dies, by any signal, SIGKILL included. Linux sends it
    SIGKILL then (PR_SET_PDEATHSIG: when the parent's thread that started it ends, so start workers
    from a thread that outlives the checker, as train.py's main thread does); elsewhere, and as a
    fallback, a thread checks every second whether it has been handed to another parent."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no prctl
        pass
    # the parent may have died before prctl took effect
    if os.getppid() != parent:
        os._exit(0)

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def _worker(fd: int, parent: int):
    """A checker worker: a fresh interpreter (AnswerChecker._spawn) that answers (prediction, ground
    truth) pairs on the connection at file descriptor `fd` until it closes or `parent` dies."""
    # Ctrl-C reaches the whole process group; the trainer handles it and then ends its workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent)
    conn = Connection(fd)
    # import math-verify and load sympy's LaTeX parser (on first use) before any check's clock runs
    math_equal("1", "1")
    conn.send("ready")
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the parent closed its end, or died
            return
        if item is None:
            return
        try:
            conn.send(math_equal(*item))
        except Exception:  # a parser crash on odd input is a wrong answer, not a dead run
            conn.send(False)


class AnswerChecker:
    """`checker(responses, ground_truths) -> list[float]` of 0/1 rewards.

    `num_timeouts` counts checks killed at `timeout` seconds (scored 0). Workers are started
    lazily on first need and kept; `close()` (or garbage collection) ends them, and so does the
    death of this process, by any signal (`_die_with`). A worker is given work only once it has said
    it is ready (math-verify imported and warmed up, up to `startup_timeout` seconds), so its
    start-up, slow on a busy machine, never counts against a check's `timeout`.
    """

    def __init__(self, num_workers: int = 2, timeout: float = 10.0, startup_timeout: float = 120.0):
        self.num_workers, self.timeout, self.startup_timeout = num_workers, timeout, startup_timeout
        self.num_timeouts = 0
        self._workers: list[list] = []  # [subprocess.Popen, connection]

    def _spawn(self, n: int = 1) -> list[list]:
        """Start n workers together and return them once each has said it is ready."""
        # A fresh interpreter that imports this file and math-verify only (~60 MB). Not fork: a
        # forked worker maps the trainer's pages (its RSS ~ the trainer's). Not multiprocessing's
        # spawn or forkserver: their children re-run the main script (train.py: torch and all).
        started, here = [], os.path.dirname(os.path.abspath(__file__))
        for _ in range(n):
            mine, theirs = socket.socketpair()
            code = (f"import sys; sys.path.insert(0, {here!r}); import evaluate; "
                    f"evaluate._worker({theirs.fileno()}, {os.getpid()})")
            p = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()],
                                 stdin=subprocess.DEVNULL)
            theirs.close()
            started.append([p, Connection(mine.detach())])
        for p, conn in started:
            try:
                ready = conn.poll(self.startup_timeout) and conn.recv() == "ready"
            except EOFError:  # it died while importing
                ready = False
            if not ready:
                for q, c in started:
                    q.kill()
                    q.wait()
                    c.close()
                raise RuntimeError("the answer checker's worker did not start within "
                                   f"{self.startup_timeout:.0f} s (is math-verify installed? "
                                   "try: python -c 'import math_verify')")
        return started

    def __call__(self, responses: list[str], ground_truths: list[str]) -> list[float]:
        assert len(responses) == len(ground_truths)
        rewards = [0.0] * len(responses)
        todo = deque()
        for i, (resp, gt) in enumerate(zip(responses, ground_truths)):
            pred = extract_answer(resp)
            if pred is None or not str(gt).strip():
                continue
            if fast_equal(pred, str(gt)):
                rewards[i] = 1.0
            else:
                todo.append((i, pred, str(gt)))
        # up to num_workers workers, one per check (_spawn(n <= 0) starts none)
        self._workers += self._spawn(min(self.num_workers, len(todo)) - len(self._workers))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item index, start time)
        while todo or busy:
            for w in range(len(self._workers)):
                if w not in busy and todo:
                    i, pred, gt = todo.popleft()
                    try:
                        self._workers[w][1].send((pred, gt))
                    # it died while idle (killed, out of memory): a new one takes the check, and
                    # waiting for it is no other check's time
                    except OSError:
                        paused = self._replace(w)
                        busy = {v: (j, t + paused) for v, (j, t) in busy.items()}
                        self._workers[w][1].send((pred, gt))
                    busy[w] = (i, time.monotonic())
            now = time.monotonic()
            wait([self._workers[w][1] for w in busy],
                 timeout=max(0.0, min(t0 + self.timeout - now for _, t0 in busy.values())))
            for w in list(busy):
                i, t0 = busy[w]
                conn, paused = self._workers[w][1], 0.0
                if conn.poll():
                    try:
                        rewards[i] = float(conn.recv())
                    except EOFError:  # the worker died (e.g. out of memory): wrong, replace it
                        paused = self._replace(w)
                elif time.monotonic() - t0 >= self.timeout:
                    paused = self._replace(w)
                    self.num_timeouts += 1
                else:
                    continue
                del busy[w]
                # waiting for a new worker is no check's time
                busy = {v: (j, t + paused) for v, (j, t) in busy.items()}
        return rewards

    def _replace(self, w: int) -> float:
        """Kill worker w and put a ready one in its slot; returns the seconds that took."""
        t = time.monotonic()
        p, conn = self._workers[w]
        p.kill()
        p.wait()
        conn.close()
        self._workers[w] = self._spawn()[0]
        return time.monotonic() - t

    def close(self):
        for p, conn in self._workers:
            try:
                conn.send(None)
            except OSError:
                pass
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            conn.close()
        self._workers = []

    def __del__(self):
        self.close()


# ---------------------------------------------------------------------------------------------
# Benchmarks: where each comes from, and grading by row kind (math answer or multiple-choice letter)
# ---------------------------------------------------------------------------------------------
# name: (hub dataset, config, split, question column, answer column); None = only from a local file
BENCHMARKS = {
    "math500": ("HuggingFaceH4/MATH-500", None, "test", "problem", "answer"),
    "minerva": None,  # the paper's verl file (data_source "minerva"); no canonical hub copy
    "olympiadbench": None,  # likewise (data_source "olympiad_bench")
    "aime24": ("HuggingFaceH4/aime_2024", None, "train", "problem", "answer"),
    "amc23": ("zwhe99/amc23", None, "test", "question", "answer"),
    "aime25": ("yentinglin/aime_2025", None, "train", "problem", "answer"),
    "theoremqa": ("TIGER-Lab/TheoremQA", None, "test", "Question", "Answer"),
    # multiple choice: GPQA's rows built by _gpqa_rows below, MMLU-Pro's from its options
    "gpqa": ("Idavidrein/gpqa", "gpqa_diamond", "train", None, None),
    "mmlu_pro": ("TIGER-Lab/MMLU-Pro", None, "test", "question", "answer"),
}
VERL_SOURCES = {"math": "math500", "minerva": "minerva", "olympiad_bench": "olympiadbench",
                "aime": "aime24", "amc": "amc23"}


def _gpqa_rows(ds, seed: int) -> list[dict]:
    """GPQA stores the right answer apart from three wrong ones: shuffle them with a fixed seed
    per row."""
    import random

    import data
    rows = []
    for i, ex in enumerate(ds):
        options = [ex["Correct Answer"]] + [ex[f"Incorrect Answer {j}"] for j in (1, 2, 3)]
        order = random.Random(seed * 100003 + i).sample(range(4), 4)
        shuffled = data.lettered([options[j].strip() for j in order])
        rows.append(dict(question=ex["Question"].strip() + "\n\n" + shuffled,
                         answer="ABCD"[order.index(0)], solution=None, index=i, choice=True))
    return rows


def load_benchmark(name: str, file_rows: list[dict] | None, data_file: str = "",
                   seed: int = 0) -> list[dict]:
    """Rows of one benchmark: from the rows of a local file (`file_rows`, loaded once by the
    caller) — a verl parquet's rows whose data_source maps to `name`, or all rows of any other
    file — else from the benchmark's hub dataset (needs internet)."""
    import data
    if file_rows is not None:
        rows = file_rows
        if "data_source" in rows[0]:
            rows = [r for r in rows if VERL_SOURCES.get(r["data_source"], r["data_source"]) == name]
            if not rows:
                raise SystemExit(f"error: {data_file} has no rows of benchmark {name!r}")
        return rows
    if name not in BENCHMARKS:
        raise SystemExit(f"error: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    if BENCHMARKS[name] is None:
        raise SystemExit(f"error: {name} loads from the paper's verl file: "
                         "--data critique_grpo_eval.parquet")
    hub, config, split, q, a = BENCHMARKS[name]
    if name == "gpqa":
        import datasets
        return _gpqa_rows(datasets.load_dataset(hub, config, split=split), seed)
    return data.load_rows(f"{hub}:{config}" if config else hub, q, a, None, split=split)


def choice_letter(response: str) -> str | None:
    """The option letter a response settles on: its \\boxed{} or "answer is (X)" content, as
    a letter."""
    m = re.match(r"^\W*(?:\\text\{)?\(?([A-J])\)?(?:\W|$)", extract_answer(response) or "")
    return m.group(1) if m else None


def grade(rows: list[dict], responses: list[str], checker: AnswerChecker) -> list[float]:
    """Math rows through the answer checker (the training reward), multiple choice on the letter."""
    scores = [float(choice_letter(t) == r["answer"].strip().upper()) if r.get("choice") else None
              for r, t in zip(rows, responses)]
    math_idx = [i for i, s in enumerate(scores) if s is None]
    checked = checker([responses[i] for i in math_idx], [rows[i]["answer"] for i in math_idx])
    for i, s in zip(math_idx, checked):
        scores[i] = s
    return scores


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021):
    1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def summarize(rows: list[dict], scores: list[list[float]]) -> dict:
    """scores[j][i]: generation j of row i. pass@1 per run (mean +- std over runs), per row and per
    unique question (AIME is 8 copies and AMC 4 copies in the released file), and pass@n."""
    n = len(scores)
    per_run = [sum(run) / len(run) for run in scores]
    by_question: dict[str, list[float]] = {}
    for i, r in enumerate(rows):
        by_question.setdefault(r["question"], []).extend(run[i] for run in scores)
    mean = sum(per_run) / n
    pass_n = [pass_at_k(n, int(sum(run[i] for run in scores)), n) for i in range(len(rows))]
    return {"n": len(rows), "n_unique": len(by_question), "runs": n, "pass@1": mean,
            "pass@1_std": (sum((x - mean) ** 2 for x in per_run) / max(n - 1, 1)) ** 0.5,
            "pass@1_unique": sum(sum(v) / len(v) for v in by_question.values()) / len(by_question),
            f"pass@{n}": sum(pass_n) / len(rows)}


def table(results: dict[str, dict]) -> str:
    n = next(iter(results.values()))["runs"]
    lines = [f"| benchmark | rows | unique | pass@1 (mean ± std over {n}) "
             f"| pass@1 per unique question | pass@{n} |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['n']} | {r['n_unique']} "
                     f"| {100 * r['pass@1']:.2f} ± {100 * r['pass@1_std']:.2f} "
                     f"| {100 * r['pass@1_unique']:.2f} | {100 * r[f'pass@{n}']:.2f} |")
    avg = lambda key: 100 * sum(r[key] for r in results.values()) / len(results)  # noqa: E731
    lines.append(f"| **average** | | | {avg('pass@1'):.2f} | {avg('pass@1_unique'):.2f} "
                 f"| {avg(f'pass@{n}'):.2f} |")
    return "\n".join(lines)


def evaluate_accuracy(model, tokenizer, rows: list[dict], checker: AnswerChecker, *,
                      max_new_tokens: int, **gen_kw) -> tuple[float, list[dict]]:
    """Greedy pass@1 on rows (train.py's held-out evaluation); returns accuracy and one record per
    row. gen_kw: rollout.generate's batch_size / merge_lora / static_cache."""
    import rollout
    prompts = [rollout.question_ids(tokenizer, r["question"]) for r in rows]
    responses = rollout.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 temperature=0, desc="eval", **gen_kw)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    scores = grade(rows, texts, checker)
    records = [record(r, t, c) for r, t, c in zip(rows, texts, scores)]
    return sum(scores) / max(len(scores), 1), records


def record(row: dict, response: str, correct: float) -> dict:
    """One saved generation: what was asked, said, extracted, expected, and the verdict."""
    extracted = choice_letter(response) if row.get("choice") else extract_answer(response)
    return {"question": row["question"], "response": response, "ground_truth": row["answer"],
            "correct": bool(correct), "extracted": extracted}


def main(argv=None):
    import rollout
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=rollout.EMBEDDED_MODEL,
                    help="hub name, local dir, or 'embedded'")
    ap.add_argument("--adapter", help="a PEFT adapter dir (e.g. runs/default/checkpoint-10)")
    ap.add_argument("--benchmarks", help=f"comma-separated, from {', '.join(BENCHMARKS)}; default: "
                    "every benchmark in --data, or the file itself as one benchmark")
    ap.add_argument("--data", help="a local file: the verl parquet (rows by data_source) or any "
                    "JSONL/parquet with question/answer (default: data/test.jsonl)")
    ap.add_argument("--predictions", help="re-grade this JSONL of {index, response} (no model)")
    ap.add_argument("--runs", type=int, default=3,
                    help="generations per question; pass@1 is their mean")
    ap.add_argument("--samples", type=int, help="pass@k: k sampled generations per question "
                    "(sets --runs k; temperature 0.6 unless given)")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="0 = greedy (the paper); pass@k: 0.6")
    ap.add_argument("--top_p", type=float, default=0.95,
                    help="nucleus sampling when temperature > 0")
    ap.add_argument("--limit", type=int, help="the first N rows of each benchmark")
    ap.add_argument("--max_new_tokens", type=int, default=1024)
    ap.add_argument("--batch_size", type=int, default=0,
                    help="sequences per generate call (0 = by memory)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0, help="sampling and GPQA option order")
    ap.add_argument("--output_dir", default="eval_results",
                    help="results.json and generations.jsonl go here")
    args = ap.parse_args(argv)
    if args.samples:
        args.runs = args.samples
        args.temperature = args.temperature if args.temperature > 0 else 0.6
    if args.runs < 1 or args.batch_size < 0 or args.max_new_tokens < 1:
        raise SystemExit("error: --runs and --max_new_tokens must be >= 1, --batch_size >= 0")
    if args.data is None and args.benchmarks is None:
        args.data = "data/test.jsonl"
    import data
    file_rows = data.load_rows(args.data) if args.data else None
    if file_rows is None or args.benchmarks is not None:
        names = args.benchmarks.split(",")
    elif "data_source" in file_rows[0]:  # every benchmark the file holds
        names = list(dict.fromkeys(VERL_SOURCES.get(r["data_source"], r["data_source"])
                                   for r in file_rows))
    else:  # the file itself is one benchmark
        names = [os.path.splitext(os.path.basename(args.data))[0]]
    bench = {name: load_benchmark(name, file_rows, args.data, args.seed)[: args.limit]
             for name in names}

    checker = AnswerChecker()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.predictions:  # re-grade generations: {"index": row index in --data, "response": ...}
        preds: dict[int, list[str]] = {}
        for line in open(args.predictions):
            p = json.loads(line)
            preds.setdefault(int(p["index"]), []).append(p["response"])
        generations = {}
        for name, rows in bench.items():  # run j = each row's j-th prediction, or "" (scores 0)
            n = max([len(preds.get(r["index"], [])) for r in rows] + [1])
            padded = [preds.get(r["index"], []) + [""] * n for r in rows]
            generations[name] = [[ps[j] for ps in padded] for j in range(n)]
    else:
        import torch
        torch.manual_seed(args.seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tok = rollout.load_model_and_tokenizer(args.model, dtype=args.dtype, device=device)
        if args.adapter:  # merged while generating where it can be
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, args.adapter)
        # one length-sorted generate call per run over all benchmarks' prompts, split back after
        prompts = [rollout.question_ids(tok, r["question"])
                   for rows in bench.values() for r in rows]
        runs = []
        for j in range(args.runs):
            if args.temperature <= 0 and runs:  # greedy repeats itself exactly: reuse run 0
                runs.append(runs[0])
                continue
            ids = rollout.generate(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature, top_p=args.top_p,
                                   batch_size=args.batch_size, desc=f"run {j + 1}/{args.runs}",
                                   merge_lora=True, static_cache=torch.cuda.is_available())
            runs.append(tok.batch_decode(ids, skip_special_tokens=True))
        generations, offset = {}, 0
        for name, rows in bench.items():
            generations[name] = [run[offset: offset + len(rows)] for run in runs]
            offset += len(rows)
    results, t0 = {}, time.monotonic()
    with open(out / "generations.jsonl", "w") as f:
        for name, rows in bench.items():
            scores = [grade(rows, run, checker) for run in generations[name]]
            results[name] = summarize(rows, scores)
            for j, (run, sc) in enumerate(zip(generations[name], scores)):
                for r, t, c in zip(rows, run, sc):
                    entry = {"benchmark": name, "index": r["index"], "run": j, **record(r, t, c)}
                    f.write(json.dumps(entry) + "\n")
    results_json = {"model": args.model, "adapter": args.adapter, "predictions": args.predictions,
                    "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                    "checker_timeouts": checker.num_timeouts, "benchmarks": results}
    (out / "results.json").write_text(json.dumps(results_json, indent=2))
    print(table(results))
    print(f"graded in {time.monotonic() - t0:.1f}s; {checker.num_timeouts} checker timeouts "
          f"(scored 0); wrote {out / 'results.json'} and {out / 'generations.jsonl'}")
    checker.close()
    return results


if __name__ == "__main__":
    main()
