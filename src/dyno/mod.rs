//! Heroku glue: how dynostat runs inside a dyno. [`agent`] is the supervisor
//! the Cedar boot script (`.profile.d`) starts; [`execd`] is the Fir (CNB)
//! `exec.d` program that starts the same agent, detached.
//!
//! Must never: block or fail the app's boot.

pub mod agent;
pub mod execd;
