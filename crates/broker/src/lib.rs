//! The Switchboard broker: the cluster master.
//!
//! # Layout
//! Imports point down this list, never up it, and modules on one line never import each other
//! (`tests/layers.rs` checks it; `docs/architecture.md` explains the order).
//! - [`config`]: the TOML configuration, validated into [`config::Config`], composed of the
//!   components' own configuration types.
//! - The ways in: [`http`] (the HTTP listener: [`http::api`], the REST API with health,
//!   readiness and metrics; [`http::x2go`], the X2Go broker frontend; [`http::ui`], the web
//!   dashboard), [`gateway`] (its own HTTPS/WSS listener for browsers and Xpra), [`mgmt`] (the
//!   management socket for `switchboard ctl`), [`sweeper`] (session policies: log-off after
//!   disconnected, idle, age) and [`probe`] (TCP probes of agentless hosts).
//! - [`web`]: what the web surfaces share: error bodies and HTML helpers.
//! - [`actions`]: every operator action, written and audited once, called by every way in.
//! - [`agents`]: the agent listener, liveness and commands to agents; [`kubernetes`]: the
//!   Kubernetes pools.
//! - [`engine`]: the single task that owns the cluster state, commits to the store before it
//!   replies, and publishes snapshots.
//! - [`metrics`]: Prometheus metrics; [`snapshot`]: what readers see of the state.
//! - Leaves: [`audit`] (the audit log), [`tokens`] (API bearer tokens), [`pki`] (the agent
//!   listener's private CA), [`tls`] (rustls listeners), [`sync`] (poison-tolerant locks).
//!
//! [`Broker::start`] binds and starts everything and returns the bound address; [`run`] does the
//! same and waits for shutdown. The `switchboard` binary only wires these.

pub mod actions;
pub mod agents;
pub mod audit;
pub mod config;
pub mod engine;
pub mod gateway;
pub mod http;
pub mod kubernetes;
pub mod metrics;
pub mod mgmt;
pub mod pki;
pub mod probe;
pub mod snapshot;
pub mod sweeper;
pub mod sync;
pub mod tls;
pub mod tokens;
pub mod web;

use config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use switchboard_store::SqlStore;
use tokio_util::sync::CancellationToken;

/// Why the broker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] switchboard_store::StoreError),
    /// The tokens file is malformed.
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTPS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The management socket could not be set up.
    #[error(transparent)]
    Mgmt(#[from] mgmt::MgmtError),
    /// The agent listener's certificates could not be made.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    /// A Kubernetes pool could not be set up.
    #[error("kubernetes: {0}")]
    Kube(String),
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    /// Where the HTTP listener is bound.
    pub http_addr: SocketAddr,
    /// The engine, for embedding callers and tests.
    pub engine: engine::EngineHandle,
    /// Links to agents.
    pub agents: agents::AgentHub,
    /// Operator actions, for embedding callers (`switchboard up` enrolls its agents) and tests.
    pub actions: actions::Actions,
    /// Where the agent listener is bound, if it runs.
    pub agent_addr: Option<SocketAddr>,
    /// The CA certificate agents pin, when the broker made its own.
    pub agent_ca: Option<std::path::PathBuf>,
    /// The management socket.
    pub mgmt_socket: std::path::PathBuf,
    /// The X2Go frontend, if configured.
    pub x2go: Option<http::x2go::X2go>,
    /// Where the gateway listens, if configured.
    pub gateway_addr: Option<SocketAddr>,
    /// Kubernetes pools.
    pub kube: kubernetes::KubePools,
    agent_listening: bool,
    kube_pools: Vec<config::KubePoolConfig>,
    gateway_config: Option<config::GatewayConfig>,
    gateway: Option<gateway::Gateway>,
    mgmt_task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    engine_task: tokio::task::JoinHandle<()>,
    store: Arc<SqlStore>,
}

