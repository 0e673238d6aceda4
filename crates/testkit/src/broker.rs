//! A broker started in-process for tests, from a typed builder, with an HTTP client, a
//! management-socket client and agents on request.
//!
//! ```ignore
//! let b = BrokerBuilder::new()
//!     .store(Kind::Postgres)
//!     .pool(Pool::new("desk").host(Host::new("h1", "127.0.0.52:22")))
//!     .agents()
//!     .start()
//!     .await;
//! let _agent = b.spawn_agent("h1", &[source_toml], Duration::from_millis(500)).await;
//! ```
//!
//! The builder writes a configuration file's text from what it is given and parses it with the
//! broker's own parser, so a test goes through the same checks as `switchboard broker
//! --config`. Everything lives in one temp dir (`data_dir`, the tokens file with a read-write
//! `admin` and a read-only `viewer` token, the management socket, the X2Go profiles and
//! password file when asked for); restarts reuse it, the store and the agent port.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // a test harness fails loudly

use crate::store::{Kind, fresh_url};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchboard_broker::Broker;
use switchboard_broker::actions::{Actor, Surface};
use switchboard_broker::config::Config;
use switchboard_broker::tokens::{self, Access};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

/// One `[[pool.host]]`.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    address: String,
    lines: Vec<String>,
}

impl Host {
    /// A host at `address` (`IP:PORT`).
    pub fn new(name: &str, address: &str) -> Host {
        Host {
            name: name.to_owned(),
            address: address.to_owned(),
            lines: Vec::new(),
        }
    }

    /// `weight = W`.
    pub fn weight(self, w: u32) -> Host {
        self.set(&format!("weight = {w}"))
    }

    /// `max_sessions = N`.
    pub fn max_sessions(self, n: u32) -> Host {
        self.set(&format!("max_sessions = {n}"))
    }

    /// Any other `key = value` line of the host's table.
    pub fn set(mut self, line: &str) -> Host {
        self.lines.push(line.to_owned());
        self
    }
}

/// One `[[pool]]` with its hosts.
#[derive(Debug, Clone)]
pub struct Pool {
    name: String,
    lines: Vec<String>,
    hosts: Vec<Host>,
}

impl Pool {
    /// A pool of hosts that run agents (the default).
    pub fn new(name: &str) -> Pool {
        Pool {
            name: name.to_owned(),
            lines: Vec::new(),
            hosts: Vec::new(),
        }
    }

    /// `agent = false`: hosts placeable without an agent.
    pub fn agentless(self) -> Pool {
        self.set("agent = false")
    }

    /// Any other `key = value` line of the pool's table (`policy`, the session policies...).
    pub fn set(mut self, line: &str) -> Pool {
        self.lines.push(line.to_owned());
        self
    }

    /// Adds a host.
    pub fn host(mut self, h: Host) -> Pool {
        self.hosts.push(h);
        self
    }

    /// Agentless hosts at 127.0.0.2, .3, ... port 22, with these weights.
    pub fn agentless_hosts(name: &str, hosts: &[(&str, u32)]) -> Pool {
        hosts
            .iter()
            .enumerate()
            .fold(Pool::new(name).agentless(), |p, (i, (h, w))| {
                p.host(Host::new(h, &format!("127.0.0.{}:22", i + 2)).weight(*w))
            })
    }

    fn toml(&self) -> String {
        let mut s = format!("[[pool]]\nname = {:?}\n", self.name);
        for l in &self.lines {
            let _ = writeln!(s, "{l}");
        }
        for h in &self.hosts {
            let _ = writeln!(
                s,
                "[[pool.host]]\nname = {:?}\naddress = {:?}",
                h.name, h.address
            );
            for l in &h.lines {
                let _ = writeln!(s, "{l}");
            }
        }
        s
    }
}

/// Pools of agentless hosts at 127.0.0.x, as a broker config tail.
pub fn pools_toml(pool: &str, hosts: &[(&str, u32)]) -> String {
    Pool::agentless_hosts(pool, hosts).toml()
}

