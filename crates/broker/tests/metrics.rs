//! Prometheus metrics of a broker. In a test binary of its own: the metrics recorder is
//! process-wide, as it is for a broker in production, so no other broker may share the process.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use serde_json::json;
use support::*;
use switchboard_testkit::store::Kind;

fn three_hosts() -> String {
    pools_toml("desktops", &[("h1", 100), ("h2", 100), ("h3", 200)])
}

#[tokio::test]
async fn metrics_count_placements_and_sessions() {
    let b = TestBroker::start(Kind::Sqlite, &three_hosts()).await;
    let p = b
        .ok(
            "POST",
            "/api/v1/sessions",
            Some(json!({"user": "alice", "pool": "desktops"})),
        )
        .await;
    b.ok(
        "POST",
        &format!("/api/v1/sessions/{}/confirm", p["id"]),
        None,
    )
    .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = b
            .client
            .get(format!("{}/metrics", b.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let has = |needle: &str| text.lines().any(|l| l.starts_with(needle));
        if has("switchboard_placements_total{policy=\"wlc\",outcome=\"reserved\"}")
            && has("switchboard_sessions{state=\"running\"} 1")
            && has("switchboard_placement_duration_seconds_bucket")
            && has("switchboard_http_request_duration_seconds_bucket{route=\"/api/v1/sessions\"")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics missing:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
