//! The autologin key line as the real OpenSSH server reads it: accepted before its
//! `expiry-time`, refused after it, whatever becomes of the line (the broker's removal lost,
//! the agent stopped).
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
#![allow(clippy::disallowed_types)] // std Instant: real processes and the wall clock

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_agent::authkeys::{add_line, now_ms};

const SSHD: &str = "/usr/sbin/sshd";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ssh_ok(dir: &Path, port: u16, user: &str) -> bool {
    Command::new("ssh")
        .arg("-i")
        .arg(dir.join("k"))
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
        ])
        .arg(format!("{user}@127.0.0.1"))
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn sshd_refuses_an_autologin_key_once_its_expiry_time_has_passed() {
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: install openssh-server (./scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for k in ["k", "host"] {
        let s = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join(k))
            .status()
            .unwrap();
        assert!(s.success());
    }
    let public = std::fs::read_to_string(d.join("k.pub")).unwrap();
    // The line exactly as the agent writes it, good for 3 s more.
    let expires = now_ms() + 3000;
    let line = add_line("", public.trim(), expires, now_ms()).unwrap();
    assert!(line.starts_with("expiry-time=\""), "{line}");
    std::fs::write(d.join("authorized_keys"), &line).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port = switchboard_testkit::free_port();
    std::fs::write(
        d.join("sshd.conf"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
             AuthorizedKeysFile {ak}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n",
            hk = d.join("host").display(),
            pid = d.join("sshd.pid").display(),
            ak = d.join("authorized_keys").display(),
        ),
    )
    .unwrap();
    let _sshd = Kill(
        Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sshd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    assert!(ssh_ok(d, port, &user), "the key works before its expiry");
    while now_ms() <= expires.div_ceil(1000) * 1000 + 1000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !ssh_ok(d, port, &user),
        "the same line, left in place, no longer lets anyone in"
    );
}
