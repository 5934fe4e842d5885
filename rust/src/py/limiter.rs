//! `Limit`, `Scope`, `Reservation`, `LimiterTable`, `SharedLimiterTable`.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};
use smallvec::SmallVec;

use super::{key_bytes, now_or_clock};
use crate::limiter::{self as core, LimitError, LocalTable, Outcome, Period};
use crate::shm::ShmTable;

fn value_error(e: LimitError) -> PyErr {
    PyValueError::new_err(e.0)
}

/// Tables get distinct ids so a reservation cannot be settled on another.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// What a scope allows: a rate, a concurrency cap or a budget.
#[pyclass(frozen, module = "fastgw._native")]
pub struct Limit {
    pub(super) inner: core::Limit,
}

#[pymethods]
impl Limit {
    /// `amount` per `period_s` seconds, refilled continuously, holding a
    /// burst of `burst` (default `amount`).
    #[staticmethod]
    #[pyo3(signature = (amount, period_s = 60.0, *, burst = None))]
    fn rate(amount: f64, period_s: f64, burst: Option<f64>) -> PyResult<Limit> {
        Ok(Limit {
            inner: core::Limit::rate(amount, period_s, burst).map_err(value_error)?,
        })
    }

    /// At most `max_inflight` at once.
    #[staticmethod]
    fn concurrency(max_inflight: f64) -> PyResult<Limit> {
        Ok(Limit {
            inner: core::Limit::concurrency(max_inflight).map_err(value_error)?,
        })
    }

    /// `amount` per period: a name (`minute`, `hour`, `day`, `week`,
    /// `month`) or a number of seconds.
    #[staticmethod]
    fn budget(amount: f64, period: &Bound<'_, PyAny>) -> PyResult<Limit> {
        let period = if let Ok(name) = period.cast::<PyString>() {
            Period::from_name(name.to_str()?).map_err(value_error)?
        } else {
            Period::Seconds(
                period
                    .extract::<f64>()
                    .map_err(|_| PyTypeError::new_err("period must be a name or seconds"))?,
            )
        };
        Ok(Limit {
            inner: core::Limit::budget(amount, period).map_err(value_error)?,
        })
    }

    /// `"rate"`, `"concurrency"` or `"budget"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.inner {
            core::Limit::Rate { .. } => "rate",
            core::Limit::Concurrency { .. } => "concurrency",
            core::Limit::Budget { .. } => "budget",
        }
    }

    /// The limit reported in headers (capacity, cap or amount).
    #[getter]
    fn value(&self) -> f64 {
        self.inner.value()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Limit>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __hash__(&self) -> u64 {
        let (a, b, c) = match self.inner {
            core::Limit::Rate {
                capacity,
                refill_per_s,
            } => (1_u8, capacity, refill_per_s),
            core::Limit::Concurrency { max } => (2, max, 0.0),
            core::Limit::Budget {
                amount,
                period: Period::Seconds(p),
            } => (3, amount, p),
            core::Limit::Budget {
                amount,
                period: Period::Month,
            } => (4, amount, 0.0),
        };
        let mut buf = [0_u8; 17];
        buf[0] = a;
        buf[1..9].copy_from_slice(&b.to_bits().to_le_bytes());
        buf[9..].copy_from_slice(&c.to_bits().to_le_bytes());
        crate::ring::hash64(&buf)
    }

    fn __repr__(&self) -> String {
        match self.inner {
            core::Limit::Rate {
                capacity,
                refill_per_s,
            } => {
                format!("Limit.rate(capacity={capacity}, refill_per_s={refill_per_s})")
            }
            core::Limit::Concurrency { max } => format!("Limit.concurrency({max})"),
            core::Limit::Budget {
                amount,
                period: Period::Seconds(p),
            } => format!("Limit.budget({amount}, {p})"),
            core::Limit::Budget {
                amount,
                period: Period::Month,
            } => format!("Limit.budget({amount}, 'month')"),
        }
    }
}

/// A bucket name and its limit. Build once per (tenant, rule) and reuse.
#[pyclass(frozen, module = "fastgw._native")]
pub struct Scope {
    key: Box<[u8]>,
    limit: core::Limit,
    py_key: Py<PyAny>,
    py_limit: Py<Limit>,
}

#[pymethods]
impl Scope {
    #[new]
    fn new(key: &Bound<'_, PyAny>, limit: &Bound<'_, Limit>) -> PyResult<Scope> {
        Ok(Scope {
            key: key_bytes(key)?.into(),
            limit: limit.get().inner,
            py_key: key.clone().unbind(),
            py_limit: limit.clone().unbind(),
        })
    }

