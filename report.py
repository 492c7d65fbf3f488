"""Summarise ablate.py grids: a table with paired-bootstrap intervals, curves, and one HTML file.

    python report.py runs/grid                       # -> runs/grid/report/{report.md, curves.png, report.html}
    python report.py runs/grid_a runs/grid_b --ref dr_grpo --out runs/report
    python report.py --headline docs/results_seeds.json --plot docs/headline.png  # the headline
    python report.py runs/grid --story story.png     # the method in 3 panels (cg_gt, dr_grpo,
                                                     # cg_no_shaping)

Table (one per held-out set): each arm's final accuracy as mean +- std over seeds, and its difference
to the reference arm with a 95 % interval from a paired bootstrap: seeds and questions are resampled
together (the same seed and question for both arms), so the interval covers both sources of noise.
If the interval excludes 0 the difference is a verdict; if not, the grid cannot tell the arms apart.
Runs without DONE (unfinished) are left out. The HTML file needs no server and no network.
An arm with runs whose critiques fell back to the ground-truth critique is marked ⚠, with the
fraction per run: such an arm mixes in another critique type. Curves: held-out accuracy is drawn
as markers at the evaluated steps; a panel with nothing to show is left out, and the figure says why.

--headline reads per-seed final accuracies (docs/results_seeds.json, transcribed from LOG.md) and
prints one row per setting and held-out set: both arms' means and their paired difference with a
95 % Student t interval over seeds only (SEEDS_ONLY says why); --plot draws every seed as a dot.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import textwrap
import zlib
from pathlib import Path

import numpy as np

CURVES = [  # (metric key in metrics.jsonl, panel title)
    ("train/reward", "training reward"), ("eval/accuracy", "held-out accuracy (first set)"),
    ("train/entropy", "entropy"), ("train/zero_adv_frac_before", "zero-advantage groups, before mixing"),
    ("train/zero_adv_frac_after", "zero-advantage groups, after mixing"), ("refine/fix_rate", "refinement fix rate"),
    ("critic/tokens_out", "critic tokens out"), ("offpolicy/p", "refinement tokens: mean p"),
    ("offpolicy/f_p", "refinement tokens: mean f(p)"), ("offpolicy/entropy", "entropy of refinement tokens"),
    ("train/entropy_initial", "entropy of initial-answer tokens"), ("train/clip_frac", "clipped fraction"),
    ("kl", "KL to the base model (--log_kl)"), ("baseline/examples", "examples trained (baselines)"),
]


# One colour per arm (ablate.py's names) in every figure and in the HTML report; an arm not listed
# gets one of EXTRA by its name, the same one every time.
PALETTE = {"cg_gt": "#1f77b4", "dr_grpo": "#ff7f0e", "cg_no_shaping": "#2ca02c",
           "cg_indicative": "#9467bd", "expert": "#8c564b", "refine_ft": "#d62728",
           "grpo": "#e377c2", "cg_cot": "#17becf", "sft": "#7f7f7f", "raft": "#bcbd22"}
EXTRA = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]


def arm_color(arm: str) -> str:
    return PALETTE.get(arm) or EXTRA[zlib.crc32(arm.encode()) % len(EXTRA)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def load_grid(dirs: list[str]) -> dict[str, dict[int, dict]]:
    """{arm: {seed: {"metrics": [...], "evals": {step: [records]}, "samples": [...], "wall": s}}} of finished runs."""
    arms: dict[str, dict[int, dict]] = {}
    for d in map(Path, dirs):
        for done in sorted(d.glob("*/seed*/DONE")):
            run, arm, seed = done.parent, done.parent.parent.name, int(done.parent.name.removeprefix("seed"))
            evals = {int(p.stem.split("-")[1]): read_jsonl(p) for p in run.glob("eval-*.jsonl")}
            # ablate.py --evaluate: benchmark.py's per-generation records; a question's score is its pass@1
            extra = [dict(g, set="evaluate:" + g["benchmark"]) for g in read_jsonl(run / "evaluate" / "generations.jsonl")]
            if extra:
                last = max(evals)
                evals[last] = evals[last] + pass_at_1(extra)
            arms.setdefault(arm, {})[seed] = {"metrics": read_jsonl(run / "metrics.jsonl"), "evals": evals,
                                              "samples": read_jsonl(run / "samples.jsonl"),
                                              "wall": json.loads(done.read_text() or "{}").get("wall_s")}
    if not arms:
        raise SystemExit(f"error: no finished run (a seed<k>/ folder with DONE) under {', '.join(dirs)}")
    return arms


def pass_at_1(generations: list[dict]) -> list[dict]:
    """benchmark.py's records (one per benchmark, question and run) -> one per question, `correct` the mean
    over its runs (no step-0 score: their "step 0" column stays empty)."""
    by_q: dict[tuple, list[float]] = {}
    for g in generations:
        by_q.setdefault((g["set"], g["index"]), []).append(float(g["correct"]))
    return [{"set": s, "index": i, "correct": float(np.mean(v))} for (s, i), v in by_q.items()]


def correctness(run: dict, eval_set: str, step: int | None = None) -> np.ndarray:
    """0/1 per question of one eval set, at the last evaluation (or `step`), in file order."""
    step = max(run["evals"]) if step is None else step
    return np.array([float(r["correct"]) for r in run["evals"][step] if r.get("set", "eval") == eval_set])


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """a, b: (seeds, questions) 0/1 correctness of two arms on the same seeds and questions.

    Returns (mean difference, 2.5 % and 97.5 % percentiles of the bootstrap distribution of the mean
    difference), resampling seeds and questions with replacement, each draw applied to both arms."""
    assert a.shape == b.shape and a.ndim == 2, (a.shape, b.shape)
    d = a - b                                                                          # (S, Q)
    rng = np.random.default_rng(seed)
    S, Q = d.shape
    s_idx = rng.integers(0, S, size=(n_boot, S))                                       # (n_boot, S)
    q_idx = rng.integers(0, Q, size=(n_boot, Q))                                       # (n_boot, Q)
    means = np.array([d[s][:, q].mean() for s, q in zip(s_idx, q_idx)])                # (n_boot,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def fallbacks(run: dict) -> tuple[int, int, int]:
    """A run's critiques that fell back to the ground-truth critique (`critic/fallbacks`), its
    critic requests that failed outright (`critic/transport_failures`) and its refinements (all
    steps)."""
    def total(key):
        return int(sum(m[key] for m in run["metrics"] if isinstance(m.get(key), (int, float))))
    return total("critic/fallbacks"), total("critic/transport_failures"), total("refine/count")


def fallback_note(runs: dict[int, dict]) -> str:
    """'' if no run of an arm fell back, else per run that did: 'seed 1: 25.0 % fell back, 10.0 %
    transport failures' (over its refinements; counts where it logged none)."""
    notes = []
    for seed in sorted(runs):
        fell, failed, refined = fallbacks(runs[seed])
        if fell or failed:
            share = (lambda n: f"{pct(n / refined)} %") if refined else str
            notes.append(f"seed {seed}: {share(fell)} fell back"
                         + (f", {share(failed)} transport failures" if failed else ""))
    return "; ".join(notes)


