//! The slot → primary map, kept in step with redis-rs' own.
//!
//! redis-rs does not expose its slot map, but it tells a read-routing strategy about every
//! topology refresh (the initial discovery, and each refresh after `MOVED`, `READONLY` or a
//! lost node). [`TopologyWatcher`] is such a strategy: it records the topology for batching
//! and routes reads to the primary, as redis-rs does without a strategy, or, with replica
//! reads on, to a random replica of the slot's shard. Batches grouped with this map therefore
//! go to the shard redis-rs would send each key to.

use std::sync::{Arc, RwLock};

use redis::cluster::NodeAddress;
use redis::cluster_read_routing::{
    ClusterTopology, ReadCandidates, ReadRoutingStrategy, ReadRoutingStrategyFactory,
};

/// How many read queues a store keeps (one per primary, up to this many; primaries beyond
/// share them).
pub(crate) const READ_QUEUES: usize = 16;

/// The latest topology redis-rs reported (shared by every strategy instance of a client).
#[derive(Debug, Default)]
pub(crate) struct TopologyCache {
    current: RwLock<Option<ClusterTopology>>,
    /// The read queue of each slot: its primary's position among the primaries, modulo
    /// [`READ_QUEUES`] (empty until the topology is known: every slot then uses queue 0).
    queues: RwLock<Vec<u8>>,
}

impl TopologyCache {
    fn set(&self, topology: ClusterTopology) {
        let mut primaries: Vec<NodeAddress> = Vec::new();
        let queues: Vec<u8> = (0..crate::slot::SLOT_COUNT)
            .map(|slot| match topology.shard_for_slot(slot) {
                Some(shard) => {
                    let primary = shard.primary();
                    let at = match primaries.iter().position(|p| p == primary) {
                        Some(at) => at,
                        None => {
                            primaries.push(primary.clone());
                            primaries.len() - 1
                        }
                    };
                    (at % READ_QUEUES) as u8
                }
                None => 0,
            })
            .collect();
        {
            let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
            *current = Some(topology);
        }
        *self.queues.write().unwrap_or_else(|p| p.into_inner()) = queues;
    }

    /// The read queue of `slot` (see [`READ_QUEUES`]).
    #[inline]
    pub(crate) fn read_queue(&self, slot: u16) -> usize {
        let queues = self.queues.read().unwrap_or_else(|p| p.into_inner());
        queues.get(usize::from(slot)).map_or(0, |q| usize::from(*q))
    }

    /// The primary serving `slot`, when known.
    pub(crate) fn primary_for_slot(&self, slot: u16) -> Option<NodeAddress> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .and_then(|t| t.shard_for_slot(slot))
            .map(|s| s.primary().clone())
    }

    /// The primary of every slot, resolved under one lock (`None` for unknown slots).
    pub(crate) fn primaries_for(&self, slots: &[u16]) -> Vec<Option<NodeAddress>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(t) => slots
                .iter()
                .map(|s| t.shard_for_slot(*s).map(|sh| sh.primary().clone()))
                .collect(),
            None => vec![None; slots.len()],
        }
    }

    /// Every primary, when the topology is known.
    pub(crate) fn primaries(&self) -> Option<Vec<NodeAddress>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .map(|t| t.shards().map(|s| s.primary().clone()).collect())
    }

    /// Every node (primaries and replicas), when the topology is known.
    pub(crate) fn nodes(&self) -> Vec<NodeAddress> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(t) => t
                .shards()
                .flat_map(|s| std::iter::once(s.primary().clone()).chain(s.replicas().to_vec()))
                .collect(),
            None => Vec::new(),
        }
    }
}

/// A [`ReadRoutingStrategyFactory`] whose strategies record the topology into one shared
/// [`TopologyCache`] and read from primaries (or, with `replica_reads`, from replicas).
#[derive(Debug, Clone)]
pub(crate) struct TopologyWatcher {
    pub(crate) cache: Arc<TopologyCache>,
    pub(crate) replica_reads: bool,
}

impl ReadRoutingStrategyFactory for TopologyWatcher {
    fn create_strategy(&self) -> Box<dyn ReadRoutingStrategy> {
        Box::new(Reads {
            cache: self.cache.clone(),
            replica_reads: self.replica_reads,
        })
    }
}

struct Reads {
    cache: Arc<TopologyCache>,
    replica_reads: bool,
}

impl ReadRoutingStrategy for Reads {
    fn on_topology_changed(&self, topology: ClusterTopology) {
        tracing::debug!(
            shards = topology.shards().count(),
            "Redis Cluster topology refreshed"
        );
        self.cache.set(topology);
    }

    fn route_read<'a>(&self, candidates: &ReadCandidates<'a>) -> &'a NodeAddress {
        match candidates {
            // Replica reads: any replica of the shard (redis-rs asks only when there is one).
            ReadCandidates::AnyNode(c) if self.replica_reads => c.replicas().choose_random(),
            // Reads go to the primary (no replication lag), as without a strategy.
            ReadCandidates::AnyNode(c) => c.primary(),
            // Only asked for explicitly replica-only reads, which this crate never sends.
            ReadCandidates::ReplicasOnly(c) => c.replicas().first(),
        }
    }
}
