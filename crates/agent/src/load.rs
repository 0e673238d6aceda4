//! Host load from `/proc` (with the `procfs` parsers) and `/var/run/utmp`.
//!
//! [`LoadSampler::sample`] reads the files and hands their text to the pure `parse_*` functions
//! below, which tests run on fixture files captured from a real host.
//!
//! | figure | source |
//! |---|---|
//! | load averages | `/proc/loadavg` |
//! | CPU utilisation | busy/total delta of the aggregate `cpu` line of `/proc/stat` since the previous sample (first sample: since boot) |
//! | CPU count | the per-CPU `cpuN` lines of `/proc/stat` (the kernel lists online CPUs only) |
//! | CPU MHz | the mean of the `cpu MHz` lines of `/proc/cpuinfo`, 0.0 where there are none (many ARM hosts) |
//! | memory | `MemTotal` and `MemAvailable` of `/proc/meminfo` |
//! | pressure | `some avg10` of `/proc/pressure/cpu` and `/proc/pressure/memory`; `None` where the kernel has no PSI |
//! | users | distinct user names of the `USER_PROCESS` records of `/var/run/utmp`; a missing file counts 0 |

use procfs::{ExplicitSystemInfo, FromRead, FromReadSI, KernelStats, LoadAverage, Meminfo};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use switchboard_core::model::LoadReport;

/// Where the kernel's files are on a normal host.
pub const PROC_ROOT: &str = "/proc";
/// The login records file on glibc systems.
pub const UTMP_PATH: &str = "/var/run/utmp";
/// Size of one glibc `struct utmp` record on 64-bit Linux (x86_64, aarch64, …).
pub const UTMP_RECORD_LEN: usize = 384;
/// `ut_type` of a normal login (`USER_PROCESS` in `<utmp.h>`).
pub const UTMP_USER_PROCESS: i16 = 7;
/// Offset of `ut_user` within a record.
pub const UTMP_USER_OFFSET: usize = 44;
/// Length of `ut_user` (NUL-padded, not always NUL-terminated).
pub const UTMP_USER_LEN: usize = 32;
/// A larger utmp file is refused (it holds one slot per terminal, so real ones are a few KiB).
pub const UTMP_MAX_LEN: u64 = 8 * 1024 * 1024;
/// A larger `/proc` text file is refused (`/proc/cpuinfo` on a 512-CPU host is about 1 MiB).
pub const PROC_FILE_MAX_LEN: u64 = 16 * 1024 * 1024;

/// Why a sample failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file was read but its content is not what the kernel writes.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// Which file or figure.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

fn parse_err(what: &'static str, detail: impl std::fmt::Display) -> LoadError {
    LoadError::Parse {
        what,
        detail: detail.to_string(),
    }
}

/// Cumulative CPU time of all CPUs, in clock ticks ("jiffies"), from the `cpu` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuJiffies {
    /// Ticks spent doing anything but idling or waiting for I/O.
    pub busy: u64,
    /// All ticks (`guest` and `guest_nice` are already counted in `user` and `nice`, so they are
    /// not added again).
    pub total: u64,
}

/// What `/proc/stat` tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatSample {
    /// Aggregate CPU time.
    pub jiffies: CpuJiffies,
    /// Online CPUs (the number of `cpuN` lines).
    pub cpu_count: u32,
}

/// Runs a procfs parser, turning a panic inside it into an error: procfs slices strings by byte
/// offsets and panics on some malformed input (found by fuzzing: non-ASCII text in
/// `/proc/meminfo`), and a panic must not stop the agent's sampling.
fn shielded<T>(
    file: &'static str,
    text: &str,
    f: impl FnOnce() -> Result<T, LoadError>,
) -> Result<T, LoadError> {
    // The kernel writes these files in ASCII; anything else is not one of them.
    if !text.is_ascii() {
        return Err(parse_err(file, "not ASCII text"));
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(parse_err(file, "malformed content")))
}

/// The three load averages from the text of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], LoadError> {
    let la = shielded("/proc/loadavg", text, || {
        LoadAverage::from_read(text.as_bytes()).map_err(|e| parse_err("/proc/loadavg", e))
    })?;
    let out = [f64::from(la.one), f64::from(la.five), f64::from(la.fifteen)];
    if out.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(parse_err("/proc/loadavg", format!("bad values {out:?}")));
    }
    Ok(out)
}

