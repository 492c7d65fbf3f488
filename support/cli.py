"""train.py's command line: every Config field is a flag (its docstring the help text, its type
the parser), and every bad value of a command is reported at once, with a hint, before anything
loads."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
from pathlib import Path
from typing import Literal, get_args, get_origin


def _field_docs(cls) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(cls))
    body, docs = tree.body[0].body, {}
    for a, b in zip(body, body[1:]):
        doc = isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
        if isinstance(a, ast.AnnAssign) and doc:
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, not the whole usage
        self.exit(2, f"error: {message} (see python {self.prog} --help)\n")


def parse_config(Config, argv=None, description: str = ""):
    """A Config from the command line argv (None: sys.argv); description heads --help."""
    ap = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs, hints = _field_docs(Config), inspect.get_annotations(Config, eval_str=True)
    for f in dataclasses.fields(Config):
        t, kw = hints[f.name], {}
        optional = get_origin(t) is not None and type(None) in get_args(t)
        if optional:
            t = next(a for a in get_args(t) if a is not type(None))
        if t is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif get_origin(t) is Literal:
            kw["choices"] = get_args(t)
        else:
            kw["type"] = t
            if optional:  # "none" turns it off; argparse names the type in "invalid float value"
                kw["type"] = lambda s, t=t: None if s.lower() == "none" else t(s)
                kw["type"].__name__ = t.__name__
        # argparse formats help with %
        doc = f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%")
        ap.add_argument(f"--{f.name}", default=f.default, help=doc, **kw)
    return Config(**vars(ap.parse_args(argv)))


# every number a flag takes is checked: by rule, then the cross-flag rules in validate()
POSITIVE = ("lr", "max_grad_norm", "top_p", "clip_eps", "gamma", "lora_alpha", "critic_top_p")
AT_LEAST_ONE = ("prompts_per_step", "n_init", "max_new_tokens", "max_context", "micro_batch_tokens",
                "logprob_chunk", "max_steps", "updates_per_batch", "lora_r", "critic_tries",
                "critic_max_new_tokens")
NOT_NEGATIVE = ("weight_decay", "temperature", "critic_temperature", "entropy_coef", "kl_coef",
                "n_refine", "gen_batch_size", "eval_limit", "eval_every", "save_every", "samples_every")
HINTS = {"gamma": " (gamma = 0 makes f == 1 and kills the gradient; --gamma none: no shaping)",
         "temperature": " (0 = greedy)", "critic_temperature": " (0 = greedy)",
         "gen_batch_size": " (0 = by free memory)"}


def validate(cfg, num_processes: int = 1):
    """Every bad value of a command at once, before anything loads."""
    problems = []
    rules = ((POSITIVE, "> 0", lambda v: v > 0), (AT_LEAST_ONE, ">= 1", lambda v: v >= 1),
             (NOT_NEGATIVE, ">= 0", lambda v: v >= 0))
    for names, rule, holds in rules:
        for name in names:
            v = getattr(cfg, name)
            if v is not None and not (math.isfinite(v) and holds(v)):
                problems.append(f"--{name} {v} must be {rule}" + HINTS.get(name, ""))
    for name in ("top_p", "critic_top_p"):
        if getattr(cfg, name) > 1:
            problems.append(f"--{name} {getattr(cfg, name)} must be <= 1")
    per_update = num_processes * cfg.updates_per_batch
    if per_update >= 1 and cfg.prompts_per_step % per_update:
        problems.append(f"--prompts_per_step {cfg.prompts_per_step} must be divisible by "
                        f"{num_processes} processes x --updates_per_batch {cfg.updates_per_batch}: "
                        "each process takes whole groups")
    if not 0 <= cfg.n_refine < cfg.n_init:
        problems.append(f"--n_refine {cfg.n_refine} must be >= 0 and < --n_init {cfg.n_init}")
    if cfg.max_new_tokens >= cfg.max_context:
        problems.append(f"--max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in "
                        f"--max_context {cfg.max_context}")
    if cfg.critique_type == "cot" and not (cfg.critic_model or cfg.critic_base_url):
        problems.append("--critique_type cot needs --critic_model (local HF model) or "
                        "--critic_base_url (API endpoint)")
    if cfg.baseline == "refine_ft" and cfg.critique_type in ("none", "expert"):
        problems.append("--baseline refine_ft trains on critique-guided refinements: pick a "
                        "--critique_type with a critique")
    if cfg.baseline == "critique_ft" and cfg.critique_type != "cot":
        problems.append("--baseline critique_ft trains on a critic's critiques: needs "
                        "--critique_type cot")
    if cfg.load_in_4bit and not cfg.lora:
        problems.append("--load_in_4bit trains LoRA on frozen 4-bit weights: drop --no-lora")
    stems = [Path(src).stem for src in cfg.eval_data.split(",")]
    if len(set(stems)) < len(stems):
        problems.append(f"--eval_data: two held-out sets share a file name ({', '.join(stems)}); "
                        "rename one")
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))
