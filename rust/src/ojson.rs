//! JSON read and written exactly as `orjson` reads and writes it.
//!
//! The stream translator ([`crate::translate`]) must give the same bytes as
//! its Python reference, which parses events with `orjson.loads` and writes
//! the values it copies (ids, names, tool inputs, texts) with `orjson.dumps`.
//! [`parse`] accepts exactly the documents `orjson.loads` accepts and
//! [`Value::dump`] writes what `orjson.dumps` writes for the Python object it
//! gives:
//!
//! - the whole input must be UTF-8 (no byte-order mark); whitespace is space,
//!   tab, LF and CR; at most 1024 nested arrays and objects;
//! - strings: no raw control characters (below U+0020), the JSON escapes
//!   only, a `\u` high surrogate only followed by a `\u` low one, no lone low
//!   surrogate;
//! - numbers: the JSON grammar; an integer in `-2**63 ..= 2**64 - 1` is an
//!   integer (`-0` is `0`), any other number a double, refused when it
//!   overflows to infinity;
//! - objects are Python dicts: a repeated key reads as its last value and is
//!   written once, at its first position, with that value.
//!
//! Written: compact; strings with only `"`, `\` and control characters
//! escaped (`\b \t \n \f \r`, else `\u00xx`), everything else as UTF-8;
//! doubles as `orjson` formats them (the shortest round-trip digits, plain
//! between 1e-5 and 1e16, else with an exponent: `zmij`'s format); a
//! container nested 255 deep is refused ("Recursion limit reached").

use std::borrow::Cow;
use std::collections::HashMap;

/// Nested arrays and objects `orjson.loads` reads.
pub const MAX_PARSE_DEPTH: usize = 1024;
/// Nested arrays and objects `orjson.dumps` writes.
pub const MAX_DUMP_DEPTH: usize = 254;

/// The input is not a JSON document `orjson.loads` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError;

/// `orjson.dumps` refuses the value (nested too deep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpError;

/// A JSON string as it stands in the document: validated, escapes kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> Str<'a> {
    /// The decoded text.
    #[must_use]
    pub fn decode(&self) -> Cow<'a, str> {
        if self.escaped {
            Cow::Owned(unescape(self.raw))
        } else {
            Cow::Borrowed(self.raw)
        }
    }

    /// Whether the decoded text is empty (an escape always gives a character).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Whether the decoded text is `s`.
    #[must_use]
    pub fn eq_str(&self, s: &str) -> bool {
        if self.escaped {
            unescape(self.raw) == s
        } else {
            self.raw == s
        }
    }

    /// Writes the string as `orjson.dumps` writes its decoded text.
    pub fn dump(&self, out: &mut Vec<u8>) {
        if self.escaped {
            dump_str(&unescape(self.raw), out);
        } else {
            // Without a backslash the text has no quote and no control
            // character: exactly what orjson writes.
            out.push(b'"');
            out.extend_from_slice(self.raw.as_bytes());
            out.push(b'"');
        }
    }
}

