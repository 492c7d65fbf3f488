"""Every number about a run that a page shows, from the one results file.

    python docs/make_pages.py           # rewrite the generated parts of the pages and the figures
    python docs/make_pages.py --check   # exit 1, naming the page, where a page differs
    python docs/make_pages.py --collect GRID   # a finished ablate.py grid, for the results file

The results file, docs/results_seeds.json, holds each setting's per-seed accuracies (each number
from its LOG.md section, checked by tests/test_report_headline.py), walls, test counts and the
paper's numbers, each with its machine, dtype, date and command. A page carries generated text
between `<!-- gen:NAME -->` and `<!-- /gen:NAME -->` (a block) or between `<!-- n:KEY -->` and
`<!-- /n -->` (one value inside a sentence); what lies outside is prose without run numbers
(tests/test_pages.py looks for strays). Pages: README.md, docs/*.md, exercises/*.md and *.py, the
notebook's markdown cells.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import report  # noqa: E402
from ablate import PRESETS  # noqa: E402

RESULTS = ROOT / "docs" / "results_seeds.json"
BLOCK = re.compile(r"(<!-- gen:(?P<name>[\w.]+) -->\n)(?P<body>.*?)(<!-- /gen:(?P=name) -->)", re.S)
INLINE = re.compile(r"(<!-- n:(?P<key>[\w.]+) -->)(?P<value>.*?)(<!-- /n -->)")


def load() -> dict:
    return json.loads(RESULTS.read_text())


def current(data: dict) -> list[dict]:
    return [s for s in data["settings"] if s.get("defaults") == "current"]


def current_setting(data: dict, kind: str) -> dict | None:
    """The current-defaults setting of one CPU kind (bf16 / float32), or None."""
    return next((s for s in current(data) if s["kind"] == kind), None)


def sentence(note: str) -> str:
    """A results-file note as a sentence: capital first, full stop last."""
    return note[0].upper() + note[1:].rstrip(".") + "."


def minutes(seconds: float) -> str:
    """268 -> '4½ min': a wall as a reader says it (to the half minute)."""
    halves = round(seconds / 30)
    whole, half = divmod(halves, 2)
    return f"{whole}{'½' if half else ''} min" if whole else "½ min"


def span(values: list[float], unit: str = " s") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.0f}{unit}" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}{unit}"


# ---------------------------------------------------------------------------------------------
# Inline values: KEY -> text
# ---------------------------------------------------------------------------------------------
def values(data: dict) -> dict[str, str]:
    m = data["measurements"]
    out = {}
    for kind, r in m["default_run"].items():
        out[f"run.{kind}.wall"] = f"{r['wall_s']:.0f} s"
        out[f"run.{kind}.minutes"] = minutes(r["wall_s"])
        out[f"run.{kind}.step0"] = f"{r['step0_s']:.0f} s"
        out[f"run.{kind}.date"] = r["date"]
    for st in current(data):
        kind = st["kind"]  # bf16 / float32: one current setting per CPU kind
        walls = [r["wall_s"] for r in st["runs"]["cg_gt"] if "wall_s" in r]
        if walls:
            out[f"seeds.{kind}.walls"] = span(walls)
            lo, hi = minutes(min(walls)), minutes(max(walls))
            out[f"seeds.{kind}.minutes"] = lo if lo == hi else f"{lo[:-4]}–{hi}"
        out[f"seeds.{kind}.n"] = str(len(st["runs"]["cg_gt"]))
        for s in report.HEADLINE_SETS:
            out[f"seeds.{kind}.step0.{s}"] = f"{st['step0'][s]:.1f} %"
    for name, t in m["tests"].items():
        out[f"tests.{name}"] = (f"{t['passed']} passed" + (f", {t['skipped']} skipped"
                                                           if t["skipped"] else ""))
        out[f"tests.{name}.minutes"] = minutes(t["wall_s"])
        out[f"tests.{name}.condition"] = t["condition"]
    if "notebook" in m:
        out["notebook.minutes"] = minutes(m["notebook"]["wall_s"])
    p = data["paper"]
    for k in ("grpo", "dr_grpo", "cg_gt", "cg_cot"):
        out[f"paper.{k}"] = f"{p[k]:.2f}"
    return out


# ---------------------------------------------------------------------------------------------
# Blocks: NAME -> Markdown
# ---------------------------------------------------------------------------------------------
HEAD = ("| setting | set | seeds | step 0 | Critique-GRPO (`cg_gt`) | GRPO (`dr_grpo`) | "
        "Δ [95 % CI] | verdict |\n|---|---|---|---|---|---|---|---|")


def headline_block(data: dict) -> str:
    """The README's headline: the current defaults on each CPU kind, paired by seed."""
    sub = dict(data, settings=current(data))
    rows = report.headline_rows(sub)
    lines = [HEAD, *report.headline_table_rows(rows)]
    gpu = "The GPU row waits for a GPU run at these defaults (the old-default H100 row is in " \
          "[docs/results.md](docs/results.md#history-the-old-defaults))."
    return "\n".join([*lines, "", report.wrap(report.paper_line(data)), "", report.wrap(gpu)])


