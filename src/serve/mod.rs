//! The listener: sockets into the aggregator, the flush timer, and graceful
//! shutdown. This is `dynostat serve`.
//!
//! In: UDP datagrams on `DD_BIND_HOST:DD_DOGSTATSD_PORT` and, optionally, a
//! Unix datagram socket at `DD_DOGSTATSD_SOCKET`. Out: a
//! [`crate::dogstatsd::aggregate::Flush`] at every wall-clock boundary,
//! encoded and handed to the [`crate::forward::Forwarder`]'s sender thread.
//!
//! Threads: one receive thread per socket (batch reads with `recvmmsg` into
//! reused buffers, parse and aggregate under one short lock per batch), the
//! main thread (the flush clock, encoding, signals, and trimming idle memory
//! once ready and after each flush: [`memory`]), and the sender thread
//! (HTTP; see [`crate::forward::sender`]; it trims again once it has
//! delivered a flush).
//!
//! Must never: do HTTP or heavy flush work on the receive threads, wait on
//! the network on the clock (a slow intake must not merge or skip buckets),
//! log per packet, exit on SIGTERM before the open buckets are flushed, or
//! run past `DYNOSTAT_SHUTDOWN_GRACE + DYNOSTAT_SHUTDOWN_TIMEOUT` after it,
//! even with a thread that does not return ([`deadline`]).
//!
//! Progress: each receive loop and the flush clock beat a
//! [`crate::progress::Progress`]; with `DYNOSTAT_PROGRESS_FD` (set by the
//! agent), the watchdog thread tells the agent whether they all move.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::collectors::Scheduler;
use crate::config::{escape_truncate, Config};
use crate::dogstatsd::aggregate::{Aggregator, AggregatorOptions, InsertOutcome};
use crate::dogstatsd::mapper::NameRules;
use crate::dogstatsd::protocol::{ParseError, Parsed};
use crate::dogstatsd::scan;
use crate::dogstatsd::stats::Stats;
use crate::dynometrics::DynoMetrics;
use crate::forward::Forwarder;
use crate::progress::{Monitor, Progress};

mod cardinality;
mod deadline;
mod memory;
pub mod migration;

/// How long shutdown waits for the trace relay to hand over its kept traces
/// and open stats buckets (it gives requests in flight 0.8 s first): a relay
/// that is stuck must not take the time the metrics' final flush needs.
const RELAY_STOP_MAX: Duration = Duration::from_secs(3);

/// Datagrams read per `recvmmsg` call. 32 × 8 KiB = 256 KiB of reused buffer
/// per socket; larger batches gave no measurable gain in `scripts/bench.sh`.
const BATCH: usize = 32;

