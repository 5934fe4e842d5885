//! HTTP/1.1 messages that arrive whole, parsed in one call.
//!
//! The server and the upstream client parse with `httptools` (llhttp), one
//! Python callback per piece. Most requests and answers of a busy gateway
//! arrive in one read, with a `content-length` body and nothing unusual in
//! them. For those, [`parse_request`] and [`parse_response`] (on `httparse`)
//! give the same result in one call. They accept a strict subset of what
//! llhttp accepts, and answer `None` for everything else, which then goes
//! to llhttp as before, so every error, limit and odd framing keeps one
//! implementation. `None` means: incomplete, pipelined (more than one
//! message), HTTP/1.0, chunked or `transfer-encoding` of any kind,
//! `expect`, an upgrade, duplicate `content-length` or `connection`
//! headers, a `connection` header other than plain tokens, trailing
//! whitespace in a header value (llhttp keeps it, httparse trims it), a
//! bare LF line end, a method llhttp does not know, a request target that
//! is not an ASCII origin-form path, more than [`MAX_HEADERS`] headers, or a
//! head or body over the given limits.
//!
//! [`forwarded`] is the request header pass (which headers go upstream) and
//! [`usage`] reads the token counts of a whole JSON answer; both mirror the
//! pure-Python code they replace (`fastgw/_reference/http.py`).

use memchr::memchr_iter;
use memchr::memmem::{Finder, FinderRev};
use std::sync::LazyLock;

/// The most headers one message may have to be parsed here.
pub const MAX_HEADERS: usize = 64;

/// Methods llhttp accepts that the gateway sees (any other goes to llhttp).
const METHODS: [&[u8]; 7] = [
    b"POST", b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
];

/// One header: the name as sent (not lowercased) and the value.
pub type Header<'a> = (&'a [u8], &'a [u8]);

/// A whole request: head and `content-length` body in one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method, as sent.
    pub method: &'a [u8],
    /// The path (before any `?`).
    pub path: &'a [u8],
    /// The query (after the first `?`; empty when there is none).
    pub query: &'a [u8],
    /// The headers, in order.
    pub headers: Vec<Header<'a>>,
    /// The body.
    pub body: &'a [u8],
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// The `content-length` value (-1 when absent).
    pub content_length: i64,
}

/// How a response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `content-length` bytes.
    Length(usize),
    /// The chunked encoding (read with [`Chunked`]).
    Chunked,
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead<'a> {
    /// The status code (200..=599, never 204 or 304).
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<Header<'a>>,
    /// Whether the connection may carry another exchange.
    pub keep_alive: bool,
    /// The length of the head (the body starts there).
    pub head_len: usize,
    /// The body's framing.
    pub body: Body,
}

/// What the framing headers of one message said.
struct Framing {
    content_length: Option<usize>,
    chunked: bool,
    keep_alive: bool,
}

/// Checks the framing headers; `None` for anything to leave to llhttp.
fn framing(headers: &[httparse::Header<'_>], head: &[u8], request: bool) -> Option<Framing> {
    let mut content_length = None;
    let mut chunked = false;
    let mut keep_alive = true;
    let mut seen_connection = false;
    let base = head.as_ptr() as usize;
    for h in headers {
        let value = h.value;
        // llhttp keeps trailing whitespace in a value, httparse drops it: the
        // byte after the value must be the line's CR.
        let end = value.as_ptr() as usize + value.len() - base;
        if head.get(end) != Some(&b'\r') {
            return None;
        }
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some()
                || value.is_empty()
                || value.len() > 15
                || !value.iter().all(u8::is_ascii_digit)
            {
                return None;
            }
            content_length = Some(
                value
                    .iter()
                    .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // A response may be chunked (and nothing else); a request goes to llhttp.
            if request || chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade")
            || (request && name.eq_ignore_ascii_case(b"expect"))
        {
            return None;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if seen_connection {
                return None;
            }
            seen_connection = true;
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        }
    }
    if chunked && content_length.is_some() {
        return None;
    }
    Some(Framing {
        content_length,
        chunked,
        keep_alive,
    })
}

/// Every LF of the head ends a CRLF (httparse also takes a bare LF).
fn crlf_only(head: &[u8]) -> bool {
    memchr_iter(b'\n', head).all(|i| i > 0 && head[i - 1] == b'\r')
}

fn collect<'a>(headers: &[httparse::Header<'a>]) -> Vec<Header<'a>> {
    headers
        .iter()
        .map(|h| (h.name.as_bytes(), h.value))
        .collect()
}

