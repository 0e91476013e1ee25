//! Project automation: `cargo xtask <command>`.
//!
//! - `test`  — format check, clippy, the whole test suite (starts its own Redis servers), the
//!   demo's unit tests and a build of it, and every example (against a throwaway Redis and
//!   Redis Cluster).
//!   Test targets with `required-features` run (and are linted) with those features, one
//!   extra `cargo test` per package that has some; the run fails if any test target listed
//!   by `cargo metadata` did not run (see `targets`).
//! - `sim [--seeds N] [--seed S]` — the deterministic simulation test (test `simulation` of
//!   tiercache) with its output shown; `--seeds N` sets `SIM_SEEDS=N` (how many seeds),
//!   `--seed S` sets `SIM_SEED=S` (replay that one seed).
//! - `demo`  — the main job: starts a throwaway Redis (or, without redis-server, says so and
//!   uses the embedded in-process L2) and runs the `demo` crate in release mode: two HTTP
//!   instances in front of SQLite, a load generator, a results table, the same load with the
//!   cache off beside it and a chart of both (`target/demo/cache-off-vs-on.svg`).
//!   `--redis-url URL` uses an existing Redis; other arguments go to the demo (`cargo xtask
//!   demo --help`).
//! - `examples` — every example in `crates/cache-tiered/examples` (the last step of `test`).
//! - `bench` — starts its own Redis, runs the benchmarks side by side with the peers, prints one
//!   table and writes `target/bench/report.json`, `target/bench/report.md` and
//!   `target/bench/chart.svg`; `--compare old-report.json` prints the change per workload.
//! - `redis` — starts a throwaway redis-server in the foreground (Ctrl-C stops it).
//! - `cluster up|down` — a throwaway 6-node Redis Cluster on ports 7000-7005 in the foreground
//!   (Ctrl-C stops it; `down` stops one recorded in `target/cluster/pids`).
//! - `package` — `cargo package` (verified) of every publishable crate in dependency order
//!   (the last step of `test`); `features` — each library crate with no default features and
//!   with each feature alone (see `package.rs`).
//!
//! `std`, cache-testkit (its throwaway redis-server and cluster), serde_json (the bench
//! records, `cargo metadata`) and indicatif (the bench progress bar): no `sh -c`, every
//! program is run with explicit arguments.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cache_testkit::{RedisCluster, RedisServer};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

