"""Per-key metric labels are opt-in and capped, so label sets stay bounded."""

from __future__ import annotations

from fastgw.metrics import Recorder


def test_key_labels_are_off_by_default() -> None:
    assert Recorder().key_label("team-a") == ""


def test_key_labels_are_capped() -> None:
    rec = Recorder(key_labels=True, max_key_labels=2)
    assert rec.key_label("a") == "a"
    assert rec.key_label("b") == "b"
    assert rec.key_label("c") == "_other"
    assert rec.key_label("a") == "a"
    assert rec.key_label(None) == ""
