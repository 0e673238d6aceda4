//! Kubernetes pools in the broker: one [`switchboard_k8s::Backend`] and its lifecycle loop per
//! `[[pool]] kind = "kubernetes"`, shared by the REST API and the gateway.
//!
//! # Pods are sessions of the core
//! Each Kubernetes pool is a core pool with one host of its own, `kubernetes:<pool>` (weight 0,
//! so placement never picks it; no cap; no agent), and every ready session pod is a session of
//! the core on that host, its backend id the pod's name. The pool's pod cache reports them to
//! the engine as an agent reports its host's sessions: one inventory whenever the set changes
//! (looked at every [`INVENTORY_EVERY`]), so pods found at start are adopted, a pod gone while
//! the broker was away is ended, and the facts are committed like any other session's. A pod
//! with a client connected through the gateway is `running`, one without is `disconnected`;
//! pods still starting are not sessions yet (their progress is the start's event stream). So
//! `GET /api/v1/sessions`, `ctl users`, `ctl user`, the dashboard and the per-user cap see
//! them, and ending such a session (REST `DELETE`, `logoffuser`, `abortuser`, the dashboard)
//! deletes its pod through the action layer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_k8s::template::Owner;
use switchboard_k8s::{Backend, Lifecycle, PoolSettings, StartHandle, TemplateDir};
use tokio_util::sync::CancellationToken;

use crate::engine::EngineHandle;
use std::path::PathBuf;
use switchboard_core::Command;
use switchboard_core::model::{ReportedSession, ReportedState};

/// A Kubernetes pool, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct KubePoolConfig {
    /// Pool name.
    pub name: String,
    /// kubeconfig file; `None` infers (in-cluster, then ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// Template directory.
    pub templates: PathBuf,
    /// Rendering settings (namespace, port, home).
    pub render: switchboard_k8s::RenderOptions,
    /// Stage budgets.
    pub budgets: switchboard_k8s::Budgets,
    /// Log-off rules (pool defaults; template annotations override per type).
    pub policy: switchboard_k8s::Policy,
    /// Most sessions per user (default unlimited).
    pub max_sessions_per_user: Option<u32>,
    /// Reconciliation period.
    pub reconcile_interval: Duration,
}

/// How often a pool's pods are compared with the sessions the engine holds for it.
pub const INVENTORY_EVERY: Duration = Duration::from_secs(1);

/// The core host that holds a Kubernetes pool's session pods.
pub fn session_host(pool: &str) -> String {
    format!("kubernetes:{pool}")
}

/// How long an old pod may take to go away before its replacement is created.
const DELETION_TIMEOUT: Duration = Duration::from_secs(90);

/// The broker's Kubernetes pools by name.
#[derive(Clone, Debug, Default)]
pub struct KubePools {
    pools: Arc<BTreeMap<String, KubePool>>,
}

/// One Kubernetes pool.
#[derive(Clone, Debug)]
pub struct KubePool {
    /// Its settings.
    pub config: KubePoolConfig,
    /// Its sessions and their policies.
    pub lifecycle: Arc<Lifecycle>,
}

/// Why a start was refused before it began.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The user has as many sessions as the pool allows.
    #[error("{user} already has {count} sessions in pool {pool} (max_sessions_per_user)")]
    Limit {
        /// User.
        user: String,
        /// Sessions they have.
        count: usize,
        /// Pool.
        pool: String,
    },
    /// The user's groups could not be looked up.
    #[error("cannot look up the groups of {0}; group templates cannot be chosen")]
    Groups(String),
}

impl KubePools {
    /// Connects every pool's client and starts its pod cache and lifecycle loop. A pool whose
    /// API server is away still starts: its cache fills once the server answers.
    pub async fn start(
        configs: &[KubePoolConfig],
        engine: EngineHandle,
        shutdown: CancellationToken,
    ) -> Result<KubePools, String> {
        let mut pools = BTreeMap::new();
        for cfg in configs {
            let client = client_for(cfg)
                .await
                .map_err(|e| format!("pool {:?}: {e}", cfg.name))?;
            let backend = Backend::new(
                client,
                TemplateDir::new(&cfg.templates),
                PoolSettings {
                    render: cfg.render.clone(),
                    budgets: cfg.budgets,
                    deletion_timeout: DELETION_TIMEOUT,
                },
                shutdown.child_token(),
            );
            let lifecycle = Lifecycle::new(backend, cfg.policy);
            tokio::spawn(
                lifecycle
                    .clone()
                    .run(cfg.reconcile_interval, shutdown.child_token()),
            );
            tokio::spawn(report_pods(
                lifecycle.clone(),
                session_host(&cfg.name),
                engine.clone(),
                shutdown.child_token(),
            ));
            tracing::info!(pool = %cfg.name, namespace = %cfg.render.namespace, templates = %cfg.templates.display(), "kubernetes pool started");
            pools.insert(
                cfg.name.clone(),
                KubePool {
                    config: cfg.clone(),
                    lifecycle,
                },
            );
        }
        Ok(KubePools {
            pools: Arc::new(pools),
        })
    }

