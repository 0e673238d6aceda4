//! Faults against the real `switchboard broker` (and a real `switchboard agent`). Each test says
//! what the broker must keep doing:
//!
//! - half-open connections from many addresses, with the descriptor limit a unit file gives;
//! - half-open connections from one address, over its per-source cap;
//! - a SIGKILL and restart with an agent linked: it relinks, its sessions keep their ids;
//! - a `clientevent` flood from 8 addresses while placements go on: the audit log is not flooded;
//! - a full disk under the SQLite file (a tmpfs in a private mount namespace; needs root).
//!
//! (Store outages are in `crates/broker/tests/outage.rs`, a SIGKILL mid-stream in
//! `durability.rs`; all of them mixed, for minutes, in `bench/soak.sh`.)
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use switchboard_testkit::broker::{BrokerBuilder, Host, Pool, TestBroker};
use switchboard_testkit::free_port;
use switchboard_testkit::process::RealBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Runs `switchboard broker` on the files of `b`, with its descriptor limit (soft and hard) at
/// `nofile` when given, as a unit file's `LimitNOFILE=` would set it.
fn spawn(b: &TestBroker, port: u16, nofile: Option<u64>, log: &str) -> RealBroker {
    RealBroker::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_switchboard")),
        &b.config_path(),
        port,
        &b.path().join(log),
        nofile,
    )
}

/// Raises this test process's own descriptor limit (it opens more than a thousand sockets).
fn raise_own_nofile() {
    switchboard_broker::web::serve::raise_nofile();
}

/// Opens a connection from `from` that sends half a request and then nothing (slowloris).
async fn half_open(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    let mut c = s.connect(to).await?;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await?;
    Ok(c)
}