/// `buf` as exactly one whole HTTP/1.1 request, or `None` (see the module).
#[must_use]
pub fn parse_request(buf: &[u8], max_head: usize, max_body: usize) -> Option<Request<'_>> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let Ok(httparse::Status::Complete(head_len)) = req.parse(buf) else {
        return None;
    };
    if head_len > max_head || req.version != Some(1) {
        return None;
    }
    let head = &buf[..head_len];
    let method = req.method?.as_bytes();
    let target = req.path?.as_bytes();
    if !METHODS.contains(&method)
        || target.first() != Some(&b'/')
        || !target.iter().all(|&b| (0x21..0x7f).contains(&b))
        || !crlf_only(head)
    {
        return None;
    }
    let f = framing(req.headers, head, true)?;
    let length = f.content_length.unwrap_or(0);
    if length > max_body || buf.len() - head_len != length {
        return None;
    }
    let (path, query) = match memchr::memchr(b'?', target) {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &b""[..]),
    };
    Some(Request {
        method,
        path,
        query,
        headers: collect(req.headers),
        body: &buf[head_len..],
        keep_alive: f.keep_alive,
        content_length: f
            .content_length
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
    })
}

/// The head of an HTTP/1.1 response at the start of `buf`, or `None` (see
/// the module): with a `content-length` body, `buf` must hold exactly the
/// head and the whole body; with a chunked body, the head and any part of
/// the body. A close-delimited body is left to llhttp.
#[must_use]
pub fn parse_response(buf: &[u8]) -> Option<ResponseHead<'_>> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let Ok(httparse::Status::Complete(head_len)) = resp.parse(buf) else {
        return None;
    };
    let status = resp.code?;
    if resp.version != Some(1) || !(200..600).contains(&status) || status == 204 || status == 304 {
        return None;
    }
    let head = &buf[..head_len];
    if !crlf_only(head) {
        return None;
    }
    let f = framing(resp.headers, head, false)?;
    let body = if f.chunked {
        Body::Chunked
    } else {
        let length = f.content_length?;
        if length != buf.len() - head_len {
            return None;
        }
        Body::Length(length)
    };
    Some(ResponseHead {
        status,
        headers: collect(resp.headers),
        keep_alive: f.keep_alive,
        head_len,
        body,
    })
}

/// A malformed chunked body (or bytes after its end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    ExtStart,
    ExtName,
    ExtValueStart,
    ExtValue,
    ExtQuoted,
    ExtQuotedPair,
    ExtQuotedEnd,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// An incremental reader of the chunked transfer coding, as llhttp reads it:
/// hex sizes (leading zeros allowed, no whitespace), extensions of token
/// characters and `=` after `;`, CRLF line ends only, trailer fields after
/// the last chunk; any byte after the end is an error.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u32,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// The next state of a chunk extension (`;name=value` or `;name="quoted"`,
/// several allowed) after byte `b`, as llhttp moves.
fn extension(state: ChunkState, b: u8) -> Result<ChunkState, ChunkError> {
    use ChunkState::{
        ExtName, ExtQuoted, ExtQuotedEnd, ExtQuotedPair, ExtStart, ExtValue, ExtValueStart, SizeLf,
    };
    let text = b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80;
    let next = match (state, b) {
        (ExtStart | ExtName | ExtValueStart | ExtValue | ExtQuotedEnd, b';') => ExtStart,
        (ExtName | ExtValueStart | ExtValue | ExtQuotedEnd, b'\r') => SizeLf,
        (ExtStart | ExtName, b'=') => ExtValueStart,
        (ExtStart | ExtName, _) if is_token(b) => ExtName,
        (ExtValueStart, b'"') => ExtQuoted,
        (ExtValueStart | ExtValue, _) if is_token(b) => ExtValue,
        (ExtQuoted, b'"') => ExtQuotedEnd,
        (ExtQuoted, b'\\') => ExtQuotedPair,
        (ExtQuoted | ExtQuotedPair, _) if text => ExtQuoted,
        _ => return Err(ChunkError("invalid character in chunk extensions")),
    };
    Ok(next)
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Chunked {
    /// A reader at the start of a body.
    #[must_use]
    pub fn new() -> Self {
        Chunked {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
        }
    }

    /// Whether the last chunk and the trailer have been read.
    #[must_use]
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Reads `data`; the chunk data it holds is pushed to `out` (a chunk cut
    /// by the end of `data` gives the part read so far).
    ///
    /// # Errors
    /// A malformed body, or bytes after its end.
    #[allow(clippy::too_many_lines)]
    pub fn feed<'a>(&mut self, data: &'a [u8], out: &mut Vec<&'a [u8]>) -> Result<(), ChunkError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => {
                    if let Some(v) = hex_value(b) {
                        // As llhttp: any size that fits in 64 bits is read.
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(v))
                            .ok_or(ChunkError("chunk size overflow"))?;
                        self.digits += 1;
                    } else if self.digits == 0 {
                        return Err(ChunkError("invalid character in chunk size"));
                    } else if b == b';' {
                        self.state = ChunkState::ExtStart;
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else {
                        return Err(ChunkError("invalid character in chunk size"));
                    }
                    i += 1;
                }
                ChunkState::ExtStart
                | ChunkState::ExtName
                | ChunkState::ExtValueStart
                | ChunkState::ExtValue
                | ChunkState::ExtQuoted
                | ChunkState::ExtQuotedPair
                | ChunkState::ExtQuotedEnd => {
                    self.state = extension(self.state, b)?;
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("missing LF after chunk size"));
                    }
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                    i += 1;
                }
                ChunkState::Data => {
                    let avail = data.len() - i;
                    let n = usize::try_from(self.size).map_or(avail, |s| s.min(avail));
                    out.push(&data[i..i + n]);
                    i += n;
                    self.size -= u64::try_from(n).unwrap_or(u64::MAX);
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("missing CR after chunk data"));
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("missing LF after chunk data"));
                    }
                    self.state = ChunkState::Size;
                    self.digits = 0;
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    if b == b'\r' {
                        self.state = ChunkState::EndLf;
                    } else if is_token(b) {
                        self.state = ChunkState::TrailerName;
                    } else {
                        return Err(ChunkError("invalid trailer field"));
                    }
                    i += 1;
                }
                ChunkState::TrailerName => {
                    if b == b':' {
                        self.state = ChunkState::TrailerValue;
                    } else if !is_token(b) {
                        return Err(ChunkError("invalid trailer field"));
                    }
                    i += 1;
                }
                ChunkState::TrailerValue => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if b != b'\t' && (b < 0x20 || b == 0x7f) {
                        return Err(ChunkError("invalid trailer field"));
                    }
                    i += 1;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("missing LF after a trailer field"));
                    }
                    self.state = ChunkState::TrailerStart;
                    i += 1;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("missing LF at the end of the body"));
                    }
                    self.state = ChunkState::Done;
                    i += 1;
                }
                ChunkState::Done => return Err(ChunkError("bytes after the end of the response")),
            }
        }
        Ok(())
    }
}

