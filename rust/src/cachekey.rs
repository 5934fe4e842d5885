//! The response cache's key: XXH3-128 of who asks, where, for which model,
//! and the request body in a canonical form.
//!
//! The hashed bytes are `scope`, `endpoint` and `model`, each framed as its
//! length (8 bytes, little-endian) then its bytes, so no two different
//! triples give the same prefix; then the canonical JSON of `body`, a JSON
//! object, without its top-level members `fastgw`, `stream`,
//! `stream_options` and `user` (they change how an answer is delivered or
//! accounted, not what it says). The key is the hash's 16 bytes big-endian,
//! as Python's `xxhash.xxh3_128_digest` gives them.
//!
//! Canonical JSON: equal documents give the same bytes.
//! - Objects: members sorted by their key's UTF-8 bytes (the same order as
//!   by code point); a repeated key keeps its last value, as `orjson` and
//!   `json` in Python read it.
//! - Strings: decoded, then written with `"` and `\` escaped, control
//!   characters below 0x20 as `\b \f \n \r \t` or `\u00xx` (lowercase hex),
//!   everything else as raw UTF-8. A `\uXXXX` escape of half a surrogate
//!   pair is refused anywhere in the document, as by `serde_json` (Python
//!   keeps it as a lone surrogate, which UTF-8 cannot encode).
//! - Numbers: an integer in `[-2^63, 2^64)` is written as an integer. Any
//!   other number is read as the nearest `f64`: one that is integral and
//!   within `[-2^53, 2^53]` is written as an integer (`1`, `1.0`, `1e0` and
//!   `-0.0` as `0`... as in Python, `1 == 1.0`), any other in scientific
//!   form (`1.5e0`, `-2.5e-1`, `1e300`, `5e-324`) with the shortest digits
//!   that read back as it, the even ones on a tie (as Python's `repr`). So an
//!   integer beyond 64 bits is the `f64` nearest to it, and an integral
//!   float beyond 2^53 is not written as the integer of the same value.
//! - `true`, `false`, `null` as they are; arrays in order; no whitespace.
//!
//! The document is read in one pass that writes the canonical form as it
//! goes (no tree is built). It accepts exactly what `serde_json::from_slice`
//! accepts (RFC 8259: the grammar, UTF-8, no lone surrogate escape, numbers
//! within `f64` range, at most 127 levels of nesting); the tests hold it to
//! `serde_json` and to `orjson`. The pure-Python reference
//! is `fastgw/_reference/cachekey.py`.

use serde_json::ser::{CompactFormatter, Formatter};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use xxhash_rust::xxh3::xxh3_128;

/// The body's top-level members left out of the key, sorted.
pub const LEFT_OUT: [&str; 4] = ["fastgw", "stream", "stream_options", "user"];

/// The deepest nesting of arrays and objects read, as `serde_json`'s.
pub const MAX_LEVELS: usize = 127;

/// Why a body has no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The body is not a JSON object.
    NotObject,
    /// The body is not valid JSON (or nests deeper than [`MAX_LEVELS`]):
    /// what is wrong, and the byte offset where it was found.
    Invalid(&'static str, usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotObject => f.write_str("the body is not a JSON object"),
            Error::Invalid(what, at) => {
                write!(f, "the body is not valid JSON: {what} at byte {at}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// The cache key of `body` asked by `scope` on `endpoint` for `model`.
///
/// # Errors
/// [`Error`] when `body` is not a JSON object.
pub fn cache_key(
    body: &[u8],
    scope: &[u8],
    endpoint: &[u8],
    model: &[u8],
) -> Result<[u8; 16], Error> {
    keyed(body, scope, endpoint, model).map(|(key, _)| key)
}

/// [`cache_key`], and whether the body asks for `temperature` zero: its
/// top-level member `temperature` (the last one, when repeated) is a number
/// equal to zero (`0`, `0.0`, `-0`, `0e5`... never `false`), so its answer
/// is deterministic.
///
/// # Errors
/// [`Error`] when `body` is not a JSON object.
pub fn keyed(
    body: &[u8],
    scope: &[u8],
    endpoint: &[u8],
    model: &[u8],
) -> Result<([u8; 16], bool), Error> {
    let hashed = |out: &mut Vec<u8>, scratch: &mut Vec<u8>| {
        out.reserve(24 + scope.len() + endpoint.len() + model.len() + body.len());
        for part in [scope, endpoint, model] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
        let zero = canonical_reading(out, scratch, body)?;
        Ok((xxh3_128(out).to_be_bytes(), zero))
    };
    // The thread's buffers, kept between calls (no allocation per key); fresh ones
    // in the unlikely case they are in use.
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (out, scratch) = &mut *bufs;
            out.clear();
            let keyed = hashed(out, scratch);
            if out.capacity() > KEEP_AT_MOST || scratch.capacity() > KEEP_AT_MOST {
                *bufs = (Vec::new(), Vec::new()); // a large body's room is not held on to
            }
            keyed
        }
        Err(_) => hashed(&mut Vec::new(), &mut Vec::new()),
    })
}

