//! Unit tests for the codecs (per-feature; cross-codec tests need all three).

// With some codecs compiled out, some helpers and bindings go unused.
#![cfg_attr(
    not(all(feature = "json", feature = "msgpack", feature = "cbor")),
    allow(dead_code, unused_variables, unused_imports, unused_mut)
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cache_core::{Codec, ErrorKind};
use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    label: String,
    weight: f64,
    tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Newtype(i32),
    Tuple(u8, String),
    Struct { x: i64, y: Option<bool> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    ratio: f64,
    small: i64,
    big: u64,
    flag: bool,
    letter: char,
    maybe: Option<String>,
    maybe_num: Option<i64>,
    list: Vec<i64>,
    raw: Vec<u8>,
    inner: Inner,
    map: HashMap<String, Inner>,
    shape: Shape,
    unit: (),
}

/// A legitimately recursive type, as a nesting bomb would target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Expr {
    Lit(i64),
    Neg(Box<Expr>),
    List(Vec<Expr>),
}

fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        Just(0.0),
        Just(-0.0),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(f64::MIN_POSITIVE),
        Just(f64::EPSILON),
        Just(5e-324),
        Just(0.1),
        Just(1.0 / 3.0),
    ]
}

fn i64_any() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        Just(-1),
        any::<i64>()
    ]
}

fn u64_any() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(0),
        Just(u64::MAX / 2 + 1),
        any::<u64>()
    ]
}

fn inner() -> impl Strategy<Value = Inner> {
    (
        any::<String>(),
        finite_f64(),
        prop::collection::vec(any::<String>(), 0..4),
    )
        .prop_map(|(label, weight, tags)| Inner {
            label,
            weight,
            tags,
        })
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Unit),
        any::<i32>().prop_map(Shape::Newtype),
        (any::<u8>(), any::<String>()).prop_map(|(a, b)| Shape::Tuple(a, b)),
        (i64_any(), any::<Option<bool>>()).prop_map(|(x, y)| Shape::Struct { x, y }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        (
            any::<String>(),
            finite_f64(),
            i64_any(),
            u64_any(),
            any::<bool>(),
            any::<char>(),
            any::<Option<String>>(),
        ),
        (
            prop::option::of(i64_any()),
            prop::collection::vec(i64_any(), 0..8),
            prop::collection::vec(any::<u8>(), 0..16),
            inner(),
            prop::collection::hash_map(any::<String>(), inner(), 0..4),
            shape(),
        ),
    )
        .prop_map(
            |(
                (name, ratio, small, big, flag, letter, maybe),
                (maybe_num, list, raw, inner, map, shape),
            )| {
                Record {
                    name,
                    ratio,
                    small,
                    big,
                    flag,
                    letter,
                    maybe,
                    maybe_num,
                    list,
                    raw,
                    inner,
                    map,
                    shape,
                    unit: (),
                }
            },
        )
}

/// Equality that also distinguishes 0.0 from -0.0 in the float fields.
fn same(a: &Record, b: &Record) -> bool {
    a == b
        && a.ratio.to_bits() == b.ratio.to_bits()
        && a.inner.weight.to_bits() == b.inner.weight.to_bits()
        && a.map.iter().all(|(k, v)| {
            b.map
                .get(k)
                .is_some_and(|w| v.weight.to_bits() == w.weight.to_bits())
        })
}

fn round_trip<C: Codec>(value: &Record) -> Result<(), TestCaseError> {
    let bytes = C::encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: Record = C::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(same(value, &back), "{:?} != {:?}", value, back);
    let via_id: Record =
        C::decode_id(C::ID.as_u8(), &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(same(value, &via_id));
    Ok(())
}

/// Every strict prefix of a valid encoding is a Decode error (the value is a struct, so no
/// prefix is itself complete).
fn truncations_fail<C: Codec>(value: &Record) -> Result<(), TestCaseError> {
    let bytes = C::encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for cut in 0..bytes.len() {
        let r = C::decode::<Record>(&bytes[..cut]);
        prop_assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::Decode),
            "{} prefix of {} bytes: {:?}",
            C::ID.name(),
            cut,
            r
        );
    }
    Ok(())
}

