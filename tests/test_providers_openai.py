"""The OpenAI wire helpers: the model name spliced into a body without re-encoding."""

from __future__ import annotations

import orjson
import pytest

from fastgw.providers.openai import extract_usage, rewrite_model


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
