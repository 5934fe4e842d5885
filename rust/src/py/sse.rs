//! `SseScanner`.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::sse::{self as core, Output, Scanner};

/// Scans one upstream SSE stream, chunk by chunk, for the relay loop.
#[pyclass(module = "fastgw._native")]
pub struct SseScanner {
    inner: Scanner,
}

#[pymethods]
impl SseScanner {
    /// End-of-stream marker seen in this chunk.
    #[classattr]
    const DONE: u32 = core::DONE;
    /// In-band error event seen in this chunk.
    #[classattr]
    const ERROR: u32 = core::ERROR;
    /// The stream's first content event (the commit point) is in this chunk.
    #[classattr]
    const COMMIT: u32 = core::COMMIT;
    /// A usage object was read in this chunk.
    #[classattr]
    const USAGE: u32 = core::USAGE;
    /// An event was removed from this chunk's output.
    #[classattr]
    const DROPPED: u32 = core::DROPPED;

    #[new]
    #[pyo3(signature = (*, drop_usage = false, max_event_size = core::DEFAULT_MAX_EVENT))]
    fn new(drop_usage: bool, max_event_size: usize) -> SseScanner {
        SseScanner {
            inner: Scanner::new(drop_usage, max_event_size),
        }
    }

    /// Scans `chunk`; returns `(bytes_to_forward, flags)`. The bytes are
    /// `chunk` itself unless something was held back or dropped.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        chunk: &Bound<'py, PyBytes>,
    ) -> PyResult<(Bound<'py, PyBytes>, u32)> {
        let (out, flags) = self
            .inner
            .feed(chunk.as_bytes())
            .map_err(|e| PyValueError::new_err(e.0))?;
        Ok(match out {
            Output::Unchanged => (chunk.clone(), flags),
            spliced @ Output::Spliced { .. } => {
                let data = chunk.as_bytes();
                let bytes = PyBytes::new_with(py, spliced.len(data), |buf| {
                    spliced.write_to(data, buf);
                    Ok(())
                })?;
                (bytes, flags)
            }
        })
    }

    /// Bytes still held back at the end of the stream (an event that never
    /// ended; only with `drop_usage`).
    fn finish<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.finish())
    }

    /// True once the commit point has passed.
    #[getter]
    fn committed(&self) -> bool {
        self.inner.committed()
    }

    /// True once an end-of-stream marker was seen.
    #[getter]
    fn done(&self) -> bool {
        self.inner.done()
    }

    /// True once an in-band error was seen.
    #[getter]
    fn error(&self) -> bool {
        self.inner.error()
    }

    /// Events with data so far.
    #[getter]
    fn events(&self) -> u64 {
        self.inner.events()
    }

    /// Offsets in the last chunk just past each event's blank line.
    #[getter]
    fn boundaries(&self) -> Vec<usize> {
        self.inner.boundaries().to_vec()
    }

    /// `{"prompt_tokens", "completion_tokens", "total_tokens"}` (and
    /// `"cached_tokens"`, `"cache_creation_tokens"` when reported), once usage
    /// was read; else None.
    #[getter]
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(u) = self.inner.usage() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("prompt_tokens", u.prompt_tokens)?;
        d.set_item("completion_tokens", u.completion_tokens)?;
        d.set_item("total_tokens", u.total_tokens)?;
        if let Some(c) = u.cached_tokens {
            d.set_item("cached_tokens", c)?;
        }
        if let Some(c) = u.cache_creation_tokens {
            d.set_item("cache_creation_tokens", c)?;
        }
        Ok(Some(d))
    }
}
