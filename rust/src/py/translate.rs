//! `ChatFromMessagesStream`.
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::translate::{ChatFromMessages, DEFAULT_MAX_EVENT};

/// Anthropic Messages SSE in, OpenAI chat-completion chunks out: the native
/// twin of `fastgw.providers.openai_anthropic.ChatFromMessagesStream`.
#[pyclass(module = "fastgw._native")]
pub struct ChatFromMessagesStream {
    inner: ChatFromMessages,
}

#[pymethods]
impl ChatFromMessagesStream {
    #[new]
    #[pyo3(signature = (*, include_usage, created, max_event_size = DEFAULT_MAX_EVENT))]
    fn new(include_usage: bool, created: i64, max_event_size: usize) -> ChatFromMessagesStream {
        ChatFromMessagesStream {
            inner: ChatFromMessages::new(include_usage, created, max_event_size),
        }
    }

    /// `(bytes for the client, flags)` for the next piece of the upstream
    /// body. `ValueError` when one event is larger than `max_event_size`.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        chunk: &Bound<'py, PyBytes>,
    ) -> PyResult<(Bound<'py, PyBytes>, u32)> {
        let (out, flags) = self
            .inner
            .feed(chunk.as_bytes())
            .map_err(|e| PyValueError::new_err(e.0))?;
        Ok((PyBytes::new(py, &out), flags))
    }

    /// At a clean end of the upstream body: what the client is still owed.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let out = self
            .inner
            .finish()
            .map_err(|e| PyTypeError::new_err(e.to_string()))?;
        Ok(PyBytes::new(py, &out))
    }

    /// True once the commit point has passed.
    #[getter]
    fn committed(&self) -> bool {
        self.inner.committed()
    }

    /// True once the upstream's end marker was seen (or `finish` ended the
    /// stream).
    #[getter]
    fn done(&self) -> bool {
        self.inner.done()
    }

    /// True once an upstream error event was seen.
    #[getter]
    fn error(&self) -> bool {
        self.inner.error()
    }

    /// The usage read so far in the gateway's terms, None before any.
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
        if let Some(c) = u.reasoning_tokens {
            d.set_item("reasoning_tokens", c)?;
        }
        Ok(Some(d))
    }
}
