//! Stream entry ids, and the parsing of stream replies (RESP2 arrays and RESP3 maps alike).

use std::collections::HashMap;
use std::fmt;

use cache_redis::redis::Value;

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId {
    pub(super) ms: u64,
    pub(super) seq: u64,
}

impl StreamId {
    /// Below every real entry id: the bound of "nothing was in the stream".
    pub(super) const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub(super) fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One entry read from the stream; `fields` is `None` when the entry was deleted while
/// pending (it was written: nothing left to do but acknowledge).
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) fields: Option<HashMap<String, Vec<u8>>>,
}

pub(super) fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().collect(),
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Attribute { data, .. } => items(data),
        _ => Vec::new(),
    }
}

/// The elements of a list (a map's values, for RESP3 replies keyed by name).
pub(super) fn items_of(v: &Value) -> Vec<&Value> {
    match v {
        Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
        other => items(other),
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes().to_vec()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// A flat `[name, value, ...]` list or a map, as name → value.
pub(super) fn pairs(v: &Value) -> HashMap<String, &Value> {
    let flat = items(v);
    flat.chunks(2)
        .filter_map(|c| match c {
            [k, v] => text(k).map(|k| (k, *v)),
            _ => None,
        })
        .collect()
}

/// `[id, [field, value, ...] | nil]`.
fn parse_entry(v: &Value) -> Option<Entry> {
    let parts = items(v);
    let id = text(parts.first()?)?;
    let fields = match parts.get(1) {
        None | Some(Value::Nil) => None,
        Some(f) => Some(
            items(f)
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((text(k)?, bytes(v)?)),
                    _ => None,
                })
                .collect(),
        ),
    };
    Some(Entry { id, fields })
}

/// A list of entries (`XRANGE`, `XREVRANGE`).
pub(super) fn parse_entries(v: &Value) -> Vec<Entry> {
    items(v).into_iter().filter_map(parse_entry).collect()
}

/// An `XREADGROUP` reply: nil, `[[stream, entries]]`, or `{stream: entries}`.
pub(super) fn parse_read(v: &Value) -> Vec<Entry> {
    match v {
        Value::Map(m) => m.iter().flat_map(|(_, e)| parse_entries(e)).collect(),
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match items(s).get(1) {
                Some(e) => parse_entries(e),
                None => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_ids_order_numerically() {
        let a = StreamId::parse("9-5");
        let b = StreamId::parse("10-0");
        assert!(a.is_some() && b.is_some());
        assert!(a < b);
        assert_eq!(
            StreamId::parse("10-0").map(|i| i.to_string()),
            Some("10-0".into())
        );
        assert_eq!(StreamId::parse("x"), None);
    }

    #[test]
    fn read_replies_parse_in_both_protocols() {
        let entry = Value::Array(vec![
            bulk("1-1"),
            Value::Array(vec![
                bulk("k"),
                bulk("a"),
                bulk("c"),
                bulk("2"),
                bulk("v"),
                bulk("x"),
            ]),
        ]);
        let deleted = Value::Array(vec![bulk("1-2"), Value::Nil]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![entry.clone(), deleted.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(bulk("s"), Value::Array(vec![entry, deleted]))]);
        for v in [resp2, resp3] {
            let e = parse_read(&v);
            assert_eq!(e.len(), 2);
            assert_eq!(e[0].id, "1-1");
            let f = e[0].fields.as_ref();
            assert_eq!(
                f.and_then(|f| f.get("k")).map(Vec::as_slice),
                Some(&b"a"[..])
            );
            assert!(e[1].fields.is_none());
        }
        assert!(parse_read(&Value::Nil).is_empty());
    }
}
