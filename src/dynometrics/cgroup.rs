//! The dyno's memory cgroup: where it is, and what its files say.
//!
//! In: `/proc/self/cgroup` and `/proc/self/mountinfo` once, at start, to find
//! the directory; then, every sample, the memory files in it:
//!
//! | | cgroup v2 | cgroup v1 (`memory` controller) |
//! |---|---|---|
//! | quota | `memory.max` (`max`: none) | `memory.limit_in_bytes` (≥ 2^60: none) |
//! | usage | `memory.current` | `memory.usage_in_bytes` |
//! | rss, cache | `memory.stat` `anon`, `file` | `memory.stat` `total_rss`, `total_cache` |
//! | swap | `memory.swap.current` | `memory.stat` `total_swap` |
//!
//! Out: a [`Cgroup`] (its version and file paths), and per sample a
//! [`CgroupMemory`].
//!
//! Finding the directory: the dyno's cgroup path (the `0::` line for v2, the
//! line naming `memory` for v1) is looked up under each cgroup mount that is
//! not hidden by a later mount on or above it. A path outside the mount's
//! root, or one that does not exist there (a cgroup namespace, a tmpfs with
//! copied files), resolves to the mount point itself. With no usable cgroup
//! mount, the usual places are tried: `/sys/fs/cgroup` (v2) and
//! `/sys/fs/cgroup/memory` (v1). v2 is preferred when its directory has the
//! memory files (a hybrid host mounts a v2 tree without the memory controller).
//!
//! Must never: write to a cgroup file, or fail because one is missing or
//! malformed (that value is left out and reported to the caller).

use std::path::{Path, PathBuf};

use super::procfs::{parse_u64, read_into, trim, Malformed};

/// Which cgroup interface the memory files follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The legacy per-controller hierarchy.
    V1,
    /// The unified hierarchy.
    V2,
}

/// The dyno's memory cgroup directory and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// v1 or v2.
    pub version: Version,
    /// The directory.
    pub dir: PathBuf,
    limit: String,
    usage: String,
    stat: String,
    /// v2 only: `memory.swap.current`.
    swap: Option<String>,
}

/// A memory file the sampler could not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupFile {
    /// `memory.max` / `memory.limit_in_bytes`.
    Limit,
    /// `memory.current` / `memory.usage_in_bytes`.
    Usage,
    /// `memory.stat`.
    Stat,
    /// `memory.swap.current`.
    Swap,
}

/// One sample of the cgroup's memory files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupMemory {
    /// The limit in bytes; none when unlimited or unreadable.
    pub quota: Option<u64>,
    /// Usage, when the accounting is readable; none means "use /proc".
    pub usage: Option<Usage>,
}

/// The cgroup's memory accounting, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Usage plus swap (Heroku's `memory_total`: resident, cache and swap).
    pub total: u64,
    /// Anonymous memory (`anon` / `total_rss`).
    pub rss: Option<u64>,
    /// Page cache (`file` / `total_cache`).
    pub cache: Option<u64>,
    /// Swap (`memory.swap.current` / `total_swap`).
    pub swap: Option<u64>,
}

/// A v1 limit at or above this is "no limit" (the kernel writes
/// `PAGE_COUNTER_MAX` in bytes, 0x7FFFFFFFFFFFF000 on 4 KiB pages).
const V1_UNLIMITED: u64 = 1 << 60;

impl Cgroup {
    fn new(version: Version, dir: PathBuf) -> Self {
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        match version {
            Version::V2 => Self {
                version,
                limit: file("memory.max"),
                usage: file("memory.current"),
                stat: file("memory.stat"),
                swap: Some(file("memory.swap.current")),
                dir,
            },
            Version::V1 => Self {
                version,
                limit: file("memory.limit_in_bytes"),
                usage: file("memory.usage_in_bytes"),
                stat: file("memory.stat"),
                swap: None,
                dir,
            },
        }
    }

    /// The path of `file`, for log lines.
    pub fn path(&self, file: CgroupFile) -> &str {
        match file {
            CgroupFile::Limit => &self.limit,
            CgroupFile::Usage => &self.usage,
            CgroupFile::Stat => &self.stat,
            CgroupFile::Swap => self.swap.as_deref().unwrap_or(&self.stat),
        }
    }

