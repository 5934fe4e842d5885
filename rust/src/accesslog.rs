//! One access-log line: a JSON object rendered straight into bytes.
//!
//! The fields, in order: `time`, `request_id`, `key`, `client_ip`, `method`
//! (always `POST`: the proxy serves POST only), `path`, `model`,
//! `served_model`, `route`, `variant`, `provider`, `status`, `stream`,
//! `attempts`, `latency_ms`, `ttfb_ms`, `overhead_ms`, `tokens_in`,
//! `tokens_out`, `cost_usd`, `cache` (null for a model without one), and `error` when there
//! is one. Durations are given in seconds and written in milliseconds cut to
//! the microsecond; the cost is rounded to 8 decimals (as Python's `round`);
//! absent values are `null`. The pure-Python reference is
//! `fastgw/_reference/accesslog.py`.

use std::io::Write;

/// What one line says about one request.
#[derive(Debug, Clone, Default)]
pub struct Line<'a> {
    /// Seconds since the epoch.
    pub time: f64,
    /// The request id (bytes, read as latin-1).
    pub request_id: &'a [u8],
    /// The caller's key name.
    pub key: Option<&'a str>,
    /// The client's address.
    pub client_ip: &'a str,
    /// The request path (bytes, read as latin-1).
    pub path: &'a [u8],
    /// The model asked for (None when empty).
    pub model: Option<&'a str>,
    /// The deployment that served.
    pub served_model: Option<&'a str>,
    /// The model (route) that served.
    pub route: Option<&'a str>,
    /// The variant chosen.
    pub variant: Option<&'a str>,
    /// The provider that served.
    pub provider: Option<&'a str>,
    /// The status answered.
    pub status: i64,
    /// Whether the answer was a stream.
    pub stream: bool,
    /// Upstream attempts.
    pub attempts: i64,
    /// Seconds from request to answer's end.
    pub latency_s: f64,
    /// Seconds to the upstream's first byte (negative: none).
    pub ttfb_s: f64,
    /// Seconds spent in the gateway.
    pub overhead_s: f64,
    /// Token counts and cost, when the usage is known.
    pub usage: Option<(i64, i64, f64)>,
    /// The error, when the request failed.
    pub error: Option<&'a str>,
    /// The cache's verdict (hit, miss, bypass), for a model with a cache.
    pub cache: Option<&'a str>,
}

/// Bytes of valid UTF-8 as the inside of a JSON string: runs that need no
/// escape copied whole (bytes of multi-byte characters never do).
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaped(out, s.as_bytes());
    out.push(b'"');
}

fn latin1(out: &mut Vec<u8>, b: &[u8]) {
    if b.is_ascii() {
        out.push(b'"');
        escaped(out, b); // ASCII is UTF-8 already
        out.push(b'"');
    } else {
        let s: String = b.iter().map(|&c| char::from(c)).collect();
        string(out, &s);
    }
}

fn opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A float as JSON: the shortest text that reads back as the same value.
fn number(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        let _ = write!(out, "{x:?}");
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Seconds as milliseconds cut to the microsecond (Python:
/// `int(s * 1_000_000.0) / 1000.0`).
#[must_use]
pub fn ms(seconds: f64) -> f64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let micros = (seconds * 1_000_000.0).trunc() as i64 as f64;
    micros / 1000.0
}

/// `x` rounded to 8 decimals, as Python's `round(x, 8)`.
#[must_use]
pub fn round8(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.8}").parse().unwrap_or(x)
}

/// Appends `line` as one JSON object and a newline.
pub fn render(out: &mut Vec<u8>, line: &Line<'_>) {
    out.extend_from_slice(b"{\"time\":");
    number(out, line.time);
    out.extend_from_slice(b",\"request_id\":");
    latin1(out, line.request_id);
    out.extend_from_slice(b",\"key\":");
    opt(out, line.key);
    out.extend_from_slice(b",\"client_ip\":");
    string(out, line.client_ip);
    out.extend_from_slice(b",\"method\":\"POST\",\"path\":");
    latin1(out, line.path);
    for (name, value) in [
        (&b",\"model\":"[..], line.model),
        (b",\"served_model\":", line.served_model),
        (b",\"route\":", line.route),
        (b",\"variant\":", line.variant),
        (b",\"provider\":", line.provider),
    ] {
        out.extend_from_slice(name);
        opt(out, value);
    }
    let _ = write!(
        out,
        ",\"status\":{},\"stream\":{},\"attempts\":{},\"latency_ms\":",
        line.status, line.stream, line.attempts
    );
    number(out, ms(line.latency_s));
    out.extend_from_slice(b",\"ttfb_ms\":");
    if line.ttfb_s >= 0.0 {
        number(out, ms(line.ttfb_s));
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"overhead_ms\":");
    number(out, ms(line.overhead_s));
    match line.usage {
        Some((tin, tout, cost)) => {
            let _ = write!(
                out,
                ",\"tokens_in\":{tin},\"tokens_out\":{tout},\"cost_usd\":"
            );
            number(out, round8(cost));
        }
        None => out.extend_from_slice(b",\"tokens_in\":null,\"tokens_out\":null,\"cost_usd\":null"),
    }
    out.extend_from_slice(b",\"cache\":");
    match line.cache {
        Some(c) => string(out, c),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(e) = line.error {
        out.extend_from_slice(b",\"error\":");
        string(out, e);
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_json() {
        let mut out = Vec::new();
        render(
            &mut out,
            &Line {
                time: 1.5,
                request_id: b"req_1",
                key: Some("team \"a\"\n"),
                client_ip: "127.0.0.1",
                path: b"/v1/chat/completions",
                model: Some("m\u{e9}"),
                status: 200,
                attempts: 1,
                latency_s: 0.001_234_567,
                ttfb_s: -1.0,
                usage: Some((3, 5, 1.234_567_891_23e-6)),
                error: Some("x\u{1}"),
                cache: Some("hit"),
                ..Line::default()
            },
        );
        let text = String::from_utf8(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["key"], "team \"a\"\n");
        assert_eq!(v["model"], "m\u{e9}");
        assert_eq!(v["latency_ms"], 1.234);
        assert_eq!(v["ttfb_ms"], serde_json::Value::Null);
        assert_eq!(v["cost_usd"], 1.23e-6);
        assert_eq!(v["error"], "x\u{1}");
        assert_eq!(v["cache"], "hit");
        assert_eq!(v["variant"], serde_json::Value::Null);
        assert!(text.ends_with("}\n"));
    }
}
