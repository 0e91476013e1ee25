//! Key layout and validation: `{prefix}:{namespace}:{key}`, or
//! `{prefix}:{namespace}:v{schema}:{key}` with a schema version.
//!
//! Prefix and namespace are restricted to `[A-Za-z0-9_.-]` so that no user key can escape
//! its namespace or collide with another one; the user key comes last and may contain any
//! character. Redis Cluster hash tags in the user key (`{user:42}:profile`) pass through
//! untouched, so related keys stay on one shard.

use crate::error::{Error, ErrorKind, Result};

/// Default maximum length of a user key, in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 1024;
/// Maximum length of a prefix or namespace.
pub const MAX_NAME_LEN: usize = 64;

/// Check a prefix or namespace name.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("{what} is empty"),
        ));
    }
    if name.starts_with("__") {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "{what} {name:?} starts with \"__\", which is reserved for the cache's own keys"
            ),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "{what} is {} bytes, over the maximum of {MAX_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("{what} {name:?} contains {c:?}; only ASCII letters, digits, '_', '-' and '.' are allowed"),
        ));
    }
    Ok(())
}

/// Check a user key.
pub fn validate_key(key: &str, max_len: usize) -> Result<()> {
    if key.is_empty() {
        return Err(Error::new(ErrorKind::InvalidKey, "key is empty"));
    }
    if key.len() > max_len {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("key is {} bytes, over the maximum of {max_len}", key.len()),
        ));
    }
    Ok(())
}

/// Builds full keys for one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    base: String,
    max_key_len: usize,
}

impl KeySpace {
    /// The key space `{prefix}:{namespace}:` (with `v{schema}:` when given).
    pub fn new(prefix: &str, namespace: &str, schema: Option<u32>) -> Result<Self> {
        validate_name("prefix", prefix)?;
        validate_name("namespace", namespace)?;
        let base = match schema {
            Some(v) => format!("{prefix}:{namespace}:v{v}:"),
            None => format!("{prefix}:{namespace}:"),
        };
        Ok(KeySpace {
            base,
            max_key_len: DEFAULT_MAX_KEY_LEN,
        })
    }

    /// Change the maximum user key length.
    pub fn with_max_key_len(mut self, max: usize) -> Self {
        self.max_key_len = max;
        self
    }

    /// The common prefix of every full key of this namespace (ends with `:`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The maximum user key length.
    pub fn max_key_len(&self) -> usize {
        self.max_key_len
    }

    /// The full key for a user key, validated.
    pub fn full(&self, key: &str) -> Result<String> {
        validate_key(key, self.max_key_len)?;
        let mut s = String::with_capacity(self.base.len() + key.len());
        s.push_str(&self.base);
        s.push_str(key);
        Ok(s)
    }
}

/// The Redis Cluster hash tag of `key`, if it has one (the bytes between the first `{` and
/// the first `}` after it, when not empty).
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|b| *b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|b| *b == b'}')?;
    if close == 0 {
        None
    } else {
        Some(&rest[..close])
    }
}

/// The key of the fill lease of `full_key` (a key under `prefix`), in the same hash slot;
/// `None` when no such key can be formed (a key with a stray `}` and no hash tag), in which
/// case no lease is taken.
///
/// Lease keys are `{prefix}:__lease:{<slot part>}...`: under the prefix (so ACL key patterns
/// like `~tenantA:*` cover them), in a reserved `__` segment no namespace can use (so they
/// never collide with a user's key), with a hash tag equal to the value key's tag, or to the
/// whole value key when it has none (so both land in the same cluster slot).
pub fn lease_key(prefix: &str, full_key: &str) -> Option<String> {
    companion_key(prefix, "__lease", full_key)
}

/// The key where `invalidate_tag` keeps the members it took from the index set `tag_key`
/// until their deletes are done (so a lost reply or a failed delete loses no member), in the
/// same hash slot as `tag_key`; `None` for a tag key with a stray `}` and no hash tag.
pub fn tag_pending_key(prefix: &str, tag_key: &str) -> Option<String> {
    companion_key(prefix, "__tagging", tag_key)
}

/// `{prefix}:{segment}:{<slot part>}...`: a key of the cache's own under the prefix, in the
/// hash slot of `key` (its hash tag, or the whole key when it has none).
fn companion_key(prefix: &str, segment: &str, key: &str) -> Option<String> {
    if let Some(tag) = hash_tag(key.as_bytes()) {
        let tag = std::str::from_utf8(tag).ok()?;
        Some(format!("{prefix}:{segment}:{{{tag}}}:{key}"))
    } else if !key.contains('}') {
        Some(format!("{prefix}:{segment}:{{{key}}}"))
    } else {
        None
    }
}

/// The key of the index set of `tag` in the namespace `namespace` under `prefix`:
/// `{prefix}:__tags:{namespace}:{tag}` (namespaces may not start with `__`, so no cache's
/// keys live there).
pub fn tag_key(prefix: &str, namespace: &str, tag: &str) -> String {
    format!("{prefix}:__tags:{namespace}:{tag}")
}

/// FNV-1a 64-bit: a stable, cheap hash of a key (epoch stripes, trace fields; not for
/// security).
pub(crate) fn fnv1a(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() -> Result<()> {
        let ks = KeySpace::new("app", "users", None)?;
        assert_eq!(ks.full("42")?, "app:users:42");
        let ks = KeySpace::new("app", "users", Some(3))?;
        assert_eq!(
            ks.full("{user:42}:profile")?,
            "app:users:v3:{user:42}:profile"
        );
        Ok(())
    }

    #[test]
    fn rejects_bad_names_and_keys() {
        assert_eq!(
            KeySpace::new("", "n", None).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidKey)
        );
        assert!(KeySpace::new("a:b", "n", None).is_err());
        assert!(KeySpace::new("a", "n*", None).is_err());
        assert!(KeySpace::new("a", "n{x}", None).is_err());
        let ks = KeySpace::new("a", "n", None).map(|k| k.with_max_key_len(4));
        let ks = match ks {
            Ok(k) => k,
            Err(e) => unreachable!("{e}"),
        };
        assert!(ks.full("").is_err());
        assert!(ks.full("12345").is_err());
        assert!(ks.full("a\n*").is_ok());
    }

    #[test]
    fn tags_and_leases() {
        assert_eq!(hash_tag(b"a:{user:1}:b"), Some(&b"user:1"[..]));
        assert_eq!(hash_tag(b"a:{}:b"), None);
        assert_eq!(hash_tag(b"a:b"), None);
        assert_eq!(
            lease_key("p", "p:n:{u1}:x").as_deref(),
            Some("p:__lease:{u1}:p:n:{u1}:x")
        );
        assert_eq!(
            lease_key("p", "p:n:x").as_deref(),
            Some("p:__lease:{p:n:x}")
        );
        assert_eq!(lease_key("p", "p:n:a}b"), None);
        // Same hash tag as the value key.
        for full in ["p:n:{u1}:x", "p:n:x", "p:n:a{b"] {
            let lease = lease_key("p", full).unwrap_or_default();
            let value_part = hash_tag(full.as_bytes()).unwrap_or(full.as_bytes());
            assert_eq!(hash_tag(lease.as_bytes()), Some(value_part), "{full}");
        }
    }
}