thread_local! {
    /// [`keyed`]'s buffers: the hashed bytes, and an object's members being sorted.
    static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The room [`keyed`]'s buffers keep between calls, at most.
const KEEP_AT_MOST: usize = 64 * 1024;

/// Appends the canonical JSON of `body` (a JSON object) without the
/// [`LEFT_OUT`] members to `out`.
///
/// # Errors
/// [`Error`] when `body` is not a JSON object; `out` is then left as it was.
pub fn canonical(out: &mut Vec<u8>, body: &[u8]) -> Result<(), Error> {
    canonical_reading(out, &mut Vec::new(), body).map(|_| ())
}

/// [`canonical`], telling whether the body's `temperature` is zero (see
/// [`keyed`]).
fn canonical_reading(out: &mut Vec<u8>, scratch: &mut Vec<u8>, body: &[u8]) -> Result<bool, Error> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(Error::NotObject);
    }
    let mark = out.len();
    let done =
        Parser::new(body, out, scratch).and_then(|mut p| p.document().map(|()| p.zero_temperature));
    if done.is_err() {
        out.truncate(mark);
    }
    done
}

/// One pass over the body, writing each value's canonical form to `out` as
/// it is read. It reads the grammar `serde_json` reads (RFC 8259, nothing
/// more), which the tests check against `serde_json` itself.
struct Parser<'a, 'o> {
    /// The body, valid UTF-8 (checked first: outside strings any byte that
    /// is not ASCII is an error anyway).
    text: &'a str,
    src: &'a [u8],
    pos: usize,
    out: &'o mut Vec<u8>,
    /// Where an object's members are copied to be put in order.
    scratch: &'o mut Vec<u8>,
    levels: usize,
    /// The body's last top-level `temperature` member was written `0`.
    zero_temperature: bool,
}

type Parsed<T = ()> = Result<T, Error>;

impl<'a, 'o> Parser<'a, 'o> {
    fn new(body: &'a [u8], out: &'o mut Vec<u8>, scratch: &'o mut Vec<u8>) -> Parsed<Self> {
        let text = std::str::from_utf8(body)
            .map_err(|e| Error::Invalid("invalid UTF-8", e.valid_up_to()))?;
        Ok(Parser {
            text,
            src: body,
            pos: 0,
            out,
            scratch,
            levels: 0,
            zero_temperature: false,
        })
    }

