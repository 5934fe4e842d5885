//! `encode_traces`: a batch of finished traces as one OTLP request (see `crate::otlp`).
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use pyo3::Borrowed;

use std::borrow::Cow;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::otlp::{self as core, AttemptRec, TraceRec};

/// Bytes as text, Latin-1 (each byte one character, as `bytes.decode("latin-1")`):
/// borrowed when ASCII (the same in UTF-8), the usual case.
fn latin1<'a>(obj: Borrowed<'a, '_, PyAny>) -> PyResult<Cow<'a, str>> {
    let raw: &'a [u8] = obj.extract()?;
    Ok(match std::str::from_utf8(raw) {
        Ok(text) if raw.is_ascii() => Cow::Borrowed(text),
        _ => Cow::Owned(raw.iter().map(|&b| char::from(b)).collect()),
    })
}

fn text<'a>(obj: Borrowed<'a, '_, PyAny>) -> PyResult<Cow<'a, str>> {
    Ok(Cow::Borrowed(obj.extract::<&'a str>()?))
}

fn opt_text<'a>(obj: Borrowed<'a, '_, PyAny>) -> PyResult<Option<Cow<'a, str>>> {
    if obj.is_none() {
        Ok(None)
    } else {
        text(obj).map(Some)
    }
}

/// An attempt's fields (a `fastgw.tracing.AttemptSpan`), held so that its text can
/// be borrowed rather than copied while the batch is encoded.
struct HeldAttempt<'py> {
    span_id: u64,
    start: f64,
    end: f64,
    status: i64,
    text: [Bound<'py, PyAny>; 5], // provider, kind, model, route, error
}

impl<'py> HeldAttempt<'py> {
    fn of(a: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = a.py();
        Ok(Self {
            span_id: a.getattr(intern!(py, "span_id"))?.extract()?,
            start: a.getattr(intern!(py, "start"))?.extract()?,
            end: a.getattr(intern!(py, "end"))?.extract()?,
            status: a.getattr(intern!(py, "status"))?.extract()?,
            text: [
                a.getattr(intern!(py, "provider"))?,
                a.getattr(intern!(py, "kind"))?,
                a.getattr(intern!(py, "model"))?,
                a.getattr(intern!(py, "route"))?,
                a.getattr(intern!(py, "error"))?,
            ],
        })
    }

    fn rec(&self) -> PyResult<AttemptRec<'_>> {
        let [provider, kind, model, route, error] = &self.text;
        Ok(AttemptRec {
            span_id: self.span_id,
            provider: text(provider.as_borrowed())?,
            kind: text(kind.as_borrowed())?,
            model: text(model.as_borrowed())?,
            route: text(route.as_borrowed())?,
            start: self.start,
            end: self.end,
            error: opt_text(error.as_borrowed())?,
            status: self.status,
        })
    }
}

/// One `fastgw.tracing.Trace` held: its ids, its attempts, and its `report` (a
/// `fastgw.tracing.Report`, read by position in the order of its fields).
struct HeldTrace<'py> {
    trace_id: u128,
    parent_id: u64,
    span_id: u64,
    attempts: Vec<HeldAttempt<'py>>,
    report: Bound<'py, PyTuple>,
}

impl<'py> HeldTrace<'py> {
    fn of(t: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = t.py();
        let listed = t.getattr(intern!(py, "attempts"))?;
        let listed = listed.cast::<PyList>()?;
        let mut attempts = Vec::with_capacity(listed.len());
        for a in listed.iter() {
            attempts.push(HeldAttempt::of(&a)?);
        }
        let report = t.getattr(intern!(py, "report"))?.cast_into::<PyTuple>()?;
        if report.len() != REPORT_FIELDS {
            return Err(PyTypeError::new_err(format!(
                "a trace's report has {REPORT_FIELDS} fields, not {}",
                report.len()
            )));
        }
        Ok(Self {
            trace_id: t.getattr(intern!(py, "trace_id"))?.extract()?,
            parent_id: t.getattr(intern!(py, "parent_id"))?.extract()?,
            span_id: t.getattr(intern!(py, "span_id"))?.extract()?,
            attempts,
            report,
        })
    }

