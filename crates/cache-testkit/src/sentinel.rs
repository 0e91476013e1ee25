//! A real Redis Sentinel group: one master, its replicas and three sentinels
//! (`redis-server FILE --sentinel`), all on free `127.0.0.1` ports, killed with the test
//! process.
//!
//! The sentinels judge the master down after [`SentinelOptions::with_down_after`] (default 1 s)
//! and fail over to a replica; [`RedisSentinel::kill_master`] (`SIGKILL`) and
//! [`RedisSentinel::wait_failover`] drive and observe that. Every sentinel announces
//! `127.0.0.1`, so the addresses they hand out are reachable from the test.
//!
//! ```no_run
//! # fn main() -> Result<(), cache_testkit::Error> {
//! use std::time::Duration;
//! use cache_testkit::RedisSentinel;
//!
//! let group = RedisSentinel::start()?;
//! let urls = group.sentinel_urls(); // redis://127.0.0.1:PORT, one per sentinel
//! let old = group.kill_master()?;
//! let (new, took) = group.wait_failover(old, Duration::from_secs(20))?;
//! assert_ne!(old, new);
//! # let _ = (urls, took);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::process::find_binary;
use crate::server::{RedisServer, ServerOptions};

/// The master name the sentinels monitor by default.
pub const DEFAULT_MASTER_NAME: &str = "tiercache";
/// Default `down-after-milliseconds`: 1 s without an answer and a sentinel judges the master
/// down.
pub const DEFAULT_DOWN_AFTER: Duration = Duration::from_secs(1);
/// Default `failover-timeout`: 3 s.
pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long [`RedisSentinel::start`] waits for the group to be ready (replicas in sync, every
/// sentinel knowing the others): sentinels find each other through hello messages sent every
/// 2 s.
pub const GROUP_STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// What a sentinel logs once it listens and monitors its master (it never logs "Ready to
/// accept connections").
const SENTINEL_READY_LINE: &str = "+monitor master";

/// Settings of a sentinel group. Build with the methods, then [`SentinelOptions::start`].
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    master_name: String,
    replicas: usize,
    sentinels: usize,
    down_after: Duration,
    failover_timeout: Duration,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        SentinelOptions {
            master_name: DEFAULT_MASTER_NAME.to_owned(),
            replicas: 1,
            sentinels: 3,
            down_after: DEFAULT_DOWN_AFTER,
            failover_timeout: DEFAULT_FAILOVER_TIMEOUT,
        }
    }
}

impl SentinelOptions {
    /// One master, one replica, three sentinels (quorum 2), master name
    /// [`DEFAULT_MASTER_NAME`], `down-after` 1 s, `failover-timeout` 3 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name the sentinels monitor the master by.
    pub fn with_master_name(mut self, name: impl Into<String>) -> Self {
        self.master_name = name.into();
        self
    }

    /// Replicas of the master (default 1; at least 1, or there is nothing to fail over to).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sentinels (default 3; the quorum is a majority of them).
    pub fn with_sentinels(mut self, sentinels: usize) -> Self {
        self.sentinels = sentinels;
        self
    }

    /// `down-after-milliseconds` (default 1 s).
    pub fn with_down_after(mut self, down_after: Duration) -> Self {
        self.down_after = down_after;
        self
    }

    /// `failover-timeout` (default 3 s).
    pub fn with_failover_timeout(mut self, timeout: Duration) -> Self {
        self.failover_timeout = timeout;
        self
    }

    /// Start the group and wait until it is ready.
    pub fn start(self) -> Result<RedisSentinel> {
        RedisSentinel::start_with(self)
    }
}