def default_run_block(data: dict) -> str:
    r = data["measurements"]["default_run"]["bf16"]
    return "```text\n" + "\n".join(r["output"]) + "\n```"


BLOCKS = {"headline": headline_block, "default_run": default_run_block}


# ---------------------------------------------------------------------------------------------
# docs/results.md's blocks
# ---------------------------------------------------------------------------------------------
def seed_table(st: dict, arms: list[str]) -> list[str]:
    """One row per arm and seed: before -> after on each set, the wall where measured."""
    walls = any("wall_s" in r for a in arms for r in st["runs"].get(a, []))
    head = "| arm | seed | `test` before → after | `test_rephrased` before → after |" + \
        (" wall |" if walls else "")
    out = [head, "|---|---|---|---|" + ("---|" if walls else "")]
    for arm in arms:
        for i, r in enumerate(sorted(st["runs"].get(arm, []), key=lambda r: r["seed"])):
            cells = [f"`{arm}`" if i == 0 else "", str(r["seed"])]
            for s in report.HEADLINE_SETS:
                below = " (below step 0)" if r[s] < st["step0"][s] else ""
                cells.append(f"{st['step0'][s]:.1f} → {r[s]:.1f}{below}")
            if walls:
                cells.append(f"{r['wall_s']:.0f} s" if "wall_s" in r else "–")
            out.append("| " + " | ".join(cells) + " |")
    return out


def setting_section(data: dict, st: dict) -> list[str]:
    arms = list(st["runs"])
    out = [f"### {st['name']}", "",
           report.wrap(f"{st['machine']}; {st['dtype']}; {st['date']}. Commands: " + "; ".join(
               f"`{arm}` `{cmd}`" for arm, cmd in st["commands"].items()) +
               f". Log: LOG.md, \"{st['log_section']}\"." +
               (f" {sentence(st['note'])}" if st.get("note") else "")), ""]
    out += seed_table(st, arms)
    if st.get("walls"):
        out += ["", report.wrap(f"Walls: {st['walls']}.")]
    return out + [""]


def results_current(data: dict) -> str:
    cur = current(data)
    out = [HEAD, *report.headline_table_rows(report.headline_rows(dict(data, settings=cur))), "",
           report.wrap(report.paper_line(data)), "", "![every seed's final accuracy](headline.png)",
           ""]
    for st in cur:
        out += setting_section(data, st)
    return "\n".join(out)


def results_history(data: dict) -> str:
    old = [s for s in data["settings"] if s.get("defaults") != "current"]
    out = [HEAD, *report.headline_table_rows(report.headline_rows(dict(data, settings=old))), ""]
    for st in old:
        out += [report.wrap(f"**{st['name']}**: {st['machine']}; {st['dtype']}; {st['date']}; "
                            f"LOG.md, \"{st['log_section']}\"."), ""]
    return "\n".join(out)


