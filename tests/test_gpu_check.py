"""bench/gpu_check.py, the one GPU check, runs end to end here on toy shapes (--tiny), so it is ready for the
day a GPU is lent: every row comes out, measured or saying why not (no CUDA), and one table is printed and
written. The child-process path that a GPU run takes (a time limit per job) is run too, with a job killed at
its limit. BENCHMARKS.md's empty GPU table is the script's own rows."""
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
ROWS = ["rollout_small", "rollout_large", "decode_static", "decode_dynamic", "compile", "step_grpo",
        "step_critique", "mem_lora_1.5b", "mem_qlora_1.5b", "mem_qlora_7b"]
CUDA = torch.cuda.is_available()


def run(*args, timeout=240):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.startswith("| ") and not x.startswith("| check |")]


def test_tiny_run_prints_and_writes_one_table_with_every_row(tmp_path):
    out = tmp_path / "check"
    stdout = run("--tiny", "--out", str(out))
    assert stdout.count("| check | setting | result |") == 1  # ONE table, nothing else on stdout
    assert "SMOKE RUN" in stdout
    assert (out.parent / "check.md").read_text() == stdout
    got = json.loads((out.parent / "check.json").read_text())
    rows = {r["id"]: r for r in got["rows"]}
    assert [r["id"] for r in got["rows"]] == ROWS
    assert len(table_lines(stdout)) == len(ROWS)
    assert not [r for r in got["rows"] if r["status"] in ("failed", "timed out")], got["rows"]
    for rid in ("rollout_small", "rollout_large", "decode_dynamic", "step_grpo", "step_critique"):
        assert rows[rid]["status"] == "ok", rows[rid]
    assert rows["rollout_small"]["values"]["ours_tokens_per_s"] > 0
    assert rows["step_critique"]["values"]["ratio_to_grpo"] > 0
    if not CUDA:  # the rows that need a GPU say so, and the CPU-runnable parts of them still ran
        for rid in ("decode_static", "compile", "mem_lora_1.5b", "mem_qlora_1.5b", "mem_qlora_7b"):
            assert rows[rid]["status"] == "skipped" and "skipped: no CUDA" in rows[rid]["result"], rows[rid]
        assert "uncompiled here" in rows["decode_static"]["result"]       # the static-cache path ran
        assert "the step ran on the CPU" in rows["mem_lora_1.5b"]["result"]  # so did the memory job's step
    log = Path(got["meta"]["log"]).read_text()
    assert "step    1 |" in log and "step    2 |" in log  # train.main's own step lines, kept out of stdout


def test_jobs_in_child_processes_are_killed_at_their_limit(tmp_path):
    stdout = run("--tiny", "--isolate", "--jobs", "step,mem_qlora_1.5b", "--job_timeout", "step=2",
                 "--out", str(tmp_path / "iso"))
    rows = {r["id"]: r for r in json.loads((tmp_path / "iso.json").read_text())["rows"]}
    assert [r for r in rows] == ROWS and len(table_lines(stdout)) == len(ROWS)
    for rid in ("step_grpo", "step_critique"):
        assert rows[rid]["status"] == "timed out" and "2 s limit" in rows[rid]["result"]
    assert rows["mem_qlora_1.5b"]["status"] == ("ok" if CUDA else "skipped")  # the child's row came back
    for rid in ("rollout_small", "compile", "mem_lora_1.5b", "mem_qlora_7b"):
        assert rows[rid]["result"] == "skipped: not run (--jobs)"


def test_benchmarks_md_holds_the_gpu_rows_with_empty_results():
    dry = table_lines(run("--dry_run"))
    assert len(dry) == len(ROWS) and all(x.endswith("|  |") for x in dry)
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text[text.index("## GPU check (bench/gpu_check.py)"):]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    documented = [re.sub(r"\s+", " ", x) for x in table_lines(section)]
    for line in dry:  # each GPU row, its result cell empty, to be filled on the day
        assert re.sub(r"\s+", " ", line) in documented, line
    assert "python3 bench/gpu_check.py --out $OUT/gpu_check" in section
