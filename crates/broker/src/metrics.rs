//! Prometheus metrics at `/metrics`.
//!
//! Call sites use the `metrics` facade; one process-wide Prometheus recorder renders them.
//! Gauges that describe the cluster (sessions by state and host, host load, reservations) are set
//! from each published snapshot, so a scrape never walks the sessions.

use crate::snapshot::Snapshot;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use switchboard_core::{CoreError, Event, PlacementOutcome};

/// Latency buckets in seconds: 10 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// Buckets for the report-to-snapshot latency (target: p99 within 200 ms).
const REPORT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0,
    5.0,
];

/// Records, for each agent report applied since the last snapshot, the time from its arrival to
/// `published` (when a snapshot showing it went out), and forgets them.
pub fn reports_published(arrived: &mut Vec<tokio::time::Instant>, published: tokio::time::Instant) {
    if arrived.is_empty() {
        return;
    }
    let h = histogram!("switchboard_report_to_snapshot_seconds");
    for t in arrived.drain(..) {
        h.record(published.saturating_duration_since(t).as_secs_f64());
    }
}

/// The process-wide recorder (installed on first use).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("switchboard_report_to_snapshot_seconds".into()),
                REPORT_BUCKETS,
            )
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS))
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Another recorder may already be installed (tests embedding several brokers); then
        // this handle still renders what is recorded through it.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records a placement decision.
pub fn placement(events: &[Event], took: Duration) {
    for e in events {
        if let Event::Placed(p) = e {
            let outcome = match p.outcome {
                PlacementOutcome::Resumed(_) => "resumed",
                PlacementOutcome::Reserved => "reserved",
                PlacementOutcome::ExistingReservation => "existing_reservation",
            };
            counter!("switchboard_placements_total", "policy" => p.reason.policy.as_str(), "outcome" => outcome)
                .increment(1);
        }
    }
    histogram!("switchboard_placement_duration_seconds").record(took.as_secs_f64());
}

/// Records a refused placement.
pub fn placement_failed(e: &CoreError, took: Duration) {
    let outcome = match e {
        CoreError::NoHostAvailable { .. } => "no_host",
        _ => "refused",
    };
    counter!("switchboard_placements_total", "policy" => "none", "outcome" => outcome).increment(1);
    histogram!("switchboard_placement_duration_seconds").record(took.as_secs_f64());
}

/// Counts the rows of an inventory that the core skipped: `invalid` (a backend id or user name
/// it refuses) and `duplicate` (a backend id listed again).
pub fn inventory_rows_refused(invalid: u32, duplicate: u32) {
    for (reason, n) in [("invalid", invalid), ("duplicate", duplicate)] {
        if n > 0 {
            counter!("switchboard_inventory_rows_refused_total", "reason" => reason)
                .increment(u64::from(n));
        }
    }
}

/// Records one store commit.
pub fn commit(took: Duration, ok: bool) {
    histogram!("switchboard_store_commit_duration_seconds").record(took.as_secs_f64());
    if !ok {
        counter!("switchboard_store_commit_failures_total").increment(1);
    }
}

/// Records one HTTP request.
pub fn http(route: &str, method: &str, status: u16, took: Duration) {
    histogram!(
        "switchboard_http_request_duration_seconds",
        "route" => route.to_owned(),
        "method" => method.to_owned(),
        "status" => status.to_string()
    )
    .record(took.as_secs_f64());
}

/// Sets the cluster gauges from a snapshot.
pub fn snapshot(s: &Snapshot) {
    for (state, n) in &s.sessions_by_state {
        gauge!("switchboard_sessions", "state" => state.as_str()).set(*n as f64);
    }
    gauge!("switchboard_reservations").set(s.reservations as f64);
    gauge!("switchboard_ready").set(if s.ready { 1.0 } else { 0.0 });
    let mut agents = 0u32;
    // Gauge handles per host, looked up once: with thousands of hosts the lookups, not the
    // updates, were the cost.
    static HOSTS: OnceLock<std::sync::Mutex<HashMap<String, HostGauges>>> = OnceLock::new();
    let mut cache = HOSTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for h in &s.hosts {
        let g = cache
            .entry(h.name.clone())
            .or_insert_with(|| HostGauges::new(&h.name));
        g.sessions.set(f64::from(h.sessions));
        g.reservations.set(f64::from(h.reservations));
        g.weight.set(f64::from(h.weight));
        g.eligible.set(if h.excluded.is_none() { 1.0 } else { 0.0 });
        if h.agent && h.health == "up" {
            agents += 1;
        }
        if let Some(l) = &h.load {
            // Created on the first report: hosts without one export no load at all.
            let [load1, cpu, memory] = g.load.get_or_insert_with(|| {
                let host = h.name.clone();
                [
                    gauge!("switchboard_host_load1", "host" => host.clone()),
                    gauge!("switchboard_host_cpu_utilisation", "host" => host.clone()),
                    gauge!("switchboard_host_memory_available_ratio", "host" => host),
                ]
            });
            load1.set(l.load_avg[0]);
            cpu.set(l.cpu_utilisation);
            if l.mem_total_kib > 0 {
                memory.set(l.mem_available_kib as f64 / l.mem_total_kib as f64);
            }
            // Only hosts that ever skipped a session row export the gauge.
            if l.skipped_rows > 0 || g.skipped.is_some() {
                let host = h.name.clone();
                g.skipped
                    .get_or_insert_with(
                        || gauge!("switchboard_host_skipped_session_rows", "host" => host),
                    )
                    .set(l.skipped_rows as f64);
            }
        }
    }
    gauge!("switchboard_agents_connected").set(f64::from(agents));
}

/// One host's gauges.
struct HostGauges {
    sessions: metrics::Gauge,
    reservations: metrics::Gauge,
    weight: metrics::Gauge,
    eligible: metrics::Gauge,
    /// load1, CPU utilisation, memory available ratio.
    load: Option<[metrics::Gauge; 3]>,
    /// Session rows the host's agent skipped in its latest listing.
    skipped: Option<metrics::Gauge>,
}

impl HostGauges {
    fn new(host: &str) -> HostGauges {
        let h = host.to_owned();
        HostGauges {
            sessions: gauge!("switchboard_host_sessions", "host" => h.clone()),
            reservations: gauge!("switchboard_host_reservations", "host" => h.clone()),
            weight: gauge!("switchboard_host_weight", "host" => h.clone()),
            eligible: gauge!("switchboard_host_eligible", "host" => h),
            load: None,
            skipped: None,
        }
    }
}