    /// The bucket name (`str` or `bytes`, as given; equal UTF-8 is one bucket).
    #[getter]
    fn key(&self, py: Python<'_>) -> Py<PyAny> {
        self.py_key.clone_ref(py)
    }

    /// The limit.
    #[getter]
    fn limit(&self, py: Python<'_>) -> Py<Limit> {
        self.py_limit.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Scope({}, {})",
            self.py_key.bind(py).repr()?,
            self.py_limit.get().__repr__()
        ))
    }
}

/// The result of a reserve; pass it to `settle` or `release` when the
/// request ends. Truthy when admitted.
#[pyclass(frozen, module = "fastgw._native")]
pub struct Reservation {
    table_id: u64,
    outcome: Outcome,
    scopes: Vec<Py<Scope>>,
    costs: Vec<f64>,
    settled: AtomicBool,
    /// A `LimiterTable`'s `moves` when it made this reserve: its buckets are
    /// still at `outcome.slots` while the table's count is the same.
    moves: Option<u64>,
}

#[pymethods]
impl Reservation {
    /// True when every scope took its cost.
    #[getter]
    fn admitted(&self) -> bool {
        self.outcome.admitted
    }

    /// Seconds to wait before retrying (0.0 when admitted; `inf` when a cost
    /// exceeds its limit). `Retry-After` is this rounded up.
    #[getter]
    fn retry_after(&self) -> f64 {
        self.outcome.retry_after
    }

    /// Index of the scope with the longest wait, when refused.
    #[getter]
    fn denied_index(&self) -> Option<usize> {
        self.outcome.denied
    }

    /// Per scope: the limit.
    #[getter]
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.outcome.statuses.iter().map(|s| s.limit))
    }

    /// Per scope: what is left after this request (before it, when refused).
    #[getter]
    fn remaining<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.outcome.statuses.iter().map(|s| s.remaining))
    }

    /// Per scope: seconds until back to the full limit.
    #[getter]
    fn reset_after<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.outcome.statuses.iter().map(|s| s.reset_after))
    }

    /// The `x-ratelimit-*` lines of the tightest requests scope (least
    /// remaining, the first of equals) among the scope indexes `requests`, then
    /// of the tightest tokens scope among `tokens`: each scope's `lines[i]`
    /// (its limit line), then its remaining (truncated to an integer) and
    /// reset lines. None when a figure cannot be shown exactly (the caller
    /// renders those itself); empty without scopes.
    #[pyo3(signature = (requests, tokens, lines, /))]
    fn rate_headers<'py>(
        &self,
        py: Python<'py>,
        requests: &Bound<'py, PyTuple>,
        tokens: &Bound<'py, PyTuple>,
        lines: &Bound<'py, PyTuple>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let idx = |t: &Bound<'py, PyTuple>| -> PyResult<SmallVec<[usize; 8]>> {
            t.iter().map(|i| i.extract::<usize>()).collect()
        };
        let (req, tok) = (idx(requests)?, idx(tokens)?);
        let n = self.outcome.statuses.len();
        if req.iter().chain(&tok).any(|&i| i >= n) {
            return Err(PyValueError::new_err("scope index out of range"));
        }
        let mut line_of: Vec<Option<Bound<'py, PyBytes>>> = vec![None; n];
        for &i in req.iter().chain(&tok) {
            line_of[i] = Some(lines.get_item(i)?.cast_into::<PyBytes>()?);
        }
        let out = render_rate_headers(&self.outcome, &req, &tok, |i| {
            line_of[i].as_ref().map_or(&b""[..], |b| b.as_bytes())
        });
        Ok(out.map(|o| PyBytes::new(py, &o)))
    }

    /// The costs reserved, per scope.
    #[getter]
    fn costs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.costs)
    }

    /// The scopes, in call order.
    #[getter]
    fn scopes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.scopes.iter().map(|s| s.clone_ref(py)))
    }

    /// True once settled or released.
    #[getter]
    fn settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    fn __bool__(&self) -> bool {
        self.outcome.admitted
    }

    fn __repr__(&self) -> String {
        format!(
            "<Reservation admitted={} retry_after={} scopes={}>",
            self.outcome.admitted,
            self.outcome.retry_after,
            self.scopes.len()
        )
    }
}

/// Scopes, their keys and limits, borrowed from the Python objects.
struct Args<'py> {
    scopes: Vec<Bound<'py, Scope>>,
    costs: Vec<f64>,
}

