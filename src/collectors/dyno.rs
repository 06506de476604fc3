//! The dyno collector (DESIGN §5b) as one of the collectors: it takes a
//! [`Sampler`] sample every 5 s, on the wall-clock phase
//! [`until_next_sample`] gives, and leaves it for
//! [`crate::dynometrics::DynoMetrics::series`], which turns the latest
//! sample into `heroku.dyno.*` series at each flush, stamped with the
//! bucket (so its output is not the series a check returns).
//!
//! The sampler is made on the first run, on the collectors' thread: it
//! leaves the thread that scans out of the load, and that is this one. The
//! first sample counts no load tick (the kernel's averages also start at
//! 0); the first tick comes a whole period later, not while the dyno's boot
//! (and the listener's own) may still be running.

use std::time::Duration;

use super::{CollectFuture, Collected, Collector};
use crate::dynometrics::load::LOAD_FREQ;
use crate::dynometrics::{until_next_sample, Latest, Sampler};

/// The dyno sampler, as a collector.
pub struct DynoCollector {
    latest: Latest,
    sampler: Option<Sampler>,
    runs: u64,
}

impl DynoCollector {
    /// Samples into `latest`.
    pub fn new(latest: Latest) -> Self {
        Self {
            latest,
            sampler: None,
            runs: 0,
        }
    }
}

impl Collector for DynoCollector {
    fn name(&self) -> &str {
        "dyno metrics"
    }

    fn interval(&self) -> Duration {
        LOAD_FREQ
    }

    fn collect<'a>(&'a mut self, _out: &'a mut Collected) -> CollectFuture<'a> {
        let sampler = self.sampler.get_or_insert_with(Sampler::new);
        let sample = sampler.sample(self.runs > 0);
        self.latest.set(sample);
        self.runs += 1;
        Box::pin(std::future::ready(Ok(())))
    }

    fn abandon(&mut self, _out: &mut Collected) {}

    fn next_in(&self) -> Option<Duration> {
        Some(if self.runs == 1 {
            until_next_sample() + LOAD_FREQ
        } else {
            until_next_sample()
        })
    }
}