def walls(data: dict) -> str:
    m = data["measurements"]
    out = ["| what | machine | dtype | date | command | wall |", "|---|---|---|---|---|---|"]
    for kind, r in m["default_run"].items():
        out.append(f"| the default run, step 0 evaluated | {r['machine']} | {r['dtype']} | "
                   f"{r['date']} | `{r['command']}` | {r['wall_s']:.0f} s (step 0: "
                   f"{r['step0_s']:.1f} s; sample {r['sample_s']:.0f} s, refine "
                   f"{r['refine_s']:.0f} s, update {r['update_s']:.0f} s, final evaluation "
                   f"{r['final_eval_s']:.0f} s) |")
    if "notebook" in m:
        r = m["notebook"]
        out.append(f"| the notebook, top to bottom (two runs of {r['steps']} steps) | "
                   f"{r['machine']} | "
                   f"{r['dtype']} | {r['date']} | `{r['command']}` | {r['wall_s']:.0f} s |")
    for name, t in m["tests"].items():
        out.append(f"| the {name} test set: {t['passed']} passed"
                   + (f", {t['skipped']} skipped" if t["skipped"] else "") +
                   f" | {t['machine']}, {t['condition']} | – | {t['date']} | `{t['command']}` | "
                   f"{t['wall_s']:.0f} s |")
    return "\n".join(out)


def results_grids(data: dict) -> str:
    """Every run of the other arms at the current defaults (docs/critique_needed.md reads them)."""
    out = []
    for g in data.get("grids", []):
        out += setting_section(data, g)
    return "\n".join(out) if out else "None in the results file yet."


BLOCKS.update(results_current=results_current, results_history=results_history, walls=walls,
              results_grids=results_grids)


# ---------------------------------------------------------------------------------------------
# Is the critique needed? (docs/critique_needed.md)
# ---------------------------------------------------------------------------------------------
QUESTION_ARMS = {  # what each arm puts into a group whose answers are all wrong
    "dr_grpo": "nothing (GRPO)",
    "cg_gt": "a refinement written after the critique \"incorrect, the ground truth is X\"",
    "cg_indicative": "a refinement written after the critique \"incorrect\" (no ground truth)",
    "expert": "the reference solution, no critique, no refinement (as LUFFY mixes one in)",
    "cg_no_shaping": "as cg_gt, its tokens trained without the shaping f(p)",
}
MECH_COLUMNS = [("zero_adv_before", "groups without signal, before mixing"),
                ("zero_adv_after", "after mixing"), ("refine_right", "refinements right"),
                ("entropy", "entropy"), ("offpolicy_p", "p of off-policy tokens"),
                ("offpolicy_f", "f(p)")]


def lenders(data: dict) -> dict[tuple, tuple[str, dict]]:
    """A rerun of a headline run that reproduced its accuracies exactly lends it its mechanism:
    {(arm, seed, test, test_rephrased) of a bf16 headline run: (the grid's name, its mechanism)}
    (a later grid's rerun wins)."""
    head = current_setting(data, "bf16")
    key = lambda arm, r: (arm, r["seed"], r["test"], r["test_rephrased"])  # noqa: E731
    wanted = {key(arm, r) for arm in ("cg_gt", "dr_grpo") for r in head["runs"].get(arm, [])}
    return {key(arm, r): (g["name"], r.get("mechanism", {})) for g in data.get("grids", [])
            for arm, rs in g["runs"].items() for r in rs if key(arm, r) in wanted}


def question_runs(data: dict) -> tuple[dict, dict]:
    """{arm: [runs]} for the question's arms: cg_gt and dr_grpo from the current bf16 headline
    setting (the same commands), with the mechanism their reruns lend; the others from the
    question's grid; and that grid."""
    grid = next((g for g in data.get("grids", []) if g["name"] == "critique or answer"), None)
    lent = lenders(data)
    runs = {arm: [dict(r, mechanism={**lent.get((arm, r["seed"], r["test"], r["test_rephrased"]),
                                                (None, {}))[1], **r.get("mechanism", {})})
                  for r in current_setting(data, "bf16")["runs"].get(arm, [])]
            for arm in ("dr_grpo", "cg_gt")}
    for arm, rs in (grid or {}).get("runs", {}).items():
        runs.setdefault(arm, []).extend(r for r in rs if r["seed"] not in
                                        {x["seed"] for x in runs.get(arm, [])})
    return runs, grid


