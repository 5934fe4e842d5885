"""API keys by their SHA-256: the native index and its reference find the same
principal (or none) for every presented key."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import keys as ref

_key = st.binary(max_size=80)


@settings(max_examples=300, deadline=None)
@given(configured=st.lists(_key, max_size=12), others=st.lists(_key, max_size=12))
def test_native_and_reference_find_the_same_entry(configured: list[bytes],
                                                  others: list[bytes]) -> None:
    entries = [(hashlib.sha256(k).digest(), f"p{i}") for i, k in enumerate(configured)]
    idx, reference = native.KeyIndex(entries), ref.KeyIndex(entries)
    assert len(idx) == len(reference) == len(set(configured))
    for presented in configured + others:
        got = idx.lookup(presented)
        assert got == reference.lookup(presented)
        if presented in configured:  # the last entry of a repeated key wins, in both
            last = max(i for i, k in enumerate(configured) if k == presented)
            assert got == f"p{last}"
        else:
            assert got is None


def test_the_object_found_is_the_one_given() -> None:
    principal = object()
    idx = native.KeyIndex([(hashlib.sha256(b"sk-live").digest(), principal)])
    assert idx.lookup(b"sk-live") is principal
    assert idx.lookup(b"sk-live ") is None
    assert idx.lookup(hashlib.sha256(b"sk-live").digest()) is None  # the hash is no key


@pytest.mark.parametrize("cls", [native.KeyIndex, ref.KeyIndex], ids=["native", "reference"])
def test_a_digest_of_the_wrong_length_is_refused(cls: type[native.KeyIndex]) -> None:
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        cls([(b"\0" * 31, "p")])
