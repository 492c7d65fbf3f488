"""docs/ stays true to the code: citations of loss.py lines point into the cited function, every
relative link exists, every number of docs/algorithm.md is recomputed from loss.py, and every metric
train.py logs and every field of its console line is explained in docs/glossary.md.

Citation format (the only one docs/*.md may use for line numbers):
    [`loss.py` L18–L36 `group_advantages`](../loss.py#L18-L36)     lines 18 to 36 of loss.py
    [`loss.py` L62 `policy_loss`](../loss.py#L62)                   one line
A citation that starts at the function's `def` cites the whole function and must end at its last
line; any other must lie inside the function. Functions without line numbers:
    [`critique.py` `mix_groups`](../critique.py)
"""
import ast
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

import loss as L
from support import recording

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
ALGORITHM = ROOT / "docs" / "algorithm.md"
GLOSSARY = ROOT / "docs" / "glossary.md"
DEVIATIONS = ROOT / "docs" / "deviations.md"

CITE = re.compile(r"\[`(?P<file>[\w/.]+\.py)` L(?P<a>\d+)(?:–L(?P<b>\d+))? `(?P<name>\w+)`\]"
                  r"\(\.\./(?P<target>[\w/.]+\.py)#L(?P<ta>\d+)(?:-L(?P<tb>\d+))?\)")
NAMED = re.compile(r"\[`(?P<file>[\w/.]+\.py)` `(?P<name>\w+)`\]\(\.\./(?P<target>[\w/.]+\.py)\)")
STRAY = re.compile(r"\bL\d+\b|\blines? \d+\s*[–-]\s*\d+")
HEADER = re.compile(r"`(# ---- [^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)"          # [text](path "title")
                  r"|<(?:img|a)\s[^>]*(?:src|href)=\"([^\"]+)\"")   # <img src=..>, <a href=..>


