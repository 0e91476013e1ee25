//! Slot-aware batches: keys grouped by hash slot and the slots by primary, one pipeline per
//! primary, all in parallel; a pipeline that meets a topology change falls back to one
//! pipeline per slot, then to key-by-key commands that follow a migrating slot.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use futures::future::join_all;
use redis::cluster::NodeAddress;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisError, RedisResult, Value};

use super::error::is_topology_error;
use super::ClusterStore;
use crate::slot::slot;

/// Keys of one batch that go to one primary: `(slot, indices of its keys)` per slot.
pub(super) struct Group {
    node: Option<NodeAddress>,
    slots: Vec<(u16, Vec<usize>)>,
}

impl ClusterStore {
    /// Group `keys` by slot, and the slots by the primary serving them.
    pub(super) fn groups<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Group> {
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.enumerate() {
            by_slot.entry(slot(key.as_bytes())).or_default().push(i);
        }
        let slots: Vec<u16> = by_slot.keys().copied().collect();
        let primaries = self.inner.topology.primaries_for(&slots);
        let mut by_node: HashMap<NodeAddress, Vec<(u16, Vec<usize>)>> = HashMap::new();
        let mut groups = Vec::new();
        for ((slot, indices), primary) in by_slot.into_iter().zip(primaries) {
            match primary {
                Some(node) => by_node.entry(node).or_default().push((slot, indices)),
                // Unknown slot: alone, routed by redis-rs.
                None => groups.push(Group {
                    node: None,
                    slots: vec![(slot, indices)],
                }),
            }
        }
        groups.extend(by_node.into_iter().map(|(node, slots)| Group {
            node: Some(node),
            slots,
        }));
        groups
    }

    /// Run a slot-grouped batch: `build` makes the commands of one slot from its key indices
    /// (one `MGET` for all of them, or one command per key), `decode` reads their answers, in
    /// order; server errors other than redirects reach `decode` as [`Value::ServerError`], for
    /// it to judge per command. One pipeline per primary, all in parallel; a primary whose
    /// pipeline meets a redirect (topology changing under us) is retried slot by slot, where
    /// redis-rs follows `MOVED`/`ASK` per slot. Not bounded in time: callers wrap it in
    /// [`Self::run`].
    ///
    /// A retry sends commands again, some of which may have run already (redis-rs resends a
    /// redirected pipeline as a whole; the slot-by-slot retry resends the group). Reads,
    /// `SET` and `DEL` do not mind; `SET NX` and the lease script then answer "not stored" for
    /// a write that did happen: a batch can under-report its writes during a slot migration,
    /// never over-report them.
    pub(super) async fn batch<T, B, D>(
        &self,
        groups: Vec<Group>,
        read: bool,
        build: B,
        decode: D,
    ) -> RedisResult<Vec<(Vec<usize>, T)>>
    where
        B: Fn(&[usize]) -> Vec<Cmd> + Sync,
        D: Fn(Vec<Value>, &[usize]) -> RedisResult<T> + Sync,
        T: Send,
    {
        join_parts(
            groups
                .into_iter()
                .map(|group| self.batch_group(group, read, &build, &decode)),
        )
        .await
    }

    pub(super) async fn batch_group<T, B, D>(
        &self,
        group: Group,
        read: bool,
        build: &B,
        decode: &D,
    ) -> RedisResult<Vec<(Vec<usize>, T)>>
    where
        B: Fn(&[usize]) -> Vec<Cmd> + Sync,
        D: Fn(Vec<Value>, &[usize]) -> RedisResult<T> + Sync,
    {
        let Some(node) = group.node.as_ref().filter(|_| group.slots.len() > 1) else {
            return self.batch_by_slot(group.slots, read, build, decode).await;
        };
        let mut pipe = redis::pipe();
        let mut sizes = Vec::with_capacity(group.slots.len());
        for (_, indices) in &group.slots {
            let cmds = build(indices);
            sizes.push(cmds.len());
            for cmd in cmds {
                pipe.add_command(cmd);
            }
        }
        let count = pipe.len();
        // Route by the group's first slot: redis-rs maps it to the same primary as `node`,
        // since both come from the same slot map.
        let route = slot_route(group.slots[0].0, read);
        let mut conn = self.conn.clone();
        self.count(1);
        let answer = conn.route_pipeline(pipe, 0, count, route).await;
        let redirected = match pipeline_outcome(answer, count)? {
            Ok(values) => {
                let mut values = values.into_iter();
                let mut out = Vec::with_capacity(group.slots.len());
                for ((_, indices), n) in group.slots.iter().zip(sizes) {
                    let answers: Vec<Value> = values.by_ref().take(n).collect();
                    out.push((indices.clone(), decode(answers, indices)?));
                }
                return Ok(out);
            }
            Err(redirect) => redirect,
        };
        tracing::debug!(
            node = %node,
            slots = group.slots.len(),
            error = %self.inner.ctx.scrub(&redirected.to_string()),
            "batch pipeline met a topology change; retrying slot by slot"
        );
        self.batch_by_slot(group.slots, read, build, decode).await
    }

