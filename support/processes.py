"""Several processes behind one handle, so that train.py reads as one-process code; nothing here is
part of the algorithm.

On one process (`python train.py`) it still builds an accelerate Accelerator (which puts the model
on its device and runs backward), and `catch_stop` installs SIGINT/SIGTERM handlers (a Ctrl-C
writes a checkpoint of the last finished step); every other method is then a plain call: share,
shard, gather and sum return what they are given, total returns the counts, whole_weights and
passes add nothing, backward multiplies by a world of 1.

`python train.py` is one process. `accelerate launch --num_processes N train.py` (or torchrun)
starts N: each takes whole groups of every step, the loss constants count over all of them, and
the main process alone writes files. With `--config_file configs/zero3.yaml` (zero2, fsdp) the
policy's weights, gradients and optimizer state are split over the processes (DeepSpeed ZeRO,
FSDP2).

    log, is_main, rank, world          print once; who writes
    share(rows), shard / unshard       this process's groups; eval questions out and back in order
    gather(records), sum(values)       every process's records; a step's sums (times: the slowest)
    prepare, whole_weights(name)       DDP or a split-weight engine; the whole model to generate
    passes(micro_batches), backward    equal pass counts, gradient sync at the last pass, x N
    clip_and_step                      the optimizer step, skipped on a non-finite gradient norm
    save, load                         who writes what; every process's RNG
    deferred(), step_end()             a Ctrl-C finishes the step, on every process, then saves
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch

import rollout


def rng_state(select_rng: random.Random) -> dict:
    state = {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
             "select_rng": select_rng.getstate()}
    if torch.cuda.is_available():  # sampling on a GPU draws from its own generator
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict, select_rng: random.Random):
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    select_rng.setstate(state["select_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])


class PolicyLogprobs(torch.nn.Module):
    """`response_logprobs` as one module's forward: the backbone and the LM head, which it calls
    apart, inside a single forward, for wrappers that act on a module's forward and backward."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # FSDP wraps each decoder layer
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, batch: dict, **kw):
        return rollout.response_logprobs(self.model, batch, **kw)


