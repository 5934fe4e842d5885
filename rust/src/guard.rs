//! Regex guardrails: one pattern, compiled once, that redacts or finds
//! matches in whole texts and in text that arrives in pieces (a stream).
//!
//! Matching uses the `regex` crate (finite automata: time linear in the
//! text, whatever the pattern; no backtracking). A stream is redacted by a
//! [`Window`]: each piece is appended to the text held back, and everything
//! is given out except what may still be the start of a match, found with an
//! anchored DFA (`MatchKind::All`: a position is held while some
//! continuation of the text could still match from it), and never more than
//! `window` characters. The text given out over a whole stream is the text
//! [`Pattern::redact`] gives for the whole answer, as long as no match is
//! longer than the window.
//!
//! Empty matches are skipped (a pattern like `x*` redacts only non-empty
//! runs).
use std::borrow::Cow;
use std::fmt;

use regex::Regex;
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::{Anchored, Input, MatchKind};

/// The anchored DFA's size bound: past it the stream is windowed blindly (the
/// whole window held back).
const DFA_LIMIT: usize = 2 << 20;

/// A pattern that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

/// A compiled guardrail pattern.
#[derive(Debug)]
pub struct Pattern {
    re: Regex,
    /// Anchored prefix automaton (every match, any length); None when too big.
    dfa: Option<dense::DFA<Vec<u32>>>,
}

impl Pattern {
    /// Compile `pattern`; the error says why it cannot be.
    ///
    /// # Errors
    /// A syntax error, or a pattern too large once compiled.
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        let re = Regex::new(pattern).map_err(|e| PatternError(e.to_string()))?;
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .match_kind(MatchKind::All)
                    .dfa_size_limit(Some(DFA_LIMIT))
                    .determinize_size_limit(Some(DFA_LIMIT)),
            )
            .build(pattern)
            .ok();
        Ok(Self { re, dfa })
    }

    /// Whether `text` has a (non-empty) match.
    #[must_use]
    pub fn matches(&self, text: &str) -> bool {
        self.re.find_iter(text).any(|m| !m.is_empty())
    }

    /// `text` with every non-empty match replaced by `replacement`, and how many
    /// there were (0: `text` unchanged).
    #[must_use]
    pub fn redact(&self, text: &str, replacement: &str) -> (String, usize) {
        let mut out = String::new();
        let (last, n) = self.redact_into(text, 0, text.len(), replacement, &mut out);
        if n == 0 {
            return (text.to_owned(), 0);
        }
        out.push_str(&text[last..]);
        (out, n)
    }

    /// Redact the matches of `hay` from `from` that start before `cut` into
    /// `out` (text between them included); returns where the text given out
    /// ends (the end of the last match when it passes `cut`, else `cut`) and the
    /// number of matches. Nothing is written when there was no match.
    fn redact_into(
        &self,
        hay: &str,
        from: usize,
        cut: usize,
        replacement: &str,
        out: &mut String,
    ) -> (usize, usize) {
        let mut at = from;
        let mut copied = from;
        let mut n = 0;
        while at <= hay.len() {
            let Some(m) = self.re.find_at(hay, at) else {
                break;
            };
            if m.start() >= cut {
                break;
            }
            if m.is_empty() {
                at = next_char(hay, m.end());
                continue;
            }
            out.push_str(&hay[copied..m.start()]);
            out.push_str(replacement);
            copied = m.end();
            at = m.end();
            n += 1;
        }
        if n == 0 {
            return (cut, 0);
        }
        if copied < cut {
            out.push_str(&hay[copied..cut]);
            copied = cut;
        }
        (copied, n)
    }

    /// The first position of `hay` at or after `from` where a match may still
    /// begin once more text is appended (`hay.len()` when there is none), and
    /// whether a match was seen from a position before it (false: there is no
    /// match in `hay[from..open]`, none need be looked for).
    fn first_open(&self, hay: &str, from: usize) -> (usize, bool) {
        let Some(dfa) = &self.dfa else {
            return (from, true);
        };
        let mut matched = false;
        let mut i = from;
        while i < hay.len() {
            match open_at(dfa, hay, i) {
                Some(seen) => matched |= seen,
                None => return (i, matched),
            }
            i = next_char(hay, i);
        }
        (hay.len(), matched)
    }
}

