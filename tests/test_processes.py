"""Two processes (`accelerate launch`, gloo on CPU) against one: the same update, the same run, one set of files,
and a checkpoint two processes resume from exactly."""
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import train
from support import checkpoints, cli
from conftest import ROOT

# every test here starts processes through `accelerate launch` (~10-40 s each): the slow set
# (python -m pytest -q -m slow), which .ci/run runs as well
pytestmark = pytest.mark.slow

# one update each: Dr.GRPO's constant, the paper's per-group weights, a supervised baseline where the second
# process has nothing to train on (it only takes part), two mini-batches per rollout
CASES = [{"aggregation": "constant"}, {"aggregation": "paper"}, {"baseline": "raft", "drop_groups": [2, 3]},
         {"updates": 2}]
# the split-weight engines take one model per process: one case, with the paper's weights, two mini-batches (old
# log-probs and the KL reference computed on gathered weights first), and process 1 with nothing of its own
# (groups 2 and 3 dropped: it only takes part, gathers included)
SPLIT_CASE = [{"aggregation": "paper", "updates": 2, "drop_groups": [2, 3], "kl_coef": 0.1}]


def launch_cmd(*args, n=2, engine=None):
    """`accelerate launch --num_processes n ...` on the CPU, as a user starts it (the launcher's torchrun path).
    engine: zero2, zero3 or fsdp: `--config_file configs/<engine>.yaml`, as on GPUs (FSDP through
    tests/fsdp_on_cpu.py, which switches accelerate's FSDP on for CPU tensors)."""
    with socket.socket() as s:  # a free port: a previous test's rendezvous may still hold the default one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    how = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"] if not engine \
        else ["--config_file", f"configs/{engine}.yaml"]
    shim = ["tests/fsdp_on_cpu.py"] if engine == "fsdp" else []
    return [sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", str(n),
            "--main_process_port", str(port), *shim, *map(str, args)], env


def launch(*args, n=2, engine=None, timeout=600):
    cmd, env = launch_cmd(*args, n=n, engine=engine)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout


