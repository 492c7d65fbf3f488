"""One real training step of Critique-GRPO, traced: writes docs/one_step.md.

    python docs/trace_step.py                 # embedded SmolLM2-135M: find a seed, run, write
    python docs/trace_step.py --seed 3        # this seed, no search
    python docs/trace_step.py --model DIR --train_data F --eval_data F -- --n_init 4 ...

Nothing of the step is re-implemented here. `train.main` runs ONE step with its default method
(4 questions x 8, indicative critique with the ground truth), and for the duration of the run the
functions it calls through module attributes are wrapped so that what they see and return is kept:
train.batch_for_step (the questions), rollout.generate (sampled answers and refinements, with the
token ids the policy saw), critique.mix_groups (step 5), loss.group_advantages (step 6),
train.update (the training sequences), batching.micro_batches and train.micro_batch_loss (step 7:
the log-probs it receives and the loss terms it returns). The checker's rewards and critiques are
read back from samples.jsonl, the logged metrics (gradient norm) from metrics.jsonl. Every number
on the page is printed from those records; the tables tests/test_one_step.py checks are between
`<!-- trace: NAME -->` and `<!-- /trace -->`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import critique  # noqa: E402
import evaluate  # noqa: E402
import loss  # noqa: E402
import rollout  # noqa: E402
import train  # noqa: E402
from support import batching, cli, models  # noqa: E402

WRAP = 98  # code-block lines longer than this are broken, marked with MARK
MARK = "↩"


class StopBeforeUpdate(Exception):
    """Raised by the wrapped train.update when only steps 1-6 are wanted (the seed search)."""


class Recorder:
    """What the wrapped functions saw and returned during one train.main run."""

    def __init__(self, stop_before_update: bool = False):
        self.stop_before_update = stop_before_update
        self.rows, self.generate, self.mix, self.advantages = None, [], None, []
        self.cfg = self.tok = self.seqs = None
        self.batches, self.batch_pos, self.micro = [], 0, []

    @contextlib.contextmanager
    def wrapping(self):
        """Install the wrappers; put the real functions back afterwards, whatever happens."""
        targets = [(train, "batch_for_step"), (rollout, "generate"), (critique, "mix_groups"),
                   (loss, "group_advantages"), (train, "update"), (batching, "micro_batches"),
                   (train, "micro_batch_loss")]
        real = {name: getattr(module, name) for module, name in targets}
        rec = self

        def batch_for_step(*args, **kw):
            out = real["batch_for_step"](*args, **kw)
            rec.rows = [dict(r) for r in out]
            return out

        def generate(model, tokenizer, prompts, **kw):
            out = real["generate"](model, tokenizer, prompts, **kw)
            # one prompt per output: a prompt's samples (samples=n) share it
            rec.generate.append(dict(desc=kw.get("desc"), outputs=[list(o) for o in out],
                                     eos=rollout.eos_ids(tokenizer, model),
                                     prompts=[list(p) for p in prompts
                                              for _ in range(kw.get("samples", 1))]))
            return out

        def mix_groups(*args):
            out = real["mix_groups"](*args)
            n_groups, group_size, refined, refine_rewards, k, selection, group_mode, _ = args
            rec.mix = dict(n_groups=n_groups, group_size=group_size, refined=list(refined),
                           refine_rewards=list(refine_rewards), k=k, selection=selection,
                           group_mode=group_mode, result=list(out))
            return out

        def group_advantages(rewards, group_ids, *args, **kw):
            out = real["group_advantages"](rewards, group_ids, *args, **kw)
            rec.advantages.append(dict(rewards=rewards.tolist(), groups=group_ids.tolist(),
                                       out=out.tolist()))
            return out

        def update(cfg, procs, run, seqs, n_groups):
            rec.cfg, rec.tok = cfg, run.tok
            rec.seqs = [dict(prompt=list(s.prompt), response=list(s.response), reward=s.reward,
                             group=s.group, off_policy=s.off_policy, advantage=s.advantage,
                             weight=s.weight) for s in seqs]
            if rec.stop_before_update:  # what main() does at its end, then out
                run.checker.close()
                procs.end()
                raise StopBeforeUpdate
            return real["update"](cfg, procs, run, seqs, n_groups)

        def micro_batches(*args, **kw):
            out = real["micro_batches"](*args, **kw)
            rec.batches, rec.batch_pos = [list(b) for b in out], 0
            return out

        def micro_batch_loss(logp, ent, mask, old_logp, ref_logp, advantages, off_policy,
                             weights, *, denom, n_tokens, cfg):
            out = real["micro_batch_loss"](logp, ent, mask, old_logp, ref_logp, advantages,
                                           off_policy, weights, denom=denom, n_tokens=n_tokens,
                                           cfg=cfg)
            total, entropy, kl = out
            # d loss / d logp of every token: autograd through the real loss, nothing else; it
            # leaves the parameters' .grad alone (torch.autograd.grad only returns it)
            (dlogp,) = torch.autograd.grad(total, logp, retain_graph=True)
            rec.micro.append(dict(
                idx=rec.batches[rec.batch_pos], logp=logp.detach().float().cpu(),
                old_logp=old_logp.detach().float().cpu(), mask=mask.cpu(),
                advantages=advantages.tolist(), off_policy=off_policy.tolist(),
                weights=weights.tolist(), denom=denom, n_tokens=n_tokens, dlogp=dlogp.cpu(),
                loss=total.item(), entropy=entropy.item(),
                kl=None if kl is None else kl.item()))
            rec.batch_pos += 1
            return out

        mine = dict(batch_for_step=batch_for_step, generate=generate, mix_groups=mix_groups,
                    group_advantages=group_advantages, update=update,
                    micro_batches=micro_batches, micro_batch_loss=micro_batch_loss)
        try:
            for module, name in targets:
                setattr(module, name, mine[name])
            yield self
        finally:
            for module, name in targets:
                setattr(module, name, real[name])


# ---------------------------------------------------------------------------------------------
# Running the step
# ---------------------------------------------------------------------------------------------
def train_argv(model: str, train_data: str | None, eval_data: str | None, seed: int,
               output_dir: str, flags: list[str]) -> list[str]:
    """train.py's flags for one traced step; `flags` come last and win."""
    data = (["--train_data", train_data] if train_data else []) + \
        (["--eval_data", eval_data] if eval_data else [])
    return ["--model", model, *data, "--max_steps", "1", "--eval_limit", "10",
            "--samples_every", "1", "--output_dir", output_dir, "--overwrite",
            "--seed", str(seed), *flags]