/// One value, as the Python object `orjson.loads` makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `None`.
    Null,
    /// A `bool`.
    Bool(bool),
    /// An `int` (within `-2**63 ..= 2**64 - 1`).
    Int(i128),
    /// A `float` (finite).
    Float(f64),
    /// A `str`.
    Str(Str<'a>),
    /// A `list`.
    Arr(Vec<Value<'a>>),
    /// A `dict`: its members in document order, repeated keys included.
    Obj(Obj<'a>),
}

/// An object's members in document order (keys decoded).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Obj<'a>(pub Vec<(Cow<'a, str>, Value<'a>)>);

impl<'a> Obj<'a> {
    /// `dict.get(key)`: the last value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The members as the dict holds them: each key once, at its first
    /// position, with its last value.
    fn dict_members(&self) -> Vec<(&str, &Value<'a>)> {
        let m = &self.0;
        if m.len() <= 16 {
            let mut out: Vec<(&str, &Value<'a>)> = Vec::with_capacity(m.len());
            for (k, v) in m {
                match out.iter_mut().find(|(seen, _)| *seen == k.as_ref()) {
                    Some(slot) => slot.1 = v,
                    None => out.push((k, v)),
                }
            }
            return out;
        }
        let mut at: HashMap<&str, usize> = HashMap::with_capacity(m.len());
        let mut out: Vec<(&str, &Value<'a>)> = Vec::with_capacity(m.len());
        for (k, v) in m {
            if let Some(&i) = at.get(k.as_ref()) {
                out[i].1 = v;
            } else {
                at.insert(k, out.len());
                out.push((k, v));
            }
        }
        out
    }
}

impl<'a> Value<'a> {
    /// The object, when this is one.
    #[must_use]
    pub fn as_object(&self) -> Option<&Obj<'a>> {
        match self {
            Value::Obj(o) => Some(o),
            _ => None,
        }
    }

    /// The string, when this is one.
    #[must_use]
    pub fn as_str(&self) -> Option<&Str<'a>> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is the string `s`.
    #[must_use]
    pub fn is_str(&self, s: &str) -> bool {
        self.as_str().is_some_and(|v| v.eq_str(s))
    }

    /// Whether this is `None`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Python's truth value of the object.
    #[must_use]
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(n) => *n != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Arr(a) => !a.is_empty(),
            Value::Obj(o) => !o.0.is_empty(),
        }
    }

    /// The integer a `dict` keyed by ints finds this under (`True` is 1, the
    /// float `2.0` is 2); None for anything no int equals.
    #[must_use]
    pub fn int_key(&self) -> Option<i128> {
        match self {
            Value::Bool(b) => Some(i128::from(*b)),
            Value::Int(n) => Some(*n),
            #[allow(clippy::cast_possible_truncation)] // integral and in range: exact
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e38 => Some(*f as i128),
            _ => None,
        }
    }

    /// Appends `orjson.dumps(value)`.
    ///
    /// # Errors
    /// Arrays and objects nested deeper than [`MAX_DUMP_DEPTH`]; `out` then
    /// holds a partial document.
    pub fn dump(&self, out: &mut Vec<u8>) -> Result<(), DumpError> {
        self.dump_at(out, 0)
    }

    fn dump_at(&self, out: &mut Vec<u8>, depth: usize) -> Result<(), DumpError> {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            Value::Float(f) => dump_float(*f, out),
            Value::Str(s) => s.dump(out),
            Value::Arr(items) => {
                if depth >= MAX_DUMP_DEPTH {
                    return Err(DumpError);
                }
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.dump_at(out, depth + 1)?;
                }
                out.push(b']');
            }
            Value::Obj(o) => {
                if depth >= MAX_DUMP_DEPTH {
                    return Err(DumpError);
                }
                out.push(b'{');
                for (i, (k, v)) in o.dict_members().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    dump_str(k, out);
                    out.push(b':');
                    v.dump_at(out, depth + 1)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }
}

/// Appends a finite double as `orjson.dumps` writes it (`inf`/`nan`: `null`).
pub fn dump_float(f: f64, out: &mut Vec<u8>) {
    if f.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends `orjson.dumps(s)`.
pub fn dump_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 15)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Parses one whole document as `orjson.loads` does.
///
/// # Errors
/// What `orjson.loads` refuses.
pub fn parse(data: &[u8]) -> Result<Value<'_>, ParseError> {
    let mut p = Parser::at_start(data).ok_or(ParseError)?;
    let v = p.value(0)?;
    p.ws();
    if p.i == p.b.len() {
        Ok(v)
    } else {
        Err(ParseError)
    }
}

/// When `data` is a document `orjson.loads` reads as a `str`: whether that
/// string is empty. None for anything else.
#[must_use]
pub fn string_document(data: &[u8]) -> Option<bool> {
    let mut p = Parser::at_start(data)?;
    if p.peek() != Some(b'"') {
        return None;
    }
    let s = p.string().ok()?;
    p.ws();
    (p.i == p.b.len()).then_some(s.is_empty())
}

