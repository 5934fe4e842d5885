"""Target health: passive outlier ejection with exponential cooldown and a half-open probe.

A target is ejected after ``consecutive_failures`` failures in a row, or when
its error ratio over the last ``window_s`` reaches ``error_ratio`` with at least
``min_requests`` requests. It stays out for ``base_ejection_s`` doubled on each
ejection in a row (capped at ``max_ejection_s``); then one request is let
through (half-open): success makes it healthy again, failure ejects it again
for longer. Only upstream faults count (connect errors, timeouts, 5xx, broken
responses), never client errors or the provider's 429.
"""

from __future__ import annotations

from collections.abc import Callable

from fastgw.config import HealthConfig

HEALTHY = 0
EJECTED = 1
HALF_OPEN = 2  # the cooldown is over; one probe request is in flight


class Health:
    # Targets not HEALTHY right now, process-wide: when 0 (the usual case) the
    # health filter on the request path is skipped entirely.
    degraded = 0

    __slots__ = ("_cfg", "_on_change", "_win_failures", "_win_requests", "_win_start",
                 "consecutive", "ejected_until", "ejections", "state")

    def __init__(self, cfg: HealthConfig, on_change: Callable[[bool], None] | None = None) -> None:
        self._cfg = cfg
        self._on_change = on_change
        self.state = HEALTHY
        self.consecutive = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self._win_start = 0.0
        self._win_requests = 0
        self._win_failures = 0

    def available(self, now: float) -> bool:
        """May a request go to this target now? Takes the half-open slot when due."""
        state = self.state
        if state == HEALTHY:
            return True
        if state == EJECTED and now >= self.ejected_until:
            self.state = HALF_OPEN
            return True
        return False

    def peek(self, now: float) -> bool:
        """Like :meth:`available` without taking the half-open slot."""
        return self.state == HEALTHY or (self.state == EJECTED and now >= self.ejected_until)

    def success(self, now: float) -> None:
        self.consecutive = 0
        # _count(now, failed=False), inline: this runs once per answered request.
        if now - self._win_start > self._cfg.window_s:
            self._win_start = now
            self._win_requests = 0
            self._win_failures = 0
        self._win_requests += 1
        if self.state != HEALTHY:
            self.state = HEALTHY
            Health.degraded -= 1
            self.ejections = 0
            if self._on_change is not None:
                self._on_change(True)

    def failure(self, now: float) -> None:
        self.consecutive += 1
        self._count(now, failed=True)
        cfg = self._cfg
        if self.state == HALF_OPEN:
            self._eject(now)
            return
        if self.state != HEALTHY:
            return
        if self.consecutive >= cfg.consecutive_failures or (
                self._win_requests >= cfg.min_requests
                and self._win_failures >= cfg.error_ratio * self._win_requests):
            self._eject(now)

    def release_probe(self) -> None:
        """The half-open request ended without a verdict (cancelled): allow another."""
        if self.state == HALF_OPEN:
            self.state = EJECTED

    def _count(self, now: float, *, failed: bool) -> None:
        if now - self._win_start > self._cfg.window_s:
            self._win_start = now
            self._win_requests = 0
            self._win_failures = 0
        self._win_requests += 1
        if failed:
            self._win_failures += 1

    def _eject(self, now: float) -> None:
        cfg = self._cfg
        self.ejections += 1
        cooldown = min(cfg.base_ejection_s * 2 ** (self.ejections - 1), cfg.max_ejection_s)
        self.ejected_until = now + cooldown
        was_healthy = self.state == HEALTHY
        if was_healthy:
            Health.degraded += 1
        self.state = EJECTED
        self.consecutive = 0
        self._win_requests = 0
        self._win_failures = 0
        if was_healthy and self._on_change is not None:
            self._on_change(False)
