//! The Python binding, `fastgw._native`: thin wrappers over the pure core.
//! Errors are converted to Python exceptions here and nowhere else; CPU-heavy
//! work (public-key signature checks) runs with the GIL released.
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

mod jwt;
mod limiter;
mod ring;
mod sse;

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
fn hash64(data: &Bound<'_, PyAny>) -> PyResult<u64> {
    Ok(crate::ring::hash64(key_bytes(data)?))
}

#[pymodule(gil_used = false)]
mod _native {
    use pyo3::prelude::*;

    #[pymodule_export]
    use super::hash64;
    #[pymodule_export]
    use super::jwt::{JwtKeySet, JwtVerifier};
    #[pymodule_export]
    use super::limiter::{Limit, LimiterTable, Reservation, Scope, SharedLimiterTable};
    #[pymodule_export]
    use super::ring::HashRing;
    #[pymodule_export]
    use super::sse::SseScanner;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add(
            "build_profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        )?;
        super::jwt::add_exceptions(m)?;
        Ok(())
    }
}
