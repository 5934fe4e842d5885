//! `fastgw._native`: the gateway's hot paths.
//!
//! The pure core modules below have no `PyO3` in them and are tested with
//! `cargo test -p fastgw-native --no-default-features`. The bindings in
//! [`py`] (the `#[pymodule]`, classes, error mapping) are built only with the
//! `python` feature, which maturin enables.
#![deny(missing_docs)]

pub mod jwt;
pub mod limiter;
pub mod ring;
pub mod shm;
pub mod sse;

#[cfg(feature = "python")]
mod py;
