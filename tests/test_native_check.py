"""The gateway refuses to start without its native module, saying how to build it."""

from __future__ import annotations

import importlib
import types

import pytest

from fastgw import _native_check
from fastgw.errors import NativeModuleMissing


def test_missing_native_module_gives_build_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> types.ModuleType:
        if name == "fastgw._native":
            raise ImportError("No module named 'fastgw._native'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(NativeModuleMissing) as info:
        _native_check.require()
    assert "pip install ." in str(info.value)
    assert "Rust toolchain" in str(info.value)


def test_native_module_present() -> None:
    _native_check.require()
    import fastgw._native as native

    assert native.build_profile in ("release", "debug")
