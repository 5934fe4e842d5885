//! Anthropic Messages SSE in, OpenAI chat-completion SSE out: the stream
//! translator of an OpenAI chat client served by an Anthropic deployment.
//!
//! [`ChatFromMessages`] gives, for every input cut at any byte, the same bytes
//! and flags as its Python reference, `ChatFromMessagesStream` in
//! `fastgw/providers/openai_anthropic.py` (on `StreamTranslator` of
//! `fastgw/providers/sse_events.py`), down to its quirks; the rules are its,
//! written out here:
//!
//! - Framing: line ends `\n`, `\r\n`, `\r` (a CR ending one chunk swallows an
//!   LF opening the next; an empty chunk forgets that CR) are made `\n`; the
//!   buffer is cut at each `\n\n`, left to right; a block is read as the
//!   WHATWG parser reads one event (comments and other fields ignored, `data`
//!   lines joined with `\n`, one space after the colon dropped, `event` sets
//!   the type; no data, no event). A read that is whole events (nothing held,
//!   no CR, ending in `\n\n`) keeps nothing of it: after an odd run of three or
//!   more LFs the last one is dropped rather than held (the reference's fast
//!   path; it only shows in `max_event` accounting).
//! - Bounds: a completed block longer than `max_event` fails the whole read
//!   (when the read's buffer is longer than the bound); held bytes past
//!   `max_event + 2` fail it too (`an SSE event is larger than N bytes`).
//! - Events are JSON as `orjson` reads them ([`crate::ojson`]); one that is not
//!   JSON, not an object, or not of the shape its type promises is skipped.
//!   `message_start` makes the chunk templates (its message's `id` and
//!   `model`) and gives the role chunk; `content_block_start` of a `tool_use`
//!   block numbers it (0, 1... in start order, mapped from its block index
//!   when that is an int) and gives the call's head, with the start's
//!   `input` (when truthy) as the first arguments; a `text` or `thinking`
//!   block's non-empty start text is content or `reasoning_content`;
//!   `content_block_delta` of `text_delta`, `thinking_delta` and
//!   `input_json_delta` (of a numbered block) give content, reasoning and
//!   arguments chunks; `message_delta` the finish chunk (Anthropic's stop
//!   reason mapped); `message_stop` the usage chunk (only with
//!   `include_usage`, once usage was read) and `data: [DONE]`; an `error`
//!   type, or any other type under `event: error`, OpenAI's `event: error`
//!   with the error envelope. After an error or the end, reads give nothing.
//! - The compact text delta: an event starting with the open text block's
//!   `{"type":"content_block_delta","index":N,"delta":{"type":"text_delta","text":`
//!   and ending in `}}`, whose middle is one JSON string, has that string
//!   copied as it came (no re-encoding).
//! - Flags: `COMMIT` in the read that sends the first content (text,
//!   reasoning, tool call or the finish chunk) or, without any, the end;
//!   `USAGE` when a usage object was read; `DONE` and `ERROR`.
//! - [`ChatFromMessages::finish`] translates an event left without its blank
//!   line, then owes (once started, unless ended): the finish chunk if none
//!   was sent (`stop`), the usage chunk when asked, `[DONE]`.
//! - Usage, as `usage_from_anthropic`: Anthropic's fields merged across
//!   `message_start` and `message_delta` (a null leaves a field as it was);
//!   prompt = input + cache reads + cache writes. A usage chunk whose counts
//!   pass 64 bits cannot be written (orjson's `Integer exceeds 64-bit range`):
//!   at `message_stop` the event then gives nothing (but the stream is done),
//!   in `finish` it is [`UsageOverflow`].

use crate::ojson::{self, dump_str, Obj, Value};
use crate::sse::SseError;
use std::borrow::Cow;

pub use crate::sse::{COMMIT, DEFAULT_MAX_EVENT, DONE, ERROR, USAGE};

/// An event carried content (internal; the first becomes [`COMMIT`]).
const CONTENT: u32 = 1 << 16;
const END: u32 = DONE | ERROR;

const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";
const TAIL: &[u8] = b"},\"finish_reason\":null}]}\n\n";
const TEXT_DELTA_HEAD: &[u8] = b"{\"type\":\"content_block_delta\",\"index\":";
const TEXT_DELTA_MID: &[u8] = b",\"delta\":{\"type\":\"text_delta\",\"text\":";

/// The usage chunk's counts pass 64 bits (`finish` cannot write it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageOverflow;

impl std::fmt::Display for UsageOverflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Integer exceeds 64-bit range")
    }
}

impl std::error::Error for UsageOverflow {}

/// Token counts in the gateway's terms (`translate_helpers.Usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// All input: uncached, cache reads and cache writes.
    pub prompt_tokens: u128,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Prompt + completion.
    pub total_tokens: u128,
    /// Cache reads, when reported.
    pub cached_tokens: Option<u64>,
    /// Cache writes, when reported.
    pub cache_creation_tokens: Option<u64>,
    /// Thinking tokens (`output_tokens_details.thinking_tokens`), when reported.
    pub reasoning_tokens: Option<u64>,
}