/// Decoding arbitrary bytes into self-describing or typed targets returns (no panic), and
/// every error is a Decode error.
fn garbage_is_decode_error<C: Codec>(bytes: &[u8]) -> Result<(), TestCaseError> {
    fn check<T>(r: cache_core::Result<T>) -> Result<(), TestCaseError> {
        if let Err(e) = r {
            prop_assert_eq!(e.kind(), ErrorKind::Decode);
        }
        Ok(())
    }
    check(C::decode::<Record>(bytes))?;
    check(C::decode::<serde_json::Value>(bytes))?;
    check(C::decode::<IgnoredAny>(bytes))?;
    check(C::decode::<Expr>(bytes))?;
    check(C::decode::<Vec<String>>(bytes))?;
    check(C::decode::<HashMap<String, Vec<u8>>>(bytes))?;
    Ok(())
}

/// Every decode target a bomb might aim at, with the time it took; all must be Decode errors.
fn assert_bomb_rejected<C: Codec>(what: &str, bytes: &[u8]) {
    fn one<T: serde::de::DeserializeOwned + std::fmt::Debug, C: Codec>(what: &str, bytes: &[u8]) {
        let start = Instant::now();
        let r = C::decode::<T>(bytes);
        let took = start.elapsed();
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::Decode),
            "{} {what} into {}: {:?}",
            C::ID.name(),
            std::any::type_name::<T>(),
            r
        );
        assert!(
            took < Duration::from_secs(5),
            "{} {what} took {took:?}",
            C::ID.name()
        );
    }
    one::<serde_json::Value, C>(what, bytes);
    one::<IgnoredAny, C>(what, bytes);
    one::<Expr, C>(what, bytes);
    one::<Vec<u8>, C>(what, bytes);
    one::<String, C>(what, bytes);
    one::<Record, C>(what, bytes);
}

const BOMB: usize = 128 * 1024;

