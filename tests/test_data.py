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
    p.write_text(json.dumps({"problem": "1+1?", "final": 2}) + "\n")
    with pytest.raises(SystemExit, match=r"columns \['problem', 'final'\].*--question_key"):
        data.load_rows(str(p))
    assert data.load_rows(str(p), "problem", "final") == [{"question": "1+1?", "answer": "2", "solution": None, "index": 0}]
    with pytest.raises(SystemExit, match="does not exist"):
        data.load_rows(str(tmp_path / "missing.jsonl"))


def _parquet(path, table: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(table), path)


def _lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


OK = {"question": "1+1?", "answer": "2"}


# (file name, what to write there: text, bytes, a {column: values} dict for parquet, or None for
# nothing at all, and the whole one-line message; "..." at its end: the message's beginning)
@pytest.mark.parametrize("name,content,message", [
    ("bad.jsonl", _lines(OK, '{"question": "b",'),
     "{f} line 2: not valid JSON (Expecting property name enclosed in double quotes at column 18)"),
    ("gap.jsonl", _lines(OK, "", '{"question": 1 "answer": 2}'),
     "{f} line 3: not valid JSON (Expecting ',' delimiter at column 16)"),
    ("list.jsonl", _lines(OK, [1, 2]), "{f} line 2: not a JSON object but list"),
    ("png.jsonl", b"\x89PNG\r\n\x1a\n\x00\xff binary", "{f} line 1: not UTF-8 text (is it JSON?)"),
    ("garbage.jsonl", _lines(OK).encode() + b"\xff\xfe\x00",
     "{f} line 2: not UTF-8 text (is it JSON?)"),
    ("empty.jsonl", "", "data file {f} is empty"),
    ("blank.jsonl", "\n  \n", "data file {f} is empty"),
    ("missing.jsonl", None, "data file {f} does not exist"),
    ("missing.csv", None, "data file {f} does not exist"),
    ("rows.csv", "question,answer\n1+1?,2\n", "{f}: expected a .jsonl, .json or .parquet file"),
    ("a_dir.jsonl", "DIR", "{f} is a directory; expected a .jsonl, .json or .parquet file"),
    ("no_answer.jsonl", _lines(OK, {"question": "2+2?", "answer": "  "}),
     "{f} line 2: 'answer' is missing or empty"),
    ("no_key.jsonl", _lines(OK, {"question": "2+2?"}), "{f} line 2: 'answer' is missing or empty"),
    ("dict_q.jsonl", _lines({"question": {"text": "1+1?"}, "answer": "2"}),
     "{f} line 1: 'question' is a dict, not text"),
    ("list_a.jsonl", _lines(OK, {"question": "2+2?", "answer": ["4"]}),
     "{f} line 2: 'answer' is a list, not text"),
    ("verl.jsonl", _lines({"prompt": "2+2?", "reward_model": {"ground_truth": "4"}}),
     "{f} line 1: a verl row needs a user turn in 'prompt' and 'reward_model' with a "
     "'ground_truth'"),
    ("object.json", json.dumps(OK, indent=1),
     "{f} holds one JSON object; expected a list of objects or one object per line"),
    ("items.json", json.dumps([OK, 3]), "{f} item 2: not a JSON object but int"),
    ("cols.parquet", {"problem": ["1+1?"], "final": ["2"]},
     "{f} has columns ['problem', 'final']; name the question and answer columns with "
     "--question_key and --answer_key (now 'question', 'answer')"),
    ("empty_answer.parquet", {"question": ["1+1?", "2+2?"], "answer": ["2", None]},
     "{f} row 2: 'answer' is missing or empty"),
    ("text.parquet", "question,answer\n", "{f}: not a readable parquet file (..."),
])
def test_bad_data_is_one_line_naming_the_file_and_row(tmp_path, name, content, message):
    f = tmp_path / name
    if content == "DIR":
        f.mkdir()
    elif isinstance(content, dict):
        _parquet(f, content)
    elif isinstance(content, str):
        f.write_text(content)
    elif isinstance(content, bytes):
        f.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        data.load_rows(str(f))
    want = "error: " + message.format(f=f)
    got = str(e.value)
    assert got == want or want.endswith("...") and got.startswith(want[:-3]) and "\n" not in got


def test_a_hub_name_that_cannot_load_is_one_line():
    with pytest.raises(SystemExit) as e:
        data.load_rows("no-such-owner/no-such-dataset-xyz")
    msg = str(e.value)
    name = "no-such-owner/no-such-dataset-xyz"
    assert msg.startswith(f"error: {name}: no such local file, nor a hub dataset (")
    assert "\n" not in msg


def test_good_files_of_every_kind_load_the_same_rows(tmp_path):
    rows = [OK, {"question": "Two plus two?", "answer": 4, "solution": "4"}]  # a number is fine
    want = [{"question": "1+1?", "answer": "2", "solution": None, "index": 0},
            {"question": "Two plus two?", "answer": "4", "solution": "4", "index": 1}]
    (tmp_path / "a.jsonl").write_text("\n" + _lines(*rows))  # blank lines are skipped
    (tmp_path / "b.json").write_text(json.dumps(rows))
    (tmp_path / "c.json").write_text(_lines(*rows))  # JSON lines in a .json file
    _parquet(tmp_path / "d.parquet", {"question": ["1+1?", "Two plus two?"], "answer": ["2", "4"],
                                      "solution": [None, "4"]})
    for name in ("a.jsonl", "b.json", "c.json", "d.parquet"):
        assert data.load_rows(str(tmp_path / name)) == want, name
