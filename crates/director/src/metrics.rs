//! `/metrics` in the Prometheus text format: the figures of `ctl services` and `ctl stats`, per
//! service and backend, read from the live counters at scrape time.

use crate::Director;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `/metrics` on `listener` until `shutdown`.
pub fn spawn(director: Director, listener: TcpListener, shutdown: CancellationToken) {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let d = director.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        render(&d),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text.
pub fn render(d: &Director) -> String {
    let mut out = String::new();
    let services = d.services();
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in rows {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        };
    let backends: Vec<(String, std::sync::Arc<crate::service::Backend>)> = services
        .iter()
        .flat_map(|s| {
            s.backends().into_iter().map(move |b| {
                (
                    format!(
                        "service=\"{}\",backend=\"{}\"",
                        escape(&s.name),
                        escape(&b.addr.to_string())
                    ),
                    b,
                )
            })
        })
        .collect();
    let counter = |f: fn(&crate::service::Counters) -> &std::sync::atomic::AtomicU64| {
        backends
            .iter()
            .map(move |(l, b)| (l.clone(), f(&b.counters).load(Ordering::Relaxed) as f64))
            .collect::<Vec<_>>()
    };
    family(
        "switchboard_director_backend_active_connections",
        "gauge",
        "Connections open both ways (ipvsadm ActiveConn).",
        &mut counter(|c| &c.active).into_iter(),
    );
    family(
        "switchboard_director_backend_inactive_connections",
        "gauge",
        "Half-closed connections (ipvsadm InActConn).",
        &mut counter(|c| &c.inactive).into_iter(),
    );
    family(
        "switchboard_director_backend_connections_total",
        "counter",
        "Connections made to the backend.",
        &mut counter(|c| &c.total).into_iter(),
    );
    family(
        "switchboard_director_refused_total",
        "counter",
        "Clients turned away at the connection caps ([director] max_connections, max_connections_per_source).",
        &mut services
            .iter()
            .map(|s| {
                (
                    format!("service=\"{}\"", escape(&s.name)),
                    s.counters.refused.load(Ordering::Relaxed) as f64,
                )
            })
            .collect::<Vec<_>>()
            .into_iter(),
    );
    family(
        "switchboard_director_backend_connect_errors_total",
        "counter",
        "Connects to the backend that failed or timed out.",
        &mut counter(|c| &c.connect_errors).into_iter(),
    );
    family(
        "switchboard_director_backend_in_bytes_total",
        "counter",
        "Bytes from clients to the backend.",
        &mut counter(|c| &c.bytes_in).into_iter(),
    );
    family(
        "switchboard_director_backend_out_bytes_total",
        "counter",
        "Bytes from the backend to clients.",
        &mut counter(|c| &c.bytes_out).into_iter(),
    );
    family(
        "switchboard_director_backend_weight",
        "gauge",
        "Weight in force (runtime or configured).",
        &mut backends
            .iter()
            .map(|(l, b)| (l.clone(), f64::from(b.weight()))),
    );
    family(
        "switchboard_director_backend_up",
        "gauge",
        "1 if health checks and the broker say the backend is reachable.",
        &mut backends
            .iter()
            .map(|(l, b)| (l.clone(), f64::from(u8::from(b.available())))),
    );
    family(
        "switchboard_director_backend_draining",
        "gauge",
        "1 if the backend takes no new connections (drained, or removed with live ones).",
        &mut backends
            .iter()
            .map(|(l, b)| (l.clone(), f64::from(u8::from(b.draining())))),
    );
    let rates: Vec<(String, crate::service::Rates)> = backends
        .iter()
        .map(|(l, b)| (l.clone(), *crate::lock(&b.counters.rates)))
        .collect();
    family(
        "switchboard_director_backend_connections_per_second",
        "gauge",
        "New connections per second, averaged like IPVS's estimator (2 s samples, weight 1/4).",
        &mut rates.iter().map(|(l, r)| (l.clone(), r.cps)),
    );
    family(
        "switchboard_director_backend_in_bytes_per_second",
        "gauge",
        "Bytes per second from clients, averaged like IPVS's estimator.",
        &mut rates.iter().map(|(l, r)| (l.clone(), r.in_bps)),
    );
    family(
        "switchboard_director_backend_out_bytes_per_second",
        "gauge",
        "Bytes per second to clients, averaged like IPVS's estimator.",
        &mut rates.iter().map(|(l, r)| (l.clone(), r.out_bps)),
    );
    family(
        "switchboard_director_service_persistent_clients",
        "gauge",
        "Persistence entries (client address under the netmask → backend).",
        &mut services.iter().map(|s| {
            (
                format!("service=\"{}\"", escape(&s.name)),
                s.templates() as f64,
            )
        }),
    );
    family(
        "switchboard_director_connections",
        "gauge",
        "Proxied connections alive in this process.",
        &mut std::iter::once((String::new(), d.connections() as f64)),
    );
    out
}