/// Anthropic's usage fields as merged so far (only what is read of them).
#[derive(Debug, Default, Clone, Copy)]
struct RawUsage {
    seen: bool,
    input: Option<u64>,
    read: Option<u64>,
    write: Option<u64>,
    output: Option<u64>,
    thinking: Option<u64>,
}

/// `_count`: a non-negative int (not a bool).
fn count(v: Option<&Value<'_>>) -> Option<u64> {
    match v {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

impl RawUsage {
    /// Merges a usage object; whether `u` was one.
    fn merge(&mut self, u: Option<&Value<'_>>) -> bool {
        let Some(Value::Obj(u)) = u else {
            return false;
        };
        self.seen = true;
        let set = |slot: &mut Option<u64>, key: &str| {
            if let Some(v) = u.get(key) {
                if !v.is_null() {
                    *slot = count(Some(v));
                }
            }
        };
        set(&mut self.input, "input_tokens");
        set(&mut self.read, "cache_read_input_tokens");
        set(&mut self.write, "cache_creation_input_tokens");
        set(&mut self.output, "output_tokens");
        if let Some(d) = u.get("output_tokens_details") {
            if !d.is_null() {
                self.thinking = count(d.as_object().and_then(|d| d.get("thinking_tokens")));
            }
        }
        true
    }

    fn usage(&self) -> Option<Usage> {
        if !self.seen {
            return None;
        }
        let prompt = u128::from(self.input.unwrap_or(0))
            + u128::from(self.read.unwrap_or(0))
            + u128::from(self.write.unwrap_or(0));
        let completion = self.output.unwrap_or(0);
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + u128::from(completion),
            cached_tokens: self.read,
            cache_creation_tokens: self.write,
            reasoning_tokens: self.thinking,
        })
    }
}

/// Appends OpenAI's `usage` object (`openai_usage`).
fn openai_usage(u: &Usage, out: &mut Vec<u8>) -> Result<(), UsageOverflow> {
    if u.total_tokens > u128::from(u64::MAX) {
        return Err(UsageOverflow); // the total is never less than the prompt
    }
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"prompt_tokens\":");
    out.extend_from_slice(num.format(u.prompt_tokens).as_bytes());
    out.extend_from_slice(b",\"completion_tokens\":");
    out.extend_from_slice(num.format(u.completion_tokens).as_bytes());
    out.extend_from_slice(b",\"total_tokens\":");
    out.extend_from_slice(num.format(u.total_tokens).as_bytes());
    if u.cached_tokens.is_some() || u.cache_creation_tokens.is_some() {
        out.extend_from_slice(b",\"prompt_tokens_details\":{");
        if let Some(c) = u.cached_tokens {
            out.extend_from_slice(b"\"cached_tokens\":");
            out.extend_from_slice(num.format(c).as_bytes());
        }
        if let Some(w) = u.cache_creation_tokens {
            if u.cached_tokens.is_some() {
                out.push(b',');
            }
            out.extend_from_slice(b"\"cache_write_tokens\":");
            out.extend_from_slice(num.format(w).as_bytes());
        }
        out.push(b'}');
    }
    if let Some(r) = u.reasoning_tokens {
        out.extend_from_slice(b",\"completion_tokens_details\":{\"reasoning_tokens\":");
        out.extend_from_slice(num.format(r).as_bytes());
        out.push(b'}');
    }
    out.push(b'}');
    Ok(())
}

/// OpenAI's finish reason for an Anthropic stop reason (`finish_reason`).
fn finish_reason(stop: Option<&Value<'_>>) -> &'static [u8] {
    let Some(Value::Str(s)) = stop else {
        return b"stop";
    };
    match s.decode().as_ref() {
        "max_tokens" | "model_context_window_exceeded" => b"length",
        "tool_use" => b"tool_calls",
        "refusal" => b"content_filter",
        _ => b"stop",
    }
}

/// OpenAI's error type for an Anthropic one (`ANTHROPIC_TO_OPENAI_ERROR`).
fn openai_error_type(anthropic: &str) -> &'static str {
    match anthropic {
        "invalid_request_error" | "request_too_large" => "invalid_request_error",
        "authentication_error" => "authentication_error",
        "permission_error" | "billing_error" => "permission_error",
        "not_found_error" => "not_found_error",
        "rate_limit_error" => "rate_limit_error",
        "timeout_error" => "timeout_error",
        _ => "server_error",
    }
}

/// Appends OpenAI's error envelope for an Anthropic error event
/// (`openai_error_from_anthropic(doc, None, data)`).
fn error_body(doc: &Obj<'_>, data: &[u8], out: &mut Vec<u8>) {
    let err = doc.get("error").and_then(Value::as_object);
    let message = err.and_then(|e| e.get("message")).and_then(Value::as_str);
    out.extend_from_slice(b"{\"error\":{\"message\":");
    if let (Some(err), Some(message)) = (err, message) {
        message.dump(out);
        out.extend_from_slice(b",\"type\":\"");
        if let Some(Value::Str(a)) = err.get("type") {
            let a = a.decode();
            out.extend_from_slice(openai_error_type(&a).as_bytes());
            out.extend_from_slice(b"\",\"param\":null,\"code\":");
            dump_str(&a, out);
        } else {
            out.extend_from_slice(b"server_error\",\"param\":null,\"code\":null");
        }
    } else {
        // The body itself: it parsed, so it is UTF-8 with only JSON
        // whitespace around its braces (what str.strip() removes).
        let text = std::str::from_utf8(data).unwrap_or_default();
        dump_str(text.trim_matches([' ', '\t', '\n', '\r']), out);
        out.extend_from_slice(b",\"type\":\"server_error\",\"param\":null,\"code\":null");
    }
    out.extend_from_slice(b"}}");
}