fn repeated(prefix: &[u8], n: usize) -> Vec<u8> {
    prefix
        .iter()
        .copied()
        .cycle()
        .take(prefix.len() * n)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trips(value in record()) {
        round_trip::<Json>(&value)?;
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_round_trips(value in record()) {
        round_trip::<MsgPack>(&value)?;
    }

    #[cfg(feature = "cbor")]
    #[test]
    fn cbor_round_trips(value in record()) {
        round_trip::<Cbor>(&value)?;
    }

    #[cfg(all(feature = "json", feature = "msgpack", feature = "cbor"))]
    #[test]
    fn every_codec_reads_every_other(value in record()) {
        let written = [
            (Json::ID.as_u8(), Json::encode(&value).map_err(|e| TestCaseError::fail(e.to_string()))?),
            (MsgPack::ID.as_u8(), MsgPack::encode(&value).map_err(|e| TestCaseError::fail(e.to_string()))?),
            (Cbor::ID.as_u8(), Cbor::encode(&value).map_err(|e| TestCaseError::fail(e.to_string()))?),
        ];
        for (id, bytes) in &written {
            for (reader, got) in [
                ("json", Json::decode_id::<Record>(*id, bytes)),
                ("msgpack", MsgPack::decode_id::<Record>(*id, bytes)),
                ("cbor", Cbor::decode_id::<Record>(*id, bytes)),
                ("decode_any", decode_any::<Record>(*id, bytes)),
            ] {
                let got = got.map_err(|e| TestCaseError::fail(format!("{reader} reading id {id}: {e}")))?;
                prop_assert!(same(&value, &got), "{} reading id {}", reader, id);
            }
        }
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_truncations_fail(value in record()) {
        truncations_fail::<Json>(&value)?;
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_truncations_fail(value in record()) {
        truncations_fail::<MsgPack>(&value)?;
    }

    #[cfg(feature = "cbor")]
    #[test]
    fn cbor_truncations_fail(value in record()) {
        truncations_fail::<Cbor>(&value)?;
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        #[cfg(feature = "json")]
        garbage_is_decode_error::<Json>(&bytes)?;
        #[cfg(feature = "msgpack")]
        garbage_is_decode_error::<MsgPack>(&bytes)?;
        #[cfg(feature = "cbor")]
        garbage_is_decode_error::<Cbor>(&bytes)?;
    }

    /// Flipping one byte of a valid encoding never panics; errors are Decode errors.
    #[test]
    fn corrupted_bytes_never_panic(value in record(), index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        #[cfg(feature = "json")]
        {
            let mut bytes = Json::encode(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let i = index.index(bytes.len());
            bytes[i] = byte;
            garbage_is_decode_error::<Json>(&bytes)?;
        }
        #[cfg(feature = "msgpack")]
        {
            let mut bytes = MsgPack::encode(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let i = index.index(bytes.len());
            bytes[i] = byte;
            garbage_is_decode_error::<MsgPack>(&bytes)?;
        }
        #[cfg(feature = "cbor")]
        {
            let mut bytes = Cbor::encode(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let i = index.index(bytes.len());
            bytes[i] = byte;
            garbage_is_decode_error::<Cbor>(&bytes)?;
        }
    }

    #[cfg(all(feature = "msgpack", feature = "cbor"))]
    #[test]
    fn binary_codecs_round_trip_recursive_values(depth in 0usize..80, leaf in i64_any()) {
        let mut e = Expr::Lit(leaf);
        for i in 0..depth {
            e = if i % 2 == 0 { Expr::Neg(Box::new(e)) } else { Expr::List(vec![Expr::Lit(1), e]) };
        }
        let m = MsgPack::encode(&e).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&MsgPack::decode::<Expr>(&m).map_err(|e| TestCaseError::fail(e.to_string()))?, &e);
        let c = Cbor::encode(&e).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&Cbor::decode::<Expr>(&c).map_err(|e| TestCaseError::fail(e.to_string()))?, &e);
    }
}

#[test]
fn codec_ids() {
    #[cfg(feature = "json")]
    assert_eq!(Json::ID, cache_core::CodecId::JSON);
    #[cfg(feature = "msgpack")]
    assert_eq!(MsgPack::ID, cache_core::CodecId::MSGPACK);
    #[cfg(feature = "cbor")]
    assert_eq!(Cbor::ID, cache_core::CodecId::CBOR);
}

#[test]
fn unknown_codec_id_is_a_decode_error() {
    for id in [0u8, 4, 200, 255] {
        let e = decode_any::<u32>(id, b"1").err();
        assert!(
            e.as_ref().is_some_and(|e| e.kind() == ErrorKind::Decode
                && e.message().contains(&format!("unknown codec id {id}"))),
            "{e:?}"
        );
        #[cfg(feature = "json")]
        assert!(Json::decode_id::<u32>(id, b"1").is_err());
    }
}

#[cfg(feature = "json")]
#[test]
fn json_is_plain_json() -> TestResult {
    let value = Record {
        name: "n".into(),
        ratio: 0.1,
        small: i64::MIN,
        big: u64::MAX,
        flag: true,
        letter: 'é',
        maybe: None,
        maybe_num: Some(3),
        list: vec![1, 2],
        raw: vec![0, 255],
        inner: Inner {
            label: "l".into(),
            weight: -0.0,
            tags: vec![],
        },
        map: HashMap::from([(
            "k".to_string(),
            Inner {
                label: "m".into(),
                weight: 1e300,
                tags: vec!["t".into()],
            },
        )]),
        shape: Shape::Struct {
            x: 1,
            y: Some(false),
        },
        unit: (),
    };
    let bytes = Json::encode(&value)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)?;
    assert_eq!(v["name"], "n");
    assert_eq!(v["ratio"].as_f64(), Some(0.1));
    assert_eq!(v["small"].as_i64(), Some(i64::MIN));
    assert_eq!(v["big"].as_u64(), Some(u64::MAX));
    assert!(v["maybe"].is_null());
    assert_eq!(v["map"]["k"]["tags"][0], "t");
    assert_eq!(v["shape"]["Struct"]["y"], false);
    // What another client would write is readable too.
    let foreign = br#"{"label": "x", "weight": 2.5, "tags": ["a"]}"#;
    let inner: Inner = Json::decode(foreign)?;
    assert_eq!(inner.weight, 2.5);
    assert_eq!(inner.tags, vec!["a".to_string()]);
    Ok(())
}

#[cfg(feature = "json")]
#[test]
fn json_floats_round_trip_exactly() -> TestResult {
    for f in [
        0.1,
        1.0 / 3.0,
        5e-324,
        f64::MAX,
        2.2250738585072014e-308,
        9007199254740993.0,
    ] {
        let back: f64 = Json::decode(&Json::encode(&f)?)?;
        assert_eq!(back.to_bits(), f.to_bits(), "{f}");
    }
    Ok(())
}

#[cfg(feature = "msgpack")]
#[test]
fn msgpack_structs_are_maps() -> TestResult {
    let bytes = MsgPack::encode(&Inner {
        label: "l".into(),
        weight: 1.5,
        tags: vec![],
    })?;
    // fixmap of 3 entries, first key the fixstr "label".
    assert_eq!(bytes[0], 0x83);
    assert_eq!(&bytes[1..7], b"\xa5label");
    // And a generic map reader (what another language's client sees) has the field names.
    let generic: HashMap<String, serde_json::Value> = MsgPack::decode(&bytes)?;
    assert_eq!(generic["label"], "l");
    assert_eq!(generic["weight"].as_f64(), Some(1.5));
    Ok(())
}

#[test]
fn errors_name_the_codec() {
    #[cfg(feature = "json")]
    assert!(Json::decode::<Inner>(b"{")
        .err()
        .is_some_and(|e| e.kind() == ErrorKind::Decode && e.message().starts_with("json")));
    #[cfg(feature = "msgpack")]
    assert!(MsgPack::decode::<Inner>(&[0xc1])
        .err()
        .is_some_and(|e| e.kind() == ErrorKind::Decode && e.message().starts_with("msgpack")));
    #[cfg(feature = "cbor")]
    assert!(Cbor::decode::<Inner>(&[0xff])
        .err()
        .is_some_and(|e| e.kind() == ErrorKind::Decode && e.message().starts_with("cbor")));
}

#[test]
fn wrong_type_is_a_decode_error() {
    #[cfg(feature = "json")]
    assert!(Json::decode::<Inner>(b"[1,2]")
        .err()
        .is_some_and(|e| e.kind() == ErrorKind::Decode && std::error::Error::source(&e).is_some()));
    #[cfg(feature = "msgpack")]
    assert!(MsgPack::decode::<Inner>(&[0x92, 0x01, 0x02])
        .err()
        .is_some_and(|e| e.kind() == ErrorKind::Decode));
    #[cfg(feature = "cbor")]
    assert!(Cbor::decode::<Inner>(&[0x82, 0x01, 0x02])
        .err()
        .is_some_and(|e| e.kind() == ErrorKind::Decode));
}

#[test]
fn trailing_bytes_are_rejected() -> TestResult {
    #[cfg(feature = "json")]
    {
        let mut b = Json::encode(&7u32)?;
        b.extend_from_slice(b" 8");
        assert!(Json::decode::<u32>(&b).is_err());
    }
    #[cfg(feature = "msgpack")]
    {
        let mut b = MsgPack::encode(&7u32)?;
        b.push(0x08);
        assert!(MsgPack::decode::<u32>(&b).is_err());
    }
    #[cfg(feature = "cbor")]
    {
        let mut b = Cbor::encode(&7u32)?;
        b.push(0x08);
        assert!(Cbor::decode::<u32>(&b).is_err());
    }
    Ok(())
}

#[test]
fn encode_errors_are_encode_kind() {
    // Maps with non-string keys cannot be JSON; a failing Serialize impl fails everywhere.
    struct Fails;
    impl Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("nope"))
        }
    }
    #[cfg(feature = "json")]
    {
        let m = HashMap::from([(vec![1u8], 1u8)]);
        assert!(Json::encode(&m)
            .err()
            .is_some_and(|e| e.kind() == ErrorKind::Encode && e.message().starts_with("json")));
        assert!(Json::encode(&Fails)
            .err()
            .is_some_and(|e| e.kind() == ErrorKind::Encode));
    }
    #[cfg(feature = "msgpack")]
    assert!(MsgPack::encode(&Fails)
        .err()
        .is_some_and(|e| e.kind() == ErrorKind::Encode && e.message().starts_with("msgpack")));
    #[cfg(feature = "cbor")]
    assert!(Cbor::encode(&Fails)
        .err()
        .is_some_and(|e| e.kind() == ErrorKind::Encode && e.message().starts_with("cbor")));
}