mod cluster;
mod cycles;
mod package;
mod report;
mod targets;

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("sim") => sim(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("examples") => run_examples(),
        Some("bench") => bench(&args[1..]),
        Some("redis") => redis(),
        Some("cluster") => cluster::cluster(&args[1..]),
        Some("package") => package::package(),
        Some("features") => package::features(),
        Some("cycles") => cycles::check(),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|sim|demo|examples|bench|redis|cluster|package|features|cycles>\n\
                 \n  test [--quick]   fmt, clippy, all tests (own Redis servers), examples;\
                 \n                   tests with required-features run with them, and the\
                 \n                   run fails if any test target was skipped\
                 \n  sim [--seeds N] [--seed S]\
                 \n                   the deterministic simulation test (tiercache's tests/\
                 \n                   simulation.rs) with --nocapture; --seeds N: SIM_SEEDS=N\
                 \n                   seeds, --seed S: SIM_SEED=S replays that one seed\
                 \n  demo [args]      the end-to-end demo on a throwaway Redis (--help: its options)\
                 \n  examples         every example, on a throwaway Redis and Redis Cluster\
                 \n  bench [--quick]  benchmarks side by side with the peers, one report\
                 \n                   (--report-only: redo the report from target/bench/raw;\
                 \n                   --compare old-report.json: the change per workload)\
                 \n  redis            a throwaway redis-server in the foreground\
                 \n  cluster up|down  a throwaway 6-node Redis Cluster (ports 7000-7005)\
                 \n  package          cargo package (verified) of every publishable crate, in\
                 \n                   dependency order (the last step of test)\
                 \n  features         each library with no default features and with each\
                 \n                   feature alone (cargo check, -D warnings)\
                 \n  cycles           no module of a library crate imports its way back to\
                 \n                   itself (also a step of test)"
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

/// `cargo xtask test [--quick]` (`--quick`: no fmt, clippy or rustdoc).
fn test(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    require_redis()?;
    let targets = targets::workspace_targets()?;
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
        // The tests, examples and benches that need a feature are left out of the workspace
        // run above: one run per package, with the features they need.
        for g in targets::gated(&targets, &["test", "example", "bench"]) {
            let mut clippy = cargo();
            clippy
                .arg("clippy")
                .args(g.args())
                .args(["--", "-D", "warnings"]);
            run(
                clippy,
                &format!("cargo clippy {} -D warnings", g.describe()),
            )?;
        }
    }
    check_alert_rules()?;
    // No module cycle in any library crate (see cycles.rs).
    cycles::check()?;
    // The demo (axum, SQLite) stays out of the workspace test build (`targets::NO_TESTS`):
    // its unit tests (comparison math, SVG chart, options) run on their own below, and the
    // demo itself is compiled once there.
    let mut runs = targets::Runs::default();
    let mut workspace: Vec<String> = vec!["--workspace".into(), "--all-targets".into()];
    for package in targets::NO_TESTS {
        workspace.extend(["--exclude".to_owned(), (*package).to_owned()]);
    }
    runs.test(&workspace, "cargo test (unit, integration, examples build)")?;
    // The test targets with required-features that the run above left out.
    let started = Instant::now();
    for g in runs.gated_left_out(&targets) {
        runs.test(&g.args(), &format!("cargo test {}", g.describe()))?;
    }
    eprintln!(
        "xtask: the feature-gated test runs took {:.0?}",
        started.elapsed()
    );
    runs.check(&targets)?;
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc", "--exclude", "demo"]);
    run(doc, "cargo test --doc")?;
    // Doc examples behind a feature (e.g. `cache_tiered::blocking`) compile and run too: each
    // package with feature-gated targets once more, with the union of their features.
    for g in targets::gated(&targets, &["test", "example"]) {
        let mut doc = cargo();
        doc.args([
            "test",
            "--doc",
            "-p",
            &g.package,
            "--features",
            &g.features.join(","),
        ]);
        run(
            doc,
            &format!(
                "cargo test --doc -p {} --features {}",
                g.package,
                g.features.join(",")
            ),
        )?;
    }
    if !quick {
        let mut rustdoc = cargo();
        rustdoc
            .args(["doc", "--workspace", "--no-deps", "--exclude", "benches"])
            .env("RUSTDOCFLAGS", "-D warnings");
        run(rustdoc, "cargo doc --no-deps (no warnings)")?;
    }
    let started = Instant::now();
    let mut demo_tests = cargo();
    demo_tests.args(["test", "-p", "demo"]);
    run(demo_tests, "cargo test -p demo (the demo's unit tests)")?;
    let mut demo = cargo();
    demo.args(["build", "-p", "demo"]);
    run(demo, "cargo build -p demo (the demo compiles)")?;
    eprintln!("xtask: demo tests and build took {:.0?}", started.elapsed());
    run_examples()?;
    // Each library crate builds with no default features and with each feature alone.
    package::features()?;
    // Every publishable crate packages (and its tarball builds): see `package.rs`.
    package::package()?;
    Ok(())
}

/// `cargo xtask sim [--seeds N] [--seed S]`: the deterministic simulation test (test target
/// `simulation` of tiercache) with `--nocapture`; `SIM_SEEDS=N` sets how many seeds it
/// runs, `SIM_SEED=S` replays one seed.
fn sim(args: &[String]) -> Result<()> {
    const USAGE: &str = "usage: cargo xtask sim [--seeds N] [--seed S]";
    let mut seeds: Option<String> = None;
    let mut seed: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (a.as_str(), None),
        };
        let slot = match flag {
            "--seeds" => &mut seeds,
            "--seed" => &mut seed,
            _ => return Err(format!("sim: unknown argument {a:?} ({USAGE})")),
        };
        let value = inline
            .or_else(|| it.next().cloned())
            .filter(|v| !v.is_empty() && !v.starts_with("--"))
            .ok_or_else(|| format!("sim: {flag} needs a value ({USAGE})"))?;
        *slot = Some(value);
    }
    if let Some(n) = &seeds {
        if !matches!(n.parse::<u64>(), Ok(count) if count > 0) {
            return Err(format!("sim: --seeds wants a positive number, not {n:?}"));
        }
    }
    let targets = targets::workspace_targets()?;
    let simulation = targets
        .iter()
        .find(|t| t.package == "cache-tiered" && t.is("test") && t.name == "simulation")
        .ok_or(
            "sim: tiercache has no test target `simulation` (crates/cache-tiered/tests/simulation.rs)",
        )?;
    let mut c = cargo();
    c.args(["test", "-p", "cache-tiered", "--test", "simulation"]);
    if !simulation.required_features.is_empty() {
        c.args(["--features", &simulation.required_features.join(",")]);
    }
    c.args(["--", "--nocapture"]);
    let mut what = String::from("cargo test -p cache-tiered --test simulation -- --nocapture");
    if let Some(n) = &seeds {
        c.env("SIM_SEEDS", n);
        what.push_str(&format!(" (SIM_SEEDS={n})"));
    }
    if let Some(s) = &seed {
        c.env("SIM_SEED", s);
        what.push_str(&format!(" (SIM_SEED={s})"));
    }
    run(c, &what)
}