/// The event of one block (`event_of`): its type (or empty) and its data;
/// None when it has no data.
fn event_of(block: &[u8]) -> Option<(&[u8], Cow<'_, [u8]>)> {
    // The usual shapes first: one data line, or an event line and a data line.
    match memchr::memchr(b'\n', block) {
        None => {
            if let Some(data) = block.strip_prefix(b"data: ") {
                return Some((b"", Cow::Borrowed(data)));
            }
        }
        Some(nl) => {
            if let (Some(event), Some(data)) = (
                block[..nl].strip_prefix(b"event: "),
                block[nl + 1..].strip_prefix(b"data: "),
            ) {
                if memchr::memchr(b'\n', data).is_none() {
                    return Some((event, Cow::Borrowed(data)));
                }
            }
        }
    }
    parse_block(block)
}

/// The general case: any mix of fields, comments and leading blank lines.
fn parse_block(block: &[u8]) -> Option<(&[u8], Cow<'_, [u8]>)> {
    let mut event: &[u8] = b"";
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in block.split(|&c| c == b'\n') {
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => match &mut data {
                None => data = Some(Cow::Borrowed(value)),
                Some(d) => {
                    let d = d.to_mut();
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
            },
            b"event" => event = value,
            _ => {}
        }
    }
    data.map(|d| (event, d))
}

/// `\r\n` and lone `\r` made `\n`.
fn normalize(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len());
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'\r', &chunk[i..]) {
        let j = i + off;
        out.extend_from_slice(&chunk[i..j]);
        out.push(b'\n');
        i = if chunk.get(j + 1) == Some(&b'\n') {
            j + 2
        } else {
            j + 1
        };
    }
    out.extend_from_slice(&chunk[i..]);
    out
}

/// The stream translator of one response.
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // the reference's flags, one for one
pub struct ChatFromMessages {
    include_usage: bool,
    created: String,
    max_event: usize,
    // Framing.
    held: Vec<u8>,
    after_cr: bool,
    blocks: Vec<(usize, usize)>,
    // The stream.
    committed: bool,
    done: bool,
    error: bool,
    started: bool,
    finish_sent: bool,
    tools: u64,
    tool_index: Vec<(i128, u64)>,
    text_prefix: Vec<u8>,
    prefix: Vec<u8>,
    head: Vec<u8>,
    usage: RawUsage,
}

impl ChatFromMessages {
    /// A translator; `created` is every chunk's `created`, `max_event` the
    /// bound on one event.
    #[must_use]
    pub fn new(include_usage: bool, created: i64, max_event: usize) -> ChatFromMessages {
        let mut t = ChatFromMessages {
            include_usage,
            created: created.to_string(),
            max_event,
            held: Vec::new(),
            after_cr: false,
            blocks: Vec::new(),
            committed: false,
            done: false,
            error: false,
            started: false,
            finish_sent: false,
            tools: 0,
            tool_index: Vec::new(),
            text_prefix: b"\0".to_vec(),
            prefix: Vec::new(),
            head: Vec::new(),
            usage: RawUsage::default(),
        };
        t.templates(b"null", b"null");
        t
    }

    /// True once the commit point has passed.
    #[must_use]
    pub fn committed(&self) -> bool {
        self.committed
    }

    /// True once the upstream's end came (or `finish` ended the stream).
    #[must_use]
    pub fn done(&self) -> bool {
        self.done
    }

    /// True once an upstream error event came.
    #[must_use]
    pub fn error(&self) -> bool {
        self.error
    }

    /// The usage read so far, None before any.
    #[must_use]
    pub fn usage(&self) -> Option<Usage> {
        self.usage.usage()
    }

    fn too_big(&self) -> SseError {
        SseError(format!(
            "an SSE event is larger than {} bytes",
            self.max_event
        ))
    }

    /// Holds an unfinished event's bytes.
    fn hold(&mut self, piece: &[u8]) -> Result<(), SseError> {
        self.held.extend_from_slice(piece);
        // Held bytes may carry the blank line's first LF and one before the event.
        if self.held.len() > self.max_event.saturating_add(2) {
            return Err(self.too_big());
        }
        Ok(())
    }

