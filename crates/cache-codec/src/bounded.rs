//! Hostile-input bounds enforced while serde runs, in one pass over the bytes.
//!
//! [`Bounded`] wraps a format's `serde::Deserializer` and every visitor, sequence, map and
//! enum access it hands out, so that whatever the target type:
//!
//! - sequences, maps and enums nest at most [`MAX_DEPTH`] levels deep (an error, not a stack
//!   overflow: the level is counted before the inner visitor runs);
//! - the size hints serde sees (which `Vec`, `HashMap` and friends use to pre-allocate) promise,
//!   all together, no more elements than the input has bytes: every element takes at least one
//!   byte, so the hints of valid input always fit and pass through unchanged, while a header
//!   claiming 4 Gi elements in a 10-byte input gets a hint of at most 10.
//!
//! Everything else is forwarded unchanged (borrowed strings stay borrowed). Lengths that
//! exceed the input fail in the format's reader, which only ever slices the input; trailing
//! bytes are checked by each codec after the value.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use crate::MAX_DEPTH;

/// Shared state of one decode: how many more elements size hints may promise.
pub(crate) struct Budget(Cell<usize>);

impl Budget {
    /// A budget for an input of `len` bytes.
    pub(crate) fn new(len: usize) -> Self {
        Budget(Cell::new(len))
    }

    /// Grant up to `hint` elements from what is left.
    fn grant(&self, hint: usize) -> usize {
        let left = self.0.get();
        let granted = hint.min(left);
        self.0.set(left - granted);
        granted
    }
}

/// The error for input nested deeper than [`MAX_DEPTH`].
fn too_deep<E: serde::de::Error>() -> E {
    E::custom(format_args!("nesting deeper than {MAX_DEPTH} levels"))
}

/// A deserializer at nesting level `depth` (0 for the top-level value).
pub(crate) struct Bounded<'b, D> {
    de: D,
    depth: usize,
    budget: &'b Budget,
}

impl<'b, D> Bounded<'b, D> {
    /// Wrap the top-level deserializer of one decode.
    pub(crate) fn new(de: D, budget: &'b Budget) -> Self {
        Bounded {
            de,
            depth: 0,
            budget,
        }
    }

    fn visitor<V>(&self, visitor: V) -> BoundedVisitor<'b, V> {
        BoundedVisitor {
            visitor,
            depth: self.depth,
            budget: self.budget,
        }
    }
}

/// Forward `deserialize_*` methods that take only a visitor.
macro_rules! forward {
    ($($method:ident)*) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                let visitor = self.visitor(visitor);
                self.de.$method(visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any deserialize_bool
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_option deserialize_unit
        deserialize_seq deserialize_map deserialize_identifier deserialize_ignored_any
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_unit_struct(name, visitor)
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_newtype_struct(name, visitor)
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_tuple(len, visitor)
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_tuple_struct(name, len, visitor)
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_struct(name, fields, visitor)
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor);
        self.de.deserialize_enum(name, variants, visitor)
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A visitor at nesting level `depth`: containers it is handed open level `depth + 1`.
struct BoundedVisitor<'b, V> {
    visitor: V,
    depth: usize,
    budget: &'b Budget,
}

impl<'b, V> BoundedVisitor<'b, V> {
    /// The level a container opened here has, or `None` when that is too deep.
    fn inner_depth(&self) -> Option<usize> {
        (self.depth < MAX_DEPTH).then_some(self.depth + 1)
    }

    fn same_level<D>(&self, de: D) -> Bounded<'b, D> {
        Bounded {
            de,
            depth: self.depth,
            budget: self.budget,
        }
    }
}

/// Forward `visit_*` methods that take one plain value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {
        $(
            #[inline]
            fn $method<E: serde::de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.visitor.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for BoundedVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(bool)
        visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128)
        visit_f32(f32) visit_f64(f64) visit_char(char)
        visit_str(&str) visit_borrowed_str(&'de str) visit_string(String)
        visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    #[inline]
    fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    #[inline]
    fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let de = self.same_level(de);
        self.visitor.visit_some(de)
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let de = self.same_level(de);
        self.visitor.visit_newtype_struct(de)
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, access: A) -> Result<V::Value, A::Error> {
        let depth = self.inner_depth().ok_or_else(too_deep)?;
        let left = self.budget.grant(access.size_hint().unwrap_or(0));
        self.visitor.visit_seq(BoundedAccess {
            access,
            depth,
            left,
            budget: self.budget,
        })
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<V::Value, A::Error> {
        let depth = self.inner_depth().ok_or_else(too_deep)?;
        let left = self.budget.grant(access.size_hint().unwrap_or(0));
        self.visitor.visit_map(BoundedAccess {
            access,
            depth,
            left,
            budget: self.budget,
        })
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, access: A) -> Result<V::Value, A::Error> {
        let depth = self.inner_depth().ok_or_else(too_deep)?;
        self.visitor.visit_enum(BoundedAccess {
            access,
            depth,
            left: 0,
            budget: self.budget,
        })
    }
}

/// A sequence, map, enum or variant access whose elements sit at level `depth`; `left` is
/// how many elements its size hint may still promise.
struct BoundedAccess<'b, A> {
    access: A,
    depth: usize,
    left: usize,
    budget: &'b Budget,
}

impl<'b, A> BoundedAccess<'b, A> {
    fn seed<S>(&self, seed: S) -> BoundedSeed<'b, S> {
        BoundedSeed {
            seed,
            depth: self.depth,
            budget: self.budget,
        }
    }

    fn visitor<V>(&self, visitor: V) -> BoundedVisitor<'b, V> {
        BoundedVisitor {
            visitor,
            depth: self.depth,
            budget: self.budget,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for BoundedAccess<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        self.left = self.left.saturating_sub(1);
        let seed = self.seed(seed);
        self.access.next_element_seed(seed)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint().map(|n| n.min(self.left))
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for BoundedAccess<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.left = self.left.saturating_sub(1);
        let seed = self.seed(seed);
        self.access.next_key_seed(seed)
    }

    #[inline]
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let seed = self.seed(seed);
        self.access.next_value_seed(seed)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint().map(|n| n.min(self.left))
    }
}

impl<'b, 'de, A: EnumAccess<'de>> EnumAccess<'de> for BoundedAccess<'b, A> {
    type Error = A::Error;
    type Variant = BoundedAccess<'b, A::Variant>;

    #[inline]
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let seed = self.seed(seed);
        let (value, variant) = self.access.variant_seed(seed)?;
        Ok((
            value,
            BoundedAccess {
                access: variant,
                depth: self.depth,
                left: 0,
                budget: self.budget,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for BoundedAccess<'_, A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.access.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        let seed = self.seed(seed);
        self.access.newtype_variant_seed(seed)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = self.visitor(visitor);
        self.access.tuple_variant(len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = self.visitor(visitor);
        self.access.struct_variant(fields, visitor)
    }
}

/// A seed whose value sits at level `depth`.
struct BoundedSeed<'b, S> {
    seed: S,
    depth: usize,
    budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for BoundedSeed<'_, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Bounded {
            de,
            depth: self.depth,
            budget: self.budget,
        })
    }
}
