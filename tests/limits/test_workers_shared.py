"""``--workers 2`` with the local backend: both worker processes reserve from one
shared-memory table, so a limit is one count, not one per worker."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Any

import pytest
from gwtest import LoopThread, http, wait_for
from limits_helpers import KEY_A, bearer, free_port, gateway_process, gw_yaml, keys_yaml

from fastgw.mock import MockOptions, start_mock


@pytest.fixture
def mock_port() -> Any:
    lt = LoopThread()
    srv = lt.run(start_mock(MockOptions(), "127.0.0.1", 0))
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        lt.call(srv.close)
        lt.close()


def test_two_workers_share_one_count(mock_port: int, tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gw_yaml(mock_port, keys_yaml(a_limits="rpm: 10")
                           + "limits:\n  - {match: {model: gpt-test}, per: rule, rpm: 1000}\n"))
    port = free_port()
    with gateway_process(cfg, port, "--workers", "2") as proc:
        # Wait until both workers listen (request ids carry a per-process prefix).
        def both_up() -> bool:
            ids = {http(port, "GET", "/healthz").headers["x-request-id"][:16] for _ in range(20)}
            return len(ids) == 2

        assert wait_for(both_up, timeout=20, interval=0.1)

        def one(_: int) -> tuple[int, str]:
            r = http(port, "POST", "/v1/chat/completions",
                     {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
                     bearer(KEY_A))
            return r.status, r.headers.get("x-request-id", "")

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(40)))
        statuses = [s for s, _ in results]
        # rpm 10: a burst of 10, refilling one per 6 s
        assert statuses.count(200) in (10, 11), statuses
        assert statuses.count(429) == 40 - statuses.count(200)
        # Both workers answered.
        prefixes = {rid[:16] for _, rid in results}
        assert len(prefixes) == 2, prefixes
        shm = f"/dev/shm/fastgw-limits-{proc.pid}"
        if os.path.isdir("/dev/shm"):
            assert os.path.exists(shm)
    if os.path.isdir("/dev/shm"):
        assert not os.path.exists(shm)  # removed when the supervisor exits
