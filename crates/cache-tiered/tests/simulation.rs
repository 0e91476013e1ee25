//! The seeded simulation of every public operation under faults (issue 13, item 2).
//!
//! `simulation_in_memory` runs thousands of seeds, each: 2-3 engines over one in-memory L2 and
//! one in-memory bus behind fault layers (latency, transient and ambiguous errors, outages,
//! lost, late and reordered bus messages, disconnects), a model database, and 20-60 steps of
//! `get`, `get_or_load`, `get_or_load_optional`, `get_many`, `get_many_or_load`, `set`,
//! `set_with_tags`, `write`, `invalidate`, `invalidate_tag`, `clear_namespace`, write-behind,
//! building and dropping cache handles and engines, some of them concurrent; then the faults
//! stop, everything settles, and the invariants are checked (see `sim/world.rs`). Time is
//! tokio's paused clock, so every sleep is free and a seed replays exactly.
//!
//! `simulation_on_redis` runs a few seeds of the same mix on a real redis-server through
//! fault proxies, in real time.
//!
//! `cargo xtask sim [--seeds N] [--seed S]` runs this target with `SIM_SEEDS` / `SIM_SEED`;
//! see `sim/runner.rs` for every variable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sim;

#[test]
fn simulation_in_memory() {
    sim::runner::memory_main();
}

#[test]
fn simulation_on_redis() {
    sim::runner::redis_main();
}
