//! The plan of one seed: its settings (instances, cache options, fault profile) and its random
//! sequence of steps, drawn from the seed alone before anything runs.
//!
//! A step is one operation, a group of operations run concurrently (each starting after a
//! small delay of its own), a pause, or a fault window. A group never holds two writers of one key (two users racing to write one row is
//! the application's race, not the cache's), and an operation that changes many rows
//! (`invalidate_tag`, a clear after a bulk update) is the only writer of its group.

use super::faults::Profile;
use super::model::LoadPlan;
use super::rng::SimRng;

/// Keys of the main namespace.
pub const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];
/// Tags of the main namespace.
pub const TAGS: [&str; 2] = ["t0", "t1"];
/// Keys of the write-behind namespace.
pub const WB_KEYS: [&str; 3] = ["w0", "w1", "w2"];
/// The key of the final stampede check (never touched before it).
pub const COLD: &str = "cold";
/// The invalid key some batches carry.
pub const INVALID: &str = "";

/// The settings of one seed.
#[derive(Debug, Clone)]
pub struct SeedConfig {
    /// Instances (engines).
    pub nodes: usize,
    /// Steps to run.
    pub steps: usize,
    /// Faults to inject.
    pub profile: Profile,
    /// Fail-safe on (serve stale values when the loader fails).
    pub fail_safe: bool,
    /// Loader soft and hard timeouts on.
    pub timeouts: bool,
    /// Short TTLs (values expire during the run) and XFetch early refresh.
    pub short_ttl: bool,
    /// TTL jitter on.
    pub jitter: bool,
    /// Circuit breakers on.
    pub breaker: bool,
    /// A bus batching window instead of publishing at once.
    pub batch_window: bool,
    /// What L1 does after a bus loss (drawn apart from the rest: older seeds replay as before).
    pub on_loss: cache_tiered::core::ReconnectPolicy,
    /// Factor applied to every planned duration (loader times, pauses, fault windows).
    pub scale: f64,
}

impl SeedConfig {
    /// A planned duration in milliseconds, scaled.
    pub fn ms(&self, ms: u64) -> u64 {
        ((ms as f64) * self.scale) as u64
    }
}

