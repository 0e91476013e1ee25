//! Project automation: `cargo xtask <command>`.
//!
//! - `test`  — format check, clippy, the whole test suite (starts its own Redis servers), examples.
//! - `demo`  — the main job: starts a throwaway Redis and runs the end-to-end demo.
//! - `bench` — starts its own Redis, runs the benchmarks side by side with the peers, prints one
//!   table and writes `target/bench/report.json` and `target/bench/report.md`.
//! - `redis` — starts a throwaway redis-server in the foreground (Ctrl-C stops it).
//! - `cluster up|down` — a throwaway 6-node Redis Cluster on ports 7000-7005 in the foreground
//!   (Ctrl-C stops it; `down` stops one recorded in `target/cluster/pids`).
//!
//! Only `std`: no `sh -c`, every program is run with explicit arguments.

use std::env;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod cluster;
mod report;

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("redis") => redis(),
        Some("cluster") => cluster::cluster(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|demo|bench|redis|cluster>\n\
                 \n  test [--quick]   fmt, clippy, all tests (own Redis servers), examples\
                 \n  demo [args]      the end-to-end demo on a throwaway Redis\
                 \n  bench [--quick]  benchmarks side by side with the peers, one report\
                 \n                   (--report-only: redo the report from target/bench/raw)\
                 \n  redis            a throwaway redis-server in the foreground\
                 \n  cluster up|down  a throwaway 6-node Redis Cluster (ports 7000-7005)"
            );
            Err("no command".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    let manifest = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    Path::new(&manifest)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what}: failed ({status})"))
    }
}

/// `promtool check rules` and `promtool test rules` on the alert rules in `docs/`, when
/// promtool is installed (Debian: `apt-get install prometheus`; `.ci/run` installs it).
fn check_alert_rules() -> Result<()> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        eprintln!("xtask: promtool not found: skipping the alert rule checks (apt-get install prometheus)");
        return Ok(());
    }
    let mut check = Command::new("promtool");
    check
        .args(["check", "rules", "docs/alerts.yml"])
        .current_dir(root());
    run(check, "promtool check rules docs/alerts.yml")?;
    let mut test = Command::new("promtool");
    test.args(["test", "rules", "docs/alerts.test.yml"])
        .current_dir(root());
    run(test, "promtool test rules docs/alerts.test.yml")
}

fn require_redis() -> Result<()> {
    for bin in ["redis-server", "redis-cli"] {
        let ok = Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!(
                "`{bin}` was not found. Install it with:\n    sudo apt-get install -y redis-server redis-tools"
            ));
        }
    }
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    require_redis()?;
    if !quick {
        let mut fmt = cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        run(fmt, "cargo fmt --check")?;
        let mut clippy = cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        run(clippy, "cargo clippy -D warnings")?;
    }
    check_alert_rules()?;
    let mut t = cargo();
    t.args(["test", "--workspace", "--all-targets"]);
    run(t, "cargo test (unit, integration, examples build)")?;
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"]);
    run(doc, "cargo test --doc")?;
    run_examples()?;
    Ok(())
}

fn examples() -> Vec<String> {
    let dir = root().join("crates/tiercache/examples");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let p = e.path();
                    (p.extension().and_then(|x| x.to_str()) == Some("rs"))
                        .then(|| p.file_stem()?.to_str().map(str::to_owned))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn run_examples() -> Result<()> {
    let server = RedisServer::start()?;
    for name in examples() {
        let mut c = cargo();
        c.args(["run", "--quiet", "-p", "tiercache", "--example", &name])
            .env("REDIS_URL", server.url());
        run(c, &format!("example {name}"))?;
    }
    Ok(())
}

fn demo(args: &[String]) -> Result<()> {
    let mut redis_url = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--redis-url" {
            redis_url = Some(it.next().ok_or("--redis-url needs a value")?.clone());
        } else {
            rest.push(a.clone());
        }
    }
    let server;
    let url = match redis_url {
        Some(u) => Some(u),
        None => match RedisServer::start() {
            Ok(s) => {
                server = s;
                Some(server.url())
            }
            Err(e) => {
                eprintln!(
                    "xtask: {e}\nxtask: running the demo on the embedded in-process L2 instead"
                );
                None
            }
        },
    };
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "-p",
        "tiercache",
        "--example",
        "demo",
        "--",
    ]);
    c.args(&rest);
    if let Some(u) = url {
        c.env("REDIS_URL", u);
    }
    run(c, "demo")
}

fn bench(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let report_only = args.iter().any(|a| a == "--report-only");
    let raw_dir = bench_dir().join("raw");
    if !report_only {
        require_redis()?;
        // Results of an earlier run must not mix with this one.
        if raw_dir.exists() {
            std::fs::remove_dir_all(&raw_dir)
                .map_err(|e| format!("cannot clear {}: {e}", raw_dir.display()))?;
        }
        std::fs::create_dir_all(&raw_dir)
            .map_err(|e| format!("cannot create {}: {e}", raw_dir.display()))?;
        let before = conditions();
        let server = RedisServer::start()?;
        let mut c = cargo();
        c.args(["bench", "-p", "benches", "--features", "peers"]);
        c.env("REDIS_URL", server.url());
        c.env("BENCH_OUT_DIR", &raw_dir);
        if quick {
            c.env("BENCH_QUICK", "1");
        }
        let passthrough: Vec<&String> = args
            .iter()
            .filter(|a| *a != "--quick" && *a != "--report-only")
            .collect();
        if !passthrough.is_empty() {
            c.arg("--");
            c.args(passthrough);
        }
        let started = Instant::now();
        run(c, "benchmarks")?;
        drop(server);
        let after = conditions();
        let line = format!(
            "{{\"type\":\"conditions\",\"quick\":{quick},\"cores\":{},\"unix_time\":{},\
             \"seconds\":{:.0},\"loadavg_before\":{},\"loadavg_after\":{},\
             \"rustc_running_before\":{},\"rustc_running_after\":{}}}\n",
            before.cores,
            before.unix_time,
            started.elapsed().as_secs_f64(),
            report::json_str(&before.loadavg),
            report::json_str(&after.loadavg),
            before.rustc_running,
            after.rustc_running,
        );
        std::fs::write(raw_dir.join("_conditions.jsonl"), line)
            .map_err(|e| format!("cannot write the run conditions: {e}"))?;
    }
    report::write(&raw_dir, &bench_dir())
}

fn bench_dir() -> PathBuf {
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root().join(t) })
        .unwrap_or_else(|| root().join("target"));
    target.join("bench")
}

/// What the machine was doing around a bench run.
struct Conditions {
    cores: usize,
    unix_time: u64,
    loadavg: String,
    rustc_running: usize,
}

fn conditions() -> Conditions {
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    // Other compilers running at the same time (concurrent builds skew the figures).
    let rustc_running = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .map(|c| c.trim() == "rustc")
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0);
    Conditions {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        loadavg,
        rustc_running,
    }
}

fn redis() -> Result<()> {
    require_redis()?;
    let mut server = RedisServer::start()?;
    eprintln!(
        "xtask: redis-server listening at {} (Ctrl-C stops it)",
        server.url()
    );
    let _ = server.child.wait();
    Ok(())
}

/// A throwaway redis-server on a free port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl RedisServer {
    fn start() -> Result<Self> {
        require_redis()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))?;
        let dir = TempDir::new()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = env::temp_dir().join(format!("xtask-redis-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| format!("temp dir: {e}"))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
