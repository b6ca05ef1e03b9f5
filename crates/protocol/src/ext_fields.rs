//! `ExtFields`: a command's custom header (`extFields`), a small string map.
//!
//! Every request and response carries one, so it is on the hot path of every
//! send: a `HashMap<String, String>` cost two allocations and a SipHash per
//! field (about twenty fields per send). Here all keys and values live back to
//! back in one `String`, with a key-sorted index beside it: two allocations
//! per header, lookups by binary search, and iteration already in the sorted
//! order the JSON header is written in (fastjson sorts keys too).

use std::fmt;

/// First allocation of an empty map that is written to.
const FIRST_BUF: usize = 384;
const FIRST_ENTRIES: usize = 16;

/// Key and value positions inside [`ExtFields::buf`], and a cheap tag of
/// the key (length, first and last byte) that rejects most non-matching
/// keys in a lookup without comparing bytes.
#[derive(Clone, Copy, Debug)]
struct Entry {
    tag: u32,
    key_start: u32,
    key_len: u32,
    val_start: u32,
    val_len: u32,
}

/// String pairs sorted by key. Replacing or removing a value leaves its old
/// bytes in the buffer until the map is dropped; headers are short-lived.
#[derive(Clone, Default)]
pub struct ExtFields {
    buf: String,
    entries: Vec<Entry>,
}

impl ExtFields {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `fields` pairs taking `bytes` bytes of text in total.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        ExtFields {
            buf: String::with_capacity(bytes),
            entries: Vec::with_capacity(fields),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.entries.clear();
    }

    fn key_of(&self, e: &Entry) -> &str {
        let s = e.key_start as usize;
        self.buf.get(s..s + e.key_len as usize).unwrap_or("")
    }

    fn val_of(&self, e: &Entry) -> &str {
        let s = e.val_start as usize;
        self.buf.get(s..s + e.val_len as usize).unwrap_or("")
    }

    /// Headers have a few dozen short keys at most: a linear scan on the
    /// tag beats a binary search that compares strings at every step.
    fn find(&self, key: &str) -> Option<usize> {
        let tag = tag_of(key);
        // The tag holds the length and the first and last byte, so for keys
        // of up to two bytes (all of SEND_MESSAGE_V2's) it is the key.
        self.entries
            .iter()
            .position(|e| e.tag == tag && (key.len() <= 2 || self.key_of(e) == key))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).map(|i| self.val_of(&self.entries[i]))
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Sets `key` to `value`, replacing any earlier value.
    pub fn insert(&mut self, key: &str, value: &str) {
        self.insert_with(key, |buf| buf.push_str(value));
    }

    /// Sets `key` to the text `write` appends to the buffer it is given, so
    /// numbers and the like are formatted in place without a temporary.
    pub fn insert_with(&mut self, key: &str, write: impl FnOnce(&mut String)) {
        if self.buf.capacity() == 0 {
            // A typed header writes a dozen fields or more: start at a size
            // that holds one without regrowing the buffer field by field.
            self.buf.reserve(FIRST_BUF);
            self.entries.reserve(FIRST_ENTRIES);
        }
        let val_start = self.buf.len();
        write(&mut self.buf);
        let val_len = self.buf.len() - val_start;
        self.place(key, val_start, val_len);
    }

    /// Like [`ExtFields::insert_with`] for a reader that writes the value
    /// straight into the buffer and may fail or find no value: `write`
    /// returns `Some(true)` to keep it under `key`, `Some(false)` for no
    /// value (JSON null) and `None` on failure, which is passed on. Nothing
    /// is recorded unless it returns `Some(true)`.
    pub(crate) fn try_insert_with(
        &mut self,
        key: &str,
        write: impl FnOnce(&mut String) -> Option<bool>,
    ) -> Option<()> {
        let val_start = self.buf.len();
        let keep = write(&mut self.buf);
        if keep == Some(true) {
            let val_len = self.buf.len() - val_start;
            self.place(key, val_start, val_len);
        } else {
            self.buf.truncate(val_start);
        }
        keep.map(|_| ())
    }

