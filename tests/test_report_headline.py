"""The headline result: docs/results_seeds.json against LOG.md (a transcription error fails), the
t interval and verdict of report.headline() by hand, its table against its own numbers, the plot."""
import json
import math
import re
import statistics
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import report

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "docs" / "results_seeds.json"
DATA = json.loads(SEEDS.read_text())
NUM = re.compile(r"\d+\.\d")


def log_section(heading: str) -> str:
    """LOG.md from the line '## <heading>' to the next '## ' heading."""
    text = (ROOT / "LOG.md").read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def cells(row: str) -> list[str]:
    return [c.strip().replace("**", "") for c in row.strip().strip("|").split("|")]


def command_rows(section: str) -> dict[str, list[str]]:
    """A LOG table of one run per command: {command: the row's other cells}."""
    return {c[0].strip("`"): c[1:] for c in map(cells, section.splitlines())
            if c and c[0].startswith("`") and c[0].endswith("`")}


def seed_table(section: str, columns: list[str]) -> dict[str, dict[int, str]]:
    """A LOG table '| seed | arm | arm ... |': {arm column: {seed: cell}} for the columns given."""
    lines = section.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| seed |")
                and all(c in cells(line) for c in columns))
    names = cells(lines[head])
    table = {c: {} for c in columns}
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        row = dict(zip(names, cells(line)))
        for c in columns:
            table[c][int(row["seed"])] = row[c]
    return table


def before_after(cell: str) -> tuple[float, float]:
    before, after = (float(x) for x in cell.split("→"))
    return before, after


@pytest.mark.parametrize("setting", DATA["settings"] + DATA.get("grids", []),
                         ids=[s["name"] for s in DATA["settings"] + DATA.get("grids", [])])
def test_every_number_is_the_one_in_the_cited_log_section(setting):
    section = log_section(setting["log_section"])
    assert setting["date"] in section
    for torch in re.findall(r"torch \S+", setting["machine"]):
        assert torch.rstrip(",") in section, torch
    step0 = setting["step0"]
    runs = setting["runs"]
    if "grid" in setting:  # ablate.py's grid: one table row per seed, a cell "test / rephrased"
        for line in setting["grid"]["command"]:
            assert line in section, line
        cols = setting["grid"]["arms"]
        table = seed_table(section, list(cols.values()))
        assert f"both {step0['test']:.1f} / {step0['test_rephrased']:.1f} before" in section
        for arm, col in cols.items():
            done = {k for k, v in table[col].items() if v not in ("–", "-", "")}
            assert {r["seed"] for r in runs[arm]} == done, (arm, "every finished seed, no other")
            # the run's train.py command is what ablate.py builds: the flags common to every run,
            # then the arm's, then the seed (ablate.run_command, less --output_dir/--overwrite)
            grid_cmd = " ".join(setting["grid"]["command"])
            arm_flags = re.search(rf'--arm "{col}=([^"]+)"', grid_cmd)[1]
            common = setting["grid"]["command"][-1].strip()
            expect = f"python train.py {common} {arm_flags} --seed {{seed}}"
            assert setting["commands"][arm] == expect
            for r in runs[arm]:
                test, reph = (float(x) for x in table[col][r["seed"]].split("/"))
                assert (r["test"], r["test_rephrased"]) == (test, reph), (arm, r["seed"])
    else:  # one table row per command, cells "before → after"
        rows = command_rows(section)
        for arm, template in setting["commands"].items():
            pattern = re.compile(re.escape(template).replace(r"\{seed\}", r"(\d+)") + "$")
            logged = {int(m[1]) for cmd in rows if (m := pattern.match(cmd))}
            assert {r["seed"] for r in runs[arm]} == logged, (arm, "every logged seed, no other")
            for r in runs[arm]:
                row = rows[template.format(seed=r["seed"])]
                (b_test, a_test), (b_reph, a_reph) = before_after(row[0]), before_after(row[1])
                assert (b_test, b_reph) == (step0["test"], step0["test_rephrased"])
                assert (r["test"], r["test_rephrased"]) == (a_test, a_reph), (arm, r["seed"])
    # and, literally: every number of the setting is written in that section
    numbers = [*step0.values()] + [r[s] for arm in runs.values() for r in arm
                                   for s in report.HEADLINE_SETS]
    found = set(NUM.findall(section))
    assert all(f"{x:.1f}" in found for x in numbers)
    # the mechanism numbers too (shares with two decimals, or four where collected from a grid)
    shares = set(re.findall(r"\d+\.\d+", section))
    for arm in runs.values():
        for r in arm:
            for key, x in r.get("mechanism", {}).items():
                assert f"{x:.2f}" in shares or f"{x:.4f}" in shares, (r["seed"], key, x)


def test_a_transcription_error_would_fail():
    setting = json.loads(json.dumps(DATA["settings"][1]))
    setting["runs"]["cg_gt"][4]["test_rephrased"] = 14.0  # seed 4 was 11.0
    with pytest.raises(AssertionError):
        test_every_number_is_the_one_in_the_cited_log_section(setting)
    setting = json.loads(json.dumps(DATA["settings"][2]))
    r = setting["runs"]["dr_grpo"]
    r[0]["test"], r[1]["test"] = r[1]["test"], r[0]["test"]  # two seeds swapped
    with pytest.raises(AssertionError):
        test_every_number_is_the_one_in_the_cited_log_section(setting)


