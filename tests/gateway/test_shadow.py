"""Shadow traffic end to end: requests mirrored to another model after the client's
answer, never slowing it; max_inflight bounds them (the rest skipped and counted);
their access-log lines are marked. The client is the official OpenAI SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from gwtest import Gateway, LoopThread, Mock, running, wait_for

from fastgw.metrics import REQUESTS, SHADOW
from fastgw.mock import MockOptions, start_mock

SLOW_S = 0.6  # the shadow target's latency


def _yaml(port: int, slow_port: int, log: Path) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: mock, kind: openai-compatible, base_url: http://127.0.0.1:{port}/v1}}
  - {{name: slow, kind: openai-compatible, base_url: http://127.0.0.1:{slow_port}/v1}}
models:
  - name: plain
    targets: [{{provider: mock, model: primary}}]
  - name: mirrored
    targets: [{{provider: mock, model: primary}}]
    shadow: {{model: candidate, percent: 100, max_inflight: 2}}
  - name: candidate
    targets: [{{provider: slow, model: candidate-v2}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 1.0}}
  - name: smart
    cascade:
      - {{model: plain, accept_if: {{max_prompt_tokens: 100}}}}
      - {{model: candidate}}
    shadow: {{model: candidate, percent: 100, max_inflight: 2}}
observability: {{access_log: {log}}}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Mock, Path]]:
    log = tmp_path_factory.mktemp("shadow") / "access.log"
    lt = LoopThread()
    srv = lt.run(start_mock(MockOptions(latency_ms=SLOW_S * 1000), "127.0.0.1", 0))
    slow = Mock(srv, srv.sockets[0].getsockname()[1])
    try:
        with running(lambda port: _yaml(port, slow.port, log), lt=lt) as gw:
            yield gw, slow, log
    finally:
        lt.call(srv.close)
        lt.close()


@pytest.fixture
def client(env: tuple[Gateway, Mock, Path]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=env[0].url + "/v1", api_key="sk-client", max_retries=0,
                       timeout=10) as c:
        yield c


def _shadow_lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [d for d in (orjson.loads(x) for x in log.read_bytes().splitlines())
            if d.get("shadow") is True]


def _quiet(gw: Gateway) -> None:
    """Wait until no mirror is in flight (each takes SLOW_S)."""
    def idle() -> bool:
        return all(s.inflight == 0 for s in _states(gw))

    assert wait_for(idle, timeout=5)


def _states(gw: Gateway) -> list[Any]:
    assert gw.app.gateway is not None
    return list(gw.app.gateway.state.snapshot.internal.shared.values())


def _timed(client: openai.OpenAI, model: str, n: int = 3, stream: bool = False) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        if stream:
            with client.chat.completions.with_streaming_response.create(
                    model=model, stream=True,
                    messages=[{"role": "user", "content": "hi"}]) as raw:
                assert list(raw.parse())
        else:
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}])
            assert answer.model == "primary"
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_slow_shadow_does_not_slow_the_client(env: tuple[Gateway, Mock, Path],
                                                client: openai.OpenAI, stream: bool) -> None:
    gw, _, _ = env
    _quiet(gw)
    before = gw.metric(REQUESTS, "candidate", "slow", "200")
    plain = _timed(client, "plain", stream=stream)
    _quiet(gw)
    mirrored = _timed(client, "mirrored", n=1, stream=stream)
    # Generous: the mirror alone takes SLOW_S; the client's answer must not wait for it.
    assert mirrored < max(10 * plain, 0.05) and mirrored < SLOW_S / 2
    _quiet(gw)
    assert gw.metric(REQUESTS, "candidate", "slow", "200") == before + 1


def test_the_mirror_is_the_clients_request_with_the_shadow_model(
        env: tuple[Gateway, Mock, Path], client: openai.OpenAI) -> None:
    gw, _, log = env
    _quiet(gw)
    time.sleep(0.2)  # the earlier mirrors' log lines are written (every 50 ms)
    seen = len(_shadow_lines(log))
    ok = gw.metric(SHADOW, "mirrored", "ok")
    client.chat.completions.create(model="mirrored", temperature=0.3,
                                   messages=[{"role": "user", "content": "mirror me"}])
    assert wait_for(lambda: len(_shadow_lines(log)) > seen, timeout=5)
    line = _shadow_lines(log)[-1]
    assert line["model"] == "candidate" and line["served_model"] == "candidate-v2"
    assert line["status"] == 200 and line["tokens_in"] > 0 and line["cost_usd"] > 0
    assert line["latency_ms"] >= SLOW_S * 1000 * 0.9
    assert wait_for(lambda: gw.metric(SHADOW, "mirrored", "ok") == ok + 1, timeout=5)


def test_past_max_inflight_mirrors_are_skipped_and_counted(
        env: tuple[Gateway, Mock, Path], client: openai.OpenAI) -> None:
    gw, _, _ = env
    _quiet(gw)
    skipped = gw.metric(SHADOW, "mirrored", "skipped")
    sent = gw.metric(REQUESTS, "candidate", "slow", "200")
    for _ in range(5):  # well within SLOW_S: the first two mirrors are still running
        client.chat.completions.create(model="mirrored",
                                       messages=[{"role": "user", "content": "hi"}])
    assert gw.metric(SHADOW, "mirrored", "skipped") == skipped + 3
    _quiet(gw)
    assert gw.metric(REQUESTS, "candidate", "slow", "200") == sent + 2


def test_a_failing_shadow_never_reaches_the_client(
        env: tuple[Gateway, Mock, Path], client: openai.OpenAI) -> None:
    gw, _, _ = env
    _quiet(gw)
    errors = gw.metric(SHADOW, "mirrored", "error")
    # The fault header goes to both: the client gets its own upstream's answer,
    # the mirror fails too and is counted as an error.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="mirrored",
                                       messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-mock-fault": "400"})
    _quiet(gw)
    assert gw.metric(SHADOW, "mirrored", "error") == errors + 1


def test_a_cascade_model_mirrors_what_its_steps_served(
        env: tuple[Gateway, Mock, Path], client: openai.OpenAI) -> None:
    gw, _, _ = env
    _quiet(gw)
    ok = gw.metric(SHADOW, "smart", "ok")
    raw = client.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-fastgw-model"] == "primary"
    _quiet(gw)
    assert gw.metric(SHADOW, "smart", "ok") == ok + 1
