//! Test support shared by the unit tests of this crate: a map as L1, a JSON codec, an engine
//! over the in-memory store and bus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::bus::{BusConfig, MemoryBus, MemoryBusHandle, ReconnectPolicy};
use crate::clock::ManualClock;
use crate::codec::{Codec, CodecId};
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::l1::{L1Entry, L1Stats, L1Store, NamespaceId};
use crate::remote::MemoryStore;

/// A plain map as L1.
#[derive(Default)]
pub(crate) struct MapL1(Mutex<HashMap<(NamespaceId, String), L1Entry>>);

impl L1Store for MapL1 {
    fn get(&self, ns: NamespaceId, key: &str, now_ms: u64) -> Option<L1Entry> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(ns, key.to_owned()))
            .filter(|e| now_ms < e.stale_until_ms)
            .cloned()
    }
    fn insert(&self, ns: NamespaceId, key: &str, entry: L1Entry) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((ns, key.to_owned()), entry);
    }
    fn remove(&self, ns: NamespaceId, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(ns, key.to_owned()));
    }
    fn clear_namespace(&self, ns: NamespaceId) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(n, _), _| *n != ns);
    }
    fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
    fn stats(&self) -> L1Stats {
        L1Stats::default()
    }
}

/// JSON through serde_json.
pub(crate) struct Json;

impl Codec for Json {
    const ID: CodecId = CodecId::JSON;
    fn encode<V: serde::Serialize + ?Sized>(value: &V) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| Error::new(ErrorKind::Encode, e.to_string()))
    }
    fn decode<V: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<V> {
        serde_json::from_slice(bytes).map_err(|e| Error::new(ErrorKind::Decode, e.to_string()))
    }
}

/// An engine over `store` on its own handle of `bus`, with `policy`, reading `clock`.
pub(crate) fn engine(
    store: &Arc<MemoryStore>,
    bus: &Arc<MemoryBus>,
    clock: &Arc<ManualClock>,
    policy: ReconnectPolicy,
) -> Result<(Engine, Arc<MemoryBusHandle>)> {
    let handle = bus.attach();
    let engine = Engine::builder("rc")
        .with_custom_l1(Arc::new(MapL1::default()))
        .with_l2(store.clone())
        .with_clock(clock.clone())
        .with_bus(handle.clone())
        .with_bus_config(
            BusConfig::default()
                .with_heartbeat(std::time::Duration::from_secs(10))
                .with_on_loss(policy),
        )
        .build()?;
    Ok((engine, handle))
}
