//! Kubernetes pools in the broker: one [`switchboard_k8s::Backend`] and its lifecycle loop per
//! `[[pool]] kind = "kubernetes"`, shared by the REST API and the gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_k8s::template::Owner;
use switchboard_k8s::{Backend, Lifecycle, PoolSettings, StartHandle, TemplateDir};
use tokio_util::sync::CancellationToken;

use std::path::PathBuf;

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
}

impl KubePool {
    /// The backend.
    pub fn backend(&self) -> &Backend {
        self.lifecycle.backend()
    }

    /// Starts or gets `user`'s session of `session_type`, after the pool's limits.
    pub async fn start(&self, user: &str, session_type: &str) -> Result<StartHandle, Refused> {
        let owner = owner(user).await?;
        if let Some(max) = self.config.max_sessions_per_user {
            let sessions = self.lifecycle.sessions();
            let mine: Vec<_> = sessions.iter().filter(|s| s.user == user).collect();
            if mine.len() >= max as usize && !mine.iter().any(|s| s.session_type == session_type) {
                return Err(Refused::Limit {
                    user: user.to_string(),
                    count: mine.len(),
                    pool: self.config.name.clone(),
                });
            }
        }
        Ok(self.backend().start_or_get(&owner, session_type))
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