def one_process_updates(tmp_path, cases):
    """The reference: tests/dist_update.py in one process of its own (accelerate's state is global)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "tests/dist_update.py", tmp_path / "one.pt", json.dumps(cases)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    return torch.load(tmp_path / "one.pt")


def assert_same_update(got, want, case):
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-9), case  # terms of both signs
    assert got["entropy"] == pytest.approx(want["entropy"], rel=1e-5), case
    assert got["kl"] == pytest.approx(want["kl"], rel=1e-5, abs=1e-9), case
    assert got["on_tokens"] == want["on_tokens"] > 0, case
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5), case
    assert any(u.abs().sum() > 0 for n, u in want["update"].items() if "lora_A" in n)  # not a trivial zero
    assert want["update"].keys() == got["update"].keys()
    for name in want["update"]:  # SGD: the update is -lr x the clipped gradient
        torch.testing.assert_close(got["update"][name], want["update"][name], rtol=1e-4, atol=1e-7)


def test_two_processes_make_the_update_one_process_makes(tmp_path):
    launch("tests/dist_update.py", tmp_path / "two.pt", json.dumps(CASES))
    two, one = torch.load(tmp_path / "two.pt"), one_process_updates(tmp_path, CASES)
    for case, got, want in zip(CASES, two, one):
        assert_same_update(got, want, case)
        assert any(g.abs().sum() > 0 for n, g in want["grads"].items() if "lora_A" in n)
        for name in want["grads"]:
            torch.testing.assert_close(got["grads"][name], want["grads"][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("engine", ["zero2", "zero3", "fsdp"])
def test_split_weights_make_the_update_one_process_makes(tmp_path, engine):
    """DeepSpeed ZeRO-2/3 (its CPU accelerator, gloo) and FSDP2 with configs/*.yaml: the engine reduces, clips and
    steps; the same loss, gradient norm and weight update as one process."""
    launch("tests/dist_update.py", tmp_path / "two.pt", json.dumps(SPLIT_CASE), engine=engine)
    for case, got, want in zip(SPLIT_CASE, torch.load(tmp_path / "two.pt"), one_process_updates(tmp_path, SPLIT_CASE)):
        assert_same_update(got, want, case)
        assert want["kl"] > 0


def tiny_run(tiny_model_dir, tiny_data, out, *extra):
    return ["--model", tiny_model_dir, "--train_data", tiny_data[0], "--eval_data", tiny_data[1], "--output_dir",
            str(out), "--eval_limit", "5", "--max_new_tokens", "12", "--prompts_per_step", "4", "--n_init", "4",
            "--micro_batch_tokens", "200", "--lr", "1e-2", "--dtype", "float32", "--save_every", "1", *extra]


def lines(path):
    return [json.loads(x) for x in open(path)]


def close(a, b):
    return (isinstance(a, float) and math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-6)


def test_two_processes_run_the_loop_one_process_runs(tmp_path, tiny_model_dir, tiny_data):
    """Greedy sampling makes the rollout independent of how prompts are split; everything else is the loop's."""
    args = ["--max_steps", "2", "--temperature", "0", "--eval_every", "1", "--samples_every", "1",
            "--critique_type", "indicative_gt", "--refine_scope", "all"]
    train.main(tiny_run(tiny_model_dir, tiny_data, tmp_path / "one", *args))
    launch("train.py", *tiny_run(tiny_model_dir, tiny_data, tmp_path / "two", *args))
    one, two = lines(tmp_path / "one" / "metrics.jsonl"), lines(tmp_path / "two" / "metrics.jsonl")
    assert [m["step"] for m in two] == [m["step"] for m in one] == [0, 1, 1, 2, 2]  # written once, not per process
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            if not key.startswith("time/") and key != "tokens_per_s":
                assert close(a[key], b[key]), (a["step"], key, a[key], b[key])
    assert one[1]["loss"] != 0 and one[1]["refine/count"] == 4 * 3  # both processes' groups counted
    for step in (0, 1, 2):  # evaluation sharded over the processes, gathered back in question order
        assert lines(tmp_path / "one" / f"eval-{step}.jsonl") == lines(tmp_path / "two" / f"eval-{step}.jsonl")
    assert lines(tmp_path / "one" / "samples.jsonl") == lines(tmp_path / "two" / "samples.jsonl")
    for step in (1, 2):
        a = load_file(tmp_path / "one" / f"checkpoint-{step}" / "adapter_model.safetensors")
        b = load_file(tmp_path / "two" / f"checkpoint-{step}" / "adapter_model.safetensors")
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)
    state = torch.load(tmp_path / "two" / "checkpoint-2" / "trainer_state.pt", weights_only=False)
    assert len(state["process_rng"]) == 2  # every process's RNG, written by the main one
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.name.startswith("checkpoint")) == \
        ["checkpoint-1", "checkpoint-2"]


def test_two_processes_resume_where_they_stopped(tmp_path, tiny_model_dir, tiny_data):
    """Sampled at temperature 1: step 2 after a resume equals step 2 of the run that never stopped only if both
    processes' RNGs came back."""
    args = ["--temperature", "1.0", "--eval_every", "0", "--samples_every", "0", "--eval_limit", "2"]
    launch("train.py", *tiny_run(tiny_model_dir, tiny_data, tmp_path / "straight", "--max_steps", "2", *args))
    launch("train.py", *tiny_run(tiny_model_dir, tiny_data, tmp_path / "resumed", "--max_steps", "1", *args))
    out = launch("train.py", *tiny_run(tiny_model_dir, tiny_data, tmp_path / "resumed", "--max_steps", "2", "--resume",
                                       *args))
    assert "resumed from" in out and out.count("resumed from") == 1  # printed by the main process only
    straight = [m for m in lines(tmp_path / "straight" / "metrics.jsonl") if "loss" in m]
    resumed = [m for m in lines(tmp_path / "resumed" / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in resumed] == [1, 2]
    for key in ("loss", "train/reward", "train/entropy", "train/response_len", "grad_norm"):
        assert resumed[1][key] == pytest.approx(straight[1][key], rel=1e-5), key
    a = load_file(tmp_path / "straight" / "checkpoint-2" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoint-2" / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_model_dir, tiny_data):
    """Two DDP processes, 2 sampled steps: the reference runs of the split-weight engines (one per flag set)."""
    done = {}

    def run(*args):
        if args not in done:
            out = tmp_path_factory.mktemp("ddp")
            launch("train.py", *tiny_run(tiny_model_dir, tiny_data, out, "--max_steps", "2", *args))
            done[args] = out
        return done[args]
    return run


@pytest.mark.parametrize("engine,args", [("zero3", ()), ("fsdp", ()), ("zero2", ("--no-lora", "--log_kl")),
                                         ("fsdp", ("--no-lora", "--log_kl"))])
def test_split_weights_run_save_and_resume_as_ddp(tmp_path, tiny_model_dir, tiny_data, ddp_run, engine, args):
    """The whole loop with split weights: generation on gathered weights (evaluation, sampling, refinement), the
    update, a checkpoint every process writes its shards of (and the main one the whole weights), and a resume
    from those shards: step 1, then step 2 after --resume, equal DDP's two steps without a stop (temperature 1:
    the RNGs must come back too). Full fine-tuning with the KL logged runs its reference forwards on gathered
    weights."""
    ref = ddp_run("--eval_limit", "2", *args)
    out = tmp_path / engine
    launch("train.py", *tiny_run(tiny_model_dir, tiny_data, out, "--max_steps", "1", "--eval_limit", "2", *args),
           engine=engine)
    log = launch("train.py", *tiny_run(tiny_model_dir, tiny_data, out, "--max_steps", "2", "--eval_limit", "2",
                                       "--resume", *args), engine=engine)
    assert log.count("resumed from") == 1 and (out / "checkpoint-1" / "sharded").is_dir()
    want, got = lines(ref / "metrics.jsonl"), lines(out / "metrics.jsonl")
    # the first run's last evaluation (step 1) stays; the resumed run does not evaluate its start again
    assert [m["step"] for m in got] == [0, 1, 1, 2, 2]
    got = got[:2] + got[3:]  # without the evaluation at step 1
    for a, b in zip(want, got):
        for key in a:
            if not key.startswith("time/") and key != "tokens_per_s":
                assert close(a[key], b[key]), (engine, a["step"], key, a[key], b[key])
    assert want[1]["loss"] != 0 and ("--log_kl" not in args or want[2]["kl"] > 0)
    weights = "model.safetensors" if "--no-lora" in args else "adapter_model.safetensors"
    a, b = (load_file(d / "checkpoint-2" / weights) for d in (ref, out))
    assert set(a) <= set(b)  # (gathered whole, a tied LM head is written out too)
    for name in a:  # AdamW turns float noise in near-zero gradients into steps of up to lr x noise / eps: 1e-5
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4)  # (a wrong step moves by lr = 1e-2)


def test_processes_must_split_the_prompts_evenly():
    with pytest.raises(SystemExit, match="divisible by 2 processes"):
        cli.validate(cli.parse_config(train.Config, ["--prompts_per_step", "3"]), num_processes=2)


def test_ctrl_c_on_two_processes_leaves_one_consistent_checkpoint(tmp_path, tiny_model_dir, tiny_data):
    """Ctrl-C reaches the launcher and both processes (one process group, as in a terminal); the main process
    writes the last finished step with both processes' RNGs, and two processes continue from it."""
    import signal
    import time
    out = tmp_path / "run"
    cmd, env = launch_cmd("train.py", *tiny_run(tiny_model_dir, tiny_data, out, "--max_steps", "500", "--save_every",
                                                "3", "--eval_every", "0", "--samples_every", "0", "--eval_limit", "2"))
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    deadline = time.time() + 300
    while not (out / "checkpoint-3").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.5)
    assert (out / "checkpoint-3").exists(), p.communicate()[0][-3000:] if p.poll() is not None else "no checkpoint"
    os.killpg(p.pid, signal.SIGINT)
    log = p.communicate(timeout=120)[0]
    assert p.returncode != 0 and log.count("interrupted: saved") == 1, log[-3000:]
    last = checkpoints.latest_checkpoint(out)
    step = int(last.name.split("-")[1])
    assert not list(out.glob("*.tmp"))  # no half-written checkpoint
    assert len(torch.load(last / "trainer_state.pt", weights_only=False)["process_rng"]) == 2
    steps = [m["step"] for m in lines(out / "metrics.jsonl") if "loss" in m]
    assert steps == list(range(1, step + 1))  # the checkpoint holds exactly the steps that were logged
    launch("train.py", *tiny_run(tiny_model_dir, tiny_data, out, "--max_steps", str(step + 2), "--save_every", "3",
                                 "--eval_every", "0", "--samples_every", "0", "--eval_limit", "2", "--resume"))
    assert [m["step"] for m in lines(out / "metrics.jsonl") if "loss" in m] == list(range(1, step + 3))


def test_qlora_trains_on_two_processes(tmp_path, tiny_llama_4bit_dir, tiny_data):
    """4-bit base weights in each process, the LoRA adapter reduced by DDP (bitsandbytes' CPU kernels)."""
    out = tmp_path / "qlora"
    launch("train.py", *tiny_run(tiny_llama_4bit_dir, tiny_data, out, "--max_steps", "1", "--load_in_4bit", "--eval_limit", "2",
                                 "--critique_type", "indicative_gt", "--refine_scope", "all"))
    step = [m for m in lines(out / "metrics.jsonl") if "loss" in m]
    assert len(step) == 1 and math.isfinite(step[0]["loss"]) and step[0]["grad_norm"] > 0
    adapter = load_file(out / "checkpoint-1" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