/// Aggregate CPU ticks and the online CPU count from the text of `/proc/stat`.
pub fn parse_stat(text: &str) -> Result<StatSample, LoadError> {
    // The tick rate only matters for the crate's millisecond helpers, which are not used: the
    // utilisation is a ratio of ticks.
    let si = ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: 100,
        page_size: 4096,
        is_little_endian: cfg!(target_endian = "little"),
    };
    let ks = shielded("/proc/stat", text, || {
        <KernelStats as FromReadSI>::from_read(text.as_bytes(), &si)
            .map_err(|e| parse_err("/proc/stat", e))
    })?;
    let t = &ks.total;
    let idle = t.idle.saturating_add(t.iowait.unwrap_or(0));
    let total = [
        t.user,
        t.nice,
        t.system,
        t.idle,
        t.iowait.unwrap_or(0),
        t.irq.unwrap_or(0),
        t.softirq.unwrap_or(0),
        t.steal.unwrap_or(0),
    ]
    .iter()
    .fold(0u64, |acc, v| acc.saturating_add(*v));
    let cpu_count = u32::try_from(ks.cpu_time.len())
        .map_err(|_| parse_err("/proc/stat", "absurd number of CPUs"))?;
    Ok(StatSample {
        jiffies: CpuJiffies {
            busy: total.saturating_sub(idle),
            total,
        },
        cpu_count,
    })
}

/// Busy fraction (0..=1) between two readings of `/proc/stat`; with no previous reading, since boot.
///
/// Counters that went backwards (`iowait` may) or an interval with no ticks give 0.0.
pub fn cpu_utilisation(prev: Option<CpuJiffies>, now: CpuJiffies) -> f64 {
    let prev = prev.unwrap_or_default();
    let total = now.total.saturating_sub(prev.total);
    let busy = now.busy.saturating_sub(prev.busy);
    if total == 0 {
        return 0.0;
    }
    // Jiffy counts stay far below 2^53, so the conversion is exact in practice.
    let u = busy as f64 / total as f64;
    u.clamp(0.0, 1.0)
}

/// `(MemTotal, MemAvailable)` in KiB from the text of `/proc/meminfo`.
///
/// Kernels before 3.14 have no `MemAvailable`: it is then estimated as MemFree + Buffers + Cached.
/// The result never exceeds MemTotal.
pub fn parse_meminfo(text: &str) -> Result<(u64, u64), LoadError> {
    let mi = shielded("/proc/meminfo", text, || {
        Meminfo::from_read(text.as_bytes()).map_err(|e| parse_err("/proc/meminfo", e))
    })?;
    let total = mi.mem_total / 1024;
    let available = mi.mem_available.unwrap_or_else(|| {
        mi.mem_free
            .saturating_add(mi.buffers)
            .saturating_add(mi.cached)
    }) / 1024;
    Ok((total, available.min(total)))
}

/// The mean of the `cpu MHz` lines of `/proc/cpuinfo`; 0.0 when there are none or none parse.
pub fn parse_cpu_mhz(text: &str) -> f64 {
    let mut sum = 0.0;
    let mut n = 0u32;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key.trim() != "cpu MHz" {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>()
            && v.is_finite()
            && v >= 0.0
        {
            sum += v;
            n += 1;
        }
    }
    if n == 0 { 0.0 } else { sum / f64::from(n) }
}

/// `some avg10` (percent) from the text of a `/proc/pressure/*` file.
pub fn parse_psi_some_avg10(text: &str) -> Result<f64, LoadError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("some "))
        .ok_or_else(|| parse_err("/proc/pressure", "no \"some\" line"))?;
    let rec = shielded("/proc/pressure", line, || {
        procfs::parse_pressure_record(line).map_err(|e| parse_err("/proc/pressure", e))
    })?;
    let v = f64::from(rec.avg10);
    if !v.is_finite() || v < 0.0 {
        return Err(parse_err("/proc/pressure", format!("bad avg10 {v}")));
    }
    Ok(v)
}

