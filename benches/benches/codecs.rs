//! Codecs on a ~5 KB API-like payload (an order with its customer and 24 line items):
//! encode, decode and size per codec, tiercache's codec layer (`cache_core::Codec` as
//! implemented by `Json`, `MsgPack`, `Cbor`: error mapping and, on decode, the hostile-input
//! bounds checked inside the serde pass) against the raw serde calls it wraps
//! (`serde_json::to_vec` / `from_slice`, `rmp_serde::to_vec_named` / `from_slice`,
//! `ciborium::into_writer` / `from_reader`).
//!
//! ns/op: interleaved ~2 ms batches, all twelve subjects per round in rotating order, median
//! over rounds. Target: the codec layer <= 1.05x the raw serde call.

use std::hint::black_box;
use std::time::Duration;

use benches::{Record, Role, Samples, TargetKind};
use cache_tiered::{Cbor, Codec, Json, MsgPack};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Money {
    currency: String,
    cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    sku: String,
    name: String,
    quantity: u32,
    unit_price: Money,
    discount: Option<f64>,
    tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Customer {
    id: u64,
    name: String,
    email: String,
    vip: bool,
    address: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: String,
    created_at: String,
    status: String,
    customer: Customer,
    items: Vec<Item>,
    total: Money,
    notes: Option<String>,
}

fn payload() -> Order {
    let items = (0..24)
        .map(|i| Item {
            sku: format!("SKU-{:06}", 100_000 + i * 37),
            name: format!("Widget model {i} — stainless, 40 mm"),
            quantity: 1 + (i % 5),
            unit_price: Money {
                currency: "EUR".into(),
                cents: 1999 + i as i64 * 150,
            },
            discount: if i % 3 == 0 { Some(0.15) } else { None },
            tags: vec![
                "hardware".into(),
                format!("batch-{}", i % 4),
                "in-stock".into(),
            ],
        })
        .collect();
    Order {
        id: "ord_01HZX8K3Q2M4N5P6R7S8T9V0W1".into(),
        created_at: "2026-11-03T14:22:05.123Z".into(),
        status: "awaiting_shipment".into(),
        customer: Customer {
            id: 424_242,
            name: "Ada Lovelace-Byron".into(),
            email: "ada.lovelace@analytical-engine.example.org".into(),
            vip: true,
            address: vec![
                "12 St James's Square".into(),
                "London SW1Y 4JH".into(),
                "United Kingdom".into(),
            ],
        },
        items,
        total: Money {
            currency: "EUR".into(),
            cents: 123_456,
        },
        notes: Some("Leave with the porter; fragile.".into()),
    }
}

/// (codec, operation, tiercache?, one call).
type Op<'a> = (&'static str, &'static str, bool, Box<dyn FnMut() + 'a>);

