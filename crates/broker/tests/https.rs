//! HTTPS on the broker's own listener, with a certificate the test makes.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;
use switchboard_broker::Broker;
use switchboard_broker::config::Config;
use switchboard_broker::tokens::{self, Access};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn the_api_is_served_over_https_when_a_certificate_is_configured() {
    switchboard_testkit::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("broker.crt"), dir.path().join("broker.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tokens_file = dir.path().join("tokens");
    let token = tokens::add(&tokens_file, "admin", Access::ReadWrite).unwrap();
    let text = format!(
        "[store]\nurl = \"sqlite://{}\"\n[http]\nlisten = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n[api]\ntokens_file = {:?}\n[[pool]]\nname = \"p\"\nagent = false\n[[pool.host]]\nname = \"h1\"\naddress = \"127.0.0.2:22\"\n[management]\nsocket = \"{}/mgmt.sock\"\n",
        dir.path().join("sb.db").display(),
        cert_path.display().to_string(),
        key_path.display().to_string(),
        tokens_file.display().to_string(),
        dir.path().display()
    );
    let broker = Broker::start(
        Config::parse(&text, "t.toml").unwrap(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let port = broker.http_addr.port();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = client
        .get(format!("https://127.0.0.1:{port}/api/v1/hosts/h1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["name"], "h1");
    // Plain HTTP on the HTTPS port gets nothing useful.
    let plain = switchboard_testkit::http_client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_certificate_stops_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let text = format!(
        "[store]\nurl = \"sqlite://{}\"\n[http]\nlisten = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n[api]\ntokens_file = {:?}\n[management]\nsocket = \"{}/mgmt.sock\"\n",
        dir.path().join("sb.db").display(),
        bogus.display().to_string(),
        bogus.display().to_string(),
        dir.path().join("tokens").display().to_string(),
        dir.path().display()
    );
    let e = Broker::start(
        Config::parse(&text, "t.toml").unwrap(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("bogus.pem"), "{e}");
}
