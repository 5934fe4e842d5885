"""The caller once identified, and the model allow-list it carries."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastgw.config import LimitSpec

_MAX_VERDICTS = 4096  # model names remembered per principal (configured names only, in practice)


class ModelGlobs:
    """A compiled model allow-list: exact names and ``fnmatch`` globs (``gpt-4o*``)."""

    __slots__ = ("_exact", "_regex", "everything", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self.everything = "*" in self.patterns
        self._exact = frozenset(p for p in self.patterns if not _is_glob(p))
        globs = [fnmatch.translate(p) for p in self.patterns if _is_glob(p)]
        self._regex = re.compile("|".join(f"(?:{g})" for g in globs)) if globs else None

    def match(self, model: str) -> bool:
        if self.everything or model in self._exact:
            return True
        return self._regex is not None and self._regex.match(model) is not None


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class Principal:
    """Who is calling: an API key, a token's subject, or the anonymous caller.

    ``id`` names the caller in limit buckets (``k:`` keys, ``j:`` token
    subjects, ``-`` anonymous), so a key and a subject of the same name never
    share a count. ``plans`` is the pipeline's cache of limit plans per model.
    """

    __slots__ = ("_verdicts", "id", "kind", "limits", "metadata", "models", "name", "plans",
                 "tier")

    def __init__(self, kind: str, name: str | None, models: ModelGlobs, *,
                 tier: str | None = None, limits: LimitSpec | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        self.kind = kind  # "key" | "jwt" | "anonymous"
        self.name = name
        self.id = {"key": "k:", "jwt": "j:"}.get(kind, "-") + (name or "")
        self.models = models
        self.tier = tier
        self.limits = limits
        self.metadata = dict(metadata or {})
        self.plans: dict[Any, Any] = {}
        self._verdicts: dict[str, bool] = {}

    def allows(self, model: str) -> bool:
        """May this caller use ``model``? (cached per model name)"""
        ok = self._verdicts.get(model)
        if ok is None:
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            ok = self._verdicts[model] = self.models.match(model)
        return ok

    def __repr__(self) -> str:
        return f"<Principal {self.id} tier={self.tier!r}>"
