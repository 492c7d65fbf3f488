"""Critiques (step 3 of the method), the refinement prompt (step 4), refinement selection and
mixing (step 5).

Critique types:
  indicative     "The generated solution is correct." / "... is incorrect."
  indicative_gt  the same, ending ", the ground truth is {answer}."
  cot            a critic model compares a wrong response with the reference solution step by step,
                 ending with "Conclusion: wrong [END]"; correct responses get indicative_gt
  self           cot, with the policy itself as the critic
  expert         no critique: the reference solution joins the group instead (LUFFY-style baseline)
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

# what a failed request to an API critic raises: refused, timed out, HTTP errors (urllib's HTTPError
# is an OSError), a reply that is not HTTP, or one that is not a chat completion
_REQUEST_ERRORS = (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError)

CRITIC_SYSTEM_PROMPT = (
    "You are a science expert. Analyze a student's incorrect solution by comparing it with the "
    "correct solution. Identify any errors and provide a detailed step-by-step explanation of "
    "mistakes. Conclude with: 'Conclusion: wrong [END]'")
CRITIC_USER_TEMPLATE = ("**Question:** {question}\n\n**Student's Answer:** \n{answer}\n\n"
                        "**Correct Solution:** \n{reference}\n\n**Critique:**")
REFINE_TEMPLATE = """Given the following inputs:
**Question**: {question}
**Previous Solution**: {previous}
**Critique**: {critique}

Please re-answer by:
- Correcting potential errors identified in the critique, if they exist.
- Providing clear, step-by-step reasoning.
- Formatting the final answer as `\\boxed{{answer}}`.

Ensure the revised solution addresses all issues raised in the critique."""


def indicative(correct: bool) -> str:
    return f"The generated solution is {'correct' if correct else 'incorrect'}."


def indicative_gt(correct: bool, ground_truth: str) -> str:
    return (f"The generated solution is {'correct' if correct else 'incorrect'}, "
            f"the ground truth is {ground_truth}.")


def reference_or_answer(reference: str | None, ground_truth: str) -> str:
    """What the CoT critic compares against: the reference solution, else the bare final answer."""
    return reference or f"The final answer is \\boxed{{{ground_truth}}}."


def critic_messages(question: str, answer: str, reference: str) -> list[dict]:
    user = CRITIC_USER_TEMPLATE.format(question=question, answer=answer, reference=reference)
    return [{"role": "system", "content": CRITIC_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def verdict_agrees(critique: str | None) -> bool:
    """The critic only sees wrong responses; a critique that does not conclude 'wrong' disagrees
    with the verifier and is regenerated (the paper's filter)."""
    return critique is not None and "conclusion: wrong" in critique.lower()


def refinement_prompt(question: str, previous: str, critique: str) -> str:
    return REFINE_TEMPLATE.format(question=question, previous=previous, critique=critique)


def truncate_tokens(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut `text` to its first `max_tokens` tokens so that prompt + refinement fit the context."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True), True


# ---------------------------------------------------------------------------------------------
# Critic backends: `critic(list of chat messages) -> list of critique texts (None = failed)`.
# Each counts calls, tokens in and out (what the official repo's users asked a step to cost), and
# `transport_failures`: requests that got no critique at all (refused, timed out, HTTP errors after
# every retry), apart from make_critiques's fallbacks, which also count critiques whose verdict
# disagreed with the verifier. `probe()` checks, before training, that the critic answers at all.
# ---------------------------------------------------------------------------------------------
class HFCritic:
    """A local causal LM (any HF name or path, or the policy itself for self-critique)."""

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 512, temperature: float = 0.7,
                 top_p: float = 0.75, **gen_kw):
        """gen_kw: rollout.generate's batch_size / merge_lora / static_cache."""
        self.model, self.tokenizer = model, tokenizer
        self.kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       **gen_kw)
        self.calls = self.tokens_in = self.tokens_out = 0
        self.transport_failures = 0  # a local model has no transport: always 0

    def probe(self):
        """A local model is loaded, so it answers: nothing to check."""

    def __call__(self, conversations: list[list[dict]]) -> list[str | None]:
        import rollout
        prompts = [rollout.chat_ids(self.tokenizer, c[-1]["content"], system=c[0]["content"])
                   for c in conversations]
        out = rollout.generate(self.model, self.tokenizer, prompts, desc="critique", **self.kw)
        self.calls += len(prompts)
        self.tokens_in += sum(map(len, prompts))
        self.tokens_out += sum(map(len, out))
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


