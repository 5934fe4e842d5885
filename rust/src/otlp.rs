//! OTLP span encoding: finished requests (their own span and one span per
//! upstream attempt) serialized as one `ExportTraceServiceRequest`, with the
//! message types of the `opentelemetry-proto` crate (prost).
//!
//! The specification is `fastgw/_reference/otlp.py` (the same spans built field
//! by field with the Python `opentelemetry-proto` classes); the tests compare the
//! two once decoded, span for span and attribute for attribute. A span's
//! attributes come in a fixed order: the ones that describe the request's kind
//! first, then the ones that differ from request to request.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use std::borrow::Cow;
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One upstream attempt, as its span will say.
#[derive(Debug, Clone, Default)]
pub struct AttemptRec<'a> {
    /// The attempt's span id.
    pub span_id: u64,
    /// The provider's configured name.
    pub provider: Cow<'a, str>,
    /// The provider's kind (openai, azure, anthropic, openai-compatible).
    pub kind: Cow<'a, str>,
    /// The deployment asked for upstream.
    pub model: Cow<'a, str>,
    /// The gateway's model tried (asked, variant, fallback).
    pub route: Cow<'a, str>,
    /// When it was sent (`perf_counter` seconds; 0: never sent).
    pub start: f64,
    /// When it ended (0: when the request did).
    pub end: f64,
    /// Why it failed, when it did.
    pub error: Option<Cow<'a, str>>,
    /// The upstream's status when it answered one (0: none).
    pub status: i64,
}

/// One sampled request: its trace, its span's fields and its attempts.
#[derive(Debug, Clone, Default)]
pub struct TraceRec<'a> {
    /// The trace id (128 bits).
    pub trace_id: u128,
    /// The client's span (0: this request started the trace).
    pub parent_id: u64,
    /// The request's span id.
    pub span_id: u64,
    /// The upstream attempts, in order.
    pub attempts: Vec<AttemptRec<'a>>,
    /// Received (`perf_counter` seconds).
    pub start: f64,
    /// Answered (`perf_counter` seconds).
    pub finished: f64,
    /// The status sent to the client (0: none).
    pub status: i64,
    /// The error the client got, when it got one.
    pub error: Option<Cow<'a, str>>,
    /// The request's method.
    pub method: Cow<'a, str>,
    /// The request's path.
    pub path: Cow<'a, str>,
    /// The client endpoint (chat, completions, embeddings, responses, messages).
    pub endpoint: Cow<'a, str>,
    /// The model the client asked for ("" when none).
    pub asked: Cow<'a, str>,
    /// The model of the gateway that served ("" when none).
    pub served: Cow<'a, str>,
    /// The deployment that answered ("" when none).
    pub response_model: Cow<'a, str>,
    /// The provider that answered ("" when none).
    pub provider: Cow<'a, str>,
    /// The caller's key or subject name.
    pub key: Option<Cow<'a, str>>,
    /// The response cache's result.
    pub cache: Option<Cow<'a, str>>,
    /// The variant that served.
    pub variant: Option<Cow<'a, str>>,
    /// The request's id.
    pub request_id: Cow<'a, str>,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// (input, output) tokens, when known.
    pub tokens: Option<(i64, i64)>,
    /// The gateway's own time (seconds).
    pub overhead_s: f64,
    /// Time to the first token (seconds; negative: none).
    pub ttft_s: f64,
}

/// `gen_ai.system` (and `gen_ai.provider.name`) of a provider kind.
#[must_use]
pub fn system(kind: &str) -> &'static str {
    match kind {
        "openai" => "openai",
        "azure" => "az.ai.openai",
        "anthropic" => "anthropic",
        _ => "_OTHER",
    }
}

/// `gen_ai.operation.name` of a client endpoint (the endpoint itself when unknown).
#[must_use]
pub fn operation(endpoint: &str) -> &str {
    match endpoint {
        "chat" | "responses" | "messages" => "chat",
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        other => other,
    }
}