impl<'py> Args<'py> {
    fn extract(scopes: &Bound<'py, PyAny>, costs: &Bound<'py, PyAny>) -> PyResult<Args<'py>> {
        let to_scope = |o: Bound<'py, PyAny>| -> PyResult<Bound<'py, Scope>> {
            o.cast_into::<Scope>()
                .map_err(|_| PyTypeError::new_err("scopes must hold Scope objects"))
        };
        let scopes: Vec<Bound<'py, Scope>> = if let Ok(l) = scopes.cast::<PyList>() {
            l.iter().map(to_scope).collect::<PyResult<_>>()?
        } else if let Ok(t) = scopes.cast::<PyTuple>() {
            t.iter().map(to_scope).collect::<PyResult<_>>()?
        } else {
            scopes
                .try_iter()?
                .map(|o| to_scope(o?))
                .collect::<PyResult<_>>()?
        };
        Ok(Args {
            scopes,
            costs: floats(costs)?,
        })
    }

    fn keys(&self) -> SmallVec<[&[u8]; 8]> {
        self.scopes.iter().map(|s| &*s.get().key).collect()
    }

    fn limits(&self) -> SmallVec<[core::Limit; 8]> {
        self.scopes.iter().map(|s| s.get().limit).collect()
    }
}

/// A list, tuple or iterable of numbers as `f64`s.
pub(super) fn floats(obj: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    if let Ok(l) = obj.cast::<PyList>() {
        l.iter().map(|o| o.extract::<f64>()).collect()
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        t.iter().map(|o| o.extract::<f64>()).collect()
    } else {
        obj.try_iter()?.map(|o| o?.extract::<f64>()).collect()
    }
}

fn reservation(table_id: u64, args: Args<'_>, outcome: Outcome, moves: Option<u64>) -> Reservation {
    Reservation {
        table_id,
        outcome,
        scopes: args.scopes.into_iter().map(Bound::unbind).collect(),
        costs: args.costs,
        settled: AtomicBool::new(false),
        moves,
    }
}

/// The `x-ratelimit-*` lines of an outcome (see `Reservation.rate_headers`).
fn render_rate_headers<'a>(
    outcome: &Outcome,
    requests: &[usize],
    tokens: &[usize],
    line: impl Fn(usize) -> &'a [u8],
) -> Option<Vec<u8>> {
    let statuses = &outcome.statuses;
    let mut out = Vec::with_capacity(256);
    if statuses.is_empty() {
        return Some(out);
    }
    for (idx, what) in [(requests, "requests"), (tokens, "tokens")] {
        let mut best: Option<usize> = None;
        for &i in idx {
            if best.is_none_or(|b| statuses[i].remaining < statuses[b].remaining) {
                best = Some(i);
            }
        }
        let Some(i) = best else { continue };
        let status = &statuses[i];
        if !status.remaining.is_finite() || status.remaining.abs() >= 1e15 {
            return None;
        }
        out.extend_from_slice(line(i));
        #[allow(clippy::cast_possible_truncation)]
        let remaining = status.remaining as i64; // as Python's %d: toward zero
        out.extend_from_slice(b"x-ratelimit-remaining-");
        out.extend_from_slice(what.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(itoa::Buffer::new().format(remaining).as_bytes());
        out.extend_from_slice(b"\r\nx-ratelimit-reset-");
        out.extend_from_slice(what.as_bytes());
        out.extend_from_slice(b": ");
        if !crate::http::reset_duration(status.reset_after, &mut out) {
            return None;
        }
        out.extend_from_slice(b"\r\n");
    }
    Some(out)
}

/// What each scope of a plan counts.
const DIM_REQUESTS: u8 = 0;
const DIM_TOKENS: u8 = 1;
const DIM_INFLIGHT: u8 = 2;
const DIM_USD: u8 = 3;

/// A plan's scopes and what each counts (requests, tokens, in-flight, USD),
/// for `admit` and `settle_admitted`: the costs, the reservation, the
/// rate-limit header lines and the settlement in one call each.
#[pyclass(frozen, module = "fastgw._native")]
pub struct Admission {
    scopes: Vec<Py<Scope>>,
    dims: Vec<u8>,
    caps: Vec<f64>,
    requests: Vec<usize>,
    tokens: Vec<usize>,
    lines: Vec<Vec<u8>>,
}

#[pymethods]
impl Admission {
    /// `scopes`; per scope its dimension (0 requests, 1 tokens, 2 in-flight,
    /// 3 USD), the most one request reserves of it (`caps`) and its
    /// `x-ratelimit-limit-*` line.
    #[new]
    fn new(
        scopes: &Bound<'_, PyAny>,
        dims: Vec<u8>,
        caps: Vec<f64>,
        lines: Vec<Vec<u8>>,
    ) -> PyResult<Admission> {
        let args = Args::extract(scopes, &PyTuple::empty(scopes.py()))?;
        let n = args.scopes.len();
        if dims.len() != n || caps.len() != n || lines.len() != n {
            return Err(PyValueError::new_err(
                "dims, caps and lines need one entry per scope",
            ));
        }
        if dims.iter().any(|&d| d > DIM_USD) {
            return Err(PyValueError::new_err("a dimension is 0, 1, 2 or 3"));
        }
        let at = |want: u8| (0..n).filter(|&i| dims[i] == want).collect();
        Ok(Admission {
            requests: at(DIM_REQUESTS),
            tokens: at(DIM_TOKENS),
            scopes: args.scopes.into_iter().map(Bound::unbind).collect(),
            dims,
            caps,
            lines,
        })
    }

    /// The costs of a request estimated at `tokens` and `usd`: 1 per request
    /// and in-flight slot, the estimates (at most the cap) otherwise.
    fn costs(&self, tokens: f64, usd: f64) -> Vec<f64> {
        self.dims
            .iter()
            .zip(&self.caps)
            .map(|(&d, &cap)| match d {
                DIM_TOKENS => tokens.min(cap),
                DIM_USD => usd.min(cap),
                _ => 1.0,
            })
            .collect()
    }

    /// The settlement for what a request used (in-flight slots given back).
    fn actual(&self, requests: f64, tokens: f64, usd: f64) -> Vec<f64> {
        self.actual_of(requests, tokens, usd).into_vec()
    }
}

/// `admit` on any table: `reserve(keys, limits, costs)` is the table's own.
fn admit_with<'py>(
    py: Python<'py>,
    table_id: u64,
    admission: &Bound<'py, Admission>,
    tokens: f64,
    usd: f64,
    reserve: impl FnOnce(&[&[u8]], &[core::Limit], &[f64]) -> Reserved,
) -> PyResult<(Reservation, Option<Bound<'py, PyBytes>>)> {
    let a = admission.get();
    let args = a.args(py, tokens, usd);
    let (outcome, moves) =
        reserve(&args.keys(), &args.limits(), &args.costs).map_err(value_error)?;
    let head = a.headers(py, &outcome);
    Ok((reservation(table_id, args, outcome, moves), head))
}