def paired_interval(a: list[dict], b: list[dict], s: str, n: int):
    """(mean, lower, upper) of the paired difference a - b on set s over the seeds both have
    (95 % t interval; nan bounds with one seed), or None when no seed is shared."""
    bb = {r["seed"]: r for r in b}
    d = [report.exact_pct(r[s], n) - report.exact_pct(bb[r["seed"]][s], n) for r in a
         if r["seed"] in bb]
    if not d:
        return None
    mean, _, lo, hi = report.t_interval(d)
    return mean, lo, hi


def paired(a: list[dict], b: list[dict], s: str, n: int) -> str:
    """paired_interval as text: '+8.1 [-14.8, +31.0] not separable'."""
    found = paired_interval(a, b, s, n)
    if found is None:
        return "–"
    mean, lo, hi = found
    if math.isnan(lo):
        return f"{mean:+.1f} (1 seed)"
    return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}] {report.verdict(lo, hi)}"


def critique_table(data: dict) -> str:
    runs, _ = question_runs(data)
    q = data["questions"]
    out = ["| arm | into an all-wrong group | seeds | `test` | `test_rephrased` | Δ `test` vs "
           "`dr_grpo` | Δ `test_rephrased` vs `dr_grpo` |", "|---|---|---|---|---|---|---|"]
    for arm in ("dr_grpo", "cg_gt", "cg_indicative", "expert"):
        rs = runs.get(arm, [])
        if not rs:
            out.append(f"| `{arm}` | {QUESTION_ARMS[arm]} | 0 | not run yet | | | |")
            continue
        means = [sum(report.exact_pct(r[s], q[s]) for r in rs) / len(rs)
                 for s in report.HEADLINE_SETS]
        deltas = ["" if arm == "dr_grpo" else paired(rs, runs["dr_grpo"], s, q[s])
                  for s in report.HEADLINE_SETS]
        out.append(f"| `{arm}` | {QUESTION_ARMS[arm]} | {len(rs)} | {means[0]:.1f} | "
                   f"{means[1]:.1f} | {deltas[0]} | {deltas[1]} |")
    if runs.get("expert"):
        out += ["", "The critique against the reference solution, paired by seed (`cg_gt` − "
                "`expert`): `test` " + paired(runs["cg_gt"], runs["expert"], "test", q["test"]) +
                "; `test_rephrased` " + paired(runs["cg_gt"], runs["expert"], "test_rephrased",
                                               q["test_rephrased"]) + "."]
    return "\n".join(out)


def mechanism_table(data: dict, arms=("dr_grpo", "cg_gt", "cg_indicative", "expert"),
                    runs: dict | None = None) -> str:
    runs = runs if runs is not None else question_runs(data)[0]
    out = ["| arm | " + " | ".join(name for _, name in MECH_COLUMNS) + " |",
           "|---|" + "---|" * len(MECH_COLUMNS)]
    for arm in arms:
        cells = []
        for key, _ in MECH_COLUMNS:
            v = [r["mechanism"][key] for r in runs.get(arm, []) if key in r.get("mechanism", {})]
            cells.append(f"{sum(v) / len(v):.2f} ({len(v)})" if v else "–")
        out.append(f"| `{arm}` | " + " | ".join(cells) + " |")
    return "\n".join(out)


def shaping_grid(data: dict) -> dict | None:
    """The one grid that ran cg_no_shaping, with the cg_gt runs it is compared to (the same grid,
    so that every mechanism number is measured under the same conditions)."""
    return next((g for g in data.get("grids", [])
                 if "cg_no_shaping" in g["runs"] and "cg_gt" in g["runs"]), None)