    fn fail<T>(&self, what: &'static str) -> Parsed<T> {
        Err(Error::Invalid(what, self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The whole body: one object (its `{` seen by [`canonical`]),
    /// whitespace around it.
    fn document(&mut self) -> Parsed {
        self.skip_ws();
        self.object(true)?;
        self.skip_ws();
        if self.pos != self.src.len() {
            return self.fail("trailing characters");
        }
        Ok(())
    }

    fn value(&mut self) -> Parsed {
        match self.peek() {
            Some(b'{') => self.object(false),
            Some(b'[') => self.array(),
            Some(b'"') => self.string(),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => self.fail("expected a value"),
            None => self.fail("unexpected end"),
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Parsed {
        if !self.src[self.pos..].starts_with(word) {
            return self.fail("expected a value");
        }
        self.pos += word.len();
        self.out.extend_from_slice(word);
        Ok(())
    }

    fn enter(&mut self) -> Parsed {
        self.levels += 1;
        if self.levels > MAX_LEVELS {
            return self.fail("nested too deeply");
        }
        self.pos += 1; // the `[` or `{`
        self.skip_ws();
        Ok(())
    }

    /// After a member or element: true at the end, false after a comma.
    fn next_or_end(&mut self, end: u8) -> Parsed<bool> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.skip_ws();
                Ok(false)
            }
            Some(b) if b == end => {
                self.pos += 1;
                self.levels -= 1;
                Ok(true)
            }
            Some(_) => self.fail("expected `,` or the end of the container"),
            None => self.fail("unexpected end"),
        }
    }

    fn array(&mut self) -> Parsed {
        self.enter()?;
        self.out.push(b'[');
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.levels -= 1;
        } else {
            loop {
                self.value()?;
                if self.next_or_end(b']')? {
                    break;
                }
                self.out.push(b',');
            }
        }
        self.out.push(b']');
        Ok(())
    }

    /// An object; `top` for the body itself, whose [`LEFT_OUT`] members are
    /// dropped (still read whole: the same documents are refused with or
    /// without them).
    fn object(&mut self, top: bool) -> Parsed {
        self.enter()?;
        let open = self.out.len();
        self.out.push(b'{');
        // Each member is written (`"key":value`) where it comes, then the
        // members are put in order afterwards if they were not already.
        let mut members: SmallVec<[(Cow<'a, str>, usize, usize); 16]> = SmallVec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.levels -= 1;
        } else {
            loop {
                if self.peek() != Some(b'"') {
                    return self.fail("expected a key");
                }
                let mark = self.out.len();
                if !members.is_empty() {
                    self.out.push(b',');
                }
                let start = self.out.len();
                let key = self.key()?;
                self.skip_ws();
                if self.peek() != Some(b':') {
                    return self.fail("expected `:`");
                }
                self.pos += 1;
                self.skip_ws();
                self.out.push(b':');
                let at = self.out.len();
                self.value()?;
                if top && LEFT_OUT.contains(&key.as_ref()) {
                    self.out.truncate(mark);
                } else {
                    if top && key == "temperature" {
                        // Any number equal to zero is written `0` (`-0.0`, `0e9`...).
                        self.zero_temperature = self.out[at..] == *b"0";
                    }
                    members.push((key, start, self.out.len()));
                }
                if self.next_or_end(b'}')? {
                    break;
                }
            }
        }
        if !members.windows(2).all(|w| w[0].0 < w[1].0) {
            // Stable: a repeated key's members stay in document order, and
            // the last of each run is the one kept.
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let base = open + 1;
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.out[base..]);
            self.out.truncate(base);
            let mut first = true;
            for (i, (key, start, end)) in members.iter().enumerate() {
                if members.get(i + 1).is_some_and(|next| next.0 == *key) {
                    continue;
                }
                if !first {
                    self.out.push(b',');
                }
                first = false;
                self.out
                    .extend_from_slice(&self.scratch[start - base..end - base]);
            }
        }
        self.out.push(b'}');
        Ok(())
    }

    /// The bytes up to the next `"`, `\` or control character.
    fn plain_run(&mut self) {
        // Eight bytes at a time: the high bit of each byte of `hit` says it
        // is one of those (exact for the lowest one, which is all we read).
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        while let Some(chunk) = self.src.get(self.pos..self.pos + 8) {
            let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let hit = zero(x ^ (ONES * u64::from(b'"')))
                | zero(x ^ (ONES * u64::from(b'\\')))
                | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
            if hit != 0 {
                self.pos += (hit.trailing_zeros() / 8) as usize;
                return;
            }
            self.pos += 8;
        }
        while let Some(&b) = self.src.get(self.pos) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            self.pos += 1;
        }
    }