FALLBACK_NOTE = ("⚠: runs whose CoT critiques fell back to the ground-truth critique "
                 "(`critic/fallbacks` over `refine/count`; transport failures: critic requests "
                 "that failed outright, `critic/transport_failures`). Such an arm mixes in "
                 "`indicative_gt` critiques.")


def tables(arms: dict, ref: str, n_boot: int) -> dict[str, list[dict]]:
    """{eval set: [row per arm]} with before/after means, std over seeds and the paired interval vs `ref`."""
    any_run = next(iter(next(iter(arms.values())).values()))
    sets = list(dict.fromkeys(r.get("set", "eval") for r in any_run["evals"][max(any_run["evals"])]))
    out = {}
    for s in sets:
        rows = []
        for arm, runs in arms.items():
            seeds = sorted(runs)
            after = [correctness(runs[k], s).mean() for k in seeds]
            first = [correctness(runs[k], s, min(runs[k]["evals"])) for k in seeds]
            before = [c.mean() if c.size else float("nan") for c in first]  # nan: scored only after training
            row = {"arm": arm, "seeds": seeds, "before": float(np.mean(before)), "after": float(np.mean(after)),
                   "std": float(np.std(after, ddof=1)) if len(after) > 1 else float("nan"),
                   "wall": float(np.mean([runs[k]["wall"] or float("nan") for k in seeds])),
                   "fallbacks": fallback_note(runs)}
            common = [k for k in seeds if k in arms.get(ref, {})]
            if arm != ref and common:
                a = np.stack([correctness(runs[k], s) for k in common])
                b = np.stack([correctness(arms[ref][k], s) for k in common])
                row["diff"], row["lo"], row["hi"] = paired_bootstrap(a, b, n_boot)
                row["paired_seeds"] = len(common)
            rows.append(row)
        out[s] = rows
    return out


def pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def interval(r: dict) -> str:
    """A row's difference to the reference and its 95 % interval, in points."""
    return f"{100 * r['diff']:+.1f} [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]"