def spans(source: str) -> dict[str, tuple[int, int]]:
    """Top-level functions and classes: name -> (first line incl. decorators, last line)."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out[node.name] = (first, node.end_lineno)
    return out


def top_level_names(source: str) -> set[str]:
    names = set(spans(source))
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def citation_errors(text: str, sources: dict[str, str]) -> list[str]:
    """Every problem with the line citations and named functions of one page."""
    errors, found = [], 0
    for m in CITE.finditer(text):
        found += 1
        file, name, a = m["file"], m["name"], int(m["a"])
        b = int(m["b"] or a)
        cite = m.group(0)
        if m["target"] != file or m["ta"] != m["a"] or (m["tb"] or m["ta"]) != (m["b"] or m["a"]):
            errors.append(f"{cite}: the link's file or lines differ from the text's")
            continue
        if file not in sources:
            errors.append(f"{cite}: no such file")
            continue
        span = spans(sources[file]).get(name)
        if span is None:
            errors.append(f"{cite}: {file} has no top-level function {name}")
            continue
        first, last = span
        if not first <= a <= b <= last:
            errors.append(f"{cite}: {name} spans lines {first}-{last} of {file} now")
        elif a == first and b != last:
            errors.append(f"{cite}: starts at the def, so it cites the whole function, which ends "
                          f"at line {last} now")
    for m in NAMED.finditer(text):
        if m["target"] != m["file"] or m["file"] not in sources:
            errors.append(f"{m.group(0)}: link and text differ, or no such file")
        elif m["name"] not in top_level_names(sources[m["file"]]):
            errors.append(f"{m.group(0)}: {m['file']} defines no {m['name']}")
    stray = STRAY.findall(CITE.sub("", text))
    if stray:
        errors.append(f"line numbers outside the citation format: {stray}")
    return errors


def sources_of_repo() -> dict[str, str]:
    return {p.name: p.read_text() for p in ROOT.glob("*.py")}


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


# ---------------------------------------------------------------------------------------------
# Citations, names, step headers, links
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_line_citations_point_into_the_cited_function(page):
    assert citation_errors(page.read_text(), sources_of_repo()) == []


def test_algorithm_page_cites_every_equation_of_loss_py():
    cited = {m["name"] for m in CITE.finditer(ALGORITHM.read_text()) if m["file"] == "loss.py"}
    assert {"group_advantages", "shaping", "policy_loss", "aggregate", "entropy", "kl_k3"} <= cited


def test_citations_fail_when_loss_py_drifts():
    text, sources = ALGORITHM.read_text(), sources_of_repo()
    assert citation_errors(text, sources) == []
    lines = sources["loss.py"].splitlines(keepends=True)
    # a line added above every function: each citation now points one line too high
    shifted = dict(sources, **{"loss.py": "".join(lines[:16] + ["# a new comment\n"] + lines[16:])})
    assert len(citation_errors(text, shifted)) >= 6
    # a line added inside one function: its whole-function citation no longer ends at its end
    first, last = spans(sources["loss.py"])["policy_loss"]
    grown = "".join(lines[:last - 1] + ["    pass\n"] + lines[last - 1:])
    grown = dict(sources, **{"loss.py": grown})
    errors = citation_errors(text, grown)
    assert errors and all("policy_loss" in e or "aggregate" in e or "entropy" in e or "kl_k3" in e
                          or "off_policy_health" in e for e in errors)
    assert any(f"L{first}–L{last} `policy_loss`" in e for e in errors)


def test_citation_checker_rejects_other_formats():
    assert citation_errors("see loss.py lines 18-36", sources_of_repo())
    assert citation_errors("[`loss.py` L18–L36 `shaping`](../loss.py#L18-L36)", sources_of_repo())
    assert citation_errors("[`loss.py` L18–L36 `group_advantages`](../loss.py#L18-L37)",
                           sources_of_repo())


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_step_headers_named_in_docs_exist(page):
    code = "\n".join(sources_of_repo().values())
    for header in HEADER.findall(page.read_text()):
        header = " ".join(header.split())
        assert header in code, f"{page.name} names {header!r}, which no top-level .py file has"


def markdown_of(path: Path) -> str:
    """The Markdown a reader sees in a file: a page; a notebook's markdown cells; the docstrings of
    a Python file (module, classes, functions)."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    if path.suffix == ".py":
        tree = ast.parse(path.read_text())
        nodes = [tree] + [n for n in ast.walk(tree)
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        return "\n\n".join(d for d in map(ast.get_docstring, nodes) if d)
    return path.read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without Markdown, lowercased, every character but
    letters, digits, '-', '_' and spaces dropped, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a file's headings (and explicit <a name/id>) give, duplicates numbered -1, -2."""
    text = without_code_blocks(markdown_of(path))
    seen, out = Counter(), set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        s = slug(m[1])
        out.add(s if not seen[s] else f"{s}-{seen[s]}")
        seen[s] += 1
    out |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return out


def link_errors(path: Path, root: Path = ROOT) -> list[str]:
    """Every relative link or image of a file that leaves the repository, names a missing path, or
    names an anchor (#section) that no heading of its target gives."""
    errors = []
    for m in LINK.finditer(without_code_blocks(markdown_of(path))):
        target = m.group(1) or m.group(2)
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        where, _, anchor = target.partition("#")
        where = where.split("?")[0]
        file = (path.parent / where).resolve() if where else path
        if root.resolve() not in file.parents:
            errors.append(f"{target}: outside the repository (a clone does not have it)")
        elif not file.exists():
            errors.append(f"{target}: no such path")
        elif anchor and file.suffix in (".md", ".ipynb") and anchor not in anchors(file):
            errors.append(f"{target}: {file.name} has no heading with the anchor #{anchor}")
    return errors


LINKED = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *DOCS,
          *sorted((ROOT / "docs").glob("*.ipynb")), *sorted((ROOT / "exercises").glob("*.md")),
          *sorted((ROOT / "exercises").glob("*.py"))]


@pytest.mark.parametrize("page", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve_inside_the_repository(page):
    assert link_errors(page) == [], f"{page.relative_to(ROOT)}: broken links"


def test_the_link_checker_catches_what_it_should(tmp_path):
    assert slug("1–2. Sample, then verify") == "12-sample-then-verify"
    assert slug("The `loss` and [Obj](x.md): A_i!") == "the-loss-and-obj-a_i"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Title\n## Same\n## Same\n```\n# not a heading\n```\n")
    page = tmp_path / "docs" / "a.md"
    page.write_text("[ok](b.md#title) [ok](b.md#same-1) [self](#top) [web](https://x.org/#y)\n"
                    "[bad](b.md#not-a-heading) [gone](c.md) [out](../../shared/ALGORITHM.md)\n"
                    "# Top\n")
    errors = link_errors(page, root=tmp_path)
    assert [e.split(":")[0] for e in errors] == ["b.md#not-a-heading", "c.md",
                                                  "../../shared/ALGORITHM.md"], errors


# ---------------------------------------------------------------------------------------------
# docs/algorithm.md: every number from the code
# ---------------------------------------------------------------------------------------------
def computed_table(text: str, name: str) -> list[list[str]]:
    m = re.search(rf"<!-- computed: {name} -->\n(.*?)<!-- /computed -->", text, flags=re.S)
    assert m, f"no computed table {name!r}"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in m[1].splitlines()]
    return rows[2:]  # after the header and the |---| line


def matches(cell: str, value: float) -> bool:
    """cell, a number as printed, is value rounded to the cell's decimals."""
    cell = cell.replace("−", "-")
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return abs(float(cell) - value) <= 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12


