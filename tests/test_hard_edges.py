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
        for url in (f"http://127.0.0.1:{closed_port}/v1", f"http://127.0.0.1:{srv.server_port}/v1"):
            critic = C.APICritic(url, "m", retries=2, backoff=0.01, timeout=0.3, concurrency=1)
            t0 = time.monotonic()
            out, fallbacks = C.make_critiques("cot", questions=["q"], responses=["a"], correct=[False],
                                              ground_truths=["5"], references=[None], critic=critic, tries=1)
            assert out == ["The generated solution is incorrect, the ground truth is 5."] and fallbacks == 1
            assert critic.num_failures == 1 and time.monotonic() - t0 < 5
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
    assert not (out / "checkpoint-2").exists() and train.latest_checkpoint(out).name == "checkpoint-1"


def test_a_signal_inside_a_deferred_block_waits_for_its_end(tmp_path):
    from processes import Processes
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
