"""Tool calls of the mock upstream: which tools an answer calls, with what arguments.

Pure functions, no I/O. A chat or Messages request calls tools when its
``tool_choice`` asks for a call (OpenAI ``"required"`` or a named function;
Anthropic ``{"type": "any"}`` or ``{"type": "tool", "name": ...}``) or when the
``x-mock-tool`` header names them. The arguments are a small deterministic
object built from the tool's JSON schema, so a test can predict them exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = ["ToolCall", "arguments_for", "call_id", "pick", "split_arguments"]

# The route names of bodies.CHAT and bodies.MESSAGES (bodies imports this module).
_CHAT: Final = "chat"
_MESSAGES: Final = "messages"

FIRST: Final = "1"  # x-mock-tool: 1 calls the first tool of the request
_PIECE_MAX: Final = 8  # characters of arguments per streamed delta, at most
_UNSAFE_ID_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool in an answer."""

    name: str
    arguments: str  # compact JSON text of the arguments object


def _value(prop: object) -> Any:
    """A value of a property's schema: an enum's first value, or one by type."""
    if not isinstance(prop, dict):
        return None
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = prop.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first type that is not null
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return "mock"
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return None


def arguments_for(schema: object) -> dict[str, Any]:
    """One value per property of an object schema, in the schema's order."""
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    return {str(name): _value(prop) for name, prop in props.items()}


def _declared(route: str, tools: object) -> list[tuple[str, object]]:
    """(name, schema) of each tool the request declares, in order."""
    out: list[tuple[str, object]] = []
    if not isinstance(tools, list):
        return out
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        if route == _CHAT:
            fn = tool.get("function")
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                out.append((fn["name"], fn.get("parameters")))
        elif isinstance(tool.get("name"), str):
            out.append((tool["name"], tool.get("input_schema")))
    return out


def _chosen(route: str, choice: object, declared: list[tuple[str, object]]) -> str | None:
    """The tool ``tool_choice`` makes the answer call, if it asks for a call."""
    if route == _CHAT:
        if choice == "required":
            return declared[0][0] if declared else None
        if isinstance(choice, dict) and choice.get("type") == "function":
            fn = choice.get("function")
            name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
            return name if isinstance(name, str) else None
        return None
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "any":
            return declared[0][0] if declared else None
        if kind == "tool" and isinstance(choice.get("name"), str):
            return str(choice["name"])
    return None


def pick(
    route: str, tools: object, choice: object, requested: Sequence[str] | None
) -> tuple[ToolCall, ...]:
    """The calls an answer on ``route`` (chat or messages) makes; () = a text answer.

    ``requested`` (the ``x-mock-tool`` names) wins over ``tool_choice``; its
    ``"1"`` is the first declared tool unless a tool has that name. A name the
    request does not declare is called with ``{}``.
    """
    declared = _declared(route, tools)
    if requested is None:
        name = _chosen(route, choice, declared)
        names = [] if name is None else [name]
    else:
        known = {n for n, _ in declared}
        names = []
        for item in requested:
            if item == FIRST and item not in known:
                if not declared:
                    continue  # no first tool: nothing to call
                item = declared[0][0]
            names.append(item)
    schemas = dict(reversed(declared))  # the first tool of a repeated name wins
    return tuple(
        ToolCall(name, orjson.dumps(arguments_for(schemas.get(name))).decode()) for name in names
    )


def call_id(prefix: str, index: int, name: str) -> str:
    """A deterministic call id (``call_mock_0_get_weather``, ``toolu_mock_1_f``)."""
    return f"{prefix}mock_{index}_{_UNSAFE_ID_CHARS.sub('_', name)[:40]}"


def split_arguments(arguments: str) -> list[str]:
    """The pieces a stream sends the arguments in: at least two (when there are
    two characters), at most 8 characters each; joined they are the arguments."""
    size = max(1, min(_PIECE_MAX, (len(arguments) + 1) // 2))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