/// A table's reserve: the outcome, and the table's `moves` when its slots can be
/// used to settle (a `LimiterTable`'s).
type Reserved = Result<(Outcome, Option<u64>), LimitError>;

impl Admission {
    fn actual_of(&self, requests: f64, tokens: f64, usd: f64) -> SmallVec<[f64; 8]> {
        self.dims
            .iter()
            .map(|&d| match d {
                DIM_REQUESTS => requests,
                DIM_TOKENS => tokens,
                DIM_INFLIGHT => 0.0,
                _ => usd,
            })
            .collect()
    }

    fn args<'py>(&self, py: Python<'py>, tokens: f64, usd: f64) -> Args<'py> {
        Args {
            scopes: self.scopes.iter().map(|s| s.bind(py).clone()).collect(),
            costs: self.costs(tokens, usd),
        }
    }

    fn headers<'py>(&self, py: Python<'py>, outcome: &Outcome) -> Option<Bound<'py, PyBytes>> {
        render_rate_headers(outcome, &self.requests, &self.tokens, |i| &self.lines[i])
            .map(|o| PyBytes::new(py, &o))
    }
}

/// Claims a reservation for settling: `Ok(false)` when there is nothing to
/// do (refused or already settled).
fn claim(r: &Reservation, table_id: u64) -> PyResult<bool> {
    if r.table_id != table_id {
        return Err(PyValueError::new_err(
            "reservation belongs to another table",
        ));
    }
    Ok(r.outcome.admitted && !r.settled.swap(true, Ordering::AcqRel))
}

/// Runs `f` on a claimed reservation's keys and limits, un-claiming it if `f`
/// fails (bad `actual_costs`).
fn settle_with(
    py: Python<'_>,
    r: &Reservation,
    table_id: u64,
    f: impl FnOnce(&[&[u8]], &[core::Limit]) -> Result<(), LimitError>,
) -> PyResult<bool> {
    if !claim(r, table_id)? {
        return Ok(false);
    }
    let scopes: SmallVec<[&Scope; 8]> = r.scopes.iter().map(|s| s.bind(py).get()).collect();
    let keys: SmallVec<[&[u8]; 8]> = scopes.iter().map(|s| &*s.key).collect();
    let limits: SmallVec<[core::Limit; 8]> = scopes.iter().map(|s| s.limit).collect();
    match f(&keys, &limits) {
        Ok(()) => Ok(true),
        Err(e) => {
            r.settled.store(false, Ordering::Release);
            Err(value_error(e))
        }
    }
}

/// Completion tokens reserved when a request sets no usable maximum.
use crate::http::DEFAULT_COMPLETION_TOKENS;

