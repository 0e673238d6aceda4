#![allow(clippy::unwrap_used)]
//! `switchboard director` in IPVS mode, end to end through the real `ipvsadm` binary (Debian's
//! 1.31). These machines have no IPVS in the kernel, so ipvsadm runs with the stand-in kernel of
//! `crates/testkit/src/ipvsadm_fake_kernel.c` preloaded (it answers ipvsadm's generic-netlink
//! requests from a state file, as Linux 6.1's ip_vs_ctl.c would). What is real: ipvsadm's option
//! parser and printers, the director's process, its diff, its `ipvsadm -S -n`/`-L -n`/`-R`/
//! `--set` calls and `switchboard ctl`. What is not: the kernel's forwarding of packets.
//! The test never runs where a real IPVS table exists.
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_testkit::free_port;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A wrapper script that runs the real ipvsadm against the stand-in kernel in `dir`.
fn fake_ipvsadm(dir: &Path) -> PathBuf {
    let so = dir.join("fake_ipvs.so");
    switchboard_testkit::ipvs::build_fake_kernel(&so).unwrap();
    let ipvsadm = switchboard_testkit::ipvs::ipvsadm_binary()
        .expect("ipvsadm is not installed (./scripts/test installs it)");
    let wrapper = dir.join("ipvsadm");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nLD_PRELOAD={so} FAKE_IPVS_STATE={state} LC_ALL=C exec {bin} \"$@\"\n",
            so = so.display(),
            state = dir.join("kernel.state").display(),
            bin = ipvsadm.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sets the kernel's ActiveConn of the real server on `port` of `addr` in the stand-in's state.
fn set_active(dir: &Path, addr: &str, port: u16, active: u32) {
    let path = dir.join("kernel.state");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut w: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            if w.first().map(String::as_str) == Some("D")
                && w.get(2).map(String::as_str) == Some(addr)
                && w.get(3) == Some(&port.to_string())
            {
                w[8] = active.to_string();
                found = true;
            }
            w.join(" ")
        })
        .collect();
    assert!(found, "no real server {addr}:{port} in\n{text}");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn ipvs_mode_programs_the_table_through_ipvsadm_and_never_drops_a_live_server() {
    if Path::new("/proc/net/ip_vs").exists() {
        eprintln!("skipped: this kernel has IPVS; the test never touches a real IPVS table");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ipvsadm = fake_ipvsadm(d);
    let (vport, rport) = (free_port(), free_port());
    // Real servers on loopback addresses, so the health checks find them up.
    let _listeners: Vec<std::net::TcpListener> = (11..=13)
        .map(|i| std::net::TcpListener::bind((format!("127.0.1.{i}").as_str(), rport)).unwrap())
        .collect();
    let config = |backends: &[u8]| {
        format!(
            "[director]\nmode = \"ipvs\"\n[management]\nsocket = {:?}\n[state]\nfile = {:?}\n\
             [ipvs]\nipvsadm = {:?}\ntcp_timeout = \"72h\"\ntcpfin_timeout = \"60s\"\n\
             [[service]]\nname = \"ssh\"\nlisten = \"127.0.0.100:{vport}\"\nscheduler = \"wlc\"\npersistence = \"1h\"\nforward = \"nat\"\n\
             backends = [{}]\n[service.health]\ninterval = \"300ms\"\n",
            d.join("director.sock").display().to_string(),
            d.join("state.json").display().to_string(),
            ipvsadm.display().to_string(),
            backends
                .iter()
                .map(|i| format!("\"127.0.1.{i}:{rport}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let path = d.join("director.toml");
    std::fs::write(&path, config(&[11, 12, 13])).unwrap();
    let bin = env!("CARGO_BIN_EXE_switchboard");

    // --dry-run on an empty table: everything is new.
    let dry = run(Command::new(bin)
        .args(["director", "--dry-run", "--config"])
        .arg(&path));
    let vs = format!("-t 127.0.0.100:{vport}");
    assert_eq!(
        dry,
        format!(
            "--set 259200 60 0\n-A {vs} -s wlc -p 3600\n\
             -a {vs} -r 127.0.1.11:{rport} -m -w 100\n\
             -a {vs} -r 127.0.1.12:{rport} -m -w 100\n\
             -a {vs} -r 127.0.1.13:{rport} -m -w 100\n"
        )
    );
    assert_eq!(
        run(Command::new(&ipvsadm).args(["-S", "-n"])),
        "",
        "dry run changed the table"
    );

    let log = std::fs::File::create(d.join("director.log")).unwrap();
    let mut director = Kill(
        Command::new(bin)
            .args(["director", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let save = || run(Command::new(&ipvsadm).args(["-S", "-n"]));
    wait_for("the table", || save().lines().count() == 4);
    assert_eq!(
        save(),
        format!(
            "-A {vs} -s wlc -p 3600\n\
             -a {vs} -r 127.0.1.11:{rport} -m -w 100\n\
             -a {vs} -r 127.0.1.12:{rport} -m -w 100\n\
             -a {vs} -r 127.0.1.13:{rport} -m -w 100\n"
        )
    );
    let timeouts = run(Command::new(&ipvsadm).args(["-L", "--timeout"]));
    assert!(timeouts.contains("259200 60 300"), "{timeouts}");

    // A drain is weight 0 in the kernel.
    let ctl = |args: &[&str]| {
        run(Command::new(bin)
            .arg("ctl")
            .arg("--socket")
            .arg(d.join("director.sock"))
            .args(args))
    };
    ctl(&["drain", "ssh", &format!("127.0.1.12:{rport}")]);
    wait_for("the drain in the kernel", || {
        save().contains(&format!("-r 127.0.1.12:{rport} -m -w 0"))
    });

    // A real server removed from the configuration while it has connections is quiesced, not
    // deleted, and deleted once its connections are gone.
    set_active(d, "127.0.1.13", rport, 5);
    wait_for("the kernel's counters in ctl", || {
        ctl(&["services"]).lines().any(|l| {
            l.contains(&format!("127.0.1.13:{rport} ")) && l.split_whitespace().nth(4) == Some("5")
        })
    });
    std::fs::write(&path, config(&[11, 12])).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(director.0.id()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for("the removed server quiesced", || {
        save().contains(&format!("-r 127.0.1.13:{rport} -m -w 0"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        save().contains(&format!("-r 127.0.1.13:{rport} -m -w 0")),
        "deleted while it had connections:\n{}",
        save()
    );
    set_active(d, "127.0.1.13", rport, 0);
    wait_for("the drained-out server deleted", || {
        !save().contains(&format!("127.0.1.13:{rport}"))
    });

    // Nothing left to do: a dry run says so and prints only the timeouts.
    let out = Command::new(bin)
        .args(["director", "--dry-run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--set 259200 60 0\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already matches"));
    let _ = director.0.kill();
}