/// The anchored DFA started at `i`: None when it is still alive at the end of
/// `hay`, else whether it went through a match before it died.
fn open_at(dfa: &dense::DFA<Vec<u32>>, hay: &str, i: usize) -> Option<bool> {
    let input = Input::new(hay).span(i..hay.len()).anchored(Anchored::Yes);
    let Ok(mut sid) = dfa.start_state_forward(&input) else {
        return None;
    };
    let mut matched = false;
    for &b in &hay.as_bytes()[i..] {
        sid = dfa.next_state(sid, b);
        if dfa.is_special_state(sid) {
            if dfa.is_dead_state(sid) {
                return Some(matched);
            }
            if dfa.is_quit_state(sid) {
                return None;
            }
            matched |= dfa.is_match_state(sid);
        }
    }
    None
}

/// The start of the character after the one at `i` (`i + 1` past the end).
fn next_char(s: &str, i: usize) -> usize {
    let mut j = i + 1;
    while j < s.len() && !s.is_char_boundary(j) {
        j += 1;
    }
    j
}

/// The byte index `chars` characters before the end of `s[from..]` (`from`
/// when it has fewer).
fn chars_before_end(s: &str, from: usize, chars: usize) -> usize {
    if s.len() - from <= chars {
        return from; // at most one byte per character: all of it
    }
    if chars == 0 {
        return s.len();
    }
    // Fewer characters than `chars` (multi-byte ones): all of it too.
    s[from..]
        .char_indices()
        .rev()
        .nth(chars - 1)
        .map_or(from, |(i, _)| from + i)
}

/// One stream's redaction: the text held back and what was given out.
#[derive(Debug, Default)]
pub struct Window {
    /// The last character given out (context for `\b`, `^`), then the text held.
    buf: String,
    /// Where the held text starts in `buf`.
    base: usize,
    chars: usize,
    /// Matches found so far.
    pub matches: usize,
    /// The last text delta event, and where its text's JSON string is in it.
    template: Vec<u8>,
    span: (usize, usize),
}

impl Window {
    /// A stream's window of at most `window` characters.
    #[must_use]
    pub fn new(window: usize) -> Self {
        Self {
            buf: String::new(),
            base: 0,
            chars: window,
            matches: 0,
            template: Vec::new(),
            span: (0, 0),
        }
    }

    /// Bytes held back now.
    #[must_use]
    pub fn held(&self) -> usize {
        self.buf.len() - self.base
    }

    /// Append `piece`; the redacted text that can be given out now.
    pub fn push(&mut self, pat: &Pattern, piece: &str, replacement: &str) -> String {
        self.buf.push_str(piece);
        let floor = chars_before_end(&self.buf, self.base, self.chars);
        let (open, matched) = pat.first_open(&self.buf, self.base);
        if open >= floor && !matched {
            // Every position before `open` was read to its dead end without a
            // match: that text goes out as it is.
            return self.give_plain(open);
        }
        self.give(pat, open.max(floor), replacement)
    }

    fn give_plain(&mut self, cut: usize) -> String {
        if cut <= self.base {
            return String::new();
        }
        let out = self.buf[self.base..cut].to_owned();
        self.keep_from(cut);
        out
    }

    /// Forget the text before `end` but its last character (kept as context).
    fn keep_from(&mut self, end: usize) {
        let mut keep = end;
        if keep > 0 {
            keep -= 1;
            while !self.buf.is_char_boundary(keep) {
                keep -= 1;
            }
        }
        self.buf.drain(..keep);
        self.base = end - keep;
    }

    /// The end of the stream: the rest, redacted.
    pub fn finish(&mut self, pat: &Pattern, replacement: &str) -> String {
        let end = self.buf.len();
        self.give(pat, end, replacement)
    }

    fn give(&mut self, pat: &Pattern, cut: usize, replacement: &str) -> String {
        if cut <= self.base {
            return String::new();
        }
        let mut out = String::new();
        let (end, n) = pat.redact_into(&self.buf, self.base, cut, replacement, &mut out);
        if n == 0 {
            out.push_str(&self.buf[self.base..end]);
        }
        self.matches += n;
        self.keep_from(end);
        out
    }
}

/// A stream's events of one text (`\n\n`-separated SSE, `\r` already made `\n`),
/// read by [`Window::feed_events`]: where the text's JSON string follows.
#[derive(Debug, Clone, Copy)]
pub struct DeltaForm<'a> {
    /// What comes just before the string's opening quote (ends with `"`).
    pub anchor: &'a [u8],
    /// What else such an event must contain.
    pub markers: &'a [&'a [u8]],
}

