//! `parse_request`, `parse_response`, `forwarded`, `usage`: whole HTTP/1.1
//! messages in one call (see `crate::http`).
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use super::headers::Headers;
use crate::http as core;

/// Header names common enough to be shared objects rather than new bytes
/// per request (lowercase).
const COMMON_NAMES: [&[u8]; 20] = [
    b"host",
    b"content-type",
    b"content-length",
    b"authorization",
    b"user-agent",
    b"accept",
    b"accept-encoding",
    b"connection",
    b"x-api-key",
    b"x-request-id",
    b"date",
    b"server",
    b"openai-processing-ms",
    b"openai-version",
    b"x-stainless-lang",
    b"x-stainless-os",
    b"x-stainless-arch",
    b"x-stainless-runtime",
    b"x-stainless-package-version",
    b"x-stainless-retry-count",
];

static NAMES: PyOnceLock<Vec<Py<PyBytes>>> = PyOnceLock::new();
static METHODS: PyOnceLock<Vec<Py<PyBytes>>> = PyOnceLock::new();
const METHOD_NAMES: [&[u8]; 2] = [b"POST", b"GET"];

fn cached<'py>(
    py: Python<'py>,
    cell: &PyOnceLock<Vec<Py<PyBytes>>>,
    table: &[&[u8]],
    value: &[u8],
) -> Bound<'py, PyBytes> {
    let objects = cell.get_or_init(py, || {
        table.iter().map(|n| PyBytes::new(py, n).unbind()).collect()
    });
    for (name, obj) in table.iter().zip(objects) {
        if *name == value {
            return obj.bind(py).clone();
        }
    }
    PyBytes::new(py, value)
}

/// A lowercase header name as a bytes object: a shared one for common names.
pub(crate) fn header_name<'py>(py: Python<'py>, lowercase: &[u8]) -> Bound<'py, PyBytes> {
    cached(py, &NAMES, &COMMON_NAMES, lowercase)
}

/// One whole request, or None (leave it to llhttp). The tuple:
/// `(method, path, query, headers, body, keep_alive, content_length,
/// forwarded_block, request_id, controls)`; header names are lowercase,
/// `content_length` is -1 when absent, and the last three are
/// [`forwarded`]'s answer for these headers.
#[pyfunction]
#[pyo3(signature = (data, max_head, max_body, /))]
pub(crate) fn parse_request<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    max_head: usize,
    max_body: usize,
) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let Some(r) = core::parse_request(data.as_bytes(), max_head, max_body) else {
        return Ok(None);
    };
    let headers = Bound::new(py, Headers::new(data, &r.headers))?;
    let fwd = core::forwarded(&r.headers);
    let tuple = PyTuple::new(
        py,
        [
            cached(py, &METHODS, &METHOD_NAMES, r.method).into_any(),
            PyBytes::new(py, r.path).into_any(),
            PyBytes::new(py, r.query).into_any(),
            headers.into_any(),
            PyBytes::new(py, r.body).into_any(),
            r.keep_alive.into_pyobject(py)?.to_owned().into_any(),
            r.content_length.into_pyobject(py)?.into_any(),
            PyBytes::new(py, &fwd.block).into_any(),
            match fwd.request_id {
                Some(id) => PyBytes::new(py, id).into_any(),
                None => py.None().into_bound(py),
            },
            fwd.controls.into_pyobject(py)?.to_owned().into_any(),
            match fwd.credential {
                Some(c) => PyBytes::new(py, c).into_any(),
                None => py.None().into_bound(py),
            },
        ],
    )?;
    Ok(Some(tuple))
}

/// `(status, headers, keep_alive, head_len, body)`.
type ResponseHead<'py> = (
    u16,
    Bound<'py, Headers>,
    bool,
    usize,
    Option<Bound<'py, PyBytes>>,
);

