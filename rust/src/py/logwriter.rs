//! `LogWriter`: the access log's writer thread (see `crate::logwriter`).
use pyo3::exceptions::{PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

use std::time::Duration;

use crate::logwriter;

/// A thread writing batches of access-log lines to a file descriptor without
/// the interpreter: see `fastgw/_reference/logwriter.py` for the reference.
#[pyclass(module = "fastgw._native", frozen)]
pub(crate) struct LogWriter {
    pub(crate) inner: logwriter::LogWriter,
}

#[pymethods]
impl LogWriter {
    #[new]
    fn new(fd: i32) -> PyResult<Self> {
        let inner = logwriter::LogWriter::new(fd).map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Queue a copy of `data` (bytes or bytearray, `lines` lines); False once closed.
    fn submit(&self, data: &Bound<'_, PyAny>, lines: u64) -> PyResult<bool> {
        if let Ok(b) = data.cast::<PyBytes>() {
            return Ok(self.inner.submit(b.as_bytes(), lines));
        }
        if let Ok(b) = data.cast::<PyByteArray>() {
            // SAFETY: the GIL is held and nothing runs Python code until the copy
            // (`submit` copies the bytes before it returns), so the buffer cannot
            // be resized or freed meanwhile.
            return Ok(self.inner.submit(unsafe { b.as_bytes() }, lines));
        }
        Err(PyTypeError::new_err(format!(
            "expected bytes or bytearray, got {}",
            data.get_type().name()?
        )))
    }

    /// Lines written (or dropped by a failed write) so far.
    #[getter]
    fn written(&self) -> u64 {
        self.inner.written()
    }

    /// Lines submitted and not yet written.
    #[getter]
    fn pending(&self) -> u64 {
        self.inner.pending()
    }

    /// Write what is queued, then stop the thread, waiting up to `timeout_s`
    /// (without the GIL): True when it stopped (False: still blocked in a write,
    /// its descriptor still in use).
    #[pyo3(signature = (timeout_s = 5.0))]
    fn close(&self, py: Python<'_>, timeout_s: f64) -> bool {
        let timeout = Duration::try_from_secs_f64(timeout_s.max(0.0)).unwrap_or(Duration::MAX);
        py.detach(|| self.inner.close(timeout))
    }
}
