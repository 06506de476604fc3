//! DogStatsD load generator and benchmark probe for `dynostat` and its peers.
//!
//! In: command-line options (see `usage()`); the target is always 127.0.0.1.
//! Out: a report (JSON line or table) with sent lines and datagrams, elapsed
//! time, achieved rate, the server's CPU seconds and RSS (read from
//! `/proc/PID/...`), and kernel drop counters (`/proc/net/snmp` and the
//! per-socket `drops` column of `/proc/net/udp{,6}`), from which it estimates
//! the lines the server actually received.
//!
//! Modes:
//! - `loadgen [send] --port P --lines N --rate R --contexts C --server-pid PID`
//!   sends a load of one of these shapes (`--shape`): `mixed` (counters,
//!   gauges, histograms, sets; 3 tags per line; lines packed into datagrams
//!   of at most 1432 bytes, about 30 lines each), `counters`, `gauges`,
//!   `histograms` or `sets` (the same with that one type only, to see what
//!   each costs) or `long` (the shape of Datadog's SMP "3k contexts"
//!   DogStatsD cases: 3,000 contexts, names of 1 to 200 characters, 2 to 50
//!   tags of 3 to 150 characters, 8 KiB datagrams).
//! - `loadgen startup --port P --runs 20 -- CMD ARGS...` execs CMD repeatedly
//!   and reports the time from exec until the UDP port is bound and until the
//!   child writes a line containing "listening" to stderr (median of the runs).
//!   `--env-clear` and `--env K=V` set the child's environment at the exec
//!   itself, so no `env` process runs (and is timed) in front of the server.
//!
//! - `loadgen floor --port P --seconds S` is the floor receiver: `recvmmsg`
//!   batches into reused buffers, parsing nothing, with the same socket
//!   buffer as dynostat asks for. What a server costs beyond it is its own
//!   work. `loadgen sink` is the same receiver, as the upstream a proxy peer
//!   (statsdproxy) forwards to.
//!
//! Server CPU is the sum of every thread's on-CPU time from
//! `/proc/PID/task/*/schedstat` (nanoseconds), finer than the 10 ms ticks of
//! `/proc/PID/stat`; a thread that exits between the two reads takes its
//! time with it (the servers measured here keep their threads).
//!
//! It must never send anywhere but 127.0.0.1, and every wait it does is bounded
//! by a deadline. It uses only `std`, so it also builds without cargo:
//! `rustc --edition 2021 -C opt-level=3 examples/loadgen.rs -o loadgen`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "../benches/common/splitmix.rs"]
mod splitmix;
use splitmix::Rng;

/// The largest datagram the generator builds: the DogStatsD clients' default
/// for UDP over a 1500-byte MTU, as in the target load.
const DEFAULT_MAX_DATAGRAM: usize = 1432;

