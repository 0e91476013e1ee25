//! Tags: recording keys under a tag, and dropping them all.

use super::*;

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Drop every key written with `tag` (see [`Cache::set_with_tags`]) from L2, from this
    /// instance's L1 and, through the bus, from every other instance's L1. Returns how many
    /// keys the tag held.
    ///
    /// Design: each tagged write adds the key to an index set in L2
    /// (`{prefix}:__tags:{namespace}:{tag}`); this call moves the set's members atomically to
    /// a pending set (`{prefix}:__tagging:{...}`), deletes their keys, publishes them as
    /// invalidations, and only then removes them from the pending set: a lost reply or a
    /// failed delete loses no member (a retry gets them again). Reads pay nothing.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        crate::key::validate_key(tag, 256)?;
        let inner = &self.inner;
        let Some(l2) = inner.engine.remote() else {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "tags are kept in L2: this engine has none",
            ));
        };
        let (tag_key, pending_key) = inner.tag_keys(tag)?;
        // The members move to a pending set, which keeps them until their deletes are done: a
        // lost reply or a failed delete loses none (the next call gets them again).
        let mut members = l2.tag_take(&tag_key, &pending_key).await.inspect_err(|e| {
            inner.l2_failed(L2Op::Delete, e);
        })?;
        // Tagged writes of this instance that failed are not in the index set yet.
        if let Some(queue) = inner.engine.recovery_queue() {
            for m in queue.tagged(&tag_key) {
                if !members.contains(&m) {
                    members.push(m);
                }
            }
        }
        let base = inner.keys.base();
        let user_keys: Vec<String> = members
            .iter()
            .filter_map(|m| m.strip_prefix(base).map(str::to_owned))
            .collect();
        for k in &user_keys {
            inner.state.drop_key(k);
        }
        let mut result = Ok(members.len() as u64);
        if !members.is_empty() {
            let mut doomed = members.clone();
            doomed.extend(members.iter().filter_map(|m| inner.fill_lease_key(m)));
            match l2.delete(&doomed).await {
                Ok(()) => {
                    // If this fails, the members stay pending: deleted again next time.
                    let _ = l2.tag_done(&pending_key, &members).await;
                }
                Err(e) => {
                    inner.l2_failed(L2Op::Delete, &e);
                    // The members stay pending for the next call; with auto-recovery their
                    // deletes are also settled by themselves when L2 is back.
                    let mut queued = e.is_transient();
                    for m in &members {
                        if !queued {
                            break;
                        }
                        let also: Vec<String> = inner.fill_lease_key(m).into_iter().collect();
                        let announce = m
                            .strip_prefix(base)
                            .map(|k| (inner.channel.clone(), k.to_owned()));
                        queued = inner.engine.queue_recovery(
                            m.clone(),
                            Replay::delete(also, Vec::new(), Duration::ZERO),
                            announce,
                        );
                    }
                    if queued {
                        bump(&inner.stats.queued_for_recovery);
                    } else {
                        result = Err(e);
                    }
                }
            }
        }
        // Reads that ran while the delete was in flight may have cached old values.
        for k in &user_keys {
            inner.state.drop_key(k);
        }
        if let Some(bus) = inner.engine.bus() {
            if !user_keys.is_empty() {
                inner.observer.on_event(CacheEvent::InvalidationsSent {
                    keys: user_keys.len() as u32,
                });
                bus.publish_keys(&inner.channel, user_keys);
            }
        }
        result
    }
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The index set of `tag` and the set where `invalidate_tag` keeps the members it took.
    pub(super) fn tag_keys(&self, tag: &str) -> Result<(String, String)> {
        self.need(Capabilities::TAGS)?;
        let tag_key = crate::key::tag_key(self.engine.prefix(), &self.name, tag);
        let pending =
            crate::key::tag_pending_key(self.engine.prefix(), &tag_key).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidKey,
                    "a tag may not hold a '}' outside a hash tag",
                )
            })?;
        Ok((tag_key, pending))
    }

    /// Record a filled key under its tags. When that fails the value must not stay in L2
    /// outside its tags (an `invalidate_tag` would miss it): it is deleted (or the delete is
    /// queued for recovery, with the tags). Returns whether the tags were recorded.
    pub(super) async fn tag_fill(
        &self,
        key: &str,
        full: &str,
        tags: &[String],
        ttl: Duration,
    ) -> bool {
        let Some(l2) = self.engine.remote() else {
            return true;
        };
        let tag_keys: Vec<String> = tags
            .iter()
            .map(|t| crate::key::tag_key(self.engine.prefix(), &self.name, t))
            .collect();
        let mut failed = None;
        for tag_key in &tag_keys {
            if let Err(e) = l2.tag_add(tag_key, full, ttl).await {
                failed = Some(e);
                break;
            }
        }
        let Some(e) = failed else {
            return true;
        };
        self.l2_failed(L2Op::Set, &e);
        if let Err(e) = l2.delete(&[full.to_owned()]).await {
            self.l2_failed(L2Op::Delete, &e);
            if e.is_transient() {
                self.engine.queue_recovery(
                    full.to_owned(),
                    Replay::delete(Vec::new(), tag_keys, ttl),
                    Some((self.channel.clone(), key.to_owned())),
                );
            }
        }
        false
    }
}