/// When `data` is a document `orjson.loads` reads as a `dict`: the members
/// whose key `keep` accepts, read (in document order, repeated keys included),
/// every other member only checked. None for anything else.
#[must_use]
pub fn object_members<'a>(data: &'a [u8], keep: impl Fn(&Str<'a>) -> bool) -> Option<Obj<'a>> {
    let mut p = Parser::at_start(data)?;
    if p.peek() != Some(b'{') {
        return None;
    }
    let mut kept = Vec::new();
    p.object_with(1, |p, key| {
        if keep(&key) {
            let v = p.value(1)?;
            kept.push((key.decode(), v));
            Ok(())
        } else {
            p.skip(1)
        }
    })
    .ok()?;
    p.ws();
    (p.i == p.b.len()).then_some(Obj(kept))
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    /// A parser at the first value of `data` (leading whitespace passed); None
    /// when `data` is not UTF-8.
    fn at_start(data: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(data).ok()?;
        let mut p = Parser {
            s: text,
            b: text.as_bytes(),
            i: 0,
        };
        p.ws();
        Some(p)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && is_ws(self.b[self.i]) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8], v: Value<'a>) -> Result<Value<'a>, ParseError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(ParseError)
        }
    }

    /// One value at `self.i` (not whitespace), inside `depth` containers.
    fn value(&mut self, depth: usize) -> Result<Value<'a>, ParseError> {
        match self.peek().ok_or(ParseError)? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Value::Str),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(ParseError),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value<'a>, ParseError> {
        let mut members = Vec::new();
        self.object_with(depth, |p, key| {
            let v = p.value(depth)?;
            members.push((key.decode(), v));
            Ok(())
        })?;
        Ok(Value::Obj(Obj(members)))
    }

    fn array(&mut self, depth: usize) -> Result<Value<'a>, ParseError> {
        let mut items = Vec::new();
        self.array_with(depth, |p| {
            items.push(p.value(depth)?);
            Ok(())
        })?;
        Ok(Value::Arr(items))
    }

    /// One value at `self.i` (not whitespace), inside `depth` containers,
    /// checked as [`Self::value`] checks it but not built.
    fn skip(&mut self, depth: usize) -> Result<(), ParseError> {
        match self.peek().ok_or(ParseError)? {
            b'{' => self.object_with(depth + 1, |p, _| p.skip(depth + 1)),
            b'[' => self.array_with(depth + 1, |p| p.skip(depth + 1)),
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => self.value(depth).map(drop), // a literal, or refused
        }
    }

    /// An object at `self.i`, the `depth`-th container: `member(self, key)` for
    /// each member, with `self.i` at its value, which it reads.
    fn object_with(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, Str<'a>) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        if depth > MAX_PARSE_DEPTH {
            return Err(ParseError);
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(ParseError);
            }
            let key = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(ParseError);
            }
            self.i += 1;
            self.ws();
            member(self, key)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(ParseError),
            }
        }
    }

    /// An array at `self.i`, the `depth`-th container: `item(self)` for each
    /// item, with `self.i` at it, which it reads.
    fn array_with(
        &mut self,
        depth: usize,
        mut item: impl FnMut(&mut Self) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        if depth > MAX_PARSE_DEPTH {
            return Err(ParseError);
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(ParseError),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Value<'a>, ParseError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(ParseError),
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(ParseError);
            }
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(ParseError);
            }
            float = true;
        }
        let text = &self.s[start..self.i];
        if !float {
            if let Ok(n) = text.parse::<i128>() {
                if (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&n) {
                    return Ok(Value::Int(n));
                }
            }
        }
        // Other integers are read as doubles, as orjson does.
        let f: f64 = text.parse().map_err(|_| ParseError)?;
        if f.is_finite() {
            Ok(Value::Float(f))
        } else {
            Err(ParseError)
        }
    }

    fn hex4(&self, at: usize) -> Result<u32, ParseError> {
        let h = self.b.get(at..at + 4).ok_or(ParseError)?;
        let mut v = 0;
        for &c in h {
            v = v * 16 + char::from(c).to_digit(16).ok_or(ParseError)?;
        }
        Ok(v)
    }

    /// A string at `self.i` (its opening quote).
    fn string(&mut self) -> Result<Str<'a>, ParseError> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i += plain_run(&self.b[self.i..]);
            let c = *self.b.get(self.i).ok_or(ParseError)?;
            match c {
                b'"' => {
                    let raw = &self.s[start..self.i];
                    self.i += 1;
                    return Ok(Str { raw, escaped });
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.i + 1).ok_or(ParseError)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let cp = self.hex4(self.i + 2)?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.b.get(self.i + 6..self.i + 8) != Some(b"\\u") {
                                    return Err(ParseError);
                                }
                                let low = self.hex4(self.i + 8)?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(ParseError);
                                }
                                self.i += 12;
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return Err(ParseError);
                            } else {
                                self.i += 6;
                            }
                        }
                        _ => return Err(ParseError),
                    }
                }
                0..=0x1f => return Err(ParseError),
                _ => self.i += 1,
            }
        }
    }
}

