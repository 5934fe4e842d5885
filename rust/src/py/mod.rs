//! The Python binding: thin wrappers over the pure core, exported by the
//! `#[pymodule]` in `lib.rs`.
//! Errors are converted to Python exceptions here and nowhere else; CPU-heavy
//! work (public-key signature checks) runs with the GIL released.
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

pub(crate) mod accesslog;
pub(crate) mod cachekey;
pub(crate) mod guard;
pub(crate) mod headers;
pub(crate) mod http;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod limiter;
pub(crate) mod logwriter;
pub(crate) mod lrucache;
pub(crate) mod otlp;
pub(crate) mod ring;
pub(crate) mod sse;
pub(crate) mod tally;
pub(crate) mod translate;

/// The UTF-8 of a `str`, or the contents of a `bytes`.
fn key_bytes<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    Err(PyTypeError::new_err(format!(
        "expected str or bytes, got {}",
        obj.get_type().name()?
    )))
}

/// `now`, or the wall clock in seconds since the epoch.
fn now_or_clock(now: Option<f64>) -> f64 {
    now.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

/// XXH3-64 (seed 0) of a `str` (its UTF-8) or `bytes`: the hash ring's hash.
#[pyfunction]
#[pyo3(signature = (data, /))]
pub(crate) fn hash64(data: &Bound<'_, PyAny>) -> PyResult<u64> {
    Ok(crate::ring::hash64(key_bytes(data)?))
}
