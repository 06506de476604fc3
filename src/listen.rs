//! The listener: sockets into the aggregator, the flush timer, and graceful
//! shutdown. This is `dynostat serve`.
//!
//! In: UDP datagrams on `DD_BIND_HOST:DD_DOGSTATSD_PORT` and, optionally, a
//! Unix datagram socket. Out: a [`crate::aggregate::Flush`] every interval,
//! handed to the [`crate::forward::Forwarder`] on its own thread.
//!
//! Must never: do HTTP or heavy flush work on the receive threads, or exit on
//! SIGTERM before the open buckets are flushed.

use crate::config::Config;

/// Runs the listener until SIGTERM/SIGINT, then flushes and returns.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let _ = config;
    Ok(())
}

/// Installs the `tracing` subscriber on stderr at `level`.
pub fn init_logging(level: crate::config::LogLevel) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level.as_filter())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
