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


@settings(max_examples=300, deadline=None)
@given(configured=st.lists(_key, min_size=1, max_size=6), others=st.lists(_key, max_size=6),
       data=st.data())
def test_keys_found_again_from_memory_are_the_same(configured: list[bytes], others: list[bytes],
                                                   data: st.DataObject) -> None:
    """Keys found once are remembered (at most one per configured digest): every
    later lookup, of them, of their prefixes and extensions, of other keys, finds
    what the first did, in both."""
    entries = [(hashlib.sha256(k).digest(), f"p{i}") for i, k in enumerate(configured)]
    idx, reference = native.KeyIndex(entries), ref.KeyIndex(entries)
    near = [k[:-1] for k in configured if k] + [k + b"x" for k in configured]
    pool = configured + others + near
    seq = data.draw(st.lists(st.sampled_from(pool), max_size=40))
    for presented in seq + seq:
        assert idx.lookup(presented) == reference.lookup(presented)
    found = {k for k in seq if reference.lookup(k) is not None}
    assert idx.remembered() == reference.remembered() == len(found) <= len(idx)


def test_the_object_found_is_the_one_given() -> None:
    principal = object()
    idx = native.KeyIndex([(hashlib.sha256(b"sk-live").digest(), principal)])
    assert idx.lookup(b"sk-live") is principal
    assert idx.lookup(b"sk-live") is principal  # (remembered)
    assert idx.remembered() == 1
    assert idx.lookup(b"sk-live ") is None
    assert idx.lookup(b"sk-liv") is None
    assert idx.lookup(hashlib.sha256(b"sk-live").digest()) is None  # the hash is no key


@pytest.mark.parametrize("cls", [native.KeyIndex, ref.KeyIndex], ids=["native", "reference"])
def test_a_digest_of_the_wrong_length_is_refused(cls: type[native.KeyIndex]) -> None:
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        cls([(b"\0" * 31, "p")])