def test_t_interval_by_hand():
    # diffs 24.0, 29.4, 9.4: mean 62.8 / 3 = 20.9333; squared deviations 3.0667^2 + 8.4667^2 +
    # 11.5333^2 = 214.1067, sd = sqrt(214.1067 / 2) = 10.3467; t(2) = 4.303,
    # half width 4.303 * 10.3467 / sqrt(3) = 25.705
    mean, sd, lo, hi = report.t_interval([24.0, 29.4, 9.4])
    assert mean == pytest.approx(20.9333, abs=1e-4) and sd == pytest.approx(10.3467, abs=1e-4)
    assert (lo, hi) == (pytest.approx(20.9333 - 25.705, abs=1e-3),
                        pytest.approx(20.9333 + 25.705, abs=1e-3))
    # two seeds, diffs 1 and 3: mean 2, sd sqrt(2), t(1) = 12.706 -> 2 +- 12.706
    assert report.t_interval([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)),
                                             pytest.approx(2 - 12.706), pytest.approx(2 + 12.706))
    mean, sd, lo, hi = report.t_interval([5.0])  # one seed: no interval
    assert mean == 5.0 and math.isnan(sd) and math.isnan(lo) and math.isnan(hi)
    assert report.T975[2] == 4.303 and report.T975[5] == 2.571 and sorted(report.T975) == list(
        range(1, 31))


def test_verdict():
    assert report.verdict(0.5, 3.0) == "better"
    assert report.verdict(-3.0, -0.5) == "worse"
    assert report.verdict(-1.0, 2.0) == "not separable"
    assert report.verdict(0.0, 2.0) == "not separable"  # touching 0 does not exclude it
    assert report.verdict(float("nan"), float("nan")) == "one seed: no interval"


def test_headline_table_holds_exactly_the_computed_numbers():
    md = report.headline(SEEDS)
    rows = [cells(line) for line in md.splitlines() if line.startswith("| ")][1:]
    computed = report.headline_rows(DATA)
    assert len(rows) == len(computed) == 2 * len(DATA["settings"])
    for row, r, (st, s) in zip(rows, computed, [(st, s) for st in DATA["settings"]
                                               for s in report.HEADLINE_SETS]):
        # recomputed here from the JSON, independently of headline_rows: the paired seeds' means
        # and their per-seed differences
        # (each logged percentage as the exact share of questions it rounds: 31.3 % of 150 = 47/150)
        n = DATA["questions"][s]
        share = lambda pct: Fraction(round(Fraction(str(pct)) * n / 100) * 100, n)
        cg = {x["seed"]: share(x[s]) for x in st["runs"]["cg_gt"]}
        gr = {x["seed"]: share(x[s]) for x in st["runs"]["dr_grpo"]}
        assert all(abs(share(x[s]) - Fraction(str(x[s]))) <= Fraction(1, 20)
                   for arm in st["runs"].values() for x in arm)
        seeds = sorted(cg.keys() & gr.keys())
        d = [cg[k] - gr[k] for k in seeds]
        half = report.T975[len(d) - 1] * statistics.stdev(d) / math.sqrt(len(d))
        mean = float(statistics.mean(d))
        expect = [r["setting"] if s == "test" else "", s, str(len(seeds)), f"{st['step0'][s]:.1f}",
                  f"{float(statistics.mean(cg[k] for k in seeds)):.1f}",
                  f"{float(statistics.mean(gr[k] for k in seeds)):.1f}",
                  f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]",
                  "better" if mean - half > 0 else "worse" if mean + half < 0 else "not separable"]
        assert row == expect
        assert r["diff"] == pytest.approx(mean) and r["lo"] == pytest.approx(mean - half)
    assert "Left out, no pair: H100 float32 (old defaults) GRPO seed 6 (23.3 / 14.0)." in md
    assert report.paper_line(DATA) in md.replace("\n", " ") and "41.18" in md and "42.66" in md
    # the sentence README reuses quotes the bf16 `test` row: it must be this table's interval
    bf16 = computed[0]
    assert f"gives [{bf16['lo']:+.1f}, {bf16['hi']:+.1f}]" in report.SEEDS_ONLY
    # the README's headline holds the current-default settings' rows of this table
    readme = (ROOT / "README.md").read_text()
    current = report.headline_table_rows(report.headline_rows(dict(DATA, settings=[
        s for s in DATA["settings"] if s.get("defaults") == "current"])))
    rows = [line for line in current if line.startswith("|")]
    assert rows and all(line in readme and line.split("|", 3)[3] in md for line in rows)


def test_headline_cli_and_plot(tmp_path, capsys):
    png = tmp_path / "headline.png"
    report.main(["--headline", str(SEEDS), "--plot", str(png)])
    assert report.headline(SEEDS) in capsys.readouterr().out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 80_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (max(900, 240 * len(DATA["settings"])), 420)
    with pytest.raises(SystemExit):
        report.main(["--plot", str(png)])  # --plot without --headline


def test_exact_pct():
    assert report.exact_pct(31.3, 150) == 47 * 100 / 150 and report.exact_pct(11.0, 100) == 11.0
    assert report.exact_pct(31.3, None) == 31.3
    with pytest.raises(ValueError):
        report.exact_pct(31.5, 150)  # 47.25 questions


def test_headline_rows_leave_unpaired_seeds_out_of_the_means():
    data = {"settings": [{"name": "x", "step0": {"test": 10.0, "test_rephrased": 5.0}, "runs": {
        "cg_gt": [{"seed": 0, "test": 30.0, "test_rephrased": 20.0}],
        "dr_grpo": [{"seed": 0, "test": 20.0, "test_rephrased": 20.0},
                 {"seed": 1, "test": 90.0, "test_rephrased": 90.0}]}}]}
    test, reph = report.headline_rows(data)
    assert test["seeds"] == [0] and test["dr_grpo"] == 20.0 and test["diff"] == 10.0
    assert test["verdict"] == "one seed: no interval" and test["unpaired"] == [("dr_grpo", 1, 90.0)]
    assert np.isnan(reph["lo"])