/// The head of a response at the start of `data`, or None (leave it to
/// llhttp): `(status, headers, keep_alive, head_len, body)`, header names
/// lowercase; `body` is the whole body of a `content-length` answer (which
/// `data` must hold exactly), None for a chunked one (read the bytes after
/// `head_len` with a `ChunkedDecoder`).
#[pyfunction]
#[pyo3(signature = (data, /))]
pub(crate) fn parse_response<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
) -> PyResult<Option<ResponseHead<'py>>> {
    let buf = data.as_bytes();
    let Some(r) = core::parse_response(buf) else {
        return Ok(None);
    };
    let headers = Bound::new(py, Headers::new(data, &r.headers))?;
    let body = match r.body {
        core::Body::Length(_) => Some(PyBytes::new(py, &buf[r.head_len..])),
        core::Body::Chunked => None,
    };
    Ok(Some((r.status, headers, r.keep_alive, r.head_len, body)))
}

/// `(model, stream, controls, completion, usage_asked)`: what `peek_request` gives.
type PeekedRequest<'py> = (Bound<'py, PyString>, bool, bool, u64, Option<bool>);

/// `(model, stream, controls, completion, usage_asked)` of a JSON request body
/// the request phase can take without parsing it into a dict (see
/// `crate::http::peek_request`), or None: parse it.
#[pyfunction]
#[pyo3(signature = (body, /))]
pub(crate) fn peek_request<'py>(
    py: Python<'py>,
    body: &Bound<'py, PyBytes>,
) -> Option<PeekedRequest<'py>> {
    let p = core::peek_request(body.as_bytes())?;
    let model = PyString::new(py, &p.model);
    Some((model, p.stream, p.controls, p.completion, p.usage_asked))
}

/// Reads a chunked response body, read by read.
#[pyclass(module = "fastgw._native")]
pub struct ChunkedDecoder {
    inner: core::Chunked,
}

#[pymethods]
impl ChunkedDecoder {
    #[new]
    fn new() -> Self {
        ChunkedDecoder {
            inner: core::Chunked::new(),
        }
    }

    /// The chunk data in `data` (from `start`): a list of pieces, one per chunk
    /// (a chunk cut by the end of the read gives what was read of it), or with
    /// `join` at most one piece holding them all. `ValueError` when the body is
    /// malformed or bytes follow its end.
    #[pyo3(signature = (data, start = 0, *, join = false))]
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyBytes>,
        start: usize,
        join: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let buf = data.as_bytes();
        let mut out = Vec::new();
        self.inner
            .feed(buf.get(start..).unwrap_or_default(), &mut out)
            .map_err(|e| PyValueError::new_err(e.0))?;
        let list = PyList::empty(py);
        if join && out.len() > 1 {
            list.append(PyBytes::new(py, &out.concat()))?;
        } else {
            for piece in out {
                if !piece.is_empty() {
                    list.append(PyBytes::new(py, piece))?;
                }
            }
        }
        Ok(list)
    }

    /// As `feed`, for a consumer that takes the chunks one by one for a while:
    /// `each(piece)` is called with each chunk's data in order for as long as
    /// it returns true; the data of the chunks after the one it returned false
    /// for comes back joined in one piece (None when there is none). What
    /// `each` raises is raised, the rest of the read dropped.
    fn feed_each<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyBytes>,
        start: usize,
        each: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let buf = data.as_bytes();
        let mut out = Vec::new();
        self.inner
            .feed(buf.get(start..).unwrap_or_default(), &mut out)
            .map_err(|e| PyValueError::new_err(e.0))?;
        let mut i = 0;
        while i < out.len() {
            let piece = out[i];
            i += 1;
            if !piece.is_empty() && !each.call1((PyBytes::new(py, piece),))?.is_truthy()? {
                break;
            }
        }
        let rest = &out[i..];
        let total: usize = rest.iter().map(|p| p.len()).sum();
        if total == 0 {
            return Ok(None);
        }
        // Joined straight into the bytes object: one copy.
        let joined = PyBytes::new_with(py, total, |buf| {
            let mut at = 0;
            for piece in rest {
                buf[at..at + piece.len()].copy_from_slice(piece);
                at += piece.len();
            }
            Ok(())
        })?;
        Ok(Some(joined))
    }

    /// Whether the last chunk and the trailer have been read.
    #[getter]
    fn done(&self) -> bool {
        self.inner.done()
    }
}