#[test]
fn encode_accepts_unsized_values() -> TestResult {
    let s: &str = "unsized";
    let slice: &[u32] = &[1, 2, 3];
    #[cfg(feature = "json")]
    assert_eq!(Json::decode::<String>(&Json::encode(s)?)?, s);
    #[cfg(feature = "msgpack")]
    assert_eq!(
        MsgPack::decode::<Vec<u32>>(&MsgPack::encode(slice)?)?,
        slice
    );
    #[cfg(feature = "cbor")]
    assert_eq!(Cbor::decode::<String>(&Cbor::encode(s)?)?, s);
    let _ = (s, slice);
    Ok(())
}

#[cfg(feature = "json")]
#[test]
fn json_nesting_bombs_are_rejected() {
    assert_bomb_rejected::<Json>("128 KiB of '['", &vec![b'['; BOMB]);
    assert_bomb_rejected::<Json>("128 KiB of '{\"a\":'", &repeated(b"{\"a\":", BOMB / 5));
    assert_bomb_rejected::<Json>("Neg enum chain", &repeated(b"{\"Neg\":", BOMB / 7));
}

#[cfg(feature = "msgpack")]
#[test]
fn msgpack_bombs_are_rejected() {
    assert_bomb_rejected::<MsgPack>("128 KiB of fixarray(1)", &vec![0x91; BOMB]);
    assert_bomb_rejected::<MsgPack>("128 KiB of fixmap(1)", &vec![0x81; BOMB]);
    // {"Neg": {"Neg": ...}}: rmp-serde does not count enum maps against its depth limit.
    assert_bomb_rejected::<MsgPack>("enum chain", &repeated(b"\x81\xa3Neg", BOMB / 5));
    for head in [
        &[0xc6u8, 0xff, 0xff, 0xff, 0xff][..], // bin32
        &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str32
        &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array32
        &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map32
        &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01], // ext32
    ] {
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 4, 5]);
        assert_bomb_rejected::<MsgPack>("4 GiB length claim", &bytes);
        let e = MsgPack::decode::<serde_json::Value>(&bytes).err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.message().contains("declares length 4294967295")),
            "{e:?}"
        );
    }
}