/// Every example of tiercache (from `cargo metadata`), each run with its
/// `required-features`, against a throwaway Redis and (for the cluster example) a throwaway
/// Redis Cluster.
fn run_examples() -> Result<()> {
    let mut examples: Vec<targets::Target> = targets::workspace_targets()?
        .into_iter()
        .filter(|t| t.package == "cache-tiered" && t.is("example"))
        .collect();
    examples.sort_by(|a, b| a.name.cmp(&b.name));
    let server = start_redis()?;
    // The cluster example runs against a real throwaway cluster (about 5 s to start).
    let cluster = if examples.iter().any(|e| e.name == "cluster") {
        let started = Instant::now();
        let c = RedisCluster::start().map_err(|e| format!("cannot start a cluster: {e}"))?;
        eprintln!(
            "xtask: Redis Cluster for the examples up in {:.1?}: {}",
            started.elapsed(),
            c.urls().join(",")
        );
        Some(c)
    } else {
        None
    };
    for example in examples {
        let name = &example.name;
        let mut c = cargo();
        c.args(["run", "--quiet", "-p", "cache-tiered", "--example", name])
            .env("REDIS_URL", server.url());
        if !example.required_features.is_empty() {
            c.args(["--features", &example.required_features.join(",")]);
        }
        if let Some(cluster) = &cluster {
            c.env("CLUSTER_URLS", cluster.urls().join(","));
        }
        if name == "any_backend" {
            c.env("TIERCACHE_L2_URL", server.url());
        }
        run(c, &format!("example {name}"))?;
        if name == "any_backend" {
            // The same code, the backend switched by URL and feature alone.
            let mut memory = cargo();
            memory
                .args(["run", "--quiet", "-p", "cache-tiered", "--example", name])
                .env("TIERCACHE_L2_URL", "memory://");
            run(memory, "example any_backend on memory://")?;
            if let Some(cluster) = &cluster {
                let hosts: Vec<String> = cluster
                    .urls()
                    .iter()
                    .map(|u| {
                        u.trim_start_matches("redis://")
                            .trim_end_matches('/')
                            .to_owned()
                    })
                    .collect();
                let mut on_cluster = cargo();
                on_cluster
                    .args([
                        "run",
                        "--quiet",
                        "-p",
                        "cache-tiered",
                        "--features",
                        "cluster",
                    ])
                    .args(["--example", name])
                    .env(
                        "TIERCACHE_L2_URL",
                        format!("redis+cluster://{}", hosts.join(",")),
                    );
                run(on_cluster, "example any_backend on redis+cluster://")?;
            }
        }
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
        Some(u) => {
            // Never print a password that the URL may carry.
            let shown = match (u.split_once("://"), u.rfind('@')) {
                (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &u[at..]),
                _ => u.clone(),
            };
            eprintln!("xtask: the demo uses the Redis at {shown} (--redis-url)");
            Some(u)
        }
        None => match start_redis() {
            Ok(s) => {
                server = s;
                eprintln!(
                    "xtask: started a throwaway redis-server at {} (stopped when the demo ends)",
                    server.url()
                );
                Some(server.url())
            }
            Err(e) => {
                eprintln!(
                    "xtask: {e}\n\
                     xtask: NO REDIS: running the demo on the EMBEDDED in-process L2 instead \
                     (both instances share one in-memory store; install redis-server for the real thing)"
                );
                None
            }
        },
    };
    let mut c = cargo();
    c.args(["run", "--release", "-p", "demo", "--"]);
    c.args(&rest);
    match url {
        Some(u) => {
            c.env("REDIS_URL", u);
        }
        None => {
            c.arg("--embedded-l2");
        }
    }
    run(
        c,
        "demo (cargo run --release -p demo; the first build takes a few minutes)",
    )
}

