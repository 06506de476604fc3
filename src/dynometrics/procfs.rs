//! The dyno's processes, from `/proc`: task states (for the load average),
//! CPU time, process and thread counts, and, when the cgroup's memory
//! accounting is not readable, each process's memory.
//!
//! In: `/proc/[pid]/stat`, `/proc/[pid]/task/[tid]/stat`, `/proc/[pid]/status`
//! and `/proc/[pid]/smaps_rollup`, for every process `/proc` shows (in a dyno,
//! its own PID namespace). Out: one [`ProcTotals`] per scan.
//!
//! Must never: allocate per scan once its buffers have grown (directories are
//! listed with `getdents64` into a reused buffer, files are read into reused
//! buffers, paths are built in a reused string), count the scanning thread
//! itself, or fail a scan because a process exited while it was read (that
//! process is skipped).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

/// What one `/proc/[pid]/stat` (or `task/[tid]/stat`) line says that we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStat {
    /// The state letter: `R` running or runnable, `D` uninterruptible, `S`, `Z`, ...
    pub state: u8,
    /// User plus system CPU time of the task, plus that of its reaped
    /// children (`utime + stime + cutime + cstime`), in clock ticks.
    pub cpu_ticks: u64,
    /// `num_threads`.
    pub threads: u64,
}

/// Parses a `stat` line (`proc_pid_stat(5)`). The command name (field 2) sits
/// in parentheses and may hold spaces and `)`, so fields are counted from
/// the last `)`. `None` when the line is malformed.
pub fn parse_stat(line: &[u8]) -> Option<TaskStat> {
    let close = line.iter().rposition(|&b| b == b')')?;
    // Fields 3.. of stat(5), split on single spaces.
    let mut fields = line.get(close + 2..)?.split(|&b| b == b' ');
    let state = *fields.next()?.first()?;
    // Field 3 is `state`; utime, stime, cutime, cstime are 14..=17 and
    // num_threads is 20: skip 10 fields (4..=13) to reach utime.
    let mut fields = fields.skip(10);
    let mut cpu = 0u64;
    for _ in 0..4 {
        // cutime/cstime are signed in the kernel's format; negative never happens in practice.
        cpu = cpu.checked_add(parse_u64(fields.next()?)?)?;
    }
    // 18 priority, 19 nice, 20 num_threads.
    let threads = parse_u64(fields.nth(2)?)?;
    Some(TaskStat {
        state,
        cpu_ticks: cpu,
        threads,
    })
}

/// A value or file that does not have the kernel's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// The value in kB of the line `key:` in a `status` or `smaps_rollup` file
/// (`Pss:     274 kB`). `Ok(None)` when the key is absent (a kernel thread or
/// zombie has no `VmRSS`), `Err(Malformed)` when its value is malformed.
pub fn kb_field(content: &[u8], key: &[u8]) -> Result<Option<u64>, Malformed> {
    for line in content.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(key) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = trim(rest);
        let digits = rest.strip_suffix(b"kB").map_or(rest, trim);
        return parse_u64(digits).map(Some).ok_or(Malformed);
    }
    Ok(None)
}

/// Parses a decimal `u64` (no sign, no spaces).
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v = 0u64;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Trims ASCII whitespace at both ends.
pub fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// Totals over the dyno's processes from one scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcTotals {
    /// Live (not zombie) processes.
    pub processes: u64,
    /// Their threads.
    pub threads: u64,
    /// Threads in state R or D, not counting the scanning thread.
    pub active: u64,
    /// CPU time of the processes and their reaped children, in clock ticks.
    pub cpu_ticks: u64,
    /// Memory, when asked for: RSS (`VmRSS` from `status`) in bytes.
    pub rss_bytes: u64,
    /// Memory, with [`Memory::RssAndPss`]: PSS from `smaps_rollup` in bytes
    /// (RSS for a process whose `smaps_rollup` is missing or unreadable).
    pub pss_bytes: u64,
    /// Memory, when asked for: swap in bytes.
    pub swap_bytes: u64,
    /// Whether PSS from `smaps_rollup` was used for at least one process.
    pub used_pss: bool,
}

