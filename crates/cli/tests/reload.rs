//! SIGHUP reloads the configuration of the real `switchboard broker`; a bad file keeps the
//! running one. SIGTERM stops it cleanly.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_testkit::broker::BrokerBuilder;

/// An agentless pool `p` of these hosts, as the configuration's tail.
fn pool(hosts: &[&str]) -> String {
    switchboard_testkit::broker::pools_toml(
        "p",
        &hosts.iter().map(|h| (*h, 100)).collect::<Vec<_>>(),
    )
}

async fn host_names(client: &reqwest::Client, base: &str, token: &str) -> Option<Vec<String>> {
    let r = client
        .get(format!("{base}/api/v1/hosts"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    Some(
        v["items"]
            .as_array()?
            .iter()
            .map(|h| h["name"].as_str().unwrap().to_owned())
            .collect(),
    )
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the broker if the test fails half-way.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_file_keeps_the_running_configuration() {
    let port = switchboard_testkit::free_port();
    let mut files = BrokerBuilder::new()
        .http_port(port)
        .toml(&pool(&["a", "b"]))
        .write()
        .await;
    let (path, token) = (files.config_path(), files.token.clone());
    let mut child = Guard(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["broker", "--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let base = format!("http://127.0.0.1:{port}");
    let client = switchboard_testkit::http_client();
    wait_for("start", async || {
        host_names(&client, &base, &token).await.is_some()
    })
    .await;
    assert_eq!(
        host_names(&client, &base, &token).await.unwrap(),
        ["a", "b"]
    );

    let hup = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    files.extra = pool(&["a", "b", "c"]);
    files.rewrite();
    hup(child.id());
    wait_for("reload", async || {
        host_names(&client, &base, &token)
            .await
            .is_some_and(|h| h == ["a", "b", "c"])
    })
    .await;

    std::fs::write(&path, "[[pool]]\nname = \"p\"\nbogus = 1\n").unwrap();
    hup(child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad reload must not stop the broker"
    );
    assert_eq!(
        host_names(&client, &base, &token).await.unwrap(),
        ["a", "b", "c"]
    );

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "broker did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
