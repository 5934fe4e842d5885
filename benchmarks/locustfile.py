# locust is optional (pip install locust): without it mypy sees its names as Any.
# mypy: allow-subclassing-any, allow-untyped-decorators
"""User-like load on fastgw for capacity runs a person watches in locust's UI.

Each simulated user is a person chatting through the OpenAI API: it holds an
API key (keys are dealt round robin over the users), keeps one conversation
going on one model for a few turns (the reply is appended to the history, so
prompts grow), asks for a streamed answer more often than not, sometimes
lists the models, and thinks between requests.

    pip install locust                    # or: pip install '.[bench]'
    python -m fastgw.mock --port 9000
    fastgw serve --config benchmarks/configs/locust.yaml
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8080             # UI :8089
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8080 \\
        --headless -u 200 -r 20 -t 2m                                            # no UI

The statistics have one line per request kind and model: ``chat MODEL``,
``stream MODEL`` (timed to ``[DONE]``, the whole answer), ``models``, and
``first token MODEL`` (type ``SSE``: time to the first content event, what
a person waits for). A stream that ends without ``[DONE]`` or with an SSE
``error`` event is a failure.

Environment (defaults fit benchmarks/configs/locust.yaml):

``FASTGW_KEYS``
    ``KEY=MODEL|MODEL,...``: the users' keys and the models each may use,
    e.g. ``sk-a=gpt-4o-mini|gpt-4o,sk-b=llama-3.1-8b``.
``FASTGW_THINK_S``
    think time between requests, ``MIN:MAX`` seconds (default ``1:5``).
``FASTGW_STREAM_SHARE``
    share of chat requests that stream (default ``0.6``).
"""

from __future__ import annotations

import json
import os
import random
import time
from itertools import count
from typing import Any

from locust import FastHttpUser, between, events, task

PERSONAS: list[tuple[str, list[str]]] = [
    ("sk-locust-alice", ["gpt-4o-mini", "gpt-4o", "llama-3.1-8b"]),
    ("sk-locust-bob", ["gpt-4o", "gpt-4o-mini"]),
    ("sk-locust-carol", ["gpt-4o-mini", "llama-3.1-8b"]),
    ("sk-locust-dave", ["llama-3.1-8b", "gpt-4o-mini"]),
]

QUESTIONS = [
    "What is the capital of Australia?",
    "Explain the difference between TCP and UDP in two sentences.",
    "Write a haiku about load balancers.",
    "Summarise the plot of Hamlet in one paragraph.",
    "How do I reverse a list in Python?",
    "Give me three names for a grey cat.",
    "What does HTTP 429 mean and what should a client do?",
    "Translate 'good morning, how are you?' into French.",
]
FOLLOW_UPS = ["Can you say more?", "Shorter, please.", "Why?", "Give an example.", "Thanks! And?"]
SYSTEM = "You are a helpful assistant. Answer briefly."
MAX_TURNS = 6  # then the user starts a new conversation


def _personas() -> list[tuple[str, list[str]]]:
    spec = os.environ.get("FASTGW_KEYS", "").strip()
    if not spec:
        return PERSONAS
    out = []
    for item in spec.split(","):
        key, _, models = item.strip().partition("=")
        out.append((key, [m for m in models.split("|") if m] or ["gpt-4o-mini"]))
    return out


def _think() -> tuple[float, float]:
    lo, _, hi = os.environ.get("FASTGW_THINK_S", "1:5").partition(":")
    return float(lo), float(hi or lo)


_dealt = count()


class ChatUser(FastHttpUser):
    """A person chatting: one key, one conversation at a time, think time."""

    wait_time = between(*_think())
    network_timeout = 120.0
    connection_timeout = 10.0
    stream_share = float(os.environ.get("FASTGW_STREAM_SHARE", "0.6"))

    def on_start(self) -> None:
        personas = _personas()
        self.key, self.models = personas[next(_dealt) % len(personas)]
        self.headers = {"Authorization": f"Bearer {self.key}", "Accept-Encoding": "identity"}
        self.new_conversation()

    def new_conversation(self) -> None:
        self.model = random.choice(self.models)
        self.messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
        self.turns = 0

    def ask(self) -> dict[str, Any]:
        if self.turns >= MAX_TURNS:
            self.new_conversation()
        self.turns += 1
        question = random.choice(QUESTIONS if self.turns == 1 else FOLLOW_UPS)
        self.messages.append({"role": "user", "content": question})
        return {
            "model": self.model,
            "messages": self.messages,
            "max_tokens": random.choice([64, 128, 256]),
            "temperature": 0.7,
            "user": self.key[-5:],
        }

    def answered(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    @task(9)
    def chat(self) -> None:
        if random.random() < self.stream_share:
            self.chat_stream()
        else:
            self.chat_once()

    def chat_once(self) -> None:
        body = self.ask()
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=self.headers,
            name=f"chat {self.model}",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:200]}")
                return
            try:
                text = resp.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                resp.failure(f"not a chat completion: {e!r}")
                return
            self.answered(text)

    def chat_stream(self) -> None:
        body = {**self.ask(), "stream": True}
        t0 = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=self.headers,
            name=f"stream {self.model}",
            stream=True,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {(resp.content or b'')[:200]!r}")
                return
            first: float | None = None
            parts: list[str] = []
            done = False
            error = None
            # One SSE event per call, as soon as it is complete: geventhttpclient's
            # readline with the event separator (iter_content(n) waits for n bytes).
            events_in = resp._response
            while event := events_in.readline(b"\n\n"):
                if event.startswith(b"event: error"):
                    error = event.decode(errors="replace")[:200]
                    continue
                data = event.removeprefix(b"data: ").rstrip()
                if data == b"[DONE]":
                    done = True
                    continue
                try:
                    delta = json.loads(data)["choices"][0]["delta"]
                except (ValueError, KeyError, IndexError):
                    continue  # a usage-only chunk has no choices
                if delta.get("content"):
                    if first is None:
                        first = time.perf_counter()
                    parts.append(delta["content"])
            end = time.perf_counter()
            # The whole stream, not only its head, is the request's time.
            resp.request_meta["response_time"] = (end - t0) * 1000
            if error is not None or not done:
                resp.failure(error or "the stream ended without [DONE]")
                return
            self.answered("".join(parts))
        _first_token(self.model, first, t0)

    @task(1)
    def list_models(self) -> None:
        with self.client.get(
            "/v1/models", headers=self.headers, name="models", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}")
            elif not resp.json().get("data"):
                resp.failure("no models listed for this key")


def _first_token(model: str, at: float | None, t0: float) -> None:
    """Time to the first content event, as a line of its own in the statistics."""
    hook: Any = events.request  # EventHook.fire is untyped
    hook.fire(
        request_type="SSE",
        name=f"first token {model}",
        response_time=((at if at is not None else time.perf_counter()) - t0) * 1000,
        response_length=0,
        exception=None if at is not None else RuntimeError("no content event"),
        context={},
    )
