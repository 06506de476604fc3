//! The dyno collector: the dyno's own memory, load, CPU and process counts,
//! as `heroku.dyno.*` gauges, from inside the dyno (DESIGN §5b, issue 11).
//!
//! In: the dyno's memory cgroup files ([`cgroup`]) and its processes in
//! `/proc` ([`procfs`]), read every [`load::LOAD_FREQ`] (5 s) by the dyno
//! collector on the collectors' thread (`collectors::dyno`, one of the
//! things dynostat measures itself, on one scheduler).
//! Out: at each flush, [`DynoMetrics::series`] turns the latest sample into
//! series that `serve` appends to the bucket's own (the forwarder adds the
//! global tags, `dyno:`, `dynotype:`, `appname:`, to them as to every series).
//!
//! Place in the layout: below `serve` (which owns the collector and calls it
//! at each flush) and above `dogstatsd` (whose [`Series`] it emits); it knows
//! nothing of sockets, the forwarder or the dyno glue in `dyno`, which sits
//! above `serve`.
//!
//! | metric | unit | from |
//! |---|---|---|
//! | `heroku.dyno.memory_quota` | MB | cgroup limit; none when unlimited |
//! | `heroku.dyno.memory_total` | MB | cgroup usage + swap, else /proc rss + swap |
//! | `heroku.dyno.memory_rss` | MB | cgroup anon, else /proc: RSS sum less the shared pages PSS found (read each minute) |
//! | `heroku.dyno.memory_cache` | MB | cgroup page cache (no /proc equivalent) |
//! | `heroku.dyno.memory_swap` | MB | cgroup swap, else /proc `VmSwap` |
//! | `heroku.dyno.load_avg_1m`, `_5m`, `_15m` | tasks | R/D tasks in /proc, kernel-style averages |
//! | `heroku.dyno.cpu_time` | CPU-s per s (RATE) | /proc `utime+stime+cutime+cstime` |
//! | `heroku.dyno.processes`, `heroku.dyno.threads` | count | /proc |
//!
//! Memory usage series carry `source:cgroup` or `source:proc`. MB is
//! 2^20 bytes, as in Heroku's runtime samples (`memory_quota=512.00MB`).
//!
//! Must never: write anything, read host-wide files (`/proc/loadavg`,
//! `/proc/meminfo`), allocate per sample once warm (every buffer is reused;
//! `benches/dyno_sample.rs` counts), stop the listener (a missing or
//! malformed file leaves its metric out and is logged once at debug), or
//! count its own thread in the load.

pub mod cgroup;
pub mod load;
pub mod procfs;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::dogstatsd::aggregate::{Series, SeriesKind};

use self::cgroup::{Cgroup, CgroupFile};
use self::load::{LoadAvg, LOAD_FREQ};
use self::procfs::{Memory, ProcScanner, ScanProblem};

/// In /proc mode, how often PSS is read from every `smaps_rollup` (a page
/// table walk, ~15 µs of CPU per resident MB); between reads, `memory_rss`
/// is the RSS sum less the shared pages the last PSS read found.
const PSS_EVERY: Duration = Duration::from_secs(60);

/// A sample older than this (three sample periods) is not reported.
const STALE_AFTER: Duration = Duration::from_secs(15);

/// Where the memory usage figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// The cgroup's own accounting.
    Cgroup,
    /// A sum over the processes in `/proc`.
    Proc,
}

impl MemorySource {
    fn tag(self) -> &'static str {
        match self {
            Self::Cgroup => "source:cgroup",
            Self::Proc => "source:proc",
        }
    }
}

/// One sample: plain numbers, copied out of the sampler without allocating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Memory limit, bytes.
    pub quota: Option<u64>,
    /// Resident + cache + swap, bytes.
    pub total: Option<u64>,
    /// Resident (anon, or PSS/RSS), bytes.
    pub rss: Option<u64>,
    /// Page cache, bytes.
    pub cache: Option<u64>,
    /// Swap, bytes.
    pub swap: Option<u64>,
    /// Where `total`, `rss`, `cache`, `swap` came from.
    pub source: MemorySource,
    /// `[1m, 5m, 15m]`, once at least one load tick was counted.
    pub load: Option<[f64; 3]>,
    /// CPU seconds used by the dyno's processes (and their reaped children) so far.
    pub cpu_seconds: Option<f64>,
    /// Live processes.
    pub processes: Option<u64>,
    /// Their threads.
    pub threads: Option<u64>,
}

