//! The real `switchboard broker` as a child process, for the tests that run the binary itself
//! (crash and restart, descriptor limits): started on a configuration file, waited for, and
//! killed when the test ends.
#![allow(clippy::unwrap_used)] // a test fixture: failing to set up is the test failing
#![allow(clippy::disallowed_types)] // std Instant: real processes, not the broker's timers

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `switchboard broker`, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct RealBroker {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for RealBroker {
    /// A failing test must not leave a broker running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RealBroker {
    /// Runs `bin broker --config CONFIG` with its standard error in `log`; with `nofile`, under
    /// that descriptor limit (soft and hard, as a unit file's `LimitNOFILE=` sets it).
    pub fn spawn(
        bin: &Path,
        config: &Path,
        port: u16,
        log: &Path,
        nofile: Option<u64>,
    ) -> RealBroker {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("broker")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        RealBroker {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until `/readyz` says ready (at most 30 s; fails at once if the broker exits).
    pub async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("broker exited early: {status}");
            }
            assert!(Instant::now() < deadline, "broker not ready in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
