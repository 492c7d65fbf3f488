"""Summarise ablate.py grids: a table with paired-bootstrap intervals, curves, and one HTML file.

    python report.py runs/grid                       # -> runs/grid/report/{report.md, curves.png, report.html}
    python report.py runs/grid_a runs/grid_b --ref dr_grpo --out runs/report

Table (one per held-out set): each arm's final accuracy as mean +- std over seeds, and its difference
to the reference arm with a 95 % interval from a paired bootstrap: seeds and questions are resampled
together (the same seed and question for both arms), so the interval covers both sources of noise.
If the interval excludes 0 the difference is a verdict; if not, the grid cannot tell the arms apart.
Runs without DONE (unfinished) are left out. The HTML file needs no server and no network.
An arm with runs whose critiques fell back to the ground-truth critique is marked ⚠, with the
fraction per run: such an arm mixes in another critique type.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def load_grid(dirs: list[str]) -> dict[str, dict[int, dict]]:
    """{arm: {seed: {"metrics": [...], "evals": {step: [records]}, "samples": [...], "wall": s}}} of finished runs."""
    arms: dict[str, dict[int, dict]] = {}
    for d in map(Path, dirs):
        for done in sorted(d.glob("*/seed*/DONE")):
            run, arm, seed = done.parent, done.parent.parent.name, int(done.parent.name.removeprefix("seed"))
            evals = {int(p.stem.split("-")[1]): read_jsonl(p) for p in run.glob("eval-*.jsonl")}
            # ablate.py --evaluate: evaluate.py's per-generation records; a question's score is its pass@1
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
    """evaluate.py's records (one per benchmark, question and run) -> one per question, `correct` the mean
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
                verdict = "better" if r["lo"] > 0 else "worse" if r["hi"] < 0 else "not separable"
            else:
                delta, verdict = ("reference", "") if r["arm"] == ref else ("no paired seeds", "")
            arm = f"{r['arm']} ⚠" if r["fallbacks"] else r["arm"]
            parts.append(f"| {arm} | {len(r['seeds'])} | {pct(r['before'])} "
                         f"| {pct(r['after'])} ± {pct(r['std'])} | {delta} | {verdict} "
                         f"| {r['wall']:.0f} | {r['fallbacks'] or '–'} |")
        if any(r["fallbacks"] for r in rows):
            parts.append("\n" + FALLBACK_NOTE)
        if any(r.get("paired_seeds") == 1 for r in rows):
            parts.append("\nWith one paired seed an interval covers question sampling only, not seed-to-seed noise.")
        parts.append("")
    return "\n".join(parts)


def curves_png(arms: dict) -> bytes:
    """One panel per metric: each seed a thin line, the arm's mean over seeds bold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    present = [(k, t) for k, t in CURVES if any(isinstance(m.get(k), (int, float)) and not math.isnan(m[k])
                                                 for runs in arms.values() for r in runs.values() for m in r["metrics"])]
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(present) / cols), cols, figsize=(5 * cols, 3.2 * math.ceil(len(present) / cols)),
                             squeeze=False)
    for ax, (key, title) in zip(axes.flat, present):
        for c, (arm, runs) in enumerate(arms.items()):
            color = f"C{c}"
            series = []
            for run in runs.values():
                pts = {m["step"]: m[key] for m in run["metrics"] if key in m and m[key] is not None
                       and not (isinstance(m[key], float) and math.isnan(m[key]))}
                if pts:
                    ax.plot(list(pts), list(pts.values()), color=color, lw=0.7, alpha=0.35)
                    series.append(pts)
            steps = sorted(set().union(*series))  # the mean over the seeds that logged a step (nan = nothing to log)
            if steps:
                ax.plot(steps, [np.mean([p[s] for p in series if s in p]) for s in steps], color=color, lw=2.2,
                        label=arm)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grids", nargs="+", help="grid directories written by ablate.py")
    ap.add_argument("--ref", default=None, help="reference arm for the differences (default: grpo, else dr_grpo, "
                                                "else the first arm)")
    ap.add_argument("--out", default=None, help="output directory (default: <first grid>/report)")
    ap.add_argument("--n_boot", type=int, default=2000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    arms = load_grid(args.grids)
    ref = args.ref or next((a for a in ("grpo", "dr_grpo") if a in arms), next(iter(arms)))
    if ref not in arms:
        raise SystemExit(f"error: --ref {ref} is not an arm of the grid ({', '.join(arms)})")
    out = Path(args.out or Path(args.grids[0]) / "report")
    out.mkdir(parents=True, exist_ok=True)
    tabs = tables(arms, ref, args.n_boot)
    md = markdown(tabs, ref)
    print(md)
    (out / "report.md").write_text(md + "\n![curves](curves.png)\n")
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
    print(f"wrote {out / 'report.md'}, {out / 'curves.png'}, {out / 'report.html'} ({len(cards)} sample groups)")


if __name__ == "__main__":
    main()