/// How to start a test broker.
#[derive(Debug)]
pub struct BrokerBuilder {
    dir: tempfile::TempDir,
    kind: Kind,
    sections: BTreeMap<&'static str, Vec<String>>,
    pools: Vec<Pool>,
    agents: bool,
    http_port: Option<u16>,
    profiles: Option<String>,
    passwords: Vec<(String, String)>,
    tail: String,
    store_url: Option<String>,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerBuilder {
    /// A broker on SQLite with an HTTP listener and a management socket, and nothing else.
    pub fn new() -> BrokerBuilder {
        BrokerBuilder {
            dir: tempfile::tempdir().unwrap(),
            kind: Kind::Sqlite,
            sections: BTreeMap::new(),
            pools: Vec::new(),
            agents: false,
            http_port: None,
            profiles: None,
            passwords: Vec::new(),
            tail: String::new(),
            store_url: None,
        }
    }

    /// The broker's temp dir, for files a test writes before the start (certificates,
    /// templates, a kubeconfig).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The store's backend (a fresh database either way).
    pub fn store(mut self, kind: Kind) -> BrokerBuilder {
        self.kind = kind;
        self
    }

    /// The store at this URL instead of a fresh one (a server of the test's own).
    pub fn store_url(mut self, url: &str) -> BrokerBuilder {
        self.store_url = Some(url.to_owned());
        self
    }

    /// Adds a pool.
    pub fn pool(mut self, p: Pool) -> BrokerBuilder {
        self.pools.push(p);
        self
    }

    /// An agent listener on a loopback port kept across restarts (see [`TestBroker::spawn_agent`]).
    pub fn agents(mut self) -> BrokerBuilder {
        self.agents = true;
        self
    }

    /// The X2Go frontend with this `sessions.profiles` text (written into the temp dir).
    pub fn x2go(mut self, profiles: &str) -> BrokerBuilder {
        self.profiles = Some(profiles.to_owned());
        self
    }

    /// A user in a password file in the temp dir; the first one makes `[auth]` use that file
    /// unless `[auth]` is set otherwise.
    pub fn password(mut self, user: &str, password: &str) -> BrokerBuilder {
        self.passwords.push((user.to_owned(), password.to_owned()));
        self
    }

    /// A `key = value` line in a section (`placement`, `auth`, `x2go`, `ui`, `agents`, ...).
    pub fn set(mut self, section: &'static str, line: &str) -> BrokerBuilder {
        self.sections
            .entry(section)
            .or_default()
            .push(line.to_owned());
        self
    }

    /// Raw configuration text after everything else (whole sections of its own).
    pub fn toml(mut self, text: &str) -> BrokerBuilder {
        self.tail.push_str(text);
        if !text.ends_with('\n') {
            self.tail.push('\n');
        }
        self
    }

    /// Starts the broker.
    pub async fn start(self) -> TestBroker {
        self.try_start()
            .await
            .unwrap_or_else(|e| panic!("the test broker did not start: {e}"))
    }

    /// Starts the broker, or says why it did not.
    pub async fn try_start(self) -> Result<TestBroker, String> {
        let mut t = self.prepare().await;
        t.try_boot().await?;
        Ok(t)
    }

    /// Writes the configuration to `broker.toml` in the temp dir for a broker process the test
    /// starts itself (the real binary), without starting one here. Give the HTTP listener a
    /// port with [`BrokerBuilder::http_port`] so that the test knows where to reach it.
    pub async fn write(self) -> TestBroker {
        let t = self.prepare().await;
        t.rewrite();
        t
    }

    /// The HTTP listener on this loopback port (default: any free one, for in-process brokers).
    pub fn http_port(mut self, port: u16) -> BrokerBuilder {
        self.http_port = Some(port);
        self
    }

    async fn prepare(self) -> TestBroker {
        let (store_url, store_dir) = match self.store_url {
            Some(url) => (url, None),
            None => fresh_url(self.kind).await,
        };
        let dir = self.dir;
        let d = dir.path();
        let tokens_file = d.join("tokens");
        let token = tokens::add(&tokens_file, "admin", Access::ReadWrite).unwrap();
        let read_only = tokens::add(&tokens_file, "viewer", Access::ReadOnly).unwrap();
        let mut sections = self.sections;
        let agent_port = self.agents.then(crate::free_port);
        if let Some(port) = agent_port {
            sections
                .entry("agents")
                .or_default()
                .insert(0, format!("listen = \"127.0.0.1:{port}\""));
        }
        if let Some(p) = &self.profiles {
            let file = d.join("profiles.conf");
            std::fs::write(&file, p).unwrap();
            sections.entry("x2go").or_default().insert(
                0,
                format!("session_profiles = {:?}", file.display().to_string()),
            );
        }
        if !self.passwords.is_empty() {
            let file = d.join("passwd");
            for (u, p) in &self.passwords {
                switchboard_auth::file::set_password(&file, u, p).unwrap();
            }
            let auth = sections.entry("auth").or_default();
            if !auth.iter().any(|l| l.trim_start().starts_with("method")) {
                auth.insert(0, format!("method = \"file:{}\"", file.display()));
            }
        }
        let quoted = |p: &Path| format!("{:?}", p.display().to_string());
        for (section, line) in [
            ("store", format!("url = {store_url:?}")),
            (
                "http",
                format!("listen = \"127.0.0.1:{}\"", self.http_port.unwrap_or(0)),
            ),
            ("api", format!("tokens_file = {}", quoted(&tokens_file))),
            (
                "management",
                format!("socket = {}", quoted(&d.join("mgmt.sock"))),
            ),
        ] {
            sections.entry(section).or_default().insert(0, line);
        }
        let mut text = format!("data_dir = {}\n", quoted(d));
        for (section, lines) in &sections {
            let _ = writeln!(text, "[{section}]");
            for l in lines {
                let _ = writeln!(text, "{l}");
            }
        }
        let mut extra = self.tail;
        for p in &self.pools {
            extra.push_str(&p.toml());
        }
        TestBroker {
            broker: None,
            base: self
                .http_port
                .map(|p| format!("http://127.0.0.1:{p}"))
                .unwrap_or_default(),
            token,
            read_only,
            dir,
            store_url,
            tokens_file,
            head: text,
            extra,
            agent_port,
            _store_dir: store_dir,
            client: crate::http_client(),
        }
    }
}

/// A broker started in-process on 127.0.0.1:0 with a real store, and an HTTP client for it.
#[derive(Debug)]
pub struct TestBroker {
    /// The running broker (`None` between a stop and the next boot).
    pub broker: Option<Broker>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A read-write API token (`admin`).
    pub token: String,
    /// A read-only API token (`viewer`).
    pub read_only: String,
    /// The temp dir: `data_dir`, tokens, the management socket and the files the builder wrote.
    pub dir: tempfile::TempDir,
    /// The store's URL (to reopen it, as a restarted broker would).
    pub store_url: String,
    /// The tokens file.
    pub tokens_file: PathBuf,
    /// The configuration's fixed part (data dir, store, listeners, the builder's sections).
    pub head: String,
    /// The rest: the raw text and the pools. A test may change it and reconfigure or restart.
    pub extra: String,
    agent_port: Option<u16>,
    _store_dir: Option<tempfile::TempDir>,
    /// An HTTP client.
    pub client: reqwest::Client,
}

impl TestBroker {
    /// A broker on `kind` with this configuration tail (pools and sections).
    pub async fn start(kind: Kind, extra: &str) -> TestBroker {
        BrokerBuilder::new().store(kind).toml(extra).start().await
    }