    /// A key, written to `out` and returned decoded (borrowed when it has no
    /// escapes: its canonical form is then its text).
    fn key(&mut self) -> Parsed<Cow<'a, str>> {
        self.pos += 1; // the `"`
        let start = self.pos;
        self.plain_run();
        if self.peek() == Some(b'"') {
            let key = &self.text[start..self.pos];
            self.pos += 1;
            verbatim(self.out, key);
            return Ok(Cow::Borrowed(key));
        }
        let mut key = String::from(&self.text[start..self.pos]);
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => key.push(self.escape()?),
                Some(_) => return self.fail("control character in a string"),
                None => return self.fail("unexpected end of a string"),
            }
            let run = self.pos;
            self.plain_run();
            key.push_str(&self.text[run..self.pos]);
        }
        string(self.out, &key);
        Ok(Cow::Owned(key))
    }

    /// A string value, decoded and written in canonical form.
    fn string(&mut self) -> Parsed {
        self.pos += 1; // the `"`
        self.out.push(b'"');
        loop {
            let run = self.pos;
            self.plain_run();
            // A run holds no `"`, `\` or control character: canonical as is.
            self.out.extend_from_slice(&self.src[run..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    self.out.push(b'"');
                    return Ok(());
                }
                Some(b'\\') => {
                    let c = self.escape()?;
                    let mut buf = [0u8; 4];
                    escaped(self.out, c.encode_utf8(&mut buf).as_bytes());
                }
                Some(_) => return self.fail("control character in a string"),
                None => return self.fail("unexpected end of a string"),
            }
        }
    }

    /// The character of the escape at `pos` (a `\`); a `\u` escape of half
    /// a surrogate pair is refused unless the other half follows.
    fn escape(&mut self) -> Parsed<char> {
        let c = match self.src.get(self.pos + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let hi = self.hex4(self.pos + 2)?;
                self.pos += 6;
                return match hi {
                    0xD800..=0xDBFF => {
                        if self.src.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return self.fail("lone leading surrogate");
                        }
                        let lo = self.hex4(self.pos + 2)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return self.fail("lone leading surrogate");
                        }
                        self.pos += 6;
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(c).map_or_else(|| self.fail("bad escape"), Ok)
                    }
                    0xDC00..=0xDFFF => self.fail("lone trailing surrogate"),
                    _ => char::from_u32(hi).map_or_else(|| self.fail("bad escape"), Ok),
                };
            }
            Some(_) => return self.fail("bad escape"),
            None => return self.fail("unexpected end of a string"),
        };
        self.pos += 2;
        Ok(c)
    }

    /// Four hex digits at `at`.
    fn hex4(&self, at: usize) -> Parsed<u32> {
        let Some(digits) = self.src.get(at..at + 4) else {
            return self.fail("unexpected end of a string");
        };
        let mut v = 0;
        for &d in digits {
            let Some(x) = char::from(d).to_digit(16) else {
                return self.fail("bad \\u escape");
            };
            v = v * 16 + x;
        }
        Ok(v)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A number: an integer in `[-2^63, 2^64)` as its text (which is
    /// canonical: the grammar allows no leading zero or `+`), `-0` as `0`;
    /// anything else as the nearest `f64` (see [`float`]).
    fn number(&mut self) -> Parsed {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.fail("bad number"),
        }
        let int_end = self.pos;
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.fail("bad number");
            }
            integer = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.fail("bad number");
            }
            integer = false;
        }
        if integer {
            let digits = &self.text[int_start..int_end];
            if digits == "0" {
                self.out.push(b'0'); // -0 too
                return Ok(());
            }
            let fits = match digits.parse::<u64>() {
                Ok(v) => !negative || v <= 1 << 63,
                Err(_) => false, // beyond u64: read as a float, as serde_json does
            };
            if fits {
                self.out.extend_from_slice(&self.src[start..int_end]);
                return Ok(());
            }
        }
        // Rust's parse is correctly rounded, as serde_json's (feature
        // `float_roundtrip`) and orjson's are.
        let x: f64 = self.text[start..self.pos].parse().unwrap_or(f64::INFINITY);
        if !x.is_finite() {
            self.pos = start;
            return self.fail("number out of range");
        }
        float(self.out, x);
        Ok(())
    }
}

/// 2^53: integral floats up to this magnitude are written as integers.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// A finite float (`serde_json` refuses the others): an integer when
/// integral and within 2^53, else the shortest digits that read back as the
/// same `f64` in scientific form.
fn float(out: &mut Vec<u8>, x: f64) {
    #[allow(clippy::float_cmp)] // exact on purpose: integral or not
    let integral = x.trunc() == x;
    if integral && x.abs() <= EXACT {
        #[allow(clippy::cast_possible_truncation)] // |x| <= 2^53: exact in an i64
        let _ = write!(out, "{}", x as i64);
        return;
    }
    // The digits are serde_json's (Schubfach): the shortest, the nearest,
    // and between two equally near the even one, as Python's `repr`. Rust's
    // `{:e}` breaks such ties away from zero (900719925474099.25 gives
    // ...099.3, `repr` ...099.2).
    let mut buf = [0u8; 32];
    let mut w: &mut [u8] = &mut buf;
    let _ = CompactFormatter.write_f64(&mut w, x); // at most 24 bytes
    let n = 32 - w.len();
    scientific(out, &buf[..n]);
}