/// The distinct user names of the `USER_PROCESS` records in the bytes of a utmp file, sorted.
///
/// Records are [`UTMP_RECORD_LEN`] bytes in the host's byte order; a trailing partial record (a
/// file caught mid-write) is ignored, and so are empty names.
pub fn parse_utmp_users(bytes: &[u8]) -> Vec<String> {
    let mut users = BTreeSet::new();
    for rec in bytes.chunks_exact(UTMP_RECORD_LEN) {
        let ut_type = i16::from_ne_bytes([rec[0], rec[1]]);
        if ut_type != UTMP_USER_PROCESS {
            continue;
        }
        let field = &rec[UTMP_USER_OFFSET..UTMP_USER_OFFSET + UTMP_USER_LEN];
        let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
        if end == 0 {
            continue;
        }
        users.insert(String::from_utf8_lossy(&field[..end]).into_owned());
    }
    users.into_iter().collect()
}

/// Samples the host's load; remembers the previous CPU reading for the utilisation delta.
#[derive(Debug)]
pub struct LoadSampler {
    proc_root: PathBuf,
    utmp: PathBuf,
    prev: Option<CpuJiffies>,
}

impl Default for LoadSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadSampler {
    /// Reads `/proc` and `/var/run/utmp`.
    pub fn new() -> Self {
        Self::with_paths(PROC_ROOT, UTMP_PATH)
    }

    /// Reads the files under another root (a directory laid out like `/proc`: `loadavg`, `stat`,
    /// `cpuinfo`, `meminfo`, optionally `pressure/cpu` and `pressure/memory`) and another utmp file.
    pub fn with_paths(proc_root: impl Into<PathBuf>, utmp: impl Into<PathBuf>) -> Self {
        LoadSampler {
            proc_root: proc_root.into(),
            utmp: utmp.into(),
            prev: None,
        }
    }

    /// One load report; `session_count` is the agent's own count of its sessions.
    pub fn sample(&mut self, session_count: u32) -> Result<LoadReport, LoadError> {
        let load_avg = parse_loadavg(&self.read_proc("loadavg")?)?;
        let stat = parse_stat(&self.read_proc("stat")?)?;
        let cpu_mhz = parse_cpu_mhz(&self.read_proc("cpuinfo")?);
        let (mem_total_kib, mem_available_kib) = parse_meminfo(&self.read_proc("meminfo")?)?;
        let psi_cpu_some_avg10 = self.psi("cpu");
        let psi_memory_some_avg10 = self.psi("memory");
        let users = self.users()?;
        let cpu_utilisation = cpu_utilisation(self.prev, stat.jiffies);
        self.prev = Some(stat.jiffies);
        Ok(LoadReport {
            load_avg,
            cpu_utilisation,
            cpu_count: stat.cpu_count,
            cpu_mhz,
            mem_total_kib,
            mem_available_kib,
            psi_cpu_some_avg10,
            psi_memory_some_avg10,
            session_count,
            users,
            // Filled in by the agent from its latest listing.
            skipped_rows: 0,
        })
    }

    fn read_proc(&self, name: &str) -> Result<String, LoadError> {
        let path = self.proc_root.join(name);
        let bytes = read_capped(&path, PROC_FILE_MAX_LEN)?;
        String::from_utf8(bytes).map_err(|_| LoadError::Parse {
            what: "/proc file",
            detail: format!("{} is not UTF-8", path.display()),
        })
    }

    /// PSI is optional: no directory (old kernel), `EOPNOTSUPP` (booted with `psi=0`) or odd
    /// content all mean "not known".
    fn psi(&self, resource: &str) -> Option<f64> {
        let path = self.proc_root.join("pressure").join(resource);
        let text = match read_capped(&path, 64 * 1024) {
            Ok(b) => String::from_utf8(b).ok()?,
            Err(e) => {
                tracing::trace!(error = %e, "no pressure information");
                return None;
            }
        };
        match parse_psi_some_avg10(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(error = %e, path = %path.display(), "ignoring pressure file");
                None
            }
        }
    }

    fn users(&self) -> Result<u32, LoadError> {
        let bytes = match read_capped(&self.utmp, UTMP_MAX_LEN) {
            Ok(b) => b,
            Err(LoadError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let n = parse_utmp_users(&bytes).len();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(read_err)?;
    if buf.len() as u64 > max {
        return Err(read_err(std::io::Error::other(format!(
            "larger than {max} bytes"
        ))));
    }
    Ok(buf)
}