    fn rec(&self) -> PyResult<TraceRec<'_>> {
        let r = &self.report;
        let item = |i: usize| r.get_borrowed_item(i);
        Ok(TraceRec {
            trace_id: self.trace_id,
            parent_id: self.parent_id,
            span_id: self.span_id,
            attempts: self
                .attempts
                .iter()
                .map(HeldAttempt::rec)
                .collect::<PyResult<_>>()?,
            start: item(0)?.extract()?,
            finished: item(1)?.extract()?,
            status: item(2)?.extract()?,
            error: opt_text(item(3)?)?,
            method: latin1(item(4)?)?,
            path: latin1(item(5)?)?,
            endpoint: text(item(6)?)?,
            asked: text(item(7)?)?,
            served: text(item(8)?)?,
            response_model: text(item(9)?)?,
            provider: text(item(10)?)?,
            key: opt_text(item(11)?)?,
            cache: opt_text(item(12)?)?,
            variant: opt_text(item(13)?)?,
            request_id: latin1(item(14)?)?,
            stream: item(15)?.extract()?,
            tokens: item(16)?.extract()?,
            overhead_s: item(17)?.extract()?,
            ttft_s: item(18)?.extract()?,
        })
    }
}

/// The fields of `fastgw.tracing.Report`.
const REPORT_FIELDS: usize = 19;

/// The span encoder of one exporter (`crate::otlp::Encoder`): it keeps each kind
/// of span's serialized constant part, and the spans encoded until they are taken.
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

    /// Encodes one finished trace (a `fastgw.tracing.Trace` with its report) at
    /// once and keeps its spans for [`Self::take`]; the spans kept, counted.
    /// `epoch` turns `perf_counter` readings into Unix time.
    #[pyo3(signature = (trace, epoch, /))]
    fn add(&self, trace: &Bound<'_, PyAny>, epoch: f64) -> PyResult<usize> {
        let held = HeldTrace::of(trace)?;
        let rec = held.rec()?;
        Ok(self.encoder().add(&rec, epoch))
    }

    /// Spans kept (added since the last take).
    fn pending(&self) -> usize {
        self.encoder().pending()
    }

    /// The serialized OTLP `ExportTraceServiceRequest` of the spans kept (none are
    /// kept after).
    #[pyo3(signature = (pid, version, /))]
    fn take<'py>(&self, py: Python<'py>, pid: i64, version: &str) -> PyResult<Bound<'py, PyBytes>> {
        // Written straight into the bytes object: one copy.
        self.encoder().take_with(pid, version, |len, head, spans| {
            PyBytes::new_with(py, len, |buf| {
                let (first, rest) = buf.split_at_mut(head.len());
                first.copy_from_slice(head);
                rest.copy_from_slice(spans);
                Ok(())
            })
        })
    }

    /// The serialized OTLP `ExportTraceServiceRequest` of `batch` (a list of
    /// `fastgw.tracing.Trace`), with any spans kept before; the reference is
    /// `fastgw/_reference/otlp.py`.
    #[pyo3(signature = (batch, epoch, pid, version, /))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        batch: &Bound<'py, PyList>,
        epoch: f64,
        pid: i64,
        version: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        // The traces held first, then read: their text is borrowed, not copied.
        let mut held = Vec::with_capacity(batch.len());
        for t in batch.iter() {
            held.push(HeldTrace::of(&t)?);
        }
        let recs = held
            .iter()
            .map(HeldTrace::rec)
            .collect::<PyResult<Vec<_>>>()?;
        let data = self.encoder().encode(&recs, epoch, pid, version);
        Ok(PyBytes::new(py, &data))
    }

    /// Constant parts kept: (request spans, attempt spans).
    fn kept(&self) -> (usize, usize) {
        self.encoder().kept()
    }
}

impl OtlpEncoder {
    fn encoder(&self) -> MutexGuard<'_, core::Encoder> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