    /// The configuration file [`BrokerBuilder::write`] writes (and [`TestBroker::rewrite`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("broker.toml")
    }

    /// Writes the configuration (with the current `extra`) to [`TestBroker::config_path`].
    pub fn rewrite(&self) {
        std::fs::write(self.config_path(), format!("{}{}", self.head, self.extra)).unwrap();
    }

    /// The configuration, parsed as the broker parses its file.
    pub fn config(&self) -> Config {
        Config::parse(&format!("{}{}", self.head, self.extra), "test.toml").unwrap()
    }

    /// Starts a broker on the configuration (again, after a stop).
    pub async fn boot(&mut self) {
        self.try_boot().await.unwrap();
    }

    async fn try_boot(&mut self) -> Result<(), String> {
        let config = Config::parse(&format!("{}{}", self.head, self.extra), "test.toml")
            .map_err(|e| e.to_string())?;
        let b = Broker::start(config, CancellationToken::new())
            .await
            .map_err(|e| e.to_string())?;
        self.base = format!("http://{}", b.http_addr);
        self.broker = Some(b);
        Ok(())
    }

    /// Stops the broker as a clean shutdown does.
    pub async fn stop(&mut self) {
        if let Some(b) = self.broker.take() {
            b.stop().await.unwrap();
        }
    }