/// Unix nanoseconds of a `perf_counter` reading, as Python's `int((t + epoch) * 1e9)`
/// (truncated; the times are after 1970).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn ns(t: f64, epoch: f64) -> u64 {
    ((t + epoch) * 1e9) as u64
}

/// `round(x, 3)` as Python computes it (see [`crate::num::round_decimals`]).
#[must_use]
pub fn round3(x: f64) -> f64 {
    crate::num::round_decimals(x, 3)
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.to_owned()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn error_status(message: String) -> Status {
    Status {
        message,
        code: StatusCode::Error as i32,
    }
}

/// The request span's constant part: what every request of its kind shares (name,
/// kind, the attributes that describe the kind, the status code of an error).
fn request_const(t: &TraceRec) -> Span {
    let op = operation(&t.endpoint);
    let mut a = Vec::with_capacity(18);
    a.push(s("gen_ai.operation.name", op));
    if let Some(last) = t.attempts.last() {
        let sys = system(&last.kind);
        a.push(s("gen_ai.system", sys));
        a.push(s("gen_ai.provider.name", sys));
    }
    if !t.asked.is_empty() {
        a.push(s("gen_ai.request.model", &t.asked));
    }
    if !t.response_model.is_empty() {
        a.push(s("gen_ai.response.model", &t.response_model));
    }
    a.push(s("http.request.method", &t.method));
    a.push(s("url.path", &t.path));
    a.push(i("http.response.status_code", t.status));
    if let Some(key) = &t.key {
        a.push(s("fastgw.key", key));
    }
    if !t.served.is_empty() {
        a.push(s("fastgw.model", &t.served));
    }
    if !t.provider.is_empty() {
        a.push(s("fastgw.provider", &t.provider));
    }
    if let Some(variant) = &t.variant {
        a.push(s("fastgw.variant", variant));
    }
    if let Some(cache) = &t.cache {
        a.push(s("fastgw.cache", cache));
    }
    a.push(i("fastgw.attempts", count(t.attempts.len())));
    a.push(kv("fastgw.stream", Value::BoolValue(t.stream)));
    let mut status = None;
    if t.error.is_some() {
        let kind = if t.status >= 400 {
            t.status.to_string()
        } else {
            "error".to_owned()
        };
        a.push(s("error.type", &kind));
        status = Some(error_status(String::new()));
    }
    let name = if t.asked.is_empty() {
        format!("{} {}", t.method, t.path)
    } else {
        format!("{op} {}", t.asked)
    };
    Span {
        name,
        kind: SpanKind::Server as i32,
        attributes: a,
        status,
        ..Default::default()
    }
}

/// What keys the request span's constant part: every input of [`request_const`].
fn request_key(t: &TraceRec, out: &mut Vec<u8>) {
    out.clear();
    for part in [
        &*t.endpoint,
        t.attempts.last().map_or("", |a| &*a.kind),
        &*t.asked,
        &*t.response_model,
        &*t.method,
        &*t.path,
        &*t.served,
        &*t.provider,
    ] {
        put_str(out, part);
    }
    for part in [&t.key, &t.variant, &t.cache] {
        put_opt(out, part.as_deref());
    }
    out.extend_from_slice(&t.status.to_le_bytes());
    out.extend_from_slice(&(t.attempts.len() as u64).to_le_bytes());
    out.push(u8::from(t.stream) | (u8::from(t.error.is_some()) << 1));
}

/// A value of an attribute of a span's own part.
#[derive(Clone, Copy)]
enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
}

/// Sets attribute `n` of `attrs` (at most one past its end) to `key` = `value`,
/// reusing what is there: the key when it is the same, a string value's buffer.
fn put(attrs: &mut Vec<KeyValue>, n: usize, key: &str, value: Val<'_>) {
    if n == attrs.len() {
        attrs.push(KeyValue {
            key: key.to_owned(),
            ..Default::default()
        });
    } else if attrs[n].key != key {
        attrs[n].key.clear();
        attrs[n].key.push_str(key);
    }
    let slot = &mut attrs[n].value.get_or_insert_with(AnyValue::default).value;
    match value {
        Val::Str(v) => {
            if let Some(Value::StringValue(buf)) = slot {
                buf.clear();
                buf.push_str(v);
            } else {
                *slot = Some(Value::StringValue(v.to_owned()));
            }
        }
        Val::Int(v) => *slot = Some(Value::IntValue(v)),
        Val::Double(v) => *slot = Some(Value::DoubleValue(v)),
    }
}

