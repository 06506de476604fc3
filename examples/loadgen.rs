//! DogStatsD load generator and benchmark probe for `dynostat` and its peers.
//!
//! In: command-line options (see `usage()`); the target is always 127.0.0.1.
//! Out: a report (JSON line or table) with sent lines and datagrams, elapsed
//! time, achieved rate, the server's CPU seconds and RSS (read from
//! `/proc/PID/...`), and kernel drop counters (`/proc/net/snmp` and the
//! per-socket `drops` column of `/proc/net/udp{,6}`), from which it estimates
//! the lines the server actually received.
//!
//! Two modes:
//! - `loadgen [send] --port P --lines N --rate R --contexts C --server-pid PID`
//!   sends a mixed load (counters, gauges, histograms, sets; 3 tags per line;
//!   lines packed into datagrams of at most 1432 bytes, about 30 lines each).
//! - `loadgen startup --port P --runs 20 -- CMD ARGS...` execs CMD repeatedly
//!   and reports the time from exec until the UDP port is bound and until the
//!   child writes a line containing "listening" to stderr (median of the runs).
//!
//! - `loadgen sink --port P --seconds S` reads and discards datagrams for at
//!   most S seconds: an upstream for a proxy peer (statsdproxy) to forward to.
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

/// The largest datagram the generator builds: the DogStatsD clients' default
/// for UDP over a 1500-byte MTU, as in the target load.
const DEFAULT_MAX_DATAGRAM: usize = 1432;

fn usage() -> &'static str {
    "usage:
  loadgen [send] [--port 8125] [--lines 10000000] [--rate 0] [--contexts 1000]
                 [--server-pid PID] [--format table|json] [--label NAME]
                 [--max-datagram 1432] [--drain-timeout-ms 10000] [--settle-ms 300]
                 [--wait-port-ms 0] [--hist-type h|ms]
      --rate is lines per second; 0 sends as fast as one thread can.
      --server-pid reads /proc/PID/stat (utime+stime) and /proc/PID/status
        (VmRSS, VmHWM, RssAnon) after; CPU is read after the server's socket
        queue has drained (bounded by --drain-timeout-ms) and --settle-ms more.
      --wait-port-ms waits up to that long for the port to be bound first.
      --hist-type picks the histogram lines' type: h, or ms (a timer, which
        DogStatsD aggregates exactly like h and Etsy statsd treats as a timer).
  loadgen startup [--port 8125] [--runs 20] [--timeout-ms 5000] [--format table|json]
                  [--ready both|port] -- CMD [ARGS...]
      execs CMD --runs times (environment inherited) and reports the time from
      exec to the UDP port being bound and to a stderr line containing
      \"listening\" (--ready port: the port only, for servers that log no
      such line); each child is killed (SIGKILL) after it is ready.
  loadgen sink [--port 8126] [--seconds 600]
      binds 127.0.0.1:PORT, discards what arrives, exits after --seconds and
      prints the datagrams and bytes it read."
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Some("startup") => StartupOpts::parse(&args[1..]).and_then(|o| run_startup(&o)),
        Some("sink") => run_sink(&args[1..]),
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
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--port" => o.port = parse_num(flag, it.next())?,
                "--lines" => o.lines = parse_num(flag, it.next())?,
                "--rate" => o.rate = parse_num(flag, it.next())?,
                "--contexts" => o.contexts = parse_num(flag, it.next())?,
                "--server-pid" => o.server_pid = Some(parse_num(flag, it.next())?),
                "--format" => o.format = parse_format(it.next())?,
                "--json" => o.format = Format::Json,
                "--label" => {
                    o.label = it
                        .next()
                        .ok_or_else(|| Fail::Usage("--label needs a value".into()))?
                        .clone()
                }
                "--max-datagram" => o.max_datagram = parse_num(flag, it.next())?,
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

