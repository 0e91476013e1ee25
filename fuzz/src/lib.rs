//! Shared pieces of the fuzz targets: the typed value the codec targets decode into, and
//! the checks every decode must pass.

use cache_core::{Codec, ErrorKind};
use serde::{Deserialize, Serialize};

/// A small struct with the shapes a cached value has: integers, floats, strings, options,
/// sequences, maps, enums and recursion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Small {
    pub id: u64,
    pub delta: i32,
    pub name: String,
    pub score: f64,
    pub tags: Vec<String>,
    pub attrs: std::collections::BTreeMap<String, u32>,
    pub kind: Kind,
    pub next: Option<Box<Small>>,
    #[serde(default)]
    pub flag: bool,
}

/// Unit, newtype, tuple and struct variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Kind {
    Plain,
    Count(u32),
    Pair(i64, String),
    Shape { w: u16, h: u16 },
}

/// Decode `data` with codec `C` into a `serde_json::Value` and into [`Small`]: never a
/// panic, and every error is of kind `Decode`. A decoded value must encode again, and that
/// encoding must decode.
pub fn check_codec<C: Codec>(data: &[u8]) {
    match C::decode::<serde_json::Value>(data) {
        Ok(value) => {
            let again = C::encode(&value).expect("a decoded value encodes again");
            C::decode::<serde_json::Value>(&again).expect("a re-encoded value decodes");
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Decode, "{e}"),
    }
    match C::decode::<Small>(data) {
        Ok(value) => {
            let again = C::encode(&value).expect("a decoded struct encodes again");
            C::decode::<Small>(&again).expect("a re-encoded struct decodes");
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Decode, "{e}"),
    }
    // Untyped containers with borrowed-looking shapes.
    if let Err(e) = C::decode::<Vec<Vec<u8>>>(data) {
        assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    }
    if let Err(e) = C::decode::<std::collections::HashMap<String, Vec<Kind>>>(data) {
        assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    }
}
