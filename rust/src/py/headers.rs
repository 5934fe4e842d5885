//! `Headers`: the header list of a message the native parser read whole, kept as
//! positions in the message's bytes. Python sees a sequence of `(name, value)`
//! pairs (lowercase names), made only when asked; native consumers (the
//! answer's header pass) read the bytes directly, so the usual request and
//! answer never build the pairs at all.
use pyo3::exceptions::{PyIndexError, PyTypeError};
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyBytes, PyList, PySlice, PyTuple};

use crate::http as core;

/// A message up to this much longer than twice its headers is kept whole.
const KEPT_WHOLE: usize = 2048;

/// Where one header's name and value are in the message.
#[derive(Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// A message's headers, in order, read from its bytes on demand.
#[pyclass(module = "fastgw._native", frozen, sequence)]
pub(crate) struct Headers {
    raw: Py<PyBytes>,
    spans: Vec<Span>,
}

/// Where `part` (a slice of `whole`) starts in it.
fn offset(whole: &[u8], part: &[u8]) -> (usize, usize) {
    (part.as_ptr() as usize - whole.as_ptr() as usize, part.len())
}

impl Headers {
    /// The headers of a message in `raw` (each a slice of its bytes). The list
    /// keeps the message's bytes while they are mostly head; a message whose body
    /// outweighs its head gives the list a copy of the head only (a pooled
    /// connection keeps its last answer's headers: never a large body with them).
    pub(crate) fn new(raw: &Bound<'_, PyBytes>, headers: &[core::Header<'_>]) -> Self {
        let whole = raw.as_bytes();
        let spans: Vec<Span> = headers
            .iter()
            .map(|&(name, value)| Span {
                name: offset(whole, name),
                value: offset(whole, value),
            })
            .collect();
        let head = spans.last().map_or(0, |s| s.value.0 + s.value.1);
        let raw = if whole.len() > 2 * head + KEPT_WHOLE {
            PyBytes::new(raw.py(), &whole[..head]).unbind()
        } else {
            raw.clone().unbind()
        };
        Self { raw, spans }
    }

    /// Each header's name (as sent: not lowercased) and value, over the bytes
    /// `whole` of [`Self::raw`].
    pub(crate) fn pairs<'a>(&'a self, whole: &'a [u8]) -> impl Iterator<Item = core::Header<'a>> {
        self.spans.iter().map(move |s| {
            (
                &whole[s.name.0..s.name.0 + s.name.1],
                &whole[s.value.0..s.value.0 + s.value.1],
            )
        })
    }

    /// The bytes the spans point into: the message's, or a copy of its head.
    pub(crate) fn raw<'py>(&self, py: Python<'py>) -> &Bound<'py, PyBytes> {
        self.raw.bind(py)
    }

    fn pair<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyTuple>> {
        let whole = self.raw.bind(py).as_bytes();
        let s = self.spans[i];
        let name = &whole[s.name.0..s.name.0 + s.name.1];
        let name = if name.iter().any(u8::is_ascii_uppercase) {
            super::http::header_name(py, &name.to_ascii_lowercase())
        } else {
            super::http::header_name(py, name)
        };
        let value = PyBytes::new(py, &whole[s.value.0..s.value.0 + s.value.1]);
        PyTuple::new(py, [name.into_any(), value.into_any()])
    }

    fn index(&self, i: isize) -> PyResult<usize> {
        let n = self.spans.len();
        let j = if i < 0 {
            i.checked_add_unsigned(n)
        } else {
            Some(i)
        };
        j.and_then(|j| usize::try_from(j).ok())
            .filter(|&j| j < n)
            .ok_or_else(|| PyIndexError::new_err("header index out of range"))
    }
}

#[pymethods]
impl Headers {
    fn __len__(&self) -> usize {
        self.spans.len()
    }

    /// The pair at an index, or a list of the pairs of a slice.
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(slice) = key.cast::<PySlice>() {
            let ix = slice.indices(isize::try_from(self.spans.len()).unwrap_or(isize::MAX))?;
            let list = PyList::empty(py);
            let mut i = ix.start;
            for _ in 0..ix.slicelength {
                list.append(self.pair(py, self.index(i)?)?)?;
                i += ix.step;
            }
            return Ok(list.into_any());
        }
        let Ok(i) = key.extract::<isize>() else {
            return Err(PyTypeError::new_err(
                "header indices must be integers or slices",
            ));
        };
        Ok(self.pair(py, self.index(i)?)?.into_any())
    }

    fn __iter__(slf: Bound<'_, Self>) -> HeadersIter {
        HeadersIter {
            headers: slf.unbind(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Equal to any sequence of the same `(name, value)` pairs (a list above all).
    fn __richcmp__(
        &self,
        py: Python<'_>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let same = || -> PyResult<bool> {
            let Ok(n) = other.len() else {
                return Ok(false);
            };
            if n != self.spans.len() {
                return Ok(false);
            }
            for (i, item) in other.try_iter()?.enumerate() {
                if !self.pair(py, i)?.as_any().eq(item?)? {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        Ok(match op {
            CompareOp::Eq => same()?.into_pyobject(py)?.to_owned().into_any().unbind(),
            CompareOp::Ne => (!same()?).into_pyobject(py)?.to_owned().into_any().unbind(),
            _ => py.NotImplemented(),
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let pairs: Vec<String> = (0..self.spans.len())
            .map(|i| Ok(self.pair(py, i)?.repr()?.to_string()))
            .collect::<PyResult<_>>()?;
        Ok(format!("Headers([{}])", pairs.join(", ")))
    }
}

/// Iterates a `Headers`' pairs.
#[pyclass(module = "fastgw._native", frozen)]
pub(crate) struct HeadersIter {
    headers: Py<Headers>,
    next: std::sync::atomic::AtomicUsize,
}

#[pymethods]
impl HeadersIter {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        use std::sync::atomic::Ordering::Relaxed;
        let headers = self.headers.get();
        let i = self.next.load(Relaxed);
        if i >= headers.spans.len() {
            return Ok(None);
        }
        self.next.store(i + 1, Relaxed);
        headers.pair(py, i).map(Some)
    }
}
