"""Limits in this process, or in shared memory across ``--workers``.

The ``--workers`` supervisor puts a path in ``FASTGW_LIMITS_SHM`` before it
forks; every worker (and every restarted worker) maps that file, so they all
reserve from one table. A single process uses a plain in-process table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from fastgw._native import LimiterTable, Reservation, Scope, SharedLimiterTable
from fastgw.limits.rules import MAX_SCOPES, Plan, ScopeSpec

SHM_ENV = "FASTGW_LIMITS_SHM"


def local_table() -> LimiterTable | SharedLimiterTable:
    """The shared-memory table named by ``FASTGW_LIMITS_SHM``, or a process-local one."""
    path = os.environ.get(SHM_ENV)
    if path:
        return SharedLimiterTable(path)
    return LimiterTable()


class LocalLimiter:
    """Reserve and settle on a native table: no I/O, no await."""

    __slots__ = ("table",)

    is_local = True

    def __init__(self, table: LimiterTable | SharedLimiterTable | None = None) -> None:
        self.table = table if table is not None else local_table()

    def reserve(self, plan: Plan, costs: Sequence[float]) -> Reservation:
        return self.table.reserve(plan.scopes, costs)

    def admit(self, plan: Plan, tokens: float, usd: float) -> tuple[Reservation, bytes]:
        """:meth:`reserve` at the plan's costs for these estimates, with the
        ``x-ratelimit-*`` lines: one native call."""
        res, head = self.table.admit(plan.admission, tokens, usd)
        return res, head if head is not None else plan.render(res)

    def settle(self, res: object, actual: Sequence[float]) -> None:
        if isinstance(res, Reservation):
            self.table.settle(res, actual)

    def release(self, res: object) -> None:
        if isinstance(res, Reservation):
            self.table.release(res)

    def peek(self, specs: Sequence[ScopeSpec]) -> list[tuple[float, float]]:
        """(remaining, seconds until reset) of each bucket now, changing nothing: a
        reservation of nothing, given back at once. Not for the request path."""
        out: list[tuple[float, float]] = []
        for i in range(0, len(specs), MAX_SCOPES):
            part = specs[i:i + MAX_SCOPES]
            res = self.table.reserve([Scope(s.key, s.limit) for s in part], [0.0] * len(part))
            self.table.release(res)
            out.extend(zip(res.remaining, res.reset_after, strict=True))
        return out

    async def close(self) -> None:
        """Nothing to close (the table lives as long as the process)."""