/// One operation of the application.
#[derive(Debug, Clone)]
pub enum Op {
    /// `get`.
    Get {
        node: usize,
        handle: usize,
        key: &'static str,
    },
    /// `get_or_load`.
    GetOrLoad {
        node: usize,
        handle: usize,
        key: &'static str,
        plan: LoadPlan,
    },
    /// `get_or_load_optional`.
    GetOrLoadOpt {
        node: usize,
        handle: usize,
        key: &'static str,
        plan: LoadPlan,
    },
    /// `refresh` (a background reload from the row).
    Refresh {
        node: usize,
        handle: usize,
        key: &'static str,
        plan: LoadPlan,
    },
    /// `get_many`.
    GetMany {
        node: usize,
        handle: usize,
        keys: Vec<&'static str>,
    },
    /// `get_many_or_load`.
    GetManyOrLoad {
        node: usize,
        handle: usize,
        keys: Vec<&'static str>,
        plan: LoadPlan,
    },
    /// Update the row, then `set`.
    Set {
        node: usize,
        handle: usize,
        key: &'static str,
    },
    /// Update the row, then `set_with_tags`.
    SetWithTags {
        node: usize,
        handle: usize,
        key: &'static str,
        tags: Vec<&'static str>,
    },
    /// `write` (write-through: its writer updates the row).
    Write {
        node: usize,
        handle: usize,
        key: &'static str,
    },
    /// Update (or delete) the row, then `invalidate`.
    Invalidate {
        node: usize,
        handle: usize,
        key: &'static str,
        delete: bool,
    },
    /// Update every row carrying the tag, then `invalidate_tag`.
    InvalidateTag {
        node: usize,
        handle: usize,
        tag: &'static str,
    },
    /// `clear_namespace`; with `bulk`, after updating every row (the clear is the
    /// invalidation), else as an administrative reset (the rows are unchanged).
    Clear {
        node: usize,
        handle: usize,
        bulk: bool,
    },
    /// `write_behind` by the instance owning the key.
    WriteBehind { key: &'static str },
    /// `get` in the write-behind namespace.
    WbGet { node: usize, key: &'static str },
    /// `WriteBehind::flush`.
    WbFlush { node: usize },
    /// Flush every write-behind queue, then clear the write-behind namespace.
    WbClear { node: usize },
    /// Build one more cache handle for the main namespace.
    AddHandle { node: usize },
    /// Drop one cache handle (the instance keeps at least one).
    DropHandle { node: usize, handle: usize },
    /// Drop the engine (after shutting its write-behind queue down) and build a new one.
    Restart { node: usize },
    /// `get_with` (per-call options).
    GetWith {
        node: usize,
        handle: usize,
        key: &'static str,
        mode: ReadMode,
    },
    /// `get_or_load_with` (a loader with a context; per-call options).
    LoadWith {
        node: usize,
        handle: usize,
        key: &'static str,
        plan: LoadPlan,
        answer: Answer,
        skip_l2_read: bool,
    },
    /// Update the row, then `set_with` (per-call options).
    SetWith {
        node: usize,
        handle: usize,
        key: &'static str,
        mode: WriteMode,
    },
    /// Update the row, then `expire`.
    Expire {
        node: usize,
        handle: usize,
        key: &'static str,
    },
}

/// The option of a `get_with`.
#[derive(Debug, Clone, Copy)]
pub enum ReadMode {
    /// Read L2 even when L1 holds the key.
    SkipL1Read,
    /// L1 alone.
    SkipL2Read,
    /// Leave L1 as it is after an L2 hit.
    SkipL1Write,
}

/// The option of a `set_with`.
#[derive(Debug, Clone, Copy)]
pub enum WriteMode {
    /// Write L2 in the background.
    Background,
    /// Keep the value in L1 only (L2 drops the key).
    SkipL2Write,
    /// Keep the value in L2 only (L1 drops its copy).
    SkipL1Write,
}

/// How the loader of a `get_or_load_with` answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// The row's value (or its absence).
    Row,
    /// "Unchanged" when the cache's previous value is the row's (a conditional reload).
    Revalidate,
    /// The row's value, not to be cached.
    NoCache,
    /// The row's value with its own short TTLs.
    ShortTtl,
}

/// What an operation writes, for grouping.
enum Writes {
    Nothing,
    Keys(Vec<&'static str>),
    Everything,
}

impl Op {
    fn writes(&self) -> Writes {
        match self {
            Op::Set { key, .. }
            | Op::SetWithTags { key, .. }
            | Op::Write { key, .. }
            | Op::Invalidate { key, .. }
            | Op::SetWith { key, .. }
            | Op::Expire { key, .. }
            | Op::WriteBehind { key } => Writes::Keys(vec![key]),
            Op::InvalidateTag { .. } | Op::Clear { bulk: true, .. } => Writes::Everything,
            _ => Writes::Nothing,
        }
    }