#[cfg(feature = "cbor")]
#[test]
fn cbor_bombs_are_rejected() {
    assert_bomb_rejected::<Cbor>("128 KiB of array(1)", &vec![0x81; BOMB]);
    assert_bomb_rejected::<Cbor>("128 KiB of indefinite arrays", &vec![0x9f; BOMB]);
    assert_bomb_rejected::<Cbor>("128 KiB of map(1)", &vec![0xa1; BOMB]);
    assert_bomb_rejected::<Cbor>("128 KiB of tags", &vec![0xc6; BOMB]);
    assert_bomb_rejected::<Cbor>("enum chain", &repeated(b"\xa1\x63Neg", BOMB / 5));
    for head in [
        &[0x5au8, 0xff, 0xff, 0xff, 0xff][..], // bytes, 4 GiB
        &[0x7a, 0xff, 0xff, 0xff, 0xff],       // text, 4 GiB
        &[0x9a, 0xff, 0xff, 0xff, 0xff],       // array, 2^32 - 1
        &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // map, 2^64 - 1
        &[0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], // bytes, 2^63 - 1
    ] {
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 4, 5]);
        assert_bomb_rejected::<Cbor>("huge length claim", &bytes);
    }
}

#[cfg(all(feature = "msgpack", feature = "cbor"))]
#[test]
fn nesting_up_to_the_limit_decodes() -> TestResult {
    // MAX_DEPTH nested single-element arrays around a null.
    let mut v = serde_json::Value::Null;
    for _ in 0..MAX_DEPTH {
        v = serde_json::Value::Array(vec![v]);
    }
    assert_eq!(
        MsgPack::decode::<serde_json::Value>(&MsgPack::encode(&v)?)?,
        v
    );
    assert_eq!(Cbor::decode::<serde_json::Value>(&Cbor::encode(&v)?)?, v);
    let deeper = serde_json::Value::Array(vec![v]);
    assert!(MsgPack::decode::<serde_json::Value>(&MsgPack::encode(&deeper)?).is_err());
    assert!(Cbor::decode::<serde_json::Value>(&Cbor::encode(&deeper)?).is_err());
    Ok(())
}