fn usage() -> &'static str {
    "usage:
  loadgen [send] [--port 8125] [--lines 10000000] [--rate 0] [--contexts 1000]
                 [--server-pid PID] [--format table|json] [--label NAME]
                 [--max-datagram 1432] [--drain-timeout-ms 10000] [--settle-ms 300]
                 [--wait-port-ms 0] [--hist-type h|ms] [--shape SHAPE]
      --rate is lines per second; 0 sends as fast as one thread can.
      --shape: mixed (c/g/h/s in turn, 3 short tags, 1432-byte datagrams),
        counters, gauges, histograms or sets (the same, that type only), or long (3,000 contexts, names
        of 1-200 characters, 2-50 tags of 3-150 characters, 8 KiB datagrams,
        types weighted c 208 : g 66 : d 72 : s 9 : h 1, as in Datadog's SMP
        \"3k contexts\" DogStatsD cases); --contexts and --max-datagram
        override the long shape's 3000 and 8192.
      --server-pid reads /proc/PID/task/*/schedstat (CPU) and /proc/PID/status
        (VmRSS, VmHWM, RssAnon) after; CPU is read after the server's socket
        queue has drained (bounded by --drain-timeout-ms) and --settle-ms more.
      --wait-port-ms waits up to that long for the port to be bound first.
      --hist-type picks the histogram lines' type: h, or ms (a timer, which
        DogStatsD aggregates exactly like h and Etsy statsd treats as a timer).
  loadgen startup [--port 8125] [--runs 20] [--timeout-ms 5000] [--format table|json]
                  [--ready both|port] [--env-clear] [--env K=V]... -- CMD [ARGS...]
      execs CMD --runs times (environment inherited, or emptied by --env-clear;
      each --env adds one variable) and reports the time from
      exec to the UDP port being bound and to a stderr line containing
      \"listening\" (--ready port: the port only, for servers that log no
      such line); each child is killed (SIGKILL) after it is ready.
  loadgen floor [--port 8126] [--seconds 600]
      the floor receiver: binds 127.0.0.1:PORT with dynostat's socket buffer,
      reads with recvmmsg (32 datagrams of up to 8 KiB a call) into reused
      buffers, parses nothing, exits after --seconds and prints the calls,
      datagrams and bytes it read.
  loadgen sink [--port 8126] [--seconds 600]
      the same receiver, as an upstream for a proxy peer."
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Some("startup") => StartupOpts::parse(&args[1..]).and_then(|o| run_startup(&o)),
        Some("floor") => run_floor(&args[1..], "floor"),
        Some("sink") => run_floor(&args[1..], "sink"),
        Some("send") => SendOpts::parse(&args[1..]).and_then(|o| run_send(&o)),
        _ => SendOpts::parse(&args).and_then(|o| run_send(&o)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Usage(msg)) => {
            eprintln!("loadgen: {msg}\n{}", usage());
            ExitCode::from(2)
        }
        Err(Fail::Run(msg)) => {
            eprintln!("loadgen: {msg}");
            ExitCode::from(1)
        }
    }
}

enum Fail {
    Usage(String),
    Run(String),
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Table,
    Json,
}

fn parse_num<T: std::str::FromStr>(flag: &str, value: Option<&String>) -> Result<T, Fail> {
    let v = value.ok_or_else(|| Fail::Usage(format!("{flag} needs a value")))?;
    v.parse()
        .map_err(|_| Fail::Usage(format!("{flag}={v}: not a valid number")))
}

fn parse_format(value: Option<&String>) -> Result<Format, Fail> {
    match value.map(String::as_str) {
        Some("table") => Ok(Format::Table),
        Some("json") => Ok(Format::Json),
        other => Err(Fail::Usage(format!(
            "--format {}: expected table or json",
            other.unwrap_or("(missing)")
        ))),
    }
}

// ---------------------------------------------------------------------------
// send mode
// ---------------------------------------------------------------------------

/// The line shapes `--shape` picks.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// Counters, gauges, histograms and sets in turn, 3 short tags.
    Mixed,
    /// The mixed load's counter lines only.
    Counters,
    /// The mixed load's lines, all gauges.
    Gauges,
    /// The mixed load's lines, all histograms (`--hist-type`).
    Histograms,
    /// The mixed load's lines, all sets.
    Sets,
    /// Long names and many long tags, as in Datadog's SMP "3k contexts" cases.
    Long,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Mixed => "mixed",
            Shape::Counters => "counters",
            Shape::Gauges => "gauges",
            Shape::Histograms => "histograms",
            Shape::Sets => "sets",
            Shape::Long => "long",
        }
    }
}

struct SendOpts {
    port: u16,
    lines: u64,
    rate: u64,
    contexts: u32,
    server_pid: Option<u32>,
    format: Format,
    label: String,
    max_datagram: usize,
    drain_timeout: Duration,
    settle: Duration,
    wait_port: Duration,
    hist_type: &'static str,
    shape: Shape,
}

impl SendOpts {
    fn parse(args: &[String]) -> Result<Self, Fail> {
        let mut o = SendOpts {
            port: 8125,
            lines: 10_000_000,
            rate: 0,
            contexts: 1000,
            server_pid: None,
            format: Format::Table,
            label: String::from("server"),
            max_datagram: DEFAULT_MAX_DATAGRAM,
            drain_timeout: Duration::from_millis(10_000),
            settle: Duration::from_millis(300),
            wait_port: Duration::ZERO,
            hist_type: "h",
            shape: Shape::Mixed,
        };
        let (mut contexts_set, mut datagram_set) = (false, false);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--port" => o.port = parse_num(flag, it.next())?,
                "--lines" => o.lines = parse_num(flag, it.next())?,
                "--rate" => o.rate = parse_num(flag, it.next())?,
                "--contexts" => {
                    o.contexts = parse_num(flag, it.next())?;
                    contexts_set = true;
                }
                "--server-pid" => o.server_pid = Some(parse_num(flag, it.next())?),
                "--format" => o.format = parse_format(it.next())?,
                "--json" => o.format = Format::Json,
                "--label" => {
                    o.label = it
                        .next()
                        .ok_or_else(|| Fail::Usage("--label needs a value".into()))?
                        .clone()
                }
                "--max-datagram" => {
                    o.max_datagram = parse_num(flag, it.next())?;
                    datagram_set = true;
                }
                "--shape" => {
                    o.shape = match it.next().map(String::as_str) {
                        Some("mixed") => Shape::Mixed,
                        Some("counters") => Shape::Counters,
                        Some("gauges") => Shape::Gauges,
                        Some("histograms") => Shape::Histograms,
                        Some("sets") => Shape::Sets,
                        Some("long") => Shape::Long,
                        other => {
                            return Err(Fail::Usage(format!(
                                "--shape {}: expected mixed, counters, gauges, histograms, sets \
                                 or long",
                                other.unwrap_or("(missing)")
                            )))
                        }
                    }
                }
                "--drain-timeout-ms" => {
                    o.drain_timeout = Duration::from_millis(parse_num(flag, it.next())?)
                }
                "--settle-ms" => o.settle = Duration::from_millis(parse_num(flag, it.next())?),
                "--wait-port-ms" => {
                    o.wait_port = Duration::from_millis(parse_num(flag, it.next())?)
                }
                "--hist-type" => {
                    o.hist_type = match it.next().map(String::as_str) {
                        Some("h") => "h",
                        Some("ms") => "ms",
                        other => {
                            return Err(Fail::Usage(format!(
                                "--hist-type {}: expected h or ms",
                                other.unwrap_or("(missing)")
                            )))
                        }
                    }
                }
                other => return Err(Fail::Usage(format!("unknown option {other}"))),
            }
        }
        if o.shape == Shape::Long {
            // The SMP case's defaults, unless given.
            if !contexts_set {
                o.contexts = LONG_CONTEXTS;
            }
            if !datagram_set {
                o.max_datagram = LONG_MAX_DATAGRAM;
            }
        }
        if o.contexts == 0 {
            return Err(Fail::Usage("--contexts must be at least 1".into()));
        }
        if o.port == 0 {
            return Err(Fail::Usage("--port must be 1-65535".into()));
        }
        if !(200..=65_000).contains(&o.max_datagram) {
            return Err(Fail::Usage("--max-datagram must be 200-65000".into()));
        }
        Ok(o)
    }
}

/// One datagram of the pool, with the number of lines it holds.
struct Datagram {
    bytes: Vec<u8>,
    lines: u64,
}

/// Contexts of the long shape, unless `--contexts` says otherwise.
const LONG_CONTEXTS: u32 = 3_000;
/// Datagram size of the long shape, unless `--max-datagram` says otherwise.
const LONG_MAX_DATAGRAM: usize = 8_192;

/// One context of the long shape: its name, type and tag field, fixed.
struct LongContext {
    name: String,
    kind: &'static str,
    tags: String,
}

/// The long shape's contexts: names of 1 to 200 characters, 2 to 50 tags of
/// 3 to 150 characters (`key:value`), types weighted as the SMP cases weigh
/// them (counters 208, gauges 66, distributions 72, sets 9, histograms 1).
/// Tags are cut from the end of a context whose line would not fit one
/// datagram, so no line is ever larger than `max_datagram`.
fn long_contexts(contexts: u32, max_datagram: usize) -> Vec<LongContext> {
    const NAME: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_.";
    const TAG: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-./";
    const WEIGHTS: [(&str, u64); 5] = [("c", 208), ("g", 66), ("d", 72), ("s", 9), ("h", 1)];
    let total: u64 = WEIGHTS.iter().map(|w| w.1).sum();
    let mut rng = Rng(0x5EED_3000);
    (0..contexts)
        .map(|_| {
            let mut name = String::new();
            let len = rng.range(1, 200);
            // A name starts with a letter, as the Agent's clients require.
            rng.word(&mut name, 1, &NAME[..26]);
            rng.word(&mut name, len - 1, NAME);
            let mut pick = rng.next_u64() % total;
            let mut kind = "c";
            for (k, w) in WEIGHTS {
                if pick < w {
                    kind = k;
                    break;
                }
                pick -= w;
            }
            let mut tags = String::new();
            // Room for the value, type and separators of the longest line.
            let budget = max_datagram.saturating_sub(name.len() + 40);
            for _ in 0..rng.range(2, 50) {
                let len = rng.range(3, 150);
                if tags.len() + 1 + len as usize > budget {
                    break;
                }
                if !tags.is_empty() {
                    tags.push(',');
                }
                let key = rng.range(1, (len - 2).min(20));
                rng.word(&mut tags, key, TAG);
                tags.push(':');
                rng.word(&mut tags, len - key - 1, TAG);
            }
            LongContext { name, kind, tags }
        })
        .collect()
}

/// Writes the lines of the load, one at a time.
enum LineSource {
    /// Mixed, or one type only.
    Short {
        contexts: u32,
        hist_type: &'static str,
        only: Option<u64>,
    },
    /// The long shape: contexts picked at random, values varying.
    Long {
        contexts: Vec<LongContext>,
        rng: Rng,
    },
}

impl LineSource {
    fn new(o: &SendOpts) -> Self {
        match o.shape {
            Shape::Mixed | Shape::Counters | Shape::Gauges | Shape::Histograms | Shape::Sets => {
                LineSource::Short {
                    contexts: o.contexts,
                    hist_type: o.hist_type,
                    only: match o.shape {
                        Shape::Counters => Some(0),
                        Shape::Gauges => Some(1),
                        Shape::Histograms => Some(2),
                        Shape::Sets => Some(3),
                        _ => None,
                    },
                }
            }
            Shape::Long => LineSource::Long {
                contexts: long_contexts(o.contexts, o.max_datagram),
                rng: Rng(0x1_0AD),
            },
        }
    }

    /// Contexts in the load.
    fn contexts(&self) -> u64 {
        match self {
            LineSource::Short { contexts, .. } => u64::from(*contexts),
            LineSource::Long { contexts, .. } => contexts.len() as u64,
        }
    }

    /// Line `j` of the load.
    fn write(&mut self, out: &mut String, j: u64) {
        match self {
            LineSource::Short {
                contexts,
                hist_type,
                only,
            } => write_line(out, j, *contexts, hist_type, *only),
            LineSource::Long { contexts, rng } => {
                let c = &contexts[(rng.next_u64() % contexts.len() as u64) as usize];
                let v = rng.next_u64();
                // `write!` into a String cannot fail.
                let _ = match c.kind {
                    "c" => write!(out, "{}:{}|c", c.name, 1 + v % 3),
                    "g" => write!(out, "{}:{}.{}|g", c.name, v % 10_000, v % 100),
                    "s" => write!(out, "{}:u{}|s", c.name, v % 500),
                    k => write!(out, "{}:{}.{}|{k}", c.name, v % 1_000, v % 10),
                };
                if !c.tags.is_empty() {
                    out.push_str("|#");
                    out.push_str(&c.tags);
                }
            }
        }
    }
}

/// Writes line `j` of the mixed load: context `j % contexts`, a metric type
/// chosen by the context (counter, gauge, histogram, set in turn; `only`
/// 0 to 3 picks one of them for every context), and three tags. About 45
/// bytes a line, so about 30 lines fit in 1432 bytes.
fn write_line(out: &mut String, j: u64, contexts: u32, hist_type: &str, only: Option<u64>) {
    let k = j % u64::from(contexts);
    let round = j / u64::from(contexts);
    let shard = k % 16;
    let kind = only.unwrap_or(k % 4);
    // `write!` into a String cannot fail.
    let _ = match kind {
        0 => write!(out, "lg.cnt.m{k}:{}|c", 1 + round % 3),
        1 => write!(out, "lg.gge.m{k}:{}.5|g", (j * 7) % 1000),
        2 => write!(out, "lg.hst.m{k}:{}|{hist_type}", (j * 13) % 997),
        _ => write!(out, "lg.set.m{k}:u{}|s", (round * 31 + k) % 200),
    };
    let _ = write!(out, "|#env:bench,svc:web,shard:{shard}");
}

/// Builds the datagrams once, so sending costs only the syscall. The pool
/// covers every context at least twice (and at least 1024 datagrams), then
/// is replayed in a loop.
fn build_pool(source: &mut LineSource, max_datagram: usize) -> Vec<Datagram> {
    let mut pool = Vec::new();
    let mut cur = String::with_capacity(max_datagram);
    let mut cur_lines = 0u64;
    let mut line = String::with_capacity(128);
    let min_lines = 2 * source.contexts();
    let mut j = 0u64;
    loop {
        line.clear();
        source.write(&mut line, j);
        let need = if cur.is_empty() {
            line.len()
        } else {
            line.len() + 1
        };
        if cur.len() + need > max_datagram && !cur.is_empty() {
            pool.push(Datagram {
                bytes: std::mem::take(&mut cur).into_bytes(),
                lines: cur_lines,
            });
            cur = String::with_capacity(max_datagram);
            cur_lines = 0;
            if j >= min_lines && pool.len() >= 1024 {
                break;
            }
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(&line);
        cur_lines += 1;
        j += 1;
    }
    pool
}

/// The summed on-CPU time of every thread of a process, in seconds: the
/// first field of each `/proc/PID/task/TID/schedstat` (nanoseconds).
fn cpu_seconds(pid: u32) -> Result<f64, Fail> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir)
        .map_err(|e| Fail::Run(format!("cannot read {dir}: {e} (is the server running?)")))?;
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| Fail::Run(format!("{}: unexpected format", path.display())))?;
    }
    Ok(ns as f64 / 1e9)
}

/// (VmRSS, VmHWM, RssAnon) in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?, field("RssAnon:")?))
}

/// `Udp:` counters from /proc/net/snmp (system-wide): (InDatagrams,
/// InErrors, RcvbufErrors).
fn snmp_udp() -> Option<(u64, u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let get = |n: &str| -> Option<u64> {
        let i = names.iter().position(|x| *x == n)?;
        values.get(i)?.parse().ok()
    };
    Some((get("InDatagrams")?, get("InErrors")?, get("RcvbufErrors")?))
}

/// State of the UDP sockets bound to local `port` (IPv4 and IPv6 tables):
/// how many, their summed rx_queue bytes and summed `drops`.
#[derive(Clone, Copy, Default)]
struct SocketState {
    sockets: u32,
    rx_queue: u64,
    drops: u64,
}

fn udp_sockets(port: u16) -> SocketState {
    let mut s = SocketState::default();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 13 {
                continue;
            }
            let local_port = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            s.sockets += 1;
            if let Some((_, rx)) = f[4].split_once(':') {
                s.rx_queue += u64::from_str_radix(rx, 16).unwrap_or(0);
            }
            s.drops += f[12].parse::<u64>().unwrap_or(0);
        }
    }
    s
}

/// Polls until the port is bound or the deadline passes.
fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if udp_sockets(port).sockets > 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn run_send(o: &SendOpts) -> Result<(), Fail> {
    if !o.wait_port.is_zero() && !wait_for_port(o.port, o.wait_port) {
        return Err(Fail::Run(format!(
            "nothing bound UDP port {} within {} ms",
            o.port,
            o.wait_port.as_millis()
        )));
    }
    let mut source = LineSource::new(o);
    let pool = build_pool(&mut source, o.max_datagram);
    let pool_lines: u64 = pool.iter().map(|d| d.lines).sum();
    let pool_bytes: usize = pool.iter().map(|d| d.bytes.len()).sum();

    let sock = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| Fail::Run(format!("cannot bind a UDP socket on 127.0.0.1: {e}")))?;
    sock.connect(("127.0.0.1", o.port))
        .map_err(|e| Fail::Run(format!("cannot connect to 127.0.0.1:{}: {e}", o.port)))?;

    let cpu_before = match o.server_pid {
        Some(pid) => Some(cpu_seconds(pid)?),
        None => None,
    };
    let snmp_before = snmp_udp();
    let sock_before = udp_sockets(o.port);

    let mut sent_lines = 0u64;
    let mut sent_datagrams = 0u64;
    let mut sent_bytes = 0u64;
    let mut send_errors = 0u64;
    let mut i = 0usize;
    let start = Instant::now();
    while sent_lines < o.lines {
        let d = &pool[i];
        i += 1;
        if i == pool.len() {
            i = 0;
        }
        match sock.send(&d.bytes) {
            Ok(_) => {
                sent_lines += d.lines;
                sent_datagrams += 1;
                sent_bytes += d.bytes.len() as u64;
            }
            // ECONNREFUSED reports an earlier datagram that found no socket:
            // count it and go on; the report shows it.
            Err(_) => send_errors += 1,
        }
        if send_errors > 1000 && sent_datagrams == 0 {
            return Err(Fail::Run(format!(
                "every send to 127.0.0.1:{} fails: is the server listening?",
                o.port
            )));
        }
        if o.rate > 0 && sent_datagrams % 8 == 0 {
            // Pace by the schedule, not by per-datagram sleeps, so the
            // average rate holds even with coarse sleeps.
            let due = Duration::from_secs_f64(sent_lines as f64 / o.rate as f64);
            let now = start.elapsed();
            if due > now + Duration::from_micros(200) {
                thread::sleep(due - now);
            }
        }
    }
    let elapsed = start.elapsed();

    // Let the server empty its socket queue before reading its CPU time.
    let drain_deadline = Instant::now() + o.drain_timeout;
    let mut drained = false;
    while Instant::now() < drain_deadline {
        if udp_sockets(o.port).rx_queue == 0 {
            drained = true;
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(o.settle);

    let cpu_after = match o.server_pid {
        Some(pid) => Some(cpu_seconds(pid)?),
        None => None,
    };
    let rss = o.server_pid.and_then(rss_kib);
    let snmp_after = snmp_udp();
    let sock_after = udp_sockets(o.port);

    let avg_lines = if sent_datagrams > 0 {
        sent_lines as f64 / sent_datagrams as f64
    } else {
        0.0
    };
    let socket_drops = sock_after.drops.saturating_sub(sock_before.drops);
    let (snmp_rcvbuf, snmp_inerr) = match (snmp_before, snmp_after) {
        (Some(b), Some(a)) => (Some(a.2.saturating_sub(b.2)), Some(a.1.saturating_sub(b.1))),
        _ => (None, None),
    };
    let est_received = |drops: u64| -> u64 {
        sent_lines.saturating_sub((drops as f64 * avg_lines).round() as u64)
    };
    let received_socket = est_received(socket_drops);
    let received_snmp = snmp_inerr.map(est_received);
    let cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let per_m = |lines: u64| -> Option<f64> {
        cpu.filter(|_| lines > 0)
            .map(|c| c / (lines as f64 / 1_000_000.0))
    };
    let secs = elapsed.as_secs_f64();

    let mut rows: Vec<(&str, String)> = vec![
        ("label", format!("\"{}\"", json_escape(&o.label))),
        ("port", o.port.to_string()),
        ("shape", format!("\"{}\"", o.shape.name())),
        ("contexts", source.contexts().to_string()),
        ("hist_type", format!("\"{}\"", o.hist_type)),
        ("target_rate", o.rate.to_string()),
        ("sent_lines", sent_lines.to_string()),
        ("sent_datagrams", sent_datagrams.to_string()),
        ("sent_bytes", sent_bytes.to_string()),
        ("send_errors", send_errors.to_string()),
        ("lines_per_datagram", format!("{avg_lines:.2}")),
        ("pool_datagrams", pool.len().to_string()),
        (
            "pool_avg_bytes",
            format!("{:.0}", pool_bytes as f64 / pool.len() as f64),
        ),
        ("pool_lines", pool_lines.to_string()),
        ("elapsed_s", format!("{secs:.3}")),
        (
            "achieved_rate",
            format!("{:.0}", sent_lines as f64 / secs.max(1e-9)),
        ),
        ("drained", drained.to_string()),
        ("socket_drops", socket_drops.to_string()),
        ("received_lines_socket", received_socket.to_string()),
    ];
    rows.push(("snmp_rcvbuf_errors", opt(snmp_rcvbuf)));
    rows.push(("snmp_in_errors", opt(snmp_inerr)));
    rows.push(("received_lines_snmp", opt(received_snmp)));
    rows.push(("cpu_source", "\"schedstat\"".to_string()));
    rows.push(("server_cpu_s", opt_f(cpu, 6)));
    rows.push(("cpu_s_per_m_sent", opt_f(per_m(sent_lines), 5)));
    rows.push(("cpu_s_per_m_received", opt_f(per_m(received_socket), 5)));
    rows.push(("server_rss_kib", opt(rss.map(|r| r.0))));
    rows.push(("server_hwm_kib", opt(rss.map(|r| r.1))));
    rows.push(("server_rss_anon_kib", opt(rss.map(|r| r.2))));
    print_report(o.format, &rows);
    Ok(())
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn opt_f(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "null".to_string(), |v| format!("{v:.digits$}"))
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Values are already JSON (numbers, `null`, quoted strings).
fn print_report(format: Format, rows: &[(&str, String)]) {
    match format {
        Format::Json => {
            let body: Vec<String> = rows.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            println!("{{{}}}", body.join(","));
        }
        Format::Table => {
            let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in rows {
                println!("{k:<w$}  {}", v.trim_matches('"'));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// floor (and sink) mode
// ---------------------------------------------------------------------------

/// The few C declarations `recvmmsg` needs (Linux, 64-bit): `std` links libc
/// but does not expose them, and this file builds without cargo.
#[allow(non_camel_case_types)]
mod sys {
    use std::ffi::{c_int, c_uint, c_void};

    #[repr(C)]
    pub struct iovec {
        pub iov_base: *mut c_void,
        pub iov_len: usize,
    }

    #[repr(C)]
    pub struct msghdr {
        pub msg_name: *mut c_void,
        pub msg_namelen: u32,
        pub msg_iov: *mut iovec,
        pub msg_iovlen: usize,
        pub msg_control: *mut c_void,
        pub msg_controllen: usize,
        pub msg_flags: c_int,
    }

    #[repr(C)]
    pub struct mmsghdr {
        pub msg_hdr: msghdr,
        pub msg_len: c_uint,
    }

    pub const SOL_SOCKET: c_int = 1;
    pub const SO_RCVBUF: c_int = 8;
    pub const SO_RCVBUFFORCE: c_int = 33;
    pub const MSG_WAITFORONE: c_int = 0x10000;

    extern "C" {
        pub fn recvmmsg(
            fd: c_int,
            msgvec: *mut mmsghdr,
            vlen: c_uint,
            flags: c_int,
            timeout: *mut c_void,
        ) -> c_int;
        pub fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
    }
}

/// Datagrams per `recvmmsg` call and bytes per datagram buffer: dynostat's.
const FLOOR_BATCH: usize = 32;
const FLOOR_BUFFER: usize = 8_192;
/// The receive buffer dynostat asks for (`DD_DOGSTATSD_SO_RCVBUF`'s default).
const FLOOR_RCVBUF: i32 = 25 * 1024 * 1024;

/// The floor receiver: what reading the datagrams costs with nothing done
/// with them. Same socket options, batch and buffer sizes as dynostat's
/// receive thread; it touches no byte it reads.
fn run_floor(args: &[String], what: &str) -> Result<(), Fail> {
    use std::os::fd::AsRawFd;
    let mut port: u16 = 8126;
    let mut seconds: u64 = 600;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--port" => port = parse_num(flag, it.next())?,
            "--seconds" => seconds = parse_num(flag, it.next())?,
            other => return Err(Fail::Usage(format!("unknown option {other}"))),
        }
    }
    let sock = UdpSocket::bind(("127.0.0.1", port))
        .map_err(|e| Fail::Run(format!("cannot bind 127.0.0.1:{port} for the {what}: {e}")))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| Fail::Run(format!("cannot set a read timeout on the {what}: {e}")))?;
    let fd = sock.as_raw_fd();
    let size = FLOOR_RCVBUF;
    let len = std::mem::size_of::<i32>() as u32;
    // SAFETY: fd is our live socket; `size` outlives the calls. Best effort,
    // as in dynostat: FORCE needs CAP_NET_ADMIN, the plain option is capped.
    unsafe {
        let p = (&raw const size).cast();
        if sys::setsockopt(fd, sys::SOL_SOCKET, sys::SO_RCVBUFFORCE, p, len) != 0 {
            sys::setsockopt(fd, sys::SOL_SOCKET, sys::SO_RCVBUF, p, len);
        }
    }
    let mut data = vec![0u8; FLOOR_BATCH * FLOOR_BUFFER];
    let mut iovecs: Vec<sys::iovec> = data
        .chunks_mut(FLOOR_BUFFER)
        .map(|c| sys::iovec {
            iov_base: c.as_mut_ptr().cast(),
            iov_len: c.len(),
        })
        .collect();
    let mut headers: Vec<sys::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| sys::mmsghdr {
            msg_hdr: sys::msghdr {
                msg_name: std::ptr::null_mut(),
                msg_namelen: 0,
                msg_iov: iov,
                msg_iovlen: 1,
                msg_control: std::ptr::null_mut(),
                msg_controllen: 0,
                msg_flags: 0,
            },
            msg_len: 0,
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut calls, mut datagrams, mut bytes) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        // SAFETY: the headers point at the iovecs, which point into `data`;
        // none is moved or reallocated while the call runs.
        let n = unsafe {
            sys::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                FLOOR_BATCH as u32,
                sys::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        // n < 0: the read timeout (EAGAIN) or EINTR; go round to the deadline.
        if let Ok(n) = usize::try_from(n) {
            calls += 1;
            datagrams += n as u64;
            bytes += headers[..n]
                .iter()
                .map(|h| u64::from(h.msg_len))
                .sum::<u64>();
        }
    }
    drop(data);
    println!("{what} calls={calls} datagrams={datagrams} bytes={bytes}");
    Ok(())
}

// ---------------------------------------------------------------------------
// startup mode
// ---------------------------------------------------------------------------

struct StartupOpts {
    port: u16,
    runs: u32,
    timeout: Duration,
    format: Format,
    wait_log: bool,
    env_clear: bool,
    env: Vec<(String, String)>,
    command: Vec<String>,
}

impl StartupOpts {
    fn parse(args: &[String]) -> Result<Self, Fail> {
        let mut o = StartupOpts {
            port: 8125,
            runs: 20,
            timeout: Duration::from_millis(5000),
            format: Format::Table,
            wait_log: true,
            env_clear: false,
            env: Vec::new(),
            command: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--port" => o.port = parse_num(flag, it.next())?,
                "--runs" => o.runs = parse_num(flag, it.next())?,
                "--timeout-ms" => o.timeout = Duration::from_millis(parse_num(flag, it.next())?),
                "--format" => o.format = parse_format(it.next())?,
                "--json" => o.format = Format::Json,
                "--ready" => {
                    o.wait_log = match it.next().map(String::as_str) {
                        Some("both") => true,
                        Some("port") => false,
                        other => {
                            return Err(Fail::Usage(format!(
                                "--ready {}: expected both or port",
                                other.unwrap_or("(missing)")
                            )))
                        }
                    }
                }
                "--env-clear" => o.env_clear = true,
                "--env" => {
                    let kv = it.next().map(String::as_str).unwrap_or("");
                    match kv.split_once('=') {
                        Some((k, v)) if !k.is_empty() => o.env.push((k.into(), v.into())),
                        _ => return Err(Fail::Usage(format!("--env {kv:?}: expected NAME=VALUE"))),
                    }
                }
                "--" => {
                    o.command = it.by_ref().cloned().collect();
                }
                other => return Err(Fail::Usage(format!("unknown option {other}"))),
            }
        }
        if o.command.is_empty() {
            return Err(Fail::Usage("startup needs a command after --".into()));
        }
        if o.runs == 0 || o.runs > 1000 {
            return Err(Fail::Usage("--runs must be 1-1000".into()));
        }
        Ok(o)
    }
}

/// One exec: (time to port bound, time to "listening" on stderr).
fn startup_once(o: &StartupOpts) -> Result<(Option<Duration>, Option<Duration>), Fail> {
    if udp_sockets(o.port).sockets > 0 {
        return Err(Fail::Run(format!(
            "UDP port {} is already bound before exec; pick a free port",
            o.port
        )));
    }
    let (tx, rx) = mpsc::channel::<Instant>();
    let mut cmd = Command::new(&o.command[0]);
    cmd.args(&o.command[1..]);
    if o.env_clear {
        cmd.env_clear();
    }
    cmd.envs(o.env.iter().map(|(k, v)| (k, v)));
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Fail::Run(format!("cannot exec {}: {e}", o.command[0])))?;
    let stderr = child.stderr.take();
    let reader = thread::spawn(move || {
        let Some(stderr) = stderr else { return };
        let mut sent = false;
        // Keep draining until the child exits so it never blocks on a full pipe.
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains("listening") {
                let _ = tx.send(Instant::now());
                sent = true;
            }
        }
    });
    let deadline = t0 + o.timeout;
    let mut port_ready = None;
    while Instant::now() < deadline {
        if udp_sockets(o.port).sockets > 0 {
            port_ready = Some(t0.elapsed());
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        thread::sleep(Duration::from_micros(50));
    }
    let log_ready = if o.wait_log {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left.max(Duration::from_millis(1)))
            .ok()
            .map(|t| t.duration_since(t0))
    } else {
        None
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    // The port is released when the child's socket closes; wait for that
    // (bounded) so the next run starts clean.
    let free_deadline = Instant::now() + Duration::from_secs(2);
    while udp_sockets(o.port).sockets > 0 && Instant::now() < free_deadline {
        thread::sleep(Duration::from_millis(1));
    }
    Ok((port_ready, log_ready))
}

fn run_startup(o: &StartupOpts) -> Result<(), Fail> {
    let mut port_times = Vec::new();
    let mut log_times = Vec::new();
    for _ in 0..o.runs {
        let (p, l) = startup_once(o)?;
        port_times.extend(p);
        log_times.extend(l);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let stats = |v: &mut Vec<Duration>| -> (String, String, String) {
        if v.is_empty() {
            return ("null".into(), "null".into(), "null".into());
        }
        v.sort();
        let median = if v.len() % 2 == 1 {
            ms(v[v.len() / 2])
        } else {
            (ms(v[v.len() / 2 - 1]) + ms(v[v.len() / 2])) / 2.0
        };
        (
            format!("{:.3}", ms(v[0])),
            format!("{median:.3}"),
            format!("{:.3}", ms(v[v.len() - 1])),
        )
    };
    let (pmin, pmed, pmax) = stats(&mut port_times);
    let (lmin, lmed, lmax) = stats(&mut log_times);
    let rows: Vec<(&str, String)> = vec![
        ("runs", o.runs.to_string()),
        ("port_ready_runs", port_times.len().to_string()),
        ("port_ready_ms_min", pmin),
        ("port_ready_ms_median", pmed),
        ("port_ready_ms_max", pmax),
        ("log_ready_runs", log_times.len().to_string()),
        ("log_ready_ms_min", lmin),
        ("log_ready_ms_median", lmed),
        ("log_ready_ms_max", lmax),
    ];
    print_report(o.format, &rows);
    Ok(())
}