/// Problems logged once each (index into `Sampler::logged`).
#[derive(Clone, Copy)]
enum Problem {
    Scan(ScanProblem),
    Cgroup(CgroupFile),
}

impl Problem {
    fn index(self) -> usize {
        match self {
            Self::Scan(ScanProblem::ProcDir) => 0,
            Self::Scan(ScanProblem::Stat) => 1,
            Self::Scan(ScanProblem::Memory) => 2,
            Self::Cgroup(CgroupFile::Limit) => 3,
            Self::Cgroup(CgroupFile::Usage) => 4,
            Self::Cgroup(CgroupFile::Stat) => 5,
            Self::Cgroup(CgroupFile::Swap) => 6,
        }
    }
}

/// Reads one sample at a time, reusing its buffers.
pub struct Sampler {
    procs: ProcScanner,
    cgroup: Option<Cgroup>,
    buf: Vec<u8>,
    load: LoadAvg,
    ticked: bool,
    clk_tck: f64,
    logged: [bool; 7],
    last_source: Option<MemorySource>,
    /// RSS sum minus PSS sum at the last PSS read, and when that was.
    pss: Option<(u64, Instant, bool)>,
}

impl Sampler {
    /// A sampler of the real `/proc` and the dyno's cgroup, for the calling
    /// thread (the thread that samples, so that it can leave itself out).
    pub fn new() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cgroup = cgroup::discover(
            &read("/proc/self/cgroup"),
            &read("/proc/self/mountinfo"),
            &|p: &std::path::Path| p.exists(),
        );
        Self::with(ProcScanner::new("/proc"), cgroup)
    }

    /// A sampler of `procs` and `cgroup` (none: memory from `/proc`); for
    /// tests and `benches/dyno_sample.rs`.
    pub fn with(procs: ProcScanner, cgroup: Option<Cgroup>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        #[allow(clippy::cast_precision_loss)]
        let clk_tck = if tck > 0 { tck as f64 } else { 100.0 };
        match &cgroup {
            Some(c) => tracing::info!(
                cgroup = %c.dir.display(),
                version = ?c.version,
                "dyno metrics: memory cgroup found"
            ),
            None => {
                tracing::info!("dyno metrics: no memory cgroup found; memory from /proc, no quota")
            }
        }
        Self {
            procs,
            cgroup,
            buf: Vec::with_capacity(8192),
            load: LoadAvg::default(),
            ticked: false,
            clk_tck,
            logged: [false; 7],
            last_source: None,
            pss: None,
        }
    }

    /// The cgroup in use, if any.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// Takes one sample. With `tick`, this sample is also a load tick (call
    /// it every [`LOAD_FREQ`]).
    pub fn sample(&mut self, tick: bool) -> Sample {
        let logged = &mut self.logged;
        let cgroup = self.cgroup.as_ref();
        let mem = cgroup.map(|c| {
            c.read(&mut self.buf, &mut |file, error| {
                log_once(logged, Problem::Cgroup(file), c.path(file), error);
            })
        });
        let usage = mem.and_then(|m| m.usage);
        let memory = match (usage, self.pss) {
            (Some(_), _) => Memory::Skip,
            (None, Some((_, at, _))) if at.elapsed() < PSS_EVERY => Memory::Rss,
            (None, _) => Memory::RssAndPss,
        };
        let totals = self.procs.scan(memory, &mut |p, what| {
            log_once(logged, Problem::Scan(p), what, "unreadable or malformed");
        });
        let scanned = totals.processes > 0;
        if tick && scanned {
            self.load.tick(totals.active);
            self.ticked = true;
        }
        #[allow(clippy::cast_precision_loss)]
        let cpu_seconds = scanned.then(|| totals.cpu_ticks as f64 / self.clk_tck);
        let mut s = Sample {
            at: Instant::now(),
            quota: mem.and_then(|m| m.quota),
            total: None,
            rss: None,
            cache: None,
            swap: None,
            source: MemorySource::Proc,
            load: self.ticked.then(|| self.load.get()),
            cpu_seconds,
            processes: scanned.then_some(totals.processes),
            threads: scanned.then_some(totals.threads),
        };
        if let Some(u) = usage {
            s.source = MemorySource::Cgroup;
            s.total = Some(u.total);
            s.rss = u.rss;
            s.cache = u.cache;
            s.swap = u.swap;
        } else if scanned {
            if memory == Memory::RssAndPss {
                let shared = totals.rss_bytes.saturating_sub(totals.pss_bytes);
                self.pss = Some((shared, s.at, totals.used_pss));
            }
            let shared = self.pss.map_or(0, |(shared, _, _)| shared);
            let rss = totals.rss_bytes.saturating_sub(shared);
            s.total = Some(rss.saturating_add(totals.swap_bytes));
            s.rss = Some(rss);
            s.swap = Some(totals.swap_bytes);
        }
        if self.last_source != Some(s.source) {
            let pss = self.pss.is_some_and(|(_, _, used)| used);
            self.source_changed(s.source, pss);
        }
        s
    }

    #[cold]
    fn source_changed(&mut self, source: MemorySource, pss: bool) {
        self.last_source = Some(source);
        match source {
            MemorySource::Cgroup => tracing::info!("dyno metrics: memory usage from the cgroup (source:cgroup)"),
            MemorySource::Proc => tracing::info!(
                per_process = if pss { "PSS from smaps_rollup (each minute), RSS from status between" } else { "RSS from status" },
                "dyno metrics: memory usage summed over /proc (source:proc); the cgroup's accounting is not readable"
            ),
        }
    }
}