/// Bytes after a complete value are rejected whatever the value's shape: the binary codecs
/// check what is left once serde has returned the value.
#[cfg(all(feature = "msgpack", feature = "cbor"))]
#[test]
fn trailing_bytes_after_every_shape_are_rejected() -> TestResult {
    fn check<C: Codec, T>(value: &T) -> TestResult
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let bytes = C::encode(value)?;
        assert_eq!(&C::decode::<T>(&bytes)?, value);
        // A complete second value (0 in both formats), two of them, and a lone 0xff.
        for tail in [&[0x00u8][..], &[0x01, 0x02], &[0xff]] {
            let with_tail = [&bytes[..], tail].concat();
            let r = C::decode::<T>(&with_tail);
            assert!(
                matches!(&r, Err(e) if e.kind() == ErrorKind::Decode),
                "{} {value:?} + {tail:x?}: {r:?}",
                C::ID.name()
            );
            if tail != [0xff] {
                assert!(
                    r.as_ref()
                        .err()
                        .is_some_and(|e| e.message().contains("trailing")),
                    "{} {value:?} + {tail:x?}: {r:?}",
                    C::ID.name()
                );
            }
        }
        Ok(())
    }
    fn all<C: Codec>() -> TestResult {
        check::<C, _>(&Some(7u32))?;
        check::<C, Option<u32>>(&None)?;
        check::<C, _>(&"text".to_owned())?;
        check::<C, _>(&vec![1u64, 2, 3])?;
        check::<C, Vec<u64>>(&vec![])?;
        check::<C, _>(&())?;
        check::<C, _>(&Shape::Unit)?;
        check::<C, _>(&Shape::Struct { x: -1, y: None })?;
        check::<C, _>(&Shape::Tuple(1, "t".into()))?;
        check::<C, _>(&Expr::Neg(Box::new(Expr::List(vec![Expr::Lit(1)]))))?;
        check::<C, _>(&serde_json::json!({"a": [1, null, {"b": "c"}], "d": 1.5}))?;
        check::<C, _>(&Inner {
            label: "l".into(),
            weight: 0.5,
            tags: vec!["x".into()],
        })
    }
    all::<MsgPack>()?;
    all::<Cbor>()?;
    // CBOR shapes ciborium never writes: an indefinite-length array, a tagged integer.
    assert_eq!(Cbor::decode::<Vec<u64>>(&[0x9f, 0x01, 0xff])?, vec![1]);
    assert!(Cbor::decode::<Vec<u64>>(&[0x9f, 0x01, 0xff, 0x00]).is_err());
    assert_eq!(Cbor::decode::<u64>(&[0xc1, 0x1a, 0, 0, 0, 1])?, 1);
    assert!(Cbor::decode::<u64>(&[0xc1, 0x1a, 0, 0, 0, 1, 0x00]).is_err());
    Ok(())
}