    /// Records a value already appended at `val_start..val_start+val_len`.
    fn place(&mut self, key: &str, val_start: usize, val_len: usize) {
        // Keys usually arrive in order (peers write them sorted): a key
        // above the last one is new and goes at the end, no search needed.
        let at = match self.entries.last() {
            Some(last) if key_ge(self.key_of(last), key) => {
                if let Some(i) = self.find(key) {
                    self.entries[i].val_start = val_start as u32;
                    self.entries[i].val_len = val_len as u32;
                    return;
                }
                self.entries.partition_point(|e| self.key_of(e) < key)
            }
            _ => self.entries.len(),
        };
        let key_start = self.buf.len();
        self.buf.push_str(key);
        self.entries.insert(
            at,
            Entry {
                tag: tag_of(key),
                key_start: key_start as u32,
                key_len: key.len() as u32,
                val_start: val_start as u32,
                val_len: val_len as u32,
            },
        );
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.find(key)?;
        let e = self.entries.remove(i);
        Some(self.val_of(&e).to_owned())
    }

    /// Pairs in ascending key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries
            .iter()
            .map(move |e| (self.key_of(e), self.val_of(e)))
    }

    /// Keys in ascending order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(move |e| self.key_of(e))
    }
}

/// `a >= b` for keys, deciding on the first byte when it differs (the
/// usual case) instead of calling memcmp.
#[inline]
fn key_ge(a: &str, b: &str) -> bool {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x > y,
        _ => a >= b,
    }
}

fn tag_of(key: &str) -> u32 {
    let b = key.as_bytes();
    let first = b.first().copied().unwrap_or(0) as u32;
    let last = b.last().copied().unwrap_or(0) as u32;
    ((b.len() as u32) << 16) | (first << 8) | last
}

impl PartialEq for ExtFields {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ExtFields {}

impl fmt::Debug for ExtFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for ExtFields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut ext = ExtFields::new();
        ext.extend(iter);
        ext
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Extend<(K, V)> for ExtFields {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k.as_ref(), v.as_ref());
        }
    }
}

// ------------------------------------------------------------ JSON reading

/// Reads a JSON object straight into the map. Values are lenient like Java's
/// decoder: numbers and booleans become their text, `null` means absent, and
/// nested objects or arrays are kept as their JSON text.
impl<'de> serde::Deserialize<'de> for ExtFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapVisitor)
    }
}

struct MapVisitor;

impl<'de> serde::de::Visitor<'de> for MapVisitor {
    type Value = ExtFields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of header fields")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ExtFields, A::Error> {
        let n = map.size_hint().unwrap_or(16);
        let mut ext = ExtFields::with_capacity(n, n * 24);
        let mut key = String::new();
        while map.next_key_seed(AppendStr(&mut key))?.is_some() {
            let val_start = ext.buf.len();
            if map.next_value_seed(AppendStr(&mut ext.buf))?.is_some() {
                let val_len = ext.buf.len() - val_start;
                ext.place(&key, val_start, val_len);
            }
            key.clear();
        }
        Ok(ext)
    }
}

/// Appends a JSON scalar's text to a `String`; yields `None` for `null`.
pub(crate) struct AppendStr<'a>(pub(crate) &'a mut String);