    /// Operations that change the instances themselves run alone.
    pub fn solo(&self) -> bool {
        matches!(
            self,
            Op::WbFlush { .. }
                | Op::WbClear { .. }
                | Op::AddHandle { .. }
                | Op::DropHandle { .. }
                | Op::Restart { .. }
        )
    }
}

/// A fault window.
#[derive(Debug, Clone, Copy)]
pub enum FaultWindow {
    /// L2 down for every instance (`None`) or one, for `ms`.
    L2Down { node: Option<usize>, ms: u64 },
    /// One instance's subscription broken for `ms`.
    BusDown { node: usize, ms: u64 },
    /// Every L2 call `extra` ms slower, for `ms`.
    Slow { extra: u64, ms: u64 },
}

/// One step of a seed.
#[derive(Debug, Clone)]
pub enum Step {
    /// One operation, awaited.
    One(Op),
    /// Operations started together, each after its own delay in ms (so that one can begin
    /// while another is half done: a load that read the database before a write lands
    /// after it), and awaited together.
    Many(Vec<(u64, Op)>),
    /// Let time pass.
    Pause(u64),
    /// Start a fault window (it ends by itself).
    Fault(FaultWindow),
}

/// Draw a loader's behaviour.
fn load_plan(rng: &SimRng, cfg: &SeedConfig) -> LoadPlan {
    let sleep_ms = cfg.ms(match rng.weighted(&[50, 30, 15, 5]) {
        0 => 0,
        1 => rng.between(1, 50),
        2 => rng.between(50, 400),
        _ => rng.between(400, 1500),
    });
    LoadPlan {
        sleep_ms,
        read_first: rng.chance(0.5),
    }
}

fn keys(rng: &SimRng) -> Vec<&'static str> {
    let n = rng.between(2, 4) as usize;
    let mut keys: Vec<&'static str> = (0..n).map(|_| rng.pick(&KEYS)).collect();
    if rng.chance(0.1) {
        let at = rng.below(keys.len() + 1);
        keys.insert(at, INVALID);
    }
    keys
}

fn op(rng: &SimRng, cfg: &SeedConfig) -> Op {
    let node = rng.below(cfg.nodes);
    let handle = rng.below(4);
    let key = if rng.chance(0.03) {
        INVALID
    } else {
        rng.pick(&KEYS)
    };
    let weights = [
        10, 14, 6, 4, 6, 8, 5, 5, 8, 3, 2, 5, 3, 1, 1, 2, 2, 1, 4, 4, 6, 6, 3,
    ];
    match rng.weighted(&weights) {
        0 => Op::Get { node, handle, key },
        1 => Op::GetOrLoad {
            node,
            handle,
            key,
            plan: load_plan(rng, cfg),
        },
        2 => Op::GetOrLoadOpt {
            node,
            handle,
            key,
            plan: load_plan(rng, cfg),
        },
        3 => Op::GetMany {
            node,
            handle,
            keys: keys(rng),
        },
        4 => Op::GetManyOrLoad {
            node,
            handle,
            keys: keys(rng),
            plan: load_plan(rng, cfg),
        },
        5 => Op::Set {
            node,
            handle,
            key: rng.pick(&KEYS),
        },
        6 => {
            let mut tags = vec![rng.pick(&TAGS)];
            if rng.chance(0.3) {
                tags.push(rng.pick(&TAGS));
            }
            Op::SetWithTags {
                node,
                handle,
                key: rng.pick(&KEYS),
                tags,
            }
        }
        7 => Op::Write {
            node,
            handle,
            key: rng.pick(&KEYS),
        },
        8 => Op::Invalidate {
            node,
            handle,
            key: rng.pick(&KEYS),
            delete: rng.chance(0.25),
        },
        9 => Op::InvalidateTag {
            node,
            handle,
            tag: rng.pick(&TAGS),
        },
        10 => Op::Clear {
            node,
            handle,
            bulk: rng.chance(0.5),
        },
        11 => Op::WriteBehind {
            key: rng.pick(&WB_KEYS),
        },
        12 => Op::WbGet {
            node,
            key: rng.pick(&WB_KEYS),
        },
        13 => Op::WbFlush { node },
        14 => Op::WbClear { node },
        15 => Op::AddHandle { node },
        16 => Op::DropHandle { node, handle },
        17 => Op::Restart { node },
        19 => Op::GetWith {
            node,
            handle,
            key,
            mode: match rng.below(3) {
                0 => ReadMode::SkipL1Read,
                1 => ReadMode::SkipL2Read,
                _ => ReadMode::SkipL1Write,
            },
        },
        20 => Op::LoadWith {
            node,
            handle,
            key,
            plan: load_plan(rng, cfg),
            answer: match rng.weighted(&[4, 4, 1, 1]) {
                0 => Answer::Row,
                1 => Answer::Revalidate,
                2 => Answer::NoCache,
                _ => Answer::ShortTtl,
            },
            skip_l2_read: rng.chance(0.2),
        },
        21 => Op::SetWith {
            node,
            handle,
            key: rng.pick(&KEYS),
            mode: match rng.weighted(&[3, 1, 1]) {
                0 => WriteMode::Background,
                1 => WriteMode::SkipL2Write,
                _ => WriteMode::SkipL1Write,
            },
        },
        22 => Op::Expire {
            node,
            handle,
            key: rng.pick(&KEYS),
        },
        _ => Op::Refresh {
            node,
            handle,
            key,
            plan: load_plan(rng, cfg),
        },
    }
}

/// Can `candidate` join a group already holding `group`?
fn fits(group: &[Op], candidate: &Op) -> bool {
    if candidate.solo() {
        return false;
    }
    let mut keys: Vec<&'static str> = Vec::new();
    let mut everything = false;
    for o in group.iter().chain(std::iter::once(candidate)) {
        match o.writes() {
            Writes::Nothing => {}
            Writes::Everything => {
                if everything || !keys.is_empty() {
                    return false;
                }
                everything = true;
            }
            Writes::Keys(ks) => {
                if everything || ks.iter().any(|k| keys.contains(k)) {
                    return false;
                }
                keys.extend(ks);
            }
        }
    }
    true
}

fn fault(rng: &SimRng, cfg: &SeedConfig) -> Option<FaultWindow> {
    let p = &cfg.profile;
    let mut kinds = Vec::new();
    if p.outages {
        kinds.push(0);
    }
    if p.disconnects {
        kinds.push(1);
    }
    if p.l2_latency > 0.0 {
        kinds.push(2);
    }
    if kinds.is_empty() {
        return None;
    }
    Some(match rng.pick(&kinds) {
        0 => FaultWindow::L2Down {
            node: if rng.chance(0.5) {
                None
            } else {
                Some(rng.below(cfg.nodes))
            },
            ms: cfg.ms(rng.between(20, 400)),
        },
        1 => FaultWindow::BusDown {
            node: rng.below(cfg.nodes),
            ms: cfg.ms(rng.between(10, 300)),
        },
        _ => FaultWindow::Slow {
            extra: rng.between(5, 60),
            ms: cfg.ms(rng.between(50, 300)),
        },
    })
}

/// The settings and steps of `seed`, with at most `max_steps` steps.
pub fn plan(seed: u64, max_steps: usize, scale: f64) -> (SeedConfig, Vec<Step>) {
    let rng = SimRng::new(seed);
    let profile = Profile::draw(&rng);
    let cfg = SeedConfig {
        nodes: rng.between(2, 3) as usize,
        steps: (rng.between(20, 60) as usize).min(max_steps),
        profile,
        fail_safe: rng.chance(0.2),
        timeouts: rng.chance(0.2),
        short_ttl: rng.chance(0.15),
        jitter: rng.chance(0.5),
        breaker: rng.chance(0.8),
        batch_window: rng.chance(0.2),
        on_loss: {
            let r = SimRng::new(seed.rotate_left(17) ^ 0x0105_5eed);
            match r.weighted(&[2, 1, 1]) {
                0 => cache_tiered::core::ReconnectPolicy::Flush,
                1 => {
                    cache_tiered::core::ReconnectPolicy::keep(std::time::Duration::from_millis(300))
                }
                _ => cache_tiered::core::ReconnectPolicy::reload(8),
            }
        },
        scale,
    };
    let mut steps = Vec::with_capacity(cfg.steps);
    while steps.len() < cfg.steps {
        let step = match rng.weighted(&[60, 22, 10, 8]) {
            0 => Step::One(op(&rng, &cfg)),
            1 => {
                let size = rng.between(2, 4) as usize;
                let mut group: Vec<Op> = Vec::with_capacity(size);
                for _ in 0..size * 3 {
                    if group.len() == size {
                        break;
                    }
                    let o = op(&rng, &cfg);
                    if fits(&group, &o) {
                        group.push(o);
                    }
                }
                if group.len() < 2 {
                    continue;
                }
                let delays: Vec<u64> = group
                    .iter()
                    .map(|_| {
                        if rng.chance(0.5) {
                            0
                        } else {
                            cfg.ms(rng.between(1, 60))
                        }
                    })
                    .collect();
                Step::Many(delays.into_iter().zip(group).collect())
            }
            2 => Step::Pause(cfg.ms(rng.between(1, 200))),
            _ => match fault(&rng, &cfg) {
                Some(f) => Step::Fault(f),
                None => continue,
            },
        };
        steps.push(step);
    }
    (cfg, steps)
}

/// One line describing an operation, for the trace.
pub fn describe(op: &Op) -> String {
    match op {
        Op::Get { node, handle, key } => format!("n{node}/h{handle} get {key:?}"),
        Op::GetOrLoad {
            node,
            handle,
            key,
            plan,
        } => format!("n{node}/h{handle} get_or_load {key:?} {}", plan_text(plan)),
        Op::GetOrLoadOpt {
            node,
            handle,
            key,
            plan,
        } => format!(
            "n{node}/h{handle} get_or_load_optional {key:?} {}",
            plan_text(plan)
        ),
        Op::Refresh {
            node,
            handle,
            key,
            plan,
        } => format!("n{node}/h{handle} refresh {key:?} {}", plan_text(plan)),
        Op::GetMany { node, handle, keys } => format!("n{node}/h{handle} get_many {keys:?}"),
        Op::GetManyOrLoad {
            node,
            handle,
            keys,
            plan,
        } => format!(
            "n{node}/h{handle} get_many_or_load {keys:?} {}",
            plan_text(plan)
        ),
        Op::Set { node, handle, key } => format!("n{node}/h{handle} set {key:?}"),
        Op::SetWithTags {
            node,
            handle,
            key,
            tags,
        } => format!("n{node}/h{handle} set_with_tags {key:?} {tags:?}"),
        Op::Write { node, handle, key } => format!("n{node}/h{handle} write {key:?}"),
        Op::Invalidate {
            node,
            handle,
            key,
            delete,
        } => format!(
            "n{node}/h{handle} {} row, invalidate {key:?}",
            if *delete { "delete" } else { "update" }
        ),
        Op::InvalidateTag { node, handle, tag } => {
            format!("n{node}/h{handle} invalidate_tag {tag:?}")
        }
        Op::Clear { node, handle, bulk } => format!(
            "n{node}/h{handle} clear_namespace{}",
            if *bulk { " after a bulk update" } else { "" }
        ),
        Op::WriteBehind { key } => format!("write_behind {key:?}"),
        Op::WbGet { node, key } => format!("n{node} wb get {key:?}"),
        Op::WbFlush { node } => format!("n{node} wb flush"),
        Op::WbClear { node } => format!("n{node} flush all wb queues, clear wb namespace"),
        Op::AddHandle { node } => format!("n{node} build another cache handle"),
        Op::DropHandle { node, handle } => format!("n{node} drop cache handle h{handle}"),
        Op::Restart { node } => format!("n{node} restart engine"),
        Op::GetWith {
            node,
            handle,
            key,
            mode,
        } => format!("n{node}/h{handle} get_with {key:?} {mode:?}"),
        Op::LoadWith {
            node,
            handle,
            key,
            plan,
            answer,
            skip_l2_read,
        } => format!(
            "n{node}/h{handle} get_or_load_with {key:?} answer {answer:?}{} {}",
            if *skip_l2_read { " skip_l2_read" } else { "" },
            plan_text(plan)
        ),
        Op::SetWith {
            node,
            handle,
            key,
            mode,
        } => format!("n{node}/h{handle} set_with {key:?} {mode:?}"),
        Op::Expire { node, handle, key } => {
            format!("n{node}/h{handle} update row, expire {key:?}")
        }
    }
}

fn plan_text(plan: &LoadPlan) -> String {
    if plan.sleep_ms == 0 {
        return "(loader instant)".into();
    }
    format!(
        "(loader {} ms, reads {})",
        plan.sleep_ms,
        if plan.read_first { "first" } else { "last" }
    )
}
