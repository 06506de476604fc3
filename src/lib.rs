//! dynostat: a small DogStatsD listener that forwards to Datadog, plus the
//! process supervisor and foreman-style runner that keep it beside an app.
//!
//! The modules follow the data's path:
//!
//! ```text
//! serve (UDP / Unix sockets, flush clock, shutdown)
//!   → dogstatsd::protocol (parse) → dogstatsd::aggregate (buckets)
//!   → forward (Datadog HTTP API, retry queue) or console table
//! ```
//!
//! and the process side:
//!
//! ```text
//! process::supervise (Job: spawn, restart, signal, reap)
//!   ← dyno::agent (dyno sidecar, Cedar) ← dyno::execd (Fir exec.d)
//!   ← process::runner (`start` / `run`, Procfile + .env)
//! ```
//!
//! [`config`] is the only module that reads environment variables.

pub mod config;
pub mod dogstatsd;
pub mod forward;
pub mod serve;

pub mod dyno;
pub mod process;
