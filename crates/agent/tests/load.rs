#![allow(clippy::unwrap_used)]
//! Load parsing on files captured from a Debian 12 build host (2 vCPUs, 24 GiB), and the real
//! sampler on this machine's /proc.

use std::path::{Path, PathBuf};
use switchboard_agent::load::{
    CpuJiffies, LoadSampler, UTMP_RECORD_LEN, cpu_utilisation, parse_cpu_mhz, parse_loadavg,
    parse_meminfo, parse_psi_some_avg10, parse_stat, parse_utmp_users,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap()
}

#[test]
fn loadavg_fixture() {
    let la = parse_loadavg(&fixture("proc/loadavg")).unwrap();
    let want = [0.34, 0.45, 0.94];
    for (got, want) in la.iter().zip(want) {
        assert!((got - want).abs() < 1e-6, "{la:?}");
    }
}

#[test]
fn loadavg_garbage_is_an_error() {
    assert!(parse_loadavg("").is_err());
    assert!(parse_loadavg("a b c 1/2 3").is_err());
}

#[test]
fn stat_fixture() {
    let s = parse_stat(&fixture("proc/stat")).unwrap();
    assert_eq!(s.cpu_count, 2);
    // cpu  1128931 0 139335 735926 17766 0 5504 19853 0 0
    let total = 1_128_931 + 139_335 + 735_926 + 17_766 + 5_504 + 19_853;
    let idle = 735_926 + 17_766;
    assert_eq!(
        s.jiffies,
        CpuJiffies {
            busy: total - idle,
            total
        }
    );
    let since_boot = cpu_utilisation(None, s.jiffies);
    assert!((since_boot - (total - idle) as f64 / total as f64).abs() < 1e-12);
}

#[test]
fn stat_without_cpu_line_is_an_error() {
    assert!(parse_stat("intr 1 2 3\nctxt 5\n").is_err());
}

#[test]
fn utilisation_deltas() {
    let a = CpuJiffies {
        busy: 100,
        total: 1000,
    };
    let b = CpuJiffies {
        busy: 175,
        total: 1100,
    };
    assert!((cpu_utilisation(Some(a), b) - 0.75).abs() < 1e-12);
    // No ticks in between, or counters going backwards: 0, never NaN or > 1.
    assert_eq!(cpu_utilisation(Some(a), a), 0.0);
    assert_eq!(cpu_utilisation(Some(b), a), 0.0);
    let weird = CpuJiffies {
        busy: 500,
        total: 1001,
    };
    let u = cpu_utilisation(Some(a), weird);
    assert!((0.0..=1.0).contains(&u), "{u}");
}

#[test]
fn meminfo_fixture() {
    let (total, avail) = parse_meminfo(&fixture("proc/meminfo")).unwrap();
    assert_eq!(total, 24_684_096);
    assert_eq!(avail, 23_955_304);
}

#[test]
fn meminfo_without_memavailable_is_estimated() {
    // The captured file as a kernel before 3.14 would write it.
    let text: String = fixture("proc/meminfo")
        .lines()
        .filter(|l| !l.starts_with("MemAvailable:"))
        .map(|l| format!("{l}\n"))
        .collect();
    // MemFree + Buffers + Cached.
    let want = 21_646_216 + 18_416 + 2_173_924;
    assert_eq!(parse_meminfo(&text).unwrap(), (24_684_096, want));
    assert!(parse_meminfo("MemTotal: 1000 kB\n").is_err());
}

#[test]
fn cpu_mhz_fixture_and_absence() {
    let mhz = parse_cpu_mhz(&fixture("proc/cpuinfo"));
    assert!((mhz - 2445.428).abs() < 1e-9, "{mhz}");
    // ARM hosts have no "cpu MHz" lines.
    let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n";
    assert_eq!(parse_cpu_mhz(arm), 0.0);
    assert_eq!(
        parse_cpu_mhz("cpu MHz\t\t: 1000.0\ncpu MHz\t\t: 3000.0\n"),
        2000.0
    );
}

#[test]
fn psi_fixtures() {
    let cpu = parse_psi_some_avg10(&fixture("proc/pressure/cpu")).unwrap();
    assert!((cpu - 0.64).abs() < 1e-6, "{cpu}");
    let mem = parse_psi_some_avg10(&fixture("proc/pressure/memory")).unwrap();
    assert_eq!(mem, 0.0);
    assert!(parse_psi_some_avg10("full avg10=1.00 avg60=0 avg300=0 total=0\n").is_err());
}

#[test]
fn utmp_fixture_counts_distinct_users() {
    // Captured from a systemd container with three ssh logins (sbxpra twice, x2gotest once) plus
    // the boot, run-level and console LOGIN records.
    let bytes = std::fs::read(fixtures().join("utmp")).unwrap();
    assert_eq!(bytes.len(), 6 * UTMP_RECORD_LEN);
    assert_eq!(parse_utmp_users(&bytes), vec!["sbxpra", "x2gotest"]);
    // A truncated trailing record is ignored.
    assert_eq!(
        parse_utmp_users(&bytes[..bytes.len() - 100]),
        vec!["sbxpra", "x2gotest"]
    );
    assert!(parse_utmp_users(&[]).is_empty());
}

