"""The answer checker behind step 2's reward: evaluate.py's extraction and cheap match in this
process, math-verify in persistent worker processes, each killed and replaced if it overruns a hard
timeout (math-verify's own timeout uses signals and does nothing outside the main thread). A
timeout scores 0 and is counted."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait

from evaluate import extract_answer, fast_equal, math_equal


def _die_with(parent: int):
    """End this process as soon as `parent` dies, by any signal, SIGKILL included. Linux sends it
    SIGKILL then (PR_SET_PDEATHSIG: when the parent's thread that started it ends, so start workers
    from a thread that outlives the checker, as train.py's main thread does); elsewhere, and as a
    fallback, a thread checks every second whether it has been handed to another parent."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no prctl
        pass
    # the parent may have died before prctl took effect
    if os.getppid() != parent:
        os._exit(0)

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def _worker(fd: int, parent: int):
    """A checker worker: a fresh interpreter (AnswerChecker._spawn) that answers (prediction, ground
    truth) pairs on the connection at file descriptor `fd` until it closes or `parent` dies."""
    # Ctrl-C reaches the whole process group; the trainer handles it and then ends its workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent)
    conn = Connection(fd)
    # import math-verify and load sympy's LaTeX parser (on first use) before any check's clock runs
    math_equal("1", "1")
    conn.send("ready")
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the parent closed its end, or died
            return
        if item is None:
            return
        try:
            conn.send(math_equal(*item))
        except Exception:  # a parser crash on odd input is a wrong answer, not a dead run
            conn.send(False)


class AnswerChecker:
    """`checker(responses, ground_truths) -> list[float]` of 0/1 rewards.

    `num_timeouts` counts checks killed at `timeout` seconds (scored 0). Workers are started
    lazily on first need and kept; `close()` (or garbage collection) ends them, and so does the
    death of this process, by any signal (`_die_with`). A worker is given work only once it has said
    it is ready (math-verify imported and warmed up, up to `startup_timeout` seconds), so its
    start-up, slow on a busy machine, never counts against a check's `timeout`.
    """

    def __init__(self, num_workers: int = 2, timeout: float = 10.0, startup_timeout: float = 120.0):
        self.num_workers, self.timeout, self.startup_timeout = num_workers, timeout, startup_timeout
        self.num_timeouts = 0
        self._workers: list[list] = []  # [subprocess.Popen, connection]

    def _spawn(self, n: int = 1) -> list[list]:
        """Start n workers together and return them once each has said it is ready."""
        # A fresh interpreter that imports this file, evaluate.py and math-verify only (~60 MB, no
        # torch: tests/test_layout.py). Not fork: a forked worker maps the trainer's pages (its RSS
        # ~ the trainer's). Not multiprocessing's spawn or forkserver: their children re-run the
        # main script (train.py: torch and all).
        started, here = [], os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for _ in range(n):
            mine, theirs = socket.socketpair()
            code = (f"import sys; sys.path.insert(0, {here!r}); from support import checker; "
                    f"checker._worker({theirs.fileno()}, {os.getpid()})")
            p = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()],
                                 stdin=subprocess.DEVNULL)
            theirs.close()
            started.append([p, Connection(mine.detach())])
        for p, conn in started:
            try:
                ready = conn.poll(self.startup_timeout) and conn.recv() == "ready"
            except EOFError:  # it died while importing
                ready = False
            if not ready:
                for q, c in started:
                    q.kill()
                    q.wait()
                    c.close()
                raise RuntimeError("the answer checker's worker did not start within "
                                   f"{self.startup_timeout:.0f} s (is math-verify installed? "
                                   "try: python -c 'import math_verify')")
        return started

    def __call__(self, responses: list[str], ground_truths: list[str]) -> list[float]:
        assert len(responses) == len(ground_truths)
        rewards = [0.0] * len(responses)
        todo = deque()
        for i, (resp, gt) in enumerate(zip(responses, ground_truths)):
            pred = extract_answer(resp)
            if pred is None or not str(gt).strip():
                continue
            if fast_equal(pred, str(gt)):
                rewards[i] = 1.0
            else:
                todo.append((i, pred, str(gt)))
        # up to num_workers workers, one per check (_spawn(n <= 0) starts none)
        self._workers += self._spawn(min(self.num_workers, len(todo)) - len(self._workers))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item index, start time)
        while todo or busy:
            for w in range(len(self._workers)):
                if w not in busy and todo:
                    i, pred, gt = todo.popleft()
                    try:
                        self._workers[w][1].send((pred, gt))
                    # it died while idle (killed, out of memory): a new one takes the check, and
                    # waiting for it is no other check's time
                    except OSError:
                        paused = self._replace(w)
                        busy = {v: (j, t + paused) for v, (j, t) in busy.items()}
                        self._workers[w][1].send((pred, gt))
                    busy[w] = (i, time.monotonic())
            now = time.monotonic()
            wait([self._workers[w][1] for w in busy],
                 timeout=max(0.0, min(t0 + self.timeout - now for _, t0 in busy.values())))
            for w in list(busy):
                i, t0 = busy[w]
                conn, paused = self._workers[w][1], 0.0
                if conn.poll():
                    try:
                        rewards[i] = float(conn.recv())
                    except EOFError:  # the worker died (e.g. out of memory): wrong, replace it
                        paused = self._replace(w)
                elif time.monotonic() - t0 >= self.timeout:
                    paused = self._replace(w)
                    self.num_timeouts += 1
                else:
                    continue
                del busy[w]
                # waiting for a new worker is no check's time
                busy = {v: (j, t + paused) for v, (j, t) in busy.items()}
        return rewards

    def _replace(self, w: int) -> float:
        """Kill worker w and put a ready one in its slot; returns the seconds that took."""
        t = time.monotonic()
        p, conn = self._workers[w]
        p.kill()
        p.wait()
        conn.close()
        self._workers[w] = self._spawn()[0]
        return time.monotonic() - t

    def close(self):
        for p, conn in self._workers:
            try:
                conn.send(None)
            except OSError:
                pass
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            conn.close()
        self._workers = []

    def __del__(self):
        self.close()
