"""Fixtures: a real mock upstream on a free 127.0.0.1 port, in a background loop.

Tests are plain sync functions (no pytest-asyncio): the server runs on a uvloop
loop in its own thread; clients are the official SDKs or raw sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from mock_helpers import MockThread

from fastgw.mock import MockOptions


@pytest.fixture
def mock_factory() -> Iterator[Callable[..., MockThread]]:
    started: list[MockThread] = []

    def make(**kwargs: object) -> MockThread:
        m = MockThread(MockOptions(**kwargs))  # type: ignore[arg-type]
        started.append(m)
        return m

    yield make
    for m in started:
        m.close()


@pytest.fixture
def mock(mock_factory: Callable[..., MockThread]) -> MockThread:
    return mock_factory()