impl Broker {
    /// Opens the store, loads the state, binds the HTTP listener and starts serving.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Broker, BrokerError> {
        let tls = match &config.http_tls {
            Some((cert, key)) => Some(tls::server_config(cert, key)?),
            None => None,
        };
        // Install the metrics recorder before anything records.
        let _ = metrics::handle();
        let store = Arc::new(SqlStore::connect(&config.store_url).await?);
        let tokens = tokens::Tokens::load(&config.tokens_file)?;
        if tokens.is_empty() {
            tracing::warn!(file = %config.tokens_file.display(), "no API tokens: every /api/v1 call will be refused; add one with `switchboard token add`");
        }
        tokens.clone().watch(shutdown.child_token());
        let (engine, engine_task) = engine::start(
            store.clone(),
            config.cluster.clone(),
            shutdown.child_token(),
        )
        .await?;
        probe::spawn(engine.clone(), config.probe, shutdown.child_token());
        let hub = agents::AgentHub::new(
            engine.clone(),
            config.cluster.settings.stale_after_intervals,
        );
        hub.set_empty_inventory_grace(config.agent_empty_inventory_grace);
        let kube = kubernetes::KubePools::start(
            &config.kube_pools,
            engine.clone(),
            shutdown.child_token(),
        )
        .await
        .map_err(BrokerError::Kube)?;
        let actions =
            actions::Actions::new(engine.clone(), hub.clone(), kube.clone(), store.clone());
        if let Some(keep) = config.audit_keep {
            actions.spawn_audit_retention(keep, shutdown.child_token());
        }
        sweeper::spawn(
            engine.clone(),
            hub.clone(),
            actions.clone(),
            config.policy_interval,
            shutdown.child_token(),
        );
        let agent_hosts: Vec<String> = config
            .cluster
            .hosts
            .iter()
            .filter(|h| h.agent)
            .map(|h| h.name.clone())
            .collect();
        let (agent_addr, agent_ca) = if config.agent_listen_set || !agent_hosts.is_empty() {
            let (cert, key, ca) = match &config.agent_tls {
                Some((c, k)) => (c.clone(), k.clone(), None),
                None => {
                    let p = pki::ensure(
                        &config.data_dir.join("tls"),
                        &pki::default_names(&config.agent_names),
                    )?;
                    (p.cert, p.key, Some(p.ca_cert))
                }
            };
            let mut tls = (*tls::server_config(&cert, &key)?).clone();
            tls.alpn_protocols.clear();
            let listener = bind(config.agent_listen).await?;
            let addr = listener.local_addr().map_err(BrokerError::Http)?;
            hub.expect(agent_hosts);
            hub.spawn_listener(listener, Arc::new(tls), shutdown.child_token());
            hub.spawn_watchdog(shutdown.child_token());
            (Some(addr), ca)
        } else {
            (None, None)
        };
        let (mgmt_listener, gid) = mgmt::bind(
            &config.management_socket,
            config.management_mode,
            config.management_group.as_deref(),
        )
        .await?;
        let mgmt_task = mgmt::spawn(
            mgmt::Mgmt {
                engine: engine.clone(),
                agents: hub.clone(),
                store: store.clone(),
                actions: actions.clone(),
            },
            mgmt_listener,
            config.management_socket.clone(),
            gid,
            shutdown.child_token(),
        );
        // One authenticator for the X2Go frontend and the dashboard: one PAM pool, one failure
        // record per source.
        let auth = config
            .auth
            .clone()
            .map(switchboard_auth::Authenticator::new);
        let x2go = match (&config.x2go, &auth) {
            (Some(x), Some(auth)) => Some(http::x2go::X2go::new(
                x.clone(),
                auth.clone(),
                engine.clone(),
                hub.clone(),
                store.clone(),
            )),
            _ => None,
        };
        // One set of connection slots for every HTTP listener, sized below the descriptor limit.
        let mut limits = web::serve::Limits::for_nofile(web::serve::nofile());
        if let Some(n) = config.http_max_connections {
            limits.max_connections = n;
        }
        if let Some(n) = config.http_max_per_source {
            limits.per_source = n;
        }
        let slots = web::serve::Slots::new(limits);
        let gateway = match (&config.gateway, &auth) {
            (Some(g), Some(a)) => {
                let gw_tls = match &g.tls {
                    Some((cert, key)) => Some(tls::server_config(cert, key)?),
                    None => None,
                };
                let listener = bind(g.listen).await?;
                Some(
                    gateway::start(
                        g.clone(),
                        listener,
                        gw_tls,
                        a.clone(),
                        kube.clone(),
                        slots.clone(),
                        shutdown.child_token(),
                    )
                    .map_err(BrokerError::Http)?,
                )
            }
            _ => None,
        };
        let gateway_addr = gateway.as_ref().map(|g| g.addr);
        let ui = http::ui::Ui::new(auth, config.ui_admin_group.clone(), tls.is_some());
        ui.spawn_sampler(engine.clone(), shutdown.child_token());
        let app = http::AppState {
            actions: actions.clone(),
            agents: hub.clone(),
            engine: engine.clone(),
            tokens,
            store: store.clone(),
            public_metrics: config.public_metrics,
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
            shutdown: shutdown.clone(),
            kube: kube.clone(),
        };
        let listener = bind(config.http_listen).await?;
        let http_addr = listener.local_addr().map_err(BrokerError::Http)?;
        let router = http::router::router(app, ui, x2go.clone());
        let stop = shutdown.clone();
        let https = tls.is_some();
        let server = tokio::spawn(web::serve::serve(
            listener,
            router,
            tls,
            slots,
            web::serve::Proxies {
                forwarding: Arc::new(config.trusted_proxies.clone()),
                proxy_protocol: Arc::default(),
            },
            "http",
            stop,
        ));
        tracing::info!(http = %http_addr, https, max_connections = limits.max_connections, per_source = limits.per_source, agents = ?agent_addr, mgmt = %config.management_socket.display(), store = %redact(&config.store_url), "broker started");
        Ok(Broker {
            x2go,
            gateway_addr,
            kube,
            kube_pools: config.kube_pools.clone(),
            gateway_config: config.gateway.clone(),
            gateway,
            agent_listening: agent_addr.is_some(),
            http_addr,
            engine,
            actions,
            agents: hub,
            agent_addr,
            agent_ca,
            mgmt_socket: config.management_socket.clone(),
            mgmt_task,
            shutdown,
            server,
            engine_task,
            store,
        })
    }

    /// What a SIGHUP needs to apply a new configuration to this broker.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            engine: self.engine.clone(),
            agents: self.agents.clone(),
            x2go: self.x2go.clone(),
            agent_listening: self.agent_listening,
            kube_pools: self.kube_pools.clone(),
            gateway: self.gateway_config.clone(),
        }
    }

    /// Stops serving and waits until everything has finished.
    pub async fn stop(self) -> Result<(), BrokerError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the broker has stopped (after its shutdown token was cancelled).
    pub async fn wait(self) -> Result<(), BrokerError> {
        let served = self.server.await;
        if let Some(g) = self.gateway {
            let _ = g.wait().await;
        }
        let _ = self.mgmt_task.await;
        let _ = self.engine_task.await;
        self.store.close().await;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BrokerError::Http(e)),
            Err(e) => Err(BrokerError::Http(std::io::Error::other(e))),
        }
    }
}