/// How often receive threads wake to check for shutdown when idle.
const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// At most one bad-line sample in the log per this period, per socket.
const BAD_LINE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Installs the `tracing` subscriber on stderr at `level`.
pub fn init_logging(level: crate::config::LogLevel) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level.as_filter())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Unix seconds now.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// State shared by the receive threads and the flush loop.
struct Shared {
    aggregator: Mutex<Aggregator>,
    stats: Arc<Stats>,
    stop: AtomicBool,
    /// The dyno collector, when `DYNOSTAT_DYNO_METRICS` is on: its series
    /// join each flush's self-telemetry.
    dyno: Option<DynoMetrics>,
    /// The cardinality guard's log (read at each flush).
    cardinality: Mutex<cardinality::CardinalityLog>,
    /// The loops that must keep moving (`crate::progress`).
    monitor: Arc<Monitor>,
    /// Where shutdown is ([`deadline::Phase`]), for the deadline's last line.
    phase: AtomicU8,
    /// `DYNOSTAT_TEST_STALL`: the stall line is honoured (tests only).
    test_stall: bool,
    /// The collectors' scheduler (the dyno sampler; the Postgres and Redis
    /// checks when enabled and this dyno is the one chosen): what the checks
    /// collected joins each flush's self-telemetry.
    collectors: Option<Scheduler>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Aggregator> {
        // A receive thread that panicked mid-batch leaves consistent-enough
        // state (every insert is self-contained), so keep serving.
        self.aggregator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs the listener until SIGTERM/SIGINT, then flushes and returns.
///
/// Shutdown follows DESIGN §6: keep receiving for `shutdown_grace`, close and
/// flush the open bucket, drain the retry queue until `shutdown_timeout`,
/// return. A second signal exits at once.
pub fn serve(config: Config) -> anyhow::Result<()> {
    memory::tune_malloc();
    let stats = Arc::new(Stats::default());
    let monitor = Arc::new(Monitor::new());
    let (dyno, collectors) = crate::collectors::start(&config, &monitor);
    let shared = Arc::new(Shared {
        aggregator: Mutex::new(Aggregator::new(AggregatorOptions {
            context_limit: config.context_limit,
            memory_bytes: config.aggregate_memory_bytes(),
            histogram_aggregates: config.histogram_aggregates.clone(),
            histogram_percentiles: config.histogram_percentiles.clone(),
            // Zeros are for Datadog's monitors; the local console (no key)
            // would print idle counters for five minutes.
            counter_expiry_secs: if config.api_key.is_some() {
                config.counter_expiry_secs
            } else {
                0
            },
            dogstatsd_tags: config.dogstatsd_tags.clone(),
            names: NameRules {
                mapper_profiles: config.mapper_profiles.clone(),
                mapper_cache_size: config.mapper_cache_size,
                namespace: config.metric_namespace.clone(),
                namespace_exceptions: config.namespace_exceptions.clone(),
                blocklist: config.metric_blocklist.clone(),
                blocklist_match_prefix: config.blocklist_match_prefix,
            },
            cardinality_warn: config.cardinality_warn,
        })),
        stats: Arc::clone(&stats),
        stop: AtomicBool::new(false),
        dyno,
        collectors,
        cardinality: Mutex::new(cardinality::CardinalityLog::new(
            config.cardinality_warn,
            config.console,
        )),
        monitor,
        phase: AtomicU8::new(deadline::Phase::Running as u8),
        test_stall: config.test_stall,
    });
    // SIGTERM ends the process by its deadline whatever a thread is doing.
    deadline::arm(&config, Arc::clone(&shared))?;
    if let Some(fd) = config.progress_fd {
        crate::progress::watch(Arc::clone(&shared.monitor), fd)
            .context("could not start the watchdog thread")?;
    }

    let mut receivers: Vec<JoinHandle<()>> = Vec::new();
    let mut bound = Vec::new();
    if config.port != 0 {
        let addr = SocketAddr::new(config.bind_host, config.port);
        let socket = UdpSocket::bind(addr).map_err(|e| bind_error(&e, addr))?;
        tune_socket(socket.as_raw_fd(), config.so_rcvbuf);
        bound.push(format!("udp://{addr}"));
        receivers.push(spawn_receiver(
            "udp",
            socket,
            config.buffer_size,
            Arc::clone(&shared),
        )?);
    }
    let unix_path = match &config.socket {
        Some(path) => {
            let socket = bind_unix(path)?;
            tune_socket(socket.as_raw_fd(), config.so_rcvbuf);
            bound.push(format!("unix://{}", path.display()));
            receivers.push(spawn_receiver(
                "unix",
                socket,
                config.buffer_size,
                Arc::clone(&shared),
            )?);
            Some(path.clone())
        }
        None => None,
    };
    if receivers.is_empty() {
        anyhow::bail!("nothing to listen on: DD_DOGSTATSD_PORT=0 and DD_DOGSTATSD_SOCKET is not set; set one of them");
    }

    // `/dogstatsd/v2/proxy` of the trace relay goes into the aggregator.
    let dogstatsd: crate::trace::DogstatsdHook = {
        let shared = Arc::clone(&shared);
        Arc::new(move |body: &[u8]| ingest_body(body, &shared))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the flush runtime")?;
    let result = runtime.block_on(flush_loop(&config, &shared, &bound, dogstatsd));

    shared.stop.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.join();
    }
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn bind_error(e: &io::Error, addr: SocketAddr) -> anyhow::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "{addr} is already in use: another dynostat or Datadog Agent is listening there; \
             stop it, or set DD_DOGSTATSD_PORT to a free port"
        )
    } else {
        anyhow::anyhow!("could not listen on {addr}: {e}; check DD_BIND_HOST and DD_DOGSTATSD_PORT")
    }
}

