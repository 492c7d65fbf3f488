"""Dataset loading: one record format for every source.

A row is {"question": str, "answer": str, "solution": str | None, "index": position in the source},
plus "choice": True for multiple choice (an `options` column: lettered into the question, the
answer is the letter) and "data_source" for verl files. Sources: a local .jsonl / .json / .parquet
file, the verl parquet format (chat `prompt` + `reward_model.ground_truth`, as in the released
Critique-GRPO files), or a hub dataset name (`name` or `name:config`, needs internet).

Bad input is one line naming the file and the line (JSONL) or row (from 1), never a traceback: a
line that is not JSON, a question that is not text, an empty answer. A hub dataset's rows with an
empty question or answer are skipped with a counted warning instead (its rows are not yours to fix).
"""
from __future__ import annotations

import json
import os
import re

_VERL_SUFFIX = re.compile(r"\s*Please reason step by step, and put your final answer within "
                          r"\\boxed\{\}\.?\s*$")


def lettered(options: list[str]) -> str:
    """'A) first\nB) second ...' (the format multiple-choice benchmarks are presented in)."""
    return "\n".join(f"{chr(65 + i)}) {o}" for i, o in enumerate(options))


def _read_json(source: str) -> tuple[list[dict], list[str]]:
    """The rows of a .jsonl file (one object per line, blank lines skipped) or of a .json file (a
    list of objects, or one object per line), and where each row is in the file ("line 7")."""
    try:
        with open(source, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise SystemExit(f"error: {source} line {line}: not UTF-8 text (is it JSON?)") from None
    except OSError as e:
        raise SystemExit(f"error: cannot read {source} ({e.strerror})") from None
    if source.lower().endswith(".json"):
        try:
            whole = json.loads(text)
        except ValueError:  # not one JSON document: one object per line, read below
            whole = None
        if isinstance(whole, dict):
            raise SystemExit(f"error: {source} holds one JSON object; expected a list of objects "
                             "or one object per line")
        if isinstance(whole, list):
            for i, row in enumerate(whole):
                if not isinstance(row, dict):
                    raise SystemExit(f"error: {source} item {i + 1}: not a JSON object "
                                     f"but {type(row).__name__}")
            return whole, [f"item {i + 1}" for i in range(len(whole))]
    rows, places = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            raise SystemExit(f"error: {source} line {n}: not valid JSON ({why})") from None
        if not isinstance(row, dict):
            raise SystemExit(f"error: {source} line {n}: not a JSON object but "
                             f"{type(row).__name__}")
        rows.append(row)
        places.append(f"line {n}")
    if not rows:
        raise SystemExit(f"error: data file {source} is empty")
    return rows, places


def _read(source: str, split: str) -> tuple[list[dict], list[str], list[str] | None]:
    """(rows, column names, where each row is); where is None for a hub dataset."""
    if os.path.isdir(source):
        raise SystemExit(f"error: {source} is a directory; expected a .jsonl, .json or "
                         ".parquet file")
    if os.path.exists(source):
        if os.path.getsize(source) == 0:
            raise SystemExit(f"error: data file {source} is empty")
        ext = source.rsplit(".", 1)[-1].lower()
        if ext in ("jsonl", "json"):
            rows, places = _read_json(source)
            return rows, list(dict.fromkeys(k for r in rows for k in r)), places
        if ext != "parquet":
            raise SystemExit(f"error: {source}: expected a .jsonl, .json or .parquet file")
        import pyarrow
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(source)
        except (pyarrow.ArrowException, OSError, ValueError) as e:
            raise SystemExit(f"error: {source}: not a readable parquet file ({e})") from None
        return table.to_pylist(), table.column_names, [f"row {i + 1}" for i in range(len(table))]
    if source.lower().endswith((".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt")):
        raise SystemExit(f"error: data file {source} does not exist")
    import datasets
    datasets.disable_progress_bars()
    name, _, config = source.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    # not on the hub, no internet, no such config or split: the hub libraries raise many kinds
    except Exception as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SystemExit(f"error: {source}: no such local file, nor a hub dataset "
                         f"({why})") from None
    return ds, ds.column_names, None


def _not_text(value, key: str) -> str | None:
    """Why a question or answer is not text, or None (a number is fine: it becomes text)."""
    if value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return None
    return f"{key!r} is a {type(value).__name__}, not text"


def load_rows(source: str, question_key: str = "question", answer_key: str = "answer",
              solution_key: str | None = "solution", split: str = "train") -> list[dict]:
    """Read `source` into rows. A local file's row with no question or answer is an error naming it;
    a hub dataset's is dropped (counted)."""
    ds, cols, places = _read(source, split)
    verl = "prompt" in cols and "reward_model" in cols and question_key not in cols
    if not verl and (question_key not in cols or answer_key not in cols):
        raise SystemExit(f"error: {source} has columns {cols}; name the question and answer "
                         f"columns with --question_key and --answer_key (now {question_key!r}, "
                         f"{answer_key!r})")
    rows, dropped = [], 0
    for index, ex in enumerate(ds):
        where = f"{source} {places[index]}" if places else f"{source} row {index + 1}"
        if verl:  # the user turn minus the instruction we append ourselves
            try:
                q = [m for m in ex["prompt"] if m["role"] == "user"][-1]["content"]
                a, sol = ex["reward_model"]["ground_truth"], None
            except (KeyError, TypeError, IndexError):
                raise SystemExit(f"error: {where}: a verl row needs a user turn in 'prompt' and "
                                 "'reward_model' with a 'ground_truth'") from None
            q = _VERL_SUFFIX.sub("", q) if isinstance(q, str) else q
            keys = ("prompt", "ground_truth")
        else:
            q, a = ex.get(question_key), ex.get(answer_key)
            sol = ex.get(solution_key) if solution_key else None
            keys = (question_key, answer_key)
        wrong = _not_text(q, keys[0]) or _not_text(a, keys[1])
        if wrong:
            raise SystemExit(f"error: {where}: {wrong}")
        # no question or answer: an error in a file you can fix; a hub dataset's row is skipped
        empty = [k for k, v in zip(keys, (q, a)) if v is None or not str(v).strip()]
        if empty and places is not None:
            raise SystemExit(f"error: {where}: {empty[0]!r} is missing or empty")
        if empty:
            dropped += 1
            continue
        q, a = str(q).strip(), str(a).strip()
        row = {"question": q, "answer": a, "solution": sol, "index": index}
        # multiple choice: lettered options, graded on the letter
        if "options" in cols and ex.get("options"):
            row.update(question=q + "\n\n" + lettered(ex["options"]), choice=True)
        rows.append({**row, "data_source": ex["data_source"]} if verl else row)
    if dropped:
        print(f"warning: {source}: skipped {dropped} rows with an empty question or answer")
    if not rows:
        raise SystemExit(f"error: {source} holds no usable rows")
    return rows
