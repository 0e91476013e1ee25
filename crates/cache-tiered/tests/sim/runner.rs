//! Seeds, threads and the report.
//!
//! - `SIM_SEEDS=N`: run seeds `0..N` (default [`DEFAULT_SEEDS`]).
//! - `SIM_SEED=S`: run seed `S` alone (and print its trace if it fails).
//! - `SIM_STEPS=K`: run only the first `K` steps of each seed (to shorten a failing seed).
//! - `SIM_THREADS=T`: OS threads for the in-memory run (default: available cores).
//! - `SIM_TRACE=1`: print the trace of every seed run, failing or not.
//! - `SIM_LIST=N`: list up to `N` failing seeds one by one (default 20).
//! - `SIM_REDIS_SEEDS=N`: seeds of the run on a real Redis (default [`DEFAULT_REDIS_SEEDS`]).
//!
//! Every in-memory seed runs on its own current-thread tokio runtime with paused time, so
//! sleeps cost nothing and a seed replays the same way. A failing seed prints the command
//! that replays it; the shortest failing prefix of one seed per kind of failure is found and
//! printed with its trace.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_testkit::FaultProxy;
use cache_tiered::{MemoryBus, MemoryStore};

use super::clock::VirtualClock;
use super::faults::Faults;
use super::model::Db;
use super::plan::{plan, SeedConfig, Step};
use super::rng::{Failure, Failures, Trace};
use super::world::{Backend, Ctx, Timing, World};

/// Seeds of the in-memory run when `SIM_SEEDS` is not set.
pub const DEFAULT_SEEDS: u64 = 12_000;
/// Seeds of the Redis run when `SIM_REDIS_SEEDS` is not set.
pub const DEFAULT_REDIS_SEEDS: u64 = 20;
/// Longest the Redis run starts new seeds.
const REDIS_BUDGET: Duration = Duration::from_secs(25);
/// Most steps of a seed on Redis.
const REDIS_MAX_STEPS: usize = 30;
/// Failing seeds listed one by one unless `SIM_LIST` says otherwise.
const LISTED: usize = 20;

/// What one seed did.
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Steps run.
    pub steps: usize,
    /// Broken invariants.
    pub failures: Vec<Failure>,
    /// The trace.
    pub trace: Vec<String>,
}

impl Outcome {
    /// The first invariant broken: the one to look at (later ones are often its echoes).
    fn primary(&self) -> &'static str {
        self.failures.first().map_or("none", |f| f.category)
    }

    fn categories(&self) -> Vec<&'static str> {
        let mut c: Vec<&'static str> = self.failures.iter().map(|f| f.category).collect();
        c.sort_unstable();
        c.dedup();
        c
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("ignoring {name}={v:?}: not a number");
            None
        }
    }
}

fn max_steps() -> usize {
    env_u64("SIM_STEPS").map_or(usize::MAX, |n| n as usize)
}

fn describe_cfg(seed: u64, cfg: &SeedConfig) -> String {
    format!(
        "seed {seed}: {} instances, {} steps, faults: {}; fail_safe={} timeouts={} \
         short_ttl={} jitter={} breaker={} batch_window={} on_loss={:?}",
        cfg.nodes,
        cfg.steps,
        cfg.profile.describe(),
        cfg.fail_safe,
        cfg.timeouts,
        cfg.short_ttl,
        cfg.jitter,
        cfg.breaker,
        cfg.batch_window,
        cfg.on_loss
    )
}

/// What one seed runs with.
struct Setup {
    seed: u64,
    cfg: SeedConfig,
    steps: Vec<Step>,
    timing: Timing,
    prefix: String,
    /// In memory (the bus counters can be checked exactly).
    memory: bool,
}

/// Run the steps, settle and check, on `rt`, catching panics.
fn drive(
    rt: &tokio::runtime::Runtime,
    setup: Setup,
    make_backend: impl FnOnce() -> Backend,
) -> Outcome {
    let Setup {
        seed,
        cfg,
        steps,
        timing,
        prefix,
        memory,
    } = setup;
    let trace = rt.block_on(async { Trace::new() });
    let fails = Failures::default();
    let nsteps = steps.len();
    trace.log(describe_cfg(seed, &cfg));
    let ctx = Ctx {
        db: Arc::new(Db::default()),
        faults: Faults::new(cfg.profile, seed, trace.clone()),
        trace: trace.clone(),
        fails: fails.clone(),
        tags: Arc::default(),
        repairs: Arc::default(),
        cfg: Arc::new(cfg),
        timing,
    };
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async {
            match World::new(ctx.clone(), prefix, make_backend()).await {
                Ok(mut world) => {
                    world.run(steps).await;
                    world.settle().await;
                    world.check(memory).await;
                    world.teardown().await;
                }
                Err(e) => fails.add(&trace, "build-error", e),
            }
        });
    }));
    if let Err(panic) = run {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        fails.add(&trace, "panic", msg);
    }
    Outcome {
        seed,
        steps: nsteps,
        failures: fails.all(),
        trace: trace.lines(),
    }
}

