//! The seeded simulation of issue 13: several engines over one shared L2 and one invalidation
//! bus, under injected faults, running a random mix of every public operation against a model
//! database, then checking after quiescence that every instance agrees with the database.
//!
//! - [`rng`]: the seeded random source and the trace of one seed.
//! - [`clock`]: a [`cache_tiered::Clock`] that reads tokio's (virtual) time.
//! - [`store`]: the fault layer in front of the shared in-memory L2.
//! - [`bus`]: the fault layer over a `MemoryBus` handle (drops, delays, disconnects).
//! - [`faults`]: the fault profile of a seed and the switches the fault layers read.
//! - [`model`]: the model database, the loaders and writers reading and writing it.
//! - [`plan`]: the random sequence of steps of one seed.
//! - [`world`]: the instances, the execution of the steps and the final checks.
//! - [`runner`]: seeds, threads, environment variables and the report.

pub mod bus;
pub mod clock;
pub mod faults;
pub mod model;
pub mod plan;
pub mod rng;
pub mod runner;
pub mod store;
pub mod world;