/// OpenAI's reset format for `x-ratelimit-reset-*`, appended to `out`: `0s`
/// for nothing to wait, whole milliseconds rounded up under a second
/// (`20ms`), seconds to the millisecond under a minute (`1.5s`), then whole
/// seconds rounded up (`6m0s`, `1h2m3s`). False (nothing appended) for a
/// wait too long to show exactly.
pub fn reset_duration(seconds: f64, out: &mut Vec<u8>) -> bool {
    if seconds <= 0.0 || seconds.is_nan() || seconds == f64::INFINITY {
        out.extend_from_slice(b"0s");
    } else if seconds < 1.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = (seconds * 1000.0).ceil() as u64; // < 1000: exact
        out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
        out.extend_from_slice(b"ms");
    } else if seconds < 60.0 {
        // Seconds to the millisecond (Python: "%g" % round(seconds, 3)).
        if let Some(ms) = crate::num::scaled_rounded(seconds, 3) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            crate::num::write_thousandths(out, ms as u64, false);
        } else {
            let text = format!("{seconds:.3}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            out.extend_from_slice(text.as_bytes());
        }
        out.push(b's');
    } else if seconds < 1e15 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let total = seconds.ceil() as u64; // < 1e15: exact
        let (m, s) = (total / 60, total % 60);
        let mut n = itoa::Buffer::new();
        if m >= 60 {
            out.extend_from_slice(n.format(m / 60).as_bytes());
            out.push(b'h');
        }
        out.extend_from_slice(n.format(m % 60).as_bytes());
        out.push(b'm');
        out.extend_from_slice(n.format(s).as_bytes());
        out.push(b's');
    } else {
        return false;
    }
    true
}

/// Request headers never forwarded upstream (lowercase names): hop-by-hop,
/// framing, credentials, and what the gateway sets itself.
pub const DROP_REQUEST: [&[u8]; 25] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"host",
    b"content-length",
    b"content-type",
    b"expect",
    b"authorization",
    b"x-api-key",
    b"api-key",
    b"accept-encoding",
    b"cookie",
    b"openai-organization",
    b"openai-project",
    b"x-request-id",
    b"x-forwarded-for",
    b"forwarded",
    b"x-real-ip",
    b"anthropic-version",
];

/// A client `x-request-id` the gateway adopts: 1 to 128 of `A-Za-z0-9._:-`.
#[must_use]
pub fn valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// What goes upstream of a request's headers (lowercase names).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forwarded<'a> {
    /// `name: value\r\n` lines to send upstream.
    pub block: Vec<u8>,
    /// The client's `x-request-id`, when usable (the last usable one).
    pub request_id: Option<&'a [u8]>,
    /// Whether an `x-fastgw-*` control header is present.
    pub controls: bool,
    /// The caller's key or token: the first `authorization` header's when it
    /// is `Bearer <token>` (any case; the token stripped, not empty), else the
    /// first `x-api-key` stripped when not empty.
    pub credential: Option<&'a [u8]>,
}

