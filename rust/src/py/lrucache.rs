//! `MemoryCache`: the response cache's in-process store (see `crate::lrucache`).
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::cachekey;
use crate::lrucache::Store;
use crate::py::cachekey::DETACH_AT;

/// Cache entries by key in an LRU bounded by entry count and by bytes, with a
/// TTL per entry; the reference is `fastgw/_reference/memcache.py`. An entry is
/// any object with `created` (unix seconds) and `body` (bytes); it costs its
/// body's and its key's lengths plus `overhead` bytes. `store` keeps an
/// answer's parts and makes its entry with `factory(created, body,
/// prompt_tokens, completion_tokens)` when it is first read.
#[pyclass(module = "fastgw._native")]
pub(crate) struct MemoryCache {
    store: Store<Held>,
    overhead: usize,
    factory: Option<Py<PyAny>>,
}

/// `lookup`'s answer: the key (None when refused) and the entry.
type Looked<'py> = (Option<Bound<'py, PyBytes>>, Option<Py<PyAny>>);

/// What a key holds: an entry, or the parts `store` was given (most stored
/// answers are never read, so their entry is made on the first read).
enum Held {
    Entry(Py<PyAny>),
    Parts {
        created: f64,
        body: Py<PyBytes>,
        prompt: Py<PyAny>,
        completion: Py<PyAny>,
    },
}

impl Held {
    /// The entry, made (once) from the parts when it is not yet.
    fn entry(&mut self, py: Python<'_>, factory: Option<&Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let made = match self {
            Held::Entry(entry) => return Ok(entry.clone_ref(py)),
            Held::Parts {
                created,
                body,
                prompt,
                completion,
            } => {
                let factory = factory.ok_or_else(|| {
                    PyTypeError::new_err("a MemoryCache without a factory holds no parts")
                })?;
                factory.call1(
                    py,
                    (
                        *created,
                        body.clone_ref(py),
                        prompt.clone_ref(py),
                        completion.clone_ref(py),
                    ),
                )?
            }
        };
        *self = Held::Entry(made.clone_ref(py));
        Ok(made)
    }
}

#[pymethods]
impl MemoryCache {
    #[new]
    #[pyo3(signature = (max_entries, max_bytes, overhead = 0, factory = None))]
    fn new(
        max_entries: i64,
        max_bytes: i64,
        overhead: usize,
        factory: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let bound = |n: i64| usize::try_from(n).unwrap_or(0);
        Store::new(bound(max_entries), bound(max_bytes))
            .map(|store| Self {
                store,
                overhead,
                factory,
            })
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
    ) -> PyResult<Option<Py<PyAny>>> {
        match self.store.get(key, now, max_age) {
            Some(held) => held.entry(py, self.factory.as_ref()).map(Some),
            None => Ok(None),
        }
    }

    /// The cache key of `body` asked by `scope` on `endpoint` for `model`
    /// (`cache_key` of their UTF-8) and the entry it holds (as `get`), in one
    /// call: `(key, entry or None)`. `now` None reads the clock (unix seconds,
    /// as Python's `time.time()`). With `deterministic`, a body whose
    /// top-level `temperature` is not a number equal to zero gives `(None,
    /// None)` (nothing looked up). `ValueError` when `body` is not a JSON object.
    #[pyo3(signature = (body, scope, endpoint, model, now = None, max_age = None,
                        deterministic = false))]
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
        deterministic: bool,
    ) -> PyResult<Looked<'py>> {
        let (s, e, m) = (scope.as_bytes(), endpoint.as_bytes(), model.as_bytes());
        let (key, zero) = if body.len() >= DETACH_AT {
            py.detach(|| cachekey::keyed(body, s, e, m))
        } else {
            cachekey::keyed(body, s, e, m)
        }
        .map_err(|err| PyValueError::new_err(err.to_string()))?;
        if deterministic && !zero {
            return Ok((None, None));
        }
        let entry = self.get(py, &key, now.unwrap_or_else(unix_now), max_age)?;
        Ok((Some(PyBytes::new(py, &key)), entry))
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
        Ok(self.store.put(
            key,
            Held::Entry(entry.clone().unbind()),
            created,
            cost,
            ttl_s,
            now,
        ))
    }

    /// Store the answer `body` with its token counts, made `now` (None: the
    /// clock), for `ttl_s` seconds, as `put` stores the entry `factory(now, body,
    /// prompt_tokens, completion_tokens)`, which it makes when first read.
    /// False (nothing stored, what `key` held kept) when `body` does not look
    /// like one whole JSON object (`{`...`}`, whitespace aside): a cut answer
    /// is never stored. `TypeError` when the cache has no factory.
    #[pyo3(signature = (key, body, prompt_tokens, completion_tokens, ttl_s, now = None))]
    fn store(
        &mut self,
        key: &[u8],
        body: Bound<'_, PyBytes>,
        prompt_tokens: Bound<'_, PyAny>,
        completion_tokens: Bound<'_, PyAny>,
        ttl_s: f64,
        now: Option<f64>,
    ) -> PyResult<bool> {
        if self.factory.is_none() {
            return Err(PyTypeError::new_err(
                "MemoryCache.store needs the entry factory given to MemoryCache()",
            ));
        }
        if !whole_object(body.as_bytes()) {
            return Ok(false);
        }
        let now = now.unwrap_or_else(unix_now);
        let cost = body.as_bytes().len() + self.overhead + key.len();
        let parts = Held::Parts {
            created: now,
            body: body.unbind(),
            prompt: prompt_tokens.unbind(),
            completion: completion_tokens.unbind(),
        };
        Ok(self.store.put(key, parts, now, cost, ttl_s, now))
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

/// Whether an answer looks like one whole JSON object: it begins with `{`
/// and ends with `}`, ASCII whitespace aside (Python's `bytes.strip()`'s).
/// A cut answer (the usual way one breaks) fails this at no cost.
fn whole_object(body: &[u8]) -> bool {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c');
    body.iter().find(|b| !space(b)) == Some(&b'{')
        && body.iter().rev().find(|b| !space(b)) == Some(&b'}')
}

/// Unix seconds now (the clock of Python's `time.time()`).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