fn bench(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let report_only = args.iter().any(|a| a == "--report-only");
    let mut compare_with: Option<PathBuf> = None;
    let mut passthrough: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            // `cargo xtask bench -- propagation`: the `--` is ours, not the benches'.
            "--quick" | "--report-only" | "--" => {}
            "--compare" => {
                let p = it.next().ok_or("--compare needs a report.json")?;
                compare_with = Some(PathBuf::from(p));
            }
            _ => passthrough.push(a.clone()),
        }
    }
    // An earlier report to compare with: read it now, before this run overwrites it.
    let old_report = match &compare_with {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?),
        None => None,
    };
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
        // Build first, so the timed run and the progress bar cover the benches only.
        let mut build = cargo();
        build.args(["bench", "-p", "benches", "--features", "peers", "--no-run"]);
        run(build, "building the benchmarks (release)")?;
        let before = conditions();
        let server = start_redis()?;
        let started = Instant::now();
        let targets = bench_targets();
        let progress = Progress::new(targets.len());
        for (i, name) in targets.iter().enumerate() {
            progress.step(i, name);
            let mut c = cargo();
            c.args([
                "bench",
                "--quiet",
                "-p",
                "benches",
                "--features",
                "peers",
                "--bench",
                name,
            ]);
            if name == "write_behind" {
                c.args(["--features", "write-behind"]);
            }
            c.env("REDIS_URL", server.url());
            c.env("BENCH_OUT_DIR", &raw_dir);
            if quick {
                c.env("BENCH_QUICK", "1");
            }
            if !passthrough.is_empty() {
                c.arg("--");
                c.args(&passthrough);
            }
            let log = raw_dir.join(format!("{name}.log"));
            let file = std::fs::File::create(&log)
                .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
            let err = file
                .try_clone()
                .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
            c.stdout(Stdio::from(file)).stderr(Stdio::from(err));
            let status = c
                .status()
                .map_err(|e| format!("bench {name}: cannot start: {e}"))?;
            if !status.success() {
                progress.say(&format!(
                    "xtask: bench {name} failed ({status}); its output is in {}",
                    log.display()
                ));
                let line = report::line(&json!({
                    "type": "result",
                    "workload": format!("{name} (bench failed)"),
                    "subject": "tiercache",
                    "role": "tiercache",
                    "label": "tiercache",
                    "metric": "ns_per_op",
                    "error": format!("not run: bench failed ({status}), see {}", log.display()),
                }));
                let _ = std::fs::write(raw_dir.join(format!("zz_failed_{name}.jsonl")), line);
            }
        }
        progress.finish();
        drop(server);
        let after = conditions();
        let line = report::line(&json!({
            "type": "conditions",
            "quick": quick,
            "cores": before.cores,
            "machine": before.machine,
            "unix_time": before.unix_time,
            "seconds": started.elapsed().as_secs_f64().round(),
            "loadavg_before": before.loadavg,
            "loadavg_after": after.loadavg,
            "rustc_running_before": before.rustc_running,
            "rustc_running_after": after.rustc_running,
        }));
        std::fs::write(raw_dir.join("_conditions.jsonl"), line)
            .map_err(|e| format!("cannot write the run conditions: {e}"))?;
    }
    report::write(&raw_dir, &bench_dir())?;
    if let Some(old) = old_report {
        let old_copy = bench_dir().join("compare-old.json");
        std::fs::write(&old_copy, old)
            .map_err(|e| format!("cannot write {}: {e}", old_copy.display()))?;
        let regressions = report::compare(&old_copy, &bench_dir().join("report.json"), 10.0)?;
        if regressions > 0 {
            eprintln!("xtask: {regressions} workload(s) worse by more than 10%");
        }
    }
    Ok(())
}