    /// Stops the broker (as a clean shutdown) and starts a new one on the same store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    /// The running broker.
    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("the broker is running")
    }

    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The agent listener's port (the builder asked for agents).
    pub fn agent_port(&self) -> u16 {
        self.agent_port.expect("built with .agents()")
    }

    /// Enrolls `host` and runs a `switchboard agent` for it in-process with these session
    /// sources (each a TOML table body, as in the agent's file), reporting every `interval`.
    /// The agent runs until the returned token is cancelled or dropped.
    pub async fn spawn_agent(
        &self,
        host: &str,
        sources: &[String],
        interval: Duration,
    ) -> AgentGuard {
        let credential = self
            .broker()
            .actions
            .enroll(&Actor::new(Surface::Local, "test"), host)
            .await
            .unwrap();
        let agent = switchboard_agent::config::AgentConfig {
            broker: format!("127.0.0.1:{}", self.agent_port()),
            server_name: "localhost".into(),
            ca: self
                .dir
                .path()
                .join("tls")
                .join(switchboard_broker::pki::CA_CERT),
            credential,
            host: host.into(),
            report_interval: interval,
            sources: sources.iter().map(|s| toml::from_str(s).unwrap()).collect(),
        };
        let stop = CancellationToken::new();
        switchboard_agent::host::spawn(agent, stop.clone()).unwrap();
        AgentGuard(stop)
    }

    /// A request with the read-write token: (status, JSON body or the text as a JSON string).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.token.clone(), method, path, body).await
    }

    /// A request with `token`.
    pub async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// A request that must answer 200; its body.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert_eq!(s, 200, "{method} {path}: {v}");
        v
    }

    /// Places and confirms a session for `user`; returns (id, host).
    pub async fn start_session(&self, user: &str, pool: &str) -> (u64, String) {
        let p = self
            .ok(
                "POST",
                "/api/v1/sessions",
                Some(serde_json::json!({"user": user, "pool": pool})),
            )
            .await;
        let id = p["id"].as_u64().unwrap();
        self.ok("POST", &format!("/api/v1/sessions/{id}/confirm"), None)
            .await;
        (id, p["host"].as_str().unwrap().to_owned())
    }
}

/// Stops an in-process agent when dropped.
#[derive(Debug)]
pub struct AgentGuard(pub CancellationToken);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Writes a password file at `path` with one user whose argon2 hash takes at least `check`
/// to verify (16 MiB, as many passes as that takes on this machine), for tests of the bounded
/// authentication pool.
pub fn slow_password_file(path: &Path, user: &str, password: &str, check: Duration) {
    const MEMORY_KIB: u32 = 16 * 1024;
    let one = switchboard_auth::file::hash_costing(password, MEMORY_KIB, 1).unwrap();
    let started = tokio::time::Instant::now();
    assert!(switchboard_auth::file::check(&one, password));
    let per_pass = started.elapsed().max(Duration::from_micros(100));
    let passes = (check.as_secs_f64() / per_pass.as_secs_f64()).ceil() as u32;
    let hash = switchboard_auth::file::hash_costing(password, MEMORY_KIB, passes.clamp(1, 10_000))
        .unwrap();
    std::fs::write(path, format!("{user}:{hash}\n")).unwrap();
}

/// Asserts a JSON error with this status and code.
pub fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

/// A management-socket client (what `switchboard ctl` speaks).
#[derive(Debug)]
pub struct Ctl {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Ctl {
    /// Connects to the broker's management socket.
    pub async fn connect(b: &TestBroker) -> Ctl {
        Ctl::at(&b.dir.path().join("mgmt.sock")).await
    }

    /// Connects to the management socket at `path`.
    pub async fn at(path: &Path) -> Ctl {
        let s = UnixStream::connect(path).await.unwrap();
        let (r, w) = s.into_split();
        Ctl {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// One reply line.
    pub async fn line(&mut self) -> String {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut l))
            .await
            .unwrap()
            .unwrap();
        l.trim_end().to_owned()
    }

    /// JSON mode (the default): one object per reply.
    pub async fn json(&mut self, cmd: &str) -> Value {
        self.writer
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        serde_json::from_str(&self.line().await).unwrap()
    }

    /// A command that must succeed; its `data`.
    pub async fn ok(&mut self, cmd: &str) -> Value {
        let v = self.json(cmd).await;
        assert_eq!(v["ok"], true, "{cmd}: {v}");
        v["data"].clone()
    }

    /// Verbose mode: text lines up to ".".
    pub async fn text(&mut self, cmd: &str) -> Vec<String> {
        self.writer
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            if l == "." {
                return out;
            }
            out.push(l);
        }
    }
}
