"""Bad input, interruption and secrets: each ends in a clear message or a graceful recovery."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from support import checker, checkpoints, critics, processes
from test_train import run

ROOT = Path(__file__).resolve().parents[1]


def test_missing_model_is_a_one_line_error(tmp_path, tiny_data):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, str(tmp_path / "no-such-model"), tiny_data, "x", "--max_steps", "1")
    msg = str(e.value)
    assert msg.startswith("error: cannot load model") and "local HF model directory" in msg
    assert len(msg.splitlines()) == 2


def test_model_without_chat_template_is_refused(tmp_path, tiny_model_dir, tiny_data):
    import shutil
    d = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match="has no chat template"):
        run(tmp_path, str(d), tiny_data, "x", "--max_steps", "1")


def test_resume_with_a_different_config_names_the_fields(tmp_path, tiny_model_dir, tiny_data):
    run(tmp_path, tiny_model_dir, tiny_data, "r", "--max_steps", "1")
    with pytest.raises(SystemExit) as e:
        run(tmp_path, tiny_model_dir, tiny_data, "r", "--max_steps", "2", "--resume", "--gamma", "0.5", "--seed", "3")
    assert "--gamma 0.1 -> 0.5" in str(e.value) and "--seed 0 -> 3" in str(e.value)
    assert "--max_steps" not in str(e.value)  # running longer is what resume is for
    run(tmp_path, tiny_model_dir, tiny_data, "r", "--max_steps", "2", "--resume", "--gamma", "0.5", "--seed", "3",
        "--allow_config_change")


def test_api_key_is_never_saved(tmp_path, tiny_model_dir, tiny_data, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    out, _ = run(tmp_path, tiny_model_dir, tiny_data, "k", "--max_steps", "1")
    for f in out.rglob("*"):
        if f.is_file():
            assert b"sk-do-not-leak" not in f.read_bytes(), f


@pytest.mark.slow
def test_sigterm_saves_the_last_finished_step_and_resume_matches(tmp_path, tiny_model_dir, tiny_data):
    args = ["--model", tiny_model_dir, "--train_data", tiny_data[0], "--eval_data", tiny_data[1], "--eval_limit", "2",
            "--max_new_tokens", "12", "--prompts_per_step", "2", "--n_init", "4", "--lr", "1e-2", "--eval_every", "0",
            "--save_every", "0", "--dtype", "float32", "--max_steps", "3", "--refine_scope", "all"]
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "--output_dir", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in proc.stdout:  # wait until step 1 is logged, then interrupt during step 2
        lines.append(line)
        if line.startswith("step    1 |"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "interrupted: saved" in rest, "".join(lines) + rest
    ckpts = sorted(p.name for p in out.glob("checkpoint-*"))
    assert ckpts in (["checkpoint-1"], ["checkpoint-2"])  # step 2 may have been inside its update
    train.main([*args, "--output_dir", str(out), "--resume"])
    train.main([*args, "--output_dir", str(tmp_path / "straight")])

    def losses(d):
        return {m["step"]: m["loss"] for m in map(json.loads, open(d / "metrics.jsonl")) if "loss" in m}
    assert losses(out) == losses(tmp_path / "straight")


def test_non_finite_gradient_skips_the_step_and_keeps_the_weights(tmp_path, tok, tiny_data):
    """A model with a NaN weight gives NaN logits, a NaN loss and NaN gradients: every optimizer
    step must be skipped (counted), so the LoRA B matrices stay at their zero init."""
    import torch
    from safetensors.torch import load_file

    from conftest import make_model
    model = make_model(tok)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    d = tmp_path / "nan-model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    out, metrics = run(tmp_path, str(d), tiny_data, "nan", "--max_steps", "2", "--temperature", "0")
    steps = [m for m in metrics if "loss" in m]
    assert [m["skipped_steps"] for m in steps] == [1, 1]
    lora_b = [v for k, v in load_file(out / "checkpoint-2" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(torch.equal(v, torch.zeros_like(v)) for v in lora_b)


def test_empty_and_missing_data_files(tmp_path, tiny_model_dir, tiny_data):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match="is empty"):
        run(tmp_path, tiny_model_dir, (str(empty), tiny_data[1]), "e", "--max_steps", "1")
    with pytest.raises(SystemExit, match="does not exist"):
        run(tmp_path, tiny_model_dir, (str(tmp_path / "nope.jsonl"), tiny_data[1]), "m", "--max_steps", "1")


def test_questions_longer_than_the_context_are_skipped_with_a_warning(tmp_path, tiny_model_dir, tiny_data, capsys):
    long = tmp_path / "long.jsonl"
    rows = [json.loads(x) for x in open(tiny_data[0])]
    rows[0]["question"] = "What is 1 + 1? " * 400
    long.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(tmp_path, tiny_model_dir, (str(long), tiny_data[1]), "long", "--max_steps", "1", "--max_context", "200")
    assert "skipped 1 training questions longer than --max_context" in capsys.readouterr().out


def test_api_critic_connection_refused_and_timeout_fall_back():
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import critique as C
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
    s.close()  # nothing listens here: connection refused

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            time.sleep(1.0)

        def log_message(self, *a):
            pass
    srv = HTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        for url, why in ((f"http://127.0.0.1:{closed_port}/v1", "connection refused"),
                         (f"http://127.0.0.1:{srv.server_port}/v1", "timed out after 0.3 s")):
            critic = critics.APICritic(url, "m", retries=2, backoff=0.01, timeout=0.3, concurrency=1)
            t0 = time.monotonic()
            out, fallbacks = C.make_critiques("cot", questions=["q"], responses=["a"], correct=[False],
                                              ground_truths=["5"], references=[None], critic=critic, tries=1)
            assert out == ["The generated solution is incorrect, the ground truth is 5."] and fallbacks == 1
            assert critic.transport_failures == 1 and critic.last_error == why
            assert time.monotonic() - t0 < 5
    finally:
        srv.shutdown()


def test_remote_code_is_refused_unless_asked_for(tmp_path, tiny_model_dir, tiny_data):
    import shutil
    d = tmp_path / "custom-code"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="my-custom-lm", auto_map={"AutoConfig": "configuration_x.XConfig",
                                                    "AutoModelForCausalLM": "modeling_x.XModel"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_x.py").write_text("raise RuntimeError('remote code ran')\n")
    with pytest.raises(SystemExit) as e:
        run(tmp_path, str(d), tiny_data, "rc", "--max_steps", "1")
    assert "--trust_remote_code" in str(e.value) and "remote code ran" not in str(e.value)


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_model_dir, tiny_data, monkeypatch):
    import torch
    out, _ = run(tmp_path, tiny_model_dir, tiny_data, "crash", "--max_steps", "1")
    before = {p.name: p.read_bytes() for p in (out / "checkpoint-1").iterdir()}

    def crash(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, tiny_model_dir, tiny_data, "crash", "--max_steps", "2", "--resume")
    assert {p.name: p.read_bytes() for p in (out / "checkpoint-1").iterdir()} == before
    assert not (out / "checkpoint-2").exists() and checkpoints.latest_checkpoint(out).name == "checkpoint-1"


def test_a_signal_inside_a_deferred_block_waits_for_its_end(tmp_path):
    from support.processes import Processes
    saved, done = [], []
    procs = Processes(output_dir=str(tmp_path))
    procs.catch_stop(lambda: saved.append("ckpt") or "ckpt")
    try:
        with pytest.raises(SystemExit) as e:
            with procs.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now: it must only have noted the signal
                done.append("update finished")
        assert e.value.code == 130 and done == ["update finished"] and saved == ["ckpt"]
        # outside a deferred block the signal stops at once
        procs.stop_pending = False
        procs.catch_stop(lambda: None)
        with pytest.raises(SystemExit):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
            done.append("never")
        assert done == ["update finished"]
    finally:
        procs.release()


def _checker_workers(pid: int) -> list:
    """The answer checker's workers among process `pid`'s children (by AnswerChecker._spawn's
    command line)."""
    import psutil
    found = []
    for child in psutil.Process(pid).children():
        try:
            if "checker._worker(" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # it ended meanwhile
            pass
    return found


def _running(procs: list) -> list:
    """Those of `procs` still running (a zombie runs nothing: it waits to be reaped)."""
    import psutil
    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_for(condition, timeout: float, what: str, proc=None, log: Path | None = None):
    """Poll `condition` until it returns something true (returned) or `timeout` s pass (a failure);
    `proc` ending first is a failure too, with the end of its `log`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:]
            pytest.fail(f"it ended (exit {proc.returncode}) before any {what}:\n{tail}")
        time.sleep(0.05)
    pytest.fail(f"no {what} within {timeout:.0f} s")