fn cbor_encode(o: &Order) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::into_writer(o, &mut out);
    out
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--test");
    if !benches::selected(&benches::filters(), "codecs") {
        return Ok(());
    }
    let order = payload();
    let json = serde_json::to_vec(&order)?;
    let mp = rmp_serde::to_vec_named(&order)?;
    let cbor = cbor_encode(&order);
    // Both sides must agree byte for byte and decode to the same value.
    if Json::encode(&order)? != json
        || MsgPack::encode(&order)? != mp
        || Cbor::encode(&order)? != cbor
    {
        return Err("a codec encodes differently from its raw serde call".into());
    }
    if Json::decode::<Order>(&json)? != order
        || MsgPack::decode::<Order>(&mp)? != order
        || Cbor::decode::<Order>(&cbor)? != order
    {
        return Err("a codec does not round-trip".into());
    }
    let o = &order;
    let (j, m, c) = (&json, &mp, &cbor);
    // (codec, op, tiercache?, closure)
    let mut ops: Vec<Op<'_>> = vec![
        (
            "json",
            "encode",
            true,
            Box::new(move || {
                black_box(Json::encode(black_box(o)).ok());
            }),
        ),
        (
            "json",
            "encode",
            false,
            Box::new(move || {
                black_box(serde_json::to_vec(black_box(o)).ok());
            }),
        ),
        (
            "json",
            "decode",
            true,
            Box::new(move || {
                black_box(Json::decode::<Order>(black_box(j)).ok());
            }),
        ),
        (
            "json",
            "decode",
            false,
            Box::new(move || {
                black_box(serde_json::from_slice::<Order>(black_box(j)).ok());
            }),
        ),
        (
            "msgpack",
            "encode",
            true,
            Box::new(move || {
                black_box(MsgPack::encode(black_box(o)).ok());
            }),
        ),
        (
            "msgpack",
            "encode",
            false,
            Box::new(move || {
                black_box(rmp_serde::to_vec_named(black_box(o)).ok());
            }),
        ),
        (
            "msgpack",
            "decode",
            true,
            Box::new(move || {
                black_box(MsgPack::decode::<Order>(black_box(m)).ok());
            }),
        ),
        (
            "msgpack",
            "decode",
            false,
            Box::new(move || {
                black_box(rmp_serde::from_slice::<Order>(black_box(m)).ok());
            }),
        ),
        (
            "cbor",
            "encode",
            true,
            Box::new(move || {
                black_box(Cbor::encode(black_box(o)).ok());
            }),
        ),
        (
            "cbor",
            "encode",
            false,
            Box::new(move || {
                black_box(cbor_encode(black_box(o)));
            }),
        ),
        (
            "cbor",
            "decode",
            true,
            Box::new(move || {
                black_box(Cbor::decode::<Order>(black_box(c)).ok());
            }),
        ),
        (
            "cbor",
            "decode",
            false,
            Box::new(move || {
                black_box(ciborium::from_reader::<Order, _>(black_box(&c[..])).ok());
            }),
        ),
    ];
    let rounds = if smoke {
        2
    } else if benches::quick() {
        40
    } else {
        200
    };
    let target = Duration::from_millis(2);
    let batch: Vec<u64> = ops
        .iter_mut()
        .map(|(_, _, _, f)| benches::batch_for(target, 200, f.as_mut()))
        .collect();
    let mut refs: Vec<&mut dyn FnMut()> = ops
        .iter_mut()
        .map(|(_, _, _, f)| f.as_mut() as &mut dyn FnMut())
        .collect();
    let samples: Vec<Samples> = benches::interleaved(rounds, &batch, &mut refs);
    let size = |codec: &str| match codec {
        "json" => json.len(),
        "msgpack" => mp.len(),
        _ => cbor.len(),
    };
    let raw_name = |codec: &str, op: &str| match (codec, op) {
        ("json", "encode") => "serde_json::to_vec",
        ("json", _) => "serde_json::from_slice",
        ("msgpack", "encode") => "rmp_serde::to_vec_named",
        ("msgpack", _) => "rmp_serde::from_slice",
        ("cbor", "encode") => "ciborium::into_writer",
        _ => "ciborium::from_reader",
    };
    let mut records = Vec::new();
    for (i, (codec, op, ours, _)) in ops.iter().enumerate() {
        let w = format!("codecs/{codec} {op} (~5 KB, {} B)", size(codec));
        let ns = samples[i].percentile(50.0);
        eprintln!(
            "codecs: {codec:<8} {op:<7} {:<10} {ns:>9.0} ns/op",
            if *ours { "tiercache" } else { "raw" }
        );
        let (subject, role, label, how) = if *ours {
            let t = match *codec {
                "json" => "Json",
                "msgpack" => "MsgPack",
                _ => "Cbor",
            };
            (
                "tiercache",
                Role::Tiercache,
                "tiercache",
                format!("<{t} as cache_core::Codec>::{op}"),
            )
        } else {
            (
                "raw_serde",
                Role::Peer,
                "raw serde call",
                raw_name(codec, op).to_owned(),
            )
        };
        records.push(
            Record::result(&w, subject, role, label, "ns_per_op")
                .num("ns_per_op", ns)
                .num("p10_ns", samples[i].percentile(10.0))
                .num("p90_ns", samples[i].percentile(90.0))
                .num("bytes", size(codec) as f64)
                .str(
                    "how",
                    &format!("{how}; median over {rounds} interleaved ~2 ms batches"),
                ),
        );
        if *ours {
            records.push(Record::target(
                &w,
                "ns_per_op",
                "raw_serde",
                TargetKind::MaxRatio,
                1.05,
                "<= 1.05x the raw serde call",
            ));
        }
    }
    if !smoke {
        let path = benches::write_records("codecs", &records)?;
        eprintln!("codecs: wrote {}", path.display());
    }
    Ok(())
}
