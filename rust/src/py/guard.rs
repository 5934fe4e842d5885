//! `RegexGuard` and `RedactWindow` (see `crate::guard`).
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::guard::{DeltaForm, Pattern, Window};

/// One guardrail pattern, compiled once, with its replacement text.
#[pyclass(frozen, module = "fastgw._native")]
pub struct RegexGuard {
    inner: Pattern,
    pattern: String,
    replacement: String,
}

#[pymethods]
impl RegexGuard {
    #[new]
    #[pyo3(signature = (pattern, replacement = "[REDACTED]"))]
    fn new(pattern: &str, replacement: &str) -> PyResult<Self> {
        let inner = Pattern::new(pattern).map_err(|e| PyValueError::new_err(e.0))?;
        Ok(Self {
            inner,
            pattern: pattern.to_owned(),
            replacement: replacement.to_owned(),
        })
    }

    #[getter]
    fn pattern(&self) -> &str {
        &self.pattern
    }

    #[getter]
    fn replacement(&self) -> &str {
        &self.replacement
    }

    /// Whether `text` has a (non-empty) match.
    fn matches(&self, text: &str) -> bool {
        self.inner.matches(text)
    }

    /// `(text redacted, number of matches)`; `text` itself when there is none.
    fn redact<'py>(&self, text: &Bound<'py, PyString>) -> PyResult<(Bound<'py, PyString>, usize)> {
        let (out, n) = self.inner.redact(text.to_str()?, &self.replacement);
        if n == 0 {
            return Ok((text.clone(), 0));
        }
        Ok((PyString::new(text.py(), &out), n))
    }

    /// A stream's redaction, holding back at most `chars` characters.
    fn window(slf: &Bound<'_, Self>, chars: usize) -> RedactWindow {
        RedactWindow {
            guard: slf.clone().unbind(),
            inner: Window::new(chars),
        }
    }
}

/// One stream's text redacted as it arrives (`RegexGuard.window`).
#[pyclass(module = "fastgw._native")]
pub struct RedactWindow {
    guard: Py<RegexGuard>,
    inner: Window,
}

#[pymethods]
impl RedactWindow {
    /// Append `piece`; the redacted text that can go out now (maybe empty).
    fn push(&mut self, py: Python<'_>, piece: &str) -> String {
        let g = self.guard.bind(py).get();
        self.inner.push(&g.inner, piece, &g.replacement)
    }

    /// The end of the stream: the rest, redacted.
    fn finish(&mut self, py: Python<'_>) -> String {
        let g = self.guard.bind(py).get();
        self.inner.finish(&g.inner, &g.replacement)
    }

    /// Read the text delta events at the start of `data` (SSE, `\n\n` between
    /// events, no `\r`) whose text's JSON string follows `anchor` and which
    /// contain every one of `markers`, through the window: `(what goes out,
    /// bytes read)`. Stops at an event of another kind, or (`stop_on_match`) after
    /// one with a match (left out).
    #[pyo3(signature = (data, anchor, markers, stop_on_match = false))]
    #[allow(clippy::needless_pass_by_value)] // (extracted from a Python sequence: owned)
    fn feed_events<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
        anchor: &[u8],
        markers: Vec<Vec<u8>>,
        stop_on_match: bool,
    ) -> (Bound<'py, PyBytes>, usize) {
        let g = self.guard.bind(py).get();
        let marks: Vec<&[u8]> = markers.iter().map(Vec::as_slice).collect();
        let form = DeltaForm {
            anchor,
            markers: &marks,
        };
        let mut out = Vec::new();
        let used = self.inner.feed_events(
            &g.inner,
            &g.replacement,
            data,
            &form,
            stop_on_match,
            &mut out,
        );
        (PyBytes::new(py, &out), used)
    }

    /// Remember `event` (its text's JSON string at `event[start:end]`) as the
    /// form `render` writes.
    fn set_template(&mut self, event: &[u8], start: usize, end: usize) -> PyResult<()> {
        if start > end || end > event.len() {
            return Err(PyValueError::new_err("the span is not inside the event"));
        }
        self.inner.set_template(event, start, end);
        Ok(())
    }

    /// The last text delta event with `text` for its text (b"" when `text` is
    /// empty or there was none).
    fn render<'py>(&self, py: Python<'py>, text: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.render(text))
    }

    /// Matches found so far.
    #[getter]
    fn matches(&self) -> usize {
        self.inner.matches
    }

    /// Bytes (UTF-8) held back now.
    #[getter]
    fn held(&self) -> usize {
        self.inner.held()
    }
}