/// How many bytes at the start of `b` a string body takes as they are: none is
/// a quote, a backslash or a control character (below 0x20). Eight at a time.
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut n = 0;
    while let Some(word) = b.get(n..n + 8) {
        let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        // A byte's high bit set where it is below 0x20 (the per-byte borrow test),
        // or where it is zero once xored with a quote or a backslash.
        let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x;
        let low = below(w, 0x20);
        let quote = below(w ^ (ONES * u64::from(b'"')), 1);
        let slash = below(w ^ (ONES * u64::from(b'\\')), 1);
        let hit = (low | quote | slash) & HIGHS;
        if hit != 0 {
            // The lowest flagged lane is exact: a borrow only runs upward from a
            // byte that is itself flagged.
            return n + (hit.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + b[n..]
        .iter()
        .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
        .unwrap_or(b.len() - n)
}

/// The text of a validated string body with escapes.
fn unescape(raw: &str) -> String {
    fn hex4(b: &[u8]) -> u32 {
        b.iter()
            .fold(0, |v, &c| v * 16 + char::from(c).to_digit(16).unwrap_or(0))
    }
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&raw[start..i]);
        let (ch, len) = match b[i + 1] {
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => {
                let cp = hex4(&b[i + 2..i + 6]);
                if (0xD800..0xDC00).contains(&cp) {
                    let low = hex4(&b[i + 8..i + 12]);
                    let c = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    (char::from_u32(c).unwrap_or('\u{fffd}'), 12)
                } else {
                    (char::from_u32(cp).unwrap_or('\u{fffd}'), 6)
                }
            }
            other => (char::from(other), 2), // " \ /
        };
        out.push(ch);
        i += len;
        start = i;
    }
    out.push_str(&raw[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(doc: &str) -> String {
        let v = parse(doc.as_bytes()).unwrap();
        let mut out = Vec::new();
        v.dump(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn accepts_what_orjson_accepts() {
        for doc in [
            "{\"a\" : 1 , \"b\":[ 1 , 2 ] }",
            "{ }",
            "[ ]",
            " \t\r\n\"a\" \t\r\n",
            "\"\\ud800\\udc00\"",
            "\"\\uDBFF\\uDFFF\"",
            "\"\\uFFFE\\u0000\\/\"",
            "\"a\u{7f}\"",
            "-0",
            "-0.0e-0",
            "1E+2",
            "18446744073709551616",
            "1e-400",
            "0e999",
            "true",
            "null",
        ] {
            assert!(parse(doc.as_bytes()).is_ok(), "{doc}");
        }
    }

    #[test]
    fn refuses_what_orjson_refuses() {
        for doc in [
            &b""[..],
            b" ",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800x\"",
            b"\"\\ud800\\u0041\"",
            b"\"a\x01\"",
            b"\"a\t\"",
            b"\"\xff\"",
            b"\"\xed\xa0\x80\"",
            b"\xef\xbb\xbf\"a\"",
            b"\x0c\"a\"",
            b"\"\\x\"",
            b"\"\\u00G0\"",
            b"[1,]",
            b"{\"a\":1,}",
            b"01",
            b"-01",
            b"1.",
            b".5",
            b"+1",
            b"2.e3",
            b"1e",
            b"\"a\" \"b\"",
            b"NaN",
            b"1e400",
            b"-1.8e308",
            b"{1:2}",
            b"{\"a\"}",
            b"tru",
        ] {
            assert_eq!(
                parse(doc),
                Err(ParseError),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn depth_limits() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(nest(1024).as_bytes()).is_ok());
        assert!(parse(nest(1025).as_bytes()).is_err());
        let mut out = Vec::new();
        assert!(parse(nest(254).as_bytes()).unwrap().dump(&mut out).is_ok());
        let deep = nest(255);
        assert_eq!(
            parse(deep.as_bytes()).unwrap().dump(&mut out),
            Err(DumpError)
        );
        let objs = format!("{}1{}", "{\"a\":".repeat(255), "}".repeat(255));
        assert_eq!(
            parse(objs.as_bytes()).unwrap().dump(&mut out),
            Err(DumpError)
        );
    }

    #[test]
    fn numbers_as_orjson_gives_them() {
        assert_eq!(parse(b"-0").unwrap(), Value::Int(0));
        assert_eq!(
            parse(b"18446744073709551615").unwrap(),
            Value::Int(i128::from(u64::MAX))
        );
        assert_eq!(
            parse(b"-9223372036854775808").unwrap(),
            Value::Int(i128::from(i64::MIN))
        );
        assert!(matches!(
            parse(b"-9223372036854775809").unwrap(),
            Value::Float(_)
        ));
        // orjson.dumps(orjson.loads(x)) for these, checked against orjson 3.x
        for (doc, want) in [
            ("18446744073709551616", "1.8446744073709552e+19"),
            ("1E2", "100.0"),
            ("-0.0", "-0.0"),
            ("1e-5", "0.00001"),
            ("1.25e-5", "0.0000125"),
            ("9.5e-6", "9.5e-6"),
            ("1e16", "1e+16"),
            ("1e15", "1000000000000000.0"),
            ("123456789012345678901234567890", "1.2345678901234568e+29"),
            ("0.1", "0.1"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ] {
            assert_eq!(dumps(doc), want, "{doc}");
        }
    }

    #[test]
    fn strings_and_dicts_as_orjson_writes_them() {
        assert_eq!(
            dumps("\"caf\\u00e9 \\\"q\\\" \\/ \\u001F\\u0000\\b\\f\\n\\r\\t\u{7f}\u{2028}\""),
            "\"café \\\"q\\\" / \\u001f\\u0000\\b\\f\\n\\r\\t\u{7f}\u{2028}\""
        );
        assert_eq!(dumps("{\"a\":1,\"b\":2,\"a\":3}"), "{\"a\":3,\"b\":2}");
        assert_eq!(dumps("{\"\\u0061\":1,\"a\":[]}"), "{\"a\":[]}");
        let many: Vec<String> = (0..40).map(|i| format!("\"k{}\":{i}", i % 20)).collect();
        let want: Vec<String> = (0..20).map(|i| format!("\"k{i}\":{}", i + 20)).collect();
        assert_eq!(
            dumps(&format!("{{{}}}", many.join(","))),
            format!("{{{}}}", want.join(","))
        );
        assert_eq!(
            dumps(" [ true , false , null , -7 ] "),
            "[true,false,null,-7]"
        );
    }

    #[test]
    fn a_string_s_plain_run_stops_where_the_byte_loop_would() {
        let reference = |b: &[u8]| {
            b.iter()
                .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
                .unwrap_or(b.len())
        };
        // Every stop byte at every position of runs up to 3 words long, among
        // neighbours just above and below each stop (and UTF-8 bytes).
        let fillers: [u8; 7] = [b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0xc3];
        let stops: [u8; 6] = [b'"', b'\\', 0x00, 0x1f, 0x01, b'\n'];
        for len in 0..26 {
            for filler in fillers {
                let plain = vec![filler; len];
                assert_eq!(plain_run(&plain), reference(&plain));
                for at in 0..len {
                    for stop in stops {
                        let mut b = plain.clone();
                        b[at] = stop;
                        assert_eq!(plain_run(&b), reference(&b), "{b:?}");
                        if at + 1 < len {
                            b[at + 1] = 0x00; // a second stop just after the first
                            assert_eq!(plain_run(&b), at, "{b:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn string_documents() {
        assert_eq!(string_document(b"\"\""), Some(true));
        assert_eq!(string_document(b" \"a\\n\" "), Some(false));
        assert_eq!(string_document(b"\"\\u0000\""), Some(false));
        assert_eq!(string_document(b"\"a\"x"), None);
        assert_eq!(string_document(b"\"a"), None);
        assert_eq!(string_document(b"5"), None);
        assert_eq!(string_document(b"\"\\ud800\""), None);
    }

    #[test]
    fn python_truth_and_int_keys() {
        for (doc, truth) in [
            ("0", false),
            ("-0.0", false),
            ("\"\"", false),
            ("[]", false),
            ("{}", false),
            ("null", false),
            ("false", false),
            ("0.5", true),
            ("\"0\"", true),
            ("[0]", true),
            ("{\"a\":null}", true),
        ] {
            assert_eq!(parse(doc.as_bytes()).unwrap().truthy(), truth, "{doc}");
        }
        assert_eq!(parse(b"true").unwrap().int_key(), Some(1));
        assert_eq!(parse(b"2.0").unwrap().int_key(), Some(2));
        assert_eq!(parse(b"-0.0").unwrap().int_key(), Some(0));
        assert_eq!(parse(b"2.5").unwrap().int_key(), None);
        assert_eq!(parse(b"\"2\"").unwrap().int_key(), None);
    }
}