/// `(block, request_id, controls)`: the request header pass over lowercase
/// `(name, value)` pairs (what `parse_request` returns for its headers).
#[pyfunction]
#[pyo3(signature = (headers, /))]
#[allow(clippy::needless_pass_by_value)] // PyO3 extracts arguments by value
#[allow(clippy::type_complexity)]
pub(crate) fn forwarded<'py>(
    py: Python<'py>,
    headers: &Bound<'py, PyAny>,
) -> PyResult<(
    Bound<'py, PyBytes>,
    Option<Bound<'py, PyBytes>>,
    bool,
    Option<Bound<'py, PyBytes>>,
)> {
    let owned: Vec<(Vec<u8>, Vec<u8>)>;
    let pairs: Vec<(&[u8], &[u8])> = if let Ok(view) = headers.cast::<Headers>() {
        let view = view.get();
        view.pairs(view.raw(py).as_bytes()).collect()
    } else {
        owned = headers.extract()?;
        owned
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect()
    };
    let f = core::forwarded(&pairs);
    Ok((
        PyBytes::new(py, &f.block),
        f.request_id.map(|id| PyBytes::new(py, id)),
        f.controls,
        f.credential.map(|c| PyBytes::new(py, c)),
    ))
}

fn count<'py>(py: Python<'py>, digits: Option<&[u8]>) -> PyResult<Bound<'py, PyAny>> {
    let Some(d) = digits else {
        return Ok(0u64.into_pyobject(py)?.into_any());
    };
    if d.len() <= 19 {
        let n = d.iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
        return Ok(n.into_pyobject(py)?.into_any());
    }
    // Too long for 64 bits: Python's int reads it.
    py.get_type::<pyo3::types::PyInt>()
        .call1((PyBytes::new(py, d),))
}

/// `(prompt_tokens, completion_tokens)` after the last `"usage"` key of a
/// whole JSON answer (0 for a count that is absent), or None.
#[pyfunction]
#[pyo3(signature = (body, /))]
pub(crate) fn usage<'py>(
    py: Python<'py>,
    body: &[u8],
) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    let Some((p, c)) = core::usage(body) else {
        return Ok(None);
    };
    Ok(Some((count(py, p)?, count(py, c)?)))
}

/// `body` with its top-level model name `old` replaced by `new` (both JSON
/// string literals), spliced in place; None when the name cannot be found so
/// (see `http::model_splice`): the caller re-encodes.
#[pyfunction]
#[pyo3(signature = (body, old, new, /))]
pub(crate) fn splice_model<'py>(
    py: Python<'py>,
    body: &[u8],
    old: &[u8],
    new: &[u8],
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let Some((start, end)) = core::model_splice(body, old) else {
        return Ok(None);
    };
    let len = body.len() - (end - start) + new.len();
    PyBytes::new_with(py, len, |out| {
        out[..start].copy_from_slice(&body[..start]);
        out[start..start + new.len()].copy_from_slice(new);
        out[start + new.len()..].copy_from_slice(&body[end..]);
        Ok(())
    })
    .map(Some)
}

