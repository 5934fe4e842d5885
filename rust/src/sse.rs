//! An incremental server-sent-events scanner for the relay loop.
//!
//! [`Scanner::feed`] takes upstream chunks split anywhere and tells the relay
//! what happened in each, without decoding every event as JSON:
//!
//! - lines end with `\n`, `\r\n` or `\r` (also split across chunks); a blank
//!   line ends an event; `data:` lines are joined with `\n`; `event:` sets the
//!   type; comments and other fields are skipped (as the HTML SSE parser does;
//!   a leading byte-order mark is not stripped);
//! - per event with data, flags: [`DONE`] for `data: [DONE]` or an `event:`
//!   of `message_stop`, `response.completed`, `response.incomplete` or
//!   `response.failed`; [`ERROR`] for `event: error`, `response.failed`, or a
//!   JSON object with a non-null top-level `error` or `"type": "error"`;
//!   [`COMMIT`] once, for the first event carrying content (the stream's
//!   commit point); [`USAGE`] when a usage object was read;
//! - an event's JSON is parsed only when it can matter: before the commit
//!   point, when it has a `"usage"` key whose value is an object, or when it
//!   contains `"error"`. Every other event costs a few `memchr` scans;
//! - with `drop_usage`, an OpenAI usage-only chunk (`"usage": {...}` and
//!   `"choices": []`) is removed from the bytes passed on ([`DROPPED`]). To
//!   be able to do that the scanner holds back the bytes of an incomplete
//!   event until it ends (an SSE client cannot act on half an event anyway).
//!   Without `drop_usage` the output is always the input, unchanged.
//!
//! Content means: an OpenAI choice whose `delta` has a non-empty `content`,
//! `refusal`, `reasoning_content` or `reasoning` string, a non-empty
//! `tool_calls` list or a `function_call` object, or whose `text` is a
//! non-empty string (completions); an Anthropic `content_block_delta` with a
//! non-empty `text`, `partial_json` or `thinking`, or a `content_block_start`
//! of a `tool_use` / `server_tool_use` block or with non-empty text; a
//! Responses API event whose `type` ends in `.delta` with a non-empty string
//! `delta`.
//!
//! Usage: OpenAI `usage` (`prompt_tokens`, `completion_tokens`,
//! `total_tokens`, `prompt_tokens_details.cached_tokens`), Responses
//! `response.usage` (`input_tokens`, `output_tokens`, `total_tokens`,
//! `input_tokens_details.cached_tokens`), Anthropic `message.usage` of
//! `message_start` and `usage` of `message_delta` (`input_tokens`,
//! `cache_creation_input_tokens`, `cache_read_input_tokens`,
//! `output_tokens`). Each field read replaces the previous value; the prompt
//! count is input + cache creation + cache read, the total is the one given
//! or prompt + completion.

use memchr::memmem;
use crate::json::{Json, Obj};
use std::sync::LazyLock;

/// An end-of-stream marker was seen.
pub const DONE: u32 = 1;
/// An in-band error event was seen.
pub const ERROR: u32 = 2;
/// The first content event was seen (the commit point).
pub const COMMIT: u32 = 4;
/// A usage object was read.
pub const USAGE: u32 = 8;
/// An event was removed from the output.
pub const DROPPED: u32 = 16;

/// Default bound on one line, one event's data and held-back bytes.
pub const DEFAULT_MAX_EVENT: usize = 16 << 20;

/// An event or line grew past the configured bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseError(pub String);

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SseError {}

/// Token counts of the stream so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens (cached ones included).
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// As reported, or prompt + completion.
    pub total_tokens: u64,
    /// Input tokens read from a prompt cache, when reported.
    pub cached_tokens: Option<u64>,
    /// Input tokens written to a prompt cache (Anthropic), when reported.
    pub cache_creation_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct UsageAcc {
    seen: bool,
    input: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    output: Option<u64>,
    total: Option<u64>,
    cached: Option<u64>,
}

fn uint(obj: &Obj<'_>, key: &str) -> Option<u64> {
    obj.get(key).and_then(Json::as_u64)
}

fn nested_uint(obj: &Obj<'_>, key: &str, inner: &str) -> Option<u64> {
    obj.get(key)
        .and_then(Json::as_object)
        .and_then(|o| uint(o, inner))
}

impl UsageAcc {
    fn set(slot: &mut Option<u64>, v: Option<u64>) {
        if v.is_some() {
            *slot = v;
        }
    }