    /// One pipeline per slot (its commands), in parallel. A slot whose pipeline meets a
    /// redirect or `TRYAGAIN` (its slot is migrating: a pipeline does not follow `ASK`, and a
    /// multi-key command over keys not all on the source answers `TRYAGAIN` until the
    /// migration ends) is sent again key by key.
    pub(super) async fn batch_by_slot<T, B, D>(
        &self,
        slots: Vec<(u16, Vec<usize>)>,
        read: bool,
        build: &B,
        decode: &D,
    ) -> RedisResult<Vec<(Vec<usize>, T)>>
    where
        B: Fn(&[usize]) -> Vec<Cmd> + Sync,
        D: Fn(Vec<Value>, &[usize]) -> RedisResult<T> + Sync,
    {
        self.count(slots.len() as u64);
        let runs = slots.into_iter().map(|(slot, indices)| {
            let mut pipe = redis::pipe();
            for cmd in build(&indices) {
                pipe.add_command(cmd);
            }
            let count = pipe.len();
            let mut conn = self.conn.clone();
            async move {
                let answer = conn
                    .route_pipeline(pipe, 0, count, slot_route(slot, read))
                    .await;
                let redirected = match pipeline_outcome(answer, count)? {
                    Ok(values) => return Ok(vec![(indices.clone(), decode(values, &indices)?)]),
                    Err(redirect) => redirect,
                };
                tracing::debug!(
                    slot,
                    keys = indices.len(),
                    error = %self.inner.ctx.scrub(&redirected.to_string()),
                    "slot pipeline met a migration or redirect; sending key by key"
                );
                self.batch_key_by_key(indices, build, decode).await
            }
        });
        join_parts(runs).await
    }

    /// The keys at `indices` one at a time, in parallel: each key's commands (built for that
    /// key alone) are sent as single commands routed by their key, which redis-rs follows
    /// through `ASK`, `MOVED` and `TRYAGAIN` (see [`Self::send`]). Server errors reach
    /// `decode` as answers, as in a pipeline.
    pub(super) async fn batch_key_by_key<T, B, D>(
        &self,
        indices: Vec<usize>,
        build: &B,
        decode: &D,
    ) -> RedisResult<Vec<(Vec<usize>, T)>>
    where
        B: Fn(&[usize]) -> Vec<Cmd> + Sync,
        D: Fn(Vec<Value>, &[usize]) -> RedisResult<T> + Sync,
    {
        let runs = indices.into_iter().map(|i| async move {
            let mut answers = Vec::new();
            for cmd in build(&[i]) {
                answers.push(match self.send::<Value>(&cmd, None).await {
                    Ok(value) => value,
                    Err(e) => Value::ServerError(redis::ServerError::try_from(e)?),
                });
            }
            Ok::<_, RedisError>((vec![i], decode(answers, &[i])?))
        });
        join_all(runs).await.into_iter().collect()
    }
}

/// Run `parts` in parallel and concatenate their outputs, in order (the first error wins).
async fn join_parts<T, F>(parts: impl IntoIterator<Item = F>) -> RedisResult<Vec<T>>
where
    F: Future<Output = RedisResult<Vec<T>>>,
{
    let mut out = Vec::new();
    for part in join_all(parts).await {
        out.extend(part?);
    }
    Ok(out)
}

/// A pipeline's `count` answers (`Ok(Ok)`), or the redirect or reconfiguration error it met,
/// as a whole or in one of its answers (`Ok(Err)`: worth sending again another way), or
/// another failure (`Err`).
fn pipeline_outcome(
    answer: RedisResult<Vec<Value>>,
    count: usize,
) -> RedisResult<std::result::Result<Vec<Value>, RedisError>> {
    match answer {
        Ok(values) if values.len() == count => match values.iter().find_map(topology_error) {
            None => Ok(Ok(values)),
            Some(e) => Ok(Err(e)),
        },
        Ok(values) => Err(wrong_length(values.len(), count)),
        Err(e) if is_topology_error(&e) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

/// The redirect or reconfiguration error a pipeline answer carries, if any.
fn topology_error(answer: &Value) -> Option<RedisError> {
    match answer {
        Value::ServerError(_) => answer
            .clone()
            .extract_error()
            .err()
            .filter(is_topology_error),
        _ => None,
    }
}

/// Route of a batch's pipeline: the primary of `slot` (a replica may serve reads when the
/// read-routing strategy says so).
fn slot_route(slot: u16, read: bool) -> SingleNodeRoutingInfo {
    let addr = if read {
        SlotAddr::ReplicaOptional
    } else {
        SlotAddr::Master
    };
    SingleNodeRoutingInfo::SpecificNode(Route::new(slot, addr))
}

pub(super) fn wrong_length(got: usize, count: usize) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "pipeline answer of the wrong length",
        format!("{got} answers to {count} commands"),
    ))
}

/// The per-slot answers of a batch, back in the order of its `n` keys (`fill` where a key
/// got no answer).
pub(super) fn scatter<T: Clone>(n: usize, fill: T, parts: Vec<(Vec<usize>, Vec<T>)>) -> Vec<T> {
    let mut out = vec![fill; n];
    for (indices, values) in parts {
        for (i, v) in indices.into_iter().zip(values) {
            out[i] = v;
        }
    }
    out
}