/// A decimal number's text (`-12.5`, `1e+23`, `2.5e-7`, `0.001`) written as
/// one digit, a point and the other digits when there are any, then `e` and
/// the exponent: `-1.25e1`, `1e23`, `2.5e-7`, `1e-3`.
fn scientific(out: &mut Vec<u8>, text: &[u8]) {
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (mantissa, exp) = match text.iter().position(|&b| b == b'e' || b == b'E') {
        Some(e) => (
            &text[..e],
            std::str::from_utf8(&text[e + 1..])
                .ok()
                .and_then(|e| e.parse::<i32>().ok())
                .unwrap_or(0),
        ),
        None => (text, 0),
    };
    let (whole, frac) = match mantissa.iter().position(|&b| b == b'.') {
        Some(p) => (&mantissa[..p], &mantissa[p + 1..]),
        None => (mantissa, &[][..]),
    };
    let mut digits: SmallVec<[u8; 32]> = whole.iter().chain(frac).copied().collect();
    let lead = digits.iter().take_while(|&&d| d == b'0').count();
    digits.drain(..lead);
    let trail = digits.iter().rev().take_while(|&&d| d == b'0').count();
    digits.truncate(digits.len() - trail);
    // x = digits * 10^scale; fewer than 32 digits, so the casts are exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let exp = exp - frac.len() as i32 + trail as i32 + digits.len() as i32 - 1;
    if negative {
        out.push(b'-');
    }
    match digits.split_first() {
        Some((first, rest)) => {
            out.push(*first);
            if !rest.is_empty() {
                out.push(b'.');
                out.extend_from_slice(rest);
            }
        }
        None => out.push(b'0'), // not reached: zero is integral
    }
    let _ = write!(out, "e{exp}");
}

/// A string written without escapes: it holds no `"`, `\` or control
/// character (those are refused raw), so it is its own canonical form.
fn verbatim(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A string as JSON.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escaped(out, s.as_bytes());
    out.push(b'"');
}

