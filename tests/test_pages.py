"""One source for every number: the pages say what docs/make_pages.py writes from the one results
file, and no run number, date or "today" stands outside what it writes.

A stray is a measured quantity in a page's prose: a percentage, a duration, a speed ratio, a test
count, a date. Settings of the code (the checker's 10 s timeout, a 95 % interval) are listed in
ALLOWED, each with why it is not a measurement.
"""
import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_pages", ROOT / "docs" / "make_pages.py")
make_pages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_pages)

STRAY = re.compile(r"\btoday\b|\b20\d\d-\d\d-\d\d\b|\b[\d½]+(?:\.\d+)? ?(?:%|s\b|sec\b|seconds|min\b|"
                   r"minutes)|\b\d+(?:\.\d+)?×|\b\d+ passed", re.I)
ALLOWED = {
    "95 %": "the level of every interval, a choice",
    "10 s": "the answer checker's timeout, a setting",
    "0.3 s": "the timeout a hard-edge test sets for its slow server",
    "30 s": "how long train.py waits for its checker workers, a setting",
    "8×": "how often a benchmark file holds each question, a property of the data",
    "4×": "how often a benchmark file holds each question, a property of the data",
    "0.3 %": "the tolerance of a grader, a setting",
}
ESTIMATES = re.compile(r"\| \d+(?:–\d+)? min \|$")  # the course's per-exercise estimates


def prose(path: Path) -> str:
    """What a reader reads: a page less its generated parts; a .py file's docstrings; the
    notebook's markdown cells."""
    text = path.read_text()
    if path.suffix == ".ipynb":
        text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"]
                         if c["cell_type"] == "markdown")
    elif path.suffix == ".py":
        tree = ast.parse(text)
        text = "\n".join(ast.get_docstring(n) or "" for n in ast.walk(tree)
                         if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)))
    return make_pages.INLINE.sub("", make_pages.BLOCK.sub("", text))


def strays(text: str) -> list[str]:
    return [m.group(0) for line in text.splitlines() if not ESTIMATES.search(line.strip())
            for m in STRAY.finditer(line) if m.group(0) not in ALLOWED]


def test_every_page_is_what_the_generator_writes():
    assert make_pages.main(["--check"]) == 0, "run: python docs/make_pages.py"


@pytest.mark.parametrize("path", [p for p in make_pages.pages() if p.name != "one_step.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_run_number_outside_the_generated_parts(path):
    """docs/one_step.md is left out: docs/trace_step.py writes all of it from one real step, and
    tests/test_one_step.py checks its numbers against the code."""
    found = strays(prose(path))
    assert not found, f"{path.relative_to(ROOT)}: {found}: put them in docs/results_seeds.json " \
                      "and mark them for docs/make_pages.py, or leave them in LOG.md"


def test_the_checks_would_catch_drift(tmp_path, monkeypatch):
    """A number edited by hand inside a marked value, a stale block, and a stray in prose."""
    page = tmp_path / "page.md"
    page.write_text("It takes <!-- n:run.bf16.wall -->1 s<!-- /n -->.\n\n"
                    "<!-- gen:headline -->\nold table\n<!-- /gen:headline -->\n")
    monkeypatch.setattr(make_pages, "pages", lambda: [page])
    assert make_pages.main(["--check"]) == 1
    make_pages.main([])
    assert make_pages.main(["--check"]) == 0 and "old table" not in page.read_text()
    assert strays("Seed 0 took 268 s on 2026-12-02, 47.3 % today.") == \
        ["268 s", "2026-12-02", "47.3 %", "today"]
    assert strays("a 95 % interval; the checker's 10 s timeout") == []


def test_every_marked_value_is_the_results_file_s():
    """Each inline value on a page equals what the generator computes from the file now."""
    data = make_pages.load()
    values = make_pages.values(data)
    for path in make_pages.pages():
        for m in make_pages.INLINE.finditer(path.read_text()):
            assert m["value"] == values[m["key"]], (path.name, m["key"])