/// The index of the quote that ends the JSON string whose text starts at `from`.
fn string_end(event: &[u8], from: usize) -> Option<usize> {
    let mut k = from + memchr::memchr(b'"', event.get(from..)?)?;
    loop {
        let mut j = k;
        while j > from && event[j - 1] == b'\\' {
            j -= 1;
        }
        if (k - j).is_multiple_of(2) {
            return Some(k);
        }
        k = k + 1 + memchr::memchr(b'"', &event[k + 1..])?;
    }
}

/// The searchers of one [`DeltaForm`], built once per [`Window::feed_events`].
struct FormFinders<'a> {
    anchor: memchr::memmem::Finder<'a>,
    markers: Vec<memchr::memmem::Finder<'a>>,
    index: memchr::memmem::Finder<'static>,
}

impl<'a> FormFinders<'a> {
    fn new(form: &DeltaForm<'a>) -> Self {
        Self {
            anchor: memchr::memmem::Finder::new(form.anchor),
            markers: form
                .markers
                .iter()
                .map(|m| memchr::memmem::Finder::new(*m))
                .collect(),
            index: memchr::memmem::Finder::new(b"\"index\":"),
        }
    }

    /// The text delta of `event`: (the string's span, quotes included, and its
    /// text); None when the event is not of the form.
    fn delta_text<'e>(&self, event: &'e [u8]) -> Option<(usize, usize, Cow<'e, str>)> {
        let i = self.anchor.find(event)?;
        if !self.markers.iter().all(|m| m.find(event).is_some()) {
            return None;
        }
        if self.index.find_iter(event).nth(1).is_some() {
            return None;
        }
        let start = i + self.anchor.needle().len();
        let stop = string_end(event, start)?;
        let raw = &event[start..stop];
        let text = if memchr::memchr(b'\\', raw).is_none() {
            Cow::Borrowed(std::str::from_utf8(raw).ok()?)
        } else {
            Cow::Owned(serde_json::from_slice::<String>(&event[start - 1..=stop]).ok()?)
        };
        Some((start - 1, stop + 1, text))
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str, out: &mut Vec<u8>) {
    // Serializing a str cannot fail.
    serde_json::to_writer(&mut *out, text).unwrap_or_default();
}

impl Window {
    /// Read the events at the start of `data` whose text is of `form`, each
    /// through the window, into `out` (an event whose text went out as it came,
    /// as it came; one with another text, with it; one with none, left out),
    /// until an event of another kind, or (`stop_on_match`) one with a match.
    /// Returns how many bytes of `data` were read (whole events, their blank
    /// line included).
    pub fn feed_events(
        &mut self,
        pat: &Pattern,
        replacement: &str,
        data: &[u8],
        form: &DeltaForm<'_>,
        stop_on_match: bool,
        out: &mut Vec<u8>,
    ) -> usize {
        let finders = FormFinders::new(form);
        let blank = memchr::memmem::Finder::new(b"\n\n");
        let mut pos = 0;
        let mut last = None; // the last event read: its range in data, its text's span
        while let Some(rel) = blank.find(&data[pos..]) {
            let event = &data[pos..pos + rel];
            if event.is_empty() {
                pos += 2;
                continue;
            }
            let Some((start, end, text)) = finders.delta_text(event) else {
                break;
            };
            let before = self.matches;
            let got = self.push(pat, &text, replacement);
            last = Some((pos, pos + rel, start, end));
            pos += rel + 2;
            if stop_on_match && self.matches != before {
                break;
            }
            if got == text {
                out.extend_from_slice(event);
            } else if got.is_empty() {
                continue;
            } else {
                out.extend_from_slice(&event[..start]);
                json_string(&got, out);
                out.extend_from_slice(&event[end..]);
            }
            out.extend_from_slice(b"\n\n");
        }
        if let Some((from, to, start, end)) = last {
            self.set_template(&data[from..to], start, end);
        }
        pos
    }

    /// Remember `event` (its text's JSON string at `start..end`) as the form of
    /// what [`Window::render`] writes.
    pub fn set_template(&mut self, event: &[u8], start: usize, end: usize) {
        self.template.clear();
        self.template.extend_from_slice(event);
        self.span = (start, end);
    }

