//! The faults of one seed: a profile drawn from the seed (which kinds, how often), and the
//! switches the fault layers read (outage windows, bus disconnects, latency spikes).
//!
//! Every random decision is drawn from the seed and the identity of what it decides about
//! (instance, operation, key or channel, and how many times that identity was seen): the
//! engine publishes to its channels in hash-map order, so one shared sequence of draws would
//! hand different decisions to different messages from run to run; per-identity draws keep a
//! seed's replay exact.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_tiered::core::BusEvent;
use cache_tiered::{Error, ErrorKind};
use tokio::sync::mpsc::UnboundedSender;

use super::rng::{SimRng, Trace};

/// The most instances a seed runs.
pub const MAX_NODES: usize = 3;

/// Which faults a seed injects, and how often.
#[derive(Debug, Clone, Copy, Default)]
pub struct Profile {
    /// Per L2 call: fail before doing anything (a transient error).
    pub l2_error: f64,
    /// Per L2 call: do it, then report a timeout (the caller cannot know it happened).
    pub l2_ambiguous: f64,
    /// Per L2 call: take some time first.
    pub l2_latency: f64,
    /// The longest such delay.
    pub l2_max_latency_ms: u64,
    /// Windows where L2 is down for every instance or one instance (partition).
    pub outages: bool,
    /// Per bus publish: fail.
    pub bus_publish_error: f64,
    /// Per bus delivery to one instance: lose it.
    pub bus_drop: f64,
    /// Per bus publish or delivery: deliver it later (reordering).
    pub bus_delay: f64,
    /// The longest such delay.
    pub bus_max_delay_ms: u64,
    /// Windows where one instance's subscription is broken (`Disconnected` .. `Connected`).
    pub disconnects: bool,
    /// Per loader call: fail.
    pub loader_fail: f64,
    /// Per source writer call (write-through, write-behind batches): fail.
    pub writer_fail: f64,
}

impl Profile {
    /// Draw a profile: about a quarter of the seeds inject nothing.
    pub fn draw(rng: &SimRng) -> Profile {
        if rng.chance(0.25) {
            return Profile::default();
        }
        let mut p = Profile::default();
        if rng.chance(0.5) {
            p.l2_error = rng.pick(&[0.02, 0.05, 0.15]);
        }
        if rng.chance(0.3) {
            p.l2_ambiguous = rng.pick(&[0.02, 0.05]);
        }
        if rng.chance(0.5) {
            p.l2_latency = 0.3;
            p.l2_max_latency_ms = rng.between(2, 40);
        }
        p.outages = rng.chance(0.4);
        if rng.chance(0.25) {
            p.bus_publish_error = rng.pick(&[0.05, 0.2]);
        }
        if rng.chance(0.3) {
            p.bus_drop = rng.pick(&[0.05, 0.2]);
        }
        if rng.chance(0.3) {
            p.bus_delay = rng.pick(&[0.1, 0.3]);
            p.bus_max_delay_ms = rng.between(5, 80);
        }
        p.disconnects = rng.chance(0.3);
        if rng.chance(0.4) {
            p.loader_fail = rng.pick(&[0.05, 0.3]);
        }
        if rng.chance(0.3) {
            p.writer_fail = rng.pick(&[0.1, 0.3]);
        }
        p
    }

    /// A short description for the trace.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |on: bool, s: String| {
            if on {
                parts.push(s);
            }
        };
        add(self.l2_error > 0.0, format!("l2_error={}", self.l2_error));
        add(
            self.l2_ambiguous > 0.0,
            format!("l2_ambiguous={}", self.l2_ambiguous),
        );
        add(
            self.l2_latency > 0.0,
            format!("l2_latency<={}ms", self.l2_max_latency_ms),
        );
        add(self.outages, "outages".into());
        add(
            self.bus_publish_error > 0.0,
            format!("bus_publish_error={}", self.bus_publish_error),
        );
        add(self.bus_drop > 0.0, format!("bus_drop={}", self.bus_drop));
        add(
            self.bus_delay > 0.0,
            format!("bus_delay={}<={}ms", self.bus_delay, self.bus_max_delay_ms),
        );
        add(self.disconnects, "disconnects".into());
        add(
            self.loader_fail > 0.0,
            format!("loader_fail={}", self.loader_fail),
        );
        add(
            self.writer_fail > 0.0,
            format!("writer_fail={}", self.writer_fail),
        );
        if parts.is_empty() {
            "no faults".into()
        } else {
            parts.join(" ")
        }
    }
}

/// What the bus layer does with one publish.
pub enum Publish {
    /// Pass it on.
    Now,
    /// Fail it.
    Fail,
    /// Report success, deliver nothing.
    Lose,
    /// Report success, deliver after this long.
    Later(Duration),
}