def collapse_float32(data: dict) -> str:
    """cg_no_shaping on the float32 stand-in, paired by seed with the float32 headline's cg_gt
    (the same commands but for --gamma none), or '' where no such grid ran."""
    grid = next((g for g in data.get("grids", []) if g.get("kind") == "float32"
                 and "cg_no_shaping" in g["runs"]), None)
    head = current_setting(data, "float32")
    if grid is None or head is None:
        return ""
    q, off = data["questions"], grid["runs"]["cg_no_shaping"]
    deltas = [paired(off, head["runs"]["cg_gt"], s, q[s]) for s in report.HEADLINE_SETS]
    ent = change(over_run(off, "train/entropy"), " nats")
    seeds = ", ".join(str(r["seed"]) for r in off)
    return report.wrap(
        f"On the float32 stand-in ({grid['machine']}; {grid['date']}), `cg_no_shaping` seeds "
        f"{seeds} against the float32 headline's `cg_gt` runs of the same seeds: `test` "
        f"{deltas[0]}, `test_rephrased` {deltas[1]}; over a run without shaping the entropy moves "
        f"{ent[0]} ({ent[1]}).")


def change(diffs: list[float], unit: str = "") -> tuple[str, str]:
    """A 95 % t interval over seeds as text, and which way it points: ('+0.43 nats [+0.16,
    +0.71]', 'up'), 'down', or 'no clear change' (an interval holding 0, or one seed)."""
    mean, _, lo, hi = report.t_interval(diffs)
    if math.isnan(lo):
        return f"{mean:+.2f}{unit} (1 seed)", "no clear change"
    way = "up" if lo > 0 else "down" if hi < 0 else "no clear change"
    return f"{mean:+.2f}{unit} [{lo:+.2f}, {hi:+.2f}]", way


def over_run(runs: list[dict], key: str) -> list[float]:
    """Per run, the last logged value of a curve minus the first (steps without a value skipped)."""
    out = []
    for r in runs:
        v = [x for x in r.get("curves", {}).get(key, []) if x is not None]
        if v:
            out.append(v[-1] - v[0])
    return out


def collapse_verdict(data: dict) -> str:
    """The collapse question in words: how entropy and p move over a run with shaping and
    without, and how their means over the run differ, paired by seed (95 % t intervals)."""
    grid = shaping_grid(data)
    if grid is None:
        return "**Not answered yet:** `cg_no_shaping` has no finished run in the results file."
    on, off = grid["runs"].get("cg_gt", []), grid["runs"]["cg_no_shaping"]
    on_mech = {r["seed"]: r.get("mechanism", {}) for r in on}
    paired_means = {key: [r["mechanism"][key] - on_mech[r["seed"]][key] for r in off
                          if key in r.get("mechanism", {}) and key in on_mech.get(r["seed"], {})]
                    for key in ("entropy", "offpolicy_p")}
    if not all(paired_means.values()) or not over_run(off, "train/entropy"):
        return "**Not answered yet:** no seed ran both `cg_gt` and `cg_no_shaping` with curves."
    ent = {arm: change(over_run(rs, "train/entropy"), " nats") for arm, rs in (("off", off),
                                                                               ("on", on))}
    pp = {arm: change(over_run(rs, "offpolicy/p")) for arm, rs in (("off", off), ("on", on))}
    d_ent, d_p = change(paired_means["entropy"], " nats"), change(paired_means["offpolicy_p"])
    word = {"up": "higher", "down": "lower", "no clear change": "no clear difference"}
    kind = f"{grid['kind']}, " if "kind" in grid else ""
    rises, falls = ent["off"][1] == "up", pp["off"][1] == "down"
    end = ("The collapse signature of the release's issue 6, entropy rising while p falls, shows."
           if rises and falls else "Half of the release's issue 6 signature shows: the entropy "
           "rises, p does not fall." if rises else "The release's issue 6 signature (entropy "
           "rising, p falling) does not show at this scale.")
    return report.wrap(
        f"**Shaping off against on ({len(paired_means['entropy'])} seeds, {kind}95 % t "
        "intervals over seeds).** Over a run, first step to last, the policy's entropy moves "
        f"{ent['off'][0]} ({ent['off'][1]}) without shaping and {ent['on'][0]} "
        f"({ent['on'][1]}) with it; the refinement tokens' p moves {pp['off'][0]} "
        f"({pp['off'][1]}) without and {pp['on'][0]} "
        f"({pp['on'][1]}) with. Averaged over the run and paired by seed, entropy is "
        f"{d_ent[0]} ({word[d_ent[1]]}) without shaping, p {d_p[0]} ({word[d_p[1]]}). " + end)