/// Which memory figures a scan reads per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// None (the cgroup's accounting is in use).
    Skip,
    /// RSS and swap from `status`: a few counters the kernel keeps, cheap.
    Rss,
    /// Also PSS from `smaps_rollup`, which walks the page tables: about
    /// 15 µs of CPU per resident MB (`benches/dyno_sample.rs`), so it is
    /// read at a slower pace than the rest.
    RssAndPss,
}

/// A file or listing the scanner could not use; reported once by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanProblem {
    /// `/proc` itself could not be listed.
    ProcDir,
    /// A `stat` line did not parse.
    Stat,
    /// A `status` or `smaps_rollup` value did not parse.
    Memory,
}

/// The reusable state of a `/proc` scan.
pub struct ProcScanner {
    root: String,
    /// Buffer for the `/proc` listing.
    outer: Vec<u8>,
    /// Buffer for one `task/` listing.
    inner: Vec<u8>,
    /// File contents.
    file: Vec<u8>,
    /// Path being built.
    path: String,
    /// The scanning thread, as `/proc` numbers it (its PID namespace may not be ours).
    own_tid: Option<u32>,
}

/// Bytes of `getdents64` buffer: a few hundred entries per call.
const DIR_BUF: usize = 16 * 1024;

impl ProcScanner {
    /// A scanner of the `/proc` mounted at `root` (`"/proc"` but in tests),
    /// for the calling thread: it must scan from the thread that created it,
    /// so that it can leave itself out of the load.
    pub fn new(root: &str) -> Self {
        let own_tid = std::fs::read_link(format!("{root}/thread-self"))
            .ok()
            .and_then(|p| {
                // "PID/task/TID"
                let s = p.to_str()?.rsplit('/').next()?.to_owned();
                s.parse().ok()
            })
            // Kernels before 3.17 have no thread-self; then /proc is taken
            // to be our PID namespace's, as it is in a dyno.
            // SAFETY: gettid has no preconditions.
            .or_else(|| u32::try_from(unsafe { libc::syscall(libc::SYS_gettid) }).ok());
        Self {
            root: root.to_owned(),
            outer: vec![0; DIR_BUF],
            inner: vec![0; DIR_BUF],
            file: Vec::with_capacity(8192),
            path: String::with_capacity(root.len() + 64),
            own_tid,
        }
    }

    /// The scanning thread's id in `/proc`, when it could be found.
    pub fn own_tid(&self) -> Option<u32> {
        self.own_tid
    }

