//! How every config of the workspace writes durations with serde: as text with a unit
//! (`"500ms"`, `"30s"`, `"2m"`); read from that text or from a number of milliseconds (what
//! earlier versions wrote), so older config files still load.

/// A [`std::time::Duration`] field: `#[serde(with = "cache_core::support::duration_text")]`.
pub mod duration_text {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    /// Write `d` as text with a unit (`"500ms"`, `"2s"`).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Read a duration from a number of milliseconds or text with a unit.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// `d` as text with the largest unit that writes it exactly (`"2s"`, `"500ms"`).
    pub fn format(d: Duration) -> String {
        let nanos = d.as_nanos();
        if nanos % 1_000_000_000 == 0 {
            format!("{}s", d.as_secs())
        } else if nanos % 1_000_000 == 0 {
            format!("{}ms", d.as_millis())
        } else if nanos % 1_000 == 0 {
            format!("{}us", d.as_micros())
        } else {
            format!("{nanos}ns")
        }
    }

    /// A duration from text with a unit (`ns`, `us`, `ms`, `s`, `m`), or bare milliseconds.
    pub fn parse(text: &str) -> Option<Duration> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().ok()?;
        match unit.trim() {
            "ns" => Some(Duration::from_nanos(n)),
            "us" | "µs" => Some(Duration::from_micros(n)),
            "" | "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
            _ => None,
        }
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("milliseconds, or a duration like \"500ms\", \"1s\", \"2m\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_millis(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_millis)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).ok_or_else(|| {
                E::custom(format!(
                    "`{v}` is not a duration; expected e.g. \"500ms\", \"1s\", \"2m\""
                ))
            })
        }
    }
}

/// An `Option<Duration>` field: `None` is `null` (or absent with `#[serde(default)]`).
pub mod duration_text_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Write `d` as text with a unit, or `null`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::duration_text::format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Read `null`, a number of milliseconds or text with a unit.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::duration_text")] Duration);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(d)| d))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use crate::{BreakerConfig, CacheConfig};

    #[test]
    fn configs_write_text_and_read_text_or_milliseconds() {
        let c = CacheConfig::default();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["l1_ttl"], "30s");
        assert_eq!(json["loader_hard_timeout"], serde_json::Value::Null);
        let back: CacheConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
        let old: CacheConfig =
            serde_json::from_str(r#"{"l1_ttl": 1500, "loader_soft_timeout": "200ms"}"#).unwrap();
        assert_eq!(old.l1_ttl, Duration::from_millis(1500));
        assert_eq!(old.loader_soft_timeout, Some(Duration::from_millis(200)));
        let b = serde_json::to_value(BreakerConfig::default()).unwrap();
        assert!(
            b.to_string().contains("ms\"") || b.to_string().contains("s\""),
            "{b}"
        );
        assert!(serde_json::from_str::<CacheConfig>(r#"{"l1_ttl": "soon"}"#).is_err());
    }
}
