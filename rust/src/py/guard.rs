//! `RegexGuard` and `RedactWindow` (see `crate::guard`).
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::guard::{Pattern, Window};

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