def markdown(tabs: dict, ref: str) -> str:
    parts = []
    for s, rows in tabs.items():
        parts += [f"**{s}** (final accuracy %, mean ± std over seeds; Δ vs `{ref}` with a 95 % paired-bootstrap "
                  "interval over seeds and questions)", "",
                  "| arm | seeds | step 0 | final | Δ vs ref [95 % CI] | verdict | wall (s) "
                  "| critique fallbacks |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "diff" in r:
                delta = interval(r)
                verdict_ = verdict(r["lo"], r["hi"])
            else:
                delta, verdict_ = ("reference", "") if r["arm"] == ref else ("no paired seeds", "")
            arm = f"{r['arm']} ⚠" if r["fallbacks"] else r["arm"]
            parts.append(f"| {arm} | {len(r['seeds'])} | {pct(r['before'])} "
                         f"| {pct(r['after'])} ± {pct(r['std'])} | {delta} | {verdict_} "
                         f"| {r['wall']:.0f} | {r['fallbacks'] or '–'} |")
        if any(r["fallbacks"] for r in rows):
            parts.append("\n" + FALLBACK_NOTE)
        if any(r.get("paired_seeds") == 1 for r in rows):
            parts.append("\nWith one paired seed an interval covers question sampling only, not seed-to-seed noise.")
        parts.append("")
    return "\n".join(parts)


# Why a panel has nothing to draw. A metric no run logged (or logged only as nan) is left out with
# NOT_LOGGED's reason; one that is 0 at every step of every run is left out only if it is listed in
# ZERO_MEANS_EMPTY (for other metrics, such as zero-advantage groups after mixing, 0 is a result).
NOT_LOGGED = {
    "refine/fix_rate": "no run refined an answer (no critique, or no all-wrong group)",
    **{f"offpolicy/{k}": "no refinement tokens in any run" for k in ("p", "f_p", "entropy")},
    "kl": "not computed (no --kl_coef and no --log_kl)",
    "baseline/examples": "no supervised baseline (--baseline) among the runs",
}
ZERO_MEANS_EMPTY = {
    "train/clip_frac": "0 at every step of every run: with one update per batch the policy ratio "
                       "is 1, so nothing is clipped",
    "critic/tokens_out": "0 at every step of every run: no model critic (indicative critiques are "
                         "templates, nothing is generated)",
}


def curve_panels(arms: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(panels to draw as (metric, title), panels left out as (title, why))."""
    def values(key):
        return [m[key] for runs in arms.values() for r in runs.values() for m in r["metrics"]
                if isinstance(m.get(key), (int, float)) and not math.isnan(m[key])]
    drawn, left_out = [], []
    for key, title in CURVES:
        v = values(key)
        if not v:
            left_out.append((title, NOT_LOGGED.get(key, "not logged by any run")))
        elif key in ZERO_MEANS_EMPTY and not any(v):
            left_out.append((title, ZERO_MEANS_EMPTY[key]))
        else:
            drawn.append((key, title))
    return drawn, left_out


def curves_note(arms: dict) -> str:
    """One line naming the panels left out of the curves and why ('' if none)."""
    left_out = curve_panels(arms)[1]
    return ("Curves not drawn: " + "; ".join(f"{t} ({why})" for t, why in left_out) + "."
            if left_out else "")


def curves_png(arms: dict) -> bytes:
    """curves_figure() as PNG bytes."""
    import matplotlib.pyplot as plt
    fig = curves_figure(arms)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def seed_series(runs: dict, key: str) -> list[dict]:
    """One {step: value} per seed that logged `key` as a number (nan: nothing to log that step)."""
    series = [{m["step"]: m[key] for m in run["metrics"]
               if isinstance(m.get(key), (int, float)) and not math.isnan(m[key])}
              for run in runs.values()]
    return [pts for pts in series if pts]


def mean_curve(series: list[dict]) -> tuple[list, list]:
    """Steps and, at each, the mean over the seeds that logged it."""
    steps = sorted(set().union(*series)) if series else []
    return steps, [float(np.mean([p[s] for p in series if s in p])) for s in steps]


def curves_figure(arms: dict):
    """One panel per metric: each seed a thin line, the arm's mean over seeds bold. Held-out
    accuracy is measured only at evaluation steps: there each seed is a dot and the mean a marker,
    joined by a dotted line (nothing was measured between them). Panels without data are left out;
    a footer says which and why."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    present, left_out = curve_panels(arms)
    cols = 3
    rows = max(1, math.ceil(len(present) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows + (0.5 if left_out else 0)),
                             squeeze=False)
    for ax, (key, title) in zip(axes.flat, present):
        sparse = key.startswith("eval/")  # measured at a few steps only: markers, not a trajectory
        for arm, runs in arms.items():
            color = arm_color(arm)
            series = seed_series(runs, key)
            for pts in series:
                if sparse:
                    ax.plot(list(pts), list(pts.values()), ls="none", marker="o", ms=3,
                            color=color, alpha=0.4)
                else:
                    ax.plot(list(pts), list(pts.values()), color=color, lw=0.7, alpha=0.35)
            steps, mean = mean_curve(series)
            if steps:
                if sparse:
                    ax.plot(steps, mean, color=color, lw=1.2, ls=":", marker="D", ms=6, label=arm)
                else:
                    ax.plot(steps, mean, color=color, lw=2.2, label=arm)
        if sparse:
            title += "\nmeasured at the marked steps only"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    if present:
        axes.flat[0].legend(fontsize=8)
    footer = 0.0
    if left_out:
        text = textwrap.fill(curves_note(arms), 200)
        footer = (0.25 + 0.17 * text.count("\n")) / fig.get_figheight()
        fig.text(0.01, 0.01, text, fontsize=8, va="bottom", color="0.3")
    fig.tight_layout(rect=(0, footer, 1, 1))
    return fig


STORY = [  # (metric, panel title, y axis, which arms: "cg" = the Critique-GRPO arm, "ref",
    #          "no_shaping")
    ("train/zero_adv_frac_after", "groups without a learning signal\n(zero advantage, after mixing)",
     "share of the step's groups (0-1)", ("ref", "cg")),
    ("train/reward", "training reward", "share of answers right (0-1)", ("ref", "cg")),
    ("train/entropy", "policy entropy, with and without shaping f(p)", "nats per token",
     ("cg", "no_shaping")),
]
SHAPING = [  # the collapse question (docs/critique_needed.md): shaping on ("cg") and off
    ("train/entropy", "policy entropy", "nats per token", ("cg", "no_shaping")),
    ("offpolicy/p", "refinement tokens: mean p under the policy", "probability (0-1)",
     ("cg", "no_shaping")),
    ("grad_norm", "gradient norm (before clipping)", "L2 norm", ("cg", "no_shaping")),
]


def story_figure(arms: dict, cg: str, ref: str, no_shaping: str, panels=STORY):
    """The method in three panels, each seed a thin line and the mean over seeds bold: GRPO's
    all-wrong and all-right groups teach nothing (zero advantage), refinements give them a signal
    back (panel 1, before mixing dashed); the training reward (panel 2); the entropy of the policy
    with shaping and without (panel 3). panels=SHAPING draws the collapse question instead."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = {"cg": cg, "ref": ref, "no_shaping": no_shaping}
    missing = sorted({names[r] for *_, roles in panels for r in roles} - set(arms))
    if missing:
        raise SystemExit(f"error: --story needs the arms {', '.join(missing)}; the grids hold "
                         f"{', '.join(arms)} (--story_arms CG,REF,NO_SHAPING)")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (key, title, ylabel, roles) in zip(axes[0], panels):
        for role in roles:
            arm = names[role]
            series = seed_series(arms[arm], key)
            for pts in series:
                ax.plot(list(pts), list(pts.values()), color=arm_color(arm), lw=0.6, alpha=0.3)
            seeds = f"{len(series)} seed{'s' if len(series) != 1 else ''}"
            ax.plot(*mean_curve(series), color=arm_color(arm), lw=2.2, label=f"{arm} ({seeds})")
            if key == "train/zero_adv_frac_after" and role == "cg":  # what GRPO alone would have had
                ax.plot(*mean_curve(seed_series(arms[arm], "train/zero_adv_frac_before")),
                        color=arm_color(arm), lw=1.4, ls="--", label=f"{arm}, before mixing")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def seed_dots_figure(runs: dict[str, list[dict]], sets: list[str], step0: dict[str, float]):
    """Final held-out accuracy, one dot per seed (spread sideways by seed), per arm and set; the
    mean over seeds a bar, the untrained model's accuracy a dashed line. runs: {arm: [{seed,
    <set>: accuracy in %}]}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.4), sharey=True,
                             squeeze=False)
    for ax, s in zip(axes[0], sets):
        for a, (arm, rs) in enumerate(runs.items()):
            for i, r in enumerate(sorted(rs, key=lambda r: r["seed"])):  # spread by rank
                x = a - 0.12 + 0.24 * i / (len(rs) - 1) if len(rs) > 1 else a
                ax.plot(x, r[s], "o", ms=5, color=arm_color(arm))
            if rs:
                ax.hlines(float(np.mean([r[s] for r in rs])), a - 0.3, a + 0.3,
                          colors=arm_color(arm), lw=2.5)
        ax.axhline(step0[s], color="0.35", ls="--", lw=1, label="step 0 (untrained)")
        ax.set_xticks(range(len(runs)), list(runs), fontsize=8)
        ax.set_title(f"{s}: one dot per seed, bar = mean", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", color="0.92", lw=0.6)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel("final accuracy (%)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def small_png(fig, dpi: int = 90) -> bytes:
    """A matplotlib figure as a small PNG for committing (PIL, matplotlib's own dependency: a
    256-colour palette)."""
    import matplotlib.pyplot as plt
    from PIL import Image
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    small = io.BytesIO()
    Image.open(buf).convert("RGB").quantize(256).save(small, format="png", optimize=True)
    return small.getvalue()


def sample_cards(arms: dict) -> list[dict]:
    """One card per (arm, seed, step, question): the group's initial answers, critiques and refinements."""
    cards: dict[tuple, dict] = {}
    for arm, runs in arms.items():
        for seed, run in runs.items():
            for r in run["samples"]:
                key = (arm, seed, r["step"], r["question"])
                card = cards.setdefault(key, {"arm": arm, "seed": seed, "step": r["step"], "question": r["question"],
                                              "answers": []})
                card["answers"].append({k: r.get(k) for k in ("response", "reward", "critique", "refinement",
                                                             "refinement_reward")})
    for c in cards.values():
        c["all_wrong"] = not any(a["reward"] for a in c["answers"])
        refined = [a for a in c["answers"] if a.get("refinement") is not None]
        c["refined"] = bool(refined)
        c["fixed"] = any((a.get("refinement_reward") or 0) > 0 for a in refined)
    return list(cards.values())


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Critique-GRPO report</title><style>
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px}#curves{max-width:100%}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}
tr.fallback td{background:#fff3cd}
.card{border:1px solid #bbb;border-radius:6px;margin:.6em 0;padding:.5em .8em}.meta{color:#666;font-size:.85em}
.ans{white-space:pre-wrap;font-family:monospace;font-size:.85em;margin:.3em 0;padding:.3em;border-left:4px solid #ccc}
.r1{border-color:#2a2}.r0{border-color:#c33}.crit{background:#f5f5ff}.ref{background:#f3fff3}
#filters>*{margin-right:1em}</style></head><body>
<h1>Critique-GRPO grid report</h1><p class="meta">__SOURCES__</p>__TABLES__
<h2>Curves</h2><img id="curves" alt="training curves" src="data:image/png;base64,__PNG__">
<h2>Samples</h2><div id="filters">
<label>arm <select id="f-arm"><option value="">all</option>__ARM_OPTIONS__</select></label>
<label>seed <select id="f-seed"><option value="">all</option>__SEED_OPTIONS__</select></label>
<label>step <select id="f-step"><option value="">all</option>__STEP_OPTIONS__</select></label>
<label><input type="checkbox" id="f-allwrong"> all-wrong groups only</label>
<label>refinement <select id="f-fixed"><option value="">any</option><option value="fixed">fixed</option>
<option value="notfixed">not fixed</option></select></label>
<label>search <input id="f-text" type="search" placeholder="question or answer text"></label>
<span id="count"></span></div><div id="cards"></div>
<script>
const CARDS = __CARDS__;
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
function render() {
  const v = id => document.getElementById(id).value, text = v("f-text").toLowerCase();
  const shown = CARDS.filter(c => (!v("f-arm") || c.arm === v("f-arm")) && (!v("f-seed") || String(c.seed) === v("f-seed"))
    && (!v("f-step") || String(c.step) === v("f-step")) && (!document.getElementById("f-allwrong").checked || c.all_wrong)
    && (!v("f-fixed") || (c.refined && (v("f-fixed") === "fixed") === c.fixed))
    && (!text || JSON.stringify(c).toLowerCase().includes(text)));
  document.getElementById("count").textContent = shown.length + " of " + CARDS.length + " groups";
  document.getElementById("cards").innerHTML = shown.map(c => `<div class="card"><div class="meta">${esc(c.arm)} · seed ${c.seed}
    · step ${c.step}${c.all_wrong ? " · all wrong" : ""}${c.refined ? (c.fixed ? " · fixed" : " · not fixed") : ""}</div>
    <b>${esc(c.question)}</b>` + c.answers.map(a => `<div class="ans r${a.reward > 0 ? 1 : 0}">[reward ${a.reward}] ${esc(a.response)}</div>`
    + (a.critique != null ? `<div class="ans crit">critique: ${esc(a.critique)}</div>` : "")
    + (a.refinement != null ? `<div class="ans ref r${a.refinement_reward > 0 ? 1 : 0}">[refinement reward ${a.refinement_reward}]
    ${esc(a.refinement)}</div>` : "")).join("") + "</div>").join("");
}
// filters live in the address too (#arm=cg_gt&allwrong=1&fixed=notfixed&text=...), so a view can be linked
const FIELDS = {arm: "f-arm", seed: "f-seed", step: "f-step", fixed: "f-fixed", text: "f-text", allwrong: "f-allwrong"};
for (const [k, v] of new URLSearchParams(location.hash.slice(1))) {
  const e = document.getElementById(FIELDS[k] || "");
  if (e && e.type === "checkbox") e.checked = v === "1"; else if (e) e.value = v;
}
document.querySelectorAll("#filters select, #filters input").forEach(e => e.addEventListener("input", () => {
  const q = new URLSearchParams();
  for (const [k, id] of Object.entries(FIELDS)) {
    const e = document.getElementById(id), v = e.type === "checkbox" ? (e.checked ? "1" : "") : e.value;
    if (v) q.set(k, v);
  }
  history.replaceState(null, "", "#" + q);
  render();
}));
render();
const img = document.getElementById("curves");  // the page says when the curves image has decoded (tests read it)
img.decode().then(() => document.body.dataset.curvesWidth = img.naturalWidth, () => document.body.dataset.curvesWidth = 0);
</script></body></html>"""


def html_tables(tabs: dict, ref: str) -> str:
    parts = []
    for s, rows in tabs.items():
        parts.append(f"<h2>{html.escape(s)}</h2><table><tr><th>arm</th><th>seeds</th><th>step 0 %</th><th>final %</th>"
                     f"<th>Δ vs {html.escape(ref)} [95 % CI]</th><th>wall s</th>"
                     "<th>critique fallbacks</th></tr>")
        for r in rows:
            delta = (interval(r) if "diff" in r
                     else "reference" if r["arm"] == ref else "–")
            mark = (' class="fallback"', " ⚠") if r["fallbacks"] else ("", "")
            parts.append(f"<tr{mark[0]}><td>{html.escape(r['arm'])}{mark[1]}</td>"
                         f"<td>{len(r['seeds'])}</td><td>{pct(r['before'])}</td>"
                         f"<td>{pct(r['after'])} ± {pct(r['std'])}</td><td>{delta}</td>"
                         f"<td>{r['wall']:.0f}</td>"
                         f"<td>{html.escape(r['fallbacks']) or '–'}</td></tr>")
        parts.append("</table>")
        if any(r["fallbacks"] for r in rows):
            note = html.escape(FALLBACK_NOTE).replace("`", "")
            parts.append(f'<p class="meta">{note}</p>')
    return "".join(parts)


# ---- the headline: per-seed final accuracies of the default run and GRPO (docs/results_seeds.json)

# Student t critical values t_{0.975, df}: a two-sided 95 % interval. Beyond df 30 the df-30 value
# is used (at most 4.2 % wider than the exact one).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
        18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
        26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042}

HEADLINE_ARMS = ("cg_gt", "dr_grpo")  # the default run, the GRPO reference (ablate.py's names)
HEADLINE_SETS = ("test", "test_rephrased")

def paper_line(data: dict) -> str:
    """The paper's own numbers (docs/results_seeds.json "paper"), for scale, and which of its rows
    our reference corresponds to."""
    p = data["paper"]
    return (f"For scale, {p['source']}: GRPO {p['grpo']:.2f}, Dr.GRPO {p['dr_grpo']:.2f} (our "
            f"reference `dr_grpo` is Dr.GRPO's recipe: A = r - mean, no std, a constant "
            f"normaliser), Critique-GRPO with indicative + ground-truth critiques (our default's "
            f"kind) {p['cg_gt']:.2f} ({p['cg_gt'] - p['dr_grpo']:+.2f} over Dr.GRPO), with CoT "
            f"critiques {p['cg_cot']:.2f}.")


SEEDS_ONLY = ("Why over seeds only: the paired bootstrap of `report.py`'s grid tables "
              "resamples seeds and questions together, and while the 150 questions are resampled "
              "richly, the seed, the unit that varies most (a run's final accuracy moves by 5-15 "
              "points with it), has only 3 values, so the spread between runs is barely sampled "
              "and the interval comes out too narrow (it called the CPU bf16 `test` difference "
              "+20.9 [+9.3, +32.7], better; a t interval over the 3 seeds alone, t(2) = 4.30, "
              "gives [-4.8, +46.6]).")


def t_interval(diffs) -> tuple[float, float, float, float]:
    """(mean, sample std (n - 1), lower, upper) of a 95 % Student t interval for the mean of
    `diffs`: mean +- t_{0.975, n-1} * std / sqrt(n). With one value the interval is nan."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n < 2:
        return float(d.mean()) if n else float("nan"), float("nan"), float("nan"), float("nan")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = T975[min(n - 1, 30)] * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def verdict(lo: float, hi: float) -> str:
    """'better' / 'worse' if the 95 % interval lies above / below 0, else 'not separable'."""
    if math.isnan(lo) or math.isnan(hi):
        return "one seed: no interval"
    return "better" if lo > 0 else "worse" if hi < 0 else "not separable"


def exact_pct(pct: float, n: int | None) -> float:
    """A percentage rounded to 0.1 as logged -> the exact share of n questions it stands for
    (31.3 of 150 -> 47 questions -> 31.333...), so means and differences are not sums of rounded
    numbers; n None: the value as given. A value no count of n rounds to is an error."""
    if not n:
        return pct
    exact = round(pct * n / 100) * 100 / n
    if abs(exact - pct) > 0.05 + 1e-9:
        raise ValueError(f"{pct} % is no whole number of {n} questions")
    return exact


def headline_rows(data: dict) -> list[dict]:
    """One row per (setting, set): paired seeds, both arms' means over them, the mean paired
    difference (Critique-GRPO - GRPO, points) with its t interval, the verdict, and the runs left
    out because the other arm has no run of that seed. With data["questions"] (questions per set),
    each logged percentage is first turned back into its exact share (exact_pct)."""
    rows = []
    for st in data["settings"]:
        runs = {arm: {r["seed"]: r for r in st["runs"][arm]} for arm in HEADLINE_ARMS}
        paired = sorted(set(runs["cg_gt"]) & set(runs["dr_grpo"]))
        unpaired = [(arm, k) for arm in HEADLINE_ARMS for k in sorted(runs[arm]) if k not in paired]
        for s in HEADLINE_SETS:
            n = data.get("questions", {}).get(s)
            cg = [exact_pct(runs["cg_gt"][k][s], n) for k in paired]
            gr = [exact_pct(runs["dr_grpo"][k][s], n) for k in paired]
            diff, sd, lo, hi = t_interval(np.subtract(cg, gr))
            rows.append({"setting": st["name"], "set": s, "seeds": paired, "step0": st["step0"][s],
                         "cg_gt": float(np.mean(cg)), "dr_grpo": float(np.mean(gr)), "diff": diff,
                         "sd": sd, "lo": lo, "hi": hi, "verdict": verdict(lo, hi),
                         "unpaired": [(arm, k, runs[arm][k][s]) for arm, k in unpaired]})
    return rows


def load_seeds(seeds_file) -> dict:
    return json.loads(Path(seeds_file).read_text())


def wrap(text: str) -> str:
    return textwrap.fill(text, 100, break_on_hyphens=False)


def headline_table_rows(rows: list[dict]) -> list[str]:
    """The Markdown rows of headline_rows' rows, then a line per run left out for want of a pair:
    | setting | set | seeds | step 0 | Critique-GRPO | GRPO | Δ [95 % CI] | verdict |."""
    out, left = [], {}
    for i, r in enumerate(rows):
        name = r["setting"] if i == 0 or rows[i - 1]["setting"] != r["setting"] else ""
        ci = (f"{r['diff']:+.1f} [{r['lo']:+.1f}, {r['hi']:+.1f}]" if not math.isnan(r["lo"])
              else f"{r['diff']:+.1f}")
        out.append(f"| {name} | {r['set']} | {len(r['seeds'])} | {r['step0']:.1f} | "
                   f"{r['cg_gt']:.1f} | {r['dr_grpo']:.1f} | {ci} | {r['verdict']} |")
        for arm, k, v in r["unpaired"]:
            left.setdefault((r["setting"], arm, k), []).append(f"{v:.1f}")
    names = dict(zip(HEADLINE_ARMS, ("Critique-GRPO", "GRPO")))
    for (setting, arm, k), v in left.items():
        out += ["", f"Left out, no pair: {setting} {names[arm]} seed {k} ({' / '.join(v)})."]
    return out


def headline(seeds_file) -> str:
    """The headline table (Markdown): per setting and held-out set, both arms' final accuracy
    (mean over the paired seeds) and their paired difference with a 95 % interval over seeds."""
    data = load_seeds(seeds_file)
    out = [wrap("Final held-out accuracy (%) after the default 10 steps, mean over seeds. Δ = "
                "Critique-GRPO − GRPO, paired by seed, with a 95 % interval over seeds only "
                "(Student t)."), "",
           "| setting | set | seeds | step 0 | Critique-GRPO | GRPO | Δ [95 % CI] | verdict |",
           "|---|---|---|---|---|---|---|---|", *headline_table_rows(headline_rows(data))]
    out += ["", wrap(paper_line(data)), "", wrap(SEEDS_ONLY)]
    return "\n".join(out)


def headline_png(seeds_file, width_px: int | None = None, height_px: int = 420) -> bytes:
    """Per setting a panel, per held-out set a pair of columns (Critique-GRPO, GRPO): every seed a
    dot (spread sideways by seed), a grey line joining the two arms' runs of one seed, the mean
    over paired seeds a bar, the untrained model's accuracy a dashed line, a run that ended
    below it circled in red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    data = load_seeds(seeds_file)
    rows = {(r["setting"], r["set"]): r for r in headline_rows(data)}
    # the current defaults lead, the old ones follow
    settings = sorted(data["settings"], key=lambda st: st.get("defaults") != "current")
    dpi = 100
    width_px = width_px or max(900, 240 * len(settings))  # room for each panel's interval labels
    fig, axes = plt.subplots(1, len(settings), figsize=(width_px / dpi, height_px / dpi), dpi=dpi,
                             sharey=True, squeeze=False)
    top = max(r[s] for st in settings for arm in HEADLINE_ARMS for r in st["runs"][arm]
              for s in HEADLINE_SETS)
    for ax, st in zip(axes[0], settings):
        runs = {arm: {r["seed"]: r for r in st["runs"][arm]} for arm in HEADLINE_ARMS}
        seeds = sorted(set().union(*runs.values()))
        jitter = {k: 0.07 * (i - (len(seeds) - 1) / 2) for i, k in enumerate(seeds)}
        for g, s in enumerate(HEADLINE_SETS):
            x0 = 2.4 * g
            row = rows[st["name"], s]
            ax.hlines(st["step0"][s], x0 - 0.45, x0 + 1.45, colors="0.35", linestyles="--", lw=1)
            for k in row["seeds"]:
                ax.plot([x0 + jitter[k], x0 + 1 + jitter[k]],
                        [runs["cg_gt"][k][s], runs["dr_grpo"][k][s]], color="0.8", lw=0.7,
                        zorder=1)
            for a, arm in enumerate(HEADLINE_ARMS):
                for k, r in runs[arm].items():
                    x, y = x0 + a + jitter[k], r[s]
                    paired = k in row["seeds"]
                    ax.plot(x, y, "o", ms=5, zorder=3, color=arm_color(arm),
                            mfc=arm_color(arm) if paired else "white")
                    if y < st["step0"][s]:
                        ax.plot(x, y, "o", ms=11, mfc="none", mec="red", mew=1.2, zorder=4)
                        ax.annotate(f"seed {k}: {y:.1f}", (x, y), xytext=(7, -3),
                                    textcoords="offset points", fontsize=7, color="red")
                ax.hlines(row[arm], x0 + a - 0.3, x0 + a + 0.3, colors=arm_color(arm), lw=2.5, zorder=2)
            ci = (f"Δ {row['diff']:+.1f}\n[{row['lo']:+.1f}, {row['hi']:+.1f}]"
                  if not math.isnan(row["lo"]) else f"Δ {row['diff']:+.1f}")
            sure = row["verdict"] in ("better", "worse")
            ax.text(x0 + 0.5, top + 3, f"{ci}\n{row['verdict']}", ha="center", va="bottom",
                    fontsize=7.5, color="black" if sure else "0.45",
                    fontweight="bold" if sure else "normal")
        n = len(rows[st["name"], HEADLINE_SETS[0]]["seeds"])
        ax.set_title(textwrap.fill(f"{st['name']}, {n} seeds", 26), fontsize=8.5)
        ax.set_xticks([0.5, 2.9], ["test", "rephrased"], fontsize=8)
        ax.set_xlim(-0.6, 4.0)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", color="0.92", lw=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0][0].set_ylim(0, top + 19)
    axes[0][0].set_ylabel("final accuracy (%)", fontsize=8)
    handles = [Line2D([], [], ls="none", marker="o", color=arm_color("cg_gt"),
                      label="Critique-GRPO (cg_gt)"),
               Line2D([], [], ls="none", marker="o", color=arm_color("dr_grpo"),
                      label="GRPO reference (dr_grpo)"),
               Line2D([], [], color="0.3", lw=2.5, label="mean"),
               Line2D([], [], color="0.35", ls="--", lw=1, label="step 0 (untrained)"),
               Line2D([], [], ls="none", marker="o", ms=9, mfc="none", mec="red",
                      label="ended below step 0")]
    if any(r["unpaired"] for r in rows.values()):
        handles.append(Line2D([], [], ls="none", marker="o", color=arm_color("dr_grpo"), mfc="white",
                              label="no pair, not in the mean"))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.04),
               ncol=len(handles), fontsize=7.5, frameon=False, handletextpad=0.3,
               columnspacing=1.5)
    fig.text(0.5, 0.015, "One dot per seed; grey lines join a seed's two runs. Δ = Critique-GRPO − "
             "GRPO, paired by seed, with a 95 % t-interval over seeds.", ha="center", va="bottom",
             fontsize=7.5, color="0.3")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return small_png(fig, dpi)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grids", nargs="*", help="grid directories written by ablate.py")
    ap.add_argument("--headline", default=None, metavar="SEEDS_JSON",
                    help="print the headline table from per-seed results (docs/results_seeds.json) "
                         "instead of reading grids")
    ap.add_argument("--plot", default=None, metavar="PNG",
                    help="with --headline: also write the per-seed dot plot there")
    ap.add_argument("--ref", default=None, help="reference arm for the differences (default: grpo, else dr_grpo, "
                                                "else the first arm)")
    ap.add_argument("--out", default=None, help="output directory (default: <first grid>/report)")
    ap.add_argument("--n_boot", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--story", default=None, metavar="PNG",
                    help="also draw the method's story in three panels there (zero-advantage "
                         "groups, training reward, entropy with and without shaping)")
    ap.add_argument("--story_arms", default="cg_gt,dr_grpo,cg_no_shaping", metavar="CG,REF,NO_SHAPING",
                    help="the arms --story draws: Critique-GRPO, the GRPO reference, no shaping")
    args = ap.parse_args(argv)
    if len(args.story_arms.split(",")) != 3:
        ap.error("--story_arms takes three arms: CG,REF,NO_SHAPING")
    if args.headline:
        print(headline(args.headline))
        if args.plot:
            Path(args.plot).write_bytes(headline_png(args.headline))
            print(f"wrote {args.plot}")
        return
    if args.plot:
        ap.error("--plot goes with --headline")
    if not args.grids:
        ap.error("give grid directories, or --headline SEEDS_JSON")
    arms = load_grid(args.grids)
    ref = args.ref or next((a for a in ("dr_grpo", "grpo") if a in arms), next(iter(arms)))
    if ref not in arms:
        raise SystemExit(f"error: --ref {ref} is not an arm of the grid ({', '.join(arms)})")
    out = Path(args.out or Path(args.grids[0]) / "report")
    out.mkdir(parents=True, exist_ok=True)
    tabs = tables(arms, ref, args.n_boot)
    md = markdown(tabs, ref)
    print(md)
    note = curves_note(arms)
    (out / "report.md").write_text(md + "\n![curves](curves.png)\n"
                                   + (f"\n{note}\n" if note else ""))
    png = curves_png(arms)
    (out / "curves.png").write_bytes(png)
    cards = sample_cards(arms)
    opts = lambda vals: "".join(f'<option value="{html.escape(str(v))}">{html.escape(str(v))}</option>' for v in vals)
    page = (PAGE.replace("__SOURCES__", html.escape(", ".join(args.grids)))
            .replace("__TABLES__", html_tables(tabs, ref)).replace("__PNG__", base64.b64encode(png).decode())
            .replace("__ARM_OPTIONS__", opts(arms)).replace("__SEED_OPTIONS__", opts(sorted({c["seed"] for c in cards})))
            .replace("__STEP_OPTIONS__", opts(sorted({c["step"] for c in cards})))
            .replace("__CARDS__", json.dumps(cards).replace("</", "<\\/")))
    (out / "report.html").write_text(page)
    if args.story:
        Path(args.story).write_bytes(small_png(story_figure(arms, *args.story_arms.split(","))))
        print(f"wrote {args.story}")
    print(f"wrote {out / 'report.md'}, {out / 'curves.png'}, {out / 'report.html'} ({len(cards)} sample groups)")


if __name__ == "__main__":
    main()
