"""Golden strings for every critique and the refinement prompt; selection rules; the API critic
against a real HTTP server on 127.0.0.1."""
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

import critique as C
from support import critics


def test_indicative_golden_strings():
    assert C.indicative(True) == "The generated solution is correct."
    assert C.indicative(False) == "The generated solution is incorrect."
    assert C.indicative_gt(False, "42") == "The generated solution is incorrect, the ground truth is 42."
    assert C.indicative_gt(True, "x=1") == "The generated solution is correct, the ground truth is x=1."


def test_refinement_prompt_golden():
    assert C.refinement_prompt("What is 2 + 2?", "2 + 2 = 5", "The generated solution is incorrect.") == (
        "Given the following inputs:\n"
        "**Question**: What is 2 + 2?\n"
        "**Previous Solution**: 2 + 2 = 5\n"
        "**Critique**: The generated solution is incorrect.\n\n"
        "Please re-answer by:\n"
        "- Correcting potential errors identified in the critique, if they exist.\n"
        "- Providing clear, step-by-step reasoning.\n"
        "- Formatting the final answer as `\\boxed{answer}`.\n\n"
        "Ensure the revised solution addresses all issues raised in the critique.")


def test_critic_messages_golden():
    sys_msg, user = C.critic_messages("Q?", "A.", "R.")
    assert sys_msg == {"role": "system", "content": (
        "You are a science expert. Analyze a student's incorrect solution by comparing it with the correct "
        "solution. Identify any errors and provide a detailed step-by-step explanation of mistakes. "
        "Conclude with: 'Conclusion: wrong [END]'")}
    assert user == {"role": "user", "content": (
        "**Question:** Q?\n\n**Student's Answer:** \nA.\n\n**Correct Solution:** \nR.\n\n**Critique:**")}


def test_make_critiques_indicative_types():
    kw = dict(questions=["q1", "q2"], responses=["r1", "r2"], correct=[True, False], ground_truths=["1", "2"],
              references=[None, None])
    assert C.make_critiques("indicative", **kw) == (
        ["The generated solution is correct.", "The generated solution is incorrect."], 0)
    assert C.make_critiques("indicative_gt", **kw)[0][1] == "The generated solution is incorrect, the ground truth is 2."
    assert C.make_critiques("expert", **kw) == (["", ""], 0)  # no critique: the reference solution is the sample


def test_cot_regenerates_disagreeing_critiques_then_falls_back():
    calls = []

    def critic(conversations):  # a critic that agrees only on its second try for q2, never for q3
        calls.append([c[1]["content"].split("**")[2].strip() for c in conversations])
        return ["Step 1 is wrong. Conclusion: wrong [END]" if "q2" in c[1]["content"] and len(calls) == 2
                else "Looks fine. Conclusion: right" for c in conversations]

    out, fallbacks = C.make_critiques(
        "cot", questions=["q1", "q2", "q3"], responses=["a", "b", "c"], correct=[True, False, False],
        ground_truths=["1", "2", "3"], references=["ref", None, None], critic=critic, tries=3)
    assert out[0] == "The generated solution is correct, the ground truth is 1."  # correct: no critic call
    assert out[1] == "Step 1 is wrong. Conclusion: wrong [END]"
    assert out[2] == "The generated solution is incorrect, the ground truth is 3." and fallbacks == 1
    assert calls == [["q2", "q3"], ["q2", "q3"], ["q3"]]


@pytest.mark.parametrize("mode,k,rewards,expected", [
    ("first_correct", 1, [0, 1, 0, 1], [1]),
    ("first_correct", 3, [0, 1, 0, 1], [1, 3, 0]),
    ("first_correct", 1, [0, 0, 0], [0]),
    ("correct_then_random", 2, [0, 1, 0, 1], [1, 3]),
])
def test_selection_rules(mode, k, rewards, expected):
    assert C.select_refinements(rewards, k, mode, random.Random(0)) == expected


def test_random_selection_rules_are_seeded():
    picks = {C.select_refinements([0, 0, 0, 0, 0, 0, 0], 1, "correct_then_random", random.Random(s))[0] for s in range(30)}
    assert len(picks) > 3  # not always the first
    assert C.select_refinements([1, 0, 0], 1, "correct_then_random", random.Random(1)) == [0]
    a = C.select_refinements([1, 0, 1, 0], 2, "random", random.Random(3))
    assert a == C.select_refinements([1, 0, 1, 0], 2, "random", random.Random(3)) and len(set(a)) == 2


def test_truncate_tokens(tok):
    text = "What is 3 + 4? " * 20
    cut, was_cut = C.truncate_tokens(tok, text, 10)
    assert was_cut and len(tok(cut, add_special_tokens=False)["input_ids"]) <= 11
    assert C.truncate_tokens(tok, "short", 100) == ("short", False)


