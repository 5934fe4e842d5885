"""An Azure OpenAI deployment through the gateway: the deployment URL with
``api-version``, the key as ``api-key``, the client's credentials not passed."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from gwtest import LoopThread, chat, http, running

AZURE_KEY = "az-key-5f0c1d"
ANSWER = orjson.dumps({"id": "c1", "object": "chat.completion", "model": "my-dep",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "hi"}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                 "total_tokens": 4}})


class AzureLike:
    """Records each request's target and headers; answers a chat completion."""

    def __init__(self, lt: LoopThread) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        self.server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append((lines[0], headers, body))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


@pytest.mark.parametrize(("path", "upstream_path"), [
    ("/v1/chat/completions", "/openai/deployments/my-dep/chat/completions"),
    ("/chat/completions", "/openai/deployments/my-dep/chat/completions"),
    ("/v1/embeddings", "/openai/deployments/my-dep/embeddings"),
])
def test_azure_deployment_url_api_version_and_api_key_header(path: str,
                                                             upstream_path: str) -> None:
    lt = LoopThread()
    up = AzureLike(lt)
    lt.closers.append(up.server.close)

    def yaml(_: int) -> str:
        return f"""
providers:
  - {{name: az, kind: azure, base_url: "http://127.0.0.1:{up.port}", api_key: {AZURE_KEY},
     api_version: 2024-10-21}}
models:
  - {{name: gpt-az, targets: [{{provider: az, model: my-dep}}]}}
observability: {{access_log: off}}
"""

    try:
        with running(yaml, lt=lt) as gw:
            doc = chat("gpt-az") if "chat" in path else {"model": "gpt-az", "input": "x"}
            r = http(gw.port, "POST", path, doc,
                     headers={"authorization": "Bearer sk-client-1"})
            assert r.status == 200, r.body
            assert r.headers["x-fastgw-provider"] == "az"
            assert r.headers["x-fastgw-model"] == "my-dep"
    finally:
        lt.close()
    assert len(up.seen) == 1
    request_line, headers, body = up.seen[0]
    assert request_line == f"POST {upstream_path}?api-version=2024-10-21 HTTP/1.1"
    assert headers["api-key"] == AZURE_KEY
    assert "authorization" not in headers  # neither the client's key nor a Bearer one
    assert b"sk-client-1" not in body
    assert orjson.loads(body)["model"] == "my-dep"
