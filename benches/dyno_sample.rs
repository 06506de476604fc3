//! What one dyno-metrics sample costs: CPU time (user + system, of the
//! sampling thread, from `getrusage(RUSAGE_THREAD)`) and heap allocations
//! (through a counting global allocator) per sample, after a warm-up.
//!
//! Run: `cargo bench --bench dyno_sample`. It prints one line per case:
//! `cgroup` (memory from the cgroup files, when this machine has a readable
//! memory cgroup), `proc` (memory summed over every process's `status`, the
//! sample taken between PSS reads), and `pss` (the scan, once a minute in
//! /proc mode, that also reads every `smaps_rollup`). The cost grows with the
//! number of processes and threads `/proc` shows; to see a dyno-sized
//! figure, run it in its own PID namespace:
//! `unshare -rm --pid --fork --mount-proc cargo bench --bench dyno_sample`
//! (or run the built bench binary that way).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dynostat::dynometrics::procfs::{Memory, ProcScanner};
use dynostat::dynometrics::{cgroup, Sampler};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's
// arguments; the counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// CPU time of the calling thread, user + system.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we own; all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD on the calling thread, with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &raw mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn run(name: &str, mut sampler: Sampler, samples: u32) {
    // Warm-up: buffers grow to their working size.
    let mut last = sampler.sample(true);
    for _ in 0..20 {
        last = black_box(sampler.sample(true));
    }
    let allocs_before = ALLOCATIONS.load(Ordering::Relaxed);
    let cpu_before = thread_cpu();
    for _ in 0..samples {
        last = black_box(sampler.sample(true));
    }
    let cpu = thread_cpu() - cpu_before;
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs_before;
    let per = cpu / samples;
    println!(
        "{name:<8} {:>6.1} µs CPU/sample  {allocs} allocations in {samples} samples  \
         ({} processes, {} threads, memory source {:?})",
        per.as_secs_f64() * 1e6,
        last.processes.unwrap_or(0),
        last.threads.unwrap_or(0),
        last.source,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let samples = 2000;
    let found = {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        cgroup::discover(
            &read("/proc/self/cgroup"),
            &read("/proc/self/mountinfo"),
            &|p: &std::path::Path| p.exists(),
        )
    };
    if let Some(c) = &found {
        println!("memory cgroup: {} ({:?})", c.dir.display(), c.version);
    }
    run(
        "cgroup",
        Sampler::with(ProcScanner::new("/proc"), found),
        samples,
    );
    run(
        "proc",
        Sampler::with(ProcScanner::new("/proc"), None),
        samples,
    );
    pss_scan(samples / 10);
}

/// The once-a-minute /proc scan that also reads every `smaps_rollup`.
fn pss_scan(scans: u32) {
    let mut scanner = ProcScanner::new("/proc");
    let mut last = scanner.scan(Memory::RssAndPss, &mut |_, _| {});
    for _ in 0..5 {
        last = black_box(scanner.scan(Memory::RssAndPss, &mut |_, _| {}));
    }
    let allocs_before = ALLOCATIONS.load(Ordering::Relaxed);
    let cpu_before = thread_cpu();
    for _ in 0..scans {
        last = black_box(scanner.scan(Memory::RssAndPss, &mut |_, _| {}));
    }
    let cpu = thread_cpu() - cpu_before;
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs_before;
    println!(
        "pss      {:>6.1} µs CPU/scan    {allocs} allocations in {scans} scans  \
         ({} processes, {} MiB RSS, {} MiB PSS)",
        (cpu / scans).as_secs_f64() * 1e6,
        last.processes,
        last.rss_bytes >> 20,
        last.pss_bytes >> 20,
    );
}
