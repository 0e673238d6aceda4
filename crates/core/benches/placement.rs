//! Placement and load-report speed, and memory per session, at cluster scale.
//!
//! `cargo bench -p switchboard-core` builds a pool of 10,000 hosts holding 1,000,000 sessions and
//! measures one placement (`Reserve`) under `wlc` and `least-load`, and one applied load report.
//! Besides criterion's statistics it prints the median and p99 of individually timed operations
//! and the heap the sessions take, counted by an instrumented allocator (live bytes after
//! loading them minus live bytes before).
//!
//! Targets (issue: foundation): placement median ≤ 2 µs, load report ≤ 1 µs, 1,000,000 sessions
//! ≤ 300 MB.
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers
#![allow(clippy::unwrap_used)] // a benchmark aborts on any error, by design

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};
use switchboard_core::config::HostAddr;
use switchboard_core::model::{LoadReport, PoolOptions, SessionRecord};
use switchboard_core::{
    ClusterState, Command, HostSpec, Millis, Policy, PoolSpec, SessionId, SessionState, Settings,
};

/// Counts heap allocations so the bench can report exactly what the sessions cost.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes now.
fn heap_bytes() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

const HOSTS: usize = 10_000;
const SESSIONS: usize = 1_000_000;
const NOW: Millis = Millis(1_800_000_000_000);

fn load(i: usize) -> LoadReport {
    LoadReport {
        load_avg: [(i % 16) as f64 / 4.0; 3],
        cpu_utilisation: (i % 10) as f64 / 10.0,
        cpu_count: 16,
        cpu_mhz: 2400.0,
        mem_total_kib: 64_000_000,
        mem_available_kib: 64_000_000 - (i % 32) as u64 * 1_000_000,
        psi_cpu_some_avg10: Some(1.0),
        psi_memory_some_avg10: None,
        skipped_rows: 0,
        session_count: 100,
        users: 100,
    }
}

fn host_name(i: usize) -> String {
    format!("node{i:05}.cluster.example.org")
}

/// A pool of 10,000 agent hosts with fresh reports, holding 1,000,000 sessions of distinct users.
/// Returns the state and the heap bytes the sessions take.
fn build(policy: Policy) -> (ClusterState, usize) {
    let mut s = ClusterState::new(Settings::default());
    let mut hosts = Vec::with_capacity(HOSTS);
    for i in 0..HOSTS {
        let name = host_name(i);
        let ip = std::net::Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let mut spec = HostSpec::new(name.clone(), HostAddr::ip(ip.into(), 22));
        spec.agent = true;
        spec.weight = 100 + (i % 3) as u32 * 50;
        s.apply(Command::AddHost(spec), NOW).unwrap();
        s.apply(
            Command::AgentConnected {
                host: name.clone(),
                report_interval: Duration::from_secs(3600),
            },
            NOW,
        )
        .unwrap();
        s.apply(
            Command::ReportLoad {
                host: name.clone(),
                report: load(i),
            },
            NOW,
        )
        .unwrap();
        hosts.push(name);
    }
    s.apply(
        Command::DefinePool(PoolSpec {
            name: "pool".into(),
            policy,
            options: PoolOptions::default(),
            hosts: hosts.clone(),
        }),
        NOW,
    )
    .unwrap();
    let host_arcs: Vec<std::sync::Arc<str>> = hosts.iter().map(|h| h.as_str().into()).collect();
    let pool: std::sync::Arc<str> = "pool".into();
    let before = heap_bytes();
    for i in 0..SESSIONS {
        let rec = SessionRecord {
            id: SessionId(i as u64 + 1),
            user: format!("user{i:07}").into(),
            host: host_arcs[i % HOSTS].clone(),
            pool: Some(pool.clone()),
            state: if i % 4 == 0 {
                SessionState::Disconnected
            } else {
                SessionState::Running
            },
            backend_id: Some(format!("user{i:07}-50-1763771234_stDXFCE_dp24").into()),
            client: Some(std::net::Ipv4Addr::new(127, 9, (i >> 8) as u8, i as u8).into()),
            created_at: NOW,
            updated_at: NOW,
        };
        s.apply(Command::RestoreSession(rec), NOW).unwrap();
    }
    let session_bytes = (heap_bytes() - before).max(0) as usize;
    (s, session_bytes)
}