    /// OpenAI chat/completions style.
    fn openai(&mut self, u: &Obj<'_>) {
        self.seen = true;
        Self::set(&mut self.input, uint(u, "prompt_tokens"));
        Self::set(&mut self.output, uint(u, "completion_tokens"));
        Self::set(&mut self.total, uint(u, "total_tokens"));
        Self::set(
            &mut self.cached,
            nested_uint(u, "prompt_tokens_details", "cached_tokens"),
        );
    }

    /// Responses API style.
    fn responses(&mut self, u: &Obj<'_>) {
        self.seen = true;
        Self::set(&mut self.input, uint(u, "input_tokens"));
        Self::set(&mut self.output, uint(u, "output_tokens"));
        Self::set(&mut self.total, uint(u, "total_tokens"));
        Self::set(
            &mut self.cached,
            nested_uint(u, "input_tokens_details", "cached_tokens"),
        );
    }

    /// Anthropic style.
    fn anthropic(&mut self, u: &Obj<'_>) {
        self.seen = true;
        Self::set(&mut self.input, uint(u, "input_tokens"));
        Self::set(
            &mut self.cache_creation,
            uint(u, "cache_creation_input_tokens"),
        );
        Self::set(&mut self.cache_read, uint(u, "cache_read_input_tokens"));
        Self::set(&mut self.cached, uint(u, "cache_read_input_tokens"));
        Self::set(&mut self.output, uint(u, "output_tokens"));
    }

    fn get(&self) -> Option<Usage> {
        if !self.seen {
            return None;
        }
        let prompt = self
            .input
            .unwrap_or(0)
            .saturating_add(self.cache_creation.unwrap_or(0))
            .saturating_add(self.cache_read.unwrap_or(0));
        let completion = self.output.unwrap_or(0);
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: self.total.unwrap_or(prompt.saturating_add(completion)),
            cached_tokens: self.cached,
            cache_creation_tokens: self.cache_creation,
        })
    }
}

/// The event being read.
#[derive(Debug, Default)]
struct EventBuf {
    data: Vec<u8>,
    has_data: bool,
    event: Vec<u8>,
}

/// What the stream has shown so far.
#[derive(Debug, Default)]
struct StreamState {
    committed: bool,
    done: bool,
    error: bool,
    usage: UsageAcc,
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

// Searchers built once (building one per event costs more than the search).
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
static ERROR_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"error\""));

/// True when `data` has a `"usage"` key whose value is an object.
fn has_usage_object(data: &[u8]) -> bool {
    for pos in USAGE_KEY.find_iter(data) {
        let mut k = pos + 7;
        while k < data.len() && is_json_ws(data[k]) {
            k += 1;
        }
        if k >= data.len() || data[k] != b':' {
            continue;
        }
        k += 1;
        while k < data.len() && is_json_ws(data[k]) {
            k += 1;
        }
        if k < data.len() && data[k] == b'{' {
            return true;
        }
    }
    false
}

fn non_empty_str(obj: &Obj<'_>, key: &str) -> bool {
    obj.get(key)
        .and_then(Json::as_str)
        .is_some_and(|s| !s.is_empty())
}

fn has_content(obj: &Obj<'_>) -> bool {
    if let Some(Json::Arr(choices)) = obj.get("choices") {
        for c in choices {
            let Some(c) = c.as_object() else { continue };
            if non_empty_str(c, "text") {
                return true;
            }
            if let Some(d) = c.get("delta").and_then(Json::as_object) {
                if ["content", "refusal", "reasoning_content", "reasoning"]
                    .iter()
                    .any(|k| non_empty_str(d, k))
                    || d.get("tool_calls")
                        .and_then(Json::as_array)
                        .is_some_and(|a| !a.is_empty())
                    || d.get("function_call").is_some_and(Json::is_object)
                {
                    return true;
                }
            }
        }
    }
    let Some(ty) = obj.get("type").and_then(Json::as_str) else {
        return false;
    };
    match ty {
        "content_block_delta" => obj
            .get("delta")
            .and_then(Json::as_object)
            .is_some_and(|d| {
                ["text", "partial_json", "thinking"]
                    .iter()
                    .any(|k| non_empty_str(d, k))
            }),
        "content_block_start" => obj
            .get("content_block")
            .and_then(Json::as_object)
            .is_some_and(|b| {
                matches!(
                    b.get("type").and_then(Json::as_str),
                    Some("tool_use" | "server_tool_use")
                ) || non_empty_str(b, "text")
            }),
        #[allow(clippy::case_sensitive_file_extension_comparisons)]
        // an event type, not a file name
        _ => ty.ends_with(".delta") && non_empty_str(obj, "delta"),
    }
}

