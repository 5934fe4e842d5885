"""Limits: rules over (key, model, tier, provider) turned into plans of scopes,
reserved all at once and settled with the real usage.

- :mod:`fastgw.limits.rules`: configuration -> per-(caller, model) plans
  (scopes, costs, rate-limit headers), built once and cached.
- :mod:`fastgw.limits.local`: the native limiter table, in this process or in
  shared memory across ``--workers``.
- :mod:`fastgw.limits.redis`: the same semantics in Redis (one Lua call per
  admission and one per settle), with ``redis.on_error`` when it is down.
"""

from fastgw.limits.local import LocalLimiter, local_table
from fastgw.limits.rules import Plan, Rules

__all__ = ["LocalLimiter", "Plan", "Rules", "local_table"]
