//! `access_line`: one access-log line (see `crate::accesslog`).
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::accesslog::{render, Line};

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