impl StreamState {
    /// Classifies one dispatched event; returns its flags and whether it is
    /// a usage-only chunk.
    fn classify(&mut self, data: &[u8], event: &[u8]) -> (u32, bool) {
        let mut flags = 0;
        if data == b"[DONE]" {
            self.done = true;
            return (DONE, false);
        }
        match event {
            b"error" => flags |= ERROR,
            b"message_stop" | b"response.completed" | b"response.incomplete" => flags |= DONE,
            b"response.failed" => flags |= DONE | ERROR,
            _ => {}
        }
        let usage_candidate = has_usage_object(data);
        let mut usage_only = false;
        if !self.committed || usage_candidate || ERROR_KEY.find(data).is_some() {
            if let Ok(Json::Obj(obj)) = Json::parse(data) {
                if obj.get("error").is_some_and(|e| !e.is_null())
                    || obj.get("type").and_then(Json::as_str) == Some("error")
                {
                    flags |= ERROR;
                }
                if usage_candidate {
                    if let Some(u) = obj.get("usage").and_then(Json::as_object) {
                        if u.contains_key("input_tokens") || u.contains_key("output_tokens") {
                            self.usage.anthropic(u);
                        } else {
                            self.usage.openai(u);
                            usage_only = obj
                                .get("choices")
                                .and_then(Json::as_array)
                                .is_some_and(<[Json]>::is_empty);
                        }
                        flags |= USAGE;
                    } else if let Some(u) = obj
                        .get("message")
                        .and_then(Json::as_object)
                        .and_then(|m| m.get("usage"))
                        .and_then(Json::as_object)
                    {
                        self.usage.anthropic(u);
                        flags |= USAGE;
                    } else if let Some(u) = obj
                        .get("response")
                        .and_then(Json::as_object)
                        .and_then(|r| r.get("usage"))
                        .and_then(Json::as_object)
                    {
                        self.usage.responses(u);
                        flags |= USAGE;
                    }
                }
                if !self.committed && has_content(&obj) {
                    self.committed = true;
                    flags |= COMMIT;
                }
            }
        }
        if flags & DONE != 0 {
            self.done = true;
        }
        if flags & ERROR != 0 {
            self.error = true;
        }
        (flags, usage_only)
    }
}

/// What to pass on for one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The chunk itself, unchanged (the common case).
    Unchanged,
    /// Instead (held-back bytes, or an event removed): `prefix` (bytes held
    /// back from earlier chunks), then these `(start, end)` ranges of the
    /// chunk. Left as a recipe so the caller copies the bytes once, into
    /// whatever it passes on.
    Spliced {
        /// Bytes held back from earlier chunks, passed on first.
        prefix: Vec<u8>,
        /// Ranges of the chunk passed on, in order.
        ranges: Vec<(usize, usize)>,
    },
}

impl Output {
    /// How many bytes `chunk` gives (for `Unchanged`, all of them).
    #[must_use]
    pub fn len(&self, chunk: &[u8]) -> usize {
        match self {
            Output::Unchanged => chunk.len(),
            Output::Spliced { prefix, ranges } => {
                prefix.len() + ranges.iter().map(|(a, b)| b - a).sum::<usize>()
            }
        }
    }

    /// Whether nothing is passed on.
    #[must_use]
    pub fn is_empty(&self, chunk: &[u8]) -> bool {
        self.len(chunk) == 0
    }

    /// Copies the bytes passed on into `buf` (exactly `len(chunk)` long).
    pub fn write_to(&self, chunk: &[u8], buf: &mut [u8]) {
        match self {
            Output::Unchanged => buf.copy_from_slice(chunk),
            Output::Spliced { prefix, ranges } => {
                buf[..prefix.len()].copy_from_slice(prefix);
                let mut at = prefix.len();
                for &(a, b) in ranges {
                    buf[at..at + b - a].copy_from_slice(&chunk[a..b]);
                    at += b - a;
                }
            }
        }
    }

    /// The bytes passed on, as a new vector.
    #[must_use]
    pub fn to_vec(&self, chunk: &[u8]) -> Vec<u8> {
        let mut out = vec![0; self.len(chunk)];
        self.write_to(chunk, &mut out);
        out
    }
}

/// The scanner of one stream.
#[derive(Debug)]
pub struct Scanner {
    drop_usage: bool,
    max_event: usize,
    line: Vec<u8>,
    after_cr: bool,
    pending_lf: Option<bool>,
    ev: EventBuf,
    held: Vec<u8>,
    state: StreamState,
    events: u64,
    boundaries: Vec<usize>,
}