/// What the bus layer does with one delivery to one instance.
pub enum Deliver {
    /// Pass it on.
    Now,
    /// Lose it.
    Lose,
    /// Pass it on after this long.
    Later(Duration),
}

/// The switches the fault layers read, shared by every instance of a seed.
pub struct Faults {
    seed: u64,
    seen: Mutex<HashMap<u64, u64>>,
    /// The profile of the seed.
    pub profile: Profile,
    active: AtomicBool,
    l2_down_all: AtomicBool,
    l2_down: [AtomicBool; MAX_NODES],
    bus_down: [AtomicBool; MAX_NODES],
    extra_latency_ms: AtomicU64,
    events: Mutex<Vec<Option<UnboundedSender<BusEvent>>>>,
    reconnects: [AtomicU64; MAX_NODES],
    fired: AtomicU64,
    bus_fired: AtomicU64,
    trace: Trace,
}

impl Faults {
    /// Switches for a seed with this profile.
    pub fn new(profile: Profile, seed: u64, trace: Trace) -> Arc<Faults> {
        Arc::new(Faults {
            seed,
            seen: Mutex::default(),
            profile,
            active: AtomicBool::new(true),
            l2_down_all: AtomicBool::new(false),
            l2_down: Default::default(),
            bus_down: Default::default(),
            extra_latency_ms: AtomicU64::new(0),
            events: Mutex::new(vec![None; MAX_NODES]),
            reconnects: Default::default(),
            fired: AtomicU64::new(0),
            bus_fired: AtomicU64::new(0),
            trace,
        })
    }

