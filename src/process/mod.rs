//! The process side: [`supervise`] (the `Job` type: spawn, restart, signal,
//! reap), and the foreman-style local runner ([`runner`]: `start`, `run`,
//! `check`) with its inputs, [`procfile`] and [`dotenv`].
//!
//! Must never: import the DogStatsD pipeline. The runner starts the listener
//! as a child process (`dynostat serve`), not as a library call.

pub mod dotenv;
pub mod procfile;
pub mod runner;
pub mod supervise;