fn set_bytes(field: &mut Vec<u8>, value: &[u8]) {
    field.clear();
    field.extend_from_slice(value);
}

/// The request span's own part, written over `own` (whose buffers are reused from
/// span to span): ids, times, and the attributes that differ from request to
/// request (they follow the constant ones).
fn request_own(t: &TraceRec, epoch: f64, own: &mut Span) {
    let a = &mut own.attributes;
    let mut n = 0;
    if let Some((input, output)) = t.tokens {
        put(a, 0, "gen_ai.usage.input_tokens", Val::Int(input));
        put(a, 1, "gen_ai.usage.output_tokens", Val::Int(output));
        n = 2;
    }
    put(a, n, "fastgw.request_id", Val::Str(&t.request_id));
    let overhead = round3(t.overhead_s * 1000.0);
    put(a, n + 1, "fastgw.overhead_ms", Val::Double(overhead));
    n += 2;
    if t.ttft_s >= 0.0 {
        put(a, n, "fastgw.ttft_ms", Val::Double(round3(t.ttft_s * 1000.0)));
        n += 1;
    }
    a.truncate(n);
    set_bytes(&mut own.trace_id, &t.trace_id.to_be_bytes());
    set_bytes(&mut own.span_id, &t.span_id.to_be_bytes());
    if t.parent_id == 0 {
        own.parent_span_id.clear();
    } else {
        set_bytes(&mut own.parent_span_id, &t.parent_id.to_be_bytes());
    }
    own.start_time_unix_nano = ns(t.start, epoch);
    own.end_time_unix_nano = ns(t.finished, epoch);
    own.status = t.error.as_ref().map(|e| Status {
        message: e.to_string(),
        code: 0, // the constant part's
    });
}

/// How an attempt ended, for its span: it answered the request (the last one, not
/// failed itself; a stream's failure after its first content is the request's),
/// it failed, or neither (an earlier attempt that was given up without a failure).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Answered,
    Failed,
    Neither,
}

fn mode(at: &AttemptRec, last: bool) -> Mode {
    match (&at.error, last) {
        (Some(_), _) => Mode::Failed,
        (None, true) => Mode::Answered,
        (None, false) => Mode::Neither,
    }
}

fn attempt_const(t: &TraceRec, at: &AttemptRec, n: usize, mode: Mode) -> Span {
    let op = operation(&t.endpoint);
    let sys = system(&at.kind);
    let mut a = Vec::with_capacity(10);
    a.push(s("gen_ai.operation.name", op));
    a.push(s("gen_ai.system", sys));
    a.push(s("gen_ai.provider.name", sys));
    a.push(s("gen_ai.request.model", &at.model));
    a.push(s("fastgw.provider", &at.provider));
    a.push(s("fastgw.model", &at.route));
    a.push(i("fastgw.attempt", count(n + 1)));
    let mut status = None;
    match mode {
        Mode::Answered => {
            a.push(s("gen_ai.response.model", &at.model));
            if t.status != 0 {
                let code = if at.status != 0 { at.status } else { t.status };
                a.push(i("http.response.status_code", code));
            }
            if t.error.is_some() {
                status = Some(error_status(String::new()));
            }
        }
        Mode::Failed => {
            let error = at.error.as_deref().unwrap_or_default();
            if at.status != 0 {
                a.push(i("http.response.status_code", at.status));
            }
            a.push(s("error.type", error));
            status = Some(error_status(format!("attempt failed: {error}")));
        }
        Mode::Neither => {}
    }
    Span {
        name: format!("{op} {}", at.model),
        kind: SpanKind::Client as i32,
        attributes: a,
        status,
        ..Default::default()
    }
}

