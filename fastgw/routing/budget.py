"""Retry budget (as Envoy's): retries in flight may be at most ``percent`` of the
requests in flight, with ``min_concurrent`` always allowed. A failing upstream
then sees at most that share of extra load instead of a retry storm."""

from __future__ import annotations

from fastgw.config import RetryBudgetConfig


class RetryBudget:
    __slots__ = ("_min", "_ratio", "requests", "retries")

    def __init__(self, cfg: RetryBudgetConfig) -> None:
        self._ratio = cfg.percent / 100.0
        self._min = cfg.min_concurrent
        self.requests = 0  # requests in flight
        self.retries = 0  # retries in flight

    def try_acquire(self) -> bool:
        """Book one retry if the budget allows; pair with :meth:`release`."""
        if self.retries < max(self._min, self.requests * self._ratio):
            self.retries += 1
            return True
        return False

    def release(self) -> None:
        self.retries -= 1
