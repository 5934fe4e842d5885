"""Start-up check that the Rust extension is importable, with a message that says what to do."""

from __future__ import annotations

import importlib

from fastgw.errors import NativeModuleMissing


def require() -> None:
    try:
        importlib.import_module("fastgw._native")
    except ImportError as exc:
        raise NativeModuleMissing(
            "fastgw's native extension (fastgw._native) is missing or broken: "
            f"{exc}. Build it with `pip install .` (or `pip install -e .`) from the fastgw "
            "source tree; that needs a Rust toolchain (https://rustup.rs).") from exc
