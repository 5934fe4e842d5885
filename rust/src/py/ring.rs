//! `HashRing`.
use pyo3::exceptions::{PyLookupError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyMapping, PyString, PyTuple};

use smallvec::SmallVec;

use super::key_bytes;
use super::limiter::floats;
use crate::ring::{Indices, Ring, RingError};

fn value_error(e: RingError) -> PyErr {
    PyValueError::new_err(e.0)
}

/// An immutable weighted consistent-hash ring of named targets.
#[pyclass(frozen, module = "fastgw._native")]
pub struct HashRing {
    inner: Ring,
    names: Vec<Py<PyString>>,
    replicas: u32,
}

impl HashRing {
    fn build(py: Python<'_>, targets: &[(String, f64)], replicas: u32) -> PyResult<HashRing> {
        let pairs: Vec<(&[u8], f64)> = targets.iter().map(|(n, w)| (n.as_bytes(), *w)).collect();
        let inner = Ring::new(&pairs, replicas).map_err(value_error)?;
        let names = targets
            .iter()
            .map(|(n, _)| PyString::new(py, n).unbind())
            .collect();
        Ok(HashRing {
            inner,
            names,
            replicas,
        })
    }

    fn pairs(&self) -> Vec<(String, f64)> {
        self.inner
            .names()
            .iter()
            .zip(self.inner.weights())
            .map(|(n, &w)| (String::from_utf8_lossy(n).into_owned(), w))
            .collect()
    }

    fn index(
        &self,
        key: &Bound<'_, PyAny>,
        loads: Option<&Bound<'_, PyAny>>,
        c: f64,
    ) -> PyResult<usize> {
        let key = key_bytes(key)?;
        let found = match loads {
            None => self.inner.lookup(key),
            Some(l) => self
                .inner
                .lookup_bounded(key, &floats(l)?, c)
                .map_err(value_error)?,
        };
        found.ok_or_else(|| PyLookupError::new_err("the ring has no target with a positive weight"))
    }
}

#[pymethods]
impl HashRing {
    /// `targets`: a mapping or a sequence of `(name, weight)` pairs.
    #[new]
    #[pyo3(signature = (targets, *, replicas = 160))]
    fn new(py: Python<'_>, targets: &Bound<'_, PyAny>, replicas: u32) -> PyResult<HashRing> {
        let pairs: Vec<(String, f64)> = if let Ok(m) = targets.cast::<PyMapping>() {
            m.items()?
                .iter()
                .map(|kv| kv.extract::<(String, f64)>())
                .collect::<PyResult<_>>()?
        } else if targets.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "targets must be a mapping or (name, weight) pairs",
            ));
        } else {
            targets
                .try_iter()?
                .map(|o| o?.extract::<(String, f64)>())
                .collect::<PyResult<_>>()?
        };
        HashRing::build(py, &pairs, replicas)
    }

    /// The target for `key`; with `loads` (in-flight per target, in
    /// `targets` order) the first one not above `c` times its fair share.
    #[pyo3(signature = (key, loads = None, c = 1.25))]
    fn lookup(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        loads: Option<&Bound<'_, PyAny>>,
        c: f64,
    ) -> PyResult<Py<PyString>> {
        Ok(self.names[self.index(key, loads, c)?].clone_ref(py))
    }

    /// As `lookup`, giving the target's index in `targets`.
    #[pyo3(signature = (key, loads = None, c = 1.25))]
    fn lookup_index(
        &self,
        key: &Bound<'_, PyAny>,
        loads: Option<&Bound<'_, PyAny>>,
        c: f64,
    ) -> PyResult<usize> {
        self.index(key, loads, c)
    }

    /// Up to `n` (default all) distinct targets in fallback order for `key`.
    #[pyo3(signature = (key, n = None, loads = None, c = 1.25))]
    fn candidates<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        n: Option<usize>,
        loads: Option<&Bound<'_, PyAny>>,
        c: f64,
    ) -> PyResult<Bound<'py, PyList>> {
        let key = key_bytes(key)?;
        let loads = loads.map(floats).transpose()?;
        let mut out = Indices::new();
        self.inner
            .candidates(
                key,
                n.unwrap_or(usize::MAX),
                loads.as_deref().map(|l| (l, c)),
                &mut out,
            )
            .map_err(value_error)?;
        PyList::new(py, out.iter().map(|&i| self.names[i].clone_ref(py)))
    }

    /// Every target's index in fallback order for `key` (`candidates` without
    /// loads), with `lookup_index(key, loads, c)` moved to the front when any of
    /// `loads` is not zero, where `loads` are the `inflight` numbers of `states`
    /// (one object per target, in `targets` order): a bounded-load balancer's
    /// order in one call.
    #[pyo3(signature = (key, states, c = 1.25))]
    fn order<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        states: &Bound<'_, PyAny>,
        c: f64,
    ) -> PyResult<Bound<'py, PyList>> {
        let key = key_bytes(key)?;
        let mut out = Indices::new();
        self.inner
            .candidates(key, usize::MAX, None, &mut out)
            .map_err(value_error)?;
        let inflight = pyo3::intern!(py, "inflight");
        let mut loads: SmallVec<[f64; 16]> = SmallVec::with_capacity(self.names.len());
        for state in states.try_iter()? {
            let load = state?.getattr(inflight)?;
            // (an int counter as a rule: read as one, without float()'s slow path)
            #[allow(clippy::cast_precision_loss)] // exact below 2^53; a load, not an id
            let load = match load.cast::<pyo3::types::PyInt>() {
                Ok(n) => n
                    .extract::<i64>()
                    .map_or_else(|_| load.extract::<f64>(), |n| Ok(n as f64))?,
                Err(_) => load.extract::<f64>()?,
            };
            loads.push(load);
        }
        if loads.iter().any(|&l| l != 0.0) {
            let first = self
                .inner
                .lookup_bounded(key, &loads, c)
                .map_err(value_error)?;
            if let Some(pos) = first.and_then(|f| out.iter().position(|&i| i == f)) {
                let f = out.remove(pos);
                out.insert(0, f);
            }
        }
        PyList::new(py, out)
    }

    /// A new ring with `name` added (or its weight changed).
    fn with_target(&self, py: Python<'_>, name: String, weight: f64) -> PyResult<HashRing> {
        let mut pairs = self.pairs();
        match pairs.iter_mut().find(|(n, _)| *n == name) {
            Some(p) => p.1 = weight,
            None => pairs.push((name, weight)),
        }
        HashRing::build(py, &pairs, self.replicas)
    }

    /// A new ring without `name`.
    fn without_target(&self, py: Python<'_>, name: &str) -> PyResult<HashRing> {
        let pairs: Vec<(String, f64)> = self
            .pairs()
            .into_iter()
            .filter(|(n, _)| n != name)
            .collect();
        HashRing::build(py, &pairs, self.replicas)
    }

    /// Target names, in construction order (the order of `loads`).
    #[getter]
    fn targets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.names.iter().map(|n| n.clone_ref(py)))
    }

    /// Target weights, in construction order.
    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.weights())
    }

    /// Points per unit of weight.
    #[getter]
    fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Points on the ring.
    #[getter]
    fn points(&self) -> usize {
        self.inner.points()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<HashRing targets={} points={}>",
            self.inner.len(),
            self.inner.points()
        )
    }
}