/// Binds a Unix datagram socket, replacing a stale socket file left by a
/// previous run but never one that a live listener still answers on.
fn bind_unix(path: &Path) -> anyhow::Result<UnixDatagram> {
    match UnixDatagram::bind(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let probe = UnixDatagram::unbound().context("could not create a probe socket")?;
            if probe.connect(path).is_ok() {
                anyhow::bail!(
                    "DD_DOGSTATSD_SOCKET={}: another listener is using this socket; stop it or choose another path",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("DD_DOGSTATSD_SOCKET={}: could not remove the stale socket", path.display()))?;
            UnixDatagram::bind(path)
                .with_context(|| format!("DD_DOGSTATSD_SOCKET={}: could not bind", path.display()))
        }
        Err(e) => Err(anyhow::anyhow!(
            "DD_DOGSTATSD_SOCKET={}: could not bind: {e}; use a path in a writable directory such as /tmp",
            path.display()
        )),
    }
}

/// Raises the receive buffer (as the Agent's high-throughput docs advise) and
/// sets the idle wake-up timeout. Both are best effort.
fn tune_socket(fd: RawFd, rcvbuf: usize) {
    let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is a live socket owned by the caller; the option values are
    // plain ints/timevals that outlive the calls.
    unsafe {
        if size > 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                len,
            ) != 0
        {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                len,
            );
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: libc::suseconds_t::try_from(RECV_TIMEOUT.as_micros()).unwrap_or(100_000),
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

fn spawn_receiver<S: AsRawFd + Send + 'static>(
    name: &'static str,
    socket: S,
    buffer_size: usize,
    shared: Arc<Shared>,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("recv-{name}"))
        .spawn(move || {
            let mut batch = Batch::new(buffer_size);
            let mut sampler = BadLineSampler::new(name);
            let progress = shared.monitor.register(
                if name == "udp" {
                    "the UDP receive loop"
                } else {
                    "the Unix socket receive loop"
                },
                RECEIVE_ALLOWANCE,
            );
            receive_loop(
                socket.as_raw_fd(),
                &mut batch,
                &mut sampler,
                &shared,
                &progress,
            );
        })
        .context("could not start a receive thread")
}

/// Reused `recvmmsg` buffers: one contiguous allocation for all datagrams.
struct Batch {
    size: usize,
    /// Headers the last call filled: the only ones the kernel wrote to.
    filled: usize,
    data: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(size: usize) -> Self {
        let mut data = vec![0u8; size * BATCH];
        let iovecs: Vec<libc::iovec> = data
            .chunks_mut(size)
            .map(|c| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: c.len(),
            })
            .collect();
        // SAFETY: mmsghdr is a plain C struct for which all-zeroes is valid.
        let headers = (0..BATCH)
            .map(|_| unsafe { std::mem::zeroed::<libc::mmsghdr>() })
            .collect();
        let mut b = Self {
            size,
            filled: BATCH,
            data,
            iovecs,
            headers,
        };
        b.reset();
        b
    }

    /// Re-points the headers the last call filled at their iovecs (the
    /// kernel writes lengths and flags back, into those only): at 1 M lines/s
    /// a call often returns one or two datagrams, and rewriting all 32 was
    /// most of the per-call work in user space.
    fn reset(&mut self) {
        let filled = std::mem::take(&mut self.filled);
        for (h, iov) in self
            .headers
            .iter_mut()
            .zip(self.iovecs.iter_mut())
            .take(filled)
        {
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_flags = 0;
            h.msg_hdr.msg_name = std::ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_len = 0;
        }
    }

    /// Blocks up to the socket timeout for at least one datagram; returns how many arrived.
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.reset();
        // SAFETY: headers point at iovecs, which point into `data`; all three
        // live in `self` and are not reallocated while the call runs.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        self.filled = n;
        Ok(n)
    }

    /// Datagram `i` of the last `recv`, and whether the kernel truncated it.
    fn datagram(&self, i: usize) -> (&[u8], bool) {
        let h = &self.headers[i];
        let len = (h.msg_len as usize).min(self.size);
        let start = i * self.size;
        (
            &self.data[start..start + len],
            h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        )
    }
}

