//! dynostat: a small DogStatsD listener that forwards to Datadog, plus the
//! process supervisor and foreman-style runner that keep it beside an app.
//!
//! The modules follow the data's path:
//!
//! ```text
//! listen (UDP / Unix sockets) → protocol (parse) → aggregate (10 s buckets)
//!        → forward (Datadog HTTP API, retry queue) or console table
//! ```
//!
//! and the process side:
//!
//! ```text
//! supervise (Job: spawn, restart, signal, reap) ← agent (dyno sidecar)
//!                                               ← runner (`start` / `run`, Procfile + .env)
//! ```
//!
//! [`config`] is the only module that reads environment variables.

pub mod aggregate;
pub mod config;
pub mod forward;
pub mod listen;
pub mod protocol;
pub mod stats;

pub mod agent;
pub mod dotenv;
pub mod execd;
pub mod procfile;
pub mod runner;
pub mod supervise;