    /// Reads the memory files into `buf` (reused). Each file that is missing,
    /// unreadable or malformed leaves its values out and is passed to `problem`.
    pub fn read(
        &self,
        buf: &mut Vec<u8>,
        problem: &mut dyn FnMut(CgroupFile, &str),
    ) -> CgroupMemory {
        let mut out = CgroupMemory::default();
        match read_into(&self.limit, buf) {
            Ok(c) => match parse_limit(c, self.version) {
                Some(limit) => out.quota = limit,
                None => problem(CgroupFile::Limit, "malformed"),
            },
            Err(e) => problem(CgroupFile::Limit, &e.to_string()),
        }
        let usage = match read_into(&self.usage, buf) {
            Ok(c) => match parse_u64(trim(c)) {
                Some(u) => u,
                None => {
                    problem(CgroupFile::Usage, "malformed");
                    return out;
                }
            },
            Err(e) => {
                problem(CgroupFile::Usage, &e.to_string());
                return out;
            }
        };
        let (rss_key, cache_key): (&[u8], &[u8]) = match self.version {
            Version::V2 => (b"anon", b"file"),
            Version::V1 => (b"total_rss", b"total_cache"),
        };
        let mut u = Usage::default();
        match read_into(&self.stat, buf) {
            Ok(c) => {
                let rss = stat_value(c, rss_key);
                let cache = stat_value(c, cache_key);
                if rss.is_err() || cache.is_err() {
                    problem(CgroupFile::Stat, "malformed");
                }
                u.rss = rss.ok().flatten();
                u.cache = cache.ok().flatten();
                if self.version == Version::V1 {
                    // Present only with swap accounting (`swapaccount=1`).
                    u.swap = stat_value(c, b"total_swap").ok().flatten();
                }
            }
            Err(e) => problem(CgroupFile::Stat, &e.to_string()),
        }
        if let Some(swap) = &self.swap {
            match read_into(swap, buf) {
                Ok(c) => match parse_u64(trim(c)) {
                    Some(s) => u.swap = Some(s),
                    None => problem(CgroupFile::Swap, "malformed"),
                },
                // Absent without swap accounting: no swap point.
                Err(e) => problem(CgroupFile::Swap, &e.to_string()),
            }
        }
        u.total = usage.saturating_add(u.swap.unwrap_or(0));
        out.usage = Some(u);
        out
    }
}

/// Parses a limit file: `Some(None)` for no limit, `None` when malformed.
pub fn parse_limit(content: &[u8], version: Version) -> Option<Option<u64>> {
    let v = trim(content);
    if version == Version::V2 && v == b"max" {
        return Some(None);
    }
    let n = parse_u64(v)?;
    Some((version == Version::V2 || n < V1_UNLIMITED).then_some(n))
}

/// The value of `key` in a flat-keyed `memory.stat` (`key value` lines):
/// `Ok(None)` when absent, `Err` when its value or the file is malformed.
pub fn stat_value(content: &[u8], key: &[u8]) -> Result<Option<u64>, Malformed> {
    for line in content.split(|&b| b == b'\n') {
        let line = trim(line);
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(2, |&b| b == b' ');
        let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
            return Err(Malformed);
        };
        if k == key {
            return parse_u64(trim(v)).map(Some).ok_or(Malformed);
        }
    }
    Ok(None)
}

/// One line of `/proc/self/mountinfo` that we use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    root: String,
    mount_point: String,
    fs_type: String,
    super_options: String,
}