fn receive_loop(
    fd: RawFd,
    batch: &mut Batch,
    sampler: &mut BadLineSampler,
    shared: &Shared,
    progress: &Progress,
) {
    let mut last_error_log: Option<Instant> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        // Once per call (at most 32 datagrams, or the 100 ms idle wake-up).
        progress.beat();
        let n = match batch.recv(fd) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                if last_error_log.is_none_or(|t| t.elapsed() > BAD_LINE_LOG_EVERY) {
                    tracing::warn!(error = %e, "receive error; continuing");
                    last_error_log = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        ingest(batch, n, sampler, shared);
    }
}

/// Parses and aggregates one batch under a single lock.
fn ingest(batch: &Batch, n: usize, sampler: &mut BadLineSampler, shared: &Shared) {
    let now = unix_now();
    let mut c = BatchCounts::default();
    {
        let mut agg = shared.lock();
        for i in 0..n {
            let (mut data, truncated) = batch.datagram(i);
            c.packets += 1;
            if truncated {
                // The last line was cut by the buffer: keep the whole lines only.
                c.truncated += 1;
                data = data
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(&[][..], |p| &data[..p]);
            }
            // One UTF-8 check per datagram rather than per line; a datagram
            // with invalid bytes falls back to per-line checks, so only its
            // bad lines are dropped.
            // `simdutf8` (SSE4.2 or AVX2, picked at run time) checks an
            // 8 KiB datagram several times faster than `std::str::from_utf8`.
            let text = simdutf8::basic::from_utf8(data).ok();
            aggregate(
                &mut agg,
                data,
                text,
                now,
                &mut c,
                sampler,
                shared.test_stall,
            );
        }
    }
    c.publish(&shared.stats);
}

/// Parses one datagram's lines (`text`: the datagram, when it is all
/// UTF-8) into the aggregator, counting each outcome: the one path of the
/// sockets and the trace relay's `/dogstatsd/v2/proxy`.
#[inline]
fn aggregate(
    agg: &mut Aggregator,
    data: &[u8],
    text: Option<&str>,
    now: i64,
    c: &mut BatchCounts,
    sampler: &mut BadLineSampler,
    test_stall: bool,
) {
    for (line, parsed) in scan::datagram(data, text) {
        c.lines += 1;
        match parsed {
            Ok(Parsed::Metric(ref m)) => match agg.insert(m, now) {
                InsertOutcome::Accepted => c.metrics += 1,
                InsertOutcome::ContextLimit => c.contexts_dropped += 1,
                InsertOutcome::Discarded => c.discarded += 1,
                InsertOutcome::Filtered => c.filtered += 1,
                // Counted per value in the bucket (`Bucket::dropped`).
                InsertOutcome::MemoryLimit => {}
            },
            Ok(Parsed::Event(e)) => {
                c.events += 1;
                agg.insert_event(*e);
            }
            Ok(Parsed::ServiceCheck(sc)) => {
                c.checks += 1;
                agg.insert_service_check(*sc);
            }
            Err(e) => {
                c.parse_errors += 1;
                if test_stall && line == STALL_LINE {
                    stall();
                }
                sampler.record(line, e);
            }
        }
    }
}