def collapse_table(data: dict) -> str:
    """Shaping on (cg_gt) and off (cg_no_shaping), from shaping_grid; with held-out accuracy,
    paired."""
    grid = shaping_grid(data)
    if grid is None:
        return "`cg_no_shaping` has no finished run in the results file yet."
    q = data["questions"]
    runs = {arm: grid["runs"].get(arm, []) for arm in ("cg_gt", "cg_no_shaping")}
    acc = ["", "| arm | seeds | `test` | `test_rephrased` | Δ `test` | Δ `test_rephrased` |",
           "|---|---|---|---|---|---|"]
    for arm, rs in runs.items():
        means = [f"{sum(r[s] for r in rs) / len(rs):.1f}" if rs else "–"
                 for s in report.HEADLINE_SETS]
        deltas = ["" if arm == "cg_gt" else paired(rs, runs["cg_gt"], s, q[s])
                  for s in report.HEADLINE_SETS]
        acc.append(f"| `{arm}` | {', '.join(str(r['seed']) for r in rs)} | " +
                   " | ".join(means + deltas) + " |")
    f32 = collapse_float32(data)
    return (mechanism_table(data, arms=tuple(runs), runs=runs) + "\n" + "\n".join(acc) + "\n\n" +
            report.wrap("Δ: `cg_no_shaping` − `cg_gt`, paired by seed, 95 % t interval over "
                        f"seeds. From the grid \"{grid['name']}\" ({grid['machine']}; "
                        f"{grid['date']}).") + (f"\n\n{f32}" if f32 else ""))


def question_source(data: dict) -> str:
    _, grid = question_runs(data)
    head = current_setting(data, "bf16")
    lines = [report.wrap(f"- `cg_gt`, `dr_grpo`: the headline's runs ({head['machine']}; "
                         f"{head['dtype']}; {head['date']}; LOG.md, \"{head['log_section']}\").")]
    if grid:
        cmds = "; ".join(f"`{a}` `{c}`" for a, c in grid["commands"].items())
        lines.append(report.wrap(f"- The other arms: {grid['machine']}; {grid['dtype']}; "
                                 f"{grid['date']}; {cmds}; LOG.md, \"{grid['log_section']}\"."
                                 + (f" {sentence(grid['note'])}" if grid.get("note") else "")))
    names = ", ".join(f'"{name}"' for name in dict.fromkeys(n for n, _ in lenders(data).values()))
    if names:
        lines.append(report.wrap(f"- The mechanism numbers of `cg_gt` and `dr_grpo`: reruns of "
                                 f"the same commands that reproduced each run's accuracies "
                                 f"exactly (results.md, {names})."))
    return "\n".join(lines)


def critique_verdict(data: dict) -> str:
    """The answer in one sentence, from the same paired intervals as the table."""
    runs, _ = question_runs(data)
    q = data["questions"]
    seeds = {arm: len(runs.get(arm, [])) for arm in ("cg_gt", "expert", "cg_indicative")}
    if not seeds["expert"]:
        return ("**Not answered yet:** the `expert` arm has no finished run in the results file, "
                "so the critique cannot be told apart from a correct answer in the group.")
    v = [report.verdict(*paired_interval(runs["cg_gt"], runs["expert"], s, q[s])[1:])
         for s in report.HEADLINE_SETS]
    sep = all(x in ("better", "worse") for x in v)
    return report.wrap(
        f"**The answer so far ({seeds['cg_gt']} seeds of `cg_gt`, {seeds['expert']} of `expert`, "
        f"{seeds['cg_indicative']} of `cg_indicative`):** the critique-guided refinement against a "
        f"correct reference solution in the same groups is {v[0]} on `test` and {v[1]} on "
        f"`test_rephrased`; " + ("the two are separable." if sep else "on this model and task "
                                "the seeds cannot tell a critique from a correct answer in the "
                                "group."))


BLOCKS.update(critique_table=critique_table, mechanism_table=mechanism_table,
              critique_verdict=critique_verdict,
              collapse_table=collapse_table, collapse_verdict=collapse_verdict,
              question_source=question_source)


