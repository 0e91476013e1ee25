//! A real Redis Cluster for tests: `redis-server` nodes on free ports, joined with
//! `redis-cli --cluster create`, killed on `Drop`.
//!
//! [`RedisCluster::start`] starts 6 nodes (3 primaries, 3 replicas) with
//! `--cluster-enabled yes --cluster-node-timeout 2000`, creates the cluster and waits until
//! every node reports `cluster_state:ok`, every node knows every other one, and every replica
//! is synced with its primary (about 3 s). [`shared_cluster`] is one cluster per test binary.
//! Node control ([`RedisCluster::kill`], [`RedisCluster::stop`], [`RedisCluster::failover`],
//! ...) takes a node's port.
//!
//! ```no_run
//! # fn main() -> Result<(), cache_testkit::Error> {
//! use cache_testkit::{RedisCluster, Role};
//!
//! let cluster = RedisCluster::start()?;
//! let primary = cluster.master_for_slot(cluster.keyslot(b"{user:42}:profile")?)?;
//! let replica = cluster.replicas_of(primary.port)?.remove(0);
//! cluster.failover(replica.port)?; // CLUSTER FAILOVER on the replica
//! assert_eq!(cluster.node(replica.port)?.role, Role::Master);
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::process::{drain, find_binary, free_port};
use crate::server::{RedisServer, ServerOptions};

/// Default cluster node timeout of test clusters (`--cluster-node-timeout`): 2 s.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`RedisCluster::start`] waits for the cluster to become healthy by default.
pub const DEFAULT_CLUSTER_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one control query to a node may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The role of a cluster node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A primary (serves slots when it has some).
    Master,
    /// A replica of a primary.
    Replica,
}

/// One node as the cluster sees it (`CLUSTER NODES`), with its process id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's TCP port on `127.0.0.1`.
    pub port: u16,
    /// The node's process id (the current or last process).
    pub pid: u32,
    /// The cluster node id (40 hex characters).
    pub id: String,
    /// Primary or replica.
    pub role: Role,
    /// For a replica, the node id of its primary.
    pub master_id: Option<String>,
    /// Slot ranges served (primaries), inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Flagged `fail` or `fail?` by the node that answered.
    pub failing: bool,
    /// The cluster bus link to it is `connected` (as seen by the node that answered).
    pub connected: bool,
}

impl ClusterNode {
    /// Whether this node serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// A slot being moved between two primaries (see [`RedisCluster::begin_slot_migration`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMigration {
    /// The slot.
    pub slot: u16,
    /// Port of the primary the slot leaves.
    pub source: u16,
    source_id: String,
    /// Port of the primary the slot moves to.
    pub target: u16,
    target_id: String,
}

/// How to build a test cluster. Build with the methods, then [`ClusterOptions::start`].
#[derive(Clone)]
pub struct ClusterOptions {
    masters: usize,
    replicas: usize,
    node_timeout: Duration,
    password: Option<String>,
    args: Vec<String>,
    startup_timeout: Duration,
}

impl fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("masters", &self.masters)
            .field("replicas", &self.replicas)
            .field("node_timeout", &self.node_timeout)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("args", &self.args.len())
            .field("startup_timeout", &self.startup_timeout)
            .finish()
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            masters: 3,
            replicas: 1,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            password: None,
            args: Vec::new(),
            startup_timeout: DEFAULT_CLUSTER_STARTUP_TIMEOUT,
        }
    }
}

impl ClusterOptions {
    /// 3 primaries with 1 replica each, node timeout 2 s, no password.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many primaries (at least 3, what `redis-cli --cluster create` needs).
    pub fn with_masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// How many replicas per primary.
    pub fn with_replicas_per_master(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// `--cluster-node-timeout` (default 2 s): how long a node may be unreachable before
    /// it is considered failing and its replica takes over.
    pub fn with_node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Require `password` (`--requirepass`, and `--masterauth` for replication); the
    /// cluster's own queries and `redis-cli` authenticate with it.
    pub fn with_requirepass(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Append one raw `redis-server` argument to every node.
    pub fn with_arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// How long to wait for the cluster to become healthy (default 30 s).
    pub fn with_startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Start the nodes, create the cluster and wait until it is healthy.
    pub fn start(self) -> Result<RedisCluster> {
        RedisCluster::start_with(self)
    }
}

/// A running Redis Cluster on `127.0.0.1`, private to its owner; every node is killed on
/// `Drop` (and with the test process, by the parent-death signal).
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    options: ClusterOptions,
    stopped: Mutex<HashSet<u16>>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .field("options", &self.options)
            .finish()
    }
}

