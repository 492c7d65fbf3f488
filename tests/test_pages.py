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


def hand_run(grid: Path, arm: str, seed: int, test: list[int], reph: list[int], steps: list[dict]):
    """A finished run of 2 steps as train.py writes it: config, evaluations, metrics, DONE."""
    run = grid / arm / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": seed, "max_steps": 2}))
    for step, (t, r) in ((0, ([0, 0], [0])), (2, (test, reph))):
        (run / f"eval-{step}.jsonl").write_text("".join(
            json.dumps({"set": s, "correct": bool(c)}) + "\n"
            for s, cs in (("test", t), ("test_rephrased", r)) for c in cs))
    metrics = [{"step": 0, "eval/accuracy": 0.0}] + [{"step": i + 1, "loss": 0.1, **m}
                                                    for i, m in enumerate(steps)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "DONE").write_text(json.dumps({"wall_s": 61.6}))


def test_collect_transcribes_a_grid_and_its_curves_draw_the_figures(tmp_path):
    """--collect: accuracies in %, the mechanism as means over steps (refinements right weighted by
    their count), the curves step by step (None where a step logged NaN); the figures drawn from
    the transcription have the means of what the runs logged."""
    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "grid.json").write_text(json.dumps({"arms": {"cg_no_shaping": "--gamma none"},
                                                "common": "", "seeds": [0]}))
    nan = float("nan")
    hand_run(grid, "cg_gt", 0, [1, 0], [1], [
        {"train/entropy": 0.8, "refine/reward": 0.5, "refine/count": 2, "offpolicy/p": 0.4},
        {"train/entropy": 0.6, "refine/reward": 1.0, "refine/count": 6, "offpolicy/p": 0.6}])
    hand_run(grid, "cg_no_shaping", 0, [1, 1], [0], [
        {"train/entropy": 1.0, "refine/reward": nan, "refine/count": 0, "offpolicy/p": nan},
        {"train/entropy": 1.4, "refine/reward": 0.25, "refine/count": 4, "offpolicy/p": 0.2}])
    runs = make_pages.collect(grid)
    cg, flat = runs["cg_gt"][0], runs["cg_no_shaping"][0]
    assert (cg["test"], cg["test_rephrased"], cg["step0"]) == (50.0, 100.0,
                                                               {"test": 0.0, "test_rephrased": 0.0})
    assert cg["command"] == "python train.py --critique_type indicative_gt --seed 0"
    assert flat["command"] == "python train.py --gamma none --seed 0" and cg["wall_s"] == 62
    assert cg["mechanism"]["refine_right"] == pytest.approx((0.5 * 2 + 1.0 * 6) / 8)
    assert cg["mechanism"]["entropy"] == pytest.approx(0.7)
    assert flat["mechanism"]["refine_right"] == 0.25 and flat["mechanism"]["offpolicy_p"] == 0.2
    assert flat["curves"]["offpolicy/p"] == [None, 0.2]
    assert flat["curves"]["train/entropy"] == [1.0, 1.4]
    assert "| `python train.py --gamma none --seed 0` | 0.0 → 100.0 | 0.0 → 0.0 | 62 s |" in \
        make_pages.log_rows(runs)
    arms = make_pages.curve_arms({"runs": runs})
    fig = make_pages.report.story_figure(arms, "cg_gt", "dr_grpo", "cg_no_shaping",
                                         panels=make_pages.report.SHAPING)
    entropy, p, _ = fig.axes
    means = {ln.get_label(): list(ln.get_ydata()) for ln in entropy.get_lines()}
    assert means["cg_no_shaping (1 seed)"] == [1.0, 1.4] and means["cg_gt (1 seed)"] == [0.8, 0.6]
    flat_p = next(ln for ln in p.get_lines() if ln.get_label() == "cg_no_shaping (1 seed)")
    assert list(flat_p.get_xdata()) == [2] and list(flat_p.get_ydata()) == [0.2]
    assert all(ax.get_ylabel() for ax in fig.axes)  # every y axis says its unit


def test_seed_dots_draw_every_seed_and_the_mean():
    runs = {"a": [{"seed": 0, "test": 10.0}, {"seed": 1, "test": 30.0}],
            "b": [{"seed": 0, "test": 5.0}]}
    fig = make_pages.report.seed_dots_figure(runs, ["test"], {"test": 1.0})
    ax = fig.axes[0]
    dots = sorted(float(ln.get_ydata()[0]) for ln in ax.get_lines() if ln.get_marker() == "o")
    assert dots == [5.0, 10.0, 30.0]
    bars = sorted(seg[0][1] for c in ax.collections for seg in c.get_segments())
    assert bars == [5.0, 20.0] and ax.get_ylabel() == "final accuracy (%)"


