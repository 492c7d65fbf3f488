"""ablate.py (grid runner: interrupted and continued) and report.py (hand-worked table and bootstrap,
the HTML report rendered by a real headless Chromium)."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ablate
import report

ROOT = Path(__file__).resolve().parent.parent


def test_seeds_and_arms_parse():
    assert ablate.parse_seeds("0-2,7") == [0, 1, 2, 7]
    args = type("A", (), {"arm": ["mine=--lr 1e-3 --critique_type indicative"], "arms_file": None,
                          "arms": "dr_grpo,mine"})
    assert ablate.read_arms(args) == {"dr_grpo": ["--critique_type", "none"],
                                      "mine": ["--lr", "1e-3", "--critique_type", "indicative"]}
    args.arms = "critique_or_answer,cg_gt"  # a group expands; an arm named twice runs once
    assert list(ablate.read_arms(args)) == ["cg_indicative", "cg_gt", "expert"]
    args.arms = "nope"
    with pytest.raises(SystemExit, match="unknown arm"):
        ablate.read_arms(args)
    with pytest.raises(SystemExit, match="needs --refiner_model"):
        ablate.main(["--arms", "cg_w2s", "--grid_dir", "/nonexistent"])


@pytest.mark.slow
def test_grid_is_interrupted_and_continues_without_redoing_finished_runs(tmp_path, tiny_model_dir, tiny_data):
    """Two arms x two seeds, one run at a time. Ctrl-C (SIGINT to the process group, as a terminal sends it)
    once the first run is DONE and the second has a checkpoint; the same command then skips the first,
    resumes the second from its checkpoint and runs the other two."""
    grid = tmp_path / "grid"
    cmd = [sys.executable, "ablate.py", "--arms", "dr_grpo,cg_gt", "--seeds", "0,1", "--grid_dir", str(grid),
           "--model", tiny_model_dir, "--train_data", tiny_data[0], "--eval_data", tiny_data[1], "--eval_limit", "2",
           "--max_new_tokens", "8", "--prompts_per_step", "2", "--n_init", "4", "--max_steps", "4", "--save_every", "1",
           "--eval_every", "0", "--samples_every", "3", "--dtype", "float32", "--refine_scope", "all"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    first, second = grid / "dr_grpo" / "seed0", grid / "cg_gt" / "seed0"
    deadline = time.monotonic() + 600  # a generous bound for a busy machine; the events, not the time, decide
    while not ((first / "DONE").exists() and (second / "checkpoint-1").exists()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the grid did not reach its second run"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 130, out
    assert "interrupted" in out and not (second / "DONE").exists()
    assert not (grid / "dr_grpo" / "seed1").exists()  # nothing new started after Ctrl-C
    saved = sorted(int(p.name.split("-")[1]) for p in second.glob("checkpoint-*[0-9]"))
    assert not list(second.glob("*.tmp")), second.with_suffix(".log").read_text()
    assert saved and saved[-1] < 4
    first_metrics = (first / "metrics.jsonl").read_text()

    out = subprocess.run(cmd + ["--evaluate", f"--data {tiny_data[1]} --max_new_tokens 8 --runs 1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900).stdout
    assert "[dr_grpo seed 0] finished earlier, skipped" in out
    assert (first / "metrics.jsonl").read_text() == first_metrics  # not run again
    assert f"resumed from {second / f'checkpoint-{saved[-1]}'}" in second.with_suffix(".log").read_text()
    assert "4/4 runs finished" in out
    for arm in ("dr_grpo", "cg_gt"):
        for seed in (0, 1):
            steps = [json.loads(x)["step"] for x in open(grid / arm / f"seed{seed}" / "metrics.jsonl")]
            assert [s for s in steps if s][-1] == 4 and (grid / arm / f"seed{seed}" / "DONE").exists()
    # --evaluate scored every run's last checkpoint with benchmark.py; report.py adds it as one more set
    for arm in ("dr_grpo", "cg_gt"):
        for seed in (0, 1):
            res = json.loads((grid / arm / f"seed{seed}" / "evaluate" / "results.json").read_text())
            assert res["adapter"].endswith("checkpoint-4") and list(res["benchmarks"]) == ["test"]
    tabs = report.tables(report.load_grid([str(grid)]), "dr_grpo", n_boot=100)
    assert list(tabs) == ["test", "evaluate:test"]  # train.py's held-out set, then benchmark.py's benchmark
    row = tabs["evaluate:test"][0]
    assert math.isnan(row["before"]) and 0 <= row["after"] <= 1
    assert json.loads((grid / "grid.json").read_text())["arms"] == {"dr_grpo": "--critique_type none",
                                                                      "cg_gt": "--critique_type indicative_gt"}


def test_paired_bootstrap_hand_worked():
    # every (seed, question) pair differs by the same amount: the interval is that amount
    a, b = np.ones((3, 4)), np.zeros((3, 4))
    assert report.paired_bootstrap(a, b) == (1.0, 1.0, 1.0)
    # one seed, two questions, differences 0 and 1: a resample's mean is 0, 1/2 or 1 with chance 1/4, 1/2, 1/4,
    # so the 2.5 % percentile falls among the zeros and the 97.5 % among the ones
    assert report.paired_bootstrap(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0]])) == (0.5, 0.0, 1.0)
    # pairing matters: the same 0/1 vectors unpaired would give a wide interval; paired, identical arms give 0
    x = np.array([[1.0, 0.0, 1.0, 0.0]])
    assert report.paired_bootstrap(x, x) == (0.0, 0.0, 0.0)


def fake_run(root: Path, arm: str, seed: int, before: list[int], after: list[int], wall: float):
    run = root / arm / f"seed{seed}"
    run.mkdir(parents=True)
    for step, correct in ((0, before), (10, after)):
        (run / f"eval-{step}.jsonl").write_text("".join(
            json.dumps({"set": "test", "question": f"q{i}", "correct": bool(c)}) + "\n" for i, c in enumerate(correct)))
    metrics = [{"step": 0, "eval/accuracy": np.mean(before)}]
    metrics += [{"step": s, "train/reward": s / 10, "train/entropy": 1 - s / 20, "refine/fix_rate": 0.5 if arm != "ref" else float("nan")}
                for s in range(1, 11)]
    metrics += [{"step": 10, "eval/accuracy": np.mean(after)}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    samples = []
    for q, rewards in (("What is 2+2?", [0, 0]), ("What is 3+3?", [1, 0])):
        for r in rewards:
            s = {"step": 10, "question": q, "response": f"answer {r}", "reward": r}
            if q == "What is 2+2?":
                s.update(critique="The generated solution is incorrect.", refinement="4", refinement_reward=seed % 2)
            samples.append(s)
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (run / "DONE").write_text(json.dumps({"wall_s": wall}))


@pytest.fixture
def hand_grid(tmp_path):
    """ref answers 2 of 4 questions right in both seeds; x answers 3 of 4 in seed 0 and 1 of 4 in seed 1."""
    g = tmp_path / "grid"
    fake_run(g, "ref", 0, [0, 0, 0, 0], [1, 1, 0, 0], 100.0)
    fake_run(g, "ref", 1, [0, 0, 0, 0], [1, 1, 0, 0], 120.0)
    fake_run(g, "x", 0, [0, 0, 0, 0], [1, 1, 1, 0], 200.0)
    fake_run(g, "x", 1, [0, 0, 0, 0], [1, 0, 0, 0], 220.0)
    (g / "x" / "seed2").mkdir()  # unfinished (no DONE): left out
    return g


def test_report_table_by_hand(hand_grid, capsys):
    report.main([str(hand_grid), "--ref", "ref"])
    md = (hand_grid / "report" / "report.md").read_text()
    # x: seeds 75 % and 25 % -> mean 50.0, std (n - 1) = sqrt(((.25)^2 + (.25)^2) / 1) = 35.4; ref: 50.0 +- 0.0
    # paired differences (seed, question): seed 0: 0 0 +1 0, seed 1: 0 -1 0 0 -> mean 0
    row = next(line for line in md.splitlines() if line.startswith("| x |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["x", "2", "0.0", "50.0 ± 35.4"]
    lo, hi = map(float, re.search(r"\+0\.0 \[([-+]\d+\.\d), ([-+]\d+\.\d)\]", cells[4]).groups())
    assert lo < 0 < hi and cells[5] == "not separable" and cells[6] == "210"
    assert "| ref | 2 | 0.0 | 50.0 ± 0.0 | reference |" in md
    assert md.split("![curves]")[0].strip() in capsys.readouterr().out  # the console gets the same table


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (Debian: apt-get install chromium); "
                                              "the HTML report is checked in a real browser")
def test_html_report_renders_in_headless_chromium(hand_grid, tmp_path):
    report.main([str(hand_grid), "--ref", "ref"])
    page = (hand_grid / "report" / "report.html").resolve()

    def dom(fragment: str = "") -> str:
        return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                               "--dump-dom", page.as_uri() + fragment],
                              capture_output=True, text=True, timeout=120).stdout

    html = dom()
    cards = lambda page: page.split('<div id="cards">')[1].split("<script>")[0].split('<div class="card">')[1:]
    assert "<td>x</td><td>2</td>" in html and "<td>ref</td>" in html                 # the table
    width = re.search(r'data-curves-width="(\d+)"', html)
    assert width and int(width.group(1)) > 500                                         # the curves decoded
    # 2 runs x 2 arms x 2 questions = 8 sample groups, each a card
    assert len(cards(html)) == 8 and "8 of 8 groups" in html
    assert "critique: The generated solution is incorrect." in html
    filtered = dom("#arm=x&allwrong=1")                                                # x's all-wrong groups
    assert len(cards(filtered)) == 2 and "2 of 8 groups" in filtered
    assert all("x · seed" in c and "all wrong" in c for c in cards(filtered))
    fixed = dom("#fixed=fixed")                                                        # seed 1 fixed its group
    assert len(cards(fixed)) == 2 and all("seed 1" in c and "· fixed" in c for c in cards(fixed))
    shot = tmp_path / "report.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                    f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_runs_whose_critiques_fell_back_are_marked(hand_grid):
    """x's seed 1 logged 4 refinements a step, 1 of whose critiques fell back (its request failed):
    25 % per run, marked in the Markdown and the HTML table; ref logged none that fell back."""
    def log(arm, seed, **counts):
        path = hand_grid / arm / f"seed{seed}" / "metrics.jsonl"
        metrics = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**m, **counts} if "train/reward" in m else m) + "\n"
                                for m in metrics))
    log("x", 1, **{"refine/count": 4, "critic/fallbacks": 1, "critic/transport_failures": 1})
    log("x", 0, **{"refine/count": 4, "critic/fallbacks": 0})
    log("ref", 0, **{"refine/count": 4, "critic/fallbacks": 0, "critic/transport_failures": 0})
    report.main([str(hand_grid), "--ref", "ref"])
    md = (hand_grid / "report" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| x"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "x ⚠" and cells[-1] == "seed 1: 25.0 % fell back, 25.0 % transport failures"
    assert next(line for line in md.splitlines() if line.startswith("| ref |")).endswith("| – |")
    assert report.FALLBACK_NOTE in md
    page = (hand_grid / "report" / "report.html").read_text()
    assert ('<tr class="fallback"><td>x ⚠</td>' in page
            and "<td>seed 1: 25.0 % fell back, 25.0 % transport failures</td></tr>" in page)
    assert "<tr><td>ref</td>" in page


def test_a_run_without_refinement_counts_still_shows_its_fallbacks():
    run = {"metrics": [{"step": 1, "critic/fallbacks": 2}, {"step": 2, "critic/fallbacks": 1},
                       {"step": 2, "eval/accuracy": 0.5}]}
    assert report.fallbacks(run) == (3, 0, 0)
    assert report.fallback_note({0: {"metrics": []}, 3: run}) == "seed 3: 3 fell back"


def test_report_curves_mark_evaluated_steps_and_leave_out_empty_panels(hand_grid):
    """Held-out accuracy is measured at steps 0 and 10 only: its panel draws markers there (seeds as
    dots, the mean as markers on a dotted line), not a solid line that looks like a trajectory.
    Clip fraction 0 at every step (one update per batch: ratio 1) and critic tokens 0 (no model
    critic) are left out and say why, as is a metric nobody logged (kl)."""
    for arm, seed in (("ref", 0), ("ref", 1), ("x", 0), ("x", 1)):
        path = hand_grid / arm / f"seed{seed}" / "metrics.jsonl"
        metrics = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**m, "train/clip_frac": 0.0, "critic/tokens_out": 0}
                                           if "train/reward" in m else m) + "\n" for m in metrics))
    arms = report.load_grid([str(hand_grid)])
    drawn, left_out = report.curve_panels(arms)
    assert [k for k, _ in drawn] == ["train/reward", "eval/accuracy", "train/entropy",
                                     "refine/fix_rate"]
    why = dict(left_out)
    assert "policy ratio is 1" in why["clipped fraction"]
    assert "no model critic" in why["critic tokens out"]
    assert "not computed" in why["KL to the base model (--log_kl)"]
    fig = report.curves_figure(arms)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4 and not any("clipped" in t for t in titles)
    acc = next(ax for ax in fig.axes if ax.get_title().startswith("held-out accuracy"))
    assert "measured at the marked steps only" in acc.get_title()
    lines = acc.get_lines()
    assert len(lines) == 4 + 2  # 2 seeds x 2 arms, then each arm's mean
    assert all(line.get_marker() not in (None, "None", "") for line in lines)
    styles = sorted(line.get_linestyle() for line in lines)
    assert styles == [":"] * 2 + ["None"] * 4  # seeds: dots only; means: markers on a dotted line
    assert all(list(line.get_xdata()) == [0, 10] for line in lines)
    reward = next(ax for ax in fig.axes if ax.get_title() == "training reward")
    assert all(line.get_marker() in (None, "None", "") for line in reward.get_lines())
    report.main([str(hand_grid), "--ref", "ref"])
    md = (hand_grid / "report" / "report.md").read_text()
    assert report.curves_note(arms) in md and "clipped fraction (0 at every step" in md


def test_story_figure_draws_the_three_panels_from_the_runs(hand_grid, tmp_path):
    """Zero-advantage groups (Critique-GRPO after mixing, its before-mixing dashed, the reference),
    training reward (both), entropy (with and without shaping): each mean line is the mean over the
    seeds of what metrics.jsonl holds; a missing arm is a one-line error naming the flag."""
    fake_run(hand_grid, "flat", 0, [0, 0, 0, 0], [1, 0, 0, 0], 90.0)
    for arm, seed, shift in (("ref", 0, 0.0), ("ref", 1, 0.0), ("x", 0, 0.1), ("x", 1, 0.3), ("flat", 0, 0.0)):
        path = hand_grid / arm / f"seed{seed}" / "metrics.jsonl"
        metrics = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**m, "train/zero_adv_frac_before": 0.75,
                                            "train/zero_adv_frac_after": 0.75 - shift,
                                            "train/entropy": 0.5 if arm == "flat" else m["train/entropy"]}
                                           if "train/reward" in m else m) + "\n" for m in metrics))
    arms = report.load_grid([str(hand_grid)])
    fig = report.story_figure(arms, "x", "ref", "flat")
    zero, reward, entropy = fig.axes
    means = {line.get_label(): list(line.get_ydata()) for line in zero.get_lines() if not line.get_label().startswith("_")}
    assert means["x (2 seeds)"] == pytest.approx([0.55] * 10)          # 0.75 - mean(0.1, 0.3)
    assert means["x, before mixing"] == pytest.approx([0.75] * 10)
    assert means["ref (2 seeds)"] == pytest.approx([0.75] * 10)
    labels = [line.get_label() for line in entropy.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["x (2 seeds)", "flat (1 seed)"]
    flat = next(line for line in entropy.get_lines() if line.get_label() == "flat (1 seed)")
    assert list(flat.get_ydata()) == [0.5] * 10 and list(flat.get_xdata()) == list(range(1, 11))
    assert "training reward" in reward.get_title()
    png = tmp_path / "story.png"
    report.main([str(hand_grid), "--ref", "ref", "--story", str(png), "--story_arms", "x,ref,flat"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="--story needs the arms cg_no_shaping"):
        report.story_figure(arms, "x", "ref", "cg_no_shaping")
