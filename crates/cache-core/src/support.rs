//! Helpers for those who write a backend, a codec or a plug-in crate: the key layout every
//! backend must agree on, value checks, the L2 value header's constants, compression, clocks
//! and the duration format of configs. Applications do not need them.

pub use crate::clock::{precise_now_ms, system_now_ms};
#[cfg(feature = "lz4")]
#[cfg_attr(docsrs, doc(cfg(feature = "lz4")))]
pub use crate::compress::compress;
pub use crate::compress::decompress;
pub use crate::durations::{duration_text, duration_text_opt};
pub use crate::header::{HEADER_LEN, MAGIC, VERSION};
pub use crate::key::{hash_tag, lease_key, tag_key, tag_pending_key, validate_key, validate_name};
pub use crate::remote::{check_value_size, unsupported};
