//! The gateway end to end: a real Xpra 3.1.3 server (Debian `xpra`) as the session, the real Xpra
//! client (`xpra info` / `xpra attach` over `wss://` with the token URL) on the other side, and the
//! gateway's TLS listener, sign-in and relay in between. Once through a static target, once through
//! a Kubernetes pool on the fake API server (whose pod IP and session port point at the same real
//! Xpra server).
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

use switchboard_broker::Broker;
use switchboard_testkit::broker::{BrokerBuilder, TestBroker};
use switchboard_testkit::kubeapi::FakeApiServer;

/// A real Xpra server on a loopback TCP port; killed on drop.
struct Xpra {
    child: Child,
    port: u16,
    display: u16,
    _dir: tempfile::TempDir,
}

impl Xpra {
    fn start() -> Xpra {
        assert!(
            Path::new("/usr/bin/xpra").exists(),
            "the gateway test needs Debian's xpra (./scripts/test installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = switchboard_testkit::free_port();
        let display_number = 200 + port % 5000;
        let display = format!(":{display_number}");
        let log = std::fs::File::create(dir.path().join("xpra.log")).unwrap();
        let child = Command::new("xpra")
            .args(["start", &display, &format!("--bind-tcp=127.0.0.1:{port}")])
            .args([
                "--daemon=no",
                "--mdns=no",
                "--pulseaudio=no",
                "--notifications=no",
                "--webcam=no",
                "--html=off",
                "--systemd-run=no",
                "--dbus-launch=",
                "--dbus-proxy=no",
                "--speaker=off",
                "--microphone=off",
                "--bell=no",
                "--clipboard=no",
                "--printing=no",
                "--file-transfer=no",
                "--start-new-commands=no",
                "--xsettings=no",
                "--tray=no",
                "--system-tray=no",
                "--av-sync=no",
            ])
            .arg(format!("--socket-dirs={}", dir.path().display()))
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("xpra starts");
        let x = Xpra {
            child,
            port,
            display: display_number,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "xpra did not listen on {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        x
    }
}

impl Drop for Xpra {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        // The server's Xvfb runs in a session of its own; its X lock file names it.
        if let Ok(pid) = std::fs::read_to_string(format!("/tmp/.X{}-lock", self.display))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Stops `child`'s process group (SIGTERM, then SIGKILL after 5 s) and reaps `child`.
fn kill_group(child: &mut Child) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let group = Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
}

/// Runs `xpra info URL` (the real client: websocket upgrade, hello, info request) against the
/// gateway, trusting `ca`.
fn xpra_info(url: &str, ca: &Path) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["60", "xpra", "info", url])
        .arg(format!("--ssl-ca-certs={}", ca.display()))
        .env("XDG_RUNTIME_DIR", ca.parent().unwrap())
        .stdin(Stdio::null())
        .output()
        .expect("xpra info runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `xpra attach URL` (the real GTK client) on a private Xvfb display; killed on drop.
struct Attached(Child, tempfile::TempDir);

impl Attached {
    fn start(url: &str, ca: &Path) -> Attached {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("attach.log")).unwrap();
        let child = Command::new("xvfb-run")
            .args(["-a", "xpra", "attach", url])
            .arg(format!("--ssl-ca-certs={}", ca.display()))
            .args([
                "--mdns=no",
                "--pulseaudio=no",
                "--speaker=off",
                "--microphone=off",
                "--webcam=no",
                "--notifications=no",
                "--tray=no",
                "--clipboard=no",
                "--printing=no",
                "--file-transfer=no",
                "--bell=no",
                "--opengl=no",
            ])
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("xvfb-run xpra attach runs");
        Attached(child, dir)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.1.path().join("attach.log")).unwrap_or_default()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // xvfb-run starts Xvfb and the client in the child's process group.
        kill_group(&mut self.0);
    }
}