fn attempt_key(t: &TraceRec, at: &AttemptRec, n: usize, mode: Mode, out: &mut Vec<u8>) {
    out.clear();
    for part in [&t.endpoint, &at.kind, &at.model, &at.provider, &at.route] {
        put_str(out, part);
    }
    out.extend_from_slice(&(n as u64).to_le_bytes());
    match mode {
        Mode::Answered => {
            out.push(0);
            let code = if t.status == 0 {
                0
            } else if at.status != 0 {
                at.status
            } else {
                t.status
            };
            out.extend_from_slice(&code.to_le_bytes());
            out.push(u8::from(t.error.is_some()));
        }
        Mode::Failed => {
            out.push(1);
            out.extend_from_slice(&at.status.to_le_bytes());
            put_str(out, at.error.as_deref().unwrap_or_default());
        }
        Mode::Neither => out.push(2),
    }
}

/// An attempt span's own part, written over `own` (see [`request_own`]).
fn attempt_own(t: &TraceRec, at: &AttemptRec, mode: Mode, epoch: f64, own: &mut Span) {
    let a = &mut own.attributes;
    let mut n = 0;
    own.status = None;
    if mode == Mode::Answered {
        if let Some((input, output)) = t.tokens {
            put(a, 0, "gen_ai.usage.input_tokens", Val::Int(input));
            put(a, 1, "gen_ai.usage.output_tokens", Val::Int(output));
            n = 2;
        }
        own.status = t.error.as_ref().map(|e| Status {
            message: e.to_string(),
            code: 0, // the constant part's
        });
    }
    a.truncate(n);
    // 0.0 (exactly: never set) stands for "not recorded".
    let end = if at.end == 0.0 { t.finished } else { at.end };
    let start = if at.start == 0.0 { end } else { at.start };
    set_bytes(&mut own.trace_id, &t.trace_id.to_be_bytes());
    set_bytes(&mut own.span_id, &at.span_id.to_be_bytes());
    set_bytes(&mut own.parent_span_id, &t.span_id.to_be_bytes());
    own.start_time_unix_nano = ns(start, epoch);
    own.end_time_unix_nano = ns(end, epoch);
}

fn put_str(out: &mut Vec<u8>, part: &str) {
    out.extend_from_slice(&(part.len() as u64).to_le_bytes());
    out.extend_from_slice(part.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, part: Option<&str>) {
    match part {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            put_str(out, p);
        }
    }
}

// Field numbers of the OTLP messages (opentelemetry/proto/collector/trace/v1 and
// trace/v1): the outer messages are written as a message without its repeated
// field followed by that field's elements, each with prost's own field encoding.
const REQUEST_RESOURCE_SPANS: u32 = 1; // ExportTraceServiceRequest.resource_spans
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2; // ResourceSpans.scope_spans
const SCOPE_SPANS_SPANS: u32 = 2; // ScopeSpans.spans

/// A length-delimited field `tag` holding `len` bytes: its key and length.
fn frame(tag: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// Constant parts kept (each map emptied when it reaches this: a bound never
/// reached by a configuration's routes, keys and statuses).
pub const CACHE_MAX: usize = 4096;

/// The span encoder of one exporter: it keeps the serialized constant part of each
/// kind of span, so that a span costs its own part (ids, times, a few numbers).
///
/// A span is its kind's constant part followed by its own part, by protobuf's merge
/// rule (a message's serialization followed by another's parses as the two merged,
/// repeated fields appended): attributes come constant ones first, then the span's
/// own, as the reference builds them.
#[derive(Default)]
pub struct Encoder {
    requests: HashMap<Vec<u8>, Vec<u8>>,
    attempts: HashMap<Vec<u8>, Vec<u8>>,
    key: Vec<u8>,
    own: Span,
    spans: Vec<u8>,
    count: usize,
}

fn kept<'a>(
    map: &'a mut HashMap<Vec<u8>, Vec<u8>>,
    key: &[u8],
    make: impl FnOnce() -> Span,
) -> &'a [u8] {
    if !map.contains_key(key) {
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(key.to_vec(), make().encode_to_vec());
    }
    &map[key]
}

