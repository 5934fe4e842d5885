"""Which adapter serves a provider kind, and how a client's endpoint reaches it.

:func:`plan` answers, for a client endpoint and a provider kind: the provider's
endpoint to call and the :class:`~fastgw.providers.base.Translation` between
them (None: same dialect, bytes pass through), or None when the provider
cannot serve that endpoint at all (an Anthropic deployment has no
embeddings). The snapshot asks once per (target, endpoint).
"""

from __future__ import annotations

from collections.abc import Callable

from fastgw._native import ChatFromMessagesStream
from fastgw.config import ProviderConfig
from fastgw.providers import anthropic, anthropic_openai, openai, openai_anthropic
from fastgw.providers.base import ANTHROPIC, OPENAI, Translation

__all__ = ["ANTHROPIC", "CLIENT_DIALECT", "DIALECT", "OPENAI", "plan", "request_prefix"]

PrefixFn = Callable[[ProviderConfig, bytes, bytes, str, str, bytes], bytes | None]

# Provider kind -> its dialect and how its requests begin.
DIALECT: dict[str, str] = {
    "openai": OPENAI,
    "azure": OPENAI,
    "openai-compatible": OPENAI,
    "anthropic": ANTHROPIC,
}
_PREFIX: dict[str, PrefixFn] = {
    OPENAI: openai.request_prefix,
    ANTHROPIC: anthropic.request_prefix,
}

# The client endpoints of each dialect.
CLIENT_DIALECT: dict[str, str] = {
    "chat": OPENAI,
    "completions": OPENAI,
    "embeddings": OPENAI,
    "responses": OPENAI,
    "messages": ANTHROPIC,
}

# OpenAI chat clients on Anthropic Messages deployments, and the reverse. The first
# stream translator is the native one (openai_anthropic.ChatFromMessagesStream is its
# pure-Python reference: the same bytes).
CHAT_ON_MESSAGES = Translation(
    "openai->anthropic", openai_anthropic.translate_request,
    openai_anthropic.translate_response, ChatFromMessagesStream,
    openai_anthropic.translate_error)
MESSAGES_ON_CHAT = Translation(
    "anthropic->openai", anthropic_openai.translate_request,
    anthropic_openai.translate_response, anthropic_openai.MessagesFromChatStream,
    anthropic_openai.translate_error)

# (client endpoint, provider dialect) -> (provider endpoint, translation).
_PLANS: dict[tuple[str, str], tuple[str, Translation | None]] = {
    ("chat", OPENAI): ("chat", None),
    ("completions", OPENAI): ("completions", None),
    ("embeddings", OPENAI): ("embeddings", None),
    ("responses", OPENAI): ("responses", None),
    ("messages", ANTHROPIC): ("messages", None),
    ("chat", ANTHROPIC): ("messages", CHAT_ON_MESSAGES),
    ("messages", OPENAI): ("chat", MESSAGES_ON_CHAT),
}


def plan(endpoint: str, kind: str) -> tuple[str, Translation | None] | None:
    """How a client's ``endpoint`` request reaches a provider of ``kind``; None when
    it cannot."""
    return _PLANS.get((endpoint, DIALECT[kind]))


def request_prefix(provider: ProviderConfig, host_header: bytes, path_prefix: bytes,
                   endpoint: str, deployment: str, method: bytes = b"POST") -> bytes | None:
    """The constant start of a request to the provider's own ``endpoint``."""
    return _PREFIX[DIALECT[provider.kind]](provider, host_header, path_prefix, endpoint,
                                           deployment, method)
