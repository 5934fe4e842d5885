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

/// Whether a byte must be escaped inside a JSON string.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The index of the first byte of `bytes` that must be escaped, eight bytes at a
/// time (a control character, `"` or `\`), or `bytes.len()`.
fn clean_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i..i + 8]);
        let w = u64::from_le_bytes(word);
        // A byte below 0x20, or equal to '"' or '\\' (a zero byte after xor), sets
        // its high bit here; a byte at 0x80 or above never does (`& !w`).
        let below = w.wrapping_sub(ONES * 0x20);
        let quote = w ^ (ONES * u64::from(b'"'));
        let slash = w ^ (ONES * u64::from(b'\\'));
        let hits = (below | quote.wrapping_sub(ONES) | slash.wrapping_sub(ONES)) & !w & HIGHS;
        if hits != 0 {
            break; // the exact byte is found below (borrows may flag a later one)
        }
        i += 8;
    }
    i + bytes[i..]
        .iter()
        .position(|&b| needs_escape(b))
        .unwrap_or(bytes.len() - i)
}

/// Bytes of valid UTF-8 as the inside of a JSON string: runs that need no
/// escape copied whole (bytes of multi-byte characters never do).
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = bytes;
    loop {
        let n = clean_prefix(rest);
        out.extend_from_slice(&rest[..n]);
        let Some((&b, tail)) = rest[n..].split_first() else {
            return;
        };
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
        rest = tail;
    }
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
        out.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

fn integer(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Seconds as milliseconds cut to the microsecond (Python:
/// `int(s * 1_000_000.0) / 1000.0`).
#[must_use]
pub fn ms(seconds: f64) -> f64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let micros = (seconds * 1_000_000.0).trunc() as i64 as f64;
    micros / 1000.0
}

/// [`ms`] written as JSON. A whole number of microseconds is written as its
/// decimal digits (`12.345`, `7.0`): read back, that is the float [`ms`] gives
/// (the quotient of an exact integer by 1000, correctly rounded), without
/// formatting a float.
fn ms_number(out: &mut Vec<u8>, seconds: f64) {
    let micros = (seconds * 1_000_000.0).trunc();
    if !(0.0..1e15).contains(&micros) {
        number(out, ms(seconds));
        return;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    crate::num::write_thousandths(out, micros as u64, true);
}

/// `x` rounded to 8 decimals, as Python's `round(x, 8)`.
#[must_use]
pub fn round8(x: f64) -> f64 {
    crate::num::round_decimals(x, 8)
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
    out.extend_from_slice(b",\"status\":");
    integer(out, line.status);
    out.extend_from_slice(if line.stream {
        b",\"stream\":true,\"attempts\":"
    } else {
        b",\"stream\":false,\"attempts\":"
    });
    integer(out, line.attempts);
    out.extend_from_slice(b",\"latency_ms\":");
    ms_number(out, line.latency_s);
    out.extend_from_slice(b",\"ttfb_ms\":");
    if line.ttfb_s >= 0.0 {
        ms_number(out, line.ttfb_s);
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"overhead_ms\":");
    ms_number(out, line.overhead_s);
    match line.usage {
        Some((tin, tout, cost)) => {
            out.extend_from_slice(b",\"tokens_in\":");
            integer(out, tin);
            out.extend_from_slice(b",\"tokens_out\":");
            integer(out, tout);
            out.extend_from_slice(b",\"cost_usd\":");
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

    #[test]
    #[allow(clippy::float_cmp)] // exact on purpose: the float the reference gives
    fn milliseconds_read_back_as_ms_gives() {
        let mut s = 1e-7_f64;
        while s < 1e7 {
            for v in [s, s * 1.000_000_3, s + 0.000_5, 0.0, 1e-6, 0.001, 2.5] {
                let mut out = Vec::new();
                ms_number(&mut out, v);
                let text = std::str::from_utf8(&out).unwrap();
                assert_eq!(text.parse::<f64>().unwrap(), ms(v), "{v} -> {text}");
                assert!(text.contains('.'), "{text}");
            }
            s *= 1.003_1;
        }
        let mut out = Vec::new();
        ms_number(&mut out, -0.25);
        assert_eq!(out, b"-250.0");
    }

    #[test]
    fn escapes_match_the_byte_by_byte_rule() {
        let reference = |bytes: &[u8]| -> Vec<u8> {
            let mut out = Vec::new();
            for &b in bytes {
                if needs_escape(b) {
                    escaped(&mut out, &[b]);
                } else {
                    out.push(b);
                }
            }
            out
        };
        let alphabet = [
            b'a', b'"', b'\\', 0x01, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xa9, b'\n', b'!',
        ];
        let mut seed = 0x9e37_79b9_u32;
        for len in 0..40 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        alphabet[seed as usize % alphabet.len()]
                    })
                    .collect();
                let mut got = Vec::new();
                escaped(&mut got, &bytes);
                assert_eq!(got, reference(&bytes), "{bytes:?}");
            }
        }
    }
}
