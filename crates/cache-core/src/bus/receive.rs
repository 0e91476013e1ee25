//! The receiving side: messages, tracking events, gaps, silences and disconnects, answered as `BusConfig::on_loss` says.

use super::*;

/// What a receiver knows of one publisher on one channel.
pub(super) struct Heard {
    seq: u64,
    at: Instant,
}

pub(super) fn live_targets(
    targets: &Mutex<HashMap<String, Weak<dyn BusTarget>>>,
) -> Vec<Arc<dyn BusTarget>> {
    lock(targets).values().filter_map(Weak::upgrade).collect()
}

/// Count and report a possible loss of invalidations in `target`'s namespace; flush it when
/// `now` (else the [`LossPlan`] flushes it later), then reload `reload` recently used keys.
pub(super) fn loss(target: &dyn BusTarget, stats: &BusCounters, now: bool, reload: usize) {
    stats.losses.fetch_add(1, Ordering::Relaxed);
    if now {
        target.flush();
        if reload > 0 {
            target.reload(reload);
        }
    }
    target.report(crate::observer::CacheEvent::InvalidationsLost);
}

/// The flush of a (re)established subscription: every namespace, then (with
/// [`ReconnectPolicy::Reload`]) its recently used keys read again from L2.
pub(super) fn flush_on_connect(targets: &[Arc<dyn BusTarget>], reload: usize) {
    for t in targets {
        t.flush();
        if reload > 0 {
            t.reload(reload);
        }
    }
}