/// The request header pass: drops hop-by-hop, framing, credentials, the
/// headers `connection` names and `x-fastgw-*` controls. Names are read in
/// any case; the block sends them lowercase.
#[must_use]
pub fn forwarded<'a>(headers: &[(&'a [u8], &'a [u8])]) -> Forwarded<'a> {
    let mut out = Forwarded::default();
    let mut hop: Vec<Vec<u8>> = Vec::new();
    let mut kept: smallvec::SmallVec<[Header<'a>; 16]> = smallvec::SmallVec::new();
    let (mut auth, mut api_key) = (None, None);
    let mut low = Lowercase::default();
    for &(raw, value) in headers {
        let name = low.of(raw);
        if DROP_REQUEST.contains(&name) {
            if name == b"x-request-id" && valid_request_id(value) {
                out.request_id = Some(value);
            } else if name == b"authorization" {
                auth = auth.or(Some(value));
            } else if name == b"x-api-key" {
                api_key = api_key.or(Some(value));
            } else if name == b"connection" {
                hop.extend(
                    value
                        .split(|&b| b == b',')
                        .map(|v| trim_py(v).to_ascii_lowercase()),
                );
            }
            continue;
        }
        if name.starts_with(b"x-fastgw-") {
            out.controls = true;
            continue;
        }
        kept.push((raw, value));
    }
    let size = kept.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    out.block.reserve_exact(size);
    for (raw, value) in kept {
        let name = low.of(raw);
        if hop.iter().any(|h| h.as_slice() == name) {
            continue;
        }
        out.block.extend_from_slice(name);
        out.block.extend_from_slice(b": ");
        out.block.extend_from_slice(value);
        out.block.extend_from_slice(b"\r\n");
    }
    out.credential = credential(auth, api_key);
    out
}

/// Header names lowercased without an allocation per name.
#[derive(Default)]
struct Lowercase {
    small: [u8; 32],
    big: Vec<u8>,
}

impl Lowercase {
    /// `name` in lowercase: itself when it has no capitals.
    fn of<'s>(&'s mut self, name: &'s [u8]) -> &'s [u8] {
        if !name.iter().any(u8::is_ascii_uppercase) {
            return name;
        }
        if name.len() <= self.small.len() {
            let out = &mut self.small[..name.len()];
            for (d, s) in out.iter_mut().zip(name) {
                *d = s.to_ascii_lowercase();
            }
            return out;
        }
        self.big.clear();
        self.big.extend(name.iter().map(u8::to_ascii_lowercase));
        &self.big
    }
}

/// The credential of a request's first `authorization` and `x-api-key`
/// values (see [`Forwarded::credential`]).
fn credential<'a>(auth: Option<&'a [u8]>, api_key: Option<&'a [u8]>) -> Option<&'a [u8]> {
    if let Some(value) = auth {
        let (scheme, token) = match value.iter().position(|&b| b == b' ') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, &value[value.len()..]),
        };
        let token = trim_py(token);
        if !token.is_empty() && scheme.eq_ignore_ascii_case(b"bearer") {
            return Some(token);
        }
    }
    api_key.map(trim_py).filter(|k| !k.is_empty())
}