/// The line that stalls a receive thread when `DYNOSTAT_TEST_STALL` is set
/// (it has no `:`, so it reaches only the parse-error path).
const STALL_LINE: &[u8] = b"dynostat-test-stall";

/// How long a receive loop may go without a `recvmmsg` call before the
/// watchdog says it stalled: it wakes every 100 ms when idle, and a batch of
/// 32 datagrams takes milliseconds.
const RECEIVE_ALLOWANCE: Duration = Duration::from_secs(2);

/// Tests only: spins forever, holding the aggregator, as a thread stuck in
/// work set by a number from the wire would (issue 22).
#[cold]
#[inline(never)]
fn stall() -> ! {
    tracing::warn!("DYNOSTAT_TEST_STALL: this receive thread now spins forever, as asked");
    loop {
        std::hint::spin_loop();
    }
}

/// DogStatsD lines that came another way than a socket (the trace relay's
/// `/dogstatsd/v2/proxy`), parsed and aggregated as one datagram.
fn ingest_body(data: &[u8], shared: &Shared) {
    let now = unix_now();
    let mut c = BatchCounts::default();
    let mut sampler = BadLineSampler::new("dogstatsd/v2/proxy");
    {
        let mut agg = shared.lock();
        let text = simdutf8::basic::from_utf8(data).ok();
        aggregate(&mut agg, data, text, now, &mut c, &mut sampler, false);
    }
    c.publish(&shared.stats);
}

/// Per-batch counters, published with one atomic add each.
#[derive(Default)]
struct BatchCounts {
    packets: u64,
    truncated: u64,
    lines: u64,
    metrics: u64,
    events: u64,
    checks: u64,
    parse_errors: u64,
    contexts_dropped: u64,
    discarded: u64,
    filtered: u64,
}

impl BatchCounts {
    fn publish(&self, s: &Stats) {
        for (counter, n) in [
            (&s.packets, self.packets),
            (&s.packets_truncated, self.truncated),
            (&s.lines, self.lines),
            (&s.metrics, self.metrics),
            (&s.events, self.events),
            (&s.service_checks, self.checks),
            (&s.parse_errors, self.parse_errors),
            (&s.contexts_dropped, self.contexts_dropped),
            (&s.samples_discarded, self.discarded),
            (&s.metrics_filtered, self.filtered),
        ] {
            if n > 0 {
                Stats::add(counter, n);
            }
        }
    }
}

