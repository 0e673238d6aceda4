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

/// A running `switchboard up`, killed when dropped unless [`Up::stop`]ped.
#[derive(Debug)]
pub struct Up {
    child: Child,
}

impl Drop for Up {
    /// A failing test must not leave `up` running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Up {
    /// Runs `bin up --data-dir DATA --listen 127.0.0.1:PORT --agents-listen 127.0.0.1:0 EXTRA…`
    /// and reads its banner up to the line that starts with "Try" (the last one): the banner's
    /// lines.
    pub fn start(bin: &Path, data: &Path, port: u16, extra: &[&str]) -> (Up, Vec<String>) {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(bin)
            .args(["up", "--data-dir", data.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--agents-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let up = Up { child };
        let mut lines = Vec::new();
        for line in BufReader::new(out).lines() {
            let line = line.unwrap();
            let done = line.trim_start().starts_with("Try");
            lines.push(line);
            if done {
                break;
            }
        }
        (up, lines)
    }

    /// SIGTERM, then waits (at most 20 s) for a clean exit; panics otherwise.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "switchboard up exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "switchboard up did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