impl Encoder {
    /// An encoder with nothing kept yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Constant parts kept (requests, attempts).
    #[must_use]
    pub fn kept(&self) -> (usize, usize) {
        (self.requests.len(), self.attempts.len())
    }

    /// Encodes one trace at once, appending it to the spans kept for [`Self::take`]:
    /// its request span (SERVER, the client's span as parent) and one span per
    /// attempt (CLIENT, the request span as parent). `epoch` turns `perf_counter`
    /// readings into Unix time. The spans kept so far, counted.
    pub fn add(&mut self, t: &TraceRec, epoch: f64) -> usize {
        let spans = &mut self.spans;
        let key = &mut self.key;
        let own = &mut self.own;
        request_key(t, key);
        request_own(t, epoch, own);
        let constant = kept(&mut self.requests, key, || request_const(t));
        frame(SCOPE_SPANS_SPANS, constant.len() + own.encoded_len(), spans);
        spans.extend_from_slice(constant);
        own.encode_raw(spans);
        let last = t.attempts.len().wrapping_sub(1);
        for (n, at) in t.attempts.iter().enumerate() {
            let m = mode(at, n == last);
            attempt_key(t, at, n, m, key);
            attempt_own(t, at, m, epoch, own);
            let constant = kept(&mut self.attempts, key, || attempt_const(t, at, n, m));
            frame(SCOPE_SPANS_SPANS, constant.len() + own.encoded_len(), spans);
            spans.extend_from_slice(constant);
            own.encode_raw(spans);
        }
        self.count += 1 + t.attempts.len();
        self.count
    }

    /// Spans kept (added since the last [`Self::take`]).
    #[must_use]
    pub fn pending(&self) -> usize {
        self.count
    }

    /// What precedes the spans kept in their serialized `ExportTraceServiceRequest`:
    /// the framing of the request, resource and scope messages, the resource
    /// (service fastgw `version`, process `pid`) and the fastgw scope.
    fn head(&self, pid: i64, version: &str) -> Vec<u8> {
        let mut scope = Vec::with_capacity(64);
        ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "fastgw".to_owned(),
                version: version.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_raw(&mut scope);
        let scope_len = scope.len() + self.spans.len();
        let mut resource = ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "fastgw"),
                    s("service.version", version),
                    i("process.pid", pid),
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        frame(RESOURCE_SPANS_SCOPE_SPANS, scope_len, &mut resource);
        let mut head = Vec::with_capacity(resource.len() + scope.len() + 16);
        frame(REQUEST_RESOURCE_SPANS, resource.len() + scope_len, &mut head);
        head.extend_from_slice(&resource);
        head.extend_from_slice(&scope);
        head
    }

    /// The serialized `ExportTraceServiceRequest` of the spans kept, handed to
    /// `write` as its length and its two parts (the head, then the spans) so that
    /// it is copied once, where the caller wants it; none are kept after (their
    /// buffer's memory is, for the next ones: no fresh pages per batch).
    pub fn take_with<T>(
        &mut self,
        pid: i64,
        version: &str,
        write: impl FnOnce(usize, &[u8], &[u8]) -> T,
    ) -> T {
        let head = self.head(pid, version);
        let out = write(head.len() + self.spans.len(), &head, &self.spans);
        self.spans.clear();
        self.count = 0;
        out
    }

    /// [`Self::take_with`] into a new vector.
    pub fn take(&mut self, pid: i64, version: &str) -> Vec<u8> {
        self.take_with(pid, version, |len, head, spans| {
            let mut out = Vec::with_capacity(len);
            out.extend_from_slice(head);
            out.extend_from_slice(spans);
            out
        })
    }

    /// The serialized `ExportTraceServiceRequest` of `batch` (with any spans kept
    /// before it): [`Self::add`] of each, then [`Self::take`].
    pub fn encode(&mut self, batch: &[TraceRec], epoch: f64, pid: i64, version: &str) -> Vec<u8> {
        for t in batch {
            self.add(t, epoch);
        }
        self.take(pid, version)
    }
}