def _sigkill_and_expect_no_process_left(proc):
    """SIGKILL `proc` and poll for 5 s: each process below it must have ended (checker workers end
    by PR_SET_PDEATHSIG, or else by noticing that their parent changed). Returns the seconds that
    took."""
    import psutil
    below = psutil.Process(proc.pid).children(recursive=True)
    assert below
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    try:
        _wait_for(lambda: not _running(below), 5.0, "end of every process below the killed one")
    finally:
        for p in _running(below):  # only on failure: do not leave them behind for the next test
            p.kill()
    return time.monotonic() - t0


@pytest.mark.slow
def test_sigkill_of_the_trainer_leaves_no_checker_worker(tmp_path, tiny_model_dir, tiny_data):
    """A trainer killed with SIGKILL (no handler runs) leaves no answer-checker worker behind, and a
    worker is a small process of its own, not a copy of the trainer (it was forked before)."""
    import psutil
    args = ["--model", tiny_model_dir, "--train_data", tiny_data[0], "--eval_data", tiny_data[1],
            "--eval_limit", "2", "--max_new_tokens", "12", "--prompts_per_step", "2",
            "--n_init", "4", "--lr", "1e-2", "--eval_every", "0", "--save_every", "0",
            "--dtype", "float32",
            "--max_steps", "50", "--output_dir", str(tmp_path / "killed")]
    log = tmp_path / "train.log"
    # stderr apart: workers write there too, and only the trainer's own lines mean it went on
    with open(log, "w") as out, open(tmp_path / "train.err", "w") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                                stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        workers = _wait_for(lambda: _checker_workers(proc.pid), 300, "checker workers", proc, log)
        # the checker waits for its workers to be ready (math-verify imported) before it returns:
        # a line the trainer prints after they appeared means they are ready, at their full size
        printed = len(log.read_text().splitlines())
        _wait_for(lambda: len(log.read_text().splitlines()) > printed, 300,
                  "line printed after the workers started", proc, log)
        trainer_rss = psutil.Process(proc.pid).memory_info().rss
        worker_rss = [w.memory_info().rss for w in workers]
        took = _sigkill_and_expect_no_process_left(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert max(worker_rss) < trainer_rss / 3, (worker_rss, trainer_rss)
    print(f"workers gone {took:.2f} s after the SIGKILL; RSS: worker {max(worker_rss) >> 20} MiB, "
          f"trainer {trainer_rss >> 20} MiB")


@pytest.mark.slow
def test_sigkill_of_evaluate_leaves_no_checker_worker_even_inside_a_check(tmp_path, tiny_data):
    """benchmark.py re-grading answers that each keep math-verify busy for seconds (a tower of
    powers, until math-verify's own 5 s limit): killed with SIGKILL while its workers are inside
    checks, where they read nothing from their parent, it leaves no worker behind."""
    rows = [json.loads(line) for line in open(tiny_data[1])]
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps({"index": i, "response": r"\boxed{9^{9^{9^{9}}}}"}) + "\n"
                             for i in range(len(rows))))
    log = tmp_path / "evaluate.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "benchmark.py"), "--data", tiny_data[1],
                                 "--predictions", str(preds), "--output_dir", str(tmp_path / "ev")],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        workers = _wait_for(lambda: _checker_workers(proc.pid), 120, "checker workers", proc, log)
        # start-up (imports, a warm-up check) takes ~0.5 s of CPU: past 1.5 s a worker is checking
        _wait_for(lambda: any(sum(w.cpu_times()[:2]) > 1.5 for w in _running(workers)), 60,
                  "worker inside a check", proc, log)
        _sigkill_and_expect_no_process_left(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_checker_worker_ignores_ctrl_c():
    """Ctrl-C reaches the whole process group: a worker must not die of it (the trainer handles it,
    then its workers end with it), so the same worker checks on afterwards."""
    from support.checker import AnswerChecker
    c = AnswerChecker(num_workers=1)
    try:
        assert c([r"\boxed{0.5}"], [r"\frac{1}{2}"]) == [1.0]  # starts the worker
        worker = c._workers[0][0]
        os.kill(worker.pid, signal.SIGINT)
        assert c([r"\boxed{0.25}"], [r"\frac{1}{4}"]) == [1.0]
        assert c._workers[0][0] is worker and worker.poll() is None
    finally:
        c.close()


def test_a_checker_worker_killed_while_idle_is_replaced():
    from support.checker import AnswerChecker
    c = AnswerChecker(num_workers=1)
    try:
        assert c([r"\boxed{0.5}"], [r"\frac{1}{2}"]) == [1.0]  # starts the worker
        first = c._workers[0][0]
        first.kill()
        first.wait()
        assert c([r"\boxed{0.25}"], [r"\frac{1}{4}"]) == [1.0] and c._workers[0][0] is not first
        assert c.num_timeouts == 0
    finally:
        c.close()


@pytest.mark.slow
def test_a_kill_anywhere_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, tiny_data):
    """SIGKILL (what an out-of-memory kill sends) while sampling, inside an update, and while a checkpoint
    is being written, at points the code reaches deterministically (processes.kill_point), resuming after
    each: the run ends with the metrics, evaluations, samples and adapter of a run never interrupted."""
    args = ["--model", tiny_model_dir, "--train_data", tiny_data[0], "--eval_data", tiny_data[1],
            "--eval_limit", "2", "--max_new_tokens", "12", "--prompts_per_step", "2", "--n_init", "4",
            "--lr", "1e-2", "--eval_every", "0", "--save_every", "1", "--samples_every", "1",
            "--dtype", "float32", "--max_steps", "3", "--refine_scope", "all",
            "--no-eval_cache"]  # every run evaluates step 0 itself: the kill points stay where they are
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # float sums in one order in every process

    def train_py(out, *extra, kill=None):
        return subprocess.run([sys.executable, "train.py", *args, "--output_dir", str(out), *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**env, "CRITIQUE_GRPO_KILL_AT": kill} if kill else env)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train_py(straight).returncode == 0
    # the 2nd sampling is step 2's (after step 1's); a resumed process counts from 1 again: its first
    # update and its first checkpoint are step 2's
    for i, kill in enumerate(["sample:2", "update:1", "checkpoint:1"]):
        p = train_py(killed, *(["--resume"] if i else []), kill=kill)
        assert p.returncode == -signal.SIGKILL, (kill, p.stdout[-2000:], p.stderr[-2000:])
        assert checkpoints.latest_checkpoint(killed).name == "checkpoint-1", kill  # never a half one
    assert (killed / "checkpoint-2.tmp").exists()  # the last kill was inside the checkpoint write
    p = train_py(killed, "--resume")
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr[-2000:]

    def lines(path):
        return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/") and k != "tokens_per_s"}
                for x in open(path)]
    for name in ("metrics.jsonl", "samples.jsonl", "eval-0.jsonl", "eval-3.jsonl"):
        assert lines(killed / name) == lines(straight / name), name
    from safetensors.torch import load_file
    a = load_file(straight / "checkpoint-3" / "adapter_model.safetensors")
    b = load_file(killed / "checkpoint-3" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_cot_run_stops_when_its_critic_cannot_answer(tmp_path, tiny_model_dir, tiny_data, capsys):
    """A run is the arm its name says: an endpoint that cannot be reached stops the run before step 1 with
    one line; one that stops answering mid-run stops it at the first step whose critiques all failed, unless
    --allow_critic_failures, and then every failure is counted and shown."""
    import socket
    import threading
    from http.server import HTTPServer

    from test_critique import _Handler
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    s.close()
    cot = ["--critique_type", "cot", "--refine_scope", "all", "--critic_tries", "1"]
    with pytest.raises(SystemExit, match="^error: the critic endpoint .* cannot be reached: connection refused"):
        run(tmp_path, tiny_model_dir, tiny_data, "closed", "--max_steps", "1", *cot, "--critic_base_url", closed)
    srv = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}/v1"
    try:
        _Handler.script = ["OK"]  # the probe is answered, then every request gets HTTP 500
        with pytest.raises(SystemExit, match="step 1: no critique arrived from the critic .HTTP 500"):
            run(tmp_path, tiny_model_dir, tiny_data, "dies", "--max_steps", "2", *cot, "--critic_base_url", url)
        _Handler.script = ["OK"]
        capsys.readouterr()
        _, metrics = run(tmp_path, tiny_model_dir, tiny_data, "allowed", "--max_steps", "1", *cot,
                         "--critic_base_url", url, "--allow_critic_failures")
        step = next(m for m in metrics if "loss" in m)
        assert step["critic/transport_failures"] == step["critic/fallbacks"] > 0 and step["critic/calls"] == 0
        assert f"critic failed {step['critic/transport_failures']} requests" in capsys.readouterr().out
    finally:
        srv.shutdown()
