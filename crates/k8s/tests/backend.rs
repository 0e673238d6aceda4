//! The session backend against the fake API server (crates/testkit/src/kubeapi.rs): the real
//! kube-rs client speaking the real HTTP protocol, with scripted pod phases.
#![allow(clippy::unwrap_used)] // a failed step fails the run loudly

use std::time::Duration;

use switchboard_k8s::{
    Backend, Budgets, Home, Owner, PoolSettings, Progress, RenderOptions, StartError, TemplateDir,
};
use switchboard_testkit::kubeapi::{FakeApiServer, Script};
use tokio_util::sync::CancellationToken;

const NS: &str = "sessions";

fn template(image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: xpra\n      image: {image}\n      ports: [{{ name: xpra, containerPort: 14500 }}]\n      readinessProbe: {{ tcpSocket: {{ port: 14500 }} }}\n"
    )
}

struct Fixture {
    api: FakeApiServer,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Fixture {
    async fn new() -> Fixture {
        switchboard_testkit::install_crypto();
        let api = FakeApiServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("default")).unwrap();
        for (ty, image) in [
            ("xfce", "xpra-xfce"),
            ("badimage", "no-such-image"),
            ("huge", "huge-request"),
            ("crashy", "crashy"),
            ("slowpull", "slow-pull"),
            ("notready", "not-ready"),
        ] {
            std::fs::write(
                dir.path().join(format!("default/{ty}.yaml")),
                template(image),
            )
            .unwrap();
        }
        api.script(
            "no-such-image",
            Script::ImagePullFails {
                after: Duration::from_millis(10),
            },
        );
        api.script("huge-request", Script::Unschedulable);
        api.script(
            "crashy",
            Script::CrashLoop {
                after: Duration::from_millis(10),
            },
        );
        api.script("slow-pull", Script::StuckPulling);
        api.script("not-ready", Script::NeverReady);
        api.pod_ip("127.0.0.1");
        Fixture {
            api,
            dir,
            shutdown: CancellationToken::new(),
        }
    }

    async fn backend(&self, budgets: Budgets) -> Backend {
        self.backend_with_home(budgets, Home::None).await
    }

