//! `encode_traces`: a batch of finished traces as one OTLP request (see `crate::otlp`).
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use std::sync::{Mutex, PoisonError};

use crate::otlp::{self as core, AttemptRec, TraceRec};

/// Bytes read as Latin-1 (each byte one character), as `bytes.decode("latin-1")`.
fn latin1(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let raw: &[u8] = obj.cast::<PyBytes>()?.as_bytes();
    Ok(raw.iter().map(|&b| char::from(b)).collect())
}

fn attempt(a: &Bound<'_, PyAny>) -> PyResult<AttemptRec> {
    let py = a.py();
    Ok(AttemptRec {
        span_id: a.getattr(intern!(py, "span_id"))?.extract()?,
        provider: a.getattr(intern!(py, "provider"))?.extract()?,
        kind: a.getattr(intern!(py, "kind"))?.extract()?,
        model: a.getattr(intern!(py, "model"))?.extract()?,
        route: a.getattr(intern!(py, "route"))?.extract()?,
        start: a.getattr(intern!(py, "start"))?.extract()?,
        end: a.getattr(intern!(py, "end"))?.extract()?,
        error: a.getattr(intern!(py, "error"))?.extract()?,
        status: a.getattr(intern!(py, "status"))?.extract()?,
    })
}

fn trace(t: &Bound<'_, PyAny>) -> PyResult<TraceRec> {
    let py = t.py();
    let attempts = t.getattr(intern!(py, "attempts"))?;
    let attempts = attempts.cast::<PyList>()?;
    let mut recs = Vec::with_capacity(attempts.len());
    for a in attempts.iter() {
        recs.push(attempt(&a)?);
    }
    Ok(TraceRec {
        trace_id: t.getattr(intern!(py, "trace_id"))?.extract()?,
        parent_id: t.getattr(intern!(py, "parent_id"))?.extract()?,
        span_id: t.getattr(intern!(py, "span_id"))?.extract()?,
        attempts: recs,
        start: t.getattr(intern!(py, "start"))?.extract()?,
        finished: t.getattr(intern!(py, "finished"))?.extract()?,
        status: t.getattr(intern!(py, "status"))?.extract()?,
        error: t.getattr(intern!(py, "error"))?.extract()?,
        method: latin1(&t.getattr(intern!(py, "method"))?)?,
        path: latin1(&t.getattr(intern!(py, "path"))?)?,
        endpoint: t.getattr(intern!(py, "endpoint"))?.extract()?,
        asked: t.getattr(intern!(py, "asked"))?.extract()?,
        served: t.getattr(intern!(py, "served"))?.extract()?,
        response_model: t.getattr(intern!(py, "response_model"))?.extract()?,
        provider: t.getattr(intern!(py, "provider"))?.extract()?,
        key: t.getattr(intern!(py, "key"))?.extract()?,
        cache: t.getattr(intern!(py, "cache"))?.extract()?,
        variant: t.getattr(intern!(py, "variant"))?.extract()?,
        request_id: latin1(&t.getattr(intern!(py, "request_id"))?)?,
        stream: t.getattr(intern!(py, "stream"))?.extract()?,
        tokens: t.getattr(intern!(py, "tokens"))?.extract()?,
        overhead_s: t.getattr(intern!(py, "overhead_s"))?.extract()?,
        ttft_s: t.getattr(intern!(py, "ttft_s"))?.extract()?,
    })
}

/// The span encoder of one exporter (`crate::otlp::Encoder`): it keeps each kind
/// of span's serialized constant part.
#[pyclass(module = "fastgw._native")]
pub(crate) struct OtlpEncoder {
    inner: Mutex<core::Encoder>,
}

#[pymethods]
impl OtlpEncoder {
    #[new]
    fn new() -> Self {
        Self {
            inner: Mutex::new(core::Encoder::new()),
        }
    }

    /// The serialized OTLP `ExportTraceServiceRequest` of `batch` (a list of
    /// `fastgw.tracing.Trace`); the reference is `fastgw/_reference/otlp.py`.
    /// The traces are read, then encoded with the GIL released.
    #[pyo3(signature = (batch, epoch, pid, version, /))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        batch: &Bound<'py, PyList>,
        epoch: f64,
        pid: i64,
        version: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut recs = Vec::with_capacity(batch.len());
        for t in batch.iter() {
            recs.push(trace(&t)?);
        }
        let data = py.detach(|| {
            let mut enc = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            enc.encode(&recs, epoch, pid, version)
        });
        Ok(PyBytes::new(py, &data))
    }

    /// Constant parts kept: (request spans, attempt spans).
    fn kept(&self) -> (usize, usize) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).kept()
    }
}