/// Median and p99 of individually timed operations, in nanoseconds.
fn percentiles(mut ns: Vec<u64>) -> (u64, u64) {
    ns.sort_unstable();
    (ns[ns.len() / 2], ns[ns.len() * 99 / 100])
}

fn placement(c: &mut Criterion, policy: Policy, label: &str) {
    let (mut s, bytes) = build(policy);
    println!(
        "memory: {SESSIONS} sessions on {HOSTS} hosts take {:.1} MB of heap ({} bytes/session); target <= 300 MB",
        bytes as f64 / 1e6,
        bytes / SESSIONS
    );
    // Individually timed placements of new users, each released afterwards (untimed) so the
    // state stays at 1,000,000 sessions.
    let mut times = Vec::with_capacity(50_000);
    for i in 0..50_000 {
        let cmd = Command::Reserve {
            user: format!("new{i}"),
            pool: "pool".into(),
            client: None,
        };
        let t = Instant::now();
        let ev = s.apply(cmd, NOW).unwrap();
        times.push(t.elapsed().as_nanos() as u64);
        if let Some(switchboard_core::Event::Placed(p)) = ev.first() {
            s.apply(Command::Release { id: p.id }, NOW).unwrap();
        }
    }
    let (p50, p99) = percentiles(times);
    println!(
        "placement {label}: median {p50} ns, p99 {p99} ns per decision (target median <= 2000 ns)"
    );

    let mut n = 0u64;
    c.bench_function(&format!("place/{label}/10k_hosts_1M_sessions"), |b| {
        b.iter_batched(
            || {
                n += 1;
                Command::Reserve {
                    user: format!("bench{n}"),
                    pool: "pool".into(),
                    client: None,
                }
            },
            |cmd| black_box(s.apply(cmd, NOW).unwrap()),
            BatchSize::SmallInput,
        )
    });
}

fn place_wlc(c: &mut Criterion) {
    placement(c, Policy::WeightedLeastSessions, "wlc");
}

fn place_least_load(c: &mut Criterion) {
    placement(c, Policy::LeastLoad, "least-load");
}

/// Applies load reports to random hosts. Under `least-load` every report re-ranks its host; under
/// `wlc` the rank does not depend on load, so only the report itself is stored.
fn report_load_in(c: &mut Criterion, policy: Policy, label: &str) {
    let (mut s, _) = build(policy);
    let names: Vec<String> = (0..HOSTS).map(host_name).collect();
    let mut times = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let cmd = Command::ReportLoad {
            host: names[(i * 7919) % HOSTS].clone(),
            report: load(i),
        };
        let t = Instant::now();
        black_box(s.apply(cmd, NOW).unwrap());
        times.push(t.elapsed().as_nanos() as u64);
    }
    let (p50, p99) = percentiles(times);
    println!(
        "load report ({label} pool): median {p50} ns, p99 {p99} ns per report (target <= 1000 ns)"
    );
    let mut i = 0usize;
    c.bench_function(&format!("report_load/{label}/10k_hosts_1M_sessions"), |b| {
        b.iter_batched(
            || {
                i += 1;
                Command::ReportLoad {
                    host: names[(i * 7919) % HOSTS].clone(),
                    report: load(i),
                }
            },
            |cmd| black_box(s.apply(cmd, NOW).unwrap()),
            BatchSize::SmallInput,
        )
    });
}

fn report_load_least_load(c: &mut Criterion) {
    report_load_in(c, Policy::LeastLoad, "least-load");
}

fn report_load_wlc(c: &mut Criterion) {
    report_load_in(c, Policy::WeightedLeastSessions, "wlc");
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = report_load_least_load, report_load_wlc, place_wlc, place_least_load
}
criterion_main!(benches);
