#![allow(clippy::unwrap_used)]
//! The director following a broker pool through `GET /api/v1/pools/{name}/watch`: the real
//! `switchboard broker` and `switchboard director` processes. Hosts join as backends, a drain
//! made on the broker reaches the director, and when the broker is killed the director keeps
//! balancing on the last view.
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_broker::tokens::{self, Access};
use switchboard_testkit::broker::{BrokerBuilder, Host, Pool};
use switchboard_testkit::free_port;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backend on `ip:port` that writes its address and closes each connection.
fn backend(ip: &str, port: u16) {
    let l = TcpListener::bind((ip, port)).unwrap();
    let ip = ip.to_owned();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            use std::io::Write;
            let _ = writeln!(s, "{ip}");
        }
    });
}

fn through(port: u16) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

fn spread(port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        *m.entry(through(port)).or_insert(0) += 1;
    }
    m
}

fn ctl(socket: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_director_follows_a_broker_pool_and_keeps_the_last_view_when_the_broker_dies() {
    let (api, port, listen) = (free_port(), free_port(), free_port());
    let pool = (1..=3).fold(Pool::new("login").agentless(), |p, i| {
        p.host(Host::new(&format!("h{i}"), &format!("127.0.0.{i}:22")))
    });
    let files = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(BrokerBuilder::new().http_port(api).pool(pool).write());
    let d = files.path();
    let reader = tokens::add(&files.tokens_file, "director", Access::ReadOnly).unwrap();
    std::fs::write(d.join("director.token"), format!("{reader}\n")).unwrap();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        backend(ip, port);
    }
    let broker = Kill(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["broker", "--config"])
            .arg(files.config_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the broker", || {
        TcpStream::connect(("127.0.0.1", api)).is_ok()
    });

    let socket = d.join("director.sock");
    std::fs::write(
        d.join("director.toml"),
        format!(
            "[management]\nsocket = {:?}\n[state]\nfile = {:?}\n[broker]\nurl = \"http://127.0.0.1:{api}\"\ntoken_file = {:?}\n\
             [[service]]\nname = \"login\"\nlisten = \"127.0.0.1:{listen}\"\nscheduler = \"rr\"\npool = \"login\"\nport = {port}\n",
            socket.display().to_string(),
            d.join("state.json").display().to_string(),
            d.join("director.token").display().to_string(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("director.log")).unwrap();
    let _director = Kill(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["director", "--config"])
            .arg(d.join("director.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until("three backends from the pool", || {
        ctl(&socket, &["services"])
            .lines()
            .filter(|l| l.trim_start().starts_with("->") && l.ends_with(" up"))
            .count()
            == 3
    });
    let m = spread(listen, 6);
    assert_eq!(
        m,
        BTreeMap::from([
            ("127.0.0.1".to_owned(), 2),
            ("127.0.0.2".to_owned(), 2),
            ("127.0.0.3".to_owned(), 2)
        ])
    );

    // Drain h2 on the broker: the director stops sending it new connections.
    let out = ctl(&d.join("mgmt.sock"), &["drain", "h2"]);
    assert!(out.contains("h2"), "{out}");
    let row = format!("127.0.0.2:{port} ");
    wait_until("the drain to reach the director", || {
        ctl(&socket, &["services"])
            .lines()
            .any(|l| l.contains(&row) && l.ends_with("drain"))
    });
    let m = spread(listen, 6);
    assert!(!m.contains_key("127.0.0.2"), "{m:?}");

    // A runtime weight of 0 on the director quiesces a backend too; `reset` brings back the
    // broker's weight.
    let h3 = format!("127.0.0.3:{port}");
    let out = ctl(&socket, &["weight", "login", &h3, "0"]);
    assert!(out.contains("weight 0"), "{out}");
    let m = spread(listen, 4);
    assert_eq!(m, BTreeMap::from([("127.0.0.1".to_owned(), 4)]), "weight 0");
    let out = ctl(&socket, &["weight", "login", &h3, "reset"]);
    assert!(out.contains("weight 100"), "{out}");
    let m = spread(listen, 4);
    assert_eq!(m.get("127.0.0.3"), Some(&2), "{m:?}");

    // The broker dies: the director keeps its last view.
    drop(broker);
    std::thread::sleep(Duration::from_secs(2));
    let m = spread(listen, 6);
    assert_eq!(
        m,
        BTreeMap::from([("127.0.0.1".to_owned(), 3), ("127.0.0.3".to_owned(), 3)])
    );
    let services = ctl(&socket, &["services"]);
    assert!(
        services
            .lines()
            .any(|l| l.contains(&row) && l.ends_with("drain")),
        "{services}"
    );
}

/// With `proxy_protocol = "v2"` the backend first reads a PROXY v2 header naming the client's
/// source address and port and the address it connected to, then the client's bytes; replies
/// flow back, and a half-close from the client reaches the backend as end of stream.
#[test]
fn proxy_protocol_v2_carries_the_client_address_and_half_close_is_passed_on() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (listen, backend_port, http) = (free_port(), free_port(), free_port());
    let backend = TcpListener::bind(("127.0.0.1", backend_port)).unwrap();
    std::fs::write(
        d.join("director.toml"),
        format!(
            "[management]\nsocket = {:?}\n[state]\nfile = {:?}\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [[service]]\nname = \"pp\"\nlisten = \"127.0.0.1:{listen}\"\nscheduler = \"rr\"\nproxy_protocol = \"v2\"\n\
             backends = [\"127.0.0.1:{backend_port}\"]\n[service.health]\nkind = \"none\"\n",
            d.join("director.sock").display().to_string(),
            d.join("state.json").display().to_string(),
        ),
    )
    .unwrap();
    let _director = Kill(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["director", "--config"])
            .arg(d.join("director.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the director", || {
        TcpStream::connect(("127.0.0.1", listen)).is_ok()
    });
    // That probe connection reaches the backend too; close it.
    drop(backend.accept().unwrap());

    let client = std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{listen}").parse().unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    let source = client.local_addr().unwrap();
    let (mut server, _) = backend.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut client = client;
    client.write_all(b"hello").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(got[12], 0x21, "version 2, PROXY command");
    assert_eq!(got[13], 0x11, "TCP over IPv4");
    assert_eq!(&got[14..16], &12u16.to_be_bytes());
    assert_eq!(&got[16..20], &[127, 0, 0, 1]);
    assert_eq!(&got[20..24], &[127, 0, 0, 1]);
    assert_eq!(&got[24..26], &source.port().to_be_bytes());
    assert_eq!(&got[26..28], &listen.to_be_bytes());
    assert_eq!(
        &got[28..],
        b"hello",
        "the client's bytes follow, then end of stream"
    );
    // The other direction still works after the client's half-close.
    server.write_all(b"bye").unwrap();
    drop(server);
    let mut reply = Vec::new();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"bye");

    // The same figures on /metrics: two connections (the probe and this one), 5 bytes in
    // (the header is the director's own), 3 bytes out.
    let labels = format!("{{service=\"pp\",backend=\"127.0.0.1:{backend_port}\"}}");
    let mut metrics = String::new();
    wait_until("the connection to end in /metrics", || {
        let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        metrics.clear();
        s.read_to_string(&mut metrics).unwrap();
        metrics.contains(&format!(
            "switchboard_director_backend_active_connections{labels} 0"
        )) && metrics.contains(&format!(
            "switchboard_director_backend_inactive_connections{labels} 0"
        ))
    });
    for line in [
        format!("switchboard_director_backend_connections_total{labels} 2"),
        format!("switchboard_director_backend_in_bytes_total{labels} 5"),
        format!("switchboard_director_backend_out_bytes_total{labels} 3"),
        format!("switchboard_director_backend_up{labels} 1"),
        format!("switchboard_director_backend_weight{labels} 100"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
}