/// One in-memory seed, at most `max_steps` steps.
pub fn run_memory_seed(seed: u64, max_steps: usize) -> Outcome {
    let (cfg, steps) = plan(seed, max_steps, 1.0);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Outcome {
                seed,
                steps: 0,
                failures: vec![Failure {
                    category: "runtime",
                    detail: e.to_string(),
                }],
                trace: Vec::new(),
            }
        }
    };
    // The engine draws instance ids, lease tokens and jitter from the thread's fastrand.
    fastrand::seed(seed);
    let setup = Setup {
        seed,
        cfg,
        steps,
        timing: Timing::memory(),
        prefix: "sim".into(),
        memory: true,
    };
    let outcome = drive(&rt, setup, || Backend::Memory {
        store: Arc::new(MemoryStore::with_max_value_size(1024 * 1024)),
        bus: MemoryBus::new(),
        clock: Arc::new(VirtualClock::new(1_700_000_000_000)),
    });
    drop(rt);
    outcome
}

/// One seed on a real Redis at `server`, through one fault proxy per instance.
pub fn run_redis_seed(seed: u64, server: std::net::SocketAddr) -> Outcome {
    let (cfg, steps) = plan(seed, max_steps().min(REDIS_MAX_STEPS), 0.25);
    let failed = |category: &'static str, detail: String| Outcome {
        seed,
        steps: 0,
        failures: vec![Failure { category, detail }],
        trace: Vec::new(),
    };
    let mut proxies = Vec::new();
    for _ in 0..cfg.nodes {
        match FaultProxy::start(server) {
            Ok(p) => proxies.push(p),
            Err(e) => return failed("runtime", format!("fault proxy: {e}")),
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failed("runtime", e.to_string()),
    };
    fastrand::seed(seed);
    let proxies = Arc::new(proxies);
    let setup = Setup {
        seed,
        cfg,
        steps,
        timing: Timing::redis(),
        prefix: format!("sim-{}-{seed}", std::process::id()),
        memory: false,
    };
    drive(&rt, setup, || Backend::Redis { proxies })
}

