"""Machinery a reader of the method can skip: train.py, critique.py, rollout.py, loss.py and
evaluate.py are the algorithm; what they need but a reader of the algorithm does not lives here,
one module per job.

    cli          train.py's command line: every Config field a flag, every bad value at once
    run_setup    a run's setup (processes, output directory and --resume, data, models, optimizer,
                 critic, checker) and what the loop asks of it between steps (Ctrl-C state)
    heldout      the held-out evaluation inside a run, with its step-0 cache
    checkpoints  the newest complete checkpoint (no torch: ablate.py uses it), saving when due
    recording    a step's metrics.jsonl line, console line and samples.jsonl
    processes    several processes behind one handle (accelerate: DDP, ZeRO, FSDP)
    models       loading models (hub, local, the embedded SmolLM2), dtype and device
    generation   fast sampling: batching, shared prompt caches, our sampler, merged LoRA
    batching     the update's batch layout and micro-batches
    critics      the CoT critic back ends: a local HF model, an OpenAI-compatible endpoint
    checker      the answer checker's worker processes (math-verify under a hard timeout)
"""
import logging
import warnings

# Library chatter that says nothing about this run: bitsandbytes' optional CPU kernel notice (peft
# imports it), transformers' weight-loading bars, and deprecations inside torch/transformers.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
# DeepSpeed, when something imports it on a machine without a GPU: "Setting accelerator to CPU. If
# you have GPU ... we were unable to detect it", read as a fault. A filter outlives its setLevel.
logging.getLogger("DeepSpeed").addFilter(
    lambda r: "Setting accelerator to CPU" not in r.getMessage())
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")