impl<'de> serde::de::DeserializeSeed<'de> for AppendStr<'_> {
    type Value = Option<()>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<()>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AppendStr<'_> {
    type Value = Option<()>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number, boolean or null")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<()>, E> {
        self.0.push_str(v);
        Ok(Some(()))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Option<()>, E> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(Some(()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Option<()>, E> {
        self.0.push_str(itoa::Buffer::new().format(v));
        Ok(Some(()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Option<()>, E> {
        self.0.push_str(itoa::Buffer::new().format(v));
        Ok(Some(()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Option<()>, E> {
        // The same text serde_json::Value would print for this number.
        self.0.push_str(
            &serde_json::Number::from_f64(v).map_or_else(|| "null".to_owned(), |n| n.to_string()),
        );
        Ok(Some(()))
    }

    fn visit_unit<E>(self) -> Result<Option<()>, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Option<()>, E> {
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Option<()>, A::Error> {
        let v: serde_json::Value =
            serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        self.0.push_str(&v.to_string());
        Ok(Some(()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Option<()>, A::Error> {
        let v: serde_json::Value =
            serde::Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        self.0.push_str(&v.to_string());
        Ok(Some(()))
    }
}

// ------------------------------------------------------------ JSON writing

/// Appends `s` as a JSON string literal (quotes included), escaping what
/// JSON requires. Most header text needs no escape and is copied in one go.
pub(crate) fn put_json_str(dst: &mut bytes::BytesMut, s: &str) {
    use bytes::BufMut;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    dst.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
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
        dst.put_slice(&bytes[start..i]);
        if esc.is_empty() {
            dst.put_slice(b"\\u00");
            dst.put_u8(HEX[(b >> 4) as usize]);
            dst.put_u8(HEX[(b & 0xf) as usize]);
        } else {
            dst.put_slice(esc);
        }
        start = i + 1;
    }
    dst.put_slice(&bytes[start..]);
    dst.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_insert_replace_remove() {
        let mut e = ExtFields::new();
        e.insert("topic", "A");
        e.insert("a", "1");
        e.insert("queueId", "3");
        e.insert("topic", "B");
        assert_eq!(e.len(), 3);
        assert_eq!(e.get("topic"), Some("B"));
        assert_eq!(e.get("nope"), None);
        assert_eq!(e.keys().collect::<Vec<_>>(), ["a", "queueId", "topic"]);
        assert_eq!(e.remove("a").as_deref(), Some("1"));
        assert_eq!(e.remove("a"), None);
        assert!(!e.contains_key("a"));
        assert_eq!(
            e.iter().collect::<Vec<_>>(),
            [("queueId", "3"), ("topic", "B")]
        );
    }

    #[test]
    fn equality_ignores_insertion_order_and_garbage() {
        let mut a = ExtFields::new();
        a.insert("x", "old");
        a.insert("y", "2");
        a.insert("x", "1");
        let b: ExtFields = [("y", "2"), ("x", "1")].into_iter().collect();
        assert_eq!(a, b);
        assert_eq!(format!("{b:?}"), r#"{"x": "1", "y": "2"}"#);
    }

    #[test]
    fn lenient_json_values() {
        let e: ExtFields =
            serde_json::from_str(r#"{"s":"a\"b","n":-5,"f":1.5,"t":true,"z":null,"o":{"k":[1]}}"#)
                .unwrap();
        assert_eq!(e.get("s"), Some("a\"b"));
        assert_eq!(e.get("n"), Some("-5"));
        assert_eq!(e.get("f"), Some("1.5"));
        assert_eq!(e.get("t"), Some("true"));
        assert_eq!(e.get("z"), None);
        assert_eq!(e.get("o"), Some(r#"{"k":[1]}"#));
        assert_eq!(e.len(), 5);
    }

    proptest::proptest! {
        /// Any sequence of inserts and removes behaves like a sorted map.
        #[test]
        fn behaves_like_a_btree_map(
            ops in proptest::collection::vec(("[a-e]{0,3}", "[a-z0-9]{0,4}", proptest::bool::weighted(0.8)), 0..60)
        ) {
            let mut ext = ExtFields::new();
            let mut model = std::collections::BTreeMap::new();
            for (k, v, insert) in &ops {
                if *insert {
                    ext.insert(k, v);
                    model.insert(k.clone(), v.clone());
                } else {
                    proptest::prop_assert_eq!(ext.remove(k), model.remove(k));
                }
            }
            proptest::prop_assert_eq!(ext.len(), model.len());
            let got: Vec<(&str, &str)> = ext.iter().collect();
            let want: Vec<(&str, &str)> = model.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            proptest::prop_assert_eq!(got, want);
            for k in model.keys() {
                proptest::prop_assert_eq!(ext.get(k), model.get(k).map(String::as_str));
            }
            proptest::prop_assert_eq!(ext.get("zz"), None);
        }
    }

    #[test]
    fn json_string_escaping_matches_serde_json() {
        for s in [
            "plain",
            "q\"uote",
            "back\\slash",
            "ctl\u{1}\n\t\r\u{8}\u{c}",
            "ünï",
            "",
        ] {
            let mut b = bytes::BytesMut::new();
            put_json_str(&mut b, s);
            assert_eq!(&b[..], serde_json::to_string(s).unwrap().as_bytes());
        }
    }
}