# ---------------------------------------------------------------------------------------------
# Into the results file: a finished ablate.py grid, transcribed
# ---------------------------------------------------------------------------------------------
MECHANISM = {  # name: (metrics.jsonl key, weighted by): the means over a run's training steps
    "zero_adv_before": ("train/zero_adv_frac_before", None),
    "zero_adv_after": ("train/zero_adv_frac_after", None),
    "refine_right": ("refine/reward", "refine/count"),
    "entropy": ("train/entropy", None),
    "offpolicy_p": ("offpolicy/p", None),
    "offpolicy_f": ("offpolicy/f_p", None),
    "clip_frac": ("train/clip_frac", None),
}
UPDATE_TERMS = ("loss", "grad_norm", "train/entropy", "train/clip_frac", "train/entropy_initial")
# the per-step values the figures draw (report.STORY and report.SHAPING), per run
CURVES = ("train/zero_adv_frac_before", "train/zero_adv_frac_after", "train/reward",
          "train/entropy", "offpolicy/p", "grad_norm")


def collect(grid: Path) -> dict[str, list[dict]]:
    """Every finished run of an ablate.py grid: {arm: [{seed, command, test, test_rephrased, step0,
    wall_s, mechanism, curves}]}, accuracies in % to one decimal, as LOG.md writes them; the
    mechanism as the mean over training steps (refine_right weighted by refinements; a step with
    nothing to average is left out); curves: CURVES at steps 1, 2, ... (None: nothing that step)."""
    out, g = {}, json.loads((grid / "grid.json").read_text())
    for done in sorted(grid.glob("*/seed*/DONE")):
        run = done.parent
        cfg = json.loads((run / "config.json").read_text())
        # what ablate.py ran (ablate.run_command, less --output_dir and --overwrite)
        # (grid.json holds the last ablate.py call's arms; an earlier call's are presets)
        flags = g["arms"].get(run.parent.name) or PRESETS[run.parent.name]
        cmd = " ".join(["python train.py", g["common"], flags,
                        f"--seed {cfg['seed']}"]).replace("  ", " ")
        acc = {}
        for step in (0, cfg["max_steps"]):
            recs = [json.loads(x) for x in (run / f"eval-{step}.jsonl").read_text().splitlines()]
            acc[step] = {s: round(100 * sum(r["correct"] for r in recs if r["set"] == s) /
                                  sum(r["set"] == s for r in recs), 1)
                         for s in report.HEADLINE_SETS}
        steps = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                 if "loss" in m]
        for m in steps:  # a baseline step that trained nothing (logged 0 before it was nan)
            if m.get("baseline/examples") == 0:
                m.update({k: float("nan") for k in UPDATE_TERMS if k in m})
        mech = {}
        for name, (key, weight) in MECHANISM.items():
            pts = [(m[key], m[weight] if weight else 1) for m in steps
                   if key in m and not math.isnan(m[key]) and (not weight or m[weight])]
            if pts:
                mech[name] = round(sum(v * w for v, w in pts) / sum(w for _, w in pts), 4)
        curves = {key: [round(m[key], 4) if isinstance(m.get(key), (int, float)) and
                        not math.isnan(m[key]) else None for m in steps] for key in CURVES}
        out.setdefault(run.parent.name, []).append({
            "seed": cfg["seed"], "command": cmd, **acc[cfg["max_steps"]], "step0": acc[0],
            "wall_s": round(json.loads(done.read_text())["wall_s"]), "mechanism": mech,
            "curves": curves})
    return out


def log_rows(runs: dict[str, list[dict]]) -> str:
    """The LOG.md table of a collected grid, one row per command (tests/test_report_headline.py
    reads the accuracies back from it)."""
    out = ["| command | `test` before → after | `test_rephrased` before → after | wall | "
           "mechanism (means over steps) |", "|---|---|---|---|---|"]
    for arm, rs in runs.items():
        for r in sorted(rs, key=lambda r: r["seed"]):
            mech = ", ".join(f"{k} {v:.4f}" for k, v in r["mechanism"].items())
            out.append(f"| `{r['command']}` | {r['step0']['test']:.1f} → {r['test']:.1f} | "
                       f"{r['step0']['test_rephrased']:.1f} → {r['test_rephrased']:.1f} | "
                       f"{r['wall_s']} s | {mech} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Writing and checking
# ---------------------------------------------------------------------------------------------
def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "exercises").glob("*.md")), *sorted((ROOT / "exercises").glob("*.py")),
            ROOT / "docs" / "critique_grpo.ipynb"]


