"""The embedded task generator and the dataset loader."""
import json
import re
from pathlib import Path

import pytest

import data
from data.make_data import FAMILIES, FAMILY_OP, REPHRASED_TEMPLATES, TRAIN_TEMPLATES, make_rephrased, make_splits

DATA = Path(__file__).resolve().parents[1] / "data"


def test_committed_files_are_what_the_generator_writes():
    train, test = make_splits(200, 30, seed=0)
    assert [json.loads(x) for x in open(DATA / "train.jsonl")] == train
    assert [json.loads(x) for x in open(DATA / "test.jsonl")] == test
    assert [json.loads(x) for x in open(DATA / "test_rephrased.jsonl")] == make_rephrased(20, seed=0)


def _recomputed(row: dict, templates: dict) -> int:
    """The answer worked out again from the question, by matching the question against its template."""
    t = templates[row["family"]][row["template"]]
    op, text = t if row["family"] == "story" else (FAMILY_OP[row["family"]], t)
    parts = re.split(r"(\{\w+\})", text)  # literal text and {placeholders}, alternating
    pattern = "".join(f"(?P<{p[1]}>[0-9]+)" if p in ("{a}", "{b}", "{c}") else ".+?" if p.startswith("{")
                      else re.escape(p) for p in parts)
    m = re.fullmatch(pattern, row["question"])
    assert m, (pattern, row["question"])
    a, b = int(m["a"]), int(m["b"])
    return {"+": a + b, "-": a - b, "x": a * b}[op] if op != "++" else a + b + int(m["c"])


def test_no_test_question_is_trained_on_and_every_answer_is_right():
    train, test = make_splits(200, 30, seed=0)
    rephrased = make_rephrased(20, seed=0)
    assert not {r["question"] for r in train} & {r["question"] for r in test + rephrased}
    assert [sum(r["family"] == f for r in test) for f in FAMILIES] == [30] * 5
    assert [sum(r["family"] == f for r in rephrased) for f in FAMILIES] == [20] * 5
    for rows, templates in ((train + test, TRAIN_TEMPLATES), (rephrased, REPHRASED_TEMPLATES)):
        for r in rows:
            assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}.")
            assert _recomputed(r, templates) == int(r["answer"]), r
            assert all(1 <= int(n) <= 18 for n in re.findall(r"[0-9]+", r["question"])), r  # single digits, a - b < 19
        for f in FAMILIES:  # every phrasing is used
            assert {r["template"] for r in rows if r["family"] == f} == set(range(len(templates[f]))), f


def test_rephrased_templates_are_never_training_ones():
    """The rephrased set tests transfer: none of its sentence patterns, names or objects is in training."""
    def skeleton(t):
        return re.sub(r"\{\w+\}", "_", t if isinstance(t, str) else t[1])
    train = {skeleton(t) for ts in TRAIN_TEMPLATES.values() for t in ts}
    assert not train & {skeleton(t) for ts in REPHRASED_TEMPLATES.values() for t in ts}
    from data.make_data import REPHRASED_WORDS, TRAIN_WORDS
    assert not set(TRAIN_WORDS[0]) & set(REPHRASED_WORDS[0]) and not set(TRAIN_WORDS[1]) & set(REPHRASED_WORDS[1])


def test_load_rows_formats_and_errors(tmp_path):
    rows = data.load_rows(str(DATA / "test.jsonl"))
    assert len(rows) == 150 and set(rows[0]) == {"question", "answer", "solution", "index"}
    p = tmp_path / "odd.jsonl"
    p.write_text(json.dumps({"problem": "1+1?", "final": 2}) + "\n" + json.dumps({"problem": "", "final": 3}) + "\n")
    with pytest.raises(SystemExit, match=r"columns \['problem', 'final'\].*--question_key"):
        data.load_rows(str(p))
    assert data.load_rows(str(p), "problem", "final") == [{"question": "1+1?", "answer": "2", "solution": None, "index": 0}]
    with pytest.raises(SystemExit, match="does not exist"):
        data.load_rows(str(tmp_path / "missing.jsonl"))