    async fn backend_with_home(&self, budgets: Budgets, home: Home) -> Backend {
        let config = kube::Config::new(self.api.url().parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let settings = PoolSettings {
            render: RenderOptions {
                namespace: NS.into(),
                pool: "desktops".into(),
                default_port: 14500,
                home,
                allow_host_path: false,
            },
            budgets,
            deletion_timeout: Duration::from_secs(5),
        };
        let b = Backend::new(
            client,
            TemplateDir::new(self.dir.path()),
            settings,
            self.shutdown.clone(),
        );
        tokio::time::timeout(Duration::from_secs(10), b.cache_ready())
            .await
            .expect("the pod cache fills");
        b
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn alice() -> Owner {
    Owner {
        user: "alice".into(),
        groups: vec![],
        uid: Some(1000),
        gid: Some(1000),
    }
}

fn short() -> Budgets {
    Budgets {
        scheduling: Duration::from_secs(5),
        image_pull: Duration::from_secs(5),
        start: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn start_creates_watches_and_then_answers_from_the_cache() {
    let f = Fixture::new().await;
    let b = f.backend(short()).await;
    let mut h = b.start_or_get(&alice(), "xfce");
    let mut seen = vec![h.current()];
    while let Some(p) = tokio::time::timeout(Duration::from_secs(10), h.next())
        .await
        .expect("progress")
    {
        seen.push(p);
    }
    let Some(Progress::Ready(target)) = seen.last().cloned() else {
        panic!("{seen:?}")
    };
    assert_eq!(target.pod, "alice-xfce");
    assert_eq!(target.address, "127.0.0.1:14500".parse().unwrap());
    assert!(
        seen.iter().any(|p| matches!(p, Progress::Creating { .. })),
        "{seen:?}"
    );
    let c = f.api.counts();
    assert_eq!(c.creates, 1);
    // The pod carries the user's identity and a restricted security context.
    let pod = f.api.pod(NS, "alice-xfce").unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.security_context.unwrap().run_as_user, Some(1000));
    // Once the cache has seen it Ready, a second login costs no API request at all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = f.api.counts();
    let again = b.start_or_get(&alice(), "xfce");
    assert!(
        matches!(again.current(), Progress::Ready(_)),
        "answered at once"
    );
    assert_eq!(again.wait().await.unwrap(), target);
    assert_eq!(f.api.counts(), before, "no request for a ready pod");
}

#[tokio::test]
async fn concurrent_requests_share_one_start() {
    let f = Fixture::new().await;
    f.api.default_script(Script::Ready {
        schedule: Duration::from_millis(50),
        pull: Duration::from_millis(50),
        start: Duration::from_millis(50),
    });
    let b = f.backend(short()).await;
    let handles: Vec<_> = (0..20).map(|_| b.start_or_get(&alice(), "xfce")).collect();
    let mut targets = Vec::new();
    for h in handles {
        targets.push(
            tokio::time::timeout(Duration::from_secs(10), h.wait())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(targets.windows(2).all(|w| w[0] == w[1]));
    let c = f.api.counts();
    assert_eq!((c.creates, c.conflicts), (1, 0), "{c:?}");
    assert_eq!(f.api.pod_names(NS), vec!["alice-xfce"]);
}

#[tokio::test]
async fn two_brokers_racing_resolve_the_conflict() {
    let f = Fixture::new().await;
    f.api.default_script(Script::Ready {
        schedule: Duration::from_millis(30),
        pull: Duration::from_millis(30),
        start: Duration::from_millis(30),
    });
    let (b1, b2) = (f.backend(short()).await, f.backend(short()).await);
    let mut ok = 0;
    for _ in 0..5 {
        let (h1, h2) = (
            b1.start_or_get(&alice(), "xfce"),
            b2.start_or_get(&alice(), "xfce"),
        );
        let (r1, r2) = tokio::join!(h1.wait(), h2.wait());
        assert_eq!(r1.unwrap(), r2.unwrap());
        assert_eq!(
            f.api.pod_names(NS),
            vec!["alice-xfce"],
            "one pod for both brokers"
        );
        ok += 1;
        b1.delete("alice", "xfce").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ok, 5);
    // Exactly one create succeeded per round; a second one, if tried, was refused with 409 and
    // that broker took the pod the other made.
    let c = f.api.counts();
    assert_eq!(c.creates - c.conflicts, 5, "{c:?}");
}

#[tokio::test]
async fn broken_pods_fail_fast_with_the_kubernetes_reason() {
    let f = Fixture::new().await;
    let b = f
        .backend(Budgets {
            scheduling: Duration::from_secs(30),
            image_pull: Duration::from_secs(30),
            start: Duration::from_secs(30),
        })
        .await;
    for (ty, reasons) in [
        ("badimage", &["ErrImagePull", "ImagePullBackOff"][..]),
        ("huge", &["Unschedulable"][..]),
        ("crashy", &["CrashLoopBackOff"][..]),
    ] {
        let started = tokio::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), b.start_or_get(&alice(), ty).wait())
            .await
            .expect("fails fast, long before the 30 s budgets")
            .unwrap_err();
        match &err {
            StartError::Broken { reason, .. } => {
                assert!(reasons.contains(&reason.as_str()), "{ty}: {err}")
            }
            other => panic!("{ty}: {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{ty}: {:?}",
            started.elapsed()
        );
        // The broken pod is deleted, so the next try starts clean.
        assert!(f.api.pod(NS, &format!("alice-{ty}")).is_none(), "{ty}");
    }
}

#[tokio::test]
async fn each_stage_has_its_own_budget() {
    let f = Fixture::new().await;
    let b = f
        .backend(Budgets {
            scheduling: Duration::from_secs(10),
            image_pull: Duration::from_millis(300),
            start: Duration::from_millis(400),
        })
        .await;
    let err = b
        .start_or_get(&alice(), "slowpull")
        .wait()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StartError::Timeout {
                stage: "pulling",
                ..
            }
        ),
        "{err}"
    );
    let err = b
        .start_or_get(&alice(), "notready")
        .wait()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StartError::Timeout {
                stage: "starting",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        f.api.pod(NS, "alice-notready").is_none(),
        "timed-out pods are deleted"
    );
}

#[tokio::test]
async fn finished_and_evicted_pods_are_replaced() {
    let f = Fixture::new().await;
    f.api.delete_grace(Duration::from_millis(200));
    let b = f.backend(short()).await;
    let first = b.start_or_get(&alice(), "xfce").wait().await.unwrap();
    let uid = f.api.pod(NS, "alice-xfce").unwrap().metadata.uid;
    f.api.update(NS, "alice-xfce", |p| {
        let s = p.status.as_mut().unwrap();
        s.phase = Some("Failed".into());
        s.reason = Some("Evicted".into());
        s.conditions = None;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut h = b.start_or_get(&alice(), "xfce");
    let mut replaced = false;
    while let Some(p) = tokio::time::timeout(Duration::from_secs(10), h.next())
        .await
        .unwrap()
    {
        replaced |= matches!(&p, Progress::Replacing { reason, .. } if reason == "Evicted");
        if let Progress::Ready(t) = &p {
            assert_eq!(t, &first);
        }
    }
    assert!(replaced);
    let pod = f.api.pod(NS, "alice-xfce").unwrap();
    assert_ne!(pod.metadata.uid, uid, "a new pod");
    assert!(matches!(h.current(), Progress::Ready(_)));
}

#[tokio::test]
async fn a_pod_of_someone_else_is_never_handed_out() {
    let f = Fixture::new().await;
    let b = f.backend(short()).await;
    b.start_or_get(&alice(), "xfce").wait().await.unwrap();
    f.api.update(NS, "alice-xfce", |p| {
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("switchboard.io/user".into(), "mallory".into());
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = b.start_or_get(&alice(), "xfce").wait().await.unwrap_err();
    assert!(matches!(err, StartError::NotOwner { .. }), "{err}");
    assert!(f.api.pod(NS, "alice-xfce").is_some(), "left alone");
}

#[tokio::test]
async fn a_home_claim_of_someone_else_is_never_mounted() {
    let f = Fixture::new().await;
    let home = || Home::PerUser {
        storage_class: None,
        size: "1Gi".into(),
        mount: "/home".into(),
    };
    let claim = switchboard_k8s::template::home_claim_name("alice");
    f.api.insert_claim(NS, &claim, "mallory");
    let b = f.backend_with_home(short(), home()).await;
    let err = b.start_or_get(&alice(), "xfce").wait().await.unwrap_err();
    assert!(
        matches!(&err, StartError::NotOwner { pod } if *pod == claim),
        "{err}"
    );
    assert!(
        f.api.pod(NS, "alice-xfce").is_none(),
        "no pod mounts mallory's claim"
    );
    // Alice's own claim from an earlier session is simply mounted again.
    let f = Fixture::new().await;
    f.api.insert_claim(NS, &claim, "alice");
    let b = f.backend_with_home(short(), home()).await;
    b.start_or_get(&alice(), "xfce").wait().await.unwrap();
    assert!(f.api.has_claim(NS, &claim));
}

#[tokio::test]
async fn a_restarted_backend_finds_running_pods_without_creating() {
    let f = Fixture::new().await;
    let b = f.backend(short()).await;
    let t = b.start_or_get(&alice(), "xfce").wait().await.unwrap();
    f.shutdown.cancel();
    drop(b);
    let f2shutdown = CancellationToken::new();
    let config = kube::Config::new(f.api.url().parse().unwrap());
    let b2 = Backend::new(
        kube::Client::try_from(config).unwrap(),
        TemplateDir::new(f.dir.path()),
        PoolSettings {
            render: RenderOptions {
                namespace: NS.into(),
                pool: "desktops".into(),
                default_port: 14500,
                home: Home::None,
                allow_host_path: false,
            },
            budgets: short(),
            deletion_timeout: Duration::from_secs(5),
        },
        f2shutdown.clone(),
    );
    b2.cache_ready().await;
    assert_eq!(b2.pods().len(), 1);
    let h = b2.start_or_get(&alice(), "xfce");
    assert!(matches!(h.current(), Progress::Ready(_)));
    assert_eq!(h.wait().await.unwrap(), t);
    assert_eq!(f.api.counts().creates, 1);
    assert!(b2.delete("alice", "xfce").await.unwrap());
    assert!(!b2.delete("alice", "xfce").await.unwrap());
    f2shutdown.cancel();
}

#[tokio::test]
async fn a_missing_template_is_a_clear_error() {
    let f = Fixture::new().await;
    let b = f.backend(short()).await;
    let err = b.start_or_get(&alice(), "gnome").wait().await.unwrap_err();
    assert!(
        matches!(&err, StartError::Template { message } if message.contains("gnome")),
        "{err}"
    );
    assert_eq!(f.api.counts().creates, 0);
}

#[tokio::test]
async fn lifecycle_logs_off_disconnected_sessions_and_reconciles_both_ways() {
    use switchboard_k8s::lifecycle::{Action, Reason};
    use switchboard_k8s::{Lifecycle, Policy};
    let f = Fixture::new().await;
    let b = f.backend(short()).await;
    let policy = Policy {
        disconnected: Some(Duration::from_secs(1)),
        ..Policy::default()
    };
    let life = Lifecycle::new(b.clone(), policy);
    b.start_or_get(&alice(), "xfce").wait().await.unwrap();
    let bob = Owner {
        user: "bob".into(),
        groups: vec![],
        uid: None,
        gid: None,
    };
    b.start_or_get(&bob, "xfce").wait().await.unwrap();
    // An orphan: a pool pod with no owner annotations (a crashed broker's half-made pod, say).
    let mut orphan: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "stray", "namespace": NS, "labels": {
            "app.kubernetes.io/managed-by": "switchboard", "switchboard.io/pool": "desktops" } },
        "spec": { "containers": [{ "name": "c", "image": "i" }] },
        "status": { "phase": "Running" }
    }))
    .unwrap();
    orphan.metadata.creation_timestamp = None;
    f.api.insert(orphan);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let alice_conn = life.connect("alice-xfce");
    let bob_conn = life.connect("bob-xfce");
    let first = life.reconcile_once().await;
    assert_eq!(
        first,
        vec![Action::Delete {
            pod: "stray".into(),
            reason: Reason::Orphan("no owner annotations".into())
        }]
    );
    drop(bob_conn);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    alice_conn.input();
    let second = life.reconcile_once().await;
    assert_eq!(
        second,
        vec![
            Action::Delete {
                pod: "bob-xfce".into(),
                reason: Reason::Disconnected
            },
            Action::Forget {
                pod: "stray".into()
            },
        ]
    );
    assert!(f.api.pod(NS, "bob-xfce").is_none());
    assert!(
        f.api.pod(NS, "alice-xfce").is_some(),
        "a connected session stays"
    );
    // The other direction: a session whose pod vanished (its node died) is forgotten.
    f.api.remove(NS, "alice-xfce");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = life.reconcile_once().await;
    assert!(
        third.contains(&Action::Forget {
            pod: "alice-xfce".into()
        }),
        "{third:?}"
    );
    assert!(life.sessions().is_empty(), "{:?}", life.sessions());
    drop(alice_conn);
}