def shaping_and_grad(p: float, gamma: float) -> tuple[float, float]:
    logp = torch.tensor(math.log(p), dtype=torch.float64, requires_grad=True)
    f = L.shaping(torch.exp(logp), gamma)
    (grad,) = torch.autograd.grad(f, logp)
    return f.item(), grad.item()


def test_shaping_table_is_computed_by_loss_shaping():
    rows = computed_table(ALGORITHM.read_text(), "shaping")
    assert len(rows) >= 8
    for gamma, p, f_cell, grad_cell, times_cell in rows:
        f, grad = shaping_and_grad(float(p), float(gamma))
        at_one = shaping_and_grad(1.0, float(gamma))[1]
        where = f"gamma {gamma}, p {p}"
        assert matches(f_cell, f), f"{where}: f(p) is {f:.6g}, the page says {f_cell}"
        assert matches(grad_cell, grad), f"{where}: df/dlogp {grad:.6g}, the page {grad_cell}"
        assert matches(times_cell, grad / at_one), f"{where}: ratio {grad / at_one:.6g}"
    landmarks = {(r[0], r[1]) for r in rows}
    assert {("0.1", "0.1"), ("0.1", "0.5"), ("0.1", "1")} <= landmarks  # max, 0.1389, p -> 1


def _advantages(rewards: list[float], std: str) -> torch.Tensor:
    r, g = torch.tensor(rewards), torch.zeros(len(rewards), dtype=torch.long)
    if std == "population":
        return (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
    return L.group_advantages(r, g, scale_by_std={"none": False, "Bessel": True}[std])


def test_advantage_table_is_computed_by_group_advantages():
    rows = computed_table(ALGORITHM.read_text(), "advantages")
    assert len(rows) >= 6
    for rewards_cell, std, wrong_cell, right_cell, sq_cell in rows:
        rewards = [float(x) for x in rewards_cell.split(",")]
        A = _advantages(rewards, std).tolist()
        for reward, cell in ((0.0, wrong_cell), (1.0, right_cell)):
            values = [a for a, r in zip(A, rewards) if r == reward]
            if cell == "–":
                assert not values, f"{rewards_cell} {std}: has rewards {reward}"
            else:
                assert values and all(matches(cell, a) for a in values), \
                    f"{rewards_cell} {std}: A of r = {reward} is {values}, the page says {cell}"
        assert matches(sq_cell, sum(a * a for a in A)), f"{rewards_cell} {std}: sum of A^2"


def test_every_number_on_the_algorithm_page_is_a_computed_cell():
    text = ALGORITHM.read_text()
    tables = [computed_table(text, "shaping"), computed_table(text, "advantages"),
              computed_table(DEVIATIONS.read_text(), "defaults")]
    cells = {c.strip("`").replace("−", "-").lstrip("-") for rows in tables for row in rows
             for c in row}
    prose = re.sub(r"<!-- computed: \w+ -->.*?<!-- /computed -->", "", text, flags=re.S)
    prose = re.sub(r"arXiv \d{4}\.\d{4,5}|https?://[^)\s]+", "", prose)  # the paper's id, URLs
    readme = (ROOT / "README.md").read_text()
    numbers = re.findall(r"(?<![\w.])\d+\.\d{2,}(?!\w|\.\d)", prose)
    assert numbers, "the regex finds nothing"
    for x in numbers:
        # the only exception: a flag value the README's baseline table gives
        assert x in cells or f"--kl_coef {x}" in readme, f"{x} is not computed by a table"


def test_claims_of_the_algorithm_page_hold():
    # ratio 1 (old_logp = logp.detach()): the gradient is -A, and the clip never fires
    logp = torch.log(torch.tensor([[0.3, 0.9]])).requires_grad_(True)
    A, off = torch.tensor([0.7]), torch.tensor([False])
    L.policy_loss(logp, logp.detach(), A, off, clip_eps=0.2, gamma=0.1).sum().backward()
    assert torch.allclose(logp.grad, torch.full((1, 2), -0.7))
    health = L.off_policy_health(logp, torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), off,
                                 logp.detach(), 0.2, 0.1)
    assert health["on_clipped"] == 0
    # the maximum of df/dlogp is 1/4 at p = gamma, for any gamma, and p and gamma^2/p weigh the same
    for gamma in (0.01, 0.1, 0.5):
        assert shaping_and_grad(gamma, gamma)[1] == pytest.approx(0.25)
        assert shaping_and_grad(gamma * 1.1, gamma)[1] < 0.25
        assert shaping_and_grad(gamma / 1.1, gamma)[1] < 0.25
        mirrored = shaping_and_grad(gamma**2 / 0.3, gamma)[1]
        assert shaping_and_grad(0.3, gamma)[1] == pytest.approx(mirrored)
    # gamma = 0 is refused
    with pytest.raises(AssertionError):
        L.shaping(torch.tensor([0.5]), 0.0)
    # a constant denominator: two micro-batches add up to the whole batch
    per_token, mask = torch.randn(6, 5), torch.rand(6, 5) > 0.3
    whole = L.aggregate(per_token, mask, 30.0)
    halves = L.aggregate(per_token[:2], mask[:2], 30.0) + L.aggregate(per_token[2:], mask[2:], 30.0)
    assert torch.allclose(whole, halves)