    /// Scans every process, and sums the `memory` figures asked for.
    /// Problems met are passed to `problem` (the caller logs each kind once).
    pub fn scan(
        &mut self,
        memory: Memory,
        problem: &mut dyn FnMut(ScanProblem, &str),
    ) -> ProcTotals {
        let mut totals = ProcTotals::default();
        let dir = match File::open(&self.root) {
            Ok(d) => d,
            Err(e) => {
                problem(ScanProblem::ProcDir, &e.to_string());
                return totals;
            }
        };
        let mut outer = std::mem::take(&mut self.outer);
        loop {
            let n = match getdents(&dir, &mut outer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    problem(ScanProblem::ProcDir, &e.to_string());
                    break;
                }
            };
            for_each_entry(&outer[..n], |name| {
                if let Some(pid) = parse_u64(name).and_then(|p| u32::try_from(p).ok()) {
                    self.process(pid, memory, &mut totals, problem);
                }
            });
        }
        self.outer = outer;
        totals
    }

    /// Adds one process to `totals`, or nothing when it exited mid-read.
    fn process(
        &mut self,
        pid: u32,
        memory: Memory,
        totals: &mut ProcTotals,
        problem: &mut dyn FnMut(ScanProblem, &str),
    ) {
        self.set_path(pid, None, "stat");
        let Ok(content) = read_into(&self.path, &mut self.file) else {
            return; // exited, or not ours to read
        };
        let Some(stat) = parse_stat(trim(content)) else {
            problem(ScanProblem::Stat, &self.path);
            return;
        };
        if matches!(stat.state, b'Z' | b'X') {
            return;
        }
        let mut p = ProcTotals {
            processes: 1,
            threads: stat.threads,
            cpu_ticks: stat.cpu_ticks,
            ..ProcTotals::default()
        };
        if stat.threads <= 1 {
            if is_active(stat.state) && Some(pid) != self.own_tid {
                p.active = 1;
            }
        } else {
            match self.active_threads(pid, problem) {
                Some(n) => p.active = n,
                None => return,
            }
        }
        if memory != Memory::Skip {
            match self.memory(pid, memory == Memory::RssAndPss) {
                Ok(Some((rss, swap, pss))) => {
                    p.rss_bytes = rss;
                    p.swap_bytes = swap;
                    p.pss_bytes = pss.unwrap_or(rss);
                    p.used_pss = pss.is_some();
                }
                Ok(None) => return,
                Err(Malformed) => {
                    problem(ScanProblem::Memory, &self.path);
                    return;
                }
            }
        }
        totals.processes += p.processes;
        totals.threads += p.threads;
        totals.active += p.active;
        totals.cpu_ticks = totals.cpu_ticks.saturating_add(p.cpu_ticks);
        totals.rss_bytes = totals.rss_bytes.saturating_add(p.rss_bytes);
        totals.pss_bytes = totals.pss_bytes.saturating_add(p.pss_bytes);
        totals.swap_bytes = totals.swap_bytes.saturating_add(p.swap_bytes);
        totals.used_pss |= p.used_pss;
    }

    /// Threads of `pid` in state R or D, but the scanning thread. `None` when
    /// the process exited while its tasks were listed.
    fn active_threads(
        &mut self,
        pid: u32,
        problem: &mut dyn FnMut(ScanProblem, &str),
    ) -> Option<u64> {
        self.path.clear();
        let _ = write!(self.path, "{}/{pid}/task", self.root);
        let dir = File::open(&self.path).ok()?;
        let mut inner = std::mem::take(&mut self.inner);
        let mut active = 0;
        let mut gone = false;
        loop {
            let n = match getdents(&dir, &mut inner) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => {
                    gone = true;
                    break;
                }
            };
            for_each_entry(&inner[..n], |name| {
                let Some(tid) = parse_u64(name).and_then(|t| u32::try_from(t).ok()) else {
                    return;
                };
                if Some(tid) == self.own_tid {
                    return;
                }
                self.set_path(pid, Some(tid), "stat");
                // A thread that ended mid-listing is simply not counted.
                if let Ok(content) = read_into(&self.path, &mut self.file) {
                    match parse_stat(trim(content)) {
                        Some(s) if is_active(s.state) => active += 1,
                        Some(_) => {}
                        None => problem(ScanProblem::Stat, &self.path),
                    }
                }
            });
        }
        self.inner = inner;
        (!gone).then_some(active)
    }

    /// `(rss, swap, pss)` of `pid` in bytes (PSS only with `pss`, and where
    /// `smaps_rollup` is readable); `Ok(None)` when it exited mid-read,
    /// `Err` when a value is malformed.
    fn memory(
        &mut self,
        pid: u32,
        pss: bool,
    ) -> Result<Option<(u64, u64, Option<u64>)>, Malformed> {
        self.set_path(pid, None, "status");
        let Ok(status) = read_into(&self.path, &mut self.file) else {
            return Ok(None);
        };
        let rss = kb_field(status, b"VmRSS")?.unwrap_or(0);
        let swap = kb_field(status, b"VmSwap")?.unwrap_or(0);
        // smaps_rollup needs ptrace-read access: where it is missing or
        // unreadable, the caller lets RSS stand in.
        let pss = if pss {
            self.set_path(pid, None, "smaps_rollup");
            match read_into(&self.path, &mut self.file) {
                Ok(rollup) => kb_field(rollup, b"Pss")?,
                Err(_) => None,
            }
        } else {
            None
        };
        Ok(Some((
            rss.saturating_mul(1024),
            swap.saturating_mul(1024),
            pss.map(|k| k.saturating_mul(1024)),
        )))
    }

    fn set_path(&mut self, pid: u32, tid: Option<u32>, file: &str) {
        self.path.clear();
        let _ = match tid {
            Some(tid) => write!(self.path, "{}/{pid}/task/{tid}/{file}", self.root),
            None => write!(self.path, "{}/{pid}/{file}", self.root),
        };
    }
}