/// Python's `bytes.strip()`: ASCII whitespace, `\x0b` included.
fn trim_py(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !is_space(b)).unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// The searchers of [`usage`], built once.
struct UsageKeys {
    usage: FinderRev<'static>,
    prompt: [Finder<'static>; 2],
    completion: [Finder<'static>; 2],
}

static USAGE_KEYS: LazyLock<UsageKeys> = LazyLock::new(|| UsageKeys {
    usage: FinderRev::new(b"\"usage\""),
    prompt: [
        Finder::new(b"\"prompt_tokens\""),
        Finder::new(b"\"input_tokens\""),
    ],
    completion: [
        Finder::new(b"\"completion_tokens\""),
        Finder::new(b"\"output_tokens\""),
    ],
});

/// A token count: the digits after `"<key>"`, optional whitespace, `:` and
/// optional whitespace, for the first of `keys` found at or after `from`.
/// The digits are returned as text (they may not fit 64 bits).
fn count_after<'a>(body: &'a [u8], from: usize, keys: &[Finder<'static>; 2]) -> Option<&'a [u8]> {
    // The earliest match of either key, as one regex alternation would find.
    let mut best: Option<&[u8]> = None;
    let mut best_at = usize::MAX;
    for key in keys {
        let mut start = from;
        while let Some(i) = key.find(&body[start..]).map(|i| i + start) {
            if i >= best_at {
                break;
            }
            let mut j = i + key.needle().len();
            while j < body.len() && is_space(body[j]) {
                j += 1;
            }
            if body.get(j) == Some(&b':') {
                j += 1;
                while j < body.len() && is_space(body[j]) {
                    j += 1;
                }
                let digits = body[j..].iter().take_while(|b| b.is_ascii_digit()).count();
                if digits > 0 {
                    best = Some(&body[j..j + digits]);
                    best_at = i;
                    break;
                }
            }
            start = i + 1;
        }
    }
    best
}

/// Python's `\s` on bytes: space, `\t`, `\n`, `\r`, `\x0b`, `\x0c`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Prompt and completion token counts, as digit strings (either may be absent).
pub type Counts<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// `(prompt, completion)` token counts (as digit strings, either may be
/// absent) after the last `"usage"` key of a whole JSON answer; `None`
/// without a `"usage"` key or without either count.
#[must_use]
pub fn usage(body: &[u8]) -> Option<Counts<'_>> {
    let keys = &*USAGE_KEYS;
    let at = keys.usage.rfind(body)?;
    let prompt = count_after(body, at, &keys.prompt);
    let completion = count_after(body, at, &keys.completion);
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    Some((prompt, completion))
}

/// Where to splice a request body's model name: `(start, end)` of
/// `"model":<old>` or `"model": <old>` (`old` a JSON string literal) when that
/// occurs and `"model"` occurs nowhere else in `body` (it is then the top-level
/// key: the parsed document has it); `None` otherwise (the caller re-encodes).
/// The separator without a space is looked for first.
#[must_use]
pub fn model_splice(body: &[u8], old: &[u8]) -> Option<(usize, usize)> {
    const KEY: &[u8] = b"\"model\"";
    static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(KEY));
    let first = FINDER.find(body)?;
    let mut at = first + KEY.len();
    if body.get(at) != Some(&b':') {
        return None;
    }
    at += 1;
    if body.get(at) == Some(&b' ') && !body[at..].starts_with(old) {
        at += 1;
    }
    if !body[at..].starts_with(old) {
        return None;
    }
    let end = at + old.len();
    if FINDER.find(&body[end..]).is_some() {
        return None;
    }
    Some((at, end))
}

/// Upstream response headers passed to clients (lowercase name, name sent).
pub const PASS_RESPONSE: [(&[u8], &[u8]); 5] = [
    (b"openai-processing-ms", b"openai-processing-ms"),
    (b"openai-version", b"openai-version"),
    (b"x-request-id", b"x-upstream-request-id"),
    (b"retry-after", b"retry-after"),
    (b"retry-after-ms", b"retry-after-ms"),
];

/// The name an allow-listed upstream response header is passed under.
#[must_use]
pub fn passed_name(name: &[u8]) -> Option<&'static [u8]> {
    PASS_RESPONSE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, sent)| sent)
}

/// `data` with every occurrence of each secret, in turn, replaced by `[redacted]`.
#[must_use]
pub fn scrub(data: Vec<u8>, secrets: &[&[u8]]) -> Vec<u8> {
    let mut data = data;
    for secret in secrets {
        if secret.is_empty() || memchr::memmem::find(&data, secret).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(data.len());
        let mut rest = &data[..];
        while let Some(i) = memchr::memmem::find(rest, secret) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(b"[redacted]");
            rest = &rest[i + secret.len()..];
        }
        out.extend_from_slice(rest);
        data = out;
    }
    data
}

/// `secs` (Unix time, 0 to the end of year 9999) as an HTTP date
/// (IMF-fixdate, RFC 9110): `Sun, 06 Nov 1994 08:49:37 GMT`, as Python's
/// `email.utils.formatdate(secs, usegmt=True)` writes it.
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn http_date(secs: i64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let secs = secs.clamp(0, 253_402_300_799);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // The civil date of a day count (days since 1970-01-01), in the proleptic
    // Gregorian calendar: eras of 400 years from 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let two = |n: i64| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    let mut out = [0u8; 29];
    {
        out[..3].copy_from_slice(DAYS[days.rem_euclid(7) as usize]);
        out[3..5].copy_from_slice(b", ");
        out[5..7].copy_from_slice(&two(day));
        out[7] = b' ';
        out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
        out[11] = b' ';
        out[12..14].copy_from_slice(&two(year / 100));
        out[14..16].copy_from_slice(&two(year % 100));
        out[16] = b' ';
        out[17..19].copy_from_slice(&two(rem / 3600));
        out[19] = b':';
        out[20..22].copy_from_slice(&two(rem / 60 % 60));
        out[22] = b':';
        out[23..25].copy_from_slice(&two(rem % 60));
    }
    out[25..].copy_from_slice(b" GMT");
    out
}

/// `x` as Python's `"%.3f" % x` writes it (correctly rounded, ties to even).
pub fn fixed3(out: &mut Vec<u8>, x: f64) {
    match crate::num::scaled_rounded(x, 3) {
        Some(units) if units >= 0.0 => {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let units = units as u64;
            out.extend_from_slice(itoa::Buffer::new().format(units / 1000).as_bytes());
            let frac = units % 1000;
            #[allow(clippy::cast_possible_truncation)]
            out.extend_from_slice(&[
                b'.',
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ]);
        }
        _ => out.extend_from_slice(format!("{x:.3}").as_bytes()),
    }
}

/// The completion tokens a request's estimate reserves when it names none.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 256;

