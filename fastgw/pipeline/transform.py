"""A model's transform, as the first filter of its route.

::

    request    the body's top-level fields: ``set`` (always), ``default`` (when
               absent), ``cap`` (numeric maximum), ``drop``; ``prepend_system``
               (text put before the system prompt: chat ``messages``, Responses
               ``instructions``, Anthropic ``system``, a string or content parts);
               then the body re-encoded once. Headers: the forwarded client
               headers named in ``remove`` left out, ``add`` appended (rendered
               once per configuration)

It runs before anything reads the body: the cache key, the limits' token
estimate and the translation into a target's dialect all see the transformed
request. Completions and embeddings have no system prompt: ``prepend_system``
leaves them as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from fastgw.config import TransformConfig
from fastgw.pipeline.filters import Filter

if TYPE_CHECKING:
    from fastgw.pipeline.ctx import RequestCtx


def _header_line(name: str, value: str) -> bytes:
    return name.lower().encode("latin-1") + b": " + value.encode("utf-8") + b"\r\n"


class TransformFilter(Filter):
    """One model's transform (see the module's docstring)."""

    __slots__ = ("add", "cap", "default", "drop", "remove", "set", "system", "touches_body")

    def __init__(self, cfg: TransformConfig) -> None:
        req = cfg.request
        self.set = tuple(req.set.items())
        self.default = tuple(req.default.items())
        self.cap = tuple(req.cap.items())
        self.drop = tuple(req.drop)
        self.system = req.prepend_system
        self.touches_body = bool(self.set or self.default or self.cap or self.drop
                                 or self.system)
        self.add = b"".join(_header_line(n, v) for n, v in cfg.headers.add.items())
        # Forwarded header names are lowercase: a line starts with "name:".
        self.remove = tuple(n.lower().encode("latin-1") + b":" for n in cfg.headers.remove)

    def request(self, ctx: RequestCtx) -> None:
        if self.touches_body:
            doc = ctx.doc
            if self.edit(doc, ctx.endpoint):
                ctx.body = orjson.dumps(doc)
        if self.remove:
            ctx.fwd = _without(ctx.fwd, self.remove)
        if self.add:
            ctx.fwd += self.add

    def edit(self, doc: dict[str, Any], endpoint: str) -> bool:
        """Apply the body's edits to ``doc``; whether it changed."""
        changed = False
        for name, value in self.set:
            doc[name] = value
            changed = True
        for name, value in self.default:
            if name not in doc:
                doc[name] = value
                changed = True
        for name, cap in self.cap:
            v = doc.get(name)
            if (type(v) is int or type(v) is float) and v > cap:
                doc[name] = int(cap) if type(v) is int and cap == int(cap) else cap
                changed = True
        for name in self.drop:
            if name in doc:
                del doc[name]
                changed = True
        if self.system is not None and prepend_system(doc, endpoint, self.system):
            changed = True
        return changed


def _without(fwd: bytes, names: tuple[bytes, ...]) -> bytes:
    """The forwarded header block without the lines of ``names`` (``b"name:"``)."""
    if all(fwd.find(n) < 0 for n in names):
        return fwd
    return b"".join(line for line in fwd.splitlines(keepends=True)
                    if not line.lower().startswith(names))


def prepend_system(doc: dict[str, Any], endpoint: str, text: str) -> bool:
    """Put ``text`` before the system prompt of a chat, Responses or Anthropic
    Messages request (a system prompt made of it when there is none)."""
    if endpoint == "chat":
        messages = doc.get("messages")
        if not isinstance(messages, list):
            return False
        first = messages[0] if messages else None
        if isinstance(first, dict) and first.get("role") in ("system", "developer"):
            first["content"] = _before(text, first.get("content"))
        else:
            messages.insert(0, {"role": "system", "content": text})
        return True
    if endpoint == "responses":
        doc["instructions"] = _before(text, doc.get("instructions"))
        return True
    if endpoint == "messages":
        doc["system"] = _before(text, doc.get("system"))
        return True
    return False


def _before(text: str, prompt: Any) -> Any:
    """``text`` then ``prompt`` (a string, or content parts: a text part first)."""
    if isinstance(prompt, str) and prompt:
        return text + "\n\n" + prompt
    if isinstance(prompt, list):
        return [{"type": "text", "text": text}, *prompt]
    return text