thread_local! {
    /// The size hints [`Hints`] saw, in order.
    static HINTS: std::cell::RefCell<Vec<Option<usize>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Any value, recording the size hint of every sequence and map in it (into [`HINTS`]).
struct Hints;

impl<'de> Deserialize<'de> for Hints {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Hints;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("anything")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Hints, E> {
                Ok(Hints)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Hints, E> {
                Ok(Hints)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Hints, E> {
                Ok(Hints)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Hints, E> {
                Ok(Hints)
            }
            fn visit_str<E>(self, _: &str) -> Result<Hints, E> {
                Ok(Hints)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Hints, E> {
                Ok(Hints)
            }
            fn visit_unit<E>(self) -> Result<Hints, E> {
                Ok(Hints)
            }
            fn visit_none<E>(self) -> Result<Hints, E> {
                Ok(Hints)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Hints, A::Error> {
                HINTS.with(|h| h.borrow_mut().push(seq.size_hint()));
                while seq.next_element::<Hints>()?.is_some() {}
                Ok(Hints)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Hints, A::Error> {
                HINTS.with(|h| h.borrow_mut().push(map.size_hint()));
                while map.next_entry::<Hints, Hints>()?.is_some() {}
                Ok(Hints)
            }
        }
        de.deserialize_any(V)
    }
}

/// The size hints a decode of `bytes` hands serde (the decode's result is ignored).
fn hints_seen<C: Codec>(bytes: &[u8]) -> Vec<Option<usize>> {
    HINTS.with(|h| h.borrow_mut().clear());
    let _ = C::decode::<Hints>(bytes);
    HINTS.with(|h| h.borrow_mut().split_off(0))
}

/// What serde pre-allocates from: size hints pass through unchanged for valid input, and for
/// length bombs they promise, all together, no more elements than the input has bytes.
#[cfg(all(feature = "msgpack", feature = "cbor"))]
#[test]
fn size_hints_never_promise_more_elements_than_the_input_has_bytes() -> TestResult {
    let value = serde_json::json!({"a": [1, 2, 3], "b": {"c": [[], [4]]}});
    assert_eq!(
        hints_seen::<MsgPack>(&MsgPack::encode(&value)?),
        [Some(2), Some(3), Some(1), Some(2), Some(0), Some(1)]
    );
    assert_eq!(
        hints_seen::<Cbor>(&Cbor::encode(&value)?),
        [Some(2), Some(3), Some(1), Some(2), Some(0), Some(1)]
    );
    let tail = [1u8, 2, 3, 4, 5];
    let msgpack_bombs: [&[u8]; 4] = [
        &[0xdd, 0xff, 0xff, 0xff, 0xff],             // array32
        &[0xdf, 0xff, 0xff, 0xff, 0xff],             // map32
        &[0x92, 0xdd, 0xff, 0xff, 0xff, 0xff],       // [array32, ...]
        &[0x91, 0xdc, 0xff, 0xff, 0xdd, 0, 0, 0, 9], // [array16 [array32 ...]]
    ];
    let cbor_bombs: [&[u8]; 4] = [
        &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // array, 2^64 - 1
        &[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // map, 2^64 - 1
        &[0x82, 0x9a, 0xff, 0xff, 0xff, 0xff],                   // [array, ...]
        &[0x81, 0x99, 0xff, 0xff, 0x9a, 0, 0, 0, 9],             // [array [array ...]]
    ];
    let check = |name: &str, bytes: &[u8], hints: Vec<Option<usize>>| {
        let total: usize = hints.iter().map(|h| h.unwrap_or(0)).sum();
        assert!(!hints.is_empty(), "{name} {bytes:x?}: no container seen");
        assert!(
            total <= bytes.len(),
            "{name} {bytes:x?}: hints {hints:?} promise {total} elements"
        );
    };
    for head in msgpack_bombs {
        let bytes = [head, &tail[..]].concat();
        check("msgpack", &bytes, hints_seen::<MsgPack>(&bytes));
    }
    for head in cbor_bombs {
        let bytes = [head, &tail[..]].concat();
        check("cbor", &bytes, hints_seen::<Cbor>(&bytes));
    }
    Ok(())
}

/// Enums count against the depth limit like arrays and maps: a chain of newtype variants
/// decodes up to [`MAX_DEPTH`] levels and fails one level deeper, without a stack overflow.
#[cfg(all(feature = "msgpack", feature = "cbor"))]
#[test]
fn enum_nesting_counts_against_the_depth_limit() -> TestResult {
    let chain = |levels: usize| {
        let mut e = Expr::Lit(1);
        for _ in 0..levels {
            e = Expr::Neg(Box::new(e));
        }
        e
    };
    // The innermost `Lit(1)` is an enum level too.
    let ok = chain(MAX_DEPTH - 1);
    let deep = chain(MAX_DEPTH);
    assert_eq!(MsgPack::decode::<Expr>(&MsgPack::encode(&ok)?)?, ok);
    assert_eq!(Cbor::decode::<Expr>(&Cbor::encode(&ok)?)?, ok);
    assert!(MsgPack::decode::<Expr>(&MsgPack::encode(&deep)?).is_err());
    assert!(Cbor::decode::<Expr>(&Cbor::encode(&deep)?).is_err());
    Ok(())
}

#[test]
fn codec_ids_are_an_open_byte_with_the_built_in_ones_reserved() {
    use cache_core::CodecId;
    assert_eq!(CodecId::custom(3), None, "a built-in id");
    assert_eq!(CodecId::custom(15), None, "reserved for the project");
    let mine = CodecId::custom(42).map(CodecId::as_u8);
    assert_eq!(mine, Some(42));
    assert_eq!(CodecId::from_u8(42).map(CodecId::name), Some("custom"));
    assert_eq!(CodecId::from_u8(0), None);
    assert_eq!(CodecId::JSON.name(), "json");
}