impl RedisCluster {
    /// Start 3 primaries and 3 replicas (see [`ClusterOptions`]) and wait until healthy.
    pub fn start() -> Result<RedisCluster> {
        Self::start_with(ClusterOptions::default())
    }

    /// Start a cluster with `options` and wait until it is healthy.
    pub fn start_with(options: ClusterOptions) -> Result<RedisCluster> {
        if options.masters < 3 {
            return Err(Error::new(
                "a Redis Cluster needs at least 3 primaries (redis-cli --cluster create)",
            ));
        }
        let binary = find_binary("redis-server")?;
        let cli = find_binary("redis-cli")?;
        let started = Instant::now();
        let total = options.masters * (1 + options.replicas);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            nodes.push(start_node(&binary, &options)?);
        }
        let cluster = RedisCluster {
            nodes,
            options,
            stopped: Mutex::new(HashSet::new()),
        };
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(cluster.ports().iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend([
            "--cluster-replicas".to_owned(),
            cluster.options.replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        if let Some(password) = &cluster.options.password {
            args.extend([
                "-a".to_owned(),
                password.clone(),
                "--no-auth-warning".into(),
            ]);
        }
        run_with_timeout(&cli, &args, Duration::from_secs(60))
            .map_err(|e| Error::new(format!("redis-cli --cluster create failed: {e}")))?;
        let deadline = started + cluster.options.startup_timeout;
        cluster.wait_healthy(deadline.saturating_duration_since(Instant::now()))?;
        Ok(cluster)
    }

    /// The ports of every node, in start order (the first `masters` started as primaries).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `redis://127.0.0.1:PORT/` of every node (seed URLs for a client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The server process of the node on `port`.
    pub fn server(&self, port: u16) -> Result<&RedisServer> {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .ok_or_else(|| Error::new(format!("no node of this cluster listens on port {port}")))
    }

    /// Every node as a responsive node sees it (`CLUSTER NODES`).
    pub fn nodes(&self) -> Result<Vec<ClusterNode>> {
        let mut last = Error::new("no cluster node is running");
        for port in self.live_ports() {
            match self.nodes_seen_by(port) {
                Ok(nodes) => return Ok(nodes),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The node on `port`, as a responsive node sees it.
    pub fn node(&self, port: u16) -> Result<ClusterNode> {
        self.nodes()?
            .into_iter()
            .find(|n| n.port == port)
            .ok_or_else(|| Error::new(format!("node {port} is not in CLUSTER NODES")))
    }

    /// The primaries that serve slots.
    pub fn masters(&self) -> Result<Vec<ClusterNode>> {
        Ok(self
            .nodes()?
            .into_iter()
            .filter(|n| n.role == Role::Master && !n.slots.is_empty())
            .collect())
    }

    /// The replicas of the primary on `master_port`.
    pub fn replicas_of(&self, master_port: u16) -> Result<Vec<ClusterNode>> {
        let nodes = self.nodes()?;
        let master = nodes
            .iter()
            .find(|n| n.port == master_port)
            .ok_or_else(|| Error::new(format!("node {master_port} is not in CLUSTER NODES")))?;
        Ok(nodes
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .cloned()
            .collect())
    }

    /// The primary serving `slot`.
    pub fn master_for_slot(&self, slot: u16) -> Result<ClusterNode> {
        self.nodes()?
            .into_iter()
            .find(|n| n.role == Role::Master && n.serves(slot))
            .ok_or_else(|| Error::new(format!("no primary serves slot {slot}")))
    }

    /// The server's `CLUSTER KEYSLOT` of `key` (binary safe).
    pub fn keyslot(&self, key: &[u8]) -> Result<u16> {
        let mut last = Error::new("no cluster node is running");
        for port in self.live_ports() {
            match self.query(port, &[b"CLUSTER", b"KEYSLOT", key]) {
                Ok(Reply::Int(n)) => {
                    return u16::try_from(n)
                        .map_err(|_| Error::new(format!("CLUSTER KEYSLOT answered {n}")))
                }
                Ok(other) => return Err(Error::new(format!("CLUSTER KEYSLOT answered {other:?}"))),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Kill the node on `port` with `SIGKILL` (its replica takes over after the node timeout).
    pub fn kill(&self, port: u16) -> Result<()> {
        self.lock_stopped().remove(&port);
        self.server(port)?.kill()
    }

    /// Freeze the node on `port` with `SIGSTOP`: its connections stay open, nothing answers.
    pub fn stop(&self, port: u16) -> Result<()> {
        self.server(port)?.stop()?;
        self.lock_stopped().insert(port);
        Ok(())
    }

    /// Resume a frozen node with `SIGCONT`.
    pub fn cont(&self, port: u16) -> Result<()> {
        self.server(port)?.cont()?;
        self.lock_stopped().remove(&port);
        Ok(())
    }

    /// Start a killed node again on the same port and directory: it keeps its node id (its
    /// `nodes-PORT.conf`) and rejoins the cluster, as a replica if it was failed over. Its data
    /// set is empty (no persistence).
    pub fn restart(&self, port: u16) -> Result<()> {
        self.lock_stopped().remove(&port);
        self.server(port)?.restart()
    }

    /// `CLUSTER FAILOVER` on the replica on `replica_port` (a coordinated, lossless manual
    /// failover), then wait until every running node sees it as a primary (at most 10 s).
    pub fn failover(&self, replica_port: u16) -> Result<()> {
        match self.query(replica_port, &[b"CLUSTER", b"FAILOVER"])? {
            Reply::Simple(_) => {}
            other => {
                return Err(Error::new(format!(
                    "CLUSTER FAILOVER on {replica_port} answered {other:?}"
                )))
            }
        }
        self.wait_until(Duration::from_secs(10), || {
            self.everyone_agrees_master(replica_port)
        })
        .map_err(|e| Error::new(format!("replica {replica_port} did not take over: {e}")))
    }

    /// Whether every running, unfrozen node sees the node on `port` as a primary with slots.
    fn everyone_agrees_master(&self, port: u16) -> Result<bool> {
        for live in self.live_ports() {
            let seen = self.nodes_seen_by(live)?;
            let Some(node) = seen.iter().find(|n| n.port == port) else {
                return Ok(false);
            };
            if node.role != Role::Master || node.slots.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Wait until the replica on `replica_port` is a primary serving slots in the view of
    /// every running, unfrozen node (after a kill of its primary: node timeout plus election),
    /// at most `timeout`; returns how long it took.
    pub fn wait_promoted(&self, replica_port: u16, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        self.wait_until(timeout, || self.everyone_agrees_master(replica_port))?;
        Ok(started.elapsed())
    }

    /// Move `slot` to the primary on `to_port` the way `redis-cli --cluster reshard` does, with
    /// the slot left half-moved for a while so that clients meet it:
    /// [`begin_slot_migration`](Self::begin_slot_migration), then `MIGRATE` of at most
    /// `keys_per_step` keys at a time with `pause` after each step, then
    /// [`finish_slot_migration`](Self::finish_slot_migration). Returns how many keys were
    /// moved (0 when the target already serves the slot).
    pub fn migrate_slot(
        &self,
        slot: u16,
        to_port: u16,
        keys_per_step: usize,
        pause: Duration,
    ) -> Result<usize> {
        if self.master_for_slot(slot)?.port == to_port {
            return Ok(0);
        }
        let migration = self.begin_slot_migration(slot, to_port)?;
        let count = keys_per_step.max(1).to_string();
        let slot_arg = slot.to_string();
        let mut moved = 0;
        loop {
            let keys = match self.query(
                migration.source,
                &[
                    b"CLUSTER",
                    b"GETKEYSINSLOT",
                    slot_arg.as_bytes(),
                    count.as_bytes(),
                ],
            )? {
                Reply::Array(Some(items)) => items
                    .into_iter()
                    .filter_map(|r| match r {
                        Reply::Bulk(Some(k)) => Some(k),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
                other => {
                    return Err(Error::new(format!(
                        "CLUSTER GETKEYSINSLOT answered {other:?}"
                    )))
                }
            };
            if keys.is_empty() {
                break;
            }
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            self.migrate_keys(&migration, &keys)?;
            moved += keys.len();
            std::thread::sleep(pause);
        }
        self.finish_slot_migration(&migration)?;
        Ok(moved)
    }

    /// Start moving `slot` from its primary to the primary on `to_port`: `CLUSTER SETSLOT
    /// IMPORTING` on the target, then `MIGRATING` on the source. From then on the source
    /// answers `ASK` for keys it no longer holds and `TRYAGAIN` for multi-key commands whose
    /// keys it holds only in part.
    pub fn begin_slot_migration(&self, slot: u16, to_port: u16) -> Result<SlotMigration> {
        let source = self.master_for_slot(slot)?;
        let target = self.node(to_port)?;
        if target.role != Role::Master || source.port == to_port {
            return Err(Error::new(format!(
                "node {to_port} is not another primary than slot {slot}'s"
            )));
        }
        let migration = SlotMigration {
            slot,
            source: source.port,
            source_id: source.id,
            target: target.port,
            target_id: target.id,
        };
        self.setslot(migration.target, slot, b"IMPORTING", &migration.source_id)?;
        self.setslot(migration.source, slot, b"MIGRATING", &migration.target_id)?;
        Ok(migration)
    }

    /// `MIGRATE` these keys of a migrating slot from its source to its target, in one call
    /// (keys the source no longer holds are skipped).
    pub fn migrate_keys(&self, migration: &SlotMigration, keys: &[&[u8]]) -> Result<()> {
        let to = migration.target.to_string();
        let mut args: Vec<&[u8]> =
            vec![b"MIGRATE", b"127.0.0.1", to.as_bytes(), b"", b"0", b"5000"];
        if let Some(password) = &self.options.password {
            args.extend([b"AUTH".as_slice(), password.as_bytes()]);
        }
        args.push(b"KEYS");
        args.extend_from_slice(keys);
        self.query(migration.source, &args)
            .map(|_| ())
            .map_err(|e| Error::new(format!("MIGRATE of slot {} failed: {e}", migration.slot)))
    }

    /// End a migration: `CLUSTER SETSLOT NODE target` on the target, the source and every
    /// other primary, then wait (at most 10 s) until every running node sees the target serve
    /// the slot. The keys left on the source must have been migrated first.
    pub fn finish_slot_migration(&self, migration: &SlotMigration) -> Result<()> {
        let (slot, target) = (migration.slot, migration.target);
        self.setslot(target, slot, b"NODE", &migration.target_id)?;
        self.setslot(migration.source, slot, b"NODE", &migration.target_id)?;
        for other in self.masters()? {
            if other.port != target && other.port != migration.source {
                self.setslot(other.port, slot, b"NODE", &migration.target_id)?;
            }
        }
        self.wait_until(Duration::from_secs(10), || {
            for port in self.live_ports() {
                let seen = self.nodes_seen_by(port)?;
                if !seen.iter().any(|n| n.port == target && n.serves(slot)) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .map_err(|e| Error::new(format!("slot {slot} did not settle on {target}: {e}")))
    }

    fn setslot(&self, port: u16, slot: u16, state: &[u8], id: &str) -> Result<Reply> {
        let slot = slot.to_string();
        self.query(
            port,
            &[
                b"CLUSTER",
                b"SETSLOT",
                slot.as_bytes(),
                state,
                id.as_bytes(),
            ],
        )
    }

    /// Run `redis-cli -p PORT ARGS...` against one node and return its standard output.
    pub fn cli<S: AsRef<str>>(&self, port: u16, args: &[S]) -> Result<String> {
        self.server(port)?.cli(args)
    }

    /// Wait (at most `timeout`) until every running, unfrozen node reports
    /// `cluster_state:ok` and agrees that all slots are served, no node is failing, and every
    /// replica's link to its primary is up.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let expected_masters = self.options.masters;
        let expected_replicas = self.options.masters * self.options.replicas;
        self.wait_until(timeout, || {
            for port in self.live_ports() {
                let info = self.query_text(port, &[b"CLUSTER", b"INFO"])?;
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    return Ok(false);
                }
                let nodes = self.nodes_seen_by(port)?;
                let masters = nodes
                    .iter()
                    .filter(|n| n.role == Role::Master && !n.slots.is_empty())
                    .count();
                let replicas = nodes.iter().filter(|n| n.role == Role::Replica).count();
                if masters != expected_masters
                    || replicas != expected_replicas
                    || nodes.iter().any(|n| n.failing || !n.connected)
                {
                    return Ok(false);
                }
                let role = self.info_field(port, "replication", "role")?;
                if role == "slave"
                    && self.info_field(port, "replication", "master_link_status")? != "up"
                {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .map_err(|e| Error::new(format!("the cluster did not become healthy: {e}")))
    }

    fn live_ports(&self) -> Vec<u16> {
        let stopped = self.lock_stopped().clone();
        self.nodes
            .iter()
            .filter(|n| n.is_running() && !stopped.contains(&n.port()))
            .map(RedisServer::port)
            .collect()
    }

    fn lock_stopped(&self) -> std::sync::MutexGuard<'_, HashSet<u16>> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nodes_seen_by(&self, port: u16) -> Result<Vec<ClusterNode>> {
        let text = self.query_text(port, &[b"CLUSTER", b"NODES"])?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(self.parse_node(line)?);
        }
        Ok(out)
    }

    fn parse_node(&self, line: &str) -> Result<ClusterNode> {
        let bad = || Error::new(format!("cannot parse CLUSTER NODES line `{line}`"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(bad());
        }
        let addr = fields[1].split(['@', ',']).next().ok_or_else(bad)?;
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)?;
        let flags: Vec<&str> = fields[2].split(',').collect();
        let role = if flags.contains(&"master") {
            Role::Master
        } else {
            Role::Replica
        };
        let mut slots = Vec::new();
        for range in &fields[8..] {
            if range.starts_with('[') {
                continue; // a slot being imported or migrated
            }
            let mut ends = range.split('-');
            let a: u16 = ends.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let b: u16 = match ends.next() {
                Some(s) => s.parse().map_err(|_| bad())?,
                None => a,
            };
            slots.push((a, b));
        }
        Ok(ClusterNode {
            port,
            pid: self.server(port).map(RedisServer::pid).unwrap_or(0),
            id: fields[0].to_owned(),
            role,
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
            failing: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
            connected: fields[7] == "connected",
        })
    }

    fn info_field(&self, port: u16, section: &str, field: &str) -> Result<String> {
        let text = self.query_text(port, &[b"INFO", section.as_bytes()])?;
        let prefix = format!("{field}:");
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_owned))
            .ok_or_else(|| Error::new(format!("no {field} in INFO {section} of node {port}")))
    }

    fn wait_until(&self, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match done() {
                Ok(true) => return Ok(()),
                Ok(false) => Error::new("condition not met"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(Error::new(format!("timed out after {timeout:?} ({last})")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn query_text(&self, port: u16, args: &[&[u8]]) -> Result<String> {
        match self.query(port, args)? {
            Reply::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Reply::Simple(s) => Ok(s),
            other => Err(Error::new(format!("node {port} answered {other:?}"))),
        }
    }

    /// One command over a fresh connection (authenticating when the cluster has a password).
    fn query(&self, port: u16, args: &[&[u8]]) -> Result<Reply> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, QUERY_TIMEOUT)
            .map_err(|e| Error::new(format!("cannot connect to node {port}: {e}")))?;
        let _ = stream.set_read_timeout(Some(QUERY_TIMEOUT));
        let _ = stream.set_write_timeout(Some(QUERY_TIMEOUT));
        let mut reader = BufReader::new(
            stream
                .try_clone()
                .map_err(|e| Error::new(format!("socket clone failed: {e}")))?,
        );
        let mut writer = stream;
        if let Some(password) = &self.options.password {
            send(&mut writer, &[b"AUTH", password.as_bytes()], port)?;
            if let Reply::Error(e) = read_reply(&mut reader, port)? {
                return Err(Error::new(format!("AUTH on node {port} failed: {e}")));
            }
        }
        send(&mut writer, args, port)?;
        match read_reply(&mut reader, port)? {
            Reply::Error(e) => Err(Error::new(format!("node {port} answered an error: {e}"))),
            reply => Ok(reply),
        }
    }
}

/// Start one cluster-enabled node on free ports (client and cluster bus).
fn start_node(binary: &Path, options: &ClusterOptions) -> Result<RedisServer> {
    RedisServer::launch_on_free_port(binary, "tiercache-cluster-", |port| {
        let bus_port = free_port()?;
        if bus_port == port {
            return Ok(None);
        }
        let mut server_options = ServerOptions::new().with_args([
            "--cluster-enabled".to_owned(),
            "yes".to_owned(),
            "--cluster-node-timeout".to_owned(),
            options.node_timeout.as_millis().to_string(),
            "--cluster-config-file".to_owned(),
            format!("nodes-{port}.conf"),
            "--cluster-port".to_owned(),
            bus_port.to_string(),
            // Replicas sync at once (the default waits 5 s for more replicas to join).
            "--repl-diskless-sync-delay".to_owned(),
            "0".to_owned(),
        ]);
        if let Some(password) = &options.password {
            server_options = server_options
                .with_requirepass(password.clone())
                .with_args(["--masterauth".to_owned(), password.clone()]);
        }
        Ok(Some(server_options.with_args(options.args.iter().cloned())))
    })
}

/// One cluster per test binary, started on first use; it lives until the test process exits.
/// Use it for tests that do not break it; start a private [`RedisCluster`] for the others.
pub fn shared_cluster() -> Result<&'static RedisCluster> {
    static SHARED: OnceLock<Result<RedisCluster>> = OnceLock::new();
    match SHARED.get_or_init(RedisCluster::start) {
        Ok(cluster) => Ok(cluster),
        Err(e) => Err(e.clone()),
    }
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

fn send(writer: &mut TcpStream, args: &[&[u8]], port: u16) -> Result<()> {
    let mut buf = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        buf.extend_from_slice(arg);
        buf.extend_from_slice(b"\r\n");
    }
    writer
        .write_all(&buf)
        .map_err(|e| Error::new(format!("cannot write to node {port}: {e}")))
}

fn read_reply(reader: &mut BufReader<TcpStream>, port: u16) -> Result<Reply> {
    let io = |e: std::io::Error| Error::new(format!("cannot read from node {port}: {e}"));
    let mut line = String::new();
    if reader.read_line(&mut line).map_err(io)? == 0 {
        return Err(Error::new(format!("node {port} closed the connection")));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || -> Result<i64> {
        rest.parse()
            .map_err(|_| Error::new(format!("bad RESP line `{line}` from node {port}")))
    };
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => Ok(Reply::Int(number()?)),
        "$" => {
            let len = number()?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0) + 2];
            reader.read_exact(&mut buf).map_err(io)?;
            buf.truncate(buf.len() - 2);
            Ok(Reply::Bulk(Some(buf)))
        }
        "*" => {
            let len = number()?;
            if len < 0 {
                return Ok(Reply::Array(None));
            }
            let mut items = Vec::new();
            for _ in 0..len {
                items.push(read_reply(reader, port)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        _ => Err(Error::new(format!(
            "bad RESP line `{line}` from node {port}"
        ))),
    }
}

/// Run `program args...`, failing when it exits non-zero or runs longer than `timeout`.
fn run_with_timeout(program: &Path, args: &[String], timeout: Duration) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {}: {e}", program.display())))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::new(format!(
                    "{} did not finish within {timeout:?}",
                    program.display()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                return Err(Error::new(format!(
                    "cannot wait for {}: {e}",
                    program.display()
                )))
            }
        }
    };
    let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    if !status.success() {
        return Err(Error::new(format!(
            "{} failed ({status}): {out}{err}",
            program.display()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_debug_hides_the_password() {
        let o = ClusterOptions::new().with_requirepass("hunter2");
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn too_few_masters_is_an_error() {
        let e = ClusterOptions::new().with_masters(2).start().err();
        assert!(e.is_some());
    }
}
