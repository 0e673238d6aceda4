//! TCP probes of agentless hosts with `probe = true`, against real listeners on loopback.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use std::time::Duration;
use support::*;
use switchboard_testkit::store::Kind;
use tokio::time::Instant;

#[tokio::test]
async fn probes_bring_listening_hosts_up_and_keep_closed_ones_out() {
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    // A port that was just free: nothing listens there.
    let closed_port = switchboard_testkit::free_port();
    let extra = format!(
        "[probe]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n[[pool]]\nname = \"p\"\nagent = false\n\
         [[pool.host]]\nname = \"up\"\naddress = \"127.0.0.1:{open_port}\"\nprobe = true\n\
         [[pool.host]]\nname = \"down\"\naddress = \"127.0.0.1:{closed_port}\"\nprobe = true\n"
    );
    let b = TestBroker::start(Kind::Sqlite, &extra).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = b.ok("GET", "/api/v1/hosts/up", None).await;
        let down = b.ok("GET", "/api/v1/hosts/down", None).await;
        if up["health"] == "up" && down["health"] == "unreachable" {
            assert_eq!(down["excluded"], "unreachable");
            assert!(down["penalized_until"].is_u64());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probes did not settle: {up} {down}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..4 {
        let p = b
            .ok(
                "POST",
                "/api/v1/sessions",
                Some(serde_json::json!({"user": format!("u{i}"), "pool": "p"})),
            )
            .await;
        assert_eq!(p["host"], "up");
    }
    drop(open);
}