/// The same batch built the plain way: every message whole, then serialized
/// (what [`Encoder::encode`] must decode to).
///
/// # Panics
///
/// Never: a span's own part, just serialized, always decodes.
#[must_use]
pub fn encode_plain(batch: &[TraceRec], epoch: f64, pid: i64, version: &str) -> Vec<u8> {
    let mut spans = Vec::new();
    for t in batch {
        let mut own = Span::default();
        let mut span = request_const(t);
        request_own(t, epoch, &mut own);
        span.merge(own.encode_to_vec().as_slice())
            .expect("a span's own part decodes");
        spans.push(span);
        let last = t.attempts.len().wrapping_sub(1);
        for (n, at) in t.attempts.iter().enumerate() {
            let m = mode(at, n == last);
            let mut span = attempt_const(t, at, n, m);
            attempt_own(t, at, m, epoch, &mut own);
            span.merge(own.encode_to_vec().as_slice())
                .expect("a span's own part decodes");
            spans.push(span);
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "fastgw"),
                    s("service.version", version),
                    i("process.pid", pid),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "fastgw".to_owned(),
                    version: version.to_owned(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(data: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(data).expect("a valid message")
    }

    #[test]
    #[allow(clippy::float_cmp)] // exact on purpose: the float Python's round gives
    fn round3_is_pythons_round() {
        assert_eq!(round3(0.0625), 0.062); // an exact tie: to even
        assert_eq!(round3(1.0005), 1.0); // 1.0005 is below the tie in binary
        assert_eq!(round3(2.675), 2.675);
        assert_eq!(round3(0.12345), 0.123);
        assert_eq!(round3(12.345_678_9), 12.346);
        assert_eq!(round3(-0.0625), -0.062);
        assert_eq!(round3(0.0005), 0.001); // above the tie in binary
    }

    #[test]
    #[allow(clippy::float_cmp)]
    fn round3_fast_path_is_the_exact_rounding() {
        let exact = |x: f64| -> f64 { format!("{x:.3}").parse().unwrap() };
        let mut x = 1e-7_f64;
        while x < 1e7 {
            for v in [x, -x, x * 1.000_000_1, x + 0.0005] {
                assert_eq!(round3(v), exact(v), "{v}");
            }
            x *= 1.001_3;
        }
    }

    #[test]
    fn a_request_with_one_attempt() {
        let t = TraceRec {
            trace_id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            span_id: 7,
            attempts: vec![AttemptRec {
                span_id: 9,
                provider: "mock".into(),
                kind: "anthropic".into(),
                model: "claude".into(),
                route: "m".into(),
                start: 1.5,
                end: 2.0,
                ..Default::default()
            }],
            start: 1.0,
            finished: 2.5,
            status: 200,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            endpoint: "chat".into(),
            asked: "m".into(),
            tokens: Some((3, 4)),
            request_id: "req_1".into(),
            ttft_s: -1.0,
            ..Default::default()
        };
        let req = decoded(&Encoder::new().encode(&[t], 100.0, 42, "0.1.0"));
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "chat m");
        assert!(spans[0].parent_span_id.is_empty());
        assert_eq!(spans[0].trace_id[0], 1);
        assert_eq!(spans[0].start_time_unix_nano, 101_000_000_000);
        assert_eq!(spans[1].parent_span_id, 7u64.to_be_bytes().to_vec());
        assert_eq!(spans[1].name, "chat claude");
        let keys: Vec<&str> = spans[1]
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert!(keys.contains(&"gen_ai.usage.output_tokens"));
        assert_eq!(
            spans[1].attributes[1].value,
            Some(AnyValue {
                value: Some(Value::StringValue("anthropic".into()))
            })
        );
        assert!(spans[0].status.is_none());
    }

    #[test]
    fn a_failed_attempt_says_why() {
        let t = TraceRec {
            trace_id: 1,
            span_id: 2,
            attempts: vec![AttemptRec {
                span_id: 3,
                error: Some("timeout".into()),
                ..Default::default()
            }],
            finished: 1.0,
            status: 504,
            error: Some("upstream timed out".into()),
            ..Default::default()
        };
        let req = decoded(&Encoder::new().encode(&[t], 0.0, 1, "x"));
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(
            spans[1].status.as_ref().unwrap().message,
            "attempt failed: timeout"
        );
        assert_eq!(
            spans[0].status.as_ref().unwrap().code,
            StatusCode::Error as i32
        );
        assert_eq!(spans[0].name, " "); // no model, no method or path given
    }

    fn varied() -> Vec<TraceRec<'static>> {
        let mut out = Vec::new();
        for n in 0..12u32 {
            let attempts = (0..n % 3)
                .map(|k| AttemptRec {
                    span_id: u64::from(100 + k),
                    provider: ["mock", "down"][(k % 2) as usize].into(),
                    kind: ["openai", "anthropic", "azure"][(n % 3) as usize].into(),
                    model: "m".into(),
                    route: "r".into(),
                    start: if k == 0 { 0.0 } else { 1.25 },
                    end: f64::from(k) * 0.5,
                    error: (k == 0 && n % 2 == 0).then(|| "timeout".into()),
                    status: [0, 200, 500][(k % 3) as usize],
                })
                .collect();
            out.push(TraceRec {
                trace_id: u128::from(n) << 70 | 5,
                parent_id: u64::from(n % 2),
                span_id: u64::from(n) + 1,
                attempts,
                start: 0.5,
                finished: 2.0 + f64::from(n),
                status: [200, 502, 0, 429][(n % 4) as usize],
                error: (n % 4 == 1).then(|| "bad gateway".into()),
                method: "POST".into(),
                path: "/v1/chat/completions".into(),
                endpoint: ["chat", "embeddings", ""][(n % 3) as usize].into(),
                asked: if n % 5 == 0 {
                    "".into()
                } else {
                    "m".into()
                },
                key: (n % 2 == 0).then(|| "team".into()),
                request_id: format!("req_{n}").into(),
                stream: n % 2 == 1,
                tokens: (n % 3 == 0).then_some((i64::from(n), 7)),
                overhead_s: 0.000_012_5 * f64::from(n),
                ttft_s: if n % 2 == 0 { -1.0 } else { 0.25 },
                ..Default::default()
            });
        }
        out
    }

    #[test]
    fn kept_constant_parts_give_the_plain_message() {
        let batch = varied();
        let want = decoded(&encode_plain(&batch, 10.0, 7, "v"));
        let mut enc = Encoder::new();
        assert_eq!(decoded(&enc.encode(&batch, 10.0, 7, "v")), want);
        let kept = enc.kept();
        assert!(kept.0 > 1 && kept.1 > 1);
        // Again, from the kept parts.
        assert_eq!(decoded(&enc.encode(&batch, 10.0, 7, "v")), want);
        assert_eq!(enc.kept(), kept);
        assert_eq!(
            decoded(&enc.encode(&[], 10.0, 7, "v")).resource_spans[0].scope_spans[0]
                .spans
                .len(),
            0
        );
    }

    #[test]
    fn spans_added_one_by_one_are_the_batch() {
        let batch = varied();
        let want = decoded(&encode_plain(&batch, 10.0, 7, "v"));
        let mut enc = Encoder::new();
        let mut n = 0;
        for t in &batch {
            n += 1 + t.attempts.len();
            assert_eq!(enc.add(t, 10.0), n);
        }
        assert_eq!(enc.pending(), n);
        assert_eq!(decoded(&enc.take(7, "v")), want);
        assert_eq!(enc.pending(), 0);
        // Nothing is left for the next take.
        let empty = decoded(&enc.take(7, "v"));
        assert!(empty.resource_spans[0].scope_spans[0].spans.is_empty());
    }
}
