//! `access_line`: one access-log line (see `crate::accesslog`); `LogBuffer`:
//! the lines held between two flushes, rendered straight into one buffer.
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::accesslog::{render, Line};
use crate::py::logwriter::LogWriter;

/// One JSON access-log line (newline included), rendered natively: see
/// `fastgw/_reference/accesslog.py` for the reference.
#[pyfunction]
#[pyo3(signature = (time, request_id, key, client_ip, path, model, served_model, route,
                    variant, provider, status, stream, attempts, latency_s, ttfb_s,
                    overhead_s, usage, error, cache=None, /))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn access_line<'py>(
    py: Python<'py>,
    time: f64,
    request_id: &[u8],
    key: Option<&str>,
    client_ip: &str,
    path: &[u8],
    model: Option<&str>,
    served_model: Option<&str>,
    route: Option<&str>,
    variant: Option<&str>,
    provider: Option<&str>,
    status: i64,
    stream: bool,
    attempts: i64,
    latency_s: f64,
    ttfb_s: f64,
    overhead_s: f64,
    usage: Option<(i64, i64, f64)>,
    error: Option<&str>,
    cache: Option<&str>,
) -> Bound<'py, PyBytes> {
    let mut out = Vec::with_capacity(512);
    render(
        &mut out,
        &Line {
            time,
            request_id,
            key,
            client_ip,
            path,
            model,
            served_model,
            route,
            variant,
            provider,
            status,
            stream,
            attempts,
            latency_s,
            ttfb_s,
            overhead_s,
            usage,
            error,
            cache,
        },
    );
    PyBytes::new(py, &out)
}

/// The most a buffer reserves for the next batch after a flush (bytes).
const MAX_RESERVED: usize = 1 << 20;

/// The access-log lines held between two flushes, for one writer: see
/// `fastgw/_reference/accesslog.py` for the reference.
#[pyclass(module = "fastgw._native")]
pub(crate) struct LogBuffer {
    /// A `LogWriter` (handed each batch without a copy), or any object with the
    /// same `submit(data, lines)` and `pending`.
    writer: Py<PyAny>,
    buf: Vec<u8>,
    lines: u64,
    /// The writer's unwritten lines at the last flush.
    behind: u64,
    max_pending: u64,
    dropped: u64,
}

impl LogBuffer {
    /// Room for one more line? Counts it as dropped when not.
    fn room(&mut self) -> bool {
        if self.lines + self.behind >= self.max_pending {
            self.dropped += 1;
            return false;
        }
        true
    }

    /// A line was held: true when it is the first since the last flush.
    fn held(&mut self) -> bool {
        self.lines += 1;
        self.lines == 1
    }
}

#[pymethods]
impl LogBuffer {
    #[new]
    fn new(writer: Py<PyAny>, max_pending: u64) -> Self {
        Self {
            writer,
            buf: Vec::new(),
            lines: 0,
            behind: 0,
            max_pending,
            dropped: 0,
        }
    }

    /// Holds `access_line`'s line of the arguments, unless `max_pending` lines
    /// are pending already (then the line is counted as dropped). True when the
    /// line is the first held since the last flush (the caller arms the flush).
    #[pyo3(signature = (time, request_id, key, client_ip, path, model, served_model, route,
                        variant, provider, status, stream, attempts, latency_s, ttfb_s,
                        overhead_s, usage, error, cache=None, /))]
    #[allow(clippy::too_many_arguments)]
    fn access(
        &mut self,
        time: f64,
        request_id: &[u8],
        key: Option<&str>,
        client_ip: &str,
        path: &[u8],
        model: Option<&str>,
        served_model: Option<&str>,
        route: Option<&str>,
        variant: Option<&str>,
        provider: Option<&str>,
        status: i64,
        stream: bool,
        attempts: i64,
        latency_s: f64,
        ttfb_s: f64,
        overhead_s: f64,
        usage: Option<(i64, i64, f64)>,
        error: Option<&str>,
        cache: Option<&str>,
    ) -> bool {
        if !self.room() {
            return false;
        }
        render(
            &mut self.buf,
            &Line {
                time,
                request_id,
                key,
                client_ip,
                path,
                model,
                served_model,
                route,
                variant,
                provider,
                status,
                stream,
                attempts,
                latency_s,
                ttfb_s,
                overhead_s,
                usage,
                error,
                cache,
            },
        );
        self.held()
    }

    /// Holds a rendered line (a JSON object and a newline), as [`access`](Self::access).
    fn line(&mut self, line: &[u8]) -> bool {
        if !self.room() {
            return false;
        }
        self.buf.extend_from_slice(line);
        self.held()
    }

    /// Hands the held lines to the writer (with, when lines were dropped since
    /// the last batch, an `access_log_dropped` event line after them); true while
    /// lines are still pending (held, or unwritten by the writer).
    fn flush(&mut self, py: Python<'_>) -> PyResult<bool> {
        let writer = self.writer.bind(py);
        let native = writer.cast::<LogWriter>().ok();
        if self.lines > 0 {
            // The next batch starts with room for one like this (up to a bound):
            // one allocation, not a doubling and a copy every few lines.
            let room = self.buf.len().min(MAX_RESERVED);
            let mut batch = std::mem::replace(&mut self.buf, Vec::with_capacity(room));
            if self.dropped > 0 {
                batch.extend_from_slice(b"{\"event\":\"access_log_dropped\",\"lines\":");
                batch.extend_from_slice(itoa::Buffer::new().format(self.dropped).as_bytes());
                batch.extend_from_slice(b"}\n");
                self.dropped = 0;
            }
            let lines = std::mem::take(&mut self.lines);
            match native {
                Some(w) => {
                    w.get().inner.submit_vec(batch, lines);
                }
                None => {
                    writer.call_method1("submit", (PyBytes::new(py, &batch), lines))?;
                }
            }
        }
        self.behind = match native {
            Some(w) => w.get().inner.pending(),
            None => writer.getattr("pending")?.extract()?,
        };
        Ok(self.behind > 0)
    }

    /// Lines held and not yet flushed.
    #[getter]
    fn lines(&self) -> u64 {
        self.lines
    }

    /// Lines dropped since the last batch.
    #[getter]
    fn dropped(&self) -> u64 {
        self.dropped
    }
}