/// Applies a reloaded configuration to a running broker: hosts, pools and placement settings
/// (through the engine), agent expectations and liveness, and the X2Go profiles and settings.
/// Listen addresses, the store and TLS files need a restart.
#[derive(Debug, Clone)]
pub struct Reloader {
    engine: engine::EngineHandle,
    agents: agents::AgentHub,
    x2go: Option<http::x2go::X2go>,
    agent_listening: bool,
    kube_pools: Vec<config::KubePoolConfig>,
    gateway: Option<config::GatewayConfig>,
}

impl Reloader {
    /// Applies `c`; on an error nothing of it is applied by the engine.
    pub async fn apply(&self, c: Config) -> Result<(), engine::EngineError> {
        self.engine.reconfigure(c.cluster.clone()).await?;
        let agent_hosts: Vec<String> = c
            .cluster
            .hosts
            .iter()
            .filter(|h| h.agent)
            .map(|h| h.name.clone())
            .collect();
        if !self.agent_listening && !agent_hosts.is_empty() {
            tracing::warn!(
                "hosts with agents were added, but the agent listener was not started with the broker; restart the broker to accept their links"
            );
        }
        self.agents.expect(agent_hosts);
        self.agents
            .set_missed(c.cluster.settings.stale_after_intervals);
        self.agents
            .set_empty_inventory_grace(c.agent_empty_inventory_grace);
        match &self.x2go {
            Some(x) => x.reload(c.x2go, c.auth),
            None if c.x2go.is_some() => {
                tracing::warn!("[x2go] was added; restart the broker to start the X2Go frontend");
            }
            None => {}
        }
        if c.kube_pools != self.kube_pools {
            tracing::warn!(
                "Kubernetes pool settings changed; restart the broker to apply them (templates are re-read without one)"
            );
        }
        if c.gateway != self.gateway {
            tracing::warn!("[gateway] changed; restart the broker to apply it");
        }
        Ok(())
    }
}

/// Binds a TCP listener, naming the address when it cannot.
async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, BrokerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Bind { addr, source })
}

/// A store URL with any password replaced, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Runs a broker until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), BrokerError> {
    Broker::start(config, shutdown).await?.wait().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            super::redact("postgres://sb:hunter2@127.0.0.1:5432/sb"),
            "postgres://sb:***@127.0.0.1:5432/sb"
        );
        assert_eq!(
            super::redact("sqlite:///var/lib/x.db"),
            "sqlite:///var/lib/x.db"
        );
    }
}
