"""The paper's benchmarks from the command line: a model (and adapter) or saved predictions, graded
by evaluate.py's checker (math) or by option letter (multiple choice); pass@1 over runs, pass@k.

    python benchmark.py --model embedded --data data/test.jsonl
    python benchmark.py --model embedded --adapter runs/default/checkpoint-10 --data data/test.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from evaluate import grade, record
from support.checker import AnswerChecker

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


def main(argv=None):
    import rollout
    from support import models
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=models.EMBEDDED_MODEL,
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
        model, tok = models.load_model_and_tokenizer(args.model, dtype=args.dtype, device=device)
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