class _Handler(BaseHTTPRequestHandler):
    # what to answer, one entry per request: an HTTP status, (status, JSON error body), a critique
    # text, "GARBAGE" (200 and not JSON) or "SLOW" (nothing for 1 s)
    script: list = []
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.headers.get("Authorization"), body))
        what = _Handler.script.pop(0) if _Handler.script else 500
        if what == "SLOW":
            time.sleep(1.0)
            return
        if isinstance(what, (int, tuple)):
            status, error = what if isinstance(what, tuple) else (what, None)
            self.send_response(status)
            self.end_headers()
            if error is not None:
                self.wfile.write(json.dumps(error).encode())
            return
        payload = b"not json" if what == "GARBAGE" else json.dumps(
            {"choices": [{"message": {"content": what}}], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Handler.script, _Handler.seen = [], []
    yield f"http://127.0.0.1:{srv.server_port}/v1"
    srv.shutdown()


def test_api_critic_retries_then_succeeds(server, monkeypatch):
    monkeypatch.setenv("TEST_CRITIC_KEY", "sk-secret")
    _Handler.script = [429, "GARBAGE", "It is wrong. Conclusion: wrong [END]"]
    critic = critics.APICritic(server, "gpt-4o", api_key_env="TEST_CRITIC_KEY", retries=3, backoff=0.01, concurrency=1)
    assert critic([C.critic_messages("q", "a", "r")]) == ["It is wrong. Conclusion: wrong [END]"]
    auth, body = _Handler.seen[-1]
    assert auth == "Bearer sk-secret" and body["model"] == "gpt-4o" and body["temperature"] == 0.7
    assert body["top_p"] == 0.75 and body["messages"][0]["content"] == C.CRITIC_SYSTEM_PROMPT
    assert critic.transport_failures == 0 and "sk-secret" not in repr(vars(critic))
    assert (critic.calls, critic.tokens_in, critic.tokens_out) == (1, 11, 7)  # from the endpoint's "usage"


def test_api_critic_failure_falls_back_to_ground_truth(server):
    _Handler.script = [500] * 6
    critic = critics.APICritic(server, "m", retries=3, backoff=0.01, concurrency=1)
    out, fallbacks = C.make_critiques("cot", questions=["q"], responses=["a"], correct=[False], ground_truths=["5"],
                                      references=[None], critic=critic, tries=2)
    assert out == ["The generated solution is incorrect, the ground truth is 5."] and fallbacks == 1
    assert critic.transport_failures == 2 and len(_Handler.seen) == 6
    assert critic.last_error == "HTTP 500 Internal Server Error"


def test_disagreeing_critiques_fall_back_without_transport_failures(server):
    """The critic answers every time but never concludes 'wrong': a content fallback, not a
    transport failure, so a run can tell a bad critic from an unreachable one."""
    _Handler.script = ["Looks right to me. Conclusion: right"] * 2
    critic = critics.APICritic(server, "m", retries=3, backoff=0.01, concurrency=1)
    _, fallbacks = C.make_critiques("cot", questions=["q"], responses=["a"], correct=[False],
                                    ground_truths=["5"], references=[None], critic=critic, tries=2)
    assert fallbacks == 1 and critic.transport_failures == 0 and critic.calls == 2


def _closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here: connection refused
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("answer,said", [
    ("Hi", None),  # reachable: probe returns
    ((401, {"error": {"message": "Incorrect API key provided: sk-abc123.\nSee the docs."}}),
     "HTTP 401 Unauthorized: Incorrect API key provided: sk-*** See the docs."),
    ((404, {"error": "no such route"}), "HTTP 404 Not Found"),
    (500, "HTTP 500 Internal Server Error"),
    ("SLOW", "timed out after 0.3 s"),
    ("GARBAGE", "an answer that is not a chat completion"),
    ("REFUSED", "connection refused"),
])
def test_probe_says_in_one_line_why_the_endpoint_cannot_be_reached(server, answer, said):
    url = _closed_port_url() if answer == "REFUSED" else server
    _Handler.script = [answer]
    critic = critics.APICritic(url, "gpt-4o", retries=3, backoff=0.01, timeout=0.3, max_tokens=4096)
    if said is None:
        critic.probe()
    else:
        with pytest.raises(SystemExit) as e:
            critic.probe()
        assert str(e.value) == ("error: the critic endpoint "
                                f"{url}/chat/completions cannot be reached: {said}")
    # one request (none reached the server when refused), a tiny one with the run's other settings
    bodies = [body for _, body in _Handler.seen]
    assert bodies == [] if answer == "REFUSED" else (
        len(bodies) == 1 and bodies[0]["max_tokens"] == 1 and bodies[0]["temperature"] == 0.7)
    assert critic.transport_failures == 0 and critic.calls == 0  # a probe is not a critique
