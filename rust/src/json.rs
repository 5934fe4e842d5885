//! A JSON tree for reading a few fields of a small document once.
//!
//! [`Json`] is what the SSE scanner reads events into instead of
//! `serde_json::Value`: strings without escapes borrow from the input, objects
//! are a list of members (looked up from the end, so a repeated key reads as
//! its last value, as in `Value`), and numbers keep only what is read of them
//! (a non-negative integer). It is parsed by `serde_json`'s own parser with the
//! same entry point, so it accepts exactly the documents `Value` accepts (the
//! same grammar, number ranges, UTF-8 and depth checks); only the tree it
//! builds is cheaper: no hashing, no key copies.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// One JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A non-negative integer that fits in 64 bits.
    Uint(u64),
    /// Any other number.
    Number,
    /// A string.
    Str(Cow<'a, str>),
    /// An array.
    Arr(Vec<Json<'a>>),
    /// An object.
    Obj(Obj<'a>),
}

/// An object's members, in document order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Obj<'a>(pub Vec<(Cow<'a, str>, Json<'a>)>);

impl<'a> Obj<'a> {
    /// The value of `key` (its last one when repeated).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether `key` is a member.
    #[must_use]
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
}

impl<'a> Json<'a> {
    /// Parses `data` (one whole document, as `serde_json::from_slice`).
    ///
    /// # Errors
    /// What `serde_json::from_slice::<Value>` refuses.
    pub fn parse(data: &'a [u8]) -> serde_json::Result<Json<'a>> {
        serde_json::from_slice(data)
    }

    /// The integer, when a non-negative one that fits in 64 bits.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Uint(v) => Some(*v),
            _ => None,
        }
    }

    /// The string.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The object.
    #[must_use]
    pub fn as_object(&self) -> Option<&Obj<'a>> {
        match self {
            Json::Obj(o) => Some(o),
            _ => None,
        }
    }

    /// The array.
    #[must_use]
    pub fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }

    /// Whether this is an object.
    #[must_use]
    pub fn is_object(&self) -> bool {
        matches!(self, Json::Obj(_))
    }

    /// Whether this is `null`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor(PhantomData))
    }
}

struct JsonVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for JsonVisitor<'a> {
    type Value = Json<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json<'a>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json<'a>, E> {
        Ok(u64::try_from(v).map_or(Json::Number, Json::Uint))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json<'a>, E> {
        Ok(Json::Uint(v))
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Json<'a>, E> {
        Ok(Json::Number)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json<'a>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json<'a>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Json<'a>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'a>, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'a>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'a>, A::Error> {
        let mut members = Vec::new();
        while let Some(Key(k)) = map.next_key()? {
            members.push((k, map.next_value()?));
        }
        Ok(Json::Obj(Obj(members)))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor(PhantomData))
    }
}

struct KeyVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
    type Value = Key<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'a>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'a>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'a>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The same verdict as `Value`, and the same fields read.
    fn same(doc: &[u8]) {
        let ours = Json::parse(doc);
        let theirs = serde_json::from_slice::<Value>(doc);
        assert_eq!(ours.is_ok(), theirs.is_ok(), "{}", String::from_utf8_lossy(doc));
        if let (Ok(Json::Obj(o)), Ok(Value::Object(m))) = (&ours, &theirs) {
            for (k, v) in m {
                let mine = o.get(k).expect("key");
                assert_eq!(mine.as_u64(), v.as_u64(), "{k}");
                assert_eq!(mine.as_str(), v.as_str(), "{k}");
                assert_eq!(mine.is_null(), v.is_null(), "{k}");
                assert_eq!(mine.is_object(), v.is_object(), "{k}");
                assert_eq!(mine.as_array().map(<[_]>::len), v.as_array().map(Vec::len), "{k}");
            }
            assert_eq!(o.0.iter().filter(|(k, _)| !m.contains_key(k.as_ref())).count(), 0);
        }
    }

    #[test]
    fn accepts_what_value_accepts() {
        for doc in [
            &b"{\"a\":1,\"b\":\"x\",\"c\":null,\"d\":[1,2],\"e\":{\"f\":true}}"[..],
            b"{\"a\":1,\"a\":2}",
            b"{\"a\\u0062\":\"\\u00e9\\n\"}",
            b"{\"n\":-1,\"m\":1.5,\"big\":99999999999999999999999,\"z\":-0}",
            b"{\"x\":1e400}",
            b"{\"x\":-1e400}",
            b"{\"s\":\"\xff\"}",
            b"{\"s\":\"\\ud800\"}",
            b"{\"a\":1,}",
            b"[1,2]",
            b"{\"a\":1} x",
            b" {\"a\" : [ ] } ",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":18446744073709551615,\"b\":18446744073709551616}",
        ] {
            same(doc);
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        same(deep.as_bytes());
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_value() {
        let doc = Json::parse(b"{\"a\":1,\"b\":2,\"a\":3}").unwrap();
        assert_eq!(doc.as_object().unwrap().get("a").unwrap().as_u64(), Some(3));
    }
}