def fill(text: str, data: dict, vals: dict[str, str], where: str) -> str:
    def block(m):
        if m["name"] not in BLOCKS:
            raise SystemExit(f"error: {where}: unknown generated block {m['name']!r}")
        return m[1] + BLOCKS[m["name"]](data).rstrip("\n") + "\n" + m[4]

    def inline(m):
        if m["key"] not in vals:
            raise SystemExit(f"error: {where}: unknown value {m['key']!r}")
        return m[1] + vals[m["key"]] + m[4]
    return INLINE.sub(inline, BLOCK.sub(block, text))


def render(path: Path, data: dict, vals: dict[str, str]) -> str:
    text = path.read_text()
    if path.suffix == ".ipynb":
        nb = json.loads(text)
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                src = fill("".join(cell["source"]), data, vals, str(path))
                cell["source"] = src.splitlines(keepends=True)
        return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    return fill(text, data, vals, str(path))


def curve_grid(data: dict) -> dict | None:
    """The grid whose runs of cg_gt, dr_grpo and cg_no_shaping all hold per-step curves."""
    return next((g for g in data.get("grids", []) if all(
        g["runs"].get(a) and all("curves" in r for r in g["runs"][a])
        for a in ("cg_gt", "dr_grpo", "cg_no_shaping"))), None)


def curve_arms(grid: dict) -> dict[str, dict[int, dict]]:
    """A grid's curves as report.load_grid gives a grid directory: {arm: {seed: {"metrics"}}};
    a run without curves is left out (curve_grid draws only grids whose runs all have them)."""
    out = {}
    for arm, rs in grid["runs"].items():
        for r in rs:
            curves = r.get("curves") or {}
            steps = max(map(len, curves.values()), default=0)
            if steps:
                out.setdefault(arm, {})[r["seed"]] = {"metrics": [
                    {"step": i + 1, **{k: v[i] for k, v in curves.items()
                                       if i < len(v) and v[i] is not None}}
                    for i in range(steps)]}
    return out


def figures(data: dict) -> dict[Path, bytes]:
    """Every figure the pages show, from the results file alone."""
    out = {ROOT / "docs" / "headline.png": report.headline_png(RESULTS)}
    runs, _ = question_runs(data)
    arms = {a: runs[a] for a in ("dr_grpo", "cg_gt", "cg_indicative", "expert") if runs.get(a)}
    step0 = current_setting(data, "bf16")["step0"]
    out[ROOT / "docs" / "critique_seeds.png"] = report.small_png(
        report.seed_dots_figure(arms, report.HEADLINE_SETS, step0))
    grid = curve_grid(data)
    if grid:
        arms = curve_arms(grid)
        for name, panels in (("story.png", report.STORY), ("shaping.png", report.SHAPING)):
            out[ROOT / "docs" / name] = report.small_png(report.story_figure(
                arms, "cg_gt", "dr_grpo", "cg_no_shaping", panels=panels))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 where a page "
                    "differs from what this script would write")
    ap.add_argument("--collect", metavar="GRID", help="print a finished ablate.py grid's runs as "
                    "the results file's JSON and as LOG.md rows, and change nothing")
    args = ap.parse_args(argv)
    if args.collect:
        runs = collect(Path(args.collect))
        print(json.dumps(runs, indent=1))
        print(log_rows(runs))
        return 0
    data = load()
    vals = values(data)
    stale = []
    for path in pages():
        new = render(path, data, vals)
        if new != path.read_text():
            stale.append(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))
            if not args.check:
                path.write_text(new)
    if not args.check:  # (a figure is drawn by matplotlib, byte for byte only by one version)
        for path, png in figures(data).items():
            if not path.exists() or path.read_bytes() != png:
                path.write_bytes(png)
    if stale:
        print(("out of date: " if args.check else "wrote: ") + ", ".join(stale))
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
