//! Hostile peers against the real `switchboard broker`: connections held open for free, from
//! many addresses and from one, with the descriptor limit a unit file gives. Each test says what
//! the broker must keep doing. (The store's faults are in `crates/broker/tests/outage.rs`; all
//! of them mixed, for minutes, in `bench/soak.sh`.)
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use switchboard_testkit::broker::{BrokerBuilder, Pool, TestBroker};
use switchboard_testkit::free_port;
use switchboard_testkit::process::RealBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

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
