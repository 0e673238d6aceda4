//! A broker started in-process on 127.0.0.1:0 with a real store, and an HTTP client for it.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use switchboard_broker::Broker;
use switchboard_broker::config::Config;
use switchboard_broker::tokens::{self, Access};
use switchboard_testkit::store::{Kind, fresh_url};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

/// Pools of agentless hosts at 127.0.0.x, as a broker config tail.
pub fn pools_toml(pool: &str, hosts: &[(&str, u32)]) -> String {
    let mut s = format!("[[pool]]\nname = {pool:?}\nagent = false\n");
    for (i, (h, w)) in hosts.iter().enumerate() {
        s.push_str(&format!(
            "[[pool.host]]\nname = {h:?}\naddress = \"127.0.0.{}:22\"\nweight = {w}\n",
            i + 2
        ));
    }
    s
}

pub struct TestBroker {
    pub broker: Option<Broker>,
    pub base: String,
    pub token: String,
    pub read_only: String,
    pub dir: tempfile::TempDir,
    pub store_url: String,
    pub tokens_file: PathBuf,
    pub extra: String,
    _store_dir: Option<tempfile::TempDir>,
    pub client: reqwest::Client,
}

impl TestBroker {
    pub async fn start(kind: Kind, extra: &str) -> TestBroker {
        let (store_url, store_dir) = fresh_url(kind).await;
        let dir = tempfile::tempdir().unwrap();
        let tokens_file = dir.path().join("tokens");
        let token = tokens::add(&tokens_file, "admin", Access::ReadWrite).unwrap();
        let read_only = tokens::add(&tokens_file, "viewer", Access::ReadOnly).unwrap();
        let mut t = TestBroker {
            broker: None,
            base: String::new(),
            token,
            read_only,
            dir,
            store_url,
            tokens_file,
            extra: extra.to_owned(),
            _store_dir: store_dir,
            client: switchboard_testkit::http_client(),
        };
        t.boot().await;
        t
    }

    pub fn config(&self) -> Config {
        let text = format!(
            "[store]\nurl = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[api]\ntokens_file = {:?}\n\
             [management]\nsocket = {:?}\n{}",
            self.store_url,
            self.tokens_file.display().to_string(),
            self.dir.path().join("mgmt.sock").display().to_string(),
            self.extra
        );
        Config::parse(&text, "test.toml").unwrap()
    }

    pub async fn boot(&mut self) {
        let b = Broker::start(self.config(), CancellationToken::new())
            .await
            .unwrap();
        self.base = format!("http://{}", b.http_addr);
        self.broker = Some(b);
    }

    /// Stops the broker (as a clean shutdown) and starts a new one on the same store.
    pub async fn restart(&mut self) {
        if let Some(b) = self.broker.take() {
            b.stop().await.unwrap();
        }
        self.boot().await;
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.token.clone(), method, path, body).await
    }

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

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert_eq!(s, 200, "{method} {path}: {v}");
        v
    }
}

impl TestBroker {
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
pub struct Ctl {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Ctl {
    pub async fn connect(b: &TestBroker) -> Ctl {
        let s = UnixStream::connect(b.dir.path().join("mgmt.sock"))
            .await
            .unwrap();
        let (r, w) = s.into_split();
        Ctl {
            reader: BufReader::new(r),
            writer: w,
        }
    }

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
