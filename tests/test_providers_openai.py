"""The OpenAI wire helpers: the model name spliced into a body without re-encoding."""

from __future__ import annotations

import orjson
import pytest

from fastgw import _native as native
from fastgw.providers.openai import ask_for_usage, extract_usage, rewrite_model


@pytest.mark.parametrize("body", [
    b'{"model":"gpt-test","messages":[]}',
    b'{"messages": [], "model": "gpt-test"}',
    b'{"model" :  "gpt-test","x":1}',  # unusual spacing: the pattern path
    b'{"model":"gpt\\u002dtest","x":1}',  # the name escaped: the document re-encoded
    b'{"messages":[{"model":"gpt-test"}],"model":"gpt-test"}',  # a nested copy stays
])
def test_only_the_top_level_model_changes(body: bytes) -> None:
    doc = orjson.loads(body)
    for _ in range(2):  # the second time from the cached encodings
        out = rewrite_model(body, doc, "gpt-test", 'dep "a"')
        got = orjson.loads(out)
        assert got["model"] == 'dep "a"'
        assert {k: v for k, v in got.items() if k != "model"} == \
            {k: v for k, v in doc.items() if k != "model"}


def test_same_name_leaves_the_body_untouched() -> None:
    body = b'{"model":"m","messages":[]}'
    assert rewrite_model(body, orjson.loads(body), "m", "m") is body


def test_usage_is_read_after_the_last_usage_key() -> None:
    body = b'{"usage":{"prompt_tokens":3,"completion_tokens":5},"x":1}'
    assert extract_usage(body) == (3, 5)
    assert extract_usage(b'{"choices":[]}') is None


@pytest.mark.parametrize("body", [
    b'{"model":"gpt-test","stream":true}',
    b'{ "model":"gpt-test","stream":true,"stream_options":{"include_usage":true}}',
    b'{"model":"gpt-test","stream":true,"stream_options":{"include_usage":false,"x":1}}',
    b'{"model":"gpt-test","stream":true,"stream_options":null}',
    b'{"model":"gpt-test","stream":true,"stream_options":{"include_usage":1}}',
    b'{"stream_options":{"include_usage":true},"model":"gpt-test","stream_options":[]}',
])
def test_usage_is_asked_for_in_the_rewritten_body(body: bytes) -> None:
    """The usage chunk asked for in the body as rewritten for the deployment (its
    model kept), from the parsed document or from what the peek read of it."""
    doc = orjson.loads(body)
    out = rewrite_model(body, doc, "gpt-test", "dep-1")
    peeked = native.peek_request(body)
    assert peeked is not None
    got = ask_for_usage(out, doc)
    assert ask_for_usage(out, None, peeked[4]) == got
    sent = orjson.loads(got[0])
    assert sent["model"] == "dep-1"
    assert sent["stream_options"]["include_usage"] is True
    opts = doc.get("stream_options")
    assert got[1] is (isinstance(opts, dict) and opts.get("include_usage") is True)
    if got[1]:
        assert got[0] is out  # asked by the client: the body as it was
