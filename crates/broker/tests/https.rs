//! HTTPS on the broker's own listener, with a certificate the test makes.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;
use switchboard_testkit::broker::{BrokerBuilder, Host, Pool};

#[tokio::test]
async fn the_api_is_served_over_https_when_a_certificate_is_configured() {
    switchboard_testkit::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("broker.crt"), dir.path().join("broker.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut b = BrokerBuilder::new()
        .set(
            "http",
            &format!(
                "tls_cert = {:?}\ntls_key = {:?}",
                cert_path.display().to_string(),
                key_path.display().to_string()
            ),
        )
        .pool(
            Pool::new("p")
                .agentless()
                .host(Host::new("h1", "127.0.0.2:22")),
        )
        .start()
        .await;
    let token = b.token.clone();
    let broker = b.broker();
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
    b.stop().await;
}

#[tokio::test]
async fn a_bad_certificate_stops_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let e = BrokerBuilder::new()
        .set(
            "http",
            &format!(
                "tls_cert = {:?}\ntls_key = {:?}",
                bogus.display().to_string(),
                bogus.display().to_string()
            ),
        )
        .try_start()
        .await
        .unwrap_err();
    assert!(e.contains("bogus.pem"), "{e}");
}
