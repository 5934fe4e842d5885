"""Access control in the pipeline: who is calling, may they, and within which limits.

The runner calls, in order: :meth:`Access.authenticate` (before the model is
looked up, so unauthenticated callers learn nothing about models), then
:meth:`Access.admit` (model allowed? reserve every matching limit), and
:meth:`Access.settle` exactly once when the request ends, whatever happened
(correct the reservation with real usage, refund on error or cancel).
"""

from __future__ import annotations

from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.snapshot import Snapshot
from fastgw.server.protocol import Cycle


class Access:
    """Open access: no credentials configured, no limits."""

    __slots__ = ()

    async def authenticate(self, ctx: RequestCtx) -> None:
        """Identify the caller (API key, JWT) and apply IP rules; raise 401/403."""

    async def admit(self, ctx: RequestCtx) -> None:
        """Check the model is allowed (403) and reserve limits (429)."""

    def settle(self, ctx: RequestCtx) -> None:
        """Correct reservations with the real usage; refund what was not used."""

    async def visible_models(self, cycle: Cycle, snapshot: Snapshot) -> list[str] | None:
        """Models the caller may list (None: all); raises 401 without credentials."""
        return None
