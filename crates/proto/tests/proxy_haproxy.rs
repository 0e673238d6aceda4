//! The PROXY protocol v2 parser against a real peer: HAProxy relays a TCP connection with
//! `send-proxy-v2` to a listener here, and what arrives must parse to the client's and the
//! frontend's addresses, with the client's bytes right after the header. HAProxy is asked for a
//! TLV as well (`proxy-v2-options unique-id`), so skipping TLVs is tested on its encoding too.
//!
//! Skips (passing, with a message) only when `haproxy` is not on PATH; `scripts/test` installs it.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use switchboard_proto::proxy::{MAX_HEADER, Parsed, parse};

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// HAProxy, stopped when dropped (a failing test leaves no process behind).
struct Haproxy(Child, PathBuf);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_header_from_haproxy_parses_to_the_client_and_frontend_addresses() {
    let Some(haproxy) = on_path("haproxy") else {
        eprintln!("skipping: haproxy is not on PATH (scripts/test installs it)");
        return;
    };
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
         frontend f\n  bind {frontend}\n  unique-id-format %ci:%cp\n  default_backend b\n\
         backend b\n  server s {} send-proxy-v2 proxy-v2-options unique-id\n",
        backend.local_addr().unwrap()
    );
    let path = std::env::temp_dir().join(format!(
        "switchboard-proxy-haproxy-{}-{}.cfg",
        std::process::id(),
        frontend.port()
    ));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _haproxy = Haproxy(child, path);

    // Until HAProxy listens (a few tries, 10 s at most).
    let mut client = None;
    for _ in 0..200 {
        match TcpStream::connect(frontend) {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => sleep(Duration::from_millis(50)),
        }
    }
    let mut client = client.expect("haproxy did not listen within 10 s");
    client.write_all(b"SSH-2.0-test\r\n").unwrap();

    backend.set_nonblocking(true).unwrap();
    let mut server = None;
    for _ in 0..200 {
        match backend.accept() {
            Ok((s, _)) => {
                server = Some(s);
                break;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => sleep(Duration::from_millis(50)),
            Err(e) => panic!("accept: {e}"),
        }
    }
    let mut server = server.expect("haproxy did not connect to the backend within 10 s");
    server.set_nonblocking(false).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // Read as a server would: parse what has arrived after each read.
    let mut got = Vec::new();
    let (source, destination, consumed) = loop {
        match parse(&got).unwrap() {
            Parsed::Header {
                source,
                destination,
                consumed,
            } => break (source, destination, consumed),
            Parsed::Incomplete => {
                assert!(got.len() < MAX_HEADER);
                let mut buf = [0; 256];
                let n = server.read(&mut buf).unwrap();
                assert!(n > 0, "haproxy closed after {} bytes: {got:?}", got.len());
                got.extend_from_slice(&buf[..n]);
            }
        }
    };
    assert_eq!(source, Some(client.local_addr().unwrap()));
    assert_eq!(destination, Some(frontend));
    // Address block (12 bytes) and the unique-id TLV: type 0x05, length, "127.0.0.1:PORT".
    let id = format!("{}", client.local_addr().unwrap());
    assert_eq!(consumed, 16 + 12 + 3 + id.len(), "{got:?}");
    assert_eq!(got[28], 0x05);
    assert_eq!(&got[31..consumed], id.as_bytes());

    // The client's bytes follow the header.
    while got.len() < consumed + 14 {
        let mut buf = [0; 256];
        let n = server.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&got[consumed..], b"SSH-2.0-test\r\n");
}
