"""Checkpoints: which one is the newest complete one, saving one when due, and the Ctrl-C one. What
a checkpoint holds and who writes it is support/processes.py's (save, load). No torch here:
ablate.py reads latest_checkpoint without loading it."""
from __future__ import annotations

from pathlib import Path


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (a half-written one is still named checkpoint-N.tmp)."""
    ckpts = sorted(output_dir.glob("checkpoint-*[0-9]"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None



def save_when_due(cfg, procs, run, step: int):
    """A checkpoint of the step just finished, every save_every steps and at the end (never of the
    step a run resumed at)."""
    due = cfg.save_every and step % cfg.save_every == 0
    if step > run.start and (step == cfg.max_steps or due):
        path = run.out / f"checkpoint-{step}"
        with procs.deferred():
            procs.save(path, run.policy, step, run.finished["rngs"])
        procs.log(f"saved {path} (adapter, optimizer, RNG; evaluate it with: python benchmark.py "
                  f"--adapter {path} --max_new_tokens {cfg.max_new_tokens})" if cfg.lora else
                  f"saved {path} (weights, optimizer, RNG)")


def save_last(procs, run) -> Path | None:
    """On Ctrl-C: a checkpoint of the last finished step (None: nothing trained since the start)."""
    if run.finished["step"] == run.start:
        return None
    path = run.out / f"checkpoint-{run.finished['step']}"
    procs.save(path, run.policy, run.finished["step"], run.finished["rngs"])
    return path
