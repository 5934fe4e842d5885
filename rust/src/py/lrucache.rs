//! `MemoryCache`: the response cache's in-process store (see `crate::lrucache`).
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::cachekey;
use crate::lrucache::Store;
use crate::py::cachekey::DETACH_AT;

/// Cache entries by key in an LRU bounded by entry count and by bytes, with a
/// TTL per entry; the reference is `fastgw/_reference/memcache.py`. An entry is
/// any object with `created` (unix seconds) and `body` (bytes); it costs its
/// body's and its key's lengths plus `overhead` bytes.
#[pyclass(module = "fastgw._native")]
pub(crate) struct MemoryCache {
    store: Store<Py<PyAny>>,
    overhead: usize,
}

#[pymethods]
impl MemoryCache {
    #[new]
    #[pyo3(signature = (max_entries, max_bytes, overhead = 0))]
    fn new(max_entries: i64, max_bytes: i64, overhead: usize) -> PyResult<Self> {
        let bound = |n: i64| usize::try_from(n).unwrap_or(0);
        Store::new(bound(max_entries), bound(max_bytes))
            .map(|store| Self { store, overhead })
            .ok_or_else(|| {
                PyValueError::new_err("a memory cache needs max_entries >= 1 and max_bytes >= 1")
            })
    }

    /// The entry under `key` unless it has expired, or is `max_age` seconds old or
    /// older; a hit becomes the most recently used.
    #[pyo3(signature = (key, now, max_age = None))]
    fn get(
        &mut self,
        py: Python<'_>,
        key: &[u8],
        now: f64,
        max_age: Option<f64>,
    ) -> Option<Py<PyAny>> {
        self.store.get(key, now, max_age).map(|v| v.clone_ref(py))
    }

    /// The cache key of `body` asked by `scope` on `endpoint` for `model`
    /// (`cache_key` of their UTF-8) and the entry it holds (as `get`), in one
    /// call: `(key, entry or None)`. `now` None reads the clock (unix seconds,
    /// as Python's `time.time()`). `ValueError` when `body` is not a JSON object.
    #[pyo3(signature = (body, scope, endpoint, model, now = None, max_age = None))]
    #[allow(clippy::too_many_arguments)]
    fn lookup<'py>(
        &mut self,
        py: Python<'py>,
        body: &[u8],
        scope: &str,
        endpoint: &str,
        model: &str,
        now: Option<f64>,
        max_age: Option<f64>,
    ) -> PyResult<(Bound<'py, PyBytes>, Option<Py<PyAny>>)> {
        let (s, e, m) = (scope.as_bytes(), endpoint.as_bytes(), model.as_bytes());
        let key = if body.len() >= DETACH_AT {
            py.detach(|| cachekey::cache_key(body, s, e, m))
        } else {
            cachekey::cache_key(body, s, e, m)
        }
        .map_err(|err| PyValueError::new_err(err.to_string()))?;
        let now = now.unwrap_or_else(unix_now);
        let entry = self.store.get(&key, now, max_age).map(|v| v.clone_ref(py));
        Ok((PyBytes::new(py, &key), entry))
    }

    /// Store `entry` for `ttl_s` seconds from `now`; false (nothing stored, the old
    /// entry gone too) when `ttl_s` is not positive or the entry is over `max_bytes`.
    fn put(
        &mut self,
        key: &[u8],
        entry: &Bound<'_, PyAny>,
        ttl_s: f64,
        now: f64,
    ) -> PyResult<bool> {
        let py = entry.py();
        let created: f64 = entry.getattr(intern!(py, "created"))?.extract()?;
        let body = entry.getattr(intern!(py, "body"))?;
        let size = body.cast::<PyBytes>()?.as_bytes().len();
        let cost = size + self.overhead + key.len();
        Ok(self
            .store
            .put(key, entry.clone().unbind(), created, cost, ttl_s, now))
    }

    /// Forget `key`; false when it was not there.
    fn delete(&mut self, key: &[u8]) -> bool {
        self.store.delete(key)
    }

    fn clear(&mut self) {
        self.store.clear();
    }

    /// Bytes held: every entry's cost.
    #[getter]
    fn bytes(&self) -> usize {
        self.store.bytes()
    }

    /// Entries pushed out by a bound (not by their TTL).
    #[getter]
    fn evictions(&self) -> u64 {
        self.store.evictions
    }

    #[getter]
    fn max_entries(&self) -> usize {
        self.store.max_entries
    }

    #[getter]
    fn max_bytes(&self) -> usize {
        self.store.max_bytes
    }

    /// The keys from least to most recently used.
    fn keys<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.store
            .keys()
            .into_iter()
            .map(|k| PyBytes::new(py, k))
            .collect()
    }

    fn __len__(&self) -> usize {
        self.store.len()
    }

    /// Whether `key` is held, expired or not (no LRU change).
    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        key.cast::<PyBytes>()
            .is_ok_and(|k| self.store.contains(k.as_bytes()))
    }
}

/// Unix seconds now (the clock of Python's `time.time()`).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
