//! The gateway's added latency per WebSocket round trip: a TCP echo server as the session, a
//! WebSocket client sending 64-byte binary messages and waiting for each echo. Measured direct
//! (TCP, the floor), through the gateway (token URL, plain ws on loopback), and through websockify
//! (Debian `websockify`, the usual WebSocket-to-TCP relay, noVNC's) when it is installed.
//!
//! Run: `cargo bench -p switchboard-broker --bench gateway_rtt` (`ROUNDS=…`, default 20,000).
#![allow(clippy::unwrap_used)] // a failed step fails the run loudly
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard_broker::Broker;
use switchboard_broker::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const SIZE: usize = 64;

async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(v[v.len() / 2]), us(v[v.len() * 99 / 100]))
}

async fn direct(addr: SocketAddr, rounds: usize) -> Vec<Duration> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let msg = [7u8; SIZE];
    let mut buf = [0u8; SIZE];
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        out.push(t.elapsed());
    }
    out
}

async fn websocket(url: &str, rounds: usize) -> Vec<Duration> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "binary".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let msg = vec![7u8; SIZE];
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        ws.send(Message::Binary(msg.clone().into())).await.unwrap();
        let mut got = 0;
        while got < SIZE {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => got += b.len(),
                Message::Text(t) => got += t.len(),
                _ => {}
            }
        }
        out.push(t.elapsed());
    }
    let _ = ws.close(None).await;
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    switchboard_auth::file::set_password(&d.join("passwd"), "alice", "alice-pw").unwrap();
    let text = format!(
        "data_dir = {dir:?}\n[store]\nurl = \"sqlite://{dir}/db\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [api]\ntokens_file = \"{dir}/tokens\"\n[management]\nsocket = \"{dir}/mgmt.sock\"\n\
         [auth]\nmethod = \"file:{dir}/passwd\"\n\
         [gateway]\nlisten = \"127.0.0.1:0\"\n[[gateway.target]]\ntype = \"echo\"\naddress = \"{echo}\"\n",
        dir = d.display(),
    );
    std::fs::write(d.join("tokens"), "").unwrap();
    let stop = CancellationToken::new();
    let broker = Broker::start(Config::parse(&text, "bench.toml").unwrap(), stop.clone())
        .await
        .unwrap();
    let gw = broker.gateway_addr.unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("http://{gw}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=alice&password=alice-pw")
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let landing = http
        .get(format!("http://{gw}/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let end = landing.find(".echo</code>").expect("a connect URL");
    let start = landing[..end].rfind("ws://").unwrap();
    let url = format!("{}.echo", &landing[start..end]);

    // Warm up, then interleave three rounds of each and keep all samples.
    let _ = direct(echo, 1000).await;
    let _ = websocket(&url, 1000).await;
    let websockify = if std::path::Path::new("/usr/bin/websockify").exists() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("websockify")
            .args([format!("127.0.0.1:{port}"), echo.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = websocket(&format!("ws://127.0.0.1:{port}/"), 1000).await;
        Some((child, format!("ws://127.0.0.1:{port}/")))
    } else {
        None
    };
    let (mut d_all, mut g_all, mut w_all) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        d_all.extend(direct(echo, rounds / 3).await);
        g_all.extend(websocket(&url, rounds / 3).await);
        if let Some((_, u)) = &websockify {
            w_all.extend(websocket(u, rounds / 3).await);
        }
    }
    let (d50, d99) = percentiles(d_all);
    let (g50, g99) = percentiles(g_all);
    println!("{rounds} round trips of {SIZE} bytes each way, loopback, 3 interleaved runs");
    println!();
    println!("| path | p50 µs | p99 µs | added p50 µs | added p99 µs |");
    println!("|---|---:|---:|---:|---:|");
    println!("| direct TCP | {d50:.1} | {d99:.1} | - | - |");
    println!(
        "| Switchboard gateway (ws) | {g50:.1} | {g99:.1} | {:.1} | {:.1} |",
        g50 - d50,
        g99 - d99
    );
    if let Some((mut child, _)) = websockify {
        let (w50, w99) = percentiles(w_all);
        println!(
            "| websockify 0.10 (ws) | {w50:.1} | {w99:.1} | {:.1} | {:.1} |",
            w50 - d50,
            w99 - d99
        );
        println!();
        println!(
            "added latency, websockify / gateway: p50 {:.2}x, p99 {:.2}x",
            (w50 - d50) / (g50 - d50),
            (w99 - d99) / (g99 - d99)
        );
        let _ = child.kill();
        let _ = child.wait();
    } else {
        println!("| websockify: not installed (apt-get install websockify) | | | | |");
    }
    stop.cancel();
}