def test_defaults_table_matches_the_config():
    import train
    cfg = train.Config()
    rows = computed_table(DEVIATIONS.read_text(), "defaults")
    assert len(rows) >= 10
    for flag, default, *_ in rows:
        field = flag.strip("`").removeprefix("--")
        value = default.strip("`")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a string such as all_wrong
        assert getattr(cfg, field) == value and type(getattr(cfg, field)) is type(value), \
            f"{flag}: Config says {getattr(cfg, field)!r}, the page {default}"


# ---------------------------------------------------------------------------------------------
# docs/glossary.md: every metric and console field explained
# ---------------------------------------------------------------------------------------------
def test_every_metric_of_step_metrics_is_in_the_glossary():
    import dataclasses

    import train
    glossary = GLOSSARY.read_text()
    phases = ("sample", "verify", "critique", "refine", "update")
    tot = Counter({"reward": 1, "samples": 2, "groups": 1, "refined": 1, "wrong_refined": 1,
                   "off_tokens": 1, "on_tokens": 1, "examples": 1, "example_tokens": 1,
                   **{f"time/{p}": 1.0 for p in phases}})
    sums = {"grad_norm": 0.0, "skipped": 0}
    keys = set()
    for baseline in ("none", "sft"):
        cfg = dataclasses.replace(train.Config(), baseline=baseline)
        for compute_kl in (False, True):
            keys |= set(recording.step_metrics(tot, sums, cfg, compute_kl))
    keys |= {"step", "eval/accuracy", "eval/<set>/accuracy", "time/eval"}
    assert {"train/reward", "train/zero_adv_frac_after", "baseline/examples", "time/update"} <= keys
    missing = sorted(k for k in keys if f"`{k}`" not in glossary)
    assert missing == [], f"docs/glossary.md does not explain {missing}"


def test_every_field_of_the_console_line_is_in_the_glossary():
    glossary = GLOSSARY.read_text()
    code = (ROOT / "support" / "recording.py").read_text()  # where the console line is written
    fields = set(re.findall(r"(\w+) \{m\['", code))  # the console line: "gnorm {m['grad_norm']"
    assert {"reward", "refine", "fix", "zero_adv", "loss", "gnorm", "ent", "len"} <= fields
    for field in fields:
        assert re.search(rf"^\| `{field}[ `]", glossary, flags=re.M), f"console field {field}"


def test_benchmark_outputs_are_in_the_glossary():
    import benchmark
    glossary = GLOSSARY.read_text()
    rows = [{"question": "a"}, {"question": "a"}, {"question": "b"}]
    keys = set(benchmark.summarize(rows, [[1, 0, 1], [0, 0, 1], [1, 0, 0]]))
    keys = {"pass@k" if re.fullmatch(r"pass@\d+", k) and k != "pass@1" else k for k in keys}
    source = (ROOT / "benchmark.py").read_text()
    written = {"checker_timeouts", "model", "adapter", "predictions", "temperature",
               "max_new_tokens"}
    assert all(f'"{k}":' in source for k in written)
    missing = sorted(k for k in keys | written if f"`{k}`" not in glossary)
    assert missing == [], f"docs/glossary.md does not explain {missing}"


def test_glossary_numbers_are_quoted_from_real_runs():
    """Every decimal in the glossary appears in LOG.md, the README or the code: no invented runs."""
    glossary = re.sub(r"```.*?```", "", GLOSSARY.read_text(), flags=re.S)
    quoted = "\n".join([(ROOT / "LOG.md").read_text(), (ROOT / "README.md").read_text(),
                        *sources_of_repo().values()])
    for x in set(re.findall(r"(?<![\w.])\d+\.\d+(?!\w|\.\d)", glossary)):
        assert re.search(rf"(?<![\w.]){re.escape(x)}(?![\d])", quoted), f"{x} is not from a run"


def test_glossary_quotes_commands_that_exist():
    """The quoted commands use flags train.py and ablate.py still have."""
    import train
    fields = {f.name for f in __import__("dataclasses").fields(train.Config)}
    glossary = GLOSSARY.read_text()
    commands = re.findall(r"`(python (?:train|ablate)\.py[^`]*)`", glossary.replace("\n", " "))
    assert len(commands) >= 5
    for command in commands:
        for flag in re.findall(r"--(\w+)", command):
            ablate_flags = ("arms", "seeds", "grid_dir")
            assert flag in fields or flag in ablate_flags, f"{command}: --{flag}"