/// A running sentinel group: data nodes (the first one starts as master) and sentinels, each a
/// [`RedisServer`] killed on `Drop` and with the test process.
pub struct RedisSentinel {
    options: SentinelOptions,
    /// Holds the sentinels' config files (they rewrite them).
    dir: tempfile::TempDir,
    nodes: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSentinel")
            .field("master_name", &self.options.master_name)
            .field(
                "nodes",
                &self.nodes.iter().map(RedisServer::port).collect::<Vec<_>>(),
            )
            .field(
                "sentinels",
                &self
                    .sentinels
                    .iter()
                    .map(RedisServer::port)
                    .collect::<Vec<_>>(),
            )
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl RedisSentinel {
    /// Start a group with the default [`SentinelOptions`].
    pub fn start() -> Result<RedisSentinel> {
        Self::start_with(SentinelOptions::default())
    }

    /// Start a group: the master, its replicas (waiting until they are in sync), then the
    /// sentinels; returns once every sentinel sees the master, every replica and every other
    /// sentinel, and `SENTINEL CKQUORUM` passes (about 2 to 3 s).
    pub fn start_with(options: SentinelOptions) -> Result<RedisSentinel> {
        if options.replicas == 0 || options.sentinels == 0 {
            return Err(Error::new(
                "a sentinel group needs at least one replica and one sentinel",
            ));
        }
        let binary = find_binary("redis-server")?;
        let dir = tempfile::Builder::new()
            .prefix("tiercache-sentinel-")
            .tempdir()
            .map_err(|e| Error::new(format!("cannot create a temp dir for sentinels: {e}")))?;
        // Replicas sync at once (the default waits 5 s for more replicas to join).
        let fast_sync = ["--repl-diskless-sync-delay", "0"];
        let master = ServerOptions::new().with_args(fast_sync).start()?;
        let master_port = master.port();
        let mut nodes = vec![master];
        for _ in 0..options.replicas {
            let replica = ServerOptions::new()
                .with_args(fast_sync)
                .with_args([
                    "--replicaof".to_owned(),
                    "127.0.0.1".to_owned(),
                    master_port.to_string(),
                ])
                .start()?;
            nodes.push(replica);
        }
        let mut group = RedisSentinel {
            options,
            dir,
            nodes,
            sentinels: Vec::new(),
        };
        group.wait_until(GROUP_STARTUP_TIMEOUT, |g| g.replicas_in_sync())?;
        for _ in 0..group.options.sentinels {
            let sentinel = start_sentinel(&binary, group.dir.path(), &group.options, master_port)?;
            group.sentinels.push(sentinel);
        }
        group
            .wait_until(GROUP_STARTUP_TIMEOUT, |g| g.sentinels_agree(master_port))
            .map_err(|e| Error::new(format!("the sentinel group did not become ready: {e}")))?;
        Ok(group)
    }

    /// The name the sentinels monitor the master by.
    pub fn master_name(&self) -> &str {
        &self.options.master_name
    }

    /// The sentinels' `down-after-milliseconds`.
    pub fn down_after(&self) -> Duration {
        self.options.down_after
    }

    /// The sentinels' `failover-timeout`.
    pub fn failover_timeout(&self) -> Duration {
        self.options.failover_timeout
    }

    /// The sentinels' addresses.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(RedisServer::addr).collect()
    }