fn is_active(state: u8) -> bool {
    matches!(state, b'R' | b'D')
}

/// Reads the whole file at `path` into `buf` (reused: no allocation once it
/// is large enough; `File::open` builds the C path on the stack).
pub fn read_into<'b>(path: &str, buf: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
    buf.clear();
    File::open(path)?.read_to_end(buf)?;
    Ok(buf)
}

/// One `getdents64` call on `dir` into `buf`; the bytes filled.
fn getdents(dir: &File, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the fd is open for the call's duration and `buf` is a valid,
    // writable region of `buf.len()` bytes; the kernel writes at most that.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Calls `f` with each entry name in a `getdents64` buffer
/// (`struct linux_dirent64`: u64 ino, i64 off, u16 reclen, u8 type, name NUL).
fn for_each_entry(mut buf: &[u8], mut f: impl FnMut(&[u8])) {
    while buf.len() >= 19 {
        let reclen = usize::from(u16::from_ne_bytes([buf[16], buf[17]]));
        if reclen < 19 || reclen > buf.len() {
            return;
        }
        let name = &buf[19..reclen];
        let name = name
            .iter()
            .position(|&b| b == 0)
            .map_or(name, |end| &name[..end]);
        f(name);
        buf = &buf[reclen..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `/proc/self/stat` of `cat` on Linux 6.x.
    const STAT: &str = "13454 (cat) R 13443 13443 8309 34816 13443 4194304 98 0 0 0 3 7 2 1 20 0 1 0 1234567 3133440 437 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0";

    #[test]
    fn stat_fields_from_a_real_line() {
        let s = parse_stat(STAT.as_bytes()).expect("parses");
        assert_eq!(
            s,
            TaskStat {
                state: b'R',
                cpu_ticks: 3 + 7 + 2 + 1,
                threads: 1
            }
        );
    }

    #[test]
    fn stat_with_spaces_and_parens_in_the_name() {
        let line = "77 (tokio (rt) worker) S 1 77 77 0 -1 4194560 500 0 0 0 120 30 0 0 20 0 9 0 99 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(line.as_bytes()).expect("parses");
        assert_eq!((s.state, s.cpu_ticks, s.threads), (b'S', 150, 9));
    }

    #[test]
    fn malformed_stat_lines_are_none() {
        for bad in [
            "",
            "12 cat R 1",
            "12 (cat)",
            "12 (cat) R 1 2 3",
            "12 (cat) R 1 2 3 4 5 6 7 8 9 10 x 1 1 1 20 0 1",
            "12 (cat) R 1 2 3 4 5 6 7 8 9 10 1 1 1 1 20 0 -1",
        ] {
            assert_eq!(parse_stat(bad.as_bytes()), None, "{bad:?}");
        }
    }

    /// A real `/proc/self/status` (Linux 6.x), trimmed of the signal masks.
    const STATUS: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t13454\nPid:\t13454\nPPid:\t13443\nVmPeak:\t    3060 kB\nVmSize:\t    3060 kB\nVmHWM:\t    1748 kB\nVmRSS:\t    1748 kB\nRssAnon:\t     112 kB\nRssFile:\t    1636 kB\nVmSwap:\t      24 kB\nThreads:\t1\n";

    /// A real `/proc/self/smaps_rollup` (Linux 6.x).
    const ROLLUP: &str = "555695997000-7fff0d93e000 ---p 00000000 00:00 0                          [rollup]\nRss:                1764 kB\nPss:                 274 kB\nPss_Dirty:           116 kB\nPss_Anon:            116 kB\nPss_File:            158 kB\nPss_Shmem:             0 kB\nShared_Clean:       1608 kB\nPrivate_Dirty:       116 kB\nSwap:                  0 kB\nSwapPss:               0 kB\nLocked:                0 kB\n";

    #[test]
    fn status_and_rollup_values() {
        assert_eq!(kb_field(STATUS.as_bytes(), b"VmRSS"), Ok(Some(1748)));
        assert_eq!(kb_field(STATUS.as_bytes(), b"VmSwap"), Ok(Some(24)));
        assert_eq!(kb_field(STATUS.as_bytes(), b"Threads"), Ok(Some(1)));
        // `Pss:` is not `Pss_Dirty:`.
        assert_eq!(kb_field(ROLLUP.as_bytes(), b"Pss"), Ok(Some(274)));
        assert_eq!(kb_field(ROLLUP.as_bytes(), b"Rss"), Ok(Some(1764)));
        // A kernel thread has no VmRSS.
        assert_eq!(
            kb_field(b"Name:\tkthreadd\nState:\tS\n", b"VmRSS"),
            Ok(None)
        );
        assert_eq!(kb_field(b"VmRSS:\t  lots kB\n", b"VmRSS"), Err(Malformed));
    }

    #[test]
    fn dirent_records_are_walked() {
        let mut buf = Vec::new();
        for name in ["1", "self", "4242"] {
            let reclen = (19 + name.len() + 1).next_multiple_of(8);
            let start = buf.len();
            buf.resize(start + reclen, 0);
            buf[start + 16..start + 18]
                .copy_from_slice(&u16::try_from(reclen).unwrap().to_ne_bytes());
            buf[start + 19..start + 19 + name.len()].copy_from_slice(name.as_bytes());
        }
        let mut names = Vec::new();
        for_each_entry(&buf, |n| {
            names.push(String::from_utf8_lossy(n).into_owned())
        });
        assert_eq!(names, ["1", "self", "4242"]);
    }

    #[test]
    fn a_real_scan_sees_this_process_and_not_the_scanning_thread() {
        let mut scanner = ProcScanner::new("/proc");
        assert!(scanner.own_tid().is_some(), "/proc/thread-self resolves");
        let mut problems = Vec::new();
        let t = scanner.scan(Memory::RssAndPss, &mut |p, what| {
            problems.push((p, what.to_owned()))
        });
        assert!(t.processes >= 1 && t.threads >= t.processes, "{t:?}");
        assert!(t.rss_bytes > 0 && t.pss_bytes > 0 && t.used_pss, "{t:?}");
        let cheap = scanner.scan(Memory::Rss, &mut |_, _| {});
        assert!(
            cheap.rss_bytes > 0 && cheap.pss_bytes == cheap.rss_bytes && !cheap.used_pss,
            "{cheap:?}"
        );
        let none = scanner.scan(Memory::Skip, &mut |_, _| {});
        assert_eq!((none.rss_bytes, none.swap_bytes), (0, 0));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_missing_proc_is_a_problem_and_empty_totals() {
        let mut scanner = ProcScanner::new("/nonexistent-proc");
        let mut problems = Vec::new();
        let t = scanner.scan(Memory::RssAndPss, &mut |p, _| problems.push(p));
        assert_eq!(t, ProcTotals::default());
        assert_eq!(problems, [ScanProblem::ProcDir]);
    }
}