/// Logs a sample of bad lines at a bounded rate: the first one, then at most
/// one per [`BAD_LINE_LOG_EVERY`], with the count of the others since.
struct BadLineSampler {
    socket: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl BadLineSampler {
    fn new(socket: &'static str) -> Self {
        Self {
            socket,
            last: None,
            suppressed: 0,
        }
    }

    fn record(&mut self, line: &[u8], error: ParseError) {
        if self.last.is_some_and(|t| t.elapsed() < BAD_LINE_LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        self.log(line, error);
    }

    #[cold]
    fn log(&mut self, line: &[u8], error: ParseError) {
        let sample = escape_truncate(&String::from_utf8_lossy(&line[..line.len().min(200)]), 120);
        tracing::warn!(
            socket = self.socket,
            %error,
            line = %sample,
            others_since_last_sample = self.suppressed,
            "dropped a malformed DogStatsD line (counted in dynostat.parse_errors)"
        );
        self.suppressed = 0;
        self.last = Some(Instant::now());
    }
}

/// Unix milliseconds now.
fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock flush boundaries: every multiple of the interval, so
/// buckets line up across dynos as the Agent's do. Each boundary is known
/// before it is reached, and the bucket closed there is stamped with its
/// start (the boundary before), never with a time read afterwards.
struct Clock {
    interval_ms: u64,
    /// The next boundary, unix ms.
    next: u64,
}

impl Clock {
    fn new(interval_s: u64) -> Self {
        let interval_ms = interval_s.max(1) * 1000;
        let now = unix_now_ms();
        Self {
            interval_ms,
            next: (now / interval_ms + 1) * interval_ms,
        }
    }

    /// Sleeps until the next boundary.
    async fn tick(&self) {
        let wait = self.next.saturating_sub(unix_now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        // A timer may fire a hair early against the wall clock: finish the wait.
        let left = self.next.saturating_sub(unix_now_ms());
        if left > 0 {
            tokio::time::sleep(Duration::from_millis(left)).await;
        }
    }

    /// The boundary just reached: returns the start (unix s) of the bucket it
    /// closes, and moves on to the next boundary. Boundaries missed while the
    /// process could not run (a stopped or starved process) are skipped, said
    /// once: their samples are in this bucket, which cannot be split again.
    fn advance(&mut self) -> i64 {
        let start = self.next - self.interval_ms;
        self.next += self.interval_ms;
        let now = unix_now_ms();
        if self.next <= now {
            let missed = (now - self.next) / self.interval_ms + 1;
            tracing::warn!(
                missed,
                "the flush clock could not run for {missed} interval(s) (the process was stopped or starved of CPU); \
                 their samples go out in the next bucket"
            );
            self.next += missed * self.interval_ms;
        }
        i64::try_from(start / 1000).unwrap_or(i64::MAX)
    }

    /// The start (unix s) of the bucket open now.
    fn open_bucket(&self) -> i64 {
        i64::try_from((self.next - self.interval_ms) / 1000).unwrap_or(i64::MAX)
    }
}

async fn flush_loop(
    config: &Config,
    shared: &Shared,
    bound: &[String],
    dogstatsd: crate::trace::DogstatsdHook,
) -> anyhow::Result<()> {
    // Between flushes, keep only what the idle threads touch resident: trim
    // after each flush, and again on the sender thread once it has delivered
    // the flush (its requests touch code and buffers the first trim freed).
    let trimmer = Arc::new(memory::Trimmer::new());
    let idle: crate::forward::IdleHook = {
        let trimmer = Arc::clone(&trimmer);
        Arc::new(move || trimmer.trim())
    };
    let mut forwarder = Forwarder::with_idle_hook(config, Arc::clone(&shared.stats), idle)?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("could not install the SIGTERM handler")?;
    let mut sigint =
        signal(SignalKind::interrupt()).context("could not install the SIGINT handler")?;
    let interval = config.flush_interval.as_secs().max(1);
    // The trace relay, beside the sockets: its payloads go to the same
    // sender. A port it cannot bind costs the traces, never the metrics.
    let relay = match crate::trace::Relay::start(
        config,
        forwarder.sink(),
        Arc::clone(&shared.stats),
        dogstatsd,
        shared
            .monitor
            .register("the trace relay", crate::trace::PROGRESS_ALLOWANCE),
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e:#}; traces are not received");
            None
        }
    };
    let mut bound = bound.to_vec();
    if let Some(r) = &relay {
        bound.extend(r.bound.iter().cloned());
    }

    tracing::info!(
        on = %bound.join(", "),
        flush_interval_s = interval,
        forwarding = if config.api_key.is_some() { config.intake_url.as_str() } else if config.console { "console" } else { "off (no DD_API_KEY)" },
        "dynostat listening"
    );
    // The start-up code (config, the client's set-up) is not run again.
    trimmer.trim();

    // The clock: nothing in this loop waits on the network. Flushing encodes
    // and hands the payloads to the sender thread, which sends them.
    let mut clock = Clock::new(interval);
    // No flush for two intervals and a bit: the clock (or what it waits on,
    // such as the aggregator's lock) stopped.
    let progress = shared.monitor.register(
        "the flush clock",
        Duration::from_secs(2 * interval) + Duration::from_secs(2),
    );
    let signal_name = loop {
        tokio::select! {
            () = clock.tick() => {
                let bucket_start = clock.advance();
                flush(shared, &mut forwarder, bucket_start, interval).await;
                progress.beat();
                trimmer.trim();
            }
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
        }
    };
    let signalled = Instant::now();
    let deadline = signalled + config.shutdown_grace + config.shutdown_timeout;
    shared.monitor.stopping();
    drop(progress);
    deadline::enter(shared, deadline::Phase::Grace);

    // A second Ctrl-C (SIGINT) exits at once, with the conventional 128 + 2.
    // Repeated SIGTERMs do not: Heroku sends SIGTERM to every process in the
    // dyno, possibly more than once, and the agent passes its own on too, so
    // a second SIGTERM is normal and must not cost the final flush.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigterm.recv() => tracing::debug!("SIGTERM again; still flushing"),
                _ = sigint.recv() => std::process::exit(128 + libc::SIGINT),
            }
        }
    });

    tracing::info!(
        signal = signal_name,
        grace_ms = u64::try_from(config.shutdown_grace.as_millis()).unwrap_or(u64::MAX),
        "stopping: receiving the last metrics, then flushing the open buckets"
    );
    // Keep receiving for the grace period; boundaries inside it flush as usual.
    let grace = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            () = &mut grace => break,
            () = clock.tick() => {
                let bucket_start = clock.advance();
                flush(shared, &mut forwarder, bucket_start, interval).await;
            }
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    deadline::enter(shared, deadline::Phase::FinalFlush);
    // The relay hands over its kept traces and open stats buckets first, so
    // the drain below delivers them with the metrics.
    // A stuck relay gets a few seconds, never the metrics' whole deadline.
    if let Some(relay) = relay {
        relay
            .stop(deadline.min(Instant::now() + RELAY_STOP_MAX))
            .await;
    }
    flush(shared, &mut forwarder, clock.open_bucket(), interval).await;
    deadline::enter(shared, deadline::Phase::Draining);
    forwarder.drain(deadline).await;
    deadline::enter(shared, deadline::Phase::Done);
    tracing::info!(
        after_ms = u64::try_from(signalled.elapsed().as_millis()).unwrap_or(u64::MAX),
        "stopped"
    );
    Ok(())
}