/// The upstream request of a whole answer in the client's dialect, in one
/// write: `prefix` (request line and the target's constant headers),
/// `content-length`, `x-request-id`, the forwarded header block `fwd`, the blank
/// line and `body` with its model literal `old` replaced by `new` (as
/// `splice_model`; no change when they are equal). None when the name cannot
/// be spliced so: the caller renders the request its general way.
#[pyfunction]
#[pyo3(signature = (prefix, request_id, fwd, body, old, new, /))]
pub(crate) fn render_request<'py>(
    py: Python<'py>,
    prefix: &[u8],
    request_id: &[u8],
    fwd: &[u8],
    body: &[u8],
    old: &[u8],
    new: &[u8],
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let (start, end, new) = if old == new {
        (body.len(), body.len(), &b""[..])
    } else {
        match core::model_splice(body, old) {
            Some((start, end)) => (start, end, new),
            None => return Ok(None),
        }
    };
    let body_len = body.len() - (end - start) + new.len();
    let mut digits = itoa::Buffer::new();
    let length = digits.format(body_len).as_bytes();
    let parts: [&[u8]; 10] = [
        prefix,
        b"content-length: ",
        length,
        b"\r\nx-request-id: ",
        request_id,
        b"\r\n",
        fwd,
        b"\r\n",
        &body[..start],
        new,
    ];
    let tail = &body[end..];
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + tail.len();
    PyBytes::new_with(py, len, |out| {
        let mut at = 0;
        for part in parts.iter().chain(std::iter::once(&tail)) {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Ok(())
    })
    .map(Some)
}

/// The header block of a whole answer or a stream's head: `content-type`,
/// `x-request-id`, the target's constant lines, `x-fastgw-attempts`,
/// `x-fastgw-overhead-ms` (`"%.3f"` of the milliseconds), the request's extra
/// lines, then the allow-listed upstream headers (`up_headers`, lowercase
/// `(name, value)` pairs) with every secret scrubbed from them.
#[pyfunction]
#[pyo3(signature = (ctype, request_id, target_headers, attempts, overhead_s, extra, up_headers, secrets, /))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn response_block<'py>(
    py: Python<'py>,
    ctype: &[u8],
    request_id: &[u8],
    target_headers: &[u8],
    attempts: i64,
    overhead_s: f64,
    extra: &[u8],
    up_headers: &Bound<'py, PyAny>,
    secrets: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyBytes>> {
    let block = Block {
        ctype,
        request_id,
        target_headers,
        attempts,
        overhead_s,
        extra,
    };
    let passed = passed_headers(up_headers, secrets)?;
    let mut out = Vec::with_capacity(96 + block.len() + passed.len());
    block.write(&mut out, &passed);
    Ok(PyBytes::new(py, &out))
}

/// A whole answer to the client in one piece: `status_line`, the `date` line
/// (see [`date_line`]), the header block of [`response_block`], `conn` (the
/// connection line, or nothing), `content-length` of `body`, the blank line and
/// `body` (left out with `head_only`: an answer to HEAD).
#[pyfunction]
#[pyo3(signature = (status_line, conn, ctype, request_id, target_headers, attempts, overhead_s, extra, up_headers, secrets, body, head_only, /))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn answer<'py>(
    py: Python<'py>,
    status_line: &[u8],
    conn: &[u8],
    ctype: &[u8],
    request_id: &[u8],
    target_headers: &[u8],
    attempts: i64,
    overhead_s: f64,
    extra: &[u8],
    up_headers: &Bound<'py, PyAny>,
    secrets: &Bound<'py, PyTuple>,
    body: &[u8],
    head_only: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let block = Block {
        ctype,
        request_id,
        target_headers,
        attempts,
        overhead_s,
        extra,
    };
    let passed = passed_headers(up_headers, secrets)?;
    let sent: &[u8] = if head_only { b"" } else { body };
    let mut out = Vec::with_capacity(
        160 + status_line.len() + block.len() + passed.len() + conn.len() + sent.len(),
    );
    out.extend_from_slice(status_line);
    out.extend_from_slice(&current_date_line());
    block.write(&mut out, &passed);
    out.extend_from_slice(conn);
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(sent);
    Ok(PyBytes::new(py, &out))
}