def run_step(argv: list[str], stop_before_update: bool = False) -> Recorder:
    """train.main(argv) with the wrappers on; the records, and what the run wrote."""
    rec = Recorder(stop_before_update)
    with rec.wrapping():
        try:
            train.main(argv)
        except StopBeforeUpdate:
            pass
    if not stop_before_update:
        out = Path(cli.parse_config(train.Config, argv).output_dir)
        rec.config = json.loads((out / "config.json").read_text())
        rec.samples = [json.loads(x) for x in open(out / "samples.jsonl")]
        rec.metrics = [json.loads(x) for x in open(out / "metrics.jsonl")]
    return rec


def groups_of(rec: Recorder) -> list[dict]:
    """Per question: its initial responses' rewards, its chosen refinements' rewards, and whether
    it is an all-wrong group that a correct refinement gives a signal back."""
    mix = rec.mix
    n = mix["group_size"]
    out = []
    for g in range(mix["n_groups"]):
        members = [s for s in rec.seqs if s["group"] == g]
        initial = [s["reward"] for s in members if not s["off_policy"]]
        refined = [s["reward"] for s in members if s["off_policy"]]
        tried = [r for i, r in zip(mix["refined"], mix["refine_rewards"]) if i // n == g]
        out.append(dict(initial=initial, refined=refined, tried=tried,
                        all_wrong=not any(initial) and len(initial) == n,
                        signal=not any(initial) and any(refined)))
    return out


def find_seed(model: str, train_data: str | None, eval_data: str | None, flags: list[str],
              seeds: list[int], log=print) -> tuple[int | None, list[str]]:
    """The first seed whose step has an all-wrong group with a correct refinement; steps 1-6 only
    (train.update is never entered). Also one line per seed tried, saying what it had."""
    notes = []
    for seed in seeds:
        tmp = tempfile.mkdtemp(prefix="trace_seed_")
        try:
            rec = run_step(train_argv(model, train_data, eval_data, seed, tmp, flags),
                           stop_before_update=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        groups = groups_of(rec)
        all_wrong = [g for g in groups if g["all_wrong"]]
        fixed = sum(g["signal"] for g in groups)
        notes.append(f"seed {seed}: {len(all_wrong)} all-wrong group(s), "
                     f"{fixed} of them with a correct refinement")
        log(f"[trace] {notes[-1]}")
        if fixed:
            return seed, notes
    return None, notes


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def num(x: float | None, digits: int = 6) -> str:
    """A number as the page prints it (the tests read it back)."""
    if x is None:
        return "–"
    return f"{x:.{digits}g}".replace("-", "−") if x != 0 else "0"


def cell(text) -> str:
    """Text in a table cell: one line, pipes escaped, as code."""
    if text is None:
        return "–"
    text = " ".join(str(text).split()).replace("|", "\\|")
    if not text:
        return "(empty)"
    return f"`{text}`" if "`" not in text else text


def ends(call: dict, i: int) -> str:
    """How output i of a recorded generate call ended: its EOS, or cut at the token cap."""
    out = call["outputs"][i]
    return "EOS" if rollout.ended(out, call["eos"]) else f"cut at {len(out)}"


def block(text: str, lang: str = "text") -> str:
    """A fenced block, long lines broken at WRAP characters and marked."""
    lines = []
    for line in text.split("\n"):
        while len(line) > WRAP:
            lines.append(line[:WRAP] + MARK)
            line = line[WRAP:]
        lines.append(line)
    return f"````{lang}\n" + "\n".join(lines) + "\n````"


def table(name: str | None, header: list[str], rows: list[list[str]]) -> str:
    head = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    body = "".join("| " + " | ".join(r) + " |\n" for r in rows)
    return f"<!-- trace: {name} -->\n{head}{body}<!-- /trace -->" if name else head + body


def shell_lines(program: str, argv: list[str]) -> str:
    """A command line, broken (with a backslash) before a flag where it would pass WRAP."""
    pieces = []  # a flag with its values
    for word in map(shlex.quote, argv):
        if word.startswith("--") or not pieces:
            pieces.append(word)
        else:
            pieces[-1] += " " + word
    lines = [program]
    for piece in pieces:
        if len(lines[-1]) + 1 + len(piece) > WRAP - 2:
            lines[-1] += " \\"
            lines.append("   ")
        lines[-1] += " " + piece
    return "\n".join(lines)


def para(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), 100, break_on_hyphens=False)


def shaping_weight(p: float, gamma: float) -> tuple[float, float]:
    """f(p) and d f / d log p, by autograd through loss.shaping (float64)."""
    logp = torch.tensor(p, dtype=torch.float64).log().requires_grad_()
    f = loss.shaping(torch.exp(logp), gamma)
    (grad,) = torch.autograd.grad(f, logp)
    return f.item(), grad.item()


def token_view(rec: Recorder, s: int) -> dict:
    """Training sequence s as micro_batch_loss saw it: tokens, logp, old logp, d loss / d logp."""
    for m in rec.micro:
        if s in m["idx"]:
            row = m["idx"].index(s)
            length = int(m["mask"][row].sum())
            ids = rec.seqs[s]["response"]
            assert length == len(ids)
            return dict(ids=ids, logp=m["logp"][row, :length].tolist(),
                        old_logp=m["old_logp"][row, :length].tolist(),
                        dlogp=m["dlogp"][row, :length].tolist(), denom=m["denom"],
                        advantage=m["advantages"][row], weight=m["weights"][row],
                        off_policy=m["off_policy"][row])
    raise KeyError(s)


def render(rec: Recorder, *, seed: int, seed_note: str, command: str, wall_s: float) -> str:
    import transformers
    cfg, tok, mix, n = rec.cfg, rec.tok, rec.mix, rec.mix["group_size"]
    gamma, k, B = cfg.gamma, mix["k"], mix["n_groups"]
    if gamma is None:
        raise SystemExit("error: the trace shows f(p) = p/(p+gamma): run it with a --gamma")
    resolved = rec.config["resolved"]
    metrics = next(m for m in rec.metrics if "loss" in m)
    samples = rec.samples
    sampled = next(c for c in rec.generate if c["desc"] == "sample")
    assert len(sampled["prompts"]) == len(sampled["outputs"]) == len(samples)
    refine_calls = [c for c in rec.generate if c["desc"] == "refine"]
    refine_prompts = refine_calls[0]["prompts"] if refine_calls else []
    groups = groups_of(rec)
    # the focus: an all-wrong group that a correct refinement gives a signal back, else the first
    # refined group, else group 0
    focus = next((g for g, x in enumerate(groups) if x["signal"]),
                 next((g for g, x in enumerate(groups) if x["refined"]), 0))
    row = rec.rows[focus]
    gt = row["answer"]
    members = list(range(focus * n, (focus + 1) * n))
    assert all(samples[i]["question"] == row["question"] for i in members)
    refined_here = [(j, i) for j, i in enumerate(mix["refined"]) if i in members]
    chosen = [j for g, j, off in mix["result"] if g == focus and off]
    local = {j: r + 1 for r, (j, _) in enumerate(refined_here)}  # refinement numbers on the page
    # step 6: the real call's output, and the real function on the initial responses alone
    after = rec.advantages[-1]["out"]
    init_rewards = [s["reward"] for s in samples]
    before = loss.group_advantages(torch.tensor(init_rewards),
                                   torch.tensor([i // n for i in range(len(samples))]),
                                   cfg.scale_adv_by_std).tolist()
    seq_ids = [s for s, (g, _, _) in enumerate(mix["result"]) if g == focus]
    off_seq = next((s for s in seq_ids if mix["result"][s][2]), None)
    out = []
    w = out.append

    # ---- header ----
    w("# One real step of Critique-GRPO, traced\n")
    model = "the embedded model (SmolLM2-135M-Instruct)" if cfg.model == models.EMBEDDED_MODEL \
        else f"`{cfg.model}`"
    w(para(f"""One training step of `train.py` on {model}, with every number printed by the code
    that computes it: [trace_step.py](trace_step.py) runs `train.main` for one step and
    records what the real functions see and return (it re-implements nothing). The equations are
    explained in [algorithm.md](algorithm.md), the logged metrics in [glossary.md](glossary.md);
    this page follows the numbered blocks of `train.py`'s step loop, `# ---- 1. Sample` to
    `# ---- 7. Loss and 8. Optimise`. tests/test_one_step.py checks that the numbers below agree
    with `loss.py`."""))
    w("")
    w(para("""**GRPO in two sentences.** PPO needs a value network to say whether an answer was
    better than expected; GRPO instead samples a *group* of answers to the same question and uses
    each answer's reward minus the group's mean reward as its advantage. If every answer in a group
    gets the same reward, every advantage is 0 and the question teaches nothing: Critique-GRPO adds
    a critique-guided *refinement* to such groups."""))
    w("")
    pairs = [
        ("seed", f"{seed} (how it was chosen: below)"),
        ("machine", cell(resolved["device"])),
        ("dtype", f"{resolved['dtype']}: {resolved['dtype_reason']}"),
        ("versions", f"torch {torch.__version__}, transformers {transformers.__version__}, "
                     f"Python {platform.python_version()}"),
        ("model", "embedded (SmolLM2-135M-Instruct)" if cfg.model == models.EMBEDDED_MODEL
         else cell(cfg.model)),
        ("questions × group", f"{B} × {cfg.n_init} ({n} sampled + {k} refinement)"),
        ("`--critique_type`", cell(cfg.critique_type)),
        ("`--temperature`", num(cfg.temperature)),
        ("`--max_new_tokens` R", str(cfg.max_new_tokens)),
        ("`--score_unfinished`", str(cfg.score_unfinished)),
        ("`--gamma` γ", num(gamma)),
        ("`--entropy_coef`", num(cfg.entropy_coef)),
        ("`--kl_coef`", num(cfg.kl_coef)),
        ("wall time", f"{wall_s:.0f} s, the whole `train.main` run (evaluations included)"),
    ]
    w(table("run", ["", ""], [[a, b] for a, b in pairs]))
    w("")
    w("The command, and the `train.py` flags it ran (`<tmp>`: a temporary directory):\n")
    w(block(command + "\n" + shell_lines("python train.py", rec.argv), "bash"))
    w("")
    w(para(f"Seed {seed}: {seed_note}."))
    w("")
    w(para("""Another CPU or dtype samples other answers (bf16 and float32 round differently), so
    the texts below are this machine's; the relations between the numbers hold everywhere."""))

    # ---- 1. the question ----
    w("\n## 1. The question\n")
    w(para(f"""Question {focus + 1} of the step's {B}; ground truth `{gt}`. The policy sees it
    wrapped in the chat template (`rollout.question_ids`), decoded here from the token ids
    `rollout.generate` received:"""))
    w("")
    w(block(tok.decode(sampled["prompts"][focus * n])))

    # ---- 1-2. sample and verify ----
    w("\n## 1–2. Sample, then verify\n")
    cut_rule = "" if cfg.score_unfinished else (
        f"; an answer that reached the {cfg.max_new_tokens}-token cap without its EOS scores 0 "
        "whatever it says (`train.verify`)")
    w(para(f"""Step 1 samples {n} answers (temperature {num(cfg.temperature)}, at most
    {cfg.max_new_tokens} tokens) from the current policy; step 2 extracts each final answer
    (`evaluate.extract_answer`: the last `\\boxed{{}}`, else "the answer is …", else the last
    number) and the checker scores it 1 if it equals the ground truth `{gt}`, else 0 (rewards
    from samples.jsonl){cut_rule}."""))
    w("")
    w(table("answers", ["#", "extracted answer", "ends", "reward"],
            [[str(i - focus * n + 1), cell(evaluate.extract_answer(samples[i]["response"])),
              ends(sampled, i), num(samples[i]["reward"])] for i in members]))
    w("")
    w("<details><summary>The answers in full</summary>\n")
    w(block("\n\n".join(f"[{i - focus * n + 1}] {samples[i]['response']}" for i in members)))
    w("\n</details>\n")
    # answers that name the ground truth but scored 0: cut at the cap (train.verify)
    cut_right = [str(i - focus * n + 1) for i in members if samples[i]["reward"] == 0 and
                 ends(sampled, i) != "EOS" and not cfg.score_unfinished and
                 evaluate.fast_equal(str(evaluate.extract_answer(samples[i]["response"])), gt)]
    if cut_right:
        w(para(f"""Answer {', '.join(cut_right)} names the ground truth, but ran into the
        {cfg.max_new_tokens}-token cap without ending: it never stated a final answer, and
        scores 0."""))
        w("")
    w(para(f"""**Notice:** {'every answer scores 0, so r − mean(r) is 0 for all of them:' if
    groups[focus]['all_wrong'] else 'the rewards differ, so this group already has a signal.'}
    {'plain GRPO would learn nothing from this question.' if groups[focus]['all_wrong'] else ''}
    The whole step, question by question (✓ = a correct refinement joined the group):"""))
    w("")

    def zero(rewards):  # all-equal rewards: every advantage 0
        return len(set(rewards)) <= 1
    w(table("groups", ["question", "ground truth", "answers' rewards", "refinements' rewards",
                       "joined", "zero-adv. before → after"],
            [[str(g + 1), cell(rec.rows[g]["answer"]),
              " ".join(num(r) for r in x["initial"]),
              " ".join(num(r) for r in x["tried"]) or "–",
              " ".join(num(r) for r in x["refined"]) + (" ✓" if x["signal"] else "") or "–",
              f"{'yes' if zero(x['initial']) else 'no'} → "
              f"{'yes' if zero(x['initial'] + x['refined']) else 'no'}"]
             for g, x in enumerate(groups)]))
    w("")
    w(para(f"""metrics.jsonl logs the same as shares of the {B} groups:
    `train/zero_adv_frac_before` {num(metrics['train/zero_adv_frac_before'])} →
    `train/zero_adv_frac_after` {num(metrics['train/zero_adv_frac_after'])}. Only all-wrong
    groups are refined (`--refine_scope {cfg.refine_scope}`, the paper); an all-right group also
    has zero advantages but needs no repair."""))

    # ---- 3. critique ----
    w("\n## 3. Critique\n")
    if not refined_here:
        w(para("No answer of this question was critiqued in this run (it is not all wrong)."))
    else:
        w(para(f"""Each answer of the all-wrong group gets a critique
        (`critique.make_critiques`, `--critique_type {cfg.critique_type}`). This one names the
        ground truth; the paper's best variant has a stronger model explain the error step by
        step (`--critique_type cot`)."""))
        w("")
        w(table("critiques", ["#", "critique"],
                [[str(i - focus * n + 1), cell(samples[i].get("critique"))]
                 for _, i in refined_here]))

    # ---- 4. refine ----
    w("\n## 4. Refine\n")
    if refined_here:
        j0 = chosen[0] if chosen else refined_here[0][0]
        i0 = mix["refined"][j0]
        w(para(f"""The same, not yet updated, policy answers again, now with the question, its
        own previous answer and the critique in the prompt (`critique.refinement_prompt`). The
        prompt that produced the refinement of answer {i0 - focus * n + 1}, verbatim as the policy
        saw it (the token ids `rollout.generate` received, decoded with the chat template's
        special tokens; lines over {WRAP} characters broken at {MARK}):"""))
        w("")
        w(block(tok.decode(refine_prompts[j0])))
        w("")
        w(para(f"""The {len(refined_here)} refinements, verified like the answers
        (`--selection {cfg.selection}`: a correct one is preferred, else a random one;
        k = {k} joins the group):"""))
        w("")
        w(table("refinements", ["#", "refines answer", "extracted answer", "ends", "reward",
                                "joins"],
                [[str(local[j]), str(i - focus * n + 1),
                  cell(evaluate.extract_answer(samples[i]["refinement"])),
                  ends(refine_calls[0], j), num(samples[i]["refinement_reward"]),
                  "yes" if j in chosen else ""]
                 for j, i in refined_here]))
        w("")
        w("The refinement that joins the group, in full:\n")
        w(block(samples[i0]["refinement"]))
        w("")
        w(para(f"""**Notice:** {sum(r > 0 for r in groups[focus]['tried'])} of the
        {len(refined_here)} refinements are right where none of the {n} answers was. The verifier
        reads only the final answer, so a refinement that copies the ground truth from the
        critique scores 1 whatever its reasoning: read the one above before trusting it."""))

    # ---- 5-6. mix, advantages ----
    w("\n## 5–6. Mix, then advantages\n")
    w(para(f"""Step 5 (`critique.mix_groups`) builds what each group trains on: the {n} sampled
    answers and {k} refinement, {n + k} = `--n_init` sequences. The refinement is trained as an
    answer to the **bare question**: its training prompt is the question's own chat prompt from
    section 1, not the refinement prompt of section 4, so its tokens were not sampled from the
    distribution being trained: *off-policy*. Step 6 (`loss.group_advantages`) gives each sequence
    A = r − mean(r over its group). *A before mixing* is `group_advantages` over the sampled
    answers alone (what GRPO would use); *A after mixing* is what the real call returned for the
    mixed group."""))
    w("")
    mixed_rows = []
    for s in seq_ids:
        g, i, off = mix["result"][s]
        src = f"refinement {local[i]} (of answer {mix['refined'][i] - focus * n + 1})" if off \
            else f"answer {i - focus * n + 1}"
        mixed_rows.append([str(len(mixed_rows) + 1), src, "**off-policy**" if off else "on-policy",
                           num(rec.seqs[s]["reward"]), "–" if off else num(before[i]),
                           num(after[s])])
    w(table("mixed", ["slot", "sequence", "kind", "reward", "A before mixing",
                      "A after mixing"], mixed_rows))
    w("")
    if off_seq is not None:
        bare = rec.seqs[off_seq]["prompt"] == sampled["prompts"][focus * n]
        w(para(f"""Checked on the records: the refinement's training prompt (`Sequence.prompt`
        handed to `train.update`) is the bare question's prompt token for token: **{bare}**."""))
        w("")
    if groups[focus]["signal"]:
        A_ref = after[off_seq]
        A_wrong = after[seq_ids[0]]
        w(para(f"""**Notice:** before mixing every A is 0: this question contributes nothing to
        the gradient. After mixing, the correct refinement gets A = {num(A_ref)} and each wrong
        answer {num(A_wrong)}: the group has a signal again, and it points at the text that fixed
        the mistake. (No std division: `--scale_adv_by_std` off, as in the paper.)"""))
    else:
        w(para("""**Notice:** no refinement of this group was correct, so its advantages stay 0
        after mixing too: the group still teaches nothing this step."""))

    # ---- 7. two kinds of tokens ----
    w("\n## 7. The loss: two kinds of tokens\n")
    if off_seq is not None:
        tv = token_view(rec, off_seq)
        A, D, wt = tv["advantage"], tv["denom"], tv["weight"]
        w(para(f"""`train.update` runs the policy on every training sequence under the bare
        prompt and hands the per-token log-probabilities to `micro_batch_loss`. A sampled
        answer's token costs −A · ratio, ratio = exp(log p − log p_old) (PPO's surrogate, clipped
        at 1 ± {num(cfg.clip_eps)}); a refinement token costs −A · f(p), f(p) = p/(p+γ), no ratio,
        no clip. Summed over tokens and divided by the constant D = sequences × R =
        {len(rec.seqs)} × {cfg.max_new_tokens} = {num(D)} (the step's sequences, whatever their
        lengths: no 1/|y|). Gradient descent on it raises log p of a token by a step proportional to
        −∂loss/∂log p, which for a refinement token is A · γp/(p+γ)² / D."""))
        w("")
        p = [float(torch.tensor(x).exp()) for x in tv["logp"]]
        L = len(p)
        low = sorted(range(8, L), key=lambda t: p[t])[:4]
        show = sorted(set(range(min(8, L))) | set(low))
        which = f"its first {min(8, L)} and the {len(low)} least likely of the rest; it has {L}" \
            if low else f"all {L}"
        w(para(f"""The refinement's tokens ({which}), p from the log p `micro_batch_loss`
        received, f(p) and
        γp/(p+γ)² by autograd through `loss.shaping`, ∂loss/∂log p by autograd through
        `micro_batch_loss`'s returned loss, A = {num(A)}, γ = {num(gamma)}:"""))
        w("")
        rows = []
        for t in show:
            f, gw = shaping_weight(p[t], gamma)
            rows.append([str(t + 1), cell(json.dumps(tok.decode([tv["ids"][t]]))), num(p[t]),
                         num(f), num(gw), num(tv["dlogp"][t]), num(-A * wt * gw / D)])
        w(table("tokens", ["t", "token", "p", "f(p)", "γp/(p+γ)²", "∂loss/∂log p",
                           "−A·γp/(p+γ)²/D"], rows))
        w("")
        weights = [shaping_weight(x, gamma)[1] for x in p]
        hi, lo = max(range(L), key=weights.__getitem__), min(range(L), key=weights.__getitem__)
        w(para(f"""**Notice:** the last two columns agree: the loss really weights each refinement
        token's log-probability by γp/(p+γ)². That weight is largest (0.25) at p = γ and small
        both for tokens the policy already finds likely (p → 1: {num(gamma / (1 + gamma) ** 2,
        4)}) and for tokens it would never say (p → 0): the push goes to the plausible but
        unlikely tokens, the new information in the refinement. Over all {L} tokens of this
        refinement the weight ranges from {num(weights[lo], 3)} (token {lo + 1},
        `{json.dumps(tok.decode([tv['ids'][lo]]))}`, p = {num(p[lo], 3)}) to
        {num(weights[hi], 3)} (token {hi + 1}, `{json.dumps(tok.decode([tv['ids'][hi]]))}`,
        p = {num(p[hi], 3)}), {weights[hi] / max(weights[lo], 1e-300):.0f} times more. Unshaped
        (`--gamma none`, loss −A · log p) every token would weigh 1."""))
        w("")
        iv = token_view(rec, seq_ids[0])
        w(para(f"""For contrast, the first tokens of answer 1 (on-policy,
        A = {num(iv['advantage'])}): ratio = exp(log p − log p_old) is exactly 1 with one
        update per batch (`train.py` passes
        log p_old = log p, detached), so ∂loss/∂log p = −A · ratio / D whatever p is."""))
        w("")
        rows = []
        for t in range(min(4, len(iv["ids"]))):
            lp, olp = iv["logp"][t], iv["old_logp"][t]
            ratio = float(torch.tensor(lp - olp).exp())
            rows.append([str(t + 1), cell(json.dumps(tok.decode([iv["ids"][t]]))),
                         num(float(torch.tensor(lp).exp())), num(ratio), num(iv["dlogp"][t]),
                         num(-iv["advantage"] * iv["weight"] * ratio / iv["denom"])])
        w(table("initial_tokens", ["t", "token", "p", "ratio", "∂loss/∂log p", "−A·ratio/D"],
                rows))

    # ---- 7-8. loss terms, gradient ----
    w("\n## 7–8. The loss terms and the gradient\n")
    tot = {key: sum(m[key] for m in rec.micro) for key in ("loss", "entropy")}
    kls = [m["kl"] for m in rec.micro if m["kl"] is not None]
    kl = sum(kls) if kls else None
    objective = tot["loss"] + cfg.entropy_coef * tot["entropy"] - \
        (cfg.kl_coef * kl if kl is not None and cfg.kl_coef > 0 else 0.0)
    w(para(f"""`micro_batch_loss` returns (loss, entropy, KL) for each of the step's
    {len(rec.micro)} micro-batch(es); summed (their denominators are the whole step's, so the sum
    is the step's loss). The policy-gradient term is loss + {num(cfg.entropy_coef)} × entropy
    (the entropy is a bonus: subtracted). The gradient norm is metrics.jsonl's, measured before
    clipping at `--max_grad_norm` {num(cfg.max_grad_norm)}."""))
    w("")
    w(table("loss", ["term", "value", "from"], [
        ["policy-gradient term (objective)", num(objective), "loss + c_H × entropy"],
        ["entropy (nats per token)", num(tot["entropy"]), "micro_batch_loss"],
        ["KL to the reference", num(kl) if kl is not None else "none",
         "micro_batch_loss" if kl is not None else "no reference model (`--kl_coef 0`)"],
        ["loss (minimised)", num(tot["loss"]), "micro_batch_loss"],
        ["loss", num(metrics["loss"]), "metrics.jsonl"],
        ["grad_norm", num(metrics["grad_norm"]), "metrics.jsonl"],
    ]))
    w("")
    w(para("""**Notice:** the loss is not a progress signal. The advantages of a group sum to
    zero, so its value mostly says whether the right answers were longer or shorter than the wrong
    ones; what matters is the gradient it carries. The other metrics of this step, as
    [glossary.md](glossary.md) explains them:"""))
    w("")
    keys = ["train/reward", "refine/reward", "refine/fix_rate", "train/zero_adv_frac_before",
            "train/zero_adv_frac_after", "offpolicy/p", "offpolicy/f_p", "train/entropy",
            "train/response_len", "skipped_steps"]
    w(table("metrics", ["metrics.jsonl key", "value"],
            [[f"`{key}`", num(metrics[key])] for key in keys if key in metrics]))

    # ---- take-aways ----
    w("\n## What this step shows\n")
    w("\n".join([
        "- A question whose sampled answers all fail has zero advantages: plain GRPO skips it.",
        "- The critique lets the same policy write a correct answer; mixed into the group as one",
        "  more sequence, it gives the group a non-zero advantage again.",
        "- The refinement is trained under the bare question, off-policy: no PPO ratio, but the",
        "  shaping f(p) = p/(p+γ), whose gradient weight γp/(p+γ)² favours tokens that are",
        "  unlikely but plausible under the policy.",
        "- Sampled answers keep PPO's −A · ratio; at one update per batch the ratio is 1 and each",
        "  token's log p gets the same push, −A/D.",
        "- The verifier reads only final answers: a refinement is rewarded for its answer, not",
        "  for its reasoning.",
    ]))
    w("")
    return "\n".join(out)


def one_step_page(model: str = models.EMBEDDED_MODEL, train_data: str | None = None,
                  eval_data: str | None = None, seed: int | None = None,
                  seeds=range(20), flags=(), command: str = "",
                  log=print) -> tuple[str, Recorder]:
    """The page for one traced step. seed None: the first of `seeds` whose step has an all-wrong
    group with a correct refinement (steps 1-6 of each, then the whole step again). `flags` are
    more train.py flags; the default data are train.py's."""
    flags = list(flags)
    if seed is None:
        seed, notes = find_seed(model, train_data, eval_data, flags, list(seeds), log)
        if seed is None:
            raise SystemExit("error: no seed of " + ", ".join(map(str, seeds)) + " has an "
                             "all-wrong group with a correct refinement: " + "; ".join(notes))
        tried = "; ".join(notes)
        note = (f"chosen by the script, which runs steps 1–6 of seeds {list(seeds)[0]}, "
                f"{list(seeds)[0] + 1}, … and takes the first whose step has an all-wrong group "
                f"that gets a correct refinement ({tried})")
    else:
        note = "given with --seed"
    tmp = tempfile.mkdtemp(prefix="trace_step_")
    try:
        argv = train_argv(model, train_data, eval_data, seed, tmp, flags)
        t0 = time.perf_counter()
        rec = run_step(argv)
        wall = time.perf_counter() - t0
        rec.argv = [a if a != tmp else "<tmp>" for a in argv]
        page = render(rec, seed=seed, seed_note=note, command=command or
                      f"python docs/trace_step.py --seed {seed}", wall_s=wall)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rec.wall_s = wall
    return page, rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=models.EMBEDDED_MODEL)
    ap.add_argument("--train_data", default=None, help="default: train.py's")
    ap.add_argument("--eval_data", default=None, help="default: train.py's")
    ap.add_argument("--seed", type=int, default=None, help="default: search --seeds")
    ap.add_argument("--seeds", default="0-19", help="the search's seeds, e.g. 0-19")
    ap.add_argument("--out", default=str(ROOT / "docs" / "one_step.md"))
    ap.add_argument("flags", nargs="*", help="more train.py flags, after --")
    args = ap.parse_args(argv)
    a, _, b = args.seeds.partition("-")
    seeds = range(int(a), int(b or a) + 1)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shell_lines("python docs/trace_step.py", given)
    page, rec = one_step_page(args.model, args.train_data, args.eval_data, args.seed, seeds,
                              args.flags, command)
    Path(args.out).write_text(page)
    print(f"wrote {args.out} ({rec.wall_s:.0f} s for the traced run)")


if __name__ == "__main__":
    main()
