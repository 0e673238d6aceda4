//! Start-or-get decisions per second against the fake API server holding 10,000 session pods,
//! side by side with the seed's way (`kubectl get pod NAME -o json` per login, Debian's kubectl
//! against the same server) and with one API GET per decision (no cache).
//!
//! Run: `cargo bench -p switchboard-k8s --bench start_or_get` (`PODS=…` to change the 10,000).
//! Prints one table; nothing is asserted (targets are read off the figures).
#![allow(clippy::unwrap_used)] // a failed step fails the run loudly
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use switchboard_k8s::{Backend, Budgets, Home, Owner, PoolSettings, RenderOptions, TemplateDir};
use switchboard_testkit::kubeapi::{FakeApiServer, Script};
use tokio_util::sync::CancellationToken;

const NS: &str = "sessions";

fn ready_pod(i: usize) -> Pod {
    let user = format!("user{i}");
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{user}-xfce"), "namespace": NS,
            "labels": { "app.kubernetes.io/managed-by": "switchboard", "switchboard.io/pool": "desktops",
                "switchboard.io/user": user, "switchboard.io/session-type": "xfce" },
            "annotations": { "switchboard.io/user": user, "switchboard.io/session-type": "xfce" }
        },
        "spec": { "containers": [{ "name": "xpra", "image": "xpra-xfce",
            "ports": [{ "name": "xpra", "containerPort": 14500 }] }] },
        "status": { "phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            "hostIP": "10.255.0.1",
            "conditions": [{ "type": "PodScheduled", "status": "True" }, { "type": "Ready", "status": "True" }],
            "containerStatuses": [{ "name": "xpra", "image": "xpra-xfce", "imageID": "", "ready": true,
                "restartCount": 0, "state": { "running": {} } }] }
    }))
    .unwrap()
}

fn owner(i: usize) -> Owner {
    Owner {
        user: format!("user{i}"),
        groups: vec![],
        uid: Some(10_000 + i as u32),
        gid: Some(100),
    }
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
    let pods: usize = std::env::var("PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let api = FakeApiServer::start().await;
    let ms = Duration::from_millis(0);
    api.default_script(Script::Ready {
        schedule: ms,
        pull: ms,
        start: ms,
    });
    let t = Instant::now();
    for i in 0..pods {
        api.insert(ready_pod(i));
    }
    println!(
        "fake API server: {pods} ready pods loaded in {:.2?}",
        t.elapsed()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("default")).unwrap();
    std::fs::write(
        dir.path().join("default/xfce.yaml"),
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: xpra\n      image: xpra-xfce\n      ports: [{ name: xpra, containerPort: 14500 }]\n",
    )
    .unwrap();
    let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let shutdown = CancellationToken::new();
    let settings = PoolSettings {
        render: RenderOptions {
            namespace: NS.into(),
            pool: "desktops".into(),
            default_port: 14500,
            home: Home::None,
            allow_host_path: false,
        },
        budgets: Budgets::default(),
        deletion_timeout: Duration::from_secs(30),
    };
    let t = Instant::now();
    let backend = Backend::new(
        client.clone(),
        TemplateDir::new(dir.path()),
        settings,
        shutdown.clone(),
    );
    backend.cache_ready().await;
    println!(
        "broker start: pod cache filled (list of {} pods) in {:.2?}",
        backend.pods().len(),
        t.elapsed()
    );

    // 1. Logins of users whose pod is ready: answered from the cache.
    let n = 200_000;
    let t = Instant::now();
    let mut ok = 0;
    for k in 0..n {
        let h = backend.start_or_get(&owner((k * 7919) % pods), "xfce");
        if matches!(h.current(), switchboard_k8s::Progress::Ready(_)) {
            ok += 1;
        }
    }
    let cached = n as f64 / t.elapsed().as_secs_f64();
    assert_eq!(ok, n, "every decision was a ready pod");

    // 2. One GET per decision (what a client without a cache pays), 32 in flight.
    let pods_api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), NS);
    let n_get = 5_000;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..32 {
        let api = pods_api.clone();
        set.spawn(async move {
            for k in (w..n_get).step_by(32) {
                api.get(&format!("user{}-xfce", (k * 7919) % pods))
                    .await
                    .unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
    let per_get = n_get as f64 / t.elapsed().as_secs_f64();

    // 3a. One new session alone: its latency.
    let t = Instant::now();
    backend
        .start_or_get(&owner(pods + 1_000_000), "xfce")
        .wait()
        .await
        .unwrap();
    let single = t.elapsed();

    // 3. New sessions: template, create, watch to Ready (the fake readies at once), 32 in flight.
    let n_new = 1_000;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..32 {
        let b = backend.clone();
        set.spawn(async move {
            for k in (w..n_new).step_by(32) {
                b.start_or_get(&owner(pods + k), "xfce")
                    .wait()
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let starts = n_new as f64 / t.elapsed().as_secs_f64();

    // 4. The seed's way: a kubectl process per decision.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig(NS)).unwrap();
    let n_kubectl = 100;
    let kubectl = if std::path::Path::new("/usr/bin/kubectl").exists() {
        let t = Instant::now();
        for k in 0..n_kubectl {
            let out = std::process::Command::new("kubectl")
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!(
                    "--cache-dir={}",
                    dir.path().join("kcache").display()
                ))
                .args([
                    "get",
                    "pod",
                    &format!("user{}-xfce", (k * 7919) % pods),
                    "-o",
                    "json",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kubectl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(n_kubectl as f64 / t.elapsed().as_secs_f64())
    } else {
        None
    };

    println!();
    println!("| decision ({pods} pods in the namespace) | per second |");
    println!("|---|---:|");
    println!("| ready pod, from the reflector cache | {cached:.0} |");
    println!("| ready pod, one API GET each (32 in flight) | {per_get:.0} |");
    println!("| new pod: create + watch to Ready (32 in flight) | {starts:.0} |");
    println!("| (one new pod alone: {single:.2?} from request to Ready) | |");
    match kubectl {
        Some(k) => {
            println!("| seed: `kubectl get pod -o json` per login | {k:.1} |");
            println!();
            println!(
                "ratio cached / kubectl = {:.0}x; per-GET / kubectl = {:.0}x",
                cached / k,
                per_get / k
            );
        }
        None => println!("| seed: kubectl not installed (apt-get install kubernetes-client) | - |"),
    }
    shutdown.cancel();
}