/// Sleep until `deadline`, or forever without one.
pub(super) async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next tracking event, or never once tracking is gone (or was never there).
pub(super) async fn next_tracking(
    rx: &mut Option<mpsc::UnboundedReceiver<BusEvent>>,
) -> Option<BusEvent> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn receive_loop(
    mut rx: mpsc::UnboundedReceiver<BusEvent>,
    mut tracking: Option<mpsc::UnboundedReceiver<BusEvent>>,
    tracking_ready: tokio::sync::watch::Sender<bool>,
    targets: Arc<Mutex<HashMap<String, Weak<dyn BusTarget>>>>,
    instance: u64,
    config: BusConfig,
    stats: Arc<BusCounters>,
) {
    // (publisher, channel) -> last heard
    let mut heard: HashMap<(u64, String), Heard> = HashMap::new();
    let mut check = tokio::time::interval(config.heartbeat.max(Duration::from_millis(10)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connected_once = false;
    let mut plan = LossPlan::new(config.on_loss);
    let reload = config.on_loss.reload_keys();
    loop {
        let deadline = plan.next_deadline();
        let event = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
            e = next_tracking(&mut tracking) => match e {
                // Tracking is (back) on: Redis reports writes from now on, not before. What
                // L1 took meanwhile (before the first connection too) may be overwritten.
                Some(BusEvent::Connected) => {
                    plan.connected(Link::Tracking, Instant::now());
                    flush_on_connect(&live_targets(&targets), reload);
                    let _ = tracking_ready.send(true);
                    continue;
                }
                Some(BusEvent::Disconnected) => {
                    let now = plan.disconnected(Link::Tracking, Instant::now());
                    if now {
                        tracing::warn!("tracking connection lost; flushing L1");
                    } else {
                        tracing::warn!("tracking connection lost; L1 kept until it is back or for max_staleness");
                    }
                    for t in live_targets(&targets) {
                        loss(t.as_ref(), &stats, now, reload);
                    }
                    continue;
                }
                Some(e) => e,
                None => {
                    tracking = None;
                    continue;
                }
            },
            _ = check.tick() => {
                // Publishers gone silent: their messages may be getting lost.
                let now = Instant::now();
                let silent: Vec<(u64, String)> = heard
                    .iter()
                    .filter(|(_, h)| now.duration_since(h.at) > config.silence_limit)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in silent {
                    heard.remove(&key);
                    let target = lock(&targets).get(&key.1).and_then(Weak::upgrade);
                    if let Some(t) = target {
                        tracing::warn!(channel = %key.1, "an instance fell silent on the invalidation bus; flushing L1 of the namespace");
                        loss(t.as_ref(), &stats, plan.channel_loss(&key.1, now), reload);
                    }
                }
                continue;
            }
            _ = until(deadline) => {
                // ReconnectPolicy::Keep: the staleness bound of a loss is reached.
                let due = plan.due(Instant::now());
                if due.all {
                    tracing::warn!("invalidations possibly lost max_staleness ago; flushing L1");
                    for t in live_targets(&targets) {
                        t.flush();
                    }
                }
                for channel in due.channels {
                    let target = lock(&targets).get(&channel).and_then(Weak::upgrade);
                    if let Some(t) = target {
                        tracing::warn!(channel = %channel, "invalidations possibly lost max_staleness ago; flushing L1 of the namespace");
                        t.flush();
                    }
                }
                continue;
            }
        };
        match event {
            BusEvent::Message { channel, payload } => {
                let Some(target) = lock(&targets).get(&channel).and_then(Weak::upgrade) else {
                    continue;
                };
                let msg = match Message::decode(&payload) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(channel = %channel, error = %e, "ignoring a foreign message on the invalidation channel");
                        continue;
                    }
                };
                if msg.instance == instance {
                    continue;
                }
                let now = Instant::now();
                let key = (msg.instance, channel);
                // First contact: anything this publisher sent before is unknown to us.
                let expected = heard.get(&key).map_or(0, |h| h.seq);
                // A publisher's numbers never go back: a number far below the last one means
                // that one was forged or corrupt, and tracking resumes from this one (a
                // slightly lower number is a late message, nothing to act on).
                let backwards = expected.saturating_sub(msg.seq) > REORDER_WINDOW;
                let gap = backwards
                    || if msg.kind == KIND_HEARTBEAT {
                        msg.seq > expected
                    } else {
                        msg.seq > expected.saturating_add(1)
                    };
                if gap {
                    tracing::warn!(channel = %key.1, expected, got = msg.seq, "invalidation sequence gap; flushing L1 of the namespace");
                    loss(
                        target.as_ref(),
                        &stats,
                        plan.channel_loss(&key.1, now),
                        reload,
                    );
                }
                let entry = heard.entry(key).or_insert(Heard { seq: 0, at: now });
                entry.seq = if backwards {
                    msg.seq
                } else {
                    entry.seq.max(msg.seq)
                };
                entry.at = now;
                match msg.kind {
                    KIND_KEYS => {
                        stats
                            .received_keys
                            .fetch_add(msg.keys.len() as u64, Ordering::Relaxed);
                        target.invalidate_keys(&msg.keys);
                        target.report(crate::observer::CacheEvent::InvalidationsReceived {
                            keys: msg.keys.len() as u32,
                        });
                    }
                    KIND_CLEAR => {
                        target.flush();
                        target
                            .report(crate::observer::CacheEvent::InvalidationsReceived { keys: 1 });
                    }
                    _ => {}
                }
            }
            BusEvent::KeysChanged(full_keys) => {
                let live = live_targets(&targets);
                if full_keys.is_empty() {
                    for t in &live {
                        t.flush();
                    }
                    continue;
                }
                for t in &live {
                    let mine = t.user_keys(&full_keys);
                    if !mine.is_empty() {
                        stats
                            .received_keys
                            .fetch_add(mine.len() as u64, Ordering::Relaxed);
                        t.invalidate_keys(&mine);
                        t.report(crate::observer::CacheEvent::InvalidationsReceived {
                            keys: mine.len() as u32,
                        });
                    }
                }
            }
            BusEvent::Disconnected => {
                let now = plan.disconnected(Link::Bus, Instant::now());
                if now {
                    tracing::warn!("invalidation bus disconnected; flushing L1");
                } else {
                    tracing::warn!("invalidation bus disconnected; L1 kept until it is back or for max_staleness");
                }
                forget_numbers(&mut heard);
                for t in live_targets(&targets) {
                    loss(t.as_ref(), &stats, now, reload);
                }
            }
            BusEvent::Connected => {
                forget_numbers(&mut heard);
                let deferred = plan.connected(Link::Bus, Instant::now());
                if connected_once || deferred {
                    // Values filled while we were deaf may be stale: flush once more (under
                    // Keep, the first flush since the loss).
                    let live = live_targets(&targets);
                    flush_on_connect(&live, reload);
                    if connected_once {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        for t in &live {
                            t.report(crate::observer::CacheEvent::BusReconnect);
                        }
                    }
                }
                connected_once = true;
            }
        }
    }
}

/// After a break in the subscription: every publisher counts as first met again (its next
/// number is checked like a first contact's), but stays known, so one that never speaks again
/// is still noticed by its silence (a message lost just before it stopped is not missed).
pub(super) fn forget_numbers(heard: &mut HashMap<(u64, String), Heard>) {
    let now = Instant::now();
    for h in heard.values_mut() {
        h.seq = 0;
        h.at = now;
    }
}