    /// The random source for one decision about `identity` (see the module docs).
    fn draw(&self, identity: impl Hash) -> SimRng {
        let mut h = DefaultHasher::new();
        self.seed.hash(&mut h);
        identity.hash(&mut h);
        let id = h.finish();
        let n = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let n = seen.entry(id).or_insert(0);
            *n += 1;
            *n
        };
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        n.hash(&mut h);
        SimRng::new(h.finish())
    }

    /// Are faults being injected (false once the seed settles)?
    pub fn active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// How many faults actually fired.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// How many bus faults actually fired.
    pub fn bus_fired(&self) -> u64 {
        self.bus_fired.load(Ordering::SeqCst)
    }

    fn fire(&self, what: impl AsRef<str>) {
        self.fired.fetch_add(1, Ordering::SeqCst);
        self.trace.log(format!("  fault: {}", what.as_ref()));
    }

    /// A bus fault: counted, and traced unless it hit a heartbeat (`what` is `None`), which
    /// would drown the trace.
    fn fire_bus(&self, what: Option<String>) {
        self.bus_fired.fetch_add(1, Ordering::SeqCst);
        self.fired.fetch_add(1, Ordering::SeqCst);
        if let Some(what) = what {
            self.trace.log(format!("  fault: {what}"));
        }
    }

    /// The gate in front of one L2 call of `node`: maybe wait, maybe fail. `Ok(true)` means
    /// "do the call, then report a timeout".
    pub async fn before_l2(&self, node: usize, op: &str, key: &str) -> Result<bool, Error> {
        if !self.active() {
            return Ok(false);
        }
        let rng = self.draw(("l2", node, op, key));
        let p = &self.profile;
        let mut wait = self.extra_latency_ms.load(Ordering::SeqCst);
        if rng.chance(p.l2_latency) {
            wait += rng.between(1, p.l2_max_latency_ms);
        }
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        if !self.active() {
            return Ok(false);
        }
        if self.l2_down_all.load(Ordering::SeqCst) || self.l2_down[node].load(Ordering::SeqCst) {
            self.fire(format!("n{node} L2 {op}: down"));
            return Err(Error::new(ErrorKind::Connection, "L2 down (injected)"));
        }
        if rng.chance(p.l2_error) {
            let kind = rng.pick(&[ErrorKind::Connection, ErrorKind::Timeout, ErrorKind::Remote]);
            self.fire(format!("n{node} L2 {op}: {kind}"));
            return Err(Error::new(kind, "injected L2 error"));
        }
        if rng.chance(p.l2_ambiguous) {
            self.fire(format!("n{node} L2 {op}: done, then timeout"));
            return Ok(true);
        }
        Ok(false)
    }

    /// What to do with one publish of `node` (`message` describes it; `None` for a
    /// heartbeat).
    pub fn publish(&self, node: usize, channel: &str, message: Option<&str>) -> Publish {
        let what = |outcome: &str| message.map(|m| format!("n{node} publishes {m}: {outcome}"));
        if !self.active() {
            return Publish::Now;
        }
        let rng = self.draw(("publish", node, channel));
        let p = &self.profile;
        if rng.chance(p.bus_publish_error) {
            self.fire_bus(what("fails"));
            return Publish::Fail;
        }
        if rng.chance(p.bus_drop) {
            self.fire_bus(what("lost"));
            return Publish::Lose;
        }
        if rng.chance(p.bus_delay) {
            let ms = rng.between(1, p.bus_max_delay_ms);
            self.fire_bus(what(&format!("{ms} ms late")));
            return Publish::Later(Duration::from_millis(ms));
        }
        Publish::Now
    }

    /// What to do with one delivery to `node` (`message` describes it; `None` for a
    /// heartbeat).
    pub fn deliver(&self, node: usize, channel: &str, message: Option<&str>) -> Deliver {
        let what = |outcome: &str| message.map(|m| format!("n{node} receives {m}: {outcome}"));
        if self.bus_down[node].load(Ordering::SeqCst) {
            self.fire_bus(what("lost (disconnected)"));
            return Deliver::Lose;
        }
        if !self.active() {
            return Deliver::Now;
        }
        let rng = self.draw(("deliver", node, channel));
        let p = &self.profile;
        if rng.chance(p.bus_drop) {
            self.fire_bus(what("lost"));
            return Deliver::Lose;
        }
        if rng.chance(p.bus_delay) {
            let ms = rng.between(1, p.bus_max_delay_ms);
            self.fire_bus(what(&format!("{ms} ms late")));
            return Deliver::Later(Duration::from_millis(ms));
        }
        Deliver::Now
    }

    /// Is `node`'s subscription broken now?
    pub fn bus_down(&self, node: usize) -> bool {
        self.bus_down[node].load(Ordering::SeqCst)
    }

    /// A new engine of `node` started its bus: events are injected into `events` from now on.
    pub fn register_events(&self, node: usize, events: UnboundedSender<BusEvent>) {
        let mut slots = self.events.lock().unwrap_or_else(|p| p.into_inner());
        slots[node] = Some(events);
        self.bus_down[node].store(false, Ordering::SeqCst);
        self.reconnects[node].store(0, Ordering::SeqCst);
    }

    fn inject(&self, node: usize, event: BusEvent) {
        let slots = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = &slots[node] {
            let _ = tx.send(event);
        }
    }

    /// Break `node`'s subscription (reported to its engine as `Disconnected`).
    pub fn disconnect(&self, node: usize) {
        if !self.bus_down[node].swap(true, Ordering::SeqCst) {
            self.fire_bus(Some(format!("n{node} bus: disconnected")));
            self.inject(node, BusEvent::Disconnected);
        }
    }

    /// Restore `node`'s subscription (reported as `Connected`).
    pub fn reconnect(&self, node: usize) {
        if self.bus_down[node].swap(false, Ordering::SeqCst) {
            self.trace
                .log(format!("  fault: n{node} bus: connected again"));
            self.reconnects[node].fetch_add(1, Ordering::SeqCst);
            self.inject(node, BusEvent::Connected);
        }
    }

    /// `Connected` events injected into `node`'s current engine after a disconnect.
    pub fn reconnects(&self, node: usize) -> u64 {
        self.reconnects[node].load(Ordering::SeqCst)
    }

    /// Start or end an L2 outage, for every instance (`None`) or one.
    pub fn l2_outage(&self, node: Option<usize>, down: bool) {
        match node {
            None => self.l2_down_all.store(down, Ordering::SeqCst),
            Some(n) => self.l2_down[n].store(down, Ordering::SeqCst),
        }
        let who = node.map_or("all".to_owned(), |n| format!("n{n}"));
        if down {
            self.fire(format!("L2 outage for {who} starts"));
        } else {
            self.trace.log(format!("  fault: L2 outage for {who} ends"));
        }
    }

    /// Add `ms` to every L2 call (0 ends the spike).
    pub fn latency_spike(&self, ms: u64) {
        self.extra_latency_ms.store(ms, Ordering::SeqCst);
        if ms > 0 {
            self.fire(format!("L2 latency spike +{ms} ms starts"));
        } else {
            self.trace.log("  fault: L2 latency spike ends");
        }
    }

    /// Should this loader call of `node` for `key` fail?
    pub fn loader_fails(&self, node: usize, key: &str) -> bool {
        self.active()
            && self
                .draw(("load", node, key))
                .chance(self.profile.loader_fail)
    }

    /// Should this source write of `node` for `key` fail?
    pub fn writer_fails(&self, node: usize, key: &str) -> bool {
        self.active()
            && self
                .draw(("write", node, key))
                .chance(self.profile.writer_fail)
    }

    /// Stop injecting: every outage ends, every subscription comes back.
    pub fn stop(&self) {
        self.active.store(false, Ordering::SeqCst);
        self.l2_down_all.store(false, Ordering::SeqCst);
        for d in &self.l2_down {
            d.store(false, Ordering::SeqCst);
        }
        self.extra_latency_ms.store(0, Ordering::SeqCst);
        for n in 0..MAX_NODES {
            self.reconnect(n);
        }
        self.trace
            .log(format!("faults stopped ({} fired)", self.fired()));
    }
}