/// The bench targets of `benches/Cargo.toml`, in file order (write_behind only when its file
/// exists).
fn bench_targets() -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join("benches/Cargo.toml")).unwrap_or_default();
    let mut names = Vec::new();
    let mut in_bench = false;
    for line in manifest.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_bench = l == "[[bench]]";
            continue;
        }
        if in_bench {
            if let Some(v) = l.strip_prefix("name") {
                let name = v.trim_start_matches([' ', '=']).trim().trim_matches('"');
                if root().join(format!("benches/benches/{name}.rs")).exists() {
                    names.push(name.to_owned());
                }
            }
        }
    }
    names
}

/// The progress of the bench targets on stderr: on a terminal one bar redrawn in place,
/// `xtask: [#########.....................] 3/10 l2_hit (00:01:20)`; elsewhere (CI logs,
/// where indicatif hides the bar) one line as each target starts,
/// `xtask: bench 4/10 l2_hit (00:01:20)`.
struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        // Draws on stderr, and nothing when stderr is not a terminal.
        let bar = ProgressBar::new(total as u64);
        if let Ok(style) =
            ProgressStyle::with_template("xtask: [{bar:30}] {pos}/{len} {msg} ({elapsed_precise})")
        {
            bar.set_style(style.progress_chars("#."));
        }
        // The elapsed time moves while a target runs.
        bar.enable_steady_tick(Duration::from_secs(1));
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    /// Target `i` (from 0) starts.
    fn step(&self, i: usize, name: &str) {
        self.bar.set_position(i as u64);
        self.bar.set_message(name.to_owned());
        if self.bar.is_hidden() {
            eprintln!(
                "xtask: bench {}/{} {name} ({})",
                i + 1,
                self.bar.length().unwrap_or(0),
                hms(self.started.elapsed())
            );
        }
    }

    /// A line above the bar (or just the line without one).
    fn say(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    fn finish(&self) {
        self.bar.finish_with_message("done");
        if self.bar.is_hidden() {
            eprintln!("xtask: benches done ({})", hms(self.started.elapsed()));
        }
    }
}

/// `00:01:20`.
fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
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
    /// CPU model and memory, from /proc.
    machine: String,
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
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    Conditions {
        machine: format!("{cpu}, {mem_gib:.1} GiB RAM"),
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
    let server = start_redis()?;
    eprintln!(
        "xtask: redis-server listening at {} (Ctrl-C stops it)",
        server.url()
    );
    // Foreground until the server exits (Ctrl-C reaches it too) or this process is stopped.
    while server.is_running() {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// A throwaway redis-server on a free port (cache-testkit's, which retries when a port is
/// taken meanwhile and waits until the server answers), killed on drop.
fn start_redis() -> Result<RedisServer> {
    require_redis()?;
    RedisServer::start().map_err(|e| format!("cannot start redis-server: {e}"))
}