fn record(ut_type: i16, user: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; UTMP_RECORD_LEN];
    r[..2].copy_from_slice(&ut_type.to_ne_bytes());
    r[44..44 + user.len()].copy_from_slice(user);
    r
}

#[test]
fn utmp_built_records() {
    let mut bytes = Vec::new();
    bytes.extend(record(7, b"alice"));
    bytes.extend(record(8, b"bob")); // DEAD_PROCESS
    bytes.extend(record(6, b"LOGIN")); // LOGIN_PROCESS
    bytes.extend(record(7, b"carol"));
    bytes.extend(record(7, b"alice"));
    bytes.extend(record(7, b"")); // no name
    bytes.extend(record(7, &[b'x'; 32])); // a full-width name with no NUL
    let users = parse_utmp_users(&bytes);
    assert_eq!(users, vec!["alice", "carol", &"x".repeat(32)]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn sampler_on_the_fixture_tree() {
    let dir = tempfile::tempdir().unwrap();
    let proc_dir = dir.path().join("proc");
    copy_dir(&fixtures().join("proc"), &proc_dir);
    let mut s = LoadSampler::with_paths(&proc_dir, fixtures().join("utmp"));
    let r = s.sample(4).unwrap();
    assert_eq!(r.cpu_count, 2);
    assert_eq!(r.mem_total_kib, 24_684_096);
    assert_eq!(r.session_count, 4);
    assert_eq!(r.users, 2);
    assert_eq!(r.psi_memory_some_avg10, Some(0.0));
    assert!(r.cpu_utilisation > 0.6 && r.cpu_utilisation < 0.65);
    // Same /proc/stat again: nothing happened in between.
    assert_eq!(s.sample(4).unwrap().cpu_utilisation, 0.0);

    // No PSI (kernel before 4.20 or psi=0) and no utmp: None and 0, not errors.
    std::fs::remove_dir_all(proc_dir.join("pressure")).unwrap();
    let mut s = LoadSampler::with_paths(&proc_dir, dir.path().join("no-utmp"));
    let r = s.sample(0).unwrap();
    assert_eq!(r.psi_cpu_some_avg10, None);
    assert_eq!(r.psi_memory_some_avg10, None);
    assert_eq!(r.users, 0);

    // A pressure file the kernel refuses to read (psi=0 gives EOPNOTSUPP): a directory stands in.
    std::fs::create_dir_all(proc_dir.join("pressure/cpu")).unwrap();
    let r = s.sample(0).unwrap();
    assert_eq!(r.psi_cpu_some_avg10, None);

    // A missing mandatory file is an error naming it.
    std::fs::remove_file(proc_dir.join("meminfo")).unwrap();
    let e = s.sample(0).unwrap_err().to_string();
    assert!(e.contains("meminfo"), "{e}");
}

#[test]
fn real_proc_twice() {
    let mut s = LoadSampler::new();
    let a = s.sample(1).unwrap();
    // Burn a little CPU so the second delta has ticks to look at.
    let t = tokio::time::Instant::now();
    let mut x = 0u64;
    while t.elapsed() < std::time::Duration::from_millis(150) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    std::hint::black_box(x);
    let b = s.sample(2).unwrap();
    for r in [&a, &b] {
        assert!(r.load_avg.iter().all(|v| v.is_finite() && *v >= 0.0));
        assert!((0.0..=1.0).contains(&r.cpu_utilisation), "{r:?}");
        assert!(r.cpu_count >= 1);
        assert!(r.cpu_mhz >= 0.0 && r.cpu_mhz.is_finite());
        assert!(r.mem_total_kib > 0);
        assert!(r.mem_available_kib <= r.mem_total_kib);
        for v in [r.psi_cpu_some_avg10, r.psi_memory_some_avg10]
            .into_iter()
            .flatten()
        {
            assert!((0.0..=100.0).contains(&v), "{v}");
        }
    }
    assert_eq!(b.session_count, 2);
    let online = std::thread::available_parallelism().unwrap().get() as u32;
    assert!(a.cpu_count >= online, "{} < {online}", a.cpu_count);
}

#[test]
fn malformed_proc_files_are_errors_not_panics() {
    // Found by the session_sources fuzz target: procfs panics on this meminfo text.
    let text = "z\n\u{ef}\u{b}4\n*14}C1}C";
    assert!(switchboard_agent::load::parse_meminfo(text).is_err());
    for bad in ["\u{ef}", "cpu  1 2 \u{ef}\n", "some avg10=\u{ef}"] {
        let _ = switchboard_agent::load::parse_stat(bad);
        let _ = switchboard_agent::load::parse_loadavg(bad);
        let _ = switchboard_agent::load::parse_psi_some_avg10(bad);
    }
}
