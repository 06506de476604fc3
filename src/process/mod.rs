//! The process side: [`supervise`] (the `Job` type: spawn, restart, signal,
//! reap), and the foreman-style local runner ([`runner`]: `start`, `run`,
//! `check`) with its inputs, [`procfile`], [`dotenv`] and the `.foreman`
//! defaults file ([`foreman`]).
//!
//! Must never: import the DogStatsD pipeline. The runner starts the listener
//! as a child process (`dynostat serve`), not as a library call.

pub mod dotenv;
pub mod foreman;
pub mod procfile;
pub mod runner;
pub mod supervise;