/// Whether the broker has closed `c` by now (end-of-file or a reset already arrived), without
/// waiting.
fn closed_now(c: &TcpStream) -> bool {
    let mut b = [0u8; 64];
    match c.try_read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Whether the broker closes `c` within 300 ms.
async fn closed(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The checks an operator makes while the listener is under attack: `/healthz`, the REST API
/// with a token, and `ctl` on the management socket, each answering within 5 s.
async fn still_answering(b: &TestBroker, broker: &RealBroker, client: &reqwest::Client) {
    let health = client
        .get(format!("{}/healthz", broker.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("/healthz answers");
    assert!(health.status().is_success());
    let hosts = client
        .get(format!("{}/api/v1/hosts", broker.base))
        .bearer_auth(&b.token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the REST API answers");
    assert!(hosts.status().is_success(), "{}", hosts.status());
    let socket = b.path().join("mgmt.sock");
    let ctl = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["ctl", "--socket", socket.to_str().unwrap(), "servers"])
            .output(),
    )
    .await
    .expect("ctl answers in time")
    .unwrap();
    assert!(
        ctl.status.success(),
        "{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    assert!(String::from_utf8_lossy(&ctl.stdout).contains("h1"));
}

async fn broker_files(port: u16) -> TestBroker {
    BrokerBuilder::new()
        .http_port(port)
        .pool(Pool::agentless_hosts("desktops", &[("h1", 100)]))
        .write()
        .await
}

/// With its descriptor limit at 1,024 soft and hard, the broker is sent 1,100 half-open HTTP
/// connections from 275 addresses in 127.0.0.0/8: more than its connection cap, and more than
/// its descriptors. New clients still get in (the connections idle longest make room), and the
/// store, the REST API and `ctl` keep their descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_from_many_addresses_leave_healthz_the_api_and_ctl_answering() {
    raise_own_nofile();
    let port = free_port();
    let b = broker_files(port).await;
    let client = switchboard_testkit::http_client();
    let mut broker = spawn(&b, port, Some(1024), "broker.log");
    broker.wait_ready(&client).await;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let mut held = Vec::new();
    for i in 0..1100u32 {
        let from = IpAddr::V4(Ipv4Addr::new(
            127,
            1,
            (i / 4 / 250) as u8,
            (i / 4 % 250 + 1) as u8,
        ));
        match half_open(from, to).await {
            Ok(c) => held.push(c),
            Err(e) => panic!("connection {i} from {from}: {e}"),
        }
    }
    // Give the broker time to take them all in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_answering(&b, &broker, &client).await;
    // It did not keep them all: it holds no more than its cap (1,024 less the reserve).
    let open = held.iter().filter(|c| !closed_now(c)).count();
    assert!(open <= 768, "{open} half-open connections kept");
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the broker is still running"
    );
}

/// One address opens more connections than the per-source cap (512 by default): the ones over
/// it are closed at once, and another address is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_held_to_its_per_source_cap() {
    raise_own_nofile();
    let port = free_port();
    let b = broker_files(port).await;
    let client = switchboard_testkit::http_client();
    let mut broker = spawn(&b, port, None, "broker.log");
    broker.wait_ready(&client).await;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 2, 0, 1));
    let mut held = Vec::new();
    for _ in 0..600 {
        held.push(half_open(attacker, to).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = held.iter().filter(|c| closed_now(c)).count();
    assert_eq!(
        refused,
        600 - 512,
        "the connections over the cap were refused"
    );
    let mut more = half_open(attacker, to).await.unwrap();
    assert!(closed(&mut more).await, "and new ones from it still are");
    still_answering(&b, &broker, &client).await;
}

/// A child process (an agent, a namespace holder), killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Enrolls `host` over REST and runs a real `switchboard agent` for it, reporting every
/// `interval` and listing the sessions in `sessions` (one JSON object a line, read by `cat`).
async fn real_agent(b: &TestBroker, host: &str, interval: &str, sessions: &Path) -> Killed {
    let (status, enrolled) = b
        .call("POST", &format!("/api/v1/hosts/{host}/credentials"), None)
        .await;
    assert_eq!(status, 201, "{enrolled}");
    let credential = b.path().join(format!("{host}.credential"));
    std::fs::write(&credential, enrolled["credential"].as_str().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca = b.path().join("tls").join(switchboard_broker::pki::CA_CERT);
    let config = b.path().join(format!("{host}.agent.toml"));
    std::fs::write(
        &config,
        format!(
            "broker = \"127.0.0.1:{}\"\nca = {:?}\ncredential_file = {:?}\nhost = {host:?}\n\
             report_interval = {interval:?}\n[[source]]\nkind = \"command\"\n\
             list = [\"/bin/cat\", {:?}]\n",
            b.agent_port(),
            ca.display().to_string(),
            credential.display().to_string(),
            sessions.display().to_string(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["agent", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(b.path().join(format!("{host}.agent.log"))).unwrap())
        .spawn()
        .unwrap();
    Killed(child)
}

/// Waits until `host` is `up` and placeable; how long that took (fails after `within`).
async fn placeable(b: &TestBroker, host: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = b
            .client
            .get(format!("{}/api/v1/hosts/{host}", b.base))
            .bearer_auth(&b.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let h: Value = match r {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if h["health"] == "up" && h["excluded"].is_null() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{host} not placeable after {within:?}: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The live sessions on `host`: backend id → (session id, user, state).
async fn sessions_on(b: &TestBroker, host: &str) -> BTreeMap<String, (u64, String, String)> {
    let page = b
        .ok(
            "GET",
            &format!("/api/v1/sessions?host={host}&limit=1000"),
            None,
        )
        .await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["backend_id"].as_str().unwrap_or("-").to_owned(),
                (
                    s["id"].as_u64().unwrap(),
                    s["user"].as_str().unwrap().to_owned(),
                    s["state"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

/// Waits until the sessions on `host` are those `check` accepts (at most `within`).
async fn wait_sessions(
    b: &TestBroker,
    host: &str,
    within: Duration,
    check: impl Fn(&BTreeMap<String, (u64, String, String)>) -> bool,
) -> BTreeMap<String, (u64, String, String)> {
    let deadline = Instant::now() + within;
    loop {
        let now = sessions_on(b, host).await;
        if check(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "sessions on {host} now: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One line of the agent's session list.
fn listed(id: &str, user: &str) -> String {
    format!("{{\"id\": \"{id}\", \"user\": \"{user}\", \"state\": \"running\"}}\n")
}

/// The broker is SIGKILLed and started again on the same store and ports while a real
/// `switchboard agent` is linked to it. The agent links again by itself, and within a few report
/// intervals the host is `up` and takes placements; the sessions it reports keep their ids (none
/// is ended and adopted anew), and nothing acknowledged before the kill is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_and_restart_the_agent_relinks_and_its_sessions_keep_their_ids() {
    let port = free_port();
    let b = BrokerBuilder::new()
        .http_port(port)
        .agents()
        .pool(Pool::new("desktops").host(Host::new("h1", "127.0.0.54:22")))
        .write()
        .await;
    let mut broker = spawn(&b, port, None, "first.log");
    broker.wait_ready(&b.client).await;
    let list = b.path().join("sessions.jsonl");
    std::fs::write(&list, "").unwrap();
    let mut agent = real_agent(&b, "h1", "1s", &list).await;
    placeable(&b, "h1", Duration::from_secs(15)).await;

    // alice is placed and her session confirmed by the agent's report; bob's is adopted.
    let alice = b
        .ok(
            "POST",
            "/api/v1/sessions",
            Some(json!({"user": "alice", "pool": "desktops"})),
        )
        .await;
    assert_eq!(alice["host"], "h1", "{alice}");
    let alice = alice["id"].as_u64().unwrap();
    std::fs::write(
        &list,
        format!("{}{}", listed("x-alice", "alice"), listed("x-bob", "bob")),
    )
    .unwrap();
    let before = wait_sessions(&b, "h1", Duration::from_secs(10), |s| {
        s.len() == 2 && s.values().all(|(_, _, state)| state == "running")
    })
    .await;
    assert_eq!(before["x-alice"].0, alice, "{before:?}");
    b.ok(
        "PUT",
        "/api/v1/hosts/h1/weight",
        Some(json!({"weight": 42})),
    )
    .await;

    broker.child.kill().unwrap(); // SIGKILL
    broker.child.wait().unwrap();
    drop(broker);
    let mut broker = spawn(&b, port, None, "second.log");
    broker.wait_ready(&b.client).await;
    // The agent backs off 0.5 s, 1 s, 2 s... between attempts: a few report intervals at most.
    let took = placeable(&b, "h1", Duration::from_secs(10)).await;
    let carol = b
        .ok(
            "POST",
            "/api/v1/sessions",
            Some(json!({"user": "carol", "pool": "desktops"})),
        )
        .await;
    assert_eq!(carol["host"], "h1", "{carol}");
    let carol = carol["id"].as_u64().unwrap();
    std::fs::write(
        &list,
        format!(
            "{}{}{}",
            listed("x-alice", "alice"),
            listed("x-bob", "bob"),
            listed("x-carol", "carol")
        ),
    )
    .unwrap();
    let after = wait_sessions(&b, "h1", Duration::from_secs(10), |s| {
        s.len() == 3 && s.values().all(|(_, _, state)| state == "running")
    })
    .await;
    // The same sessions under the same ids, and carol's reservation confirmed.
    for k in ["x-alice", "x-bob"] {
        assert_eq!(after[k], before[k], "{k}: {before:?} then {after:?}");
    }
    assert_eq!(after["x-carol"].0, carol, "{after:?}");
    assert_eq!(b.ok("GET", "/api/v1/hosts/h1", None).await["weight"], 42);
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent kept running"
    );
    assert!(broker.child.try_wait().unwrap().is_none());
    eprintln!("h1 placeable {took:?} after the restarted broker was ready");
}

/// X2Go profiles for the flood: one desktop on loopback.
const PROFILES: &str = "\
[DEFAULT]
broker-agent-query-mode=NONE
broker-portscan-x2goservers=false
usebrokerpass=true

[desk]
name=Desk
host=vm (127.0.0.1)
command=XFCE
";

/// The AUTHID on the first line of an X2Go plain reply.
fn authid(body: &str) -> String {
    body.lines()
        .next()
        .and_then(|l| l.strip_prefix("AUTHID:"))
        .unwrap_or_else(|| panic!("no AUTHID in {body:?}"))
        .to_owned()
}

/// One signed-in X2Go client at `from` sending `events` client events down its AUTHID chain as
/// fast as they are answered; returns how many were answered 200.
async fn flood_from(
    base: String,
    from: IpAddr,
    user: &str,
    password: &str,
    events: usize,
) -> usize {
    switchboard_testkit::install_crypto();
    let client = reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let post = |body: String| {
        client
            .post(format!("{base}/plain/"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let r = post(format!(
        "task=listsessions&user={user}&password={password}&authid="
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{user} from {from} signs in");
    let mut id = authid(&r.text().await.unwrap());
    let mut answered = 0;
    for i in 0..events {
        let r = post(format!(
            "task=clientevent&user={user}&authid={id}&sid=desk&event=FLOOD{i}"
        ))
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 200, "event {i} from {from}");
        id = authid(&r.text().await.unwrap());
        answered += 1;
    }
    answered
}

/// Signed-in X2Go clients at 8 addresses in 127.0.0.0/8 send 4,000 `clientevent`s as fast as
/// they are answered, while an operator places and confirms sessions over REST. Every event is
/// answered; the placements all succeed, each within 3 s; the audit log took each client's
/// allowance (a burst, then one every 2 s), not the flood; and the broker stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_event_flood_leaves_placements_answering_and_the_audit_log_unflooded() {
    const CLIENTS: usize = 8;
    const EVENTS: usize = 500;
    let port = free_port();
    let b = BrokerBuilder::new()
        .http_port(port)
        .x2go(PROFILES)
        .password("alice", "alice-pw")
        .password("bob", "bob-pw")
        .pool(Pool::agentless_hosts("rest", &[("r1", 100), ("r2", 100)]))
        .write()
        .await;
    let mut broker = spawn(&b, port, None, "broker.log");
    broker.wait_ready(&b.client).await;
    let started = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for k in 0..CLIENTS {
        let from = IpAddr::V4(Ipv4Addr::new(127, 3, 0, k as u8 + 1));
        let (user, password) = if k % 2 == 0 {
            ("alice", "alice-pw")
        } else {
            ("bob", "bob-pw")
        };
        flood.spawn(flood_from(b.base.clone(), from, user, password, EVENTS));
    }
    // Placements go on meanwhile, one after the other, until the flood is over (at most 300).
    let mut latencies = Vec::new();
    while !flood.is_empty() && latencies.len() < 300 {
        let asked = Instant::now();
        let user = format!("op{}", latencies.len());
        let placed = tokio::time::timeout(
            Duration::from_secs(10),
            b.call(
                "POST",
                "/api/v1/sessions",
                Some(json!({"user": user, "pool": "rest"})),
            ),
        )
        .await
        .expect("the placement is answered");
        assert_eq!(placed.0, 200, "{}", placed.1);
        let id = placed.1["id"].as_u64().unwrap();
        let confirmed = tokio::time::timeout(
            Duration::from_secs(10),
            b.call("POST", &format!("/api/v1/sessions/{id}/confirm"), None),
        )
        .await
        .expect("the confirmation is answered");
        assert_eq!(confirmed.0, 200, "{}", confirmed.1);
        latencies.push(asked.elapsed());
        while let Some(done) = flood.try_join_next() {
            assert_eq!(done.unwrap(), EVENTS);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Some(done) = flood.join_next().await {
        assert_eq!(done.unwrap(), EVENTS);
    }
    let took = started.elapsed();
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(latencies.len() >= 5, "{} placements", latencies.len());
    assert!(
        slowest < Duration::from_secs(3),
        "slowest placement and confirmation: {slowest:?}"
    );

    // Let the admitted writes land, then count them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit = b.ok("GET", "/api/v1/audit?limit=1000", None).await;
    assert!(audit.is_array(), "{audit}");
    let written = switchboard_testkit::audit_count(&audit, "clientevent FLOOD");
    let burst = switchboard_broker::http::x2go::EVENT_BURST as usize;
    let every = switchboard_broker::http::x2go::EVENT_EVERY;
    let allowance = CLIENTS * (burst + (took.as_millis() / every.as_millis()) as usize + 1);
    assert!(
        (1..=allowance).contains(&written),
        "{written} of {} client events written (allowance {allowance} in {took:?})",
        CLIENTS * EVENTS
    );
    let health = b
        .client
        .get(format!("{}/readyz", b.base))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    assert!(broker.child.try_wait().unwrap().is_none());
    eprintln!(
        "{} events in {took:?}, {written} written; {} placements, slowest {slowest:?}",
        CLIENTS * EVENTS,
        latencies.len()
    );
}

/// A private mount namespace with a tmpfs of `size` mounted at `dir`, held open by a shell that
/// waits on its standard input (the namespace goes when it and the processes started in it
/// with [`in_namespace`] end). The tmpfs is seen only from inside.
fn tmpfs_namespace(dir: &Path, size: &str) -> Killed {
    use std::io::BufRead;
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=\"$1\" tmpfs \"$2\" && echo mounted && read x")
        .args(["sh", size, dir.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs `unshare` (util-linux) to run: {e}"));
    let mut line = String::new();
    let _ = std::io::BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
    if line.trim() != "mounted" {
        let out = holder.wait_with_output().unwrap();
        panic!(
            "this test needs `unshare -m` (a private mount namespace) and `mount -t tmpfs` in it, \
             as root or with CAP_SYS_ADMIN; they failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Killed(holder)
}

/// `args` run inside the mount namespace of `holder` (nsenter execs them: the child is the
/// program itself).
fn in_namespace(holder: &Killed, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.args(["-t", &holder.0.id().to_string(), "-m", "--"])
        .args(args);
    c
}

/// The real broker started inside the namespace of `holder`.
fn spawn_in(holder: &Killed, b: &TestBroker, port: u16, log: &str) -> RealBroker {
    let child = in_namespace(
        holder,
        &[
            env!("CARGO_BIN_EXE_switchboard"),
            "broker",
            "--config",
            b.config_path().to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(b.path().join(log)).unwrap())
    .spawn()
    .unwrap_or_else(|e| panic!("this test needs `nsenter` (util-linux) to run: {e}"));
    RealBroker {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// A request that must be answered within 15 s: (status, JSON body).
async fn timed_call(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    tokio::time::timeout(Duration::from_secs(15), b.call(method, path, body))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} did not answer within 15 s"))
}

/// The SQLite file lives on an 8 MiB tmpfs that fills up. Writes are refused cleanly (503 with a
/// JSON error, answered in seconds; the broker keeps running and serving reads); once space
/// returns the broker writes again by itself, with no restart; and after a restart every
/// acknowledged write is in the store and no refused one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_503_and_the_broker_recovers_when_space_returns() {
    let port = free_port();
    let files = BrokerBuilder::new();
    let db_dir = files.path().join("db");
    std::fs::create_dir(&db_dir).unwrap();
    let b = files
        .store_url(&format!(
            "sqlite://{}",
            db_dir.join("switchboard.db").display()
        ))
        .http_port(port)
        .pool(Pool::agentless_hosts(
            "desktops",
            &[("h1", 100), ("h2", 100)],
        ))
        .write()
        .await;
    let ns = tmpfs_namespace(&db_dir, "8m");
    let mut broker = spawn_in(&ns, &b, port, "first.log");
    broker.wait_ready(&b.client).await;

    // Acknowledged before the disk fills.
    let mut confirmed = Vec::new();
    for i in 0..20 {
        confirmed.push(b.start_session(&format!("before{i}"), "desktops").await.0);
    }
    b.ok("PUT", "/api/v1/hosts/h1/weight", Some(json!({"weight": 7})))
        .await;

    let fill = in_namespace(
        &ns,
        &[
            "dd",
            "if=/dev/zero",
            &format!("of={}", db_dir.join("filler").display()),
            "bs=64k",
        ],
    )
    .output()
    .unwrap();
    assert!(
        String::from_utf8_lossy(&fill.stderr).contains("No space left"),
        "dd fills the tmpfs: {}",
        String::from_utf8_lossy(&fill.stderr)
    );

    // Writes go on until one is refused (the write-ahead log may have room for a few more).
    let mut h2 = 100;
    let mut refused = None;
    for w in 1..=200u32 {
        let asked = Instant::now();
        let got = timed_call(
            &b,
            "PUT",
            "/api/v1/hosts/h2/weight",
            Some(json!({"weight": w})),
        )
        .await;
        match got.0 {
            200 => h2 = w,
            503 => {
                switchboard_testkit::broker::assert_error(&got, 503, "store_unavailable");
                refused = Some((w, asked.elapsed()));
                break;
            }
            s => panic!("a write on a full disk answered {s}: {}", got.1),
        }
    }
    let (refused_weight, answered_in) = refused.expect("a write was refused on the full disk");
    assert!(
        answered_in < Duration::from_secs(10),
        "the refusal took {answered_in:?}"
    );
    // While the disk is full, more writes are refused too.
    let placed = timed_call(
        &b,
        "POST",
        "/api/v1/sessions",
        Some(json!({"user": "refused", "pool": "desktops"})),
    )
    .await;
    let refused_session = if placed.0 == 200 {
        let id = placed.1["id"].as_u64().unwrap();
        let got = timed_call(&b, "POST", &format!("/api/v1/sessions/{id}/confirm"), None).await;
        switchboard_testkit::broker::assert_error(&got, 503, "store_unavailable");
        Some(id)
    } else {
        switchboard_testkit::broker::assert_error(&placed, 503, "store_unavailable");
        None
    };
    let got = timed_call(&b, "POST", "/api/v1/hosts/h1/drain", None).await;
    switchboard_testkit::broker::assert_error(&got, 503, "store_unavailable");
    // Reads are served, and show the last acknowledged weight, not the refused one.
    let h2_now = timed_call(&b, "GET", "/api/v1/hosts/h2", None).await;
    assert_eq!(h2_now.0, 200, "{}", h2_now.1);
    assert_eq!(h2_now.1["weight"], h2, "refused weight {refused_weight}");
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the broker runs on"
    );

    // Space returns: writes succeed again within seconds, with the same process.
    let rm = in_namespace(&ns, &["rm", db_dir.join("filler").to_str().unwrap()])
        .status()
        .unwrap();
    assert!(rm.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = timed_call(
            &b,
            "PUT",
            "/api/v1/hosts/h2/weight",
            Some(json!({"weight": 250})),
        )
        .await;
        if got.0 == 200 {
            break;
        }
        assert_eq!(got.0, 503, "{}", got.1);
        assert!(
            Instant::now() < deadline,
            "no write succeeded 10 s after space returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    confirmed.push(b.start_session("after", "desktops").await.0);
    assert!(broker.child.try_wait().unwrap().is_none(), "no restart");

    // After a restart, everything acknowledged is there and nothing refused.
    broker.child.kill().unwrap();
    broker.child.wait().unwrap();
    drop(broker);
    let mut broker = spawn_in(&ns, &b, port, "second.log");
    broker.wait_ready(&b.client).await;
    for id in &confirmed {
        let s = b.ok("GET", &format!("/api/v1/sessions/{id}"), None).await;
        assert_eq!(s["state"], "running", "session {id}: {s}");
    }
    if let Some(id) = refused_session {
        let (status, s) = b.call("GET", &format!("/api/v1/sessions/{id}"), None).await;
        assert!(
            status == 404 || s["state"] != "running",
            "refused session {id}: {s}"
        );
    }
    let h1 = b.ok("GET", "/api/v1/hosts/h1", None).await;
    assert_eq!(h1["weight"], 7);
    assert_eq!(h1["admin"], "online", "the refused drain did not happen");
    assert_eq!(b.ok("GET", "/api/v1/hosts/h2", None).await["weight"], 250);
    eprintln!("refused at weight {refused_weight} after {answered_in:?}");
}