/// `(prompt, completion)` tokens a request reserves, as
/// `fastgw.limits.rules.estimate` computes them: the body's size / 4 + 1, and
/// the first truthy of `max_completion_tokens`, `max_tokens`,
/// `max_output_tokens` when it is a positive `int` (else 256; 0 for
/// embeddings). None when the sum would not be exact as a float (a maximum
/// above 2^53): the caller estimates in Python.
fn estimate(
    doc: &Bound<'_, PyDict>,
    body_len: u64,
    embeddings: bool,
) -> PyResult<Option<(u64, u64)>> {
    let prompt = body_len / 4 + 1;
    if embeddings {
        return Ok(Some((prompt, 0)));
    }
    let py = doc.py();
    let keys = [
        pyo3::intern!(py, "max_completion_tokens"),
        pyo3::intern!(py, "max_tokens"),
        pyo3::intern!(py, "max_output_tokens"),
    ];
    let mut chosen = None;
    for key in keys {
        if let Some(v) = doc.get_item(key)? {
            if v.is_truthy()? {
                chosen = Some(v);
                break;
            }
        }
    }
    let completion = match chosen {
        Some(v) if v.is_exact_instance_of::<PyInt>() => match v.extract::<i64>() {
            Ok(n) if n > 0 => n.unsigned_abs(),
            Ok(_) => DEFAULT_COMPLETION_TOKENS,
            Err(_) if v.lt(0)? => DEFAULT_COMPLETION_TOKENS,
            Err(_) => return Ok(None),
        },
        _ => DEFAULT_COMPLETION_TOKENS,
    };
    Ok(exact(prompt, completion))
}

/// `(prompt, completion)`, or None when their sum would not be exact as a float.
fn exact(prompt: u64, completion: u64) -> Option<(u64, u64)> {
    if prompt.checked_add(completion).is_none_or(|t| t > 1 << 53) {
        return None;
    }
    Some((prompt, completion))
}

/// `admit_estimated`'s answer: the reservation, its headers, the tokens and USD reserved.
type Estimated<'py> = (Reservation, Option<Bound<'py, PyBytes>>, f64, f64);

/// A request as `admit_estimated` reads it: body length, parsed document,
/// embeddings or not, input and output price per token.
type Asked<'a, 'py> = (u64, &'a Bound<'py, PyDict>, bool, f64, f64);

/// `admit_estimated` on any table (`reserve` is the table's own).
fn admit_estimated_with<'py>(
    py: Python<'py>,
    table_id: u64,
    admission: &Bound<'py, Admission>,
    (body_len, doc, embeddings, input_per_token, output_per_token): Asked<'_, 'py>,
    reserve: impl FnOnce(&[&[u8]], &[core::Limit], &[f64]) -> Reserved,
) -> PyResult<Option<Estimated<'py>>> {
    let Some(counts) = estimate(doc, body_len, embeddings)? else {
        return Ok(None);
    };
    let prices = (input_per_token, output_per_token);
    admit_counted(py, table_id, admission, counts, prices, reserve).map(Some)
}

/// A request as `admit_peeked` reads it: body length, the completion tokens
/// `peek_request` read, embeddings or not, input and output price per token.
type Peeked = (u64, u64, bool, f64, f64);

/// `admit_peeked` on any table (`reserve` is the table's own).
fn admit_peeked_with<'py>(
    py: Python<'py>,
    table_id: u64,
    admission: &Bound<'py, Admission>,
    (body_len, completion, embeddings, input_per_token, output_per_token): Peeked,
    reserve: impl FnOnce(&[&[u8]], &[core::Limit], &[f64]) -> Reserved,
) -> PyResult<Option<Estimated<'py>>> {
    let completion = if embeddings { 0 } else { completion };
    let Some(counts) = exact(body_len / 4 + 1, completion) else {
        return Ok(None);
    };
    let prices = (input_per_token, output_per_token);
    admit_counted(py, table_id, admission, counts, prices, reserve).map(Some)
}

/// `admit` of `(prompt, completion)` tokens at `(input, output)` prices per token.
fn admit_counted<'py>(
    py: Python<'py>,
    table_id: u64,
    admission: &Bound<'py, Admission>,
    (prompt, completion): (u64, u64),
    (input_per_token, output_per_token): (f64, f64),
    reserve: impl FnOnce(&[&[u8]], &[core::Limit], &[f64]) -> Reserved,
) -> PyResult<Estimated<'py>> {
    #[allow(clippy::cast_precision_loss)] // below 2^53: exact
    let (p, c) = (prompt as f64, completion as f64);
    let tokens = p + c;
    let usd = p * input_per_token + c * output_per_token;
    let (res, head) = admit_with(py, table_id, admission, tokens, usd, reserve)?;
    Ok((res, head, tokens, usd))
}

