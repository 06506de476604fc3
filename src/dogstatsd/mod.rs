//! The DogStatsD pipeline's data: datagrams are cut into lines and parsed
//! ([`scan`], with [`protocol`]'s parser) into
//! metrics, events and service checks, which are aggregated into per-interval
//! buckets ([`aggregate`]) under the names the Agent would give them
//! ([`mapper`]: mapper profiles, namespace, blocklist), distributions as
//! sketches ([`sketch`]); [`stats`] holds the listener's and forwarder's own
//! counters, reported as `dynostat.*`.
//!
//! Must never: do I/O. Sockets are in [`crate::serve`], HTTP in
//! [`crate::forward`].

pub mod aggregate;
pub mod mapper;
pub mod protocol;
pub mod scan;
pub mod sketch;
pub mod stats;