    /// The client's bytes and the flags for the next piece of the upstream
    /// body.
    ///
    /// # Errors
    /// One event larger than `max_event` (the read then gives nothing).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(Vec<u8>, u32), SseError> {
        let whole = self.held.is_empty()
            && !self.after_cr
            && chunk.ends_with(b"\n\n")
            && chunk.len() <= self.max_event
            && memchr::memchr(b'\r', chunk).is_none();
        let buf: Cow<'_, [u8]> = if whole {
            Cow::Borrowed(chunk)
        } else {
            let mut c = chunk;
            if self.after_cr {
                self.after_cr = false;
                if c.first() == Some(&b'\n') {
                    c = &c[1..];
                }
            }
            let mut c = Cow::Borrowed(c);
            if memchr::memchr(b'\r', &c).is_some() {
                self.after_cr = c.last() == Some(&b'\r');
                c = Cow::Owned(normalize(&c));
            }
            if self.held.is_empty() {
                c
            } else {
                // A boundary may straddle the held bytes and the chunk.
                if memchr::memmem::find(&c, b"\n\n").is_none()
                    && !(c.first() == Some(&b'\n') && self.held.last() == Some(&b'\n'))
                {
                    if !c.is_empty() {
                        self.hold(&c)?;
                    }
                    return Ok((Vec::new(), 0));
                }
                let mut joined = std::mem::take(&mut self.held);
                joined.extend_from_slice(&c);
                Cow::Owned(joined)
            }
        };
        // The blocks, cut at each "\n\n" from the left; the rest is unfinished.
        let mut blocks = std::mem::take(&mut self.blocks);
        blocks.clear();
        let mut start = 0;
        let mut at = 0;
        while let Some(off) = memchr::memchr(b'\n', &buf[at..]) {
            let j = at + off;
            if buf.get(j + 1) == Some(&b'\n') {
                blocks.push((start, j));
                start = j + 2;
                at = start;
            } else {
                at = j + 1;
            }
        }
        let result = self.blocks_read(&buf, &blocks, start, whole);
        self.blocks = blocks;
        result
    }

    fn blocks_read(
        &mut self,
        buf: &[u8],
        blocks: &[(usize, usize)],
        rest: usize,
        whole: bool,
    ) -> Result<(Vec<u8>, u32), SseError> {
        if !whole {
            if buf.len() > self.max_event && blocks.iter().any(|(a, b)| b - a > self.max_event) {
                return Err(self.too_big());
            }
            if rest < buf.len() {
                self.hold(&buf[rest..])?;
            }
        }
        if blocks.is_empty() || self.done || self.error {
            return Ok((Vec::new(), 0));
        }
        let mut out = Vec::with_capacity(buf.len() + buf.len() / 2 + 64);
        let mut flags = 0;
        for &(a, b) in blocks {
            let Some((event, data)) = event_of(&buf[a..b]) else {
                continue;
            };
            flags |= self.event(event, &data, &mut out);
            if flags & END != 0 {
                break; // the rest of the body is of no use
            }
        }
        if flags & CONTENT != 0 {
            flags &= !CONTENT;
            if !self.committed {
                self.committed = true;
                flags |= COMMIT;
            }
        } else if flags & DONE != 0 && !self.committed {
            self.committed = true; // the end of a stream without content commits it
            flags |= COMMIT;
        }
        Ok((out, flags))
    }

    /// At a clean end of the upstream body: what the client is still owed.
    ///
    /// # Errors
    /// The usage chunk owed cannot be written (counts past 64 bits).
    pub fn finish(&mut self) -> Result<Vec<u8>, UsageOverflow> {
        let mut out = Vec::new();
        if !self.held.is_empty() {
            let mut block = std::mem::take(&mut self.held);
            while block.last() == Some(&b'\n') {
                block.pop();
            }
            if let Some((event, data)) = event_of(&block) {
                if !(self.done || self.error) {
                    self.event(event, &data, &mut out);
                }
            }
        }
        if !(self.done || self.error) {
            self.owed(&mut out)?;
        }
        Ok(out)
    }

    fn owed(&mut self, out: &mut Vec<u8>) -> Result<(), UsageOverflow> {
        if !self.started {
            return Ok(());
        }
        self.done = true;
        if !self.finish_sent {
            out.extend_from_slice(&self.head);
            out.extend_from_slice(b"},\"finish_reason\":\"stop\"}]}\n\n");
        }
        if self.include_usage && self.usage.seen {
            self.usage_chunk(out)?;
        }
        out.extend_from_slice(DONE_EVENT);
        Ok(())
    }

    fn usage_chunk(&self, out: &mut Vec<u8>) -> Result<(), UsageOverflow> {
        let usage = self.usage.usage().unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cached_tokens: None,
            cache_creation_tokens: None,
            reasoning_tokens: None,
        });
        let mark = out.len();
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b",\"choices\":[],\"usage\":");
        if let Err(e) = openai_usage(&usage, out) {
            out.truncate(mark);
            return Err(e);
        }
        out.extend_from_slice(b"}\n\n");
        Ok(())
    }

    /// The chunk templates for a message's `id` and `model` (as JSON).
    fn templates(&mut self, id: &[u8], model: &[u8]) {
        let mut prefix = Vec::with_capacity(96 + id.len() + model.len());
        prefix.extend_from_slice(b"data: {\"id\":");
        prefix.extend_from_slice(id);
        prefix.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        prefix.extend_from_slice(self.created.as_bytes());
        prefix.extend_from_slice(b",\"model\":");
        prefix.extend_from_slice(model);
        let mut head = prefix.clone();
        head.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":{");
        self.prefix = prefix;
        self.head = head;
    }

    /// `head` + `key` + `value` + the tail: one delta chunk.
    fn delta(&self, out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        out.extend_from_slice(TAIL);
    }

    fn delta_str(&self, out: &mut Vec<u8>, key: &[u8], value: &ojson::Str<'_>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(key);
        value.dump(out);
        out.extend_from_slice(TAIL);
    }

    /// Translates one upstream event into `out`; the flags it raises.
    fn event(&mut self, event: &[u8], data: &[u8], out: &mut Vec<u8>) -> u32 {
        // The hot path: a text delta of the open text block, written as
        // Anthropic writes it, has its JSON string copied as it came.
        let p = self.text_prefix.len();
        if data.starts_with(&self.text_prefix) && data.ends_with(b"}}") {
            let literal = data.get(p..data.len() - 2).unwrap_or_default();
            if let Some(empty) = ojson::string_document(literal) {
                if empty {
                    return 0;
                }
                self.delta(out, b"\"content\":", literal);
                return CONTENT;
            }
        }
        let Ok(Value::Obj(obj)) = ojson::parse(data) else {
            return 0; // not JSON, or not an object: skipped
        };
        let t = obj
            .get("type")
            .and_then(Value::as_str)
            .map(ojson::Str::decode);
        match t.as_deref() {
            Some("content_block_delta") => return self.block_delta(&obj, out),
            Some("content_block_start") => return self.block_start(&obj, out),
            Some("message_start") => return self.message_start(&obj, out),
            Some("message_delta") => {
                let Some(Value::Obj(delta)) = obj.get("delta") else {
                    return 0;
                };
                let reason = finish_reason(delta.get("stop_reason"));
                self.finish_sent = true;
                out.extend_from_slice(&self.head);
                out.extend_from_slice(b"},\"finish_reason\":\"");
                out.extend_from_slice(reason);
                out.extend_from_slice(b"\"}]}\n\n");
                return CONTENT | self.merge_usage(obj.get("usage"));
            }
            Some("message_stop") => {
                self.done = true;
                if self.include_usage && self.usage.seen && self.usage_chunk(out).is_err() {
                    return 0; // orjson could not write it: the event gives nothing
                }
                out.extend_from_slice(DONE_EVENT);
                return DONE;
            }
            _ => {}
        }
        if t.as_deref() == Some("error") || event == b"error" {
            self.error = true;
            out.extend_from_slice(b"event: error\ndata: ");
            error_body(&obj, data, out);
            out.extend_from_slice(b"\n\n");
            return ERROR;
        }
        0 // ping, content_block_stop, unknown events
    }

    fn merge_usage(&mut self, u: Option<&Value<'_>>) -> u32 {
        if self.usage.merge(u) {
            USAGE
        } else {
            0
        }
    }

    fn block_delta(&mut self, obj: &Obj<'_>, out: &mut Vec<u8>) -> u32 {
        let Some(Value::Obj(delta)) = obj.get("delta") else {
            return 0;
        };
        let Some(dt) = delta.get("type") else {
            return 0;
        };
        let field = |key: &str| match delta.get(key) {
            Some(Value::Str(s)) if !s.is_empty() => Some(*s),
            _ => None,
        };
        if dt.is_str("text_delta") {
            if let Some(text) = field("text") {
                self.delta_str(out, b"\"content\":", &text);
                return CONTENT;
            }
        } else if dt.is_str("input_json_delta") {
            let Some(part) = field("partial_json") else {
                return 0;
            };
            let Some(key) = obj.get("index").and_then(Value::int_key) else {
                return 0;
            };
            if let Some(&(_, k)) = self.tool_index.iter().find(|(i, _)| *i == key) {
                out.extend_from_slice(&self.head);
                out.extend_from_slice(b"\"tool_calls\":[{\"index\":");
                out.extend_from_slice(itoa::Buffer::new().format(k).as_bytes());
                out.extend_from_slice(b",\"function\":{\"arguments\":");
                part.dump(out);
                out.extend_from_slice(b"}}]");
                out.extend_from_slice(TAIL);
                return CONTENT;
            }
        } else if dt.is_str("thinking_delta") {
            if let Some(text) = field("thinking") {
                self.delta_str(out, b"\"reasoning_content\":", &text);
                return CONTENT;
            }
        }
        0
    }

    fn block_start(&mut self, obj: &Obj<'_>, out: &mut Vec<u8>) -> u32 {
        let (Some(index), Some(Value::Obj(block))) = (obj.get("index"), obj.get("content_block"))
        else {
            return 0;
        };
        let Some(bt) = block.get("type") else {
            return 0;
        };
        // `isinstance(index, int)`: bools are ints too.
        let int_index = match index {
            Value::Int(_) | Value::Bool(_) => index.int_key(),
            _ => None,
        };
        if bt.is_str("tool_use") {
            let k = self.tools;
            self.tools += 1;
            if let Some(key) = int_index {
                match self.tool_index.iter_mut().find(|(i, _)| *i == key) {
                    Some(slot) => slot.1 = k,
                    None => self.tool_index.push((key, k)),
                }
            }
            let mark = out.len();
            if self.tool_head(block, k, out).is_err() {
                out.truncate(mark); // a missing id or name, or too deep to write
                return 0;
            }
            return CONTENT;
        }
        let (key, field): (&[u8], &str) = if bt.is_str("text") {
            if let Some(n) = int_index {
                let mut prefix = TEXT_DELTA_HEAD.to_vec();
                match index {
                    Value::Bool(true) => prefix.extend_from_slice(b"True"),
                    Value::Bool(false) => prefix.extend_from_slice(b"False"),
                    _ => prefix.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                }
                prefix.extend_from_slice(TEXT_DELTA_MID);
                self.text_prefix = prefix;
            }
            (b"\"content\":", "text")
        } else if bt.is_str("thinking") {
            (b"\"reasoning_content\":", "thinking")
        } else {
            return 0;
        };
        match block.get(field) {
            Some(Value::Str(s)) if !s.is_empty() => {
                self.delta_str(out, key, s);
                CONTENT
            }
            _ => 0,
        }
    }

    /// A tool call's first chunk.
    fn tool_head(&self, block: &Obj<'_>, k: u64, out: &mut Vec<u8>) -> Result<(), ()> {
        let arguments = match block.get("input") {
            Some(args) if args.truthy() => {
                let mut json = Vec::new();
                args.dump(&mut json).map_err(|_| ())?;
                let mut s = Vec::with_capacity(json.len() + 16);
                dump_str(std::str::from_utf8(&json).map_err(|_| ())?, &mut s);
                s
            }
            _ => b"\"\"".to_vec(),
        };
        let id = block.get("id").ok_or(())?;
        let name = block.get("name").ok_or(())?;
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"tool_calls\":[{\"index\":");
        out.extend_from_slice(itoa::Buffer::new().format(k).as_bytes());
        out.extend_from_slice(b",\"id\":");
        id.dump(out).map_err(|_| ())?;
        out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
        name.dump(out).map_err(|_| ())?;
        out.extend_from_slice(b",\"arguments\":");
        out.extend_from_slice(&arguments);
        out.extend_from_slice(b"}}]");
        out.extend_from_slice(TAIL);
        Ok(())
    }

    fn message_start(&mut self, obj: &Obj<'_>, out: &mut Vec<u8>) -> u32 {
        let Some(Value::Obj(msg)) = obj.get("message") else {
            return 0;
        };
        let id = msg.get("id").unwrap_or(&Value::Null);
        let model = msg.get("model").unwrap_or(&Value::Null);
        let (mut id_json, mut model_json) = (Vec::new(), Vec::new());
        if id.dump(&mut id_json).is_err() || model.dump(&mut model_json).is_err() {
            return 0; // too deep for orjson to write: nothing changes
        }
        self.templates(&id_json, &model_json);
        self.started = true;
        self.delta(out, b"\"role\":\"assistant\",\"content\":\"\"", b"");
        self.merge_usage(msg.get("usage"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "data: {\"id\":\"msg_1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"claude-x\",\"choices\":[{\"index\":0,\"delta\":{";

    fn ev(t: &str, body: &str) -> String {
        format!("event: {t}\ndata: {{\"type\":\"{t}\"{body}}}\n\n")
    }

    fn start() -> String {
        ev(
            "message_start",
            ",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":null,\"output_tokens\":1}}",
        )
    }

    fn text(index: u32, t: &str) -> String {
        ev(
            "content_block_delta",
            &format!(",\"index\":{index},\"delta\":{{\"type\":\"text_delta\",\"text\":{t}}}"),
        )
    }

    fn text_start(index: u32) -> String {
        ev(
            "content_block_start",
            &format!(",\"index\":{index},\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}"),
        )
    }

    fn end(stop: &str) -> String {
        ev(
            "message_delta",
            &format!(",\"delta\":{{\"stop_reason\":\"{stop}\"}},\"usage\":{{\"output_tokens\":5}}"),
        ) + &ev("message_stop", "")
    }

    fn chunk(delta: &str) -> String {
        format!("{HEAD}{delta}}},\"finish_reason\":null}}]}}\n\n")
    }

    fn run(t: &mut ChatFromMessages, raw: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<u32>) {
        let mut out = Vec::new();
        let mut flags = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&raw.len())) {
            let (o, f) = t.feed(&raw[prev..c]).unwrap();
            out.extend(o);
            flags.push(f);
            prev = c;
        }
        out.extend(t.finish().unwrap());
        (out, flags)
    }

    #[test]
    fn a_text_stream() {
        let raw = start()
            + &text_start(0)
            + &ev("ping", "")
            + &text(0, "\"Hi \\u00e9\"")
            + &text(0, "\"\"")
            + &end("end_turn");
        let mut t = ChatFromMessages::new(true, 7, DEFAULT_MAX_EVENT);
        let (out, flags) = run(&mut t, raw.as_bytes(), &[]);
        let want = chunk("\"role\":\"assistant\",\"content\":\"\"")
            + &chunk("\"content\":\"Hi \\u00e9\"")
            + HEAD
            + "},\"finish_reason\":\"stop\"}]}\n\n"
            + "data: {\"id\":\"msg_1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"claude-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":27,\"completion_tokens\":5,\"total_tokens\":32,\"prompt_tokens_details\":{\"cached_tokens\":7}}}\n\n"
            + "data: [DONE]\n\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
        assert_eq!(flags, vec![COMMIT | USAGE | DONE]);
        assert!(t.done() && t.committed() && !t.error());
        assert_eq!(t.usage().unwrap().total_tokens, 32);
        assert_eq!(t.feed(text(0, "\"late\"").as_bytes()).unwrap(), (vec![], 0));
    }

    #[test]
    fn the_same_bytes_at_every_cut_and_line_end() {
        let raw = start() + &text_start(0) + &text(0, "\"a\\nb\"") + &text(0, "\"\u{e9}\"")
            + &ev("content_block_start", ",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}")
            + &ev("content_block_delta", ",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}")
            + &end("tool_use");
        let whole = run(
            &mut ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT),
            raw.as_bytes(),
            &[],
        )
        .0;
        for nl in ["\n", "\r\n", "\r"] {
            let raw = raw.replace('\n', nl);
            let raw = raw.as_bytes();
            for cut in 0..=raw.len() {
                let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
                let (out, flags) = run(&mut t, raw, &[cut]);
                assert_eq!(out, whole, "cut at {cut} ({nl:?})");
                assert_eq!(flags.iter().filter(|f| *f & COMMIT != 0).count(), 1);
            }
        }
        let text = String::from_utf8(whole).unwrap();
        assert!(text.contains("\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]"));
        assert!(text.contains(
            "\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}]"
        ));
        assert!(text.contains("\"finish_reason\":\"tool_calls\""));
    }

    #[test]
    fn errors_and_skipped_events() {
        let raw = start()
            + "event: content_block_delta\ndata: {not json\n\n"
            + &ev("content_block_delta", ",\"index\":0,\"delta\":\"oops\"")
            + &ev("message_start", "")
            + &ev(
                "error",
                ",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Over\\u006coaded\"}",
            )
            + &text(0, "\"never\"");
        let mut t = ChatFromMessages::new(true, 7, DEFAULT_MAX_EVENT);
        let (out, flags) = t.feed(raw.as_bytes()).unwrap();
        assert_eq!(flags, USAGE | ERROR);
        assert!(t.error() && !t.committed());
        let want = chunk("\"role\":\"assistant\",\"content\":\"\"")
            + "event: error\ndata: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded_error\"}}\n\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
        assert_eq!(t.finish().unwrap(), b"");
        // Any other type under `event: error`: the body itself is the message.
        let mut t = ChatFromMessages::new(true, 7, DEFAULT_MAX_EVENT);
        let (out, _) = t
            .feed(b"event: error\ndata:  {\"type\":\"x\"}\t\n\n")
            .unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with(
            "{\"error\":{\"message\":\"{\\\"type\\\":\\\"x\\\"}\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n"
        ));
    }

    #[test]
    fn finish_owes_the_end() {
        let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
        assert_eq!(t.finish().unwrap(), b"");
        let raw = start() + &text_start(0) + &text(0, "\"a\"");
        let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
        let (_, flags) = t.feed(raw.trim_end().as_bytes()).unwrap();
        assert_eq!(flags, USAGE);
        let tail = String::from_utf8(t.finish().unwrap()).unwrap();
        assert_eq!(
            tail,
            chunk("\"content\":\"a\"")
                + HEAD
                + "},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
        );
        assert!(t.done() && !t.committed()); // finish does not move the commit point
    }

    #[test]
    fn usage_past_64_bits() {
        let big = u64::MAX;
        let raw = ev(
            "message_start",
            &format!(",\"message\":{{\"id\":\"m\",\"usage\":{{\"input_tokens\":{big},\"cache_read_input_tokens\":1}}}}"),
        );
        let mut t = ChatFromMessages::new(true, 7, DEFAULT_MAX_EVENT);
        t.feed(raw.as_bytes()).unwrap();
        assert_eq!(t.usage().unwrap().prompt_tokens, u128::from(big) + 1);
        assert_eq!(t.finish(), Err(UsageOverflow));
        assert!(t.done());
        let mut t = ChatFromMessages::new(true, 7, DEFAULT_MAX_EVENT);
        let (out, flags) = t.feed((raw + &ev("message_stop", "")).as_bytes()).unwrap();
        assert_eq!(flags, USAGE); // message_stop gave nothing, but the stream is done
        assert!(t.done() && !String::from_utf8(out).unwrap().contains("[DONE]"));
    }

    #[test]
    fn events_past_the_bound() {
        let mut t = ChatFromMessages::new(false, 100, 100);
        let big = text(0, &format!("\"{}\"", "x".repeat(200)));
        let e = t.feed(big.as_bytes()).unwrap_err();
        assert_eq!(e.0, "an SSE event is larger than 100 bytes");
        let mut t = ChatFromMessages::new(false, 100, 100);
        assert!(t.feed(&big.as_bytes()[..150]).is_err());
        let mut t = ChatFromMessages::new(false, 100, 100);
        assert!(t.feed(&big.as_bytes()[..102]).is_ok());
        assert!(t.feed(&big.as_bytes()[102..103]).is_err());
    }

    #[test]
    fn line_ends_across_reads() {
        let delta = text(0, "\"a\"").replace("\n\n", "");
        let head = start() + &text_start(0);
        // A CR ending a read, then an empty read: the LF opening the next is a line end.
        let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
        t.feed(head.as_bytes()).unwrap();
        t.feed(format!("{delta}\r").as_bytes()).unwrap();
        t.feed(b"").unwrap();
        let (out, flags) = t.feed(b"\ndata: x\n\n").unwrap();
        assert_eq!(
            (String::from_utf8(out).unwrap(), flags),
            (chunk("\"content\":\"a\""), COMMIT)
        );
        // Without the empty read the LF is the CR's pair: the event goes on.
        let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
        t.feed(head.as_bytes()).unwrap();
        t.feed(format!("{delta}\r").as_bytes()).unwrap();
        assert_eq!(t.feed(b"\n\n").unwrap().1, COMMIT);
        // A CRLF cut after the CR: one line end (the event keeps its type).
        let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
        t.feed(b"event: error\r").unwrap();
        assert_eq!(
            t.feed(b"\ndata: {\"type\":\"x\"}\r\n\r\n").unwrap().1,
            ERROR
        );
    }

    #[test]
    fn a_whole_read_drops_a_stray_line_feed() {
        // After "\n\n\n" ending a read of whole events nothing is held, so 100
        // more bytes fit a bound of 98 (held bytes may reach the bound + 2).
        let mut t = ChatFromMessages::new(false, 7, 98);
        t.feed(b"data: {\"type\":\"ping\"}\n\n\n").unwrap();
        t.feed(&[b'x'; 50]).unwrap();
        assert!(t.feed(&[b'x'; 50]).is_ok());
        let mut t = ChatFromMessages::new(false, 7, 98);
        t.feed(b"data: {\"type\":\"ping\"}\n").unwrap();
        t.feed(b"\n\n").unwrap(); // not a whole read (bytes were held): "\n" is held
        t.feed(&[b'x'; 50]).unwrap();
        assert!(t.feed(&[b'x'; 50]).is_err());
    }

    #[test]
    fn the_end_commits_an_empty_answer_and_nulls_keep_usage() {
        let mut t = ChatFromMessages::new(true, 7, DEFAULT_MAX_EVENT);
        assert_eq!(t.feed(start().as_bytes()).unwrap().1, USAGE);
        let delta = ev(
            "message_delta",
            ",\"delta\":{},\"usage\":{\"input_tokens\":null,\"cache_read_input_tokens\":null}",
        );
        t.feed(delta.as_bytes()).unwrap();
        let u = t.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.cached_tokens), (27, Some(7)));
        let mut t = ChatFromMessages::new(true, 7, DEFAULT_MAX_EVENT);
        t.feed(start().as_bytes()).unwrap();
        assert_eq!(
            t.feed(ev("message_stop", "").as_bytes()).unwrap().1,
            DONE | COMMIT
        );
    }

    #[test]
    fn finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("other", "stop"),
        ] {
            let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
            let out = t.feed(end(stop).as_bytes()).unwrap().0;
            let want = format!("\"finish_reason\":\"{finish}\"");
            assert!(String::from_utf8(out).unwrap().contains(&want), "{stop}");
        }
    }

    #[test]
    fn quirks_of_the_reference() {
        // A bool index is an int to Python: `True` in the text prefix, 1 as a tool key.
        let raw = start()
            + &ev("content_block_start", ",\"index\":true,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{\"b\":1.0,\"a\":[1e16],\"b\":null}}")
            + &ev("content_block_delta", ",\"index\":1.0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"x\"}");
        let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
        let out = String::from_utf8(t.feed(raw.as_bytes()).unwrap().0).unwrap();
        assert!(
            out.contains("\"arguments\":\"{\\\"b\\\":null,\\\"a\\\":[1e+16]}\""),
            "{out}"
        );
        assert!(out.contains("{\"index\":0,\"function\":{\"arguments\":\"x\"}}"));
        // A tool block without an id is numbered all the same.
        let raw = ev(
            "content_block_start",
            ",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"name\":\"f\"}",
        ) + &ev(
            "content_block_start",
            ",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\"}",
        );
        let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
        let out = String::from_utf8(t.feed(raw.as_bytes()).unwrap().0).unwrap();
        assert!(out.contains("[{\"index\":1,\"id\":\"t\""), "{out}");
        // The prefix before any text block is a NUL byte.
        let mut t = ChatFromMessages::new(false, 7, DEFAULT_MAX_EVENT);
        let (out, flags) = t.feed(b"data: \0\"x\"}}\n\n").unwrap();
        assert_eq!(flags, COMMIT);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("\"content\":\"x\""));
    }
}