/// Many named buckets in this process; see the module stub for the contract.
#[pyclass(frozen, module = "fastgw._native")]
pub struct LimiterTable {
    id: u64,
    inner: Mutex<LocalTable>,
}

impl LimiterTable {
    fn table(&self) -> std::sync::MutexGuard<'_, LocalTable> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A reserve, with the table's `moves` after it (its slots' validity).
    fn reserve_at(
        &self,
        keys: &[&[u8]],
        limits: &[core::Limit],
        costs: &[f64],
        now: Option<f64>,
    ) -> Reserved {
        let mut table = self.table();
        let outcome = table.reserve(keys, limits, costs, now_or_clock(now))?;
        Ok((outcome, Some(table.moves())))
    }

    /// Settles a reservation of this table, at its slots while they hold.
    fn settle_reserved(
        &self,
        r: &Reservation,
        keys: &[&[u8]],
        limits: &[core::Limit],
        actual: &[f64],
        now: f64,
    ) -> Result<(), LimitError> {
        let (costs, windows) = (&r.costs, &r.outcome.windows);
        let mut table = self.table();
        match r.moves {
            Some(moves) => table.settle_at(
                keys,
                limits,
                costs,
                windows,
                actual,
                now,
                &r.outcome.slots,
                moves,
            ),
            None => table.settle(keys, limits, costs, windows, actual, now),
        }
    }
}

#[pymethods]
impl LimiterTable {
    #[new]
    #[pyo3(signature = (*, max_keys = 1_000_000))]
    fn new(max_keys: usize) -> LimiterTable {
        LimiterTable {
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            inner: Mutex::new(LocalTable::new(max_keys)),
        }
    }

    /// Admits against every scope atomically, all or none.
    #[pyo3(signature = (scopes, costs, now = None))]
    fn reserve(
        &self,
        scopes: &Bound<'_, PyAny>,
        costs: &Bound<'_, PyAny>,
        now: Option<f64>,
    ) -> PyResult<Reservation> {
        let args = Args::extract(scopes, costs)?;
        let mut table = self.table();
        let outcome = table
            .reserve(&args.keys(), &args.limits(), &args.costs, now_or_clock(now))
            .map_err(value_error)?;
        let moves = table.moves();
        drop(table);
        Ok(reservation(self.id, args, outcome, Some(moves)))
    }

    /// Corrects an admitted reservation with the real costs; True when
    /// applied, False when refused or already settled.
    #[pyo3(signature = (reservation, actual_costs, now = None))]
    fn settle(
        &self,
        py: Python<'_>,
        reservation: &Bound<'_, Reservation>,
        actual_costs: &Bound<'_, PyAny>,
        now: Option<f64>,
    ) -> PyResult<bool> {
        let r = reservation.get();
        let actual = floats(actual_costs)?;
        let now = now_or_clock(now);
        settle_with(py, r, self.id, |keys, limits| {
            self.settle_reserved(r, keys, limits, &actual, now)
        })
    }

    /// `reserve` of an admission's scopes at its costs for `tokens` and `usd`,
    /// with the reservation's `x-ratelimit-*` lines (None when they cannot be
    /// rendered exactly: the caller renders them).
    #[pyo3(signature = (admission, tokens, usd, now = None))]
    fn admit<'py>(
        &self,
        py: Python<'py>,
        admission: &Bound<'py, Admission>,
        tokens: f64,
        usd: f64,
        now: Option<f64>,
    ) -> PyResult<(Reservation, Option<Bound<'py, PyBytes>>)> {
        admit_with(
            py,
            self.id,
            admission,
            tokens,
            usd,
            |keys, limits, costs| self.reserve_at(keys, limits, costs, now),
        )
    }