    /// The pool `name`.
    pub fn get(&self, name: &str) -> Option<&KubePool> {
        self.pools.get(name)
    }

    /// The pool whose session pods live on the core host `host`, if it is one.
    pub fn by_host(&self, host: &str) -> Option<&KubePool> {
        host.strip_prefix("kubernetes:").and_then(|p| self.get(p))
    }
}

/// The engine's view of a pool's pods: one reported session per ready pod.
fn pod_sessions(lifecycle: &Lifecycle) -> Vec<ReportedSession> {
    let mut out: Vec<ReportedSession> = lifecycle
        .sessions()
        .into_iter()
        .filter(|s| s.state == "ready")
        .map(|s| ReportedSession {
            state: if s.connections > 0 {
                ReportedState::Running
            } else {
                ReportedState::Disconnected
            },
            info: Some(format!("type={}", s.session_type)),
            idle_secs: None,
            user: s.user,
            backend_id: s.pod,
        })
        .collect();
    out.sort_by(|a, b| a.backend_id.cmp(&b.backend_id));
    out
}

/// Reports a pool's session pods to the engine as its host's inventory, whenever they differ
/// from what was last reported (and again after a refusal, until one is taken).
async fn report_pods(
    lifecycle: Arc<Lifecycle>,
    host: String,
    engine: EngineHandle,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(INVENTORY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Option<Vec<ReportedSession>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Until the pod cache has listed once, an empty cache says nothing about the pods. Asked
        // each tick rather than awaited: kube's readiness future wakes only the last of several
        // tasks waiting on it, and the pool's lifecycle loop waits on it too.
        if futures_util::FutureExt::now_or_never(lifecycle.backend().cache_ready()).is_none() {
            continue;
        }
        let now = pod_sessions(&lifecycle);
        if reported.as_ref() == Some(&now) {
            continue;
        }
        match engine
            .apply(Command::ReportInventory {
                host: host.clone(),
                sessions: now.clone(),
            })
            .await
        {
            Ok(_) => reported = Some(now),
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "session pods not reported; retrying");
                reported = None;
            }
        }
    }
}

impl KubePool {
    /// The backend.
    pub fn backend(&self) -> &Backend {
        self.lifecycle.backend()
    }

    /// Starts or gets `user`'s session of `session_type`, after the pool's limits.
    pub async fn start(&self, user: &str, session_type: &str) -> Result<StartHandle, Refused> {
        let owner = owner(user).await?;
        let max = self.config.max_sessions_per_user.map(|m| m as usize);
        // Counted with the starts in flight, in one step with this one: parallel starts of
        // several types cannot all slip under the limit.
        self.backend()
            .start_or_get_within(&owner, session_type, max)
            .map_err(|count| Refused::Limit {
                user: user.to_string(),
                count,
                pool: self.config.name.clone(),
            })
    }

    /// The session types `user` may start.
    pub async fn session_types(&self, user: &str) -> Result<Vec<String>, String> {
        let owner = owner(user).await.map_err(|e| e.to_string())?;
        self.backend()
            .templates()
            .session_types(&owner)
            .map_err(|e| e.to_string())
    }
}

/// The events of a start, from where it is now to its outcome (or until `stop`): each with its
/// server-sent event name (`progress`, then `ready` or `failed`). The REST API and the gateway's
/// waiting page stream the same sequence.
pub fn progress_events(
    handle: StartHandle,
    stop: CancellationToken,
) -> impl futures_util::Stream<Item = (&'static str, switchboard_k8s::Progress)> {
    use switchboard_k8s::Progress;
    futures_util::stream::unfold(Some((handle, true)), move |st| {
        let stop = stop.clone();
        async move {
            let (mut h, first) = st?;
            let p = if first {
                h.current()
            } else {
                tokio::select! {
                    () = stop.cancelled() => return None,
                    p = h.next() => p?,
                }
            };
            let name = match &p {
                Progress::Ready(_) => "ready",
                Progress::Failed(_) => "failed",
                _ => "progress",
            };
            let next = if p.is_final() { None } else { Some((h, false)) };
            Some(((name, p), next))
        }
    })
}

/// `user` with their groups, uid and gid (through NSS, off the async threads).
pub async fn owner(user: &str) -> Result<Owner, Refused> {
    let u = user.to_string();
    let looked = tokio::task::spawn_blocking(move || {
        let groups = switchboard_auth::groups::of(&u, true)?;
        let ids = nix::unistd::User::from_name(&u)
            .ok()
            .flatten()
            .map(|p| (p.uid.as_raw(), p.gid.as_raw()));
        Ok::<_, String>((groups, ids))
    })
    .await
    .map_err(|_| Refused::Groups(user.to_string()))?;
    let (groups, ids) = looked.map_err(|e| {
        tracing::error!(error = %e, "group lookup failed");
        Refused::Groups(user.to_string())
    })?;
    Ok(Owner {
        user: user.to_string(),
        groups,
        uid: ids.map(|i| i.0),
        gid: ids.map(|i| i.1),
    })
}

async fn client_for(cfg: &KubePoolConfig) -> Result<kube::Client, String> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no kubeconfig set and none found (in-cluster or ~/.kube/config): {e}")
        })?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}