/// Valid UTF-8 as the inside of a canonical JSON string: runs that need no
/// escape copied whole (bytes of multi-byte characters never need one).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(body: &[u8]) -> String {
        let mut out = Vec::new();
        canonical(&mut out, body).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn key(body: &[u8]) -> [u8; 16] {
        cache_key(body, b"team-a", b"/v1/chat/completions", b"gpt-4o").unwrap()
    }

    #[test]
    fn temperature_zero_is_any_number_equal_to_zero_at_the_top_level() {
        let zero = |body: &[u8]| keyed(body, b"", b"chat", b"m").unwrap().1;
        for t in ["0", "-0", "0.0", "-0.0e5", "0E-3", "1e-400"] {
            assert!(
                zero(format!(r#"{{"temperature":{t},"model":"m"}}"#).as_bytes()),
                "{t}"
            );
        }
        for t in ["1", "0.5", "false", "null", r#""0""#, "[0]", "1e-300"] {
            assert!(!zero(format!(r#"{{"temperature":{t}}}"#).as_bytes()), "{t}");
        }
        assert!(zero(br#"{"temperature":1,"temperature":0}"#)); // the last one counts
        assert!(!zero(br#"{"temperature":0,"temperature":1}"#));
        assert!(!zero(br#"{"model":"m","x":{"temperature":0}}"#)); // not at the top
        assert_eq!(
            keyed(br#"{"a":1}"#, b"", b"c", b"m").unwrap().0,
            cache_key(br#"{"a":1}"#, b"", b"c", b"m").unwrap()
        );
    }

    #[test]
    fn keys_are_sorted_and_whitespace_dropped() {
        assert_eq!(
            canon(b" {\"b\" : [ 1 , {\"d\":null,\"c\":true} ], \"a\":\"x\" } "),
            r#"{"a":"x","b":[1,{"c":true,"d":null}]}"#
        );
        assert_eq!(canon(b"{}"), "{}");
        assert_eq!(canon(b"{\"a\":[],\"b\":{}}"), r#"{"a":[],"b":{}}"#);
        // By UTF-8 bytes: "Z" < "a" < "é" < "😀".
        assert_eq!(
            canon("{\"😀\":1,\"é\":2,\"a\":3,\"Z\":4}".as_bytes()),
            "{\"Z\":4,\"a\":3,\"é\":2,\"😀\":1}"
        );
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        assert_eq!(canon(b"{\"a\":1,\"b\":2,\"a\":3}"), r#"{"a":3,"b":2}"#);
        assert_eq!(canon(b"{\"a\":1,\"a\":2,\"a\":3}"), r#"{"a":3}"#);
        assert_eq!(canon(b"{\"x\":{\"a\":1,\"a\":[2]}}"), r#"{"x":{"a":[2]}}"#);
    }

    #[test]
    fn left_out_members_only_at_the_top() {
        assert_eq!(
            canon(
                b"{\"stream\":true,\"model\":\"m\",\"user\":\"u\",\"fastgw\":{},\
                  \"stream_options\":{\"include_usage\":true},\"x\":{\"user\":1}}"
            ),
            r#"{"model":"m","x":{"user":1}}"#
        );
        assert_eq!(canon(b"{\"user\":1}"), "{}");
        assert_eq!(canon(b"{\"user\":1,\"a\":2,\"stream\":3}"), r#"{"a":2}"#);
    }

    #[test]
    fn strings_are_written_one_way() {
        assert_eq!(
            canon(b"{\"s\":\"\\u00e9\\/\\u0041\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001F\\u007f\"}"),
            "{\"s\":\"\u{e9}/A\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}\"}"
        );
        assert_eq!(
            canon(b"{\"\\ud83d\\ude00\":\"\\u2028\"}"),
            "{\"\u{1f600}\":\"\u{2028}\"}"
        );
    }

    #[test]
    fn numbers() {
        for (doc, want) in [
            ("1", "1"),
            ("1.0", "1"),
            ("1e0", "1"),
            ("10E-1", "1"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("0e5", "0"),
            ("1e-400", "0"),
            ("-7", "-7"),
            ("1.5", "1.5e0"),
            ("-0.25", "-2.5e-1"),
            ("0.1", "1e-1"),
            ("1e300", "1e300"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e308"),
            ("9007199254740992.0", "9007199254740992"),
            ("-9007199254740992.0", "-9007199254740992"),
            ("9007199254740994.0", "9.007199254740994e15"),
            ("18446744073709551615", "18446744073709551615"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("18446744073709551616", "1.8446744073709552e19"),
            ("-9223372036854775809", "-9.223372036854776e18"),
            ("123456789012345678901234567890", "1.2345678901234568e29"),
            ("1e23", "1e23"),
            ("2.5e-7", "2.5e-7"),
            ("-123.456", "-1.23456e2"),
            // 900719925474099.25 exactly: ...099.2 and ...099.3 are as near;
            // the even one, as Python's repr (Rust's `{:e}` says ...993e14).
            ("900719925474099.2", "9.007199254740992e14"),
            ("900719925474099.3", "9.007199254740992e14"),
        ] {
            let body = format!("{{\"n\":{doc}}}");
            assert_eq!(canon(body.as_bytes()), format!("{{\"n\":{want}}}"), "{doc}");
        }
    }

    #[test]
    fn scientific_form() {
        for (text, want) in [
            ("1.5", "1.5e0"),
            ("-0.001", "-1e-3"),
            ("1e+23", "1e23"),
            ("2.5E-7", "2.5e-7"),
            ("120.0", "1.2e2"),
            ("0.000123", "1.23e-4"),
            ("-1.7976931348623157e308", "-1.7976931348623157e308"),
        ] {
            let mut out = Vec::new();
            scientific(&mut out, text.as_bytes());
            assert_eq!(String::from_utf8(out).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn equal_documents_have_equal_keys() {
        let a = key(b"{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9\"}],\"temperature\":0}");
        let b = key("{ \"temperature\" : 0.0, \"stream\": true, \"messages\" : [ {\"content\":\"hé\", \"role\":\"user\"} ], \"model\":\"gpt-4o\", \"user\": \"x\" }".as_bytes());
        assert_eq!(a, b);
        assert_ne!(
            a,
            key(b"{\"model\":\"gpt-4o\",\"messages\":[],\"temperature\":0}")
        );
    }

    #[test]
    fn the_framing_is_unambiguous() {
        let body = b"{}";
        let k = |s: &[u8], e: &[u8], m: &[u8]| cache_key(body, s, e, m).unwrap();
        assert_ne!(k(b"ab", b"c", b""), k(b"a", b"bc", b""));
        assert_ne!(k(b"", b"ab", b"c"), k(b"", b"a", b"bc"));
        assert_ne!(k(b"a", b"", b""), k(b"", b"a", b""));
        assert_ne!(k(b"", b"", b"a"), k(b"", b"", b""));
        // The framing, spelled out.
        let mut framed = Vec::new();
        for part in [&b"ab"[..], b"c", b"m"] {
            framed.extend_from_slice(&(part.len() as u64).to_le_bytes());
            framed.extend_from_slice(part);
        }
        framed.extend_from_slice(b"{}");
        assert_eq!(k(b"ab", b"c", b"m"), xxh3_128(&framed).to_be_bytes());
    }

    #[test]
    fn refusals() {
        for doc in [&b""[..], b"   ", b"[1]", b"1", b"\"{}\"", b"null"] {
            assert!(matches!(
                canonical(&mut Vec::new(), doc),
                Err(Error::NotObject)
            ));
        }
        for doc in [
            &b"{"[..],
            b"{\"a\":1,}",
            b"{\"a\":1} x",
            b"{} {}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":\"\\udc00x\"}",
            b"{\"\\ud800\":1}",
            b"{\"user\":\"\\ud800\"}",
            b"{\"a\":\"\\ud800\",\"a\":1}",
            b"{\"a\":\"\xff\"}",
            b"{\"user\":\"\xff\"}",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":1e400}",
            b"{\"a\":NaN}",
            b"{\"a\":01}",
        ] {
            let mut out = b"kept".to_vec();
            let err = canonical(&mut out, doc).unwrap_err();
            assert!(
                matches!(err, Error::Invalid(..)),
                "{}",
                String::from_utf8_lossy(doc)
            );
            assert_eq!(out, b"kept");
        }
    }

    #[test]
    fn nesting_is_limited_as_by_serde_json() {
        // The object and 126 arrays in it: 127 levels, serde_json's most.
        let body = |levels: usize| {
            format!(
                "{{\"a\":{}{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        for levels in [126, 127, 128, 129] {
            let doc = body(levels);
            let theirs = serde_json::from_slice::<serde_json::Value>(doc.as_bytes()).is_ok();
            assert_eq!(
                canonical(&mut Vec::new(), doc.as_bytes()).is_ok(),
                theirs,
                "{levels}"
            );
            assert_eq!(theirs, levels <= 127, "{levels}");
        }
    }

    /// The canonical form built from `serde_json`'s own `Value`: what the
    /// one-pass parser must agree with (None where `serde_json` refuses).
    fn oracle(body: &[u8]) -> Option<Result<String, ()>> {
        fn write(out: &mut Vec<u8>, v: &serde_json::Value) {
            use serde_json::Value;
            match v {
                Value::Null => out.extend_from_slice(b"null"),
                Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                Value::Number(n) => {
                    if let Some(u) = n.as_u64() {
                        let _ = write!(out, "{u}");
                    } else if let Some(i) = n.as_i64() {
                        let _ = write!(out, "{i}");
                    } else {
                        float(out, n.as_f64().unwrap());
                    }
                }
                Value::String(s) => string(out, s),
                Value::Array(a) => {
                    out.push(b'[');
                    for (i, x) in a.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write(out, x);
                    }
                    out.push(b']');
                }
                Value::Object(m) => {
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort();
                    out.push(b'{');
                    for (i, k) in keys.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        string(out, k);
                        out.push(b':');
                        write(out, &m[*k]);
                    }
                    out.push(b'}');
                }
            }
        }
        let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let Some(m) = v.as_object_mut() else {
            return Some(Err(()));
        };
        for k in LEFT_OUT {
            m.shift_remove(k);
        }
        let mut out = Vec::new();
        write(&mut out, &v);
        Some(Ok(String::from_utf8(out).unwrap()))
    }

    fn agrees(body: &[u8]) {
        let mut out = Vec::new();
        let ours = match canonical(&mut out, body) {
            Ok(()) => Some(Ok(String::from_utf8(out).unwrap())),
            Err(Error::NotObject) => Some(Err(())),
            Err(Error::Invalid(..)) => None,
        };
        let theirs = oracle(body);
        // serde_json reads a document that is not an object, or refuses it;
        // either way it has no key.
        let theirs = match (&ours, theirs) {
            (Some(Err(())), None) => Some(Err(())),
            (_, t) => t,
        };
        assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(body));
    }

    const SEEDS: [&str; 12] = [
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.7}"#,
        r#" { "b" : [ 1 , -2.5e-3 , true , false , null , { } , [ ] ] , "a" : "x\"\\\/\b\f\n\r\t" } "#,
        r#"{"s":"\u00e9\u00E9\ud83d\ude00\u0000\u001F\u007f\u2028","\u0061":1,"a":2}"#,
        r#"{"n":[0,-0,-0.0,1e0,1E+2,1e-2,123456789012345678901234567890,-9223372036854775808]}"#,
        r#"{"n":[18446744073709551615,18446744073709551616,-9223372036854775809,5e-324]}"#,
        r#"{"n":[1.7976931348623157e308,900719925474099.25,0.1,1e-400,9007199254740993]}"#,
        r#"{"stream":true,"user":"u","fastgw":{"x":[1]},"stream_options":{},"z":{"user":1}}"#,
        "{\"\u{e9}\":\"\u{1f600}\",\"Z\":[[[[{\"k\":\"v\"}]]]]}",
        r#"{"a":{"b":{"c":{"d":[1,2,{"e":"f"}]}}},"a":[]}"#,
        r#"{"t":"\ud800\udc00","u":"\udbff\udfff","v":"\uD834\uDD1E"}"#,
        "{\"ws\":\t\r\n [ 1 ,\n2 ] }",
        r#"{"e":"","":"","k":"\"quoted\" \\ back"}"#,
    ];

    #[test]
    fn agrees_with_serde_json_on_the_seeds() {
        for seed in SEEDS {
            agrees(seed.as_bytes());
            assert!(oracle(seed.as_bytes()).is_some(), "{seed}");
        }
        let depth = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
        for n in [125, 126, 127, 128] {
            agrees(depth(n).as_bytes());
        }
        for doc in [
            "",
            " ",
            "[]",
            "1",
            "\"x\"",
            "null",
            "{",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{,}",
            "{\"a\":1,}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":[1,]}",
            "{\"a\":[,1]}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.1}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":1e}",
            "{\"a\":1e+}",
            "{\"a\":0x1}",
            "{\"a\":1e99999999999999999999}",
            "{\"a\":1e-99999999999999999999}",
            "{\"a\":0e99999999999999999999}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":truex}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\ud800\\n\"}",
            "{\"a\":\"\\ud800\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800x\"}",
            "{\"a\":\"",
            "{\"a\":\"\\",
            "{\"a\":\"\\u",
            "{\"a\":1}x",
            "{\"a\":1}{}",
            "{\"a\":1}\u{a0}",
            "\u{feff}{}",
            "{}\u{b}",
            "{\"a\":NaN}",
            "{\"a\":Infinity}",
            "{\"a\":-Infinity}",
            "{'a':1}",
            "{a:1}",
        ] {
            agrees(doc.as_bytes());
        }
        for doc in [
            &b"{\"a\":\"\xff\"}"[..],
            b"{\"\xc3\":1}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"\xff{}",
        ] {
            agrees(doc);
        }
    }

    #[test]
    fn agrees_with_serde_json_on_damaged_documents() {
        const BYTES: &[u8] = b"{}[],:\"\\ u0123456789abcdefABCDEF.eE+-tnfl\x00\x1f\x7f\xc3\xa9\xff";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % (n as u64)).unwrap()
        };
        for round in 0..60_000 {
            let mut doc = SEEDS[round % SEEDS.len()].as_bytes().to_vec();
            for _ in 0..=next(3) {
                let at = next(doc.len() + 1);
                let byte = BYTES[next(BYTES.len())];
                match next(3) {
                    0 if at < doc.len() => {
                        doc.remove(at);
                    }
                    1 if at < doc.len() => doc[at] = byte,
                    _ => doc.insert(at, byte),
                }
            }
            agrees(&doc);
        }
    }
}