    /// `admit` at the request's own estimates: `(reservation, headers, tokens,
    /// usd)`, the tokens and USD reserved computed from the body's length and its
    /// parsed document as `fastgw.limits.rules.estimate` does, priced at
    /// `input_per_token` / `output_per_token`. None (nothing reserved) when they
    /// cannot be computed exactly here: estimate in Python, then `admit`.
    #[pyo3(signature = (admission, body_len, doc, embeddings, input_per_token, output_per_token, now = None))]
    #[allow(clippy::too_many_arguments)]
    fn admit_estimated<'py>(
        &self,
        py: Python<'py>,
        admission: &Bound<'py, Admission>,
        body_len: u64,
        doc: &Bound<'py, PyDict>,
        embeddings: bool,
        input_per_token: f64,
        output_per_token: f64,
        now: Option<f64>,
    ) -> PyResult<Option<Estimated<'py>>> {
        let req = (body_len, doc, embeddings, input_per_token, output_per_token);
        admit_estimated_with(py, self.id, admission, req, |keys, limits, costs| {
            self.reserve_at(keys, limits, costs, now)
        })
    }

    /// `admit_estimated` of a body read by `peek_request`: its length and the
    /// completion tokens the peek found stand for the document.
    #[pyo3(signature = (admission, body_len, completion, embeddings, input_per_token, output_per_token, now = None))]
    #[allow(clippy::too_many_arguments)]
    fn admit_peeked<'py>(
        &self,
        py: Python<'py>,
        admission: &Bound<'py, Admission>,
        body_len: u64,
        completion: u64,
        embeddings: bool,
        input_per_token: f64,
        output_per_token: f64,
        now: Option<f64>,
    ) -> PyResult<Option<Estimated<'py>>> {
        let req = (
            body_len,
            completion,
            embeddings,
            input_per_token,
            output_per_token,
        );
        admit_peeked_with(py, self.id, admission, req, |keys, limits, costs| {
            self.reserve_at(keys, limits, costs, now)
        })
    }

    /// `settle` with the admission's settlement for `requests`, `tokens` and
    /// `usd` used.
    #[pyo3(signature = (reservation, admission, requests, tokens, usd, now = None))]
    #[allow(clippy::too_many_arguments)]
    fn settle_admitted(
        &self,
        py: Python<'_>,
        reservation: &Bound<'_, Reservation>,
        admission: &Bound<'_, Admission>,
        requests: f64,
        tokens: f64,
        usd: f64,
        now: Option<f64>,
    ) -> PyResult<bool> {
        let r = reservation.get();
        let actual = admission.get().actual_of(requests, tokens, usd);
        let now = now_or_clock(now);
        settle_with(py, r, self.id, |keys, limits| {
            self.settle_reserved(r, keys, limits, &actual, now)
        })
    }

    /// Gives back everything reserved (error or cancel).
    #[pyo3(signature = (reservation, now = None))]
    fn release(
        &self,
        py: Python<'_>,
        reservation: &Bound<'_, Reservation>,
        now: Option<f64>,
    ) -> PyResult<bool> {
        let r = reservation.get();
        let zeros = vec![0.0; r.costs.len()];
        let now = now_or_clock(now);
        settle_with(py, r, self.id, |keys, limits| {
            self.settle_reserved(r, keys, limits, &zeros, now)
        })
    }

    /// Drops every idle bucket; returns how many.
    #[pyo3(signature = (now = None))]
    fn evict_idle(&self, now: Option<f64>) -> usize {
        self.table().evict_idle(now_or_clock(now))
    }

    /// Buckets evicted while busy because `max_keys` was reached.
    #[getter]
    fn evicted_busy(&self) -> u64 {
        self.table().evicted_busy()
    }

    /// `(level, stamp)` of `key`'s bucket as stored, or None.
    fn peek(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<(f64, f64)>> {
        Ok(self
            .table()
            .peek(key_bytes(key)?)
            .map(|(_, s)| (s.level, s.stamp)))
    }

    fn __len__(&self) -> usize {
        self.table().len()
    }
}

/// A limiter table in shared memory, shared by forked children (anonymous)
/// or by every process opening the same path.
#[pyclass(frozen, module = "fastgw._native")]
pub struct SharedLimiterTable {
    id: u64,
    inner: ShmTable,
    path: Option<PathBuf>,
}

#[pymethods]
impl SharedLimiterTable {
    #[new]
    #[pyo3(signature = (path = None, *, slots = 65_536))]
    fn new(path: Option<PathBuf>, slots: usize) -> PyResult<SharedLimiterTable> {
        let inner = match &path {
            Some(p) => ShmTable::open(p, slots),
            None => ShmTable::anonymous(slots),
        }
        .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(SharedLimiterTable {
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            inner,
            path,
        })
    }

    /// As `LimiterTable.reserve` (at most 16 scopes per call).
    #[pyo3(signature = (scopes, costs, now = None))]
    fn reserve(
        &self,
        scopes: &Bound<'_, PyAny>,
        costs: &Bound<'_, PyAny>,
        now: Option<f64>,
    ) -> PyResult<Reservation> {
        let args = Args::extract(scopes, costs)?;
        let outcome = self
            .inner
            .reserve(&args.keys(), &args.limits(), &args.costs, now_or_clock(now))
            .map_err(value_error)?;
        Ok(reservation(self.id, args, outcome, None))
    }

    /// As `LimiterTable.settle`.
    #[pyo3(signature = (reservation, actual_costs, now = None))]
    fn settle(
        &self,
        py: Python<'_>,
        reservation: &Bound<'_, Reservation>,
        actual_costs: &Bound<'_, PyAny>,
        now: Option<f64>,
    ) -> PyResult<bool> {
        let r = reservation.get();
        let actual = floats(actual_costs)?;
        let now = now_or_clock(now);
        settle_with(py, r, self.id, |keys, limits| {
            self.inner
                .settle(keys, limits, &r.costs, &r.outcome.windows, &actual, now)
        })
    }