    /// The last text delta event with `text` for its text (empty: none).
    #[must_use]
    pub fn render(&self, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if text.is_empty() || self.template.is_empty() {
            return out;
        }
        let (start, end) = self.span;
        out.extend_from_slice(&self.template[..start]);
        json_string(text, &mut out);
        out.extend_from_slice(&self.template[end..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(pat: &Pattern, pieces: &[&str], window: usize) -> (String, Vec<String>) {
        let mut w = Window::new(window);
        let mut outs: Vec<String> = pieces.iter().map(|p| w.push(pat, p, "[X]")).collect();
        outs.push(w.finish(pat, "[X]"));
        (outs.concat(), outs)
    }

    #[test]
    fn whole_text() {
        let p = Pattern::new(r"\d{3}-\d{4}").unwrap();
        assert_eq!(
            p.redact("call 555-1234 or 555-9876.", "[X]"),
            ("call [X] or [X].".to_owned(), 2)
        );
        assert_eq!(p.redact("nothing", "[X]"), ("nothing".to_owned(), 0));
        assert!(p.matches("a 123-4567"));
        assert!(!p.matches("a 123-456"));
    }

    #[test]
    fn bad_pattern() {
        assert!(Pattern::new("(unclosed").is_err());
        assert!(Pattern::new(r"(?<=x)y").is_err());
    }

    #[test]
    fn split_match_is_caught_and_free_text_is_not_held() {
        let p = Pattern::new(r"secret-\d{4}").unwrap();
        let (all, outs) = stream(&p, &["the word is secr", "et-1234 ok", " bye"], 256);
        assert_eq!(all, "the word is [X] ok bye");
        assert_eq!(outs[0], "the word is ");
        assert_eq!(outs[1], "[X] ok");
        assert_eq!(outs[2], " bye");
    }

    #[test]
    fn window_bounds_what_is_held() {
        let p = Pattern::new(r"a+b").unwrap();
        let mut w = Window::new(4);
        let out = w.push(&p, "aaaaaaaaaa", "[X]");
        assert_eq!(out, "aaaaaa");
        assert_eq!(w.held(), 4);
    }

    #[test]
    fn pathological_pattern_is_linear() {
        let p = Pattern::new(r"(a+)+$").unwrap();
        let text = "a".repeat(100_000) + "!";
        let t = std::time::Instant::now();
        assert!(!p.matches(&text));
        assert!(t.elapsed().as_millis() < 1000);
    }

    #[test]
    fn empty_matches_are_skipped() {
        let p = Pattern::new(r"x*").unwrap();
        assert_eq!(p.redact("abxxc", "-"), ("ab-c".to_owned(), 1));
        let (all, _) = stream(&p, &["ab", "xx", "c"], 8);
        assert_eq!(all, "ab[X]c");
    }

    #[test]
    fn events_of_the_fast_form() {
        let p = Pattern::new(r"secret-\d{4}").unwrap();
        let mut w = Window::new(64);
        let form = DeltaForm {
            anchor: br#""delta":{"content":""#,
            markers: &[br#""finish_reason":null"#],
        };
        let ev = |t: &str| {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
                serde_json::to_string(t).unwrap()
            )
        };
        let data = [
            ev("a secr"),
            ev("et-1234 \"b\""),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let mut out = Vec::new();
        let used = w.feed_events(&p, "#", data.as_bytes(), &form, false, &mut out);
        assert_eq!(&data[used..], "data: [DONE]\n\n");
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, [ev("a "), ev("# \"b\"")].concat());
        assert_eq!(w.finish(&p, "#"), "");
        assert_eq!(w.render("x"), ev("x").trim_end().as_bytes());
        assert_eq!(string_end(br#"a\"b"c"#, 0), Some(4));
        assert_eq!(string_end(br#"a\\"b"#, 0), Some(3));
    }

    #[test]
    fn multibyte_text() {
        let p = Pattern::new(r"é+").unwrap();
        let (all, _) = stream(&p, &["aé", "éb", "ü"], 2);
        assert_eq!(all, "a[X]bü");
    }

    #[test]
    fn fewer_characters_than_the_window_in_more_bytes_are_held() {
        // Six characters in nine bytes, a window of eight: a match may still begin
        // at the last one, which must not go out.
        let p = Pattern::new(r"[ab]{2}|\d-").unwrap();
        let (all, outs) = stream(&p, &["aa", "aa\u{1f600}0", "-"], 8);
        assert_eq!(all, "[X][X]\u{1f600}[X]");
        assert!(!outs[1].ends_with('0'), "{outs:?}");
        assert_eq!(chars_before_end("a\u{e9}\u{e9}", 0, 4), 0);
        assert_eq!(chars_before_end("a\u{e9}\u{e9}", 0, 2), 1);
        assert_eq!(chars_before_end("a\u{e9}\u{e9}", 0, 0), 5);
    }
}
