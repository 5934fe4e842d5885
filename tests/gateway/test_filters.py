"""The per-route filter chain: every hook runs where the README's path says, on
the direct path and on the task path, and a route without filters has no chain."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from gwtest import Gateway, chat, http, minimal_yaml, running

from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.filters import Filter, Reply, compile_chain
from fastgw.pipeline.runner import Proxy
from fastgw.pipeline.snapshot import TargetRuntime


class Recording(Filter):
    """Records every hook it sees; edits what it is given."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def request(self, ctx: RequestCtx) -> Reply | None:
        self.seen.append("request")
        if ctx.doc.get("answer_here"):
            return Reply(203, b'{"from":"filter"}')
        return None

    def upstream_request(self, ctx: RequestCtx, target: TargetRuntime, body: bytes) -> bytes:
        self.seen.append("upstream_request")
        doc = orjson.loads(body)
        doc["added_by_filter"] = target.model
        return orjson.dumps(doc)

    def response(self, ctx: RequestCtx, status: int, body: bytes) -> bytes:
        self.seen.append("response")
        doc = orjson.loads(body)
        doc["seen_by_filter"] = status
        return orjson.dumps(doc)

    def chunk(self, ctx: RequestCtx, data: bytes) -> bytes:
        self.seen.append("chunk")
        return data.replace(b"mock", b"MOCK")

    def logging(self, ctx: RequestCtx) -> None:
        self.seen.append(f"logging:{ctx.status}")


class Waiting(Filter):
    """A request hook that must wait: its route takes the task path."""

    awaits = True

    def __init__(self) -> None:
        self.waited = 0

    async def request(self, ctx: RequestCtx) -> Reply | None:
        await asyncio.sleep(0.001)
        self.waited += 1
        return None


class Paths:
    def __init__(self) -> None:
        self.tasks = 0


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Paths]:
    seen = Paths()
    proceed = Proxy._proceed

    def counted(self: Proxy, *args: Any) -> Any:
        seen.tasks += 1
        return proceed(self, *args)

    monkeypatch.setattr(Proxy, "_proceed", counted)
    yield seen


def install(gw: Gateway, *filters: Filter) -> None:
    assert gw.app.gateway is not None
    route = gw.app.gateway.state.snapshot.models["gpt-test"]
    gw.lt.call(lambda: setattr(route, "chain", compile_chain(filters)))


def warm(gw: Gateway) -> None:
    assert http(gw.port, "POST", "/v1/chat/completions", chat()).status == 200


def test_a_route_without_filters_has_no_chain() -> None:
    with running() as gw:
        assert gw.app.gateway is not None
        assert all(r.chain is None for r in gw.app.gateway.state.snapshot.models.values())
        assert compile_chain(()) is None


def test_every_hook_of_a_whole_request_runs_on_the_direct_path(paths: Paths) -> None:
    with running() as gw:
        warm(gw)
        f = Recording()
        install(gw, f)
        paths.tasks = 0
        r = http(gw.port, "POST", "/v1/chat/completions", chat(),
                 {"x-mock-echo": "1"})
        assert r.status == 200
        doc = orjson.loads(r.body)
        assert doc["seen_by_filter"] == 200
        assert doc["echo"]["body"]["added_by_filter"] == "mock-deployment"
        assert f.seen == ["request", "upstream_request", "response", "logging:200"]
        assert paths.tasks == 0


def test_a_stream_passes_its_pieces_through_the_chunk_hook() -> None:
    with running() as gw:
        f = Recording()
        install(gw, f)
        r = http(gw.port, "POST", "/v1/chat/completions", chat(stream=True))
        assert r.status == 200
        assert b"MOCK" in r.body and b"mock response" not in r.body
        assert r.body.endswith(b"data: [DONE]\n\n")
        assert "chunk" in f.seen and "response" not in f.seen
        assert f.seen[-1] == "logging:200"


def test_a_request_hook_may_answer_and_nothing_goes_upstream() -> None:
    with running() as gw:
        f = Recording()
        install(gw, f)
        before = gw.mock_stats()["requests"]
        r = http(gw.port, "POST", "/v1/chat/completions", chat(answer_here=True))
        assert r.status == 203 and orjson.loads(r.body) == {"from": "filter"}
        assert r.headers["x-request-id"]
        assert gw.mock_stats()["requests"] == before
        assert f.seen == ["request", "logging:203"]


def test_the_logging_hook_runs_when_the_request_fails() -> None:
    with running(lambda p: minimal_yaml(p).replace(
            "    price:", "    retry: {attempts: 1}\n    price:", 1)) as gw:
        f = Recording()
        install(gw, f)
        r = http(gw.port, "POST", "/v1/chat/completions", chat(), {"x-mock-fault": "500"})
        assert r.status == 502
        assert f.seen == ["request", "upstream_request", "logging:502"]


def test_an_awaiting_filter_sends_its_route_to_the_task_path(paths: Paths) -> None:
    with running() as gw:
        warm(gw)
        f = Waiting()
        install(gw, f)
        paths.tasks = 0
        assert http(gw.port, "POST", "/v1/chat/completions", chat()).status == 200
        assert f.waited == 1 and paths.tasks == 1
        # Another model, without filters, stays on the direct path.
        paths.tasks = 0
        assert http(gw.port, "POST", "/v1/chat/completions", chat("same-name")).status == 200
        assert paths.tasks == 0