class APICritic:
    """Any OpenAI-compatible chat endpoint (`{base_url}/chat/completions`). The key is read from the
    environment variable named by `api_key_env` and never stored in the config, logs or samples."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 max_tokens: int = 4096, temperature: float = 0.7, top_p: float = 0.75,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                 concurrency: int = 8):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.concurrency = model, api_key_env, concurrency
        self.body = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        # requests that got no critique after every retry, and what answered the last of them
        self.transport_failures, self.last_error = 0, ""
        self.calls = self.tokens_in = self.tokens_out = 0  # tokens as the endpoint's "usage" says
        self._lock = threading.Lock()  # the counters are updated from `concurrency` threads

    def _post(self, body: dict) -> dict:
        """One POST of `body`; the endpoint's JSON reply. Raises what urllib and json raise."""
        key = os.environ.get(self.api_key_env, "")
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {key}"} if key else {})}
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read())

    def _what_answered(self, e: Exception) -> str:
        """A failed request in a few words: 'connection refused', 'timed out after 60 s',
        'HTTP 401 Unauthorized: <the endpoint's own message>'."""
        if isinstance(e, urllib.error.HTTPError):
            try:
                said = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError, OSError):
                said = ""
            key = os.environ.get(self.api_key_env, "")
            # one line, and never the key, even should the endpoint echo it
            said = " ".join(str(said).split())[:200]
            said = re.sub(r"sk-\S+", "sk-***", said.replace(key, "***") if key else said)
            return f"HTTP {e.code} {e.reason}" + (f": {said}" if said else "")
        reason = getattr(e, "reason", e)  # a URLError wraps the socket's error
        if isinstance(reason, TimeoutError):
            return f"timed out after {self.timeout:g} s"
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, http.client.HTTPException):
            return f"an answer that is not HTTP ({type(e).__name__})"
        if isinstance(e, (ValueError, KeyError, IndexError, TypeError)):
            return "an answer that is not a chat completion"
        return str(reason) or type(reason).__name__

    def probe(self):
        """Send one tiny request (max_tokens 1, the run's other settings) before training. An
        endpoint that cannot be reached, or answers with an HTTP error (a wrong key, model or URL,
        no quota), is a one-line SystemExit instead of a run whose every critique falls back."""
        body = {"model": self.model, "messages": [{"role": "user", "content": "Say OK."}],
                **self.body, "max_tokens": 1}
        try:
            # a chat completion has choices[0].message; any other page (a wrong URL) raises here
            self._post(body)["choices"][0]["message"]
        except _REQUEST_ERRORS as e:
            raise SystemExit(f"error: the critic endpoint {self.url} cannot be reached: "
                             f"{self._what_answered(e)}") from None

    def _one(self, messages: list[dict]) -> str | None:
        body, error = {"model": self.model, "messages": messages, **self.body}, "no request sent"
        for attempt in range(self.retries):
            try:
                reply = self._post(body)
                text = reply["choices"][0]["message"]["content"]
                with self._lock:
                    self.calls += 1
                    self.tokens_in += int(reply.get("usage", {}).get("prompt_tokens", 0))
                    self.tokens_out += int(reply.get("usage", {}).get("completion_tokens", 0))
                if isinstance(text, str) and text.strip():
                    return text
                error = "an empty critique"
            # refused, timed out, rate-limited (HTTP 429), garbage: retry
            except _REQUEST_ERRORS as e:
                error = self._what_answered(e)
            if attempt + 1 < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        with self._lock:
            self.transport_failures += 1
            self.last_error = error
        return None

    def __call__(self, conversations: list[list[dict]]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, conversations))


def make_critiques(critique_type: str, *, questions: list[str], responses: list[str],
                   correct: list[bool], ground_truths: list[str], references: list[str | None],
                   critic=None, tries: int = 3) -> tuple[list[str], int]:
    """One critique per response. Returns (critiques, number of CoT critiques that fell back to the
    ground-truth critique after `tries` attempts that failed or disagreed with the verifier).
    Requests that failed outright are counted apart in the critic's `transport_failures`."""
    if critique_type == "indicative":
        return [indicative(c) for c in correct], 0
    if critique_type == "indicative_gt":
        return [indicative_gt(c, gt) for c, gt in zip(correct, ground_truths)], 0
    if critique_type == "expert":
        return [""] * len(correct), 0
    assert critique_type in ("cot", "self") and critic is not None, critique_type
    out = [indicative_gt(c, gt) for c, gt in zip(correct, ground_truths)]  # correct ones keep this
    todo = [i for i, c in enumerate(correct) if not c]
    for _ in range(tries):
        if not todo:
            break
        refs = [reference_or_answer(references[i], ground_truths[i]) for i in todo]
        texts = critic([critic_messages(questions[i], responses[i], r) for i, r in zip(todo, refs)])
        for i, t in zip(todo, texts):
            if verdict_agrees(t):
                out[i] = t
        todo = [i for i, t in zip(todo, texts) if not verdict_agrees(t)]
    return out, len(todo)  # whatever is left keeps the ground-truth critique


def select_refinements(rewards: list[float], k: int, mode: str, rng: random.Random) -> list[int]:
    """Indices of the k refinements (of one prompt) that join its group.

    first_correct: correct ones first (in order), then the first remaining ones (the release);
    correct_then_random: correct ones first, then random remaining ones (the paper);
    random: k at random (the paper's 'random refinement' ablation)."""
    idx = list(range(len(rewards)))
    if mode == "random":
        return sorted(rng.sample(idx, min(k, len(idx))))
    correct = [i for i in idx if rewards[i] > 0]
    rest = [i for i in idx if rewards[i] <= 0]
    if mode == "correct_then_random":
        rest = rng.sample(rest, len(rest))
    else:
        assert mode == "first_correct", mode
    return (correct + rest)[:k]


def mix_groups(n_groups: int, group_size: int, refined: list[int], refine_rewards: list[float],
               k: int, selection: str, group_mode: str,
               rng: random.Random) -> list[tuple[int, int, bool]]:
    """Step 5: which sequences each group trains on. Initial response i belongs to group
    i // group_size; refinement j refines initial response refined[j]. Per group, select_refinements
    picks up to k of its refinements; append mode keeps every initial response and adds them (the
    paper: 7 + 1), replace mode drops the group's first len(chosen) initial responses for them (the
    release: 8 with slot 0 overwritten).

    Returns (group, index, off_policy) per training sequence, group by group: index is into the
    initial responses when off_policy is False, into the refinements when it is True."""
    out = []
    for g in range(n_groups):
        members = list(range(g * group_size, (g + 1) * group_size))
        candidates = [j for j, i in enumerate(refined) if i in members]  # this group's refinements
        chosen = [candidates[c] for c in select_refinements(
            [refine_rewards[j] for j in candidates], k, selection, rng)] if candidates else []
        keep = members[len(chosen):] if group_mode == "replace" else members
        out += [(g, i, False) for i in keep] + [(g, j, True) for j in chosen]
    return out

