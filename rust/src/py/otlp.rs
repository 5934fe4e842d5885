//! `encode_traces`: a batch of finished traces as one OTLP request (see `crate::otlp`).
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::exceptions::PyTypeError;
use pyo3::types::{PyBytes, PyList, PyTuple};

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

/// Bytes or str item `i` of a report, as a string (Latin-1 for bytes).
fn text(r: &Bound<'_, PyTuple>, i: usize) -> PyResult<String> {
    latin1(&r.get_item(i)?)
}

/// One `fastgw.tracing.Trace`: its ids and attempts, and its `report` (a
/// `fastgw.tracing.Report`, read by position in the order of its fields).
fn trace(t: &Bound<'_, PyAny>) -> PyResult<TraceRec> {
    let py = t.py();
    let attempts = t.getattr(intern!(py, "attempts"))?;
    let attempts = attempts.cast::<PyList>()?;
    let mut recs = Vec::with_capacity(attempts.len());
    for a in attempts.iter() {
        recs.push(attempt(&a)?);
    }
    let report = t.getattr(intern!(py, "report"))?;
    let r = report.cast::<PyTuple>()?;
    if r.len() != REPORT_FIELDS {
        return Err(PyTypeError::new_err(format!(
            "a trace's report has {REPORT_FIELDS} fields, not {}",
            r.len()
        )));
    }
    Ok(TraceRec {
        trace_id: t.getattr(intern!(py, "trace_id"))?.extract()?,
        parent_id: t.getattr(intern!(py, "parent_id"))?.extract()?,
        span_id: t.getattr(intern!(py, "span_id"))?.extract()?,
        attempts: recs,
        start: r.get_item(0)?.extract()?,
        finished: r.get_item(1)?.extract()?,
        status: r.get_item(2)?.extract()?,
        error: r.get_item(3)?.extract()?,
        method: text(r, 4)?,
        path: text(r, 5)?,
        endpoint: r.get_item(6)?.extract()?,
        asked: r.get_item(7)?.extract()?,
        served: r.get_item(8)?.extract()?,
        response_model: r.get_item(9)?.extract()?,
        provider: r.get_item(10)?.extract()?,
        key: r.get_item(11)?.extract()?,
        cache: r.get_item(12)?.extract()?,
        variant: r.get_item(13)?.extract()?,
        request_id: text(r, 14)?,
        stream: r.get_item(15)?.extract()?,
        tokens: r.get_item(16)?.extract()?,
        overhead_s: r.get_item(17)?.extract()?,
        ttft_s: r.get_item(18)?.extract()?,
    })
}

/// The fields of `fastgw.tracing.Report`.
const REPORT_FIELDS: usize = 19;

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
