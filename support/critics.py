"""The CoT critic back ends of critique.make_critiques: `critic(list of chat messages) -> list of
critique texts (None = failed)`.

Each counts calls, tokens in and out (what the official repo's users asked a step to cost), and
`transport_failures`: requests that got no critique at all (refused, timed out, HTTP errors after
every retry), apart from make_critiques's fallbacks, which also count critiques whose verdict
disagreed with the verifier. `probe()` checks, before training, that the critic answers at all.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import rollout

# what a failed request to an API critic raises: refused, timed out, HTTP errors (urllib's HTTPError
# is an OSError), a reply that is not HTTP, or one that is not a chat completion
_REQUEST_ERRORS = (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError)


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