/// Writes line `j` of the load: context `j % contexts`, a metric type chosen
/// by the context (counter, gauge, histogram, set in turn), and three tags.
/// About 45 bytes a line, so about 30 lines fit in 1432 bytes.
fn write_line(out: &mut String, j: u64, contexts: u32, hist_type: &str) {
    let k = j % u64::from(contexts);
    let round = j / u64::from(contexts);
    let shard = k % 16;
    // `write!` into a String cannot fail.
    let _ = match k % 4 {
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
fn build_pool(contexts: u32, max_datagram: usize, hist_type: &str) -> Vec<Datagram> {
    let mut pool = Vec::new();
    let mut cur = String::with_capacity(max_datagram);
    let mut cur_lines = 0u64;
    let mut line = String::with_capacity(128);
    let min_lines = 2 * u64::from(contexts);
    let mut j = 0u64;
    loop {
        line.clear();
        write_line(&mut line, j, contexts, hist_type);
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

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64, Fail> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .map_err(|e| Fail::Run(format!("cannot read {path}: {e} (is the server running?)")))?;
    // The command name (field 2) may hold spaces; the fields after it are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| Fail::Run(format!("{path}: unexpected format")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is index 0, so utime (field 14) is index 11, stime 12.
    let get = |i: usize| -> Result<f64, Fail> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|v| v as f64 / ticks)
            .ok_or_else(|| Fail::Run(format!("{path}: missing field {i}")))
    };
    Ok(get(11)? + get(12)?)
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

/// Clock ticks per second, from the auxiliary vector (AT_CLKTCK = 17), so no
/// libc call is needed; 100 if it cannot be read (the Linux default).
fn clock_ticks() -> f64 {
    if let Ok(aux) = std::fs::read("/proc/self/auxv") {
        for pair in aux.chunks_exact(16) {
            let mut k = [0u8; 8];
            let mut v = [0u8; 8];
            k.copy_from_slice(&pair[..8]);
            v.copy_from_slice(&pair[8..]);
            if u64::from_ne_bytes(k) == 17 {
                let ticks = u64::from_ne_bytes(v);
                if ticks > 0 {
                    return ticks as f64;
                }
            }
        }
    }
    100.0
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
    let pool = build_pool(o.contexts, o.max_datagram, o.hist_type);
    let pool_lines: u64 = pool.iter().map(|d| d.lines).sum();
    let pool_bytes: usize = pool.iter().map(|d| d.bytes.len()).sum();
    let ticks = clock_ticks();

    let sock = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| Fail::Run(format!("cannot bind a UDP socket on 127.0.0.1: {e}")))?;
    sock.connect(("127.0.0.1", o.port))
        .map_err(|e| Fail::Run(format!("cannot connect to 127.0.0.1:{}: {e}", o.port)))?;

    let cpu_before = match o.server_pid {
        Some(pid) => Some(cpu_seconds(pid, ticks)?),
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
        Some(pid) => Some(cpu_seconds(pid, ticks)?),
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
        ("contexts", o.contexts.to_string()),
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
    rows.push(("server_cpu_s", opt_f(cpu, 3)));
    rows.push(("cpu_s_per_m_sent", opt_f(per_m(sent_lines), 4)));
    rows.push(("cpu_s_per_m_received", opt_f(per_m(received_socket), 4)));
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
// sink mode
// ---------------------------------------------------------------------------

fn run_sink(args: &[String]) -> Result<(), Fail> {
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
        .map_err(|e| Fail::Run(format!("cannot bind 127.0.0.1:{port} for the sink: {e}")))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| Fail::Run(format!("cannot set a read timeout on the sink: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut buf = vec![0u8; 65_536];
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            datagrams += 1;
            bytes += n as u64;
        }
    }
    println!("sink datagrams={datagrams} bytes={bytes}");
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
    let t0 = Instant::now();
    let mut child = Command::new(&o.command[0])
        .args(&o.command[1..])
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