impl Scanner {
    /// A scanner; `drop_usage` removes usage-only chunks, `max_event` bounds
    /// one line, one event's data and the held-back bytes.
    #[must_use]
    pub fn new(drop_usage: bool, max_event: usize) -> Scanner {
        Scanner {
            drop_usage,
            max_event,
            line: Vec::new(),
            after_cr: false,
            pending_lf: None,
            ev: EventBuf::default(),
            held: Vec::new(),
            state: StreamState::default(),
            events: 0,
            boundaries: Vec::new(),
        }
    }

    /// True once the commit point has passed.
    #[must_use]
    pub fn committed(&self) -> bool {
        self.state.committed
    }

    /// True once an end-of-stream marker was seen.
    #[must_use]
    pub fn done(&self) -> bool {
        self.state.done
    }

    /// True once an in-band error was seen.
    #[must_use]
    pub fn error(&self) -> bool {
        self.state.error
    }

    /// Token counts, once a usage object was read.
    #[must_use]
    pub fn usage(&self) -> Option<Usage> {
        self.state.usage.get()
    }

    /// Events with data dispatched so far.
    #[must_use]
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Offsets in the last chunk fed just past each blank line that ended an
    /// event (with or without data).
    #[must_use]
    pub fn boundaries(&self) -> &[usize] {
        &self.boundaries
    }

