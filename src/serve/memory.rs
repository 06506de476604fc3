//! Idle memory of the long-running listener: what the allocator and the
//! kernel would otherwise keep mapped between flushes.
//!
//! In: the process's own allocator and mappings (`/proc/self/smaps`, read
//! once, at the first trim). Out: glibc malloc tuned at start, and after each
//! flush (and again when the sender has delivered it and gone idle) the free
//! heap pages given back (`malloc_trim`) and the pages of the binary's own
//! clean read-only mappings unmapped (`MADV_DONTNEED`); the code still in use
//! is mapped again from the page cache on its next touch, so between flushes
//! only what the idle threads touch stays resident.
//!
//! Must never: touch a mapping that holds anything but the file's bytes
//! (writable ones, or any with private copies, such as the relocated
//! read-only data of a position-independent binary), or cost the listener
//! anything when a step fails: every step is best effort.

use std::sync::OnceLock;

/// Allocations at or above this size get their own mapping (glibc malloc),
/// returned to the kernel when freed. Each payload's gzip state (miniz_oxide's
/// tables and window, a few hundred KiB) is freed again; with glibc's
/// default, the threshold rises to the largest chunk freed so far, after which
/// such chunks come from the heap and stay resident between flushes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 64 * 1024;

/// A fixed mmap threshold (which also fixes the trim threshold at glibc's
/// 128 KiB default), see [`MMAP_THRESHOLD`]. Other allocators are left alone.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, under glibc's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Gives idle memory back after a flush. Cheap: one `malloc_trim` and a
/// `madvise` per clean mapping of the binary (a handful), a few times per
/// interval. Shared by the clock and the sender thread (both may trim at
/// once: each step is thread-safe).
#[derive(Debug, Default)]
pub struct Trimmer {
    /// The binary's clean read-only mappings, `[start, end)`; read at the
    /// first trim.
    clean: OnceLock<Vec<(usize, usize)>>,
}

impl Trimmer {
    /// A trimmer that reads the mappings at its first [`Trimmer::trim`], not
    /// at start (which must stay fast).
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns free heap pages and unmaps the binary's clean pages.
    pub fn trim(&self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim is thread-safe and only releases free memory.
        unsafe {
            libc::malloc_trim(0);
        }
        let clean = self.clean.get_or_init(|| {
            let exe = std::fs::read_link("/proc/self/exe").ok();
            let smaps = std::fs::read_to_string("/proc/self/smaps").ok();
            match (exe, smaps) {
                (Some(exe), Some(smaps)) => clean_ranges(&smaps, &exe.to_string_lossy()),
                _ => Vec::new(),
            }
        });
        for &(start, end) in clean.iter() {
            // SAFETY: [start, end) is a whole private, read-only mapping of
            // the executable with no private (anonymous) pages: after
            // MADV_DONTNEED every page reads again as the same file bytes.
            // The range is the kernel's own and page-aligned.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// The `[start, end)` of every mapping in `smaps` of the file `exe` that is
/// private, not writable, and holds no anonymous (copied-on-write) page.
fn clean_ranges(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read: its range, and whether it qualifies so far.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-').and_then(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        }) {
            // "start-end perms offset dev inode path"
            let perms = fields.next().unwrap_or("");
            let path: Vec<&str> = fields.skip(3).collect();
            let ours = path.join(" ") == exe;
            let read_only = perms.len() == 4 && !perms.contains('w') && perms.ends_with('p');
            current = (ours && read_only && end > start).then_some((start, end));
        } else if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if fields.next() == Some("0") {
                    out.push(range);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55555c6d4000-55555c789000 rw-p 00000000 00:00 0                          [heap]
Size:                724 kB
Rss:                 144 kB
Anonymous:           144 kB
7f41ff000000-7f41ff1ef000 r--p 00000000 00:2a 1234                       /app/bin/dyno stat
Size:               1980 kB
Rss:                1216 kB
Anonymous:             0 kB
7f41ff1ef000-7f41ff74a000 r-xp 001ee000 00:2a 1234                       /app/bin/dyno stat
Size:               5484 kB
Anonymous:             0 kB
7f41ff74a000-7f41ff792000 r--p 00748000 00:2a 1234                       /app/bin/dyno stat
Size:                288 kB
Anonymous:           288 kB
7f41ff792000-7f41ff799000 rw-p 0078f000 00:2a 1234                       /app/bin/dyno stat
Size:                 28 kB
Anonymous:             0 kB
7f41ff800000-7f41ff900000 r-xp 00000000 00:2a 99                         /usr/lib/libother.so
Size:               1024 kB
Anonymous:             0 kB
7f41ff900000-7f41ff901000 r--s 00000000 00:2a 1234                       /app/bin/dyno stat
Size:                  4 kB
Anonymous:             0 kB
7f41ff833000-7f41ff835000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_the_binarys_clean_read_only_private_mappings_are_released() {
        assert_eq!(
            clean_ranges(SMAPS, "/app/bin/dyno stat"),
            vec![
                (0x7f41_ff00_0000, 0x7f41_ff1e_f000),
                (0x7f41_ff1e_f000, 0x7f41_ff74_a000),
            ],
            "the relocated read-only data (anonymous pages), the writable data, \
             a shared mapping and other files stay"
        );
        assert!(clean_ranges(SMAPS, "/elsewhere").is_empty());
        assert!(clean_ranges("", "/app/bin/dyno stat").is_empty());
    }

    #[test]
    fn a_trim_leaves_the_process_working() {
        let t = Trimmer::new();
        t.trim();
        t.trim();
        // Code and read-only data of this test binary were just unmapped;
        // using them maps them again from the file, unchanged.
        let text = format!("{:?}", (1..5).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(text, "[2, 4, 6, 8]");
    }
}