#[cold]
fn log_once(logged: &mut [bool; 7], problem: Problem, what: &str, error: &str) {
    let seen = &mut logged[problem.index()];
    if !*seen {
        *seen = true;
        tracing::debug!(
            file = what,
            error,
            "dyno metrics: leaving out what this file gives (logged once)"
        );
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

/// What the flush remembers between calls, for the CPU rate.
#[derive(Default)]
struct FlushState {
    /// CPU seconds and time of the sample the last rate ended at.
    last: Option<(f64, Instant)>,
    rate: Option<f64>,
    stale_reported: bool,
}

/// Where the sampler leaves each sample for [`DynoMetrics::series`]; the
/// dyno collector (`collectors::dyno`, on the collectors' thread) holds one.
#[derive(Clone)]
pub struct Latest(Arc<Mutex<Option<Sample>>>);

impl Latest {
    /// Replaces the latest sample.
    pub fn set(&self, sample: Sample) {
        *lock(&self.0) = Some(sample);
    }
}

/// The dyno metrics' flush side: the latest sample, turned into series at
/// each flush.
pub struct DynoMetrics {
    latest: Arc<Mutex<Option<Sample>>>,
    flush: Mutex<FlushState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long until the next sample instant: wall-clock times 2.5 s past a
/// multiple of 5 s. Flushes happen on whole seconds, so counting tasks half
/// a second away from them keeps the listener's own flush work out of the
/// load (it is the dyno's, but a 1 s flush interval would otherwise show up
/// as a steady few hundredths).
pub fn until_next_sample() -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let period = LOAD_FREQ.as_millis();
    let phase = now.as_millis() % period;
    let target = period / 2;
    let wait = if phase < target {
        target - phase
    } else {
        period + target - phase
    };
    Duration::from_millis(u64::try_from(wait).unwrap_or(2500))
}

impl Default for DynoMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DynoMetrics {
    /// No sample yet: the dyno collector gives them ([`DynoMetrics::latest`]).
    pub fn new() -> Self {
        Self {
            latest: Arc::new(Mutex::new(None)),
            flush: Mutex::new(FlushState::default()),
        }
    }

    /// Where the sampler puts its samples.
    pub fn latest(&self) -> Latest {
        Latest(Arc::clone(&self.latest))
    }

    /// The series for one flush, stamped `timestamp`, from the latest sample.
    /// Nothing when there is no recent sample: a sampling thread that ended
    /// (it cannot, short of a bug) or hangs (a `/proc` read stuck in the
    /// kernel) must not leave its last figures repeating as if current.
    pub fn series(&self, timestamp: i64, interval: u64) -> Vec<Series> {
        let Some(s) = *lock(&self.latest) else {
            return Vec::new();
        };
        if s.at.elapsed() > STALE_AFTER {
            self.report_stale();
            return Vec::new();
        }
        let mut out = Vec::with_capacity(13);
        #[allow(clippy::cast_precision_loss)]
        let mb = |b: u64| b as f64 / 1_048_576.0;
        let source = s.source.tag();
        for (name, value, tagged) in [
            ("heroku.dyno.memory_quota", s.quota, false),
            ("heroku.dyno.memory_total", s.total, true),
            ("heroku.dyno.memory_rss", s.rss, true),
            ("heroku.dyno.memory_cache", s.cache, true),
            ("heroku.dyno.memory_swap", s.swap, true),
        ] {
            if let Some(v) = value {
                let tags = if tagged {
                    vec![source.to_owned()]
                } else {
                    Vec::new()
                };
                out.push(gauge(name, timestamp, mb(v), tags));
            }
        }
        if let Some([m1, m5, m15]) = s.load {
            for (name, v) in [
                ("heroku.dyno.load_avg_1m", m1),
                ("heroku.dyno.load_avg_5m", m5),
                ("heroku.dyno.load_avg_15m", m15),
            ] {
                out.push(gauge(name, timestamp, v, Vec::new()));
            }
        }
        #[allow(clippy::cast_precision_loss)]
        for (name, value) in [
            ("heroku.dyno.processes", s.processes),
            ("heroku.dyno.threads", s.threads),
        ] {
            if let Some(v) = value {
                out.push(gauge(name, timestamp, v as f64, Vec::new()));
            }
        }
        if let Some(rate) = self.cpu_rate(&s) {
            out.push(Series {
                metric: "heroku.dyno.cpu_time".to_owned(),
                kind: SeriesKind::Rate,
                points: vec![(timestamp, rate)],
                tags: Vec::new(),
                host: None,
                interval: Some(interval),
                unit: None,
            });
        }
        out
    }

    #[cold]
    fn report_stale(&self) {
        let mut f = lock(&self.flush);
        if !f.stale_reported {
            f.stale_reported = true;
            tracing::warn!(
                "dyno metrics: no sample for over {} s; heroku.dyno.* are left out until one comes",
                STALE_AFTER.as_secs()
            );
        }
    }

    /// CPU seconds per second between the sample the last rate ended at and
    /// this one; the same rate again while no new sample has come (a flush
    /// interval shorter than the 5 s sample period).
    fn cpu_rate(&self, s: &Sample) -> Option<f64> {
        let cpu = s.cpu_seconds?;
        let mut f = lock(&self.flush);
        match f.last {
            Some((prev, at)) if s.at > at => {
                let dt = s.at.duration_since(at).as_secs_f64();
                // A process reaped by one outside the dyno takes its time
                // with it: never report that as negative CPU.
                f.rate = Some(((cpu - prev) / dt).max(0.0));
                f.last = Some((cpu, s.at));
            }
            Some(_) => {}
            None => f.last = Some((cpu, s.at)),
        }
        f.rate
    }
}

fn gauge(name: &str, timestamp: i64, value: f64, tags: Vec<String>) -> Series {
    Series {
        metric: name.to_owned(),
        kind: SeriesKind::Gauge,
        points: vec![(timestamp, value)],
        tags,
        host: None,
        interval: None,
        unit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(series: &[Series]) -> Vec<&str> {
        series.iter().map(|s| s.metric.as_str()).collect()
    }

    #[test]
    fn a_real_sample_of_this_machine_has_processes_and_memory() {
        let mut sampler = Sampler::with(ProcScanner::new("/proc"), None);
        let s = sampler.sample(true);
        assert!(s.processes.unwrap_or(0) >= 1, "{s:?}");
        assert!(s.threads >= s.processes, "{s:?}");
        assert_eq!(s.source, MemorySource::Proc);
        assert!(s.rss.unwrap_or(0) > 0 && s.total >= s.rss, "{s:?}");
        assert_eq!((s.quota, s.cache), (None, None));
        assert!(s.load.is_some());
    }

    #[test]
    fn series_names_units_and_the_cpu_rate() {
        let at = Instant::now();
        let sample = Sample {
            at,
            quota: Some(512 << 20),
            total: Some(300 << 20),
            rss: Some(200 << 20),
            cache: Some(90 << 20),
            swap: Some(10 << 20),
            source: MemorySource::Cgroup,
            load: Some([0.5, 0.25, 0.125]),
            cpu_seconds: Some(100.0),
            processes: Some(3),
            threads: Some(7),
        };
        let m = DynoMetrics {
            latest: Arc::new(Mutex::new(Some(sample))),
            flush: Mutex::new(FlushState::default()),
        };
        let first = m.series(1000, 10);
        assert_eq!(
            names(&first),
            [
                "heroku.dyno.memory_quota",
                "heroku.dyno.memory_total",
                "heroku.dyno.memory_rss",
                "heroku.dyno.memory_cache",
                "heroku.dyno.memory_swap",
                "heroku.dyno.load_avg_1m",
                "heroku.dyno.load_avg_5m",
                "heroku.dyno.load_avg_15m",
                "heroku.dyno.processes",
                "heroku.dyno.threads",
            ],
            "no CPU rate from a single sample"
        );
        let values: Vec<f64> = first.iter().map(|s| s.points[0].1).collect();
        assert_eq!(
            values,
            [512.0, 300.0, 200.0, 90.0, 10.0, 0.5, 0.25, 0.125, 3.0, 7.0]
        );
        assert!(first
            .iter()
            .all(|s| s.points[0].0 == 1000 && s.kind == SeriesKind::Gauge));
        assert_eq!(first[1].tags, ["source:cgroup"]);
        assert!(first[0].tags.is_empty());

        // 5 s later, 2.5 CPU-seconds more: 0.5 CPU-s/s, repeated until the next sample.
        *lock(&m.latest) = Some(Sample {
            at: at + Duration::from_secs(5),
            cpu_seconds: Some(102.5),
            ..sample
        });
        for _ in 0..2 {
            let next = m.series(1010, 10);
            let cpu = next
                .iter()
                .find(|s| s.metric == "heroku.dyno.cpu_time")
                .expect("cpu");
            assert_eq!(
                (cpu.kind, cpu.interval, cpu.points[0].1),
                (SeriesKind::Rate, Some(10), 0.5)
            );
        }
        // A drop (a process reaped outside the dyno) is 0, not negative.
        *lock(&m.latest) = Some(Sample {
            at: at + Duration::from_secs(10),
            cpu_seconds: Some(50.0),
            ..sample
        });
        let next = m.series(1020, 10);
        let cpu = next
            .iter()
            .find(|s| s.metric == "heroku.dyno.cpu_time")
            .expect("cpu");
        assert_eq!(cpu.points[0].1, 0.0);
    }

    #[test]
    fn a_stale_sample_is_not_reported() {
        let Some(old) = Instant::now().checked_sub(STALE_AFTER + Duration::from_secs(1)) else {
            return; // an uptime too short to build an old Instant
        };
        let m = DynoMetrics {
            latest: Arc::new(Mutex::new(Some(Sample {
                at: old,
                quota: Some(1),
                total: None,
                rss: None,
                cache: None,
                swap: None,
                source: MemorySource::Proc,
                load: Some([0.0; 3]),
                cpu_seconds: None,
                processes: Some(1),
                threads: Some(1),
            }))),
            flush: Mutex::new(FlushState::default()),
        };
        assert_eq!(m.series(0, 10), []);
        lock(&m.latest).as_mut().unwrap().at = Instant::now();
        assert_eq!(m.series(0, 10).len(), 6);
    }

    #[test]
    fn sample_times_sit_between_whole_seconds() {
        let d = until_next_sample();
        assert!(d <= LOAD_FREQ && d > Duration::ZERO, "{d:?}");
        let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + d;
        let ms = at.as_millis() % 5000;
        assert!((2400..=2600).contains(&ms), "{ms}");
    }
}
