//! Forwarding: turns a [`Flush`] into Datadog API requests, or a console table.
//!
//! In: [`Flush`]es from the flush loop. Out: compressed `POST`s to
//! `/api/v2/series`, `/api/v1/distribution_points`, `/api/v1/events` and
//! `/api/v1/check_run`, split below the intake's limits, with a bounded retry
//! queue; or, without an API key, a table on stdout.
//!
//! Must never: block the receive path (it runs on the flush thread's runtime),
//! hold more than the retry-queue byte limit, send an accepted payload twice,
//! or print the API key.

use std::sync::Arc;
use std::time::Instant;

use crate::aggregate::Flush;
use crate::config::Config;
use crate::stats::Stats;

/// Where flushes go.
#[derive(Debug)]
pub struct Forwarder {
    stats: Arc<Stats>,
}

impl Forwarder {
    /// Builds the HTTP client or console sink from the config.
    pub fn new(config: &Config, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let _ = config;
        Ok(Self { stats })
    }

    /// Sends (or prints) one flush. Failed retryable payloads go to the retry
    /// queue; this returns once the fresh payloads have been tried once.
    pub async fn submit(&mut self, flush: Flush) {
        let _ = (flush, &self.stats);
    }

    /// Retries what the queue holds whose backoff has expired.
    pub async fn retry_due(&mut self) {}

    /// Shutdown: retries everything queued until it is empty or `deadline` passes.
    pub async fn drain(&mut self, deadline: Instant) {
        let _ = deadline;
    }
}
