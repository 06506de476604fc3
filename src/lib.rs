//! dynostat: a small DogStatsD listener that forwards to Datadog, plus the
//! process supervisor and foreman-style runner that keep it beside an app.
//!
//! The modules follow the data's path:
//!
//! ```text
//! serve (UDP / Unix sockets, flush clock, shutdown)
//!   → dogstatsd::protocol (parse) → dogstatsd::aggregate (buckets)
//!   → forward (Datadog HTTP API, retry queue) or console table
//! dynometrics (the dyno's memory, load, CPU; sampled every 5 s)
//!   → appended to each of serve's flushes
//! collectors (the Postgres and Redis checks, on one scheduler thread)
//!   → what they collected goes out with the next flush
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
//! [`dogstatsd`] (parse and aggregate), [`forward`] (send), [`dynometrics`]
//! (the dyno's own memory, load and CPU), [`collectors`] (the Postgres and
//! Redis checks), [`serve`] (the listener), [`process`] (supervise, and run a Procfile locally), [`dyno`]
//! (Heroku glue).

pub mod collectors;
pub mod config;
pub mod dogstatsd;
pub mod dynometrics;
pub mod forward;
pub mod serve;

pub mod dyno;
pub mod process;