    /// As `LimiterTable.admit`.
    #[pyo3(signature = (admission, tokens, usd, now = None))]
    fn admit<'py>(
        &self,
        py: Python<'py>,
        admission: &Bound<'py, Admission>,
        tokens: f64,
        usd: f64,
        now: Option<f64>,
    ) -> PyResult<(Reservation, Option<Bound<'py, PyBytes>>)> {
        admit_with(
            py,
            self.id,
            admission,
            tokens,
            usd,
            |keys, limits, costs| {
                Ok((
                    self.inner.reserve(keys, limits, costs, now_or_clock(now))?,
                    None,
                ))
            },
        )
    }

    /// As `LimiterTable.admit_estimated`.
    #[pyo3(signature = (admission, body_len, doc, embeddings, input_per_token, output_per_token, now = None))]
    #[allow(clippy::too_many_arguments)]
    fn admit_estimated<'py>(
        &self,
        py: Python<'py>,
        admission: &Bound<'py, Admission>,
        body_len: u64,
        doc: &Bound<'py, PyDict>,
        embeddings: bool,
        input_per_token: f64,
        output_per_token: f64,
        now: Option<f64>,
    ) -> PyResult<Option<Estimated<'py>>> {
        let req = (body_len, doc, embeddings, input_per_token, output_per_token);
        admit_estimated_with(py, self.id, admission, req, |keys, limits, costs| {
            Ok((
                self.inner.reserve(keys, limits, costs, now_or_clock(now))?,
                None,
            ))
        })
    }

    /// As `LimiterTable.admit_peeked`.
    #[pyo3(signature = (admission, body_len, completion, embeddings, input_per_token, output_per_token, now = None))]
    #[allow(clippy::too_many_arguments)]
    fn admit_peeked<'py>(
        &self,
        py: Python<'py>,
        admission: &Bound<'py, Admission>,
        body_len: u64,
        completion: u64,
        embeddings: bool,
        input_per_token: f64,
        output_per_token: f64,
        now: Option<f64>,
    ) -> PyResult<Option<Estimated<'py>>> {
        let req = (
            body_len,
            completion,
            embeddings,
            input_per_token,
            output_per_token,
        );
        admit_peeked_with(py, self.id, admission, req, |keys, limits, costs| {
            Ok((
                self.inner.reserve(keys, limits, costs, now_or_clock(now))?,
                None,
            ))
        })
    }

    /// As `LimiterTable.settle_admitted`.
    #[pyo3(signature = (reservation, admission, requests, tokens, usd, now = None))]
    #[allow(clippy::too_many_arguments)]
    fn settle_admitted(
        &self,
        py: Python<'_>,
        reservation: &Bound<'_, Reservation>,
        admission: &Bound<'_, Admission>,
        requests: f64,
        tokens: f64,
        usd: f64,
        now: Option<f64>,
    ) -> PyResult<bool> {
        let r = reservation.get();
        let actual = admission.get().actual_of(requests, tokens, usd);
        let now = now_or_clock(now);
        settle_with(py, r, self.id, |keys, limits| {
            self.inner
                .settle(keys, limits, &r.costs, &r.outcome.windows, &actual, now)
        })
    }

    /// As `LimiterTable.release`.
    #[pyo3(signature = (reservation, now = None))]
    fn release(
        &self,
        py: Python<'_>,
        reservation: &Bound<'_, Reservation>,
        now: Option<f64>,
    ) -> PyResult<bool> {
        let r = reservation.get();
        let zeros = vec![0.0; r.costs.len()];
        let now = now_or_clock(now);
        settle_with(py, r, self.id, |keys, limits| {
            self.inner
                .settle(keys, limits, &r.costs, &r.outcome.windows, &zeros, now)
        })
    }

    /// Frees every idle bucket; returns how many.
    #[pyo3(signature = (now = None))]
    fn evict_idle(&self, now: Option<f64>) -> PyResult<usize> {
        self.inner
            .evict_idle(now_or_clock(now))
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Makes a region kept in a file usable again after a restart: a new lock,
    /// and every concurrency counter freed (rate and budget buckets kept).
    /// Only while no other process uses the region. Returns the counters freed.
    fn recover(&self) -> PyResult<usize> {
        // SAFETY: the caller's contract (documented): the region's only user.
        unsafe { self.inner.recover() }.map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Writes the region's changed pages to its file and waits for the disk.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.flush())
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Most buckets the region holds.
    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// The backing file, or None for an anonymous region.
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.path.clone()
    }

    fn __len__(&self) -> PyResult<usize> {
        self.inner
            .len()
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }
}