def shaping_data(entropy_off: list[list[float]], p_off: list[list[float]]) -> dict:
    """The results file with one grid of cg_gt and cg_no_shaping: cg_gt's entropy falls 0.8 ->
    0.6 and its p rises 0.4 -> 0.6 on every seed; cg_no_shaping's curves are given per seed."""
    def run(seed, ent, p):
        return {"seed": seed, "test": 40.0, "test_rephrased": 30.0, "curves": {
            "train/entropy": ent, "offpolicy/p": p}, "mechanism": {
            "entropy": sum(ent) / len(ent), "offpolicy_p": sum(x for x in p if x is not None) /
            sum(x is not None for x in p)}}
    on = [run(k, [0.8, 0.7 - 0.01 * k, 0.6], [0.4, None, 0.6 + 0.01 * k]) for k in range(3)]
    off = [run(k, e, p) for k, (e, p) in enumerate(zip(entropy_off, p_off))]
    return dict(make_pages.load(), grids=[{"name": "g", "machine": "m", "date": "d",
                                           "runs": {"cg_gt": on, "cg_no_shaping": off}}])


def test_the_collapse_verdict_says_which_way_each_signal_moves():
    """Entropy up and p down without shaping: the signature shows; entropy up alone: half of it;
    neither: it does not show. The intervals are the t intervals of the per-seed changes."""
    up = [[0.8, 1.0, 1.2], [0.8, 1.1, 1.3], [0.8, 0.9, 1.25]]           # +0.4, +0.5, +0.45
    down = [[0.5, 0.4, 0.3], [0.5, None, 0.25], [0.5, 0.45, 0.32]]      # -0.2, -0.25, -0.18
    flat = [[0.5, 0.5, 0.6], [0.5, 0.5, 0.4], [0.5, 0.5, 0.5]]          # +0.1, -0.1, 0
    both = make_pages.collapse_verdict(shaping_data(up, down)).replace("\n", " ")
    mean, _, lo, hi = make_pages.report.t_interval([0.4, 0.5, 0.45])
    assert f"entropy moves {mean:+.2f} nats [{lo:+.2f}, {hi:+.2f}] (up) without shaping" in both
    assert "(down) with it" in both and "entropy rising while p falls, shows" in both
    half = make_pages.collapse_verdict(shaping_data(up, flat)).replace("\n", " ")
    assert "+0.00 [" in half and "(no clear change) without" in half
    assert "Half of the release's issue 6 signature shows" in half
    none = make_pages.collapse_verdict(shaping_data(flat, flat)).replace("\n", " ")
    assert "does not show at this scale" in none
    assert "has no finished run" in make_pages.collapse_verdict(dict(make_pages.load(), grids=[]))


def test_the_mechanism_is_lent_only_by_a_rerun_that_reproduced_the_headline_run():
    data = make_pages.load()
    head = make_pages.current_setting(data, "bf16")
    r = head["runs"]["dr_grpo"][0]
    same = {"seed": r["seed"], "test": r["test"], "test_rephrased": r["test_rephrased"],
            "mechanism": {"entropy": 0.123}}
    other = dict(same, test=r["test"] + 0.1, mechanism={"entropy": 0.456})
    for rerun, lent in ((same, True), (other, False)):
        grids = [{"name": "reruns", "runs": {"dr_grpo": [rerun]}}]
        runs, _ = make_pages.question_runs(dict(data, grids=grids))
        got = next(x for x in runs["dr_grpo"] if x["seed"] == r["seed"])["mechanism"]
        assert (got.get("entropy") == 0.123) == lent and got.get("entropy") != 0.456
        assert ('"reruns"' in make_pages.question_source(dict(data, grids=grids))) == lent


def test_the_float32_check_pairs_no_shaping_with_the_float32_headline_runs():
    data = make_pages.load()
    assert make_pages.collapse_float32(dict(data, grids=[])) == ""
    head = make_pages.current_setting(data, "float32")
    cg = {r["seed"]: r for r in head["runs"]["cg_gt"]}
    off = [{"seed": k, "test": cg[k]["test"] - 10 * (k + 1),
            "test_rephrased": cg[k]["test_rephrased"],
            "curves": {"train/entropy": [0.8, 0.8 + 0.1 * (k + 1)]}} for k in (0, 1)]
    grid = {"name": "f", "kind": "float32", "machine": "m", "date": "d",
            "runs": {"cg_no_shaping": off}}
    text = make_pages.collapse_float32(dict(data, grids=[grid])).replace("\n", " ")
    mean, _, lo, hi = make_pages.report.t_interval([-10.0, -20.0])
    assert f"`test` {mean:+.1f} [{lo:+.1f}, {hi:+.1f}] not separable" in text
    assert "`test_rephrased` +0.0 [" in text and "seeds 0, 1 against" in text
    assert "entropy moves +0.15 nats [" in text