/// What the request phase reads of a JSON request body, read without building
/// the document: see [`peek_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek<'a> {
    /// `model`.
    pub model: std::borrow::Cow<'a, str>,
    /// `stream` (false when absent).
    pub stream: bool,
    /// Whether the body has a top-level `fastgw` member (routing controls).
    pub controls: bool,
    /// The completion tokens the limits' estimate reserves: the first true
    /// value of `max_completion_tokens`, `max_tokens`, `max_output_tokens` when
    /// it is a positive integer, else [`DEFAULT_COMPLETION_TOKENS`].
    pub completion: u64,
    /// `stream_options`: `Some(true)` when its `include_usage` is `true`,
    /// `Some(false)` when the body has no `stream_options` member, None for
    /// anything else (the usage chunk is asked for by re-encoding the dict).
    pub usage_asked: Option<bool>,
}

/// A request body as the request phase reads it, when it is a document
/// `orjson.loads` reads as a `dict` whose `model` is a string and whose
/// `stream`, when present, is a boolean (a repeated key counts with its last
/// value, as in the `dict`). None for anything else: the caller parses the body
/// itself (and refuses it with the parser's own words).
#[must_use]
pub fn peek_request(body: &[u8]) -> Option<Peek<'_>> {
    const READ: [&str; 7] = [
        "model",
        "stream",
        "fastgw",
        "max_completion_tokens",
        "max_tokens",
        "max_output_tokens",
        "stream_options",
    ];
    let members = crate::ojson::object_members(body, |k| READ.iter().any(|n| k.eq_str(n)))?;
    let obj = &members;
    let model = obj.get("model")?.as_str()?.decode();
    let stream = match obj.get("stream") {
        None => false,
        Some(crate::ojson::Value::Bool(b)) => *b,
        Some(_) => return None,
    };
    let chosen = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| obj.get(k).filter(|v| v.truthy()));
    let completion = match chosen {
        Some(crate::ojson::Value::Int(n)) if *n > 0 => u64::try_from(*n).ok()?,
        _ => DEFAULT_COMPLETION_TOKENS,
    };
    let usage_asked = match obj.get("stream_options") {
        None => Some(false),
        Some(crate::ojson::Value::Obj(o))
            if matches!(
                o.get("include_usage"),
                Some(crate::ojson::Value::Bool(true))
            ) =>
        {
            Some(true)
        }
        Some(_) => None,
    };
    Some(Peek {
        model,
        stream,
        controls: obj.get("fastgw").is_some(),
        completion,
        usage_asked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_peeked_as_its_dict_reads() {
        let p = peek_request(
            br#"{"model":"gpt\u002d4","stream":true,"max_tokens":0,"max_output_tokens":7}"#,
        )
        .unwrap();
        assert_eq!(
            (p.model.as_ref(), p.stream, p.controls, p.completion),
            ("gpt-4", true, false, 7)
        );
        let p = peek_request(br#"{"model":"a","model":"b","fastgw":{},"max_tokens":1.5}"#).unwrap();
        assert_eq!(
            (p.model.as_ref(), p.stream, p.controls, p.completion),
            ("b", false, true, 256)
        );
        let p = peek_request(br#" {"model":"m","max_completion_tokens":true,"stream":false} "#)
            .unwrap();
        assert_eq!(
            (p.completion, p.usage_asked),
            (DEFAULT_COMPLETION_TOKENS, Some(false))
        );
        let p = peek_request(br#"{"model":"m","stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(p.usage_asked, Some(true));
        let p = peek_request(br#"{"model":"m","stream_options":{"include_usage":1}}"#).unwrap();
        assert_eq!(p.usage_asked, None);
        let p = peek_request(br#"{"model":"m","stream_options":null}"#).unwrap();
        assert_eq!(p.usage_asked, None);
        for refused in [
            &br#"{"model":1}"#[..],
            br#"{"model":"m","stream":null}"#,
            br#"["model"]"#,
            br#"{"model":"m",}"#,
            br#"{"model":"m"}x"#,
            b"\xef\xbb\xbf{\"model\":\"m\"}",
            br#"{"stream":true}"#,
            b"",
        ] {
            assert_eq!(peek_request(refused), None, "{refused:?}");
        }
    }

    const BODY: &[u8] = br#"{"model":"m","messages":[]}"#;

    fn post(extra: &str) -> Vec<u8> {
        let mut v = format!(
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\n{extra}Content-Length: {}\r\n\r\n",
            BODY.len()
        )
        .into_bytes();
        v.extend_from_slice(BODY);
        v
    }

    #[test]
    fn the_model_is_spliced_only_when_it_is_the_one_model_key() {
        let at = |body: &[u8]| model_splice(body, br#""gpt""#);
        assert_eq!(at(br#"{"model":"gpt","n":1}"#), Some((9, 14)));
        assert_eq!(at(br#"{"model": "gpt", "n": 1}"#), Some((10, 15)));
        assert_eq!(at(br#"{"n":1,"model":"gpt"}"#), Some((15, 20)));
        assert_eq!(at(br#"{"model":"gpt4"}"#), None); // the literal's closing quote differs
        assert_eq!(at(br#"{"model":"gp"}"#), None);
        assert_eq!(at(br#"{"model" : "gpt"}"#), None); // other spacing: re-encoded
        assert_eq!(at(br#"{"model":"gpt","m":[{"role":"model"}]}"#), None);
        assert_eq!(at(br#"{"x":{"model":"y"},"model":"gpt"}"#), None);
        assert_eq!(at(br#"{"n":1}"#), None);
    }

    #[test]
    fn http_date_is_imf_fixdate() {
        assert_eq!(&http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            &http_date(253_402_300_799),
            b"Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }

    #[test]
    fn fixed3_is_the_formatted_rounding() {
        let mut x = 1e-7_f64;
        while x < 1e9 {
            for v in [x, x + 0.000_5, x * 1.000_000_1] {
                let mut out = Vec::new();
                fixed3(&mut out, v);
                assert_eq!(String::from_utf8(out).unwrap(), format!("{v:.3}"), "{v}");
            }
            x *= 1.000_9;
        }
    }

    #[test]
    fn secrets_are_scrubbed_in_turn() {
        let got = scrub(b"a sk-1 b sk-1sk-12".to_vec(), &[b"sk-1", b"2"]);
        assert_eq!(
            got,
            b"a [redacted] b [redacted][redacted][redacted]".to_vec()
        );
        assert_eq!(scrub(b"x".to_vec(), &[b""]), b"x".to_vec());
        assert_eq!(
            passed_name(b"x-request-id"),
            Some(&b"x-upstream-request-id"[..])
        );
        assert_eq!(passed_name(b"server"), None);
    }

    fn dur(seconds: f64) -> String {
        let mut out = Vec::new();
        assert!(reset_duration(seconds, &mut out));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn reset_durations() {
        assert_eq!(dur(0.0), "0s");
        assert_eq!(dur(-1.0), "0s");
        assert_eq!(dur(0.02), "20ms");
        assert_eq!(dur(0.0201), "21ms");
        assert_eq!(dur(1.5), "1.5s");
        assert_eq!(dur(59.9996), "60s");
        assert_eq!(dur(360.0), "6m0s");
        assert_eq!(dur(3723.2), "1h2m4s");
        assert!(!reset_duration(1e16, &mut Vec::new()));
    }

    #[test]
    fn seconds_are_the_formatted_rounding() {
        let mut x = 1.0_f64;
        while x < 60.0 {
            for v in [x, x + 0.000_5, x + 0.000_499_999_9] {
                let text = format!("{v:.3}");
                let want = text.trim_end_matches('0').trim_end_matches('.');
                assert_eq!(dur(v), format!("{want}s"), "{v}");
            }
            x += 0.000_73;
        }
    }

    #[test]
    fn whole_request_is_parsed() {
        let buf = post("Authorization: Bearer k\r\n");
        let r = parse_request(&buf, 65536, 1 << 20).unwrap();
        assert_eq!(r.method, b"POST");
        assert_eq!(r.path, b"/v1/chat/completions");
        assert_eq!(r.query, b"x=1");
        assert_eq!(r.body, BODY);
        assert!(r.keep_alive);
        assert_eq!(r.content_length, i64::try_from(BODY.len()).unwrap());
        assert_eq!(r.headers[1], (&b"Authorization"[..], &b"Bearer k"[..]));
    }

    #[test]
    fn get_without_body() {
        let r = parse_request(
            b"GET /healthz HTTP/1.1\r\nConnection: Close\r\n\r\n",
            100,
            0,
        )
        .unwrap();
        assert_eq!(r.body, b"");
        assert_eq!(r.content_length, -1);
        assert!(!r.keep_alive);
    }

    #[test]
    fn anything_unusual_is_left_to_llhttp() {
        let whole = post("");
        let cases: Vec<Vec<u8>> = vec![
            whole[..whole.len() - 1].to_vec(),       // incomplete body
            [whole.clone(), whole.clone()].concat(), // pipelined
            whole.replace_first(b"HTTP/1.1", b"HTTP/1.0"),
            post("Transfer-Encoding: chunked\r\n"),
            post("Content-Length: 3\r\n"), // duplicate length
            post("Expect: 100-continue\r\n"),
            post("Connection: upgrade\r\nUpgrade: h2c\r\n"),
            post("Connection: close\r\nConnection: close\r\n"),
            post("X-A: trailing \r\n"),
            post("X-A: b\n"), // bare LF
            whole.replace_first(b"POST", b"FOO"),
            whole.replace_first(b"/v1/chat", b"http://h/v1/chat"),
            whole.replace_first(b"/v1/chat", b"/v1/\xc3\xa9chat"),
            post("Content-Length: +5\r\n"),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(parse_request(c, 65536, 1 << 20).is_none(), "case {i}");
        }
        assert!(
            parse_request(&whole, 20, 1 << 20).is_none(),
            "head over the limit"
        );
        assert!(
            parse_request(&whole, 65536, 3).is_none(),
            "body over the limit"
        );
    }

    trait ReplaceFirst {
        fn replace_first(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
    }

    impl ReplaceFirst for Vec<u8> {
        fn replace_first(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
            let i = memchr::memmem::find(self, from).unwrap();
            [&self[..i], to, &self[i + from.len()..]].concat()
        }
    }

    #[test]
    fn whole_response_is_parsed() {
        let buf =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let r = parse_response(buf).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(&buf[r.head_len..], b"{}");
        assert_eq!(r.body, Body::Length(2));
        assert!(r.keep_alive);
        assert_eq!(r.headers.len(), 2);
        let close = b"HTTP/1.1 500 x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(!parse_response(close).unwrap().keep_alive);
    }

    #[test]
    fn unusual_responses_are_left_to_llhttp() {
        for c in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n{}", // close-delimited
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{}", // incomplete
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{}", // extra bytes
        ] {
            assert!(
                parse_response(c).is_none(),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
    }

    #[test]
    fn forwarded_drops_what_must_not_go_upstream() {
        let h: Vec<(&[u8], &[u8])> = vec![
            (b"host", b"gw"),
            (b"authorization", b"Bearer k"),
            (b"x-request-id", b"abc-1"),
            (b"connection", b"X-Hop, keep-alive"),
            (b"x-hop", b"1"),
            (b"x-fastgw-only", b"a"),
            (b"user-agent", b"t"),
        ];
        let f = forwarded(&h);
        assert_eq!(f.block, b"user-agent: t\r\n");
        assert_eq!(f.request_id, Some(&b"abc-1"[..]));
        assert!(f.controls);
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(&[b'a'; 129]));
    }

    #[test]
    fn the_credential_is_a_bearer_token_else_the_api_key() {
        let cred = |h: &[(&'static [u8], &'static [u8])]| forwarded(h).credential;
        assert_eq!(
            cred(&[(b"authorization", b"Bearer  k1 ")]),
            Some(&b"k1"[..])
        );
        assert_eq!(cred(&[(b"authorization", b"bEaReR k1")]), Some(&b"k1"[..]));
        let basic: &[(&[u8], &[u8])] = &[(b"authorization", b"Basic k1"), (b"x-api-key", b" k2")];
        assert_eq!(cred(basic), Some(&b"k2"[..]));
        let both: &[(&[u8], &[u8])] = &[(b"x-api-key", b"k2"), (b"authorization", b"Bearer k1")];
        assert_eq!(cred(both), Some(&b"k1"[..]));
        let first: &[(&[u8], &[u8])] = &[
            (b"authorization", b"Bearer"),
            (b"authorization", b"Bearer k1"),
        ];
        assert_eq!(cred(first), None); // the first one counts, as Cycle.header reads it
        assert_eq!(cred(&[(b"x-api-key", b" \t")]), None);
        assert_eq!(cred(&[(b"user-agent", b"Bearer k")]), None);
    }

    #[test]
    fn usage_counts() {
        let b = br#"{"x":{"usage":1},"usage": {"prompt_tokens" : 12, "completion_tokens":3}}"#;
        assert_eq!(usage(b), Some((Some(&b"12"[..]), Some(&b"3"[..]))));
        assert_eq!(
            usage(br#"{"usage":{"input_tokens":5}}"#),
            Some((Some(&b"5"[..]), None))
        );
        assert_eq!(usage(br#"{"usage":{}}"#), None);
        assert_eq!(usage(b"{}"), None);
        // The first count after "usage" wins, whichever key spells it.
        let both = br#"{"usage":{"input_tokens":1,"prompt_tokens":2}}"#;
        assert_eq!(usage(both), Some((Some(&b"1"[..]), None)));
    }

    fn chunks(parts: &[&[u8]]) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut got = Vec::new();
        for p in parts {
            let mut out = Vec::new();
            c.feed(p, &mut out)?;
            for o in out {
                got.extend_from_slice(o);
            }
        }
        Ok((got, c.done()))
    }

    #[test]
    fn chunked_body_across_reads() {
        let body: &[u8] = b"5\r\nhello\r\n6;x=1;y\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..body.len() {
            let (got, done) = chunks(&[&body[..cut], &body[cut..]]).unwrap();
            assert_eq!(got, b"hello world");
            assert!(done);
        }
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n5\r\nhel";
        let r = parse_response(head).unwrap();
        assert_eq!(r.body, Body::Chunked);
        assert_eq!(&head[r.head_len..], b"5\r\nhel");
        assert_eq!(chunks(&[b"5\r\nhel"]).unwrap(), (b"hel".to_vec(), false));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"5 \r\nhello\r\n"[..],
            b" 5\r\n",
            b"5\nhello",
            b"5\r\nhelloX\r\n",
            b"0x5\r\n",
            b"5;\r\n",
            b"5; a=b\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\nbad line\r\n\r\n",
            b"0\r\n\r\nHTTP/1.1",
        ] {
            assert!(chunks(&[bad]).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