class Processes:
    def __init__(self, *, output_dir: str, report_to: str = "none",
                 dtype: torch.dtype = torch.float32, max_grad_norm: float = 1.0):
        """Mixed precision and compilation stay off whatever `accelerate config` says: --dtype
        decides the weights, and the update's log-probs must be those of sampling and of the
        bare model."""
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs
        # DeepSpeed runs on a CPU too (its CPU accelerator over gloo), but accelerate starts it only
        # with cpu=False
        on_cpu = not torch.cuda.is_available()
        ds = os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
        self.accelerator = acc = Accelerator(
            cpu=on_cpu and not ds, project_dir=output_dir, mixed_precision="no",
            dynamo_backend="no", log_with=None if report_to == "none" else report_to,
            kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if on_cpu and ds else None)
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        self.device, self.engine = acc.device, acc.distributed_type.value
        self.split = self.engine in ("FSDP", "DEEPSPEED")  # weights or optimizer state split
        self.zero3 = self.engine == "DEEPSPEED" and acc.state.deepspeed_plugin.zero_stage == 3
        if self.engine == "FSDP" and not acc.is_fsdp2:
            raise SystemExit("error: FSDP1 is not supported: set fsdp_version: 2 "
                             "(configs/fsdp.yaml)")
        # it would divide the loss: the step's constants do that
        if acc.gradient_accumulation_steps != 1:
            raise SystemExit("error: gradient accumulation from the accelerate config is not used "
                             "here: unset it (--micro_batch_tokens already splits every update)")
        if self.engine == "DEEPSPEED":
            from transformers.integrations import unset_hf_deepspeed_config
            acc.state.deepspeed_plugin.deepspeed_config.update(
                # one engine step per optimizer step, clipped at --max_grad_norm, fp32 masters
                train_micro_batch_size_per_gpu=1, train_batch_size=self.world,
                gradient_clipping=max_grad_norm, bf16={"enabled": dtype == torch.bfloat16},
                fp16={"enabled": dtype == torch.float16})
            # no zero.Init: every model loads whole, the engine splits the policy in prepare
            unset_hf_deepspeed_config()
        self.model = self.optimizer = self.filler = self.trainable = None
        self.stop_pending, self.deferring, self.save_on_stop = False, 0, None
        self.reached = {}  # kill points reached so far (tests' fault injection: kill_point)

    def kill_point(self, where: str):
        """Tests kill this process with SIGKILL, as an out-of-memory kill would, at the n-th
        `where` (a whole_weights name, "update" or "checkpoint") given by
        CRITIQUE_GRPO_KILL_AT=where:n: at
        points the code reaches deterministically, never after a time."""
        self.reached[where] = self.reached.get(where, 0) + 1
        if os.environ.get("CRITIQUE_GRPO_KILL_AT") == f"{where}:{self.reached[where]}":
            os.kill(os.getpid(), signal.SIGKILL)

    def log(self, *args, **kw):
        if self.is_main:
            print(*args, **kw, flush=True)

    # ---- data: whole groups per process ----
    def share(self, rows: list) -> list:
        """This process's consecutive share of a step's questions (whole groups)."""
        per = len(rows) // self.world
        return rows[self.rank * per: (self.rank + 1) * per]

    def shard(self, rows: list) -> list:
        return rows[self.rank::self.world]

    def unshard(self, mine: list) -> list:
        """Every process's shard(...) results, back in the original order."""
        parts = self.gather([mine])  # one list per process
        out = [None] * sum(map(len, parts))
        for r, part in enumerate(parts):
            out[r::self.world] = part
        return out

    def gather(self, records: list) -> list:
        """Every process's records, in rank order (= step order, with share)."""
        from accelerate.utils import gather_object
        return gather_object(records) if self.world > 1 else list(records)

    def sum(self, values: dict) -> dict:
        """Each value summed over every process in one collective; `time/...` values take the
        slowest process's. A key a process lacks counts as 0 there."""
        every = self.gather([{k: float(v) for k, v in values.items()}])  # one dict per process
        return {k: (max if k.startswith("time/") else sum)(d.get(k, 0.0) for d in every)
                for k in dict.fromkeys(k for d in every for k in d)}

    def main_first(self):
        """The main process runs the block first (e.g. converting the embedded model once)."""
        return self.accelerator.main_process_first()

    def barrier(self):
        self.accelerator.wait_for_everyone()

    def broadcast(self, obj):
        """The main process's value, on every process."""
        from accelerate.utils import broadcast_object_list
        return broadcast_object_list([obj])[0] if self.world > 1 else obj

    # ---- the model: DDP or a split-weight engine ----
    def prepare(self, model: torch.nn.Module, optimizer, filler: dict):
        """Wrap the update's module (DDP copies the main process's weights to all; ZeRO and FSDP2
        split them) and the optimizer. filler: a one-token batch for the passes a process makes only
        to take part. Returns the module to call and the optimizer."""
        placement = None if self.engine == "DEEPSPEED" else [False, False]
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer,
                                                              device_placement=placement)
        self.filler = {k: v.to(self.device) for k, v in filler.items()}
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        return self.model, self.optimizer

    @contextlib.contextmanager
    def whole_weights(self, name: str, needed: bool = True):
        """Generate (or run a no-grad pass) on the whole model; name ("sample", "eval",
        "fixed_logprobs") is the kill point tests reach here. Under split weights (ZeRO-3, FSDP2)
        every process gathers it once and frees it after, with the per-layer gathers off meanwhile:
        processes generate different numbers of tokens, so a collective in every forward would leave
        them waiting on each other. Whole weights already (one process, DDP, ZeRO-1/2): nothing."""
        if needed:
            self.kill_point(name)
        if not needed or not (self.zero3 or self.engine == "FSDP"):
            yield
        elif self.zero3:
            from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation
            with unwrap_model_for_generation(self.model):
                yield
        else:
            from torch.distributed.fsdp import FSDPModule
            units = [m for m in self.model.modules() if isinstance(m, FSDPModule)]  # the root first
            # else the first layer to run a forward (here) would make itself the root
            self.model._get_fsdp_state()._lazy_init()
            for m in units:  # (the root's own forward never runs here: its setting stays torch's)
                m.unshard()
            for m in units[1:]:  # a layer that finds its weights whole keeps them
                m.set_reshard_after_forward(False, recurse=False)
            try:
                yield
            finally:
                reshard = self.accelerator.state.fsdp_plugin.reshard_after_forward
                for m in units[1:]:
                    m.set_reshard_after_forward(reshard, recurse=False)
                for m in units:
                    m.reshard()

    # ---- one optimizer step's forward/backward passes ----
    def total(self, counts: list[int]) -> list[int]:
        """Integer counts summed over every process (one collective)."""
        if self.world == 1:
            return list(counts)
        t = torch.tensor(counts, device=self.device)[None]
        return self.accelerator.gather(t).sum(0).tolist()

    def passes(self, micro_batches: list, **forward_kw):
        """Yield this process's micro-batches of one optimizer step. DDP and the split-weight
        engines communicate inside forward and backward, so every process runs as many passes
        as the busiest one: zero-weighted passes on the filler make up the difference.
        Gradients are reduced in the last pass only (DeepSpeed also clips and steps after it;
        FSDP2 reduce-scatters every pass)."""
        n = len(micro_batches)
        if self.world > 1:
            n = int(self.accelerator.gather(torch.tensor([n], device=self.device)).max())
        for j in range(n):
            last = j == n - 1
            self.accelerator.gradient_state._set_sync_gradients(last)
            no_sync = not last and not self.split and self.world > 1
            with self.accelerator.no_sync(self.model) if no_sync else contextlib.nullcontext():
                if j < len(micro_batches):
                    yield micro_batches[j]
                    if j == 0:  # one backward pass done, the optimizer step not
                        self.kill_point("update")
                else:  # nothing of this process's left: take part, add nothing
                    logp, ent = self.model(self.filler, **forward_kw)
                    self.accelerator.backward(0.0 * (logp.sum() + ent.sum()))

    def backward(self, loss: torch.Tensor):
        """x world: DDP averages the processes' gradients, and each process's loss already carries
        the whole step's constants, so N processes make the update one process makes."""
        self.accelerator.backward(self.world * loss)

    def clip_and_step(self, max_grad_norm: float) -> float | None:
        """Clip the gradient norm and step; a non-finite norm would poison AdamW's moments: skip
        the step and keep the weights (returns None). DeepSpeed clipped and stepped in the
        last backward."""
        grad_norm = torch.as_tensor(self.accelerator.clip_grad_norm_(self.trainable, max_grad_norm))
        if torch.isfinite(grad_norm):
            self.optimizer.step()
            return grad_norm.item()
        self.optimizer.zero_grad(set_to_none=True)
        self.log("warning: non-finite gradient norm, optimizer step skipped")
        return None

    # ---- checkpoints ----
    def save(self, path: Path, model, step: int, rngs: list[dict]):
        """Written to `<path>.tmp` and renamed, so a crash mid-write never leaves a half checkpoint.
        rngs: every process's RNG state in rank order, written by the main process. With whole
        weights on every process only the main one writes; with split weights each writes its shards
        under `sharded/` (accelerate's save_state) and the main one the gathered weights, which
        benchmark.py reads."""
        tmp = path.with_name(path.name + ".tmp")
        if not self.split and not self.is_main:
            return
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        state_dict = None
        if self.split:
            self.barrier()  # the main process has cleared tmp
            # gathered onto the main process (ZeRO-3: None elsewhere)
            whole = self.accelerator.get_state_dict(self.model)
            if self.is_main:
                state_dict = {k.removeprefix("model."): v for k, v in whole.items()}
            self.accelerator.save_state(tmp / "sharded")
        if self.is_main:
            # A LoRA adapter never trains the embeddings; False also spares peft a hub lookup
            lora = {"save_embedding_layers": False} if hasattr(model, "peft_config") else {}
            model.save_pretrained(tmp, state_dict=state_dict, **lora)
            self.kill_point("checkpoint")  # the weights written, the optimizer and RNG not
            optimizer = None if self.split else self.optimizer.state_dict()
            torch.save({"step": step, "optimizer": optimizer, **rngs[0], "process_rng": rngs},
                       tmp / "trainer_state.pt")
        if self.split:
            self.barrier()  # every shard is written
        if self.is_main:
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)

    def load(self, path: Path, model, select_rng: random.Random, lora: bool) -> int:
        """Weights or adapter, optimizer state, this process's RNG; returns the checkpoint's
        step."""
        from safetensors.torch import load_file
        if (path / "sharded").exists() != self.split:
            how = "with" if not self.split else "without"
            raise SystemExit(f"error: {path} was written {how} split weights (configs/*.yaml): "
                             "resume it as it ran, or start a new run from its weights (--model)")
        if self.split:  # each process loads its shards of weights and optimizer
            self.accelerator.load_state(path / "sharded")
        elif lora:
            from peft import set_peft_model_state_dict
            set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        elif (path / "model.safetensors").exists():
            model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
        else:  # large models are saved in shards with an index
            from transformers.modeling_utils import load_sharded_checkpoint
            load_sharded_checkpoint(model, path, strict=False)
        # to the CPU first, not all onto cuda:0
        state = torch.load(path / "trainer_state.pt", weights_only=False, map_location="cpu")
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        rngs = state.get("process_rng", [state])  # one state per process that wrote it
        if len(rngs) == self.world:
            set_rng_state(rngs[self.rank], select_rng)
        else:
            self.log(f"warning: {path} was written by {len(rngs)} processes, resumed on "
                     f"{self.world}: sampling continues from each process's starting seed, not "
                     "where the run stopped")
        return state["step"]

    # ---- Ctrl-C / SIGTERM: finish the step, save it, exit with 130 ----
    def catch_stop(self, save_last):
        """From now on a Ctrl-C or SIGTERM writes a checkpoint of the last finished step
        (save_last() returns its path, or None when nothing was trained yet) and exits with
        code 130. Inside `deferred()` the signal waits for the block to end, so a checkpoint
        never holds a half-applied step. Several processes: a signal only marks the stop; at
        `step_end()`, which every process calls, they agree whether any was signalled, then
        all save and exit together."""
        self.save_on_stop = save_last
        self.previous = {s: signal.signal(s, self._signalled)
                         for s in (signal.SIGINT, signal.SIGTERM)}

    def _signalled(self, signum, frame):
        if self.deferring or self.world > 1:
            self.stop_pending = True
        else:
            self._stop()

    def _stop(self):
        self.release()
        # a second signal (a launcher passing one on): finish writing
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        path = self.save_on_stop()
        self.log(f"interrupted: saved {path}; continue with --resume" if path else
                 "interrupted: nothing to save yet")
        self.barrier()
        signal.signal(signal.SIGTERM, self.previous[signal.SIGTERM])
        raise SystemExit(130)

    @contextlib.contextmanager
    def deferred(self):
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
        if self.stop_pending and not self.deferring and self.world == 1:
            self._stop()

    def step_end(self):
        """Several processes: a Ctrl-C on any of them takes effect here, on all."""
        if self.world > 1 and any(self.gather([self.stop_pending])):
            self._stop()

    def release(self):
        for s, handler in getattr(self, "previous", {}).items():
            signal.signal(s, handler)

    # ---- experiment trackers (--report_to) ----
    def init_trackers(self, config: dict, run_name: str):
        self.accelerator.init_trackers(
            "critique-grpo", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                     for k, v in config.items()},
            init_kwargs={"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}})

    def track(self, metrics: dict, step: int):
        self.accelerator.log(metrics, step=step)

    def end(self):
        self.release()
        self.accelerator.end_training()
