#![allow(clippy::unwrap_used)]
//! The director in front of three real OpenSSH servers (Debian's `openssh-server`) on loopback
//! ports, driven by the real `ssh` client and `switchboard ctl`: scheduling (rr, wrr),
//! persistence by source address, drains that keep open sessions, health checks that skip a
//! killed sshd, runtime state across a restart, reload without dropping a session, graceful
//! shutdown.
//!
//! Each login runs `echo $SSH_CONNECTION` on the server; its last field is the port of the sshd
//! that took the login, which is how a login's backend is known.
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_testkit::free_port;

const SSHD: &str = "/usr/sbin/sshd";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Lab {
    dir: tempfile::TempDir,
    key: PathBuf,
    user: String,
    sshd: Vec<(u16, Kill)>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Lab {
    /// Three sshd on 127.0.0.1 with their own host keys, accepting one test key.
    fn new() -> Lab {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (./scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client_key");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key));
        let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        std::fs::write(dir.path().join("authorized_keys"), pubkey).unwrap();
        // Privilege separation directory sshd insists on.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name;
        let mut sshd = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let hostkey = dir.path().join(format!("host_key_{i}"));
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&hostkey));
            let conf = dir.path().join(format!("sshd_{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                     AuthorizedKeysFile {ak}\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                     PermitRootLogin prohibit-password\nLogLevel ERROR\nMaxStartups 200\n\
                     MaxSessions 50\nAcceptEnv LANG\n",
                    hk = hostkey.display(),
                    pid = dir.path().join(format!("sshd_{i}.pid")).display(),
                    ak = dir.path().join("authorized_keys").display(),
                ),
            )
            .unwrap();
            let child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            sshd.push((port, Kill(child)));
        }
        for (port, _) in &sshd {
            wait_port(*port);
        }
        Lab {
            dir,
            key,
            user,
            sshd,
        }
    }

    fn ports(&self) -> Vec<u16> {
        self.sshd.iter().map(|(p, _)| *p).collect()
    }

    fn ssh_args(&self, port: u16, source: &str) -> Vec<String> {
        [
            "-i",
            self.key.to_str().unwrap(),
            "-p",
            &port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-o",
            &format!("BindAddress={source}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// One login through `port` from `source`; returns the port of the sshd that took it.
    fn login_from(&self, port: u16, source: &str, target: &str) -> u16 {
        let out = Command::new("ssh")
            .args(self.ssh_args(port, source))
            .arg(format!("{}@{target}", self.user))
            .arg("echo $SSH_CONNECTION")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ssh through {port} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        line.split_whitespace().last().unwrap().parse().unwrap()
    }

    fn login(&self, port: u16) -> u16 {
        self.login_from(port, "127.0.0.1", "127.0.0.1")
    }

    fn logins(&self, port: u16, n: usize) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            *counts.entry(self.login(port)).or_insert(0) += 1;
        }
        counts
    }

    /// A session that stays open: `cat` echoes lines back.
    fn open_session(&self, port: u16) -> Session {
        let mut child = Command::new("ssh")
            .args(self.ssh_args(port, "127.0.0.1"))
            .arg(format!("{}@127.0.0.1", self.user))
            .arg("echo $SSH_CONNECTION; exec cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let backend = first.split_whitespace().last().unwrap().parse().unwrap();
        Session {
            backend,
            stdin,
            stdout,
            _child: Kill(child),
        }
    }
}

struct Session {
    backend: u16,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _child: Kill,
}

impl Session {
    fn echo(&mut self, text: &str) -> String {
        writeln!(self.stdin, "{text}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }
}

struct Director {
    child: Option<Kill>,
    config: PathBuf,
    socket: PathBuf,
}

impl Director {
    fn start(dir: &Path, config: &str, wait_for: &[u16]) -> Director {
        let path = dir.join("director.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("director.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["director", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        for p in wait_for {
            wait_port(*p);
        }
        Director {
            child: Some(Kill(child)),
            config: path,
            socket: dir.join("director.sock"),
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("ctl")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().unwrap().0.id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), sig)
            .unwrap();
    }

    /// Waits for the process to exit; returns whether it did within `limit`.
    fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let child = &mut self.child.as_mut().unwrap().0;
        loop {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn common(dir: &Path) -> String {
    format!(
        "[management]\nsocket = \"{}\"\n[state]\nfile = \"{}\"\n",
        dir.join("director.sock").display(),
        dir.join("state.json").display()
    )
}

fn backends(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn rr_and_wrr_spread_sixty_logins_as_the_scheduler_says() {
    let lab = Lab::new();
    let ports = lab.ports();
    let (rr, wrr, v6) = (free_port(), free_port(), free_port());
    let config = format!(
        "{}\n[[service]]\nname = \"rr\"\nlisten = [\"127.0.0.1:{rr}\", \"[::1]:{v6}\"]\nscheduler = \"rr\"\nbackends = [{}]\n\n\
         [[service]]\nname = \"wrr\"\nlisten = \"127.0.0.1:{wrr}\"\nscheduler = \"wrr\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:{}\"\nweight = 2\n\
         [[service.backend]]\naddress = \"127.0.0.1:{}\"\nweight = 1\n\
         [[service.backend]]\naddress = \"127.0.0.1:{}\"\nweight = 1\n",
        common(lab.dir.path()),
        backends(&ports),
        ports[0],
        ports[1],
        ports[2]
    );
    let d = Director::start(lab.dir.path(), &config, &[rr, wrr]);

    let counts = lab.logins(rr, 60);
    assert_eq!(
        counts,
        ports.iter().map(|p| (*p, 20)).collect::<BTreeMap<_, _>>(),
        "rr"
    );
    let counts = lab.logins(wrr, 60);
    let got = |p: u16| counts.get(&p).copied().unwrap_or(0);
    assert!(got(ports[0]).abs_diff(30) <= 1, "wrr 2:1:1 gave {counts:?}");
    assert!(got(ports[1]).abs_diff(15) <= 1, "wrr 2:1:1 gave {counts:?}");
    assert!(got(ports[2]).abs_diff(15) <= 1, "wrr 2:1:1 gave {counts:?}");

    // The IPv6 listener of the same service.
    assert!(ports.contains(&lab.login_from(v6, "::1", "::1")));

    // The console shows the figures in the ipvsadm layout.
    let services = d.ctl(&["services"]);
    assert!(
        services.contains("Prot LocalAddress:Port Scheduler Flags"),
        "{services}"
    );
    assert!(
        services.contains(&format!("TCP  127.0.0.1:{rr},[::1]:{v6} rr")),
        "{services}"
    );
    let stats = d.ctl(&["stats", "rr"]);
    let line = stats
        .lines()
        .find(|l| l.starts_with(&format!("  -> 127.0.0.1:{}", ports[0])))
        .unwrap();
    let conns: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(conns >= 20, "{stats}");
}

#[test]
fn persistence_keeps_a_client_on_its_host_while_others_spread() {
    let lab = Lab::new();
    let ports = lab.ports();
    let port = free_port();
    let config = format!(
        "{}\n[[service]]\nname = \"ssh\"\nlisten = \"127.0.0.1:{port}\"\nscheduler = \"rr\"\npersistence = \"1h\"\nbackends = [{}]\n",
        common(lab.dir.path()),
        backends(&ports)
    );
    let _d = Director::start(lab.dir.path(), &config, &[port]);
    let home = lab.login_from(port, "127.0.0.21", "127.0.0.1");
    let mut others = BTreeMap::new();
    for i in 0..6 {
        assert_eq!(lab.login_from(port, "127.0.0.21", "127.0.0.1"), home);
        let other = lab.login_from(port, &format!("127.0.0.{}", 30 + i), "127.0.0.1");
        *others.entry(other).or_insert(0) += 1;
    }
    assert_eq!(
        others.len(),
        3,
        "six other source addresses spread over all three hosts: {others:?}"
    );
}

#[test]
fn a_drained_backend_keeps_its_session_and_gets_no_new_logins_and_survives_restart_and_reload() {
    let lab = Lab::new();
    let ports = lab.ports();
    let port = free_port();
    let config = format!(
        "{}[director]\nshutdown_timeout = \"0\"\n\n[[service]]\nname = \"ssh\"\nlisten = \"127.0.0.1:{port}\"\nscheduler = \"rr\"\nbackends = [{}]\n",
        common(lab.dir.path()),
        backends(&ports)
    );
    let mut d = Director::start(lab.dir.path(), &config, &[port]);
    let mut session = lab.open_session(port);
    assert_eq!(session.echo("hello"), "hello");
    let drained = session.backend;
    d.ctl(&["drain", "ssh", &format!("127.0.0.1:{drained}")]);
    let counts = lab.logins(port, 9);
    assert!(
        !counts.contains_key(&drained),
        "drained backend got {counts:?}"
    );
    assert_eq!(session.echo("still here"), "still here");
    let services = d.ctl(&["services"]);
    let row = services
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{drained} ")))
        .unwrap();
    assert!(row.ends_with("drain"), "{services}");
    assert_eq!(
        row.split_whitespace().nth(4),
        Some("1"),
        "one active connection: {services}"
    );

    // Reload: drop another backend from the file. The open session is untouched; new logins
    // go only to the one left.
    let keep: Vec<u16> = ports.iter().copied().filter(|p| *p != drained).collect();
    let reloaded = config.replace(&backends(&ports), &backends(&[drained, keep[0]]));
    std::fs::write(&d.config, reloaded).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let counts = lab.logins(port, 4);
    assert_eq!(counts, BTreeMap::from([(keep[0], 4)]), "after reload");
    assert_eq!(session.echo("after reload"), "after reload");

    // Graceful shutdown: the director stops accepting but waits for the open session.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        !d.exited_within(Duration::from_secs(1)),
        "exited with a live session"
    );
    let refused = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_err() {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(refused, "still accepting after SIGTERM");
    assert_eq!(session.echo("during shutdown"), "during shutdown");
    drop(session);
    assert!(
        d.exited_within(Duration::from_secs(10)),
        "did not exit once the session ended"
    );

    // The drain is runtime state: it comes back after a restart.
    let d = Director::start(lab.dir.path(), &config, &[port]);
    let services = d.ctl(&["services"]);
    let row = services
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{drained} ")))
        .unwrap();
    assert!(row.ends_with("drain"), "after restart: {services}");
    let counts = lab.logins(port, 4);
    assert!(!counts.contains_key(&drained), "after restart: {counts:?}");
    d.ctl(&["undrain", "ssh", &format!("127.0.0.1:{drained}")]);
    let counts = lab.logins(port, 6);
    assert_eq!(counts.get(&drained), Some(&2), "undrained: {counts:?}");
}

#[test]
fn a_killed_sshd_is_skipped_within_the_fall_time() {
    let mut lab = Lab::new();
    let ports = lab.ports();
    let port = free_port();
    // interval 300 ms, timeout 300 ms, fall 2: down within 2 × 300 ms plus a connect timeout.
    let config = format!(
        "{}\n[[service]]\nname = \"ssh\"\nlisten = \"127.0.0.1:{port}\"\nscheduler = \"rr\"\nbackends = [{}]\n[service.health]\ninterval = \"300ms\"\ntimeout = \"300ms\"\nfall = 2\nrise = 1\n",
        common(lab.dir.path()),
        backends(&ports)
    );
    let d = Director::start(lab.dir.path(), &config, &[port]);
    assert_eq!(lab.logins(port, 3).len(), 3);
    let (dead, _) = lab.sshd.remove(2);
    let killed = Instant::now();
    let deadline = killed + Duration::from_millis(2 * 300 + 300 + 1500);
    loop {
        let services = d.ctl(&["services"]);
        let row = services
            .lines()
            .find(|l| l.contains(&format!("127.0.0.1:{dead} ")))
            .unwrap()
            .to_owned();
        if row.ends_with("down") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not down {:?} after the kill: {services}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let counts = lab.logins(port, 10);
    assert!(!counts.contains_key(&dead), "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 10);
    let metrics_free = d.ctl(&["stats"]);
    assert!(metrics_free.contains(&format!("127.0.0.1:{dead}")));
}