/// Closes the open bucket and hands it, with self-telemetry, to the forwarder.
///
/// The bucket goes over in chunks of [`crate::dogstatsd::aggregate::CHUNK_CONTEXTS`]
/// contexts, each built, encoded and dropped before the next, so a flush of
/// many contexts costs little more memory than the contexts themselves. The
/// self-telemetry comes last, once every chunk is built, so
/// `dynostat.flush.duration_ms` covers the whole build (not the encoding
/// between chunks).
async fn flush(shared: &Shared, forwarder: &mut Forwarder, bucket_start: i64, interval: u64) {
    use std::cell::Cell;
    let started = Instant::now();
    let (bucket, memory) = {
        let mut agg = shared.lock();
        let memory = agg.memory_bytes();
        (agg.take(), memory)
    };
    let contexts = bucket.contexts();
    shared
        .cardinality
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .report(bucket.wide_names(), started);
    let stats = &shared.stats;
    stats.memory_bytes.store(memory as u64, Ordering::Relaxed);
    // Values, members, points and bins refused at the memory budget.
    Stats::add(&stats.samples_dropped, bucket.dropped());
    // Events and service checks past the per-interval cap were counted as
    // received by the receive loop; count them as discarded too.
    Stats::add(&stats.samples_discarded, bucket.overflowed());
    Stats::add(&stats.rates_clamped, bucket.clamped());
    let built = Cell::new(started.elapsed());
    // series, distributions, events, service checks
    let counts = Cell::new([0usize; 4]);
    // The histograms' samples are handed out here, before the first chunk.
    let t = Instant::now();
    let mut chunks = bucket.into_chunks(
        bucket_start,
        interval,
        crate::dogstatsd::aggregate::CHUNK_CONTEXTS,
    );
    built.set(built.get() + t.elapsed());
    Stats::add(&stats.zero_fill_dropped, chunks.zero_fill_untracked());
    let bucket_chunks = std::iter::from_fn(|| {
        let t = Instant::now();
        let chunk = chunks.next();
        built.set(built.get() + t.elapsed());
        if let Some(c) = &chunk {
            let [s, d, e, k] = counts.get();
            counts.set([
                s + c.series.len(),
                d + c.distributions.len(),
                e + c.events.len(),
                k + c.service_checks.len(),
            ]);
        }
        chunk
    });
    let telemetry = || {
        stats.contexts.store(contexts as u64, Ordering::Relaxed);
        stats.flush_ms.store(
            u64::try_from(built.get().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let dropped = stats.contexts_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "new contexts dropped at the context or memory limit; raise DYNOSTAT_MEMORY_LIMIT \
                 (or DYNOSTAT_CONTEXT_LIMIT) or send fewer tag combinations"
            );
        }
        let samples = stats.samples_dropped.load(Ordering::Relaxed);
        if samples > 0 {
            tracing::warn!(
                dropped = samples,
                "samples dropped at the memory limit (histogram samples left out of percentiles, \
                 new set members, |T points, new distribution bins); raise DYNOSTAT_MEMORY_LIMIT"
            );
        }
        // Every counter, and `dynostat.dropped` when something was lost;
        // the forwarder leaves out what the user did not ask to pay for.
        let snapshot = stats.drain();
        let mut series = snapshot.series(bucket_start, interval);
        series.extend(snapshot.dropped_series(bucket_start, interval));
        if let Some(dyno) = &shared.dyno {
            series.extend(dyno.series(bucket_start, interval));
        }
        let mut service_checks = Vec::new();
        if let Some(collectors) = &shared.collectors {
            let (mut collected, dropped) = collectors.drain();
            series.append(&mut collected.series);
            service_checks = collected.checks;
            if dropped > 0 {
                tracing::warn!(dropped, "check series dropped: more than the collectors' outbox holds between two flushes");
            }
        }
        let [s, d, e, k] = counts.get();
        tracing::debug!(
            series = s + series.len(),
            distributions = d,
            events = e,
            service_checks = k,
            "flush"
        );
        (
            crate::dogstatsd::aggregate::Flush {
                series,
                service_checks,
                ..Default::default()
            },
            snapshot.carry(),
        )
    };
    forwarder.submit_flush(bucket_chunks, telemetry).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// Batches of different sizes through one [`Batch`]: every datagram is
    /// read whole, and a truncation is reported for its own datagram only,
    /// though only the headers the previous call filled are reset.
    #[test]
    fn a_batch_reads_each_call_right_after_calls_of_other_sizes() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let mut batch = Batch::new(16);
        let fd = rx.as_raw_fd();
        for (round, count) in [5usize, 2, BATCH, 1, 3].into_iter().enumerate() {
            // The second datagram of each round is too long for the buffer.
            let sent: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    format!(
                        "r{round}:{i}|c{}",
                        if i == 1 {
                            "x".repeat(40)
                        } else {
                            String::new()
                        }
                    )
                    .into_bytes()
                })
                .collect();
            for d in &sent {
                tx.send(d).unwrap();
            }
            let mut got = 0;
            while got < count {
                let n = batch.recv(fd).unwrap();
                for i in 0..n {
                    let (data, truncated) = batch.datagram(i);
                    let want = &sent[got + i];
                    assert_eq!(
                        truncated,
                        want.len() > 16,
                        "round {round}, datagram {}",
                        got + i
                    );
                    assert_eq!(data, &want[..want.len().min(16)], "round {round}");
                }
                got += n;
            }
            assert_eq!(got, count, "round {round}");
        }
    }
}