/// Asks the Xpra server directly how many clients it has.
fn clients_of(port: u16) -> Option<u32> {
    let out = Command::new("timeout")
        .args(["30", "xpra", "info", &format!("tcp://127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("clients=")?.trim().parse().ok())
}

struct H {
    b: TestBroker,
    broker: Broker,
    gw: String,
    ca: PathBuf,
    client: reqwest::Client,
    token: String,
    /// The gateway's certificate (PEM), for raw TLS clients.
    cert: String,
}

impl H {
    async fn start(extra: impl FnOnce(&Path) -> String) -> H {
        H::start_with(extra, |b| b).await
    }

    /// [`H::start`], with more settings of the builder.
    async fn start_with(
        extra: impl FnOnce(&Path) -> String,
        tweak: impl FnOnce(BrokerBuilder) -> BrokerBuilder,
    ) -> H {
        switchboard_testkit::install_crypto();
        let b = tweak(BrokerBuilder::new().password("alice", "alice-pw"));
        let d = b.path().to_owned();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let ca = d.join("gw.crt");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        std::fs::write(d.join("gw.key"), cert.signing_key.serialize_pem()).unwrap();
        let extra = extra(&d);
        let gateway = format!(
            "listen = \"127.0.0.1:0\"\ntls_cert = \"{d}/gw.crt\"\ntls_key = \"{d}/gw.key\"\n{}",
            gateway_extra(&extra),
            d = d.display()
        );
        let mut b = b
            .set("gateway", gateway.trim_end())
            .toml(&extra)
            .start()
            .await;
        let broker = b.broker.take().unwrap();
        let gw = format!("127.0.0.1:{}", broker.gateway_addr.unwrap().port());
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap(),
            )
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        H {
            token: b.token.clone(),
            b,
            broker,
            gw,
            ca,
            client,
            cert: cert.cert.pem(),
        }
    }

    /// Signs in; returns the cookie.
    async fn sign_in(&self, user: &str, password: &str) -> Option<String> {
        let r = self
            .client
            .post(format!("https://{}/login", self.gw))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("user={user}&password={password}"))
            .send()
            .await
            .unwrap();
        let set = r.headers().get("set-cookie")?.to_str().unwrap().to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure"),
            "{set}"
        );
        Some(set.split(';').next().unwrap().to_string())
    }

    async fn get(&self, path: &str, cookie: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("https://{}{path}", self.gw))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// Lines the `extra` text wants inside `[gateway]` (marked `#gateway:`).
fn gateway_extra(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix("#gateway:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The `t.<token>.<type>` URL on the landing page.
fn token_url(landing: &str, ty: &str) -> String {
    let end = landing
        .find(&format!(".{ty}</code>"))
        .expect("a connect URL on the landing page");
    let start = landing[..end].rfind("wss://").unwrap();
    format!("{}.{ty}", &landing[start..end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xpra_client_reaches_a_static_target_through_the_gateway() {
    let xpra = Xpra::start();
    let port = xpra.port;
    let h = H::start(|_| format!("#gateway:[[gateway.target]]\n#gateway:type = \"desktop\"\n#gateway:address = \"127.0.0.1:{port}\"\n"))
        .await;
    // Wrong password: no cookie, the form again.
    assert!(h.sign_in("alice", "nope").await.is_none());
    let (status, _) = h.get("/", "").await;
    assert_eq!(status, 303, "the landing page needs a sign-in");
    let cookie = h.sign_in("alice", "alice-pw").await.expect("signed in");
    let (status, landing) = h.get("/", &cookie).await;
    assert_eq!(status, 200);
    assert!(landing.contains("/start/desktop"), "{landing}");
    let url = token_url(&landing, "desktop");
    // The real Xpra client, through TLS, the WebSocket upgrade and the relay, to the real server.
    let ca = h.ca.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || xpra_info(&url, &ca))
        .await
        .unwrap();
    assert!(
        ok && out.contains("server.mode=") || out.contains("clients="),
        "xpra info failed:\n{out}"
    );
    // A made-up token gets nowhere.
    let bad = format!("wss://{}/t.{}.desktop", h.gw, "0".repeat(32));
    let ca = h.ca.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || xpra_info(&bad, &ca))
        .await
        .unwrap();
    assert!(!ok, "a bad token must not connect:\n{out}");
    // The waiting page's events say ready at once for a static target.
    let (status, events) = h.get("/events/desktop", &cookie).await;
    assert_eq!(status, 200);
    assert!(events.contains("event: ready"), "{events}");
    // The HTML5 client is served.
    let (status, html) = h.get("/client/index.html", &cookie).await;
    assert_eq!(status, 200);
    assert!(html.contains("Xpra"), "the HTML5 client page");
    let (status, _) = h.get("/client/..%2Fpasswd", &cookie).await;
    assert_eq!(status, 404);
    // A real browser: sign-in form, landing page, waiting page, then the Xpra HTML5 client over the
    // gateway's WebSocket with the sign-in cookie, until the client reports itself connected.
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/browser` (./scripts/test does)"
    );
    let shots = h.b.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new("timeout")
        .arg("120")
        .arg("node")
        .arg(browser_dir.join("gateway.mjs"))
        .args([&format!("https://{}", h.gw), "alice", "alice-pw", "desktop"])
        .arg(&shots)
        .output()
        .await
        .expect("node runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("connected desktop"),
        "the browser did not connect:\n{text}"
    );
    drop(xpra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xpra_client_reaches_a_kubernetes_session_through_the_gateway() {
    let xpra = Xpra::start();
    let api = FakeApiServer::start().await;
    let port = xpra.port;
    let api_kubeconfig = api.kubeconfig("sessions");
    let h = H::start(|d| {
        std::fs::write(d.join("kubeconfig"), &api_kubeconfig).unwrap();
        std::fs::create_dir_all(d.join("types/default")).unwrap();
        std::fs::write(
            d.join("types/default/xfce.yaml"),
            format!(
                "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: xpra\n      image: xpra-xfce\n      \
                 ports: [{{ name: xpra, containerPort: {port} }}]\n      readinessProbe: {{ tcpSocket: {{ port: {port} }} }}\n"
            ),
        )
        .unwrap();
        format!(
            "[[pool]]\nname = \"desktops\"\nkind = \"kubernetes\"\nnamespace = \"sessions\"\nkubeconfig = \"{d}/kubeconfig\"\n\
             templates = \"{d}/types\"\n#gateway:pool = \"desktops\"\n",
            d = d.display()
        )
    })
    .await;
    let cookie = h.sign_in("alice", "alice-pw").await.unwrap();
    let (_, landing) = h.get("/", &cookie).await;
    let url = token_url(&landing, "xfce");
    let ca = h.ca.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || xpra_info(&url, &ca))
        .await
        .unwrap();
    assert!(
        ok && out.contains("clients="),
        "xpra info through a pod failed:\n{out}"
    );
    // The pod was made from the template, for alice.
    let pod = api.pod("sessions", "alice-xfce").expect("alice's pod");
    assert_eq!(
        pod.metadata.annotations.unwrap()["switchboard.io/user"],
        "alice"
    );
    // The REST API lists it and logs it off.
    let api_base = format!("http://{}", h.broker.http_addr);
    let c = reqwest::Client::new();
    let list: serde_json::Value = c
        .get(format!("{api_base}/api/v1/kubernetes/desktops/sessions"))
        .bearer_auth(&h.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["pod"], "alice-xfce", "{list}");
    assert_eq!(list[0]["state"], "ready", "{list}");
    let r = c
        .delete(format!(
            "{api_base}/api/v1/kubernetes/desktops/sessions/alice/xfce"
        ))
        .bearer_auth(&h.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(api.pod("sessions", "alice-xfce").is_none());
    // Start again through the REST API with progress events.
    let sse = c
        .post(format!("{api_base}/api/v1/kubernetes/desktops/sessions"))
        .bearer_auth(&h.token)
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({ "user": "alice", "session_type": "xfce" }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sse.contains("event: progress") && sse.contains("event: ready"),
        "{sse}"
    );
    assert!(
        sse.contains("\"stage\""),
        "waiting stages are reported: {sse}"
    );
    // `xpra attach` (the real client, on its own Xvfb) stays attached through the gateway; the
    // session counts its connection while it does, and not after.
    let (_, landing) = h.get("/", &cookie).await;
    let url = token_url(&landing, "xfce");
    let mut attached = Attached::start(&url, &h.ca);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let p = port;
        if tokio::task::spawn_blocking(move || clients_of(p))
            .await
            .unwrap()
            == Some(1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "xpra attach did not attach within 90 s:\n{}",
            attached.log()
        );
        if let Ok(Some(st)) = attached.0.try_wait() {
            panic!("xpra attach exited ({st}):\n{}", attached.log());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sessions = |c: reqwest::Client, base: String, token: String| async move {
        let v: serde_json::Value = c
            .get(format!("{base}/api/v1/kubernetes/desktops/sessions"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v
    };
    let list = sessions(c.clone(), api_base.clone(), h.token.clone()).await;
    assert_eq!(list[0]["connections"], 1, "{list}");
    drop(attached);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = sessions(c.clone(), api_base.clone(), h.token.clone()).await;
        if list[0]["connections"] == 0 {
            assert!(list[0]["disconnected_since"].is_u64(), "{list}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connection was not counted off: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = &h.b;
    drop(xpra);
}

/// What a raw client sends before its TLS handshake.
#[derive(Clone, Copy)]
enum Before {
    Nothing,
    /// A PROXY v2 header naming this client.
    Proxy(&'static str),
    /// A PROXY v2 `LOCAL` header (the proxy's own health check).
    Local,
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the gateway from the loopback address `source`.
async fn raw_tls(h: &H, source: &str, before: Before) -> std::io::Result<Tls> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(format!("{source}:0").parse().unwrap())?;
    let gw: std::net::SocketAddr = h.gw.parse().unwrap();
    let mut tcp = sock.connect(gw).await?;
    match before {
        Before::Nothing => {}
        Before::Proxy(client) => {
            let client: std::net::SocketAddr = format!("{client}:40000").parse().unwrap();
            tcp.write_all(&switchboard_proto::proxy::proxy_v2_header(client, gw))
                .await?;
        }
        Before::Local => {
            let mut b = switchboard_proto::proxy::SIGNATURE.to_vec();
            b.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            tcp.write_all(&b).await?;
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(h.cert.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// Sends `request` and reads the response head: (status, head).
async fn send(tls: &mut Tls, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, tls.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head)
}

/// GET `path` over a raw connection (closed after the response).
fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// A WebSocket upgrade of `path`, as `xpra attach` sends it.
fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: binary\r\n\r\n"
    )
}

/// A session stand-in: a TCP listener that accepts and holds connections (the gateway only
/// needs to reach it for the upgrade to succeed).
async fn holding_listener() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    port
}

/// The `name="csrf"` value of the landing page's sign-out form.
fn csrf_of(landing: &str) -> String {
    let at = landing
        .find("name=\"csrf\" value=\"")
        .expect("a CSRF field")
        + 19;
    landing[at..].split('"').next().unwrap().to_string()
}

fn proxied_gateway(port: u16) -> impl FnOnce(&Path) -> String {
    move |_| {
        format!(
            "#gateway:trusted_proxies = [\"127.0.0.2\"]\n#gateway:[[gateway.target]]\n\
             #gateway:type = \"desktop\"\n#gateway:address = \"127.0.0.1:{port}\"\n\
             #gateway:[[gateway.target]]\n#gateway:type = \"other\"\n\
             #gateway:address = \"127.0.0.1:{port}\"\n"
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_proxy_v2_client_is_the_source() {
    let port = holding_listener().await;
    let h = H::start_with(proxied_gateway(port), |b| {
        b.set("http", "max_connections_per_source = 2")
    })
    .await;
    // Through the proxy (127.0.0.2), with the client named in the header: served.
    let mut c = raw_tls(&h, "127.0.0.2", Before::Proxy("127.0.0.50"))
        .await
        .unwrap();
    assert_eq!(send(&mut c, &get_request("/healthz")).await.0, 200);
    // The proxy's own health check (LOCAL): served.
    let mut c = raw_tls(&h, "127.0.0.2", Before::Local).await.unwrap();
    assert_eq!(send(&mut c, &get_request("/healthz")).await.0, 200);
    // From the proxy without a header: dropped (the header is required from it).
    assert!(raw_tls(&h, "127.0.0.2", Before::Nothing).await.is_err());
    // The per-source cap (2) applies to the client in the header, not to the proxy: two held
    // connections for 127.0.0.60 ...
    let _a = raw_tls(&h, "127.0.0.2", Before::Proxy("127.0.0.60"))
        .await
        .unwrap();
    let _b = raw_tls(&h, "127.0.0.2", Before::Proxy("127.0.0.60"))
        .await
        .unwrap();
    // ... and a third is refused, while another client through the same proxy is served.
    assert!(
        raw_tls(&h, "127.0.0.2", Before::Proxy("127.0.0.60"))
            .await
            .is_err()
    );
    let mut d = raw_tls(&h, "127.0.0.2", Before::Proxy("127.0.0.61"))
        .await
        .unwrap();
    assert_eq!(send(&mut d, &get_request("/healthz")).await.0, 200);

    // Handlers see the header's client: a connect token used first through the proxy for
    // 127.0.0.77 is bound to that address.
    let cookie = h.sign_in("alice", "alice-pw").await.unwrap();
    let (_, landing) = h.get("/", &cookie).await;
    let url = token_url(&landing, "desktop");
    let path = format!("/{}", url.rsplit('/').next().unwrap());
    let mut c = raw_tls(&h, "127.0.0.2", Before::Proxy("127.0.0.77"))
        .await
        .unwrap();
    assert_eq!(send(&mut c, &upgrade_request(&path)).await.0, 101);
    // The same URL straight from 127.0.0.1 is refused; from 127.0.0.77 again it connects.
    let mut c = raw_tls(&h, "127.0.0.1", Before::Nothing).await.unwrap();
    let (status, head) = send(&mut c, &upgrade_request(&path)).await;
    assert_eq!(status, 401, "{head}");
    let mut c = raw_tls(&h, "127.0.0.2", Before::Proxy("127.0.0.77"))
        .await
        .unwrap();
    assert_eq!(send(&mut c, &upgrade_request(&path)).await.0, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_needs_its_csrf_token_and_ends_the_connect_tokens() {
    let port = holding_listener().await;
    let h = H::start(proxied_gateway(port)).await;
    let cookie = h.sign_in("alice", "alice-pw").await.unwrap();
    let (_, landing) = h.get("/", &cookie).await;
    let csrf = csrf_of(&landing);
    let desktop = format!(
        "/{}",
        token_url(&landing, "desktop").rsplit('/').next().unwrap()
    );
    let other = format!(
        "/{}",
        token_url(&landing, "other").rsplit('/').next().unwrap()
    );
    assert_ne!(
        desktop.split('.').nth(1),
        other.split('.').nth(1),
        "one token per session type"
    );
    // A token opens its own session type only.
    let wrong_type = desktop.replace(".desktop", ".other");
    let mut c = raw_tls(&h, "127.0.0.1", Before::Nothing).await.unwrap();
    assert_eq!(send(&mut c, &upgrade_request(&wrong_type)).await.0, 401);
    let mut c = raw_tls(&h, "127.0.0.1", Before::Nothing).await.unwrap();
    assert_eq!(send(&mut c, &upgrade_request(&desktop)).await.0, 101);

    let post = |path: &'static str, body: String, origin: Option<String>| {
        let mut r = h
            .client
            .post(format!("https://{}{path}", h.gw))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    // Sign-out without the token, with a wrong one, or from another site: refused, still signed in.
    for (body, origin) in [
        (String::new(), None),
        ("csrf=0000".to_string(), None),
        (
            format!("csrf={csrf}"),
            Some("https://evil.example".to_string()),
        ),
    ] {
        let r = post("/logout", body.clone(), origin.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{body} {origin:?}");
        assert_eq!(h.get("/", &cookie).await.0, 200, "still signed in");
    }
    // Login CSRF: another site's form cannot sign this browser in.
    let r = post(
        "/login",
        "user=alice&password=alice-pw".into(),
        Some("https://evil.example".to_string()),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    // The form's own sign-out (same origin): signed out, and the connect tokens end with it.
    let r = post(
        "/logout",
        format!("csrf={csrf}"),
        Some(format!("https://{}", h.gw)),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(h.get("/", &cookie).await.0, 303, "signed out");
    for path in [&desktop, &other] {
        let mut c = raw_tls(&h, "127.0.0.1", Before::Nothing).await.unwrap();
        let (status, head) = send(&mut c, &upgrade_request(path)).await;
        assert_eq!(status, 401, "{path}: {head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_while_every_password_check_is_taken_is_a_503_form_with_retry_after() {
    let b = BrokerBuilder::new();
    let passwd = b.path().join("slow-passwd");
    switchboard_testkit::broker::slow_password_file(
        &passwd,
        "alice",
        "alice-pw",
        Duration::from_millis(700),
    );
    let b = b
        .set(
            "auth",
            &format!(
                "method = \"file:{}\"\nworkers = 1\nqueue = 0",
                passwd.display()
            ),
        )
        .set(
            "gateway",
            "listen = \"127.0.0.1:0\"\n[[gateway.target]]\ntype = \"desktop\"\naddress = \"127.0.0.1:9\"",
        )
        .start()
        .await;
    let gw = b.broker().gateway_addr.unwrap();
    let sign_in = |i: u8| async move {
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 9, i]))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = client
            .post(format!("http://{gw}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("user=alice&password=alice-pw")
            .send()
            .await
            .unwrap();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (r.status().as_u16(), retry, r.text().await.unwrap())
    };
    let first = tokio::spawn(sign_in(1));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, retry, body) = sign_in(2).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("2"));
    assert!(body.contains("Too many sign-ins at once"), "{body}");
    assert_eq!(first.await.unwrap().0, 303, "the check that ran signs in");
    // Nothing held against the refused address: it signs in now.
    assert_eq!(sign_in(2).await.0, 303);
}