/// `date: <HTTP date>\r\n` of `secs` (Unix time), or of now, computed at most
/// once a second.
#[pyfunction]
#[pyo3(signature = (secs = None, /))]
pub(crate) fn date_line(py: Python<'_>, secs: Option<i64>) -> Bound<'_, PyBytes> {
    match secs {
        Some(secs) => PyBytes::new(py, &render_date_line(secs)),
        None => PyBytes::new(py, &current_date_line()),
    }
}

const DATE_LINE_LEN: usize = 37;

fn render_date_line(secs: i64) -> [u8; DATE_LINE_LEN] {
    let mut line = [0u8; DATE_LINE_LEN];
    line[..6].copy_from_slice(b"date: ");
    line[6..35].copy_from_slice(&core::http_date(secs));
    line[35..].copy_from_slice(b"\r\n");
    line
}

/// The date line of now: the last second's, rendered again when the second changed.
fn current_date_line() -> [u8; DATE_LINE_LEN] {
    static LAST: std::sync::Mutex<(i64, [u8; DATE_LINE_LEN])> =
        std::sync::Mutex::new((i64::MIN, [0u8; DATE_LINE_LEN]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.0 != now {
        *last = (now, render_date_line(now));
    }
    last.1
}

/// The constant part of an answer's header block.
struct Block<'a> {
    ctype: &'a [u8],
    request_id: &'a [u8],
    target_headers: &'a [u8],
    attempts: i64,
    overhead_s: f64,
    extra: &'a [u8],
}

impl Block<'_> {
    fn len(&self) -> usize {
        self.ctype.len() + self.request_id.len() + self.target_headers.len() + self.extra.len()
    }

    fn write(&self, out: &mut Vec<u8>, passed: &[u8]) {
        out.extend_from_slice(b"content-type: ");
        out.extend_from_slice(self.ctype);
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(self.request_id);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.target_headers);
        out.extend_from_slice(b"x-fastgw-attempts: ");
        out.extend_from_slice(itoa::Buffer::new().format(self.attempts).as_bytes());
        out.extend_from_slice(b"\r\nx-fastgw-overhead-ms: ");
        core::fixed3(out, self.overhead_s * 1000.0);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.extra);
        out.extend_from_slice(passed);
    }
}

/// The allow-listed upstream headers, renamed as sent, secrets scrubbed.
fn passed_headers(
    up_headers: &Bound<'_, PyAny>,
    secrets: &Bound<'_, PyTuple>,
) -> PyResult<Vec<u8>> {
    let mut passed = Vec::new();
    if let Ok(view) = up_headers.cast::<Headers>() {
        let view = view.get();
        let mut low = Vec::new();
        for (name, value) in view.pairs(view.raw(up_headers.py()).as_bytes()) {
            let name = if name.iter().any(u8::is_ascii_uppercase) {
                low.clear();
                low.extend(name.iter().map(u8::to_ascii_lowercase));
                low.as_slice()
            } else {
                name
            };
            if let Some(sent) = core::passed_name(name) {
                passed.extend_from_slice(sent);
                passed.extend_from_slice(b": ");
                passed.extend_from_slice(value);
                passed.extend_from_slice(b"\r\n");
            }
        }
        return scrubbed(passed, secrets);
    }
    let up_headers = up_headers.cast::<PyList>()?;
    for item in up_headers.iter() {
        let pair = item.cast::<PyTuple>()?;
        let name = pair.get_borrowed_item(0)?;
        let Some(sent) = core::passed_name(name.cast::<PyBytes>()?.as_bytes()) else {
            continue;
        };
        let value = pair.get_borrowed_item(1)?;
        passed.extend_from_slice(sent);
        passed.extend_from_slice(b": ");
        passed.extend_from_slice(value.cast::<PyBytes>()?.as_bytes());
        passed.extend_from_slice(b"\r\n");
    }
    scrubbed(passed, secrets)
}

/// `passed` with the secrets scrubbed.
fn scrubbed(passed: Vec<u8>, secrets: &Bound<'_, PyTuple>) -> PyResult<Vec<u8>> {
    let mut passed = passed;
    if !passed.is_empty() && !secrets.is_empty() {
        let held: Vec<Bound<'_, PyBytes>> = secrets
            .iter()
            .map(|s| s.cast_into::<PyBytes>().map_err(PyErr::from))
            .collect::<PyResult<_>>()?;
        let list: Vec<&[u8]> = held.iter().map(PyBytesMethods::as_bytes).collect();
        passed = core::scrub(passed, &list);
    }
    Ok(passed)
}
