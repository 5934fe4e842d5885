//! `cache_key`: the response cache's key (see `crate::cachekey`).
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::cachekey as core;

/// Bodies at least this long are read with the GIL released: 3.5 us of
/// work or more (one long string; more with many small values), where
/// giving the GIL up and taking it back costs about 40 ns, ~1% (measured).
/// A typical chat request (a few hundred bytes, about 0.5 us) keeps it.
pub(crate) const DETACH_AT: usize = 16 * 1024;

/// The 16-byte cache key of `body` (a JSON object) asked by `scope` on
/// `endpoint` for `model`: see `fastgw/_reference/cachekey.py` for the
/// reference. `ValueError` when `body` is not a JSON object.
#[pyfunction]
#[pyo3(signature = (body, scope, endpoint, model, /))]
pub(crate) fn cache_key<'py>(
    py: Python<'py>,
    body: &[u8],
    scope: &[u8],
    endpoint: &[u8],
    model: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let key = if body.len() >= DETACH_AT {
        py.detach(|| core::cache_key(body, scope, endpoint, model))
    } else {
        core::cache_key(body, scope, endpoint, model)
    };
    match key {
        Ok(key) => Ok(PyBytes::new(py, &key)),
        Err(e) => Err(PyValueError::new_err(e.to_string())),
    }
}
