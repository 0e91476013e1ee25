//! # cache-testkit
//!
//! Test support for tiercache (not published): real `redis-server` processes on free
//! `127.0.0.1` ports, each in its own temporary directory, with fault injection.
//!
//! - [`RedisServer::start`] starts a private server (`--save "" --appendonly no`), waits until
//!   it answers `PING` and kills it on `Drop`. [`ServerOptions`] adds server arguments
//!   (`--requirepass`, ACL users, anything else).
//! - [`shared_redis`] is one server per test binary, for tests that do not break it.
//! - Faults: [`RedisServer::stop`] (`SIGSTOP`, a hung server), [`RedisServer::cont`]
//!   (`SIGCONT`), [`RedisServer::kill`] (`SIGKILL`) and [`RedisServer::restart`] (start again
//!   on the same port, for "Redis comes back" tests).
//!
//! Every server is spawned from one dedicated, never-exiting thread with
//! `prctl(PR_SET_PDEATHSIG, SIGKILL)` (Linux), so servers die with the test process even when
//! they live in a `static` (never dropped) or the test process is killed.
//!
//! - [`RedisCluster::start`] starts a real Redis Cluster: 6 nodes (3 primaries, 3 replicas)
//!   joined with `redis-cli --cluster create`, healthy in about 3 s, with node control
//!   (kill, `SIGSTOP`, restart, `CLUSTER FAILOVER`); [`shared_cluster`] is one per test
//!   binary. See the [`cluster`] module.
//! - [`FaultProxy`] is a TCP proxy in front of a server whose [`Mode`] (pass, delay,
//!   blackhole, reset) can be switched while a test runs, with a count of accepted
//!   connections (to bound reconnect attempts). See the [`proxy`] module.
//!
//! A missing `redis-server` binary is an error whose message carries the install command
//! ([`INSTALL_HINT`]); tests must fail on it, never skip.
//!
//! ```no_run
//! # fn main() -> Result<(), cache_testkit::Error> {
//! use cache_testkit::{RedisServer, ServerOptions};
//!
//! let server = RedisServer::start()?;
//! assert_eq!(server.cli(&["SET", "k", "v"])?.trim(), "OK");
//!
//! let locked = ServerOptions::new().with_requirepass("s3cret").start()?;
//! println!("{}", locked.url()); // redis://127.0.0.1:PORT/ (no password in it)
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod cluster;
pub mod proxy;
pub mod sentinel;

// Private modules, each using only the ones listed before it: error; sys (the system calls);
// process (binaries, ports, the spawner thread); certs; server (RedisServer, ServerOptions).
// cluster and sentinel build on server; proxy needs only error.
mod certs;
mod error;
mod process;
mod server;
mod sys;

pub use certs::TestCerts;
pub use cluster::{shared_cluster, ClusterNode, ClusterOptions, RedisCluster, Role, SlotMigration};
pub use error::{Error, Result};
pub use process::{find_binary, free_port, INSTALL_HINT};
pub use proxy::{FaultProxy, Mode};
pub use sentinel::{shared_sentinel, RedisSentinel, SentinelOptions};
pub use server::{shared_redis, RedisServer, ServerOptions, CLI_TIMEOUT, DEFAULT_STARTUP_TIMEOUT};
