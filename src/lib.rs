//! dynostat: a small DogStatsD listener that forwards to Datadog, plus the
//! process supervisor and foreman-style runner that keep it beside an app.
//!
//! The modules follow the data's path:
//!
//! ```text
//! serve (UDP / Unix sockets, flush clock, shutdown)
//!   → dogstatsd::protocol (parse) → dogstatsd::aggregate (buckets)
//!   → forward (Datadog HTTP API, retry queue) or console table
//! trace (tracers' HTTP on 127.0.0.1:8126: decode, process, stats, sample)
//!   → forward (the same sender and queue), or a console summary
//! collectors (one scheduler thread): the dyno sampler (dynometrics: the
//!   dyno's memory, load, CPU every 5 s), the Postgres and Redis checks
//!   → appended to each of serve's flushes
//! ```
//!
//! and the process side:
//!
//! ```text
//! process::supervise (Job: spawn, restart, signal, reap)
//!   ← dyno::agent (dyno sidecar, Cedar) ← dyno::execd (Fir exec.d)
//!   ← process::runner (`start` / `run`, Procfile + .env + .foreman)
//! ```
//!
//! One folder per part, each importing only the ones listed before it:
//! [`config`] (read the environment; the only module that does),
//! [`dogstatsd`] (parse and aggregate), [`forward`] (send), [`trace`] (the
//! APM trace relay, a sibling input to `dogstatsd`), [`dynometrics`]
//! (the dyno's own memory, load and CPU), [`collectors`] (what dynostat
//! measures itself: the dyno sampler, the Postgres and Redis checks),
//! [`progress`] (loops that must keep moving, watched for the agent; imports
//! nothing), [`serve`] (the listener), [`process`] (supervise, and run a Procfile locally), [`dyno`]
//! (Heroku glue).

pub mod collectors;
pub mod config;
pub mod dogstatsd;
pub mod dynometrics;
pub mod forward;
pub mod progress;
pub mod serve;
pub mod trace;

pub mod dyno;
pub mod process;
