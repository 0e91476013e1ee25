//! The wire format of one bus message (see the table in the module docs).

use super::*;

/// How far below the last number heard a message may be and still count as merely late.
pub(super) const REORDER_WINDOW: u64 = 1024;

pub(super) const VERSION: u8 = 1;
pub(super) const KIND_KEYS: u8 = 1;
pub(super) const KIND_CLEAR: u8 = 2;
pub(super) const KIND_HEARTBEAT: u8 = 3;

/// A decoded bus message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// 1 keys, 2 clear, 3 heartbeat.
    pub kind: u8,
    /// Publisher instance.
    pub instance: u64,
    /// Sequence number on the channel.
    pub seq: u64,
    /// User keys (kind 1).
    pub keys: Vec<String>,
}

impl Message {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let len: usize = self.keys.iter().map(|k| 4 + k.len()).sum();
        let mut out = Vec::with_capacity(22 + len);
        out.push(VERSION);
        out.push(self.kind);
        out.extend_from_slice(&self.instance.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for k in &self.keys {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
        }
        out
    }

    /// Decode; foreign or corrupt bytes are an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Message> {
        let bad = |m: &str| Error::new(ErrorKind::Decode, format!("bus message: {m}"));
        let take = |b: &[u8], at: usize, n: usize| -> Result<Vec<u8>> {
            b.get(at..at + n)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| bad("truncated"))
        };
        if bytes.len() < 22 {
            return Err(bad("shorter than its header"));
        }
        if bytes[0] != VERSION {
            return Err(bad("unknown version"));
        }
        let kind = bytes[1];
        if !(KIND_KEYS..=KIND_HEARTBEAT).contains(&kind) {
            return Err(bad("unknown kind"));
        }
        let u64_at = |at: usize| -> Result<u64> {
            let v = take(bytes, at, 8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(&v);
            Ok(u64::from_le_bytes(a))
        };
        let u32_at = |at: usize| -> Result<usize> {
            let v = take(bytes, at, 4)?;
            let mut a = [0u8; 4];
            a.copy_from_slice(&v);
            Ok(u32::from_le_bytes(a) as usize)
        };
        let instance = u64_at(2)?;
        let seq = u64_at(10)?;
        let count = u32_at(18)?;
        if count > bytes.len() / 4 {
            return Err(bad("key count larger than the message"));
        }
        let mut keys = Vec::with_capacity(count);
        let mut at = 22;
        for _ in 0..count {
            let n = u32_at(at)?;
            let k = take(bytes, at + 4, n)?;
            keys.push(String::from_utf8(k).map_err(|_| bad("key is not UTF-8"))?);
            at += 4 + n;
        }
        if at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Message {
            kind,
            instance,
            seq,
            keys,
        })
    }
}
