//! `cargo xtask cluster up|down`: a throwaway 6-node Redis Cluster (3 primaries, 3 replicas)
//! for manual use, on ports 7000-7005 by default (`--port N` for the first one).
//!
//! `up` runs in the foreground and stops the nodes on Ctrl-C (they share the terminal's
//! process group) or when it exits; it also writes their process ids to
//! `target/cluster/pids`, which `down` uses to stop a cluster whose `up` was killed or
//! backgrounded. Node directories (logs, `nodes-PORT.conf`) live in `target/cluster/PORT/`.
//!
//! The examples of `cargo xtask test` use cache-testkit's cluster on free ports instead.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{root, Result};

const NODES: u16 = 6;

fn dir() -> PathBuf {
    root().join("target").join("cluster")
}

fn pid_file() -> PathBuf {
    dir().join("pids")
}

pub(crate) fn cluster(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("up") => up(&args[1..]),
        Some("down") => down(),
        _ => Err(
            "usage: cargo xtask cluster up [--port FIRST_PORT] | cargo xtask cluster down".into(),
        ),
    }
}

/// The nodes, killed on drop (also when starting fails half-way).
struct Nodes {
    children: Vec<Child>,
    /// Where their process ids are recorded (`up` only), removed on drop.
    pid_file: Option<PathBuf>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(file) = &self.pid_file {
            let _ = std::fs::remove_file(file);
        }
    }
}

fn up(args: &[String]) -> Result<()> {
    let first: u16 = match args {
        [] => 7000,
        [flag, port] if flag == "--port" => port
            .parse()
            .map_err(|_| format!("--port wants a port number, not `{port}`"))?,
        _ => return Err("usage: cargo xtask cluster up [--port FIRST_PORT]".into()),
    };
    let started = Instant::now();
    let mut cluster = Cluster::start(first, dir(), true)?;
    eprintln!(
        "xtask: Redis Cluster up in {:?}: 3 primaries + 3 replicas on 127.0.0.1:{}-{}\n\
         seed URLs: {}\n\
         logs in {}; Ctrl-C stops it",
        started.elapsed(),
        first,
        first + NODES - 1,
        cluster.seeds(),
        dir().display()
    );
    // Foreground until the nodes exit (Ctrl-C reaches them too) or this process is stopped.
    for child in &mut cluster.nodes.children {
        let _ = child.wait();
    }
    Ok(())
}

/// A running throwaway cluster; its nodes are stopped when it is dropped.
pub(crate) struct Cluster {
    nodes: Nodes,
    ports: Vec<u16>,
}

impl Cluster {
    /// Six nodes on `first..first+6` (and their bus ports, +10000), node directories under
    /// `base`, joined into a cluster with `redis-cli --cluster create`; returns once every
    /// node reports `cluster_state:ok`. With `record`, the process ids go to
    /// `target/cluster/pids` for `cargo xtask cluster down`.
    pub(crate) fn start(first: u16, base: PathBuf, record: bool) -> Result<Cluster> {
        if first > 65535 - 10000 - NODES {
            return Err(format!(
                "the first port must be at most {} (cluster bus ports are port + 10000)",
                65535 - 10000 - NODES
            ));
        }
        crate::require_redis()?;
        let ports: Vec<u16> = (first..first + NODES).collect();
        if let Some(busy) = ports
            .iter()
            .find(|p| TcpStream::connect(("127.0.0.1", **p)).is_ok())
        {
            return Err(format!(
                "port {busy} is in use (a cluster already up? `cargo xtask cluster down` stops it)"
            ));
        }
        let mut nodes = Nodes {
            children: Vec::new(),
            pid_file: record.then(pid_file),
        };
        for port in &ports {
            let node_dir = base.join(port.to_string());
            let _ = std::fs::remove_dir_all(&node_dir);
            std::fs::create_dir_all(&node_dir)
                .map_err(|e| format!("cannot create {}: {e}", node_dir.display()))?;
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&node_dir)
                .args(["--logfile", "redis.log"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start redis-server: {e}"))?;
            nodes.children.push(child);
        }
        if let Some(file) = &nodes.pid_file {
            let pids: Vec<String> = nodes.children.iter().map(|c| c.id().to_string()).collect();
            std::fs::write(file, pids.join("\n") + "\n")
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        }
        for (port, child) in ports.iter().zip(nodes.children.iter_mut()) {
            // Ready when it answers PING (a bare TCP connect can succeed without a listener:
            // a connection to a free local port may connect to itself).
            wait(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(None)) && pong(*port)
            })
            .map_err(|_| {
                format!(
                    "redis-server on port {port} did not start (is the port or its bus port {} taken? see {}/redis.log)",
                    port + 10000,
                    base.join(port.to_string()).display()
                )
            })?;
        }
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !status.success() {
            return Err(format!("redis-cli --cluster create failed ({status})"));
        }
        wait(Duration::from_secs(30), || {
            ports.iter().all(|p| {
                Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "CLUSTER", "INFO"])
                    .stderr(Stdio::null())
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            })
        })
        .map_err(|_| "the cluster did not reach cluster_state:ok within 30 s".to_owned())?;
        Ok(Cluster { nodes, ports })
    }

    /// Comma-separated seed URLs of every node.
    pub(crate) fn seeds(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn down() -> Result<()> {
    let text = match std::fs::read_to_string(pid_file()) {
        Ok(t) => t,
        Err(_) => {
            eprintln!(
                "xtask: no cluster recorded in {} (nothing to stop)",
                pid_file().display()
            );
            return Ok(());
        }
    };
    for pid in text.lines().filter(|l| !l.trim().is_empty()) {
        let pid = pid.trim();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        // Only our own nodes: the pid must still be a redis-server.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.trim().starts_with("redis-server") {
            continue;
        }
        let _ = Command::new("kill").args(["-TERM", pid]).status();
    }
    let _ = std::fs::remove_file(pid_file());
    eprintln!("xtask: cluster stopped");
    Ok(())
}

/// Whether the server on `port` answers `PING`.
fn pong(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "PING"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
        .unwrap_or(false)
}

fn wait(limit: Duration, mut done: impl FnMut() -> bool) -> std::result::Result<(), ()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