fn parse_mountinfo(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let root = l.nth(3)?;
            let mount_point = l.next()?;
            let mut r = right.split(' ');
            let fs_type = r.next()?;
            let super_options = r.nth(1).unwrap_or("");
            Some(Mount {
                root: unescape(root),
                mount_point: unescape(mount_point),
                fs_type: fs_type.to_owned(),
                super_options: super_options.to_owned(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1..i + 4)
                .is_some_and(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `ancestor` is `path` or a directory above it.
fn covers(ancestor: &str, path: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The dyno's cgroup path in hierarchy `v2` or the v1 `memory` one, from
/// `/proc/self/cgroup` (`id:controllers:path` lines).
fn cgroup_path(self_cgroup: &str, version: Version) -> Option<&str> {
    self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match version {
            Version::V2 => id == "0" && controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
        };
        matches.then_some(path)
    })
}

/// `path` (a cgroup path) under a mount of `root` at `mount_point`.
fn resolve(
    root: &str,
    mount_point: &str,
    path: Option<&str>,
    exists: &dyn Fn(&Path) -> bool,
) -> PathBuf {
    let base = PathBuf::from(mount_point);
    let Some(path) = path else {
        return base;
    };
    let rel = if root == "/" {
        Some(path)
    } else if path == root {
        Some("")
    } else {
        path.strip_prefix(root).filter(|r| r.starts_with('/'))
    };
    match rel.map(|r| r.trim_start_matches('/')) {
        Some("") | None => base,
        Some(r) if r.split('/').any(|c| c == "..") => base,
        Some(r) => {
            let dir = base.join(r);
            if exists(&dir) {
                dir
            } else {
                base
            }
        }
    }
}

/// Finds the dyno's memory cgroup from the contents of `/proc/self/cgroup`
/// and `/proc/self/mountinfo`; `exists` says whether a path exists (the real
/// filesystem, or a set in unit tests). `None` when no memory cgroup files
/// are there at all.
pub fn discover(
    self_cgroup: &str,
    mountinfo: &str,
    exists: &dyn Fn(&Path) -> bool,
) -> Option<Cgroup> {
    let mounts = parse_mountinfo(mountinfo);
    let visible = |i: usize| {
        !mounts[i + 1..]
            .iter()
            .any(|later| covers(&later.mount_point, &mounts[i].mount_point))
    };
    let mut candidates: Vec<(Version, PathBuf)> = Vec::new();
    for version in [Version::V2, Version::V1] {
        let path = cgroup_path(self_cgroup, version);
        for (i, m) in mounts.iter().enumerate() {
            let is = match version {
                Version::V2 => m.fs_type == "cgroup2",
                Version::V1 => {
                    m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == "memory")
                }
            };
            if is && visible(i) {
                candidates.push((version, resolve(&m.root, &m.mount_point, path, exists)));
            }
        }
    }
    // The usual places, for a /sys/fs/cgroup that mountinfo does not show as
    // a cgroup file system (or shows hidden).
    candidates.push((
        Version::V2,
        resolve(
            "/",
            "/sys/fs/cgroup",
            cgroup_path(self_cgroup, Version::V2),
            exists,
        ),
    ));
    candidates.push((
        Version::V1,
        resolve(
            "/",
            "/sys/fs/cgroup/memory",
            cgroup_path(self_cgroup, Version::V1),
            exists,
        ),
    ));
    candidates.into_iter().find_map(|(version, dir)| {
        let names: &[&str] = match version {
            Version::V2 => &["memory.max", "memory.current"],
            Version::V1 => &["memory.limit_in_bytes", "memory.usage_in_bytes"],
        };
        names
            .iter()
            .any(|n| exists(&dir.join(n)))
            .then(|| Cgroup::new(version, dir))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn fs(paths: &[&str]) -> impl Fn(&Path) -> bool {
        let set: BTreeSet<PathBuf> = paths.iter().map(PathBuf::from).collect();
        move |p: &Path| set.contains(p)
    }

    /// A real `memory.stat` of a v1 cgroup (Linux 6.x, truncated).
    const V1_STAT: &str = "cache 1327104\nrss 1753088\nrss_huge 0\nshmem 0\nmapped_file 0\ndirty 40960\nwriteback 0\nswap 0\npgpgin 28207\npgpgout 27439\npgfault 63065\npgmajfault 9\ninactive_anon 1634304\nactive_anon 12288\ninactive_file 1105920\nactive_file 221184\nunevictable 0\nhierarchical_memory_limit 9223372036854771712\nhierarchical_memsw_limit 9223372036854771712\ntotal_cache 1327104\ntotal_rss 1753088\ntotal_rss_huge 0\ntotal_shmem 0\ntotal_mapped_file 0\ntotal_dirty 40960\ntotal_writeback 0\ntotal_swap 4096\ntotal_pgpgin 28207\n";

    /// A v2 `memory.stat` with the keys and order of Linux 6.x (truncated; this
    /// machine has no v2 memory controller, so the values are made up).
    const V2_STAT: &str = "anon 209715200\nfile 52428800\nkernel 6291456\nkernel_stack 425984\npagetables 1056768\nsec_pagetables 0\npercpu 3360\nsock 0\nvmalloc 8192\nshmem 0\nzswap 0\nzswapped 0\nfile_mapped 31457280\nfile_dirty 4096\nfile_writeback 0\nswapcached 0\nanon_thp 0\nfile_thp 0\nshmem_thp 0\ninactive_anon 209100800\nactive_anon 614400\ninactive_file 40000000\nactive_file 12428800\nunevictable 0\nslab_reclaimable 3000000\nslab_unreclaimable 1000000\nslab 4000000\nworkingset_refault_anon 0\npgfault 120000\npgmajfault 12\n";

    #[test]
    fn stat_values_from_real_files() {
        assert_eq!(
            stat_value(V1_STAT.as_bytes(), b"total_rss"),
            Ok(Some(1_753_088))
        );
        assert_eq!(
            stat_value(V1_STAT.as_bytes(), b"total_cache"),
            Ok(Some(1_327_104))
        );
        assert_eq!(
            stat_value(V1_STAT.as_bytes(), b"total_swap"),
            Ok(Some(4096))
        );
        // `rss` is not `total_rss`, nor `rss_huge`.
        assert_eq!(stat_value(V1_STAT.as_bytes(), b"rss"), Ok(Some(1_753_088)));
        assert_eq!(
            stat_value(V2_STAT.as_bytes(), b"anon"),
            Ok(Some(209_715_200))
        );
        assert_eq!(
            stat_value(V2_STAT.as_bytes(), b"file"),
            Ok(Some(52_428_800))
        );
        assert_eq!(stat_value(V2_STAT.as_bytes(), b"total_rss"), Ok(None));
        assert_eq!(stat_value(b"anon lots\n", b"anon"), Err(Malformed));
        assert_eq!(stat_value(b"\x00\x01garbage", b"anon"), Err(Malformed));
    }

    #[test]
    fn limits_of_both_versions() {
        assert_eq!(parse_limit(b"max\n", Version::V2), Some(None));
        assert_eq!(
            parse_limit(b"536870912\n", Version::V2),
            Some(Some(536_870_912))
        );
        assert_eq!(
            parse_limit(b"536870912\n", Version::V1),
            Some(Some(536_870_912))
        );
        // v1's "unlimited" is PAGE_COUNTER_MAX in bytes.
        assert_eq!(
            parse_limit(b"9223372036854771712\n", Version::V1),
            Some(None)
        );
        assert_eq!(parse_limit(b"max\n", Version::V1), None);
        assert_eq!(parse_limit(b"12abc", Version::V2), None);
        assert_eq!(parse_limit(b"", Version::V2), None);
    }

    /// A real v1 hybrid host's mountinfo, with a tmpfs mounted over
    /// /sys/fs/cgroup afterwards (the dyno boot test's setup).
    const HYBRID: &str = "\
47 46 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
48 47 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
51 47 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
56 47 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
57 47 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "9:name=systemd:/\n4:memory:/process_api/0de3\n1:cpu:/\n0::/\n";

    #[test]
    fn v1_memory_controller_on_a_hybrid_host() {
        let exists = fs(&[
            "/sys/fs/cgroup/memory/process_api/0de3",
            "/sys/fs/cgroup/memory/process_api/0de3/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/process_api/0de3/memory.usage_in_bytes",
        ]);
        let cg = discover(HYBRID_CGROUP, HYBRID, &exists).expect("found");
        assert_eq!(cg.version, Version::V1);
        assert_eq!(cg.dir, Path::new("/sys/fs/cgroup/memory/process_api/0de3"));
        assert_eq!(
            cg.path(CgroupFile::Limit),
            "/sys/fs/cgroup/memory/process_api/0de3/memory.limit_in_bytes"
        );
    }

    #[test]
    fn a_tmpfs_over_sys_fs_cgroup_hides_the_real_mounts() {
        let mountinfo =
            format!("{HYBRID}64 47 0:40 / /sys/fs/cgroup ro,relatime - tmpfs tmpfs rw\n");
        // Only the fake v1 limit file exists; the host's cgroup path does not.
        let exists = fs(&["/sys/fs/cgroup/memory/memory.limit_in_bytes"]);
        let cg = discover(HYBRID_CGROUP, &mountinfo, &exists).expect("found");
        assert_eq!(
            (cg.version, cg.dir.as_path()),
            (Version::V1, Path::new("/sys/fs/cgroup/memory"))
        );
        // Fake v2 files take precedence.
        let exists = fs(&[
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]);
        let cg = discover(HYBRID_CGROUP, &mountinfo, &exists).expect("found");
        assert_eq!(
            (cg.version, cg.dir.as_path()),
            (Version::V2, Path::new("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn v2_in_a_cgroup_namespace_and_below_a_mount_root() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let exists = fs(&["/sys/fs/cgroup/memory.max"]);
        // A namespace root ("0::/") is the mount point.
        let cg = discover("0::/\n", mountinfo, &exists).expect("found");
        assert_eq!(
            (cg.version, cg.dir.as_path()),
            (Version::V2, Path::new("/sys/fs/cgroup"))
        );
        // A container's own cgroup under a bind-mounted subtree.
        let mountinfo = "31 25 0:26 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let exists = fs(&["/sys/fs/cgroup/app", "/sys/fs/cgroup/app/memory.current"]);
        let cg = discover("0::/kubepods/pod1/app\n", mountinfo, &exists).expect("found");
        assert_eq!(cg.dir, Path::new("/sys/fs/cgroup/app"));
        // A path outside the mount's root ("/../x" from a namespace) is the mount point.
        let exists = fs(&["/sys/fs/cgroup/memory.current"]);
        let cg = discover("0::/../../x\n", mountinfo, &exists).expect("found");
        assert_eq!(cg.dir, Path::new("/sys/fs/cgroup"));
        // v2 mounted somewhere unusual, with a space in the path.
        let mountinfo = "40 25 0:26 / /run/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        let exists = fs(&[
            "/run/my cgroup/user.slice",
            "/run/my cgroup/user.slice/memory.max",
        ]);
        let cg = discover("0::/user.slice\n", mountinfo, &exists).expect("found");
        assert_eq!(cg.dir, Path::new("/run/my cgroup/user.slice"));
    }

    #[test]
    fn nothing_readable_is_none() {
        assert_eq!(discover("0::/\n", HYBRID, &fs(&[])), None);
        assert_eq!(discover("", "", &fs(&[])), None);
        assert_eq!(discover("garbage", "garbage - \n\n", &fs(&[])), None);
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
    }

    #[test]
    fn reads_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("memory.max", "1073741824\n"),
                ("memory.current", "314572800\n"),
                ("memory.stat", V2_STAT),
                ("memory.swap.current", "10485760\n"),
            ],
        );
        let cg = Cgroup::new(Version::V2, dir.path().to_path_buf());
        let mut problems = Vec::new();
        let m = cg.read(&mut Vec::new(), &mut |f, _| problems.push(f));
        assert_eq!(problems, []);
        assert_eq!(
            m,
            CgroupMemory {
                quota: Some(1 << 30),
                usage: Some(Usage {
                    total: 314_572_800 + 10_485_760,
                    rss: Some(209_715_200),
                    cache: Some(52_428_800),
                    swap: Some(10_485_760),
                }),
            }
        );
    }

    #[test]
    fn reads_v1_files_and_only_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[("memory.limit_in_bytes", "536870912\n")]);
        let cg = Cgroup::new(Version::V1, dir.path().to_path_buf());
        let mut problems = Vec::new();
        let m = cg.read(&mut Vec::new(), &mut |f, _| problems.push(f));
        assert_eq!(
            m,
            CgroupMemory {
                quota: Some(512 << 20),
                usage: None
            }
        );
        assert_eq!(problems, [CgroupFile::Usage]);

        write(
            dir.path(),
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "3919872\n"),
                ("memory.stat", V1_STAT),
            ],
        );
        problems.clear();
        let m = cg.read(&mut Vec::new(), &mut |f, _| problems.push(f));
        assert_eq!(problems, []);
        assert_eq!(
            m,
            CgroupMemory {
                quota: None,
                usage: Some(Usage {
                    total: 3_919_872 + 4096,
                    rss: Some(1_753_088),
                    cache: Some(1_327_104),
                    swap: Some(4096),
                }),
            }
        );
    }

    #[test]
    fn malformed_files_leave_their_values_out() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("memory.max", "12abc\n"),
                ("memory.current", "314572800\n"),
                ("memory.stat", "anon \u{1}\u{2}\nfile 5\n"),
                ("memory.swap.current", "-1\n"),
            ],
        );
        let cg = Cgroup::new(Version::V2, dir.path().to_path_buf());
        let mut problems = Vec::new();
        let m = cg.read(&mut Vec::new(), &mut |f, _| problems.push(f));
        assert_eq!(
            problems,
            [CgroupFile::Limit, CgroupFile::Stat, CgroupFile::Swap]
        );
        assert_eq!(
            m,
            CgroupMemory {
                quota: None,
                usage: Some(Usage {
                    total: 314_572_800,
                    rss: None,
                    cache: Some(5),
                    swap: None
                }),
            }
        );
        // Unreadable usage: nothing from the cgroup but the (now valid) quota.
        write(
            dir.path(),
            &[("memory.max", "max\n"), ("memory.current", "\n")],
        );
        problems.clear();
        let m = cg.read(&mut Vec::new(), &mut |f, _| problems.push(f));
        assert_eq!(
            m,
            CgroupMemory {
                quota: None,
                usage: None
            }
        );
        assert_eq!(problems, [CgroupFile::Usage]);
    }
}
