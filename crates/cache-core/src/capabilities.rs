//! What an L2 store can do beyond reading, writing and deleting keys.
//!
//! A store declares its optional abilities with [`crate::RemoteStore::capabilities`]; a cache
//! checks them when it is built, so a configuration the store cannot serve is a clear
//! [`crate::ErrorKind::InvalidConfig`] error at start-up rather than a failure on some later
//! call.

use std::fmt;
use std::ops::BitOr;

/// A set of optional store abilities (combine with `|`).
///
/// ```
/// use cache_core::Capabilities;
///
/// let caps = Capabilities::LEASES | Capabilities::TAGS;
/// assert!(caps.contains(Capabilities::LEASES));
/// assert_eq!(caps.missing(Capabilities::ALL), Capabilities::PREFIX_DELETE);
/// assert_eq!(Capabilities::PREFIX_DELETE.to_string(), "prefix delete");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u8);

const NAMES: [(Capabilities, &str); 3] = [
    (Capabilities::LEASES, "fill leases"),
    (Capabilities::TAGS, "tags"),
    (Capabilities::PREFIX_DELETE, "prefix delete"),
];

impl Capabilities {
    /// Nothing beyond plain reads, writes and deletes.
    pub const NONE: Capabilities = Capabilities(0);
    /// Fill leases: [`crate::RemoteStore::set_nx`] and the compare-and-set
    /// [`crate::RemoteStore::set_if_lease`] (one load per key across instances).
    pub const LEASES: Capabilities = Capabilities(1);
    /// Tag index sets: [`crate::RemoteStore::tag_add`], `tag_take` and `tag_done`
    /// (`set_with_tags`, `invalidate_tag`, a loader's `Loaded::with_tags`).
    pub const TAGS: Capabilities = Capabilities(2);
    /// Delete by key prefix: [`crate::RemoteStore::delete_prefix`] (`clear_namespace`).
    pub const PREFIX_DELETE: Capabilities = Capabilities(4);
    /// Every ability this version knows.
    pub const ALL: Capabilities = Capabilities(7);

    /// Whether every ability of `other` is in this set.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The abilities of `needed` that this set lacks.
    pub const fn missing(self, needed: Capabilities) -> Capabilities {
        Capabilities(needed.0 & !self.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Capabilities {
    type Output = Capabilities;

    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

/// The abilities' names, comma-separated (`"none"` when empty).
impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for (cap, name) in NAMES {
            if self.contains(cap) {
                if !first {
                    f.write_str(", ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Capabilities({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_combine_and_name_what_is_missing() {
        let caps = Capabilities::LEASES | Capabilities::PREFIX_DELETE;
        assert!(caps.contains(Capabilities::LEASES));
        assert!(!caps.contains(Capabilities::TAGS));
        assert!(!caps.contains(Capabilities::ALL));
        assert!(Capabilities::ALL.contains(caps));
        assert_eq!(caps.missing(Capabilities::ALL), Capabilities::TAGS);
        assert!(Capabilities::ALL.missing(Capabilities::ALL).is_empty());
        assert_eq!(caps.to_string(), "fill leases, prefix delete");
        assert_eq!(Capabilities::NONE.to_string(), "none");
        assert_eq!(format!("{:?}", Capabilities::TAGS), "Capabilities(tags)");
    }
}