    /// `redis://127.0.0.1:PORT` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port()))
            .collect()
    }

    /// The sentinel processes.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The data nodes (master and replicas; the first one started as master).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The master as the first answering sentinel names it
    /// (`SENTINEL get-master-addr-by-name`).
    pub fn master(&self) -> Result<SocketAddr> {
        let mut last = Error::new("no sentinel is running");
        for sentinel in self.sentinels.iter().filter(|s| s.is_running()) {
            match self.master_seen_by(sentinel) {
                Ok(addr) => return Ok(addr),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The data node the sentinels name as master.
    pub fn master_server(&self) -> Result<&RedisServer> {
        let addr = self.master()?;
        self.node(addr)
    }

    /// The data node at `addr`.
    pub fn node(&self, addr: SocketAddr) -> Result<&RedisServer> {
        self.nodes
            .iter()
            .find(|n| n.addr() == addr)
            .ok_or_else(|| Error::new(format!("{addr} is not a data node of this group")))
    }

    /// Kill the current master with `SIGKILL` and return its address.
    pub fn kill_master(&self) -> Result<SocketAddr> {
        let master = self.master_server()?;
        master.kill()?;
        Ok(master.addr())
    }

    /// Wait (at most `timeout`) until every running sentinel names a master other than `old`
    /// and that node says it is a master (`ROLE`); returns it and how long the wait took.
    pub fn wait_failover(
        &self,
        old: SocketAddr,
        timeout: Duration,
    ) -> Result<(SocketAddr, Duration)> {
        let started = Instant::now();
        let mut new = None;
        self.wait_until(timeout, |g| {
            let mut named = None;
            for sentinel in g.sentinels.iter().filter(|s| s.is_running()) {
                let addr = g.master_seen_by(sentinel)?;
                if addr == old || named.is_some_and(|n| n != addr) {
                    return Ok(false);
                }
                named = Some(addr);
            }
            let Some(addr) = named else {
                return Ok(false);
            };
            let role = g.node(addr)?.cli(&["ROLE"])?;
            new = Some(addr);
            Ok(role.lines().next().map(str::trim) == Some("master"))
        })
        .map_err(|e| Error::new(format!("no failover away from {old}: {e}")))?;
        let new = new.ok_or_else(|| Error::new("no failover"))?;
        Ok((new, started.elapsed()))
    }

    fn master_seen_by(&self, sentinel: &RedisServer) -> Result<SocketAddr> {
        let out = sentinel.cli(&["SENTINEL", "get-master-addr-by-name", self.master_name()])?;
        let mut lines = out.lines().map(str::trim);
        let (Some(host), Some(port)) = (lines.next(), lines.next()) else {
            return Err(Error::new(format!(
                "sentinel {} does not know master `{}`: {out}",
                sentinel.port(),
                self.master_name()
            )));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| Error::new(format!("sentinel {} answered `{out}`", sentinel.port())))?;
        if host != "127.0.0.1" {
            return Err(Error::new(format!(
                "sentinel {} names master host {host}, expected 127.0.0.1",
                sentinel.port()
            )));
        }
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// Every replica reports its link to the master up.
    fn replicas_in_sync(&self) -> Result<bool> {
        for replica in &self.nodes[1..] {
            let info = fields(&replica.cli(&["INFO", "replication"])?, ':');
            if info.get("master_link_status").map(String::as_str) != Some("up") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every sentinel names `master_port`, sees all replicas and all other sentinels, and
    /// can reach its quorum.
    fn sentinels_agree(&self, master_port: u16) -> Result<bool> {
        let name = self.master_name();
        for sentinel in &self.sentinels {
            if self.master_seen_by(sentinel)?.port() != master_port {
                return Ok(false);
            }
            let out = sentinel.cli(&["SENTINEL", "master", name])?;
            let lines: Vec<&str> = out.lines().map(str::trim).collect();
            let state: HashMap<&str, &str> = lines
                .chunks(2)
                .filter_map(|kv| Some((*kv.first()?, *kv.get(1)?)))
                .collect();
            let count = |k: &str| state.get(k).and_then(|v| v.parse::<usize>().ok());
            if state.get("flags") != Some(&"master")
                || count("num-slaves") != Some(self.options.replicas)
                || count("num-other-sentinels") != Some(self.options.sentinels - 1)
            {
                return Ok(false);
            }
            if !sentinel
                .cli(&["SENTINEL", "ckquorum", name])?
                .starts_with("OK")
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match done(self) {
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
}

/// `key<sep>value` lines (as in `INFO`) into a map.
fn fields(text: &str, sep: char) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(sep))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Start one sentinel on a free port, with its config file in `dir`.
fn start_sentinel(
    binary: &Path,
    dir: &Path,
    options: &SentinelOptions,
    master_port: u16,
) -> Result<RedisServer> {
    RedisServer::launch_on_free_port(binary, "tiercache-sentinel-node-", |port| {
        let name = &options.master_name;
        let config = format!(
            "sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
             sentinel down-after-milliseconds {name} {down_after}\n\
             sentinel failover-timeout {name} {failover_timeout}\n\
             sentinel parallel-syncs {name} 1\n\
             sentinel announce-ip 127.0.0.1\n",
            quorum = options.sentinels / 2 + 1,
            down_after = options.down_after.as_millis(),
            failover_timeout = options.failover_timeout.as_millis(),
        );
        let path = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(&path, config)
            .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
        Ok(Some(
            ServerOptions::new()
                .with_config_file(path)
                .with_arg("--sentinel")
                .with_ready_line(SENTINEL_READY_LINE),
        ))
    })
}

/// One sentinel group per test binary, started on first use; it lives until the test process
/// exits. Use it for tests that do not break it; start a private [`RedisSentinel`] for the
/// others (killing the master, for one).
pub fn shared_sentinel() -> Result<&'static RedisSentinel> {
    static SHARED: OnceLock<Result<RedisSentinel>> = OnceLock::new();
    match SHARED.get_or_init(RedisSentinel::start) {
        Ok(group) => Ok(group),
        Err(e) => Err(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_on_the_separator() {
        let f = fields(
            "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n",
            ':',
        );
        assert_eq!(f.get("role").map(String::as_str), Some("slave"));
        assert_eq!(f.get("master_link_status").map(String::as_str), Some("up"));
    }

    #[test]
    fn a_killed_master_is_replaced_by_its_replica() -> Result<()> {
        let group = RedisSentinel::start()?;
        let old = group.master()?;
        assert_eq!(old, group.nodes()[0].addr());
        assert_eq!(group.sentinel_urls().len(), 3);
        group.master_server()?.cli(&["SET", "k", "v"])?;
        let killed = group.kill_master()?;
        assert_eq!(killed, old);
        let (new, took) = group.wait_failover(old, Duration::from_secs(20))?;
        assert_eq!(new, group.nodes()[1].addr());
        assert_eq!(group.node(new)?.cli(&["GET", "k"])?.trim(), "v");
        eprintln!("failover took {took:?}");
        Ok(())
    }

    #[test]
    fn a_group_needs_a_replica() {
        let err = SentinelOptions::new().with_replicas(0).start().err();
        assert!(err.is_some());
    }
}