    /// The bytes held back at the end of the stream (only with `drop_usage`:
    /// an event that never ended); the scanner is then empty.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    fn too_big(&self, what: &str) -> SseError {
        SseError(format!("SSE {what} larger than {} bytes", self.max_event))
    }

    /// One field line (non-blank).
    fn field(line: &[u8], ev: &mut EventBuf) {
        if line[0] == b':' {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if ev.has_data {
                    ev.data.push(b'\n');
                }
                ev.data.extend_from_slice(value);
                ev.has_data = true;
            }
            b"event" => {
                ev.event.clear();
                ev.event.extend_from_slice(value);
            }
            _ => {}
        }
    }

    /// Ends the current event; returns its flags and whether to drop it.
    fn dispatch(&mut self) -> (u32, bool) {
        let mut result = (0, false);
        if self.ev.has_data {
            self.events += 1;
            result = self.state.classify(&self.ev.data, &self.ev.event);
        }
        self.ev.data.clear();
        self.ev.has_data = false;
        self.ev.event.clear();
        (result.0, result.1 && self.drop_usage)
    }

    /// Scans one chunk: what to pass on, and the flags of the events that
    /// ended in it.
    ///
    /// # Errors
    /// A line, an event's data or the held-back bytes grew past `max_event`;
    /// the scanner is then unusable.
    #[allow(clippy::too_many_lines)] // one state machine, clearer in one piece
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(Output, u32), SseError> {
        self.boundaries.clear();
        let len = chunk.len();
        let mut flags = 0;
        let mut i = 0;
        // Drop mode bookkeeping: kept ranges of this chunk, where the current
        // event started, whether an event ended here, and whether the held
        // bytes (the start of the first event ending here) are kept.
        let mut kept: Vec<(usize, usize)> = Vec::new();
        let mut seg_start = 0;
        let mut first_done = false;
        let mut held_kept = false;
        let mut dropped = false;
        if self.after_cr {
            self.after_cr = false;
            if chunk.first() == Some(&b'\n') {
                i = 1;
                // The LF of a CRLF split across chunks. If that CR ended an
                // event, the LF goes with that event.
                if let Some(was_dropped) = self.pending_lf {
                    if was_dropped {
                        dropped = true;
                    } else {
                        kept.push((0, 1));
                    }
                    seg_start = 1;
                }
            }
        }
        self.pending_lf = None;
        while i < len {
            let Some(off) = memchr::memchr2(b'\n', b'\r', &chunk[i..]) else {
                if self.line.len() + (len - i) > self.max_event {
                    return Err(self.too_big("line"));
                }
                self.line.extend_from_slice(&chunk[i..]);
                break;
            };
            let j = i + off;
            let end = if chunk[j] == b'\n' {
                j + 1
            } else if j + 1 < len {
                if chunk[j + 1] == b'\n' {
                    j + 2
                } else {
                    j + 1
                }
            } else {
                self.after_cr = true;
                j + 1
            };
            let blank = if self.line.is_empty() {
                if j > i {
                    Self::field(&chunk[i..j], &mut self.ev);
                }
                j == i
            } else {
                if self.line.len() + (j - i) > self.max_event {
                    return Err(self.too_big("line"));
                }
                self.line.extend_from_slice(&chunk[i..j]);
                Self::field(&self.line, &mut self.ev);
                self.line.clear();
                false
            };
            if self.ev.data.len() > self.max_event {
                return Err(self.too_big("event"));
            }
            if blank {
                let (f, drop) = self.dispatch();
                flags |= f;
                self.boundaries.push(end);
                if self.drop_usage {
                    if drop {
                        dropped = true;
                    } else {
                        if !first_done {
                            held_kept = true;
                        }
                        kept.push((seg_start, end));
                    }
                    first_done = true;
                    if end == len && self.after_cr {
                        self.pending_lf = Some(drop);
                    }
                }
                seg_start = end;
            }
            i = end;
        }
        if dropped {
            flags |= DROPPED;
        }
        if !self.drop_usage || (self.held.is_empty() && !dropped && seg_start == len) {
            return Ok((Output::Unchanged, flags));
        }
        let prefix = if held_kept {
            std::mem::take(&mut self.held)
        } else {
            if first_done {
                self.held.clear();
            }
            Vec::new()
        };
        if self.held.len() + (len - seg_start) > self.max_event {
            return Err(self.too_big("event"));
        }
        self.held.extend_from_slice(&chunk[seg_start..]);
        Ok((Output::Spliced { prefix, ranges: kept }, flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
data: [DONE]\n\n";

    fn run(stream: &[u8], cuts: &[usize], drop: bool) -> (Vec<u8>, u32, Scanner) {
        let mut s = Scanner::new(drop, DEFAULT_MAX_EVENT);
        let mut out = Vec::new();
        let mut flags = 0;
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            let chunk = &stream[prev..c];
            let (o, f) = s.feed(chunk).unwrap();
            flags |= f;
            match o {
                Output::Unchanged => out.extend_from_slice(chunk),
                spliced @ Output::Spliced { .. } => out.extend(spliced.to_vec(chunk)),
            }
            prev = c;
        }
        out.extend(s.finish());
        (out, flags, s)
    }

    #[test]
    fn openai_stream_flags_and_usage() {
        let (out, flags, s) = run(OPENAI, &[], false);
        assert_eq!(out, OPENAI);
        assert_eq!(flags, DONE | COMMIT | USAGE);
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 2,
                total_tokens: 11,
                cached_tokens: None,
                cache_creation_tokens: None
            })
        );
        assert_eq!(s.events(), 5);
        assert_eq!(s.boundaries().len(), 5);
    }

    #[test]
    fn commit_is_the_first_content_event() {
        let mut s = Scanner::new(false, DEFAULT_MAX_EVENT);
        let first = OPENAI.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
        assert_eq!(s.feed(&OPENAI[..first]).unwrap().1, 0);
        assert!(!s.committed());
        assert_eq!(s.feed(&OPENAI[first..]).unwrap().1 & COMMIT, COMMIT);
    }

    #[test]
    fn drop_mode_removes_the_usage_chunk_at_any_split() {
        let expected: Vec<u8> = {
            let text = std::str::from_utf8(OPENAI).unwrap();
            text.split_inclusive("\n\n")
                .filter(|e| !e.contains("\"choices\":[]"))
                .collect::<String>()
                .into_bytes()
        };
        for cut in 0..=OPENAI.len() {
            let (out, flags, s) = run(OPENAI, &[cut], true);
            assert_eq!(out, expected, "cut at {cut}");
            assert_eq!(flags & (DROPPED | USAGE), DROPPED | USAGE);
            assert_eq!(s.usage().unwrap().total_tokens, 11);
        }
    }

    #[test]
    fn crlf_and_cr_line_ends_split_anywhere() {
        let crlf: Vec<u8> = std::str::from_utf8(OPENAI)
            .unwrap()
            .replace('\n', "\r\n")
            .into_bytes();
        let cr: Vec<u8> = std::str::from_utf8(OPENAI)
            .unwrap()
            .replace('\n', "\r")
            .into_bytes();
        for stream in [&crlf, &cr] {
            let (whole, wf, _) = run(stream, &[], true);
            for cut in 0..=stream.len() {
                let (out, flags, s) = run(stream, &[cut], true);
                assert_eq!(out, whole, "cut at {cut}");
                assert_eq!(flags, wf);
                assert_eq!(s.events(), 5);
            }
        }
    }

    #[test]
    fn anthropic_usage_and_errors() {
        let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let (_, flags, s) = run(stream, &[], false);
        assert_eq!(flags, DONE | ERROR | COMMIT | USAGE);
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 33,
                completion_tokens: 15,
                total_tokens: 48,
                cached_tokens: Some(5),
                cache_creation_tokens: Some(3)
            })
        );
    }

    #[test]
    fn oversized_lines_are_errors() {
        let mut s = Scanner::new(false, 8);
        assert!(s.feed(b"data: 0123456789").is_err());
    }
}
