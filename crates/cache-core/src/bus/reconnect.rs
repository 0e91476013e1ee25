//! The bus's [`ReconnectPolicy`] applied: when the receive loop flushes L1 after a possible
//! loss of invalidations.
//!
//! The receive loop reports what it sees (a subscription broken or back, a loss on one
//! channel) and asks [`LossPlan`] whether to flush now. Under [`ReconnectPolicy::Keep`] the
//! plan answers "later" and keeps a deadline per channel (and one for every channel while a
//! subscription is broken); the loop sleeps until the earliest one and flushes what is due.
//! The loop owns the plan, as it owns the publishers' sequence numbers: no lock.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::bus::ReconnectPolicy;

/// Which subscription an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// The pub/sub bus.
    Bus,
    /// Redis client tracking.
    Tracking,
}

/// Flushes deferred by [`ReconnectPolicy::Keep`], and which subscriptions are broken.
#[derive(Debug)]
pub(crate) struct LossPlan {
    /// `Some` under [`ReconnectPolicy::Keep`].
    keep: Option<Duration>,
    /// When every namespace is flushed (a subscription broke).
    all: Option<Instant>,
    /// When these namespaces are flushed (a gap, a silent publisher).
    channels: HashMap<String, Instant>,
    bus_down: bool,
    tracking_down: bool,
}

/// What is due at a deadline.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// Flush every namespace.
    pub(crate) all: bool,
    /// Flush these namespaces (empty when `all`).
    pub(crate) channels: Vec<String>,
}

impl LossPlan {
    pub(crate) fn new(policy: ReconnectPolicy) -> Self {
        LossPlan {
            keep: match policy {
                ReconnectPolicy::Keep { max_staleness } => Some(max_staleness),
                _ => None,
            },
            all: None,
            channels: HashMap::new(),
            bus_down: false,
            tracking_down: false,
        }
    }

    fn down(&mut self, link: Link, down: bool) {
        match link {
            Link::Bus => self.bus_down = down,
            Link::Tracking => self.tracking_down = down,
        }
    }

    /// `link` broke: true when every namespace must be flushed now, false when the flush
    /// waits for the reconnect or the deadline.
    pub(crate) fn disconnected(&mut self, link: Link, now: Instant) -> bool {
        self.down(link, true);
        match self.keep {
            None => true,
            Some(bound) => {
                // An earlier deadline stands: the entries it covers missed more already.
                self.all.get_or_insert(now + bound);
                false
            }
        }
    }

    /// `link` is (re)established. Returns whether a deferred flush of every namespace was
    /// pending: the caller flushes every namespace now (on a reconnect it does anyway).
    pub(crate) fn connected(&mut self, link: Link, now: Instant) -> bool {
        self.down(link, false);
        let pending = self.all.is_some();
        // The caller's flush covers every namespace: per-channel deadlines are met.
        self.channels.clear();
        self.all = match self.keep {
            // The other subscription is still broken: its deadline starts again from this
            // flush.
            Some(bound) if self.bus_down || self.tracking_down => Some(now + bound),
            _ => None,
        };
        pending
    }

    /// A loss on `channel` (a gap, a silent publisher): true when its namespace must be
    /// flushed now.
    pub(crate) fn channel_loss(&mut self, channel: &str, now: Instant) -> bool {
        match self.keep {
            None => true,
            Some(bound) => {
                if !self.channels.contains_key(channel) {
                    self.channels.insert(channel.to_owned(), now + bound);
                }
                false
            }
        }
    }

    /// The earliest deadline, if any flush is deferred.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.channels.values().copied().chain(self.all).min()
    }

    /// What is due at `now`. While a subscription stays broken, the flush of every namespace
    /// is due again one bound later (what L1 took meanwhile missed invalidations too).
    pub(crate) fn due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if self.all.is_some_and(|at| at <= now) {
            due.all = true;
            self.channels.clear();
            self.all = match self.keep {
                Some(bound) if self.bus_down || self.tracking_down => Some(now + bound),
                _ => None,
            };
            return due;
        }
        self.channels.retain(|channel, at| {
            if *at <= now {
                due.channels.push(channel.clone());
                false
            } else {
                true
            }
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn flush_flushes_at_once_and_defers_nothing() {
        let mut plan = LossPlan::new(ReconnectPolicy::Flush);
        let t0 = Instant::now();
        assert!(plan.disconnected(Link::Bus, t0));
        assert!(plan.channel_loss("c", t0));
        assert_eq!(plan.next_deadline(), None);
        assert!(!plan.connected(Link::Bus, t0));
        assert_eq!(plan.next_deadline(), None);
    }

    #[test]
    fn keep_defers_to_the_reconnect_or_the_deadline() {
        let mut plan = LossPlan::new(ReconnectPolicy::keep(100 * MS));
        let t0 = Instant::now();
        assert!(!plan.disconnected(Link::Bus, t0));
        // A second report does not push the deadline back.
        assert!(!plan.disconnected(Link::Bus, t0 + 50 * MS));
        assert_eq!(plan.next_deadline(), Some(t0 + 100 * MS));
        assert_eq!(plan.due(t0 + 99 * MS), Due::default());
        // Still deaf at the deadline: flushed, and again one bound later.
        assert!(plan.due(t0 + 100 * MS).all);
        assert_eq!(plan.next_deadline(), Some(t0 + 200 * MS));
        // The reconnect flushes (pending) and ends the deadlines.
        assert!(plan.connected(Link::Bus, t0 + 150 * MS));
        assert_eq!(plan.next_deadline(), None);
    }

    #[test]
    fn keep_flushes_a_lost_channel_after_the_bound() {
        let mut plan = LossPlan::new(ReconnectPolicy::keep(100 * MS));
        let t0 = Instant::now();
        assert!(!plan.channel_loss("a", t0));
        assert!(!plan.channel_loss("b", t0 + 30 * MS));
        assert!(!plan.channel_loss("a", t0 + 60 * MS));
        assert_eq!(plan.next_deadline(), Some(t0 + 100 * MS));
        let due = plan.due(t0 + 100 * MS);
        assert_eq!(
            due,
            Due {
                all: false,
                channels: vec!["a".into()]
            }
        );
        assert_eq!(plan.next_deadline(), Some(t0 + 130 * MS));
        assert_eq!(plan.due(t0 + 130 * MS).channels, vec!["b".to_owned()]);
        assert_eq!(plan.next_deadline(), None);
    }

    #[test]
    fn keep_waits_for_both_subscriptions() {
        let mut plan = LossPlan::new(ReconnectPolicy::keep(100 * MS));
        let t0 = Instant::now();
        assert!(!plan.disconnected(Link::Bus, t0));
        assert!(!plan.disconnected(Link::Tracking, t0 + 10 * MS));
        // The bus is back, tracking is not: flushed now, and again a bound later.
        assert!(plan.connected(Link::Bus, t0 + 20 * MS));
        assert_eq!(plan.next_deadline(), Some(t0 + 120 * MS));
        assert!(plan.connected(Link::Tracking, t0 + 30 * MS));
        assert_eq!(plan.next_deadline(), None);
    }
}