/// Run `seeds` on `threads` OS threads; keep the failing outcomes.
fn run_all(
    seeds: &[u64],
    threads: usize,
    budget: Option<Duration>,
    one: impl Fn(u64) -> Outcome + Sync,
) -> (usize, Vec<Outcome>) {
    let next = AtomicUsize::new(0);
    let ran = AtomicUsize::new(0);
    let failed: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                if budget.is_some_and(|b| start.elapsed() > b) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(seed) = seeds.get(i) else {
                    return;
                };
                let outcome = one(*seed);
                ran.fetch_add(1, Ordering::SeqCst);
                if !outcome.failures.is_empty() {
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(outcome);
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    failed.sort_by_key(|o| o.seed);
    (ran.into_inner(), failed)
}

fn replay_line(seed: u64, steps: Option<usize>) -> String {
    let steps = steps.map_or(String::new(), |k| format!("SIM_STEPS={k} "));
    format!("{steps}SIM_SEED={seed} cargo xtask sim --seed {seed}")
}

fn print_outcome(o: &Outcome) {
    eprintln!("---- trace of seed {} ({} steps) ----", o.seed, o.steps);
    for line in &o.trace {
        eprintln!("  {line}");
    }
    for f in &o.failures {
        eprintln!("  FAILED {}: {}", f.category, f.detail);
    }
    eprintln!("---- end of seed {} ----", o.seed);
}

/// The shortest prefix of `seed` that still fails with `category`, and its outcome.
fn shorten(seed: u64, steps: usize, category: &str) -> Option<(usize, Outcome)> {
    for k in 1..=steps {
        let o = run_memory_seed(seed, k);
        if o.failures.iter().any(|f| f.category == category) {
            return Some((k, o));
        }
    }
    None
}

/// The in-memory simulation: the body of the `simulation_in_memory` test.
pub fn memory_main() {
    let threads = env_u64("SIM_THREADS").map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n as usize,
    );
    let single = env_u64("SIM_SEED");
    let seeds: Vec<u64> = match single {
        Some(s) => vec![s],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let steps = max_steps();
    let start = Instant::now();
    let always = std::env::var("SIM_TRACE").is_ok_and(|v| v == "1");
    let (ran, failed) = run_all(&seeds, threads, None, |seed| {
        let mut o = run_memory_seed(seed, steps);
        if always {
            print_outcome(&o);
        }
        // Traces of failing seeds are printed from a replay: keeping hundreds of them costs
        // memory for nothing (the first line, the settings, is kept for the listing).
        o.trace.truncate(1);
        o
    });
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "simulation (in memory): {ran} seeds in {secs:.1} s ({:.0} seeds/s on {threads} \
         threads), {} failed",
        ran as f64 / secs.max(1e-9),
        failed.len()
    );
    if failed.is_empty() {
        return;
    }
    let listed = env_u64("SIM_LIST").map_or(LISTED, |n| n as usize);
    for o in failed.iter().take(listed) {
        eprintln!(
            "seed {} failed ({}): {}",
            o.seed,
            o.categories().join(", "),
            replay_line(o.seed, (steps != usize::MAX).then_some(steps))
        );
        if let Some(first) = o.trace.first() {
            eprintln!("    {first}");
        }
    }
    if failed.len() > listed {
        eprintln!("... and {} more failing seeds", failed.len() - listed);
    }
    // One seed per kind of failure, the one with the fewest steps, shortened further.
    let mut by_category: BTreeMap<&'static str, (usize, &Outcome)> = BTreeMap::new();
    for o in &failed {
        let e = by_category.entry(o.primary()).or_insert((0, o));
        e.0 += 1;
        if o.steps < e.1.steps {
            e.1 = o;
        }
    }
    let shorten_budget = Instant::now();
    let mut summary = Vec::new();
    for (category, (count, o)) in &by_category {
        let tried = shorten_budget.elapsed() < Duration::from_secs(20);
        let (k, shortest) = match tried.then(|| shorten(o.seed, o.steps, category)).flatten() {
            Some((k, s)) => (Some(k), Some(s)),
            None => (None, None),
        };
        let line = format!(
            "{category}: first failure of {count} seeds; shortest: {}{}",
            replay_line(o.seed, k),
            if tried && k.is_none() {
                " (did not fail again when shortened: replay it whole)"
            } else {
                ""
            }
        );
        eprintln!("{line}");
        if let Some(f) = o.failures.iter().find(|f| f.category == *category) {
            eprintln!("    {}", f.detail);
        }
        match shortest {
            Some(s) => print_outcome(&s),
            None => print_outcome(&run_memory_seed(o.seed, o.steps)),
        }
        summary.push(line);
    }
    panic!(
        "{} of {ran} seeds broke an invariant:\n{}",
        failed.len(),
        summary.join("\n")
    );
}

/// The same mix on a real redis-server through fault proxies: the body of the
/// `simulation_on_redis` test.
pub fn redis_main() {
    let server = match cache_testkit::shared_redis() {
        Ok(s) => s,
        Err(e) => panic!("cannot start redis-server: {e}"),
    };
    let addr = server.addr();
    let single = env_u64("SIM_SEED");
    let seeds: Vec<u64> = match single {
        Some(s) => vec![s],
        None => (0..env_u64("SIM_REDIS_SEEDS").unwrap_or(DEFAULT_REDIS_SEEDS)).collect(),
    };
    let start = Instant::now();
    let always = std::env::var("SIM_TRACE").is_ok_and(|v| v == "1");
    let (ran, failed) = run_all(&seeds, 4, Some(REDIS_BUDGET), |seed| {
        let o = run_redis_seed(seed, addr);
        if always {
            print_outcome(&o);
        }
        o
    });
    eprintln!(
        "simulation (redis): {ran} seeds in {:.1} s, {} failed",
        start.elapsed().as_secs_f64(),
        failed.len()
    );
    if failed.is_empty() {
        return;
    }
    let mut lines = Vec::new();
    for o in &failed {
        let line = format!(
            "seed {} failed ({}): SIM_SEED={} cargo test -p cache-tiered --test simulation \
             simulation_on_redis -- --nocapture (real time: a replay is not exact)",
            o.seed,
            o.categories().join(", "),
            o.seed
        );
        eprintln!("{line}");
        lines.push(line);
    }
    if let Some(o) = failed.iter().min_by_key(|o| o.steps) {
        print_outcome(o);
    }
    panic!(
        "{} of {ran} seeds on Redis broke an invariant:\n{}",
        failed.len(),
        lines.join("\n")
    );
}
