//! The Kubernetes session backend: start-or-get of a user's session pod through the API server.
//!
//! - A ready pod is returned at once from a reflector cache (a list and watch of the pool's pods),
//!   without a request to the API server.
//! - Otherwise one start task per pod name does the work; a second request for the same user and
//!   type joins it and sees the same progress and result (no second create, no race).
//! - The task gets the pod, creates it from its template when it is missing (409 AlreadyExists means
//!   someone else created it: take that one), replaces it when it finished, failed, was evicted or
//!   is being deleted, and then watches it (a watch on the one pod, from the resourceVersion it
//!   read) until its Ready condition is true. No exec, no polling, no log scraping.
//! - Image errors, crash loops and unschedulable pods fail the start at once with Kubernetes'
//!   reason; each stage (scheduling, image pull, start) has its own budget. A failed or timed-out
//!   pod is deleted so that the next attempt starts clean.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::names;
use crate::status::{Budgets, PodState, Stage, classify};
use crate::template::{Owner, RenderOptions, TemplateDir, render};

/// A pool's Kubernetes settings.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Rendering (namespace, pool, port, home).
    pub render: RenderOptions,
    /// Stage budgets.
    pub budgets: Budgets,
    /// Longest wait for an old pod to go away before its replacement is created.
    pub deletion_timeout: Duration,
}

/// Where a ready session listens.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// Pod name.
    pub pod: String,
    /// Pod IP and session port.
    pub address: SocketAddr,
}

/// Why a start failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum StartError {
    /// No usable template.
    #[error("{message}")]
    Template {
        /// Why.
        message: String,
    },
    /// Kubernetes says the pod cannot start (image, crash loop, no node).
    #[error("pod {pod}: {reason}: {message}")]
    Broken {
        /// Pod name.
        pod: String,
        /// Kubernetes reason.
        reason: String,
        /// Kubernetes message.
        message: String,
    },
    /// A stage used up its budget.
    #[error("pod {pod}: {stage} took longer than {budget_secs} s")]
    Timeout {
        /// Pod name.
        pod: String,
        /// Stage.
        stage: &'static str,
        /// Its budget.
        budget_secs: u64,
    },
    /// A pod (or the user's home claim) with this name exists and belongs to another user or
    /// type.
    #[error("{pod} exists but belongs to another user or session type")]
    NotOwner {
        /// Pod name.
        pod: String,
    },
    /// The API server failed.
    #[error("Kubernetes API: {message}")]
    Api {
        /// What it said.
        message: String,
    },
}

impl From<kube::Error> for StartError {
    fn from(e: kube::Error) -> StartError {
        StartError::Api {
            message: e.to_string(),
        }
    }
}

/// What a start is doing, for progress events.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    /// Looking for an existing pod.
    Looking {
        /// Pod name.
        pod: String,
    },
    /// Creating the pod.
    Creating {
        /// Pod name.
        pod: String,
    },
    /// Deleting a finished or failed pod before creating a new one.
    Replacing {
        /// Pod name.
        pod: String,
        /// Why.
        reason: String,
    },
    /// Waiting in a stage.
    Waiting {
        /// Pod name.
        pod: String,
        /// Stage.
        stage: Stage,
        /// Kubernetes' latest reason.
        detail: Option<String>,
    },
    /// Ready.
    Ready(Target),
    /// Failed.
    Failed(StartError),
}

impl Progress {
    /// Whether this is the last event of a start.
    pub fn is_final(&self) -> bool {
        matches!(self, Progress::Ready(_) | Progress::Failed(_))
    }
}

/// A start in flight (or done): its progress, latest first.
#[derive(Clone, Debug)]
pub struct StartHandle {
    rx: watch::Receiver<Progress>,
}

impl StartHandle {
    /// The latest progress.
    pub fn current(&self) -> Progress {
        self.rx.borrow().clone()
    }

    /// Waits for the next change; `None` once the final event has been seen.
    pub async fn next(&mut self) -> Option<Progress> {
        if self.rx.borrow().is_final() {
            return None;
        }
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Waits for the outcome.
    pub async fn wait(mut self) -> Result<Target, StartError> {
        let p = self
            .rx
            .wait_for(Progress::is_final)
            .await
            .map(|p| p.clone())
            .unwrap_or(Progress::Failed(StartError::Api {
                message: "start task ended".into(),
            }));
        match p {
            Progress::Ready(t) => Ok(t),
            Progress::Failed(e) => Err(e),
            _ => unreachable!("wait_for returns a final event"),
        }
    }
}

/// The backend of one Kubernetes pool.
#[derive(Clone, Debug)]
pub struct Backend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    templates: TemplateDir,
    settings: PoolSettings,
    cache: Store<Pod>,
    /// Starts in flight: pod name → (user, session type, progress).
    inflight: Mutex<HashMap<String, Inflight>>,
    /// Uids of pods this backend deleted that the cache may still show (its watch lags the
    /// API): never handed out again as ready.
    deleted: Mutex<std::collections::HashSet<String>>,
}

#[derive(Debug)]
struct Inflight {
    user: String,
    session_type: String,
    rx: watch::Receiver<Progress>,
}

impl Backend {
    /// A backend for `settings` on `client`, with templates under `templates`. Spawns the
    /// reflector that keeps the pool's pods in memory (stopped when `shutdown` fires); it
    /// retries with backoff while the API server is away.
    pub fn new(
        client: kube::Client,
        templates: TemplateDir,
        settings: PoolSettings,
        shutdown: CancellationToken,
    ) -> Backend {
        let ns = settings.render.namespace.clone();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let claims = Api::namespaced(client, &ns);
        let (cache, writer) = reflector::store();
        let selector = format!(
            "{}={},{}={}",
            names::MANAGED_BY,
            names::MANAGER,
            names::POOL_LABEL,
            names::label_value(&settings.render.pool)
        );
        let stream = watcher(pods.clone(), watcher::Config::default().labels(&selector))
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    item = stream.next() => match item {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                        None => break,
                    },
                }
            }
        });
        Backend {
            inner: Arc::new(Inner {
                pods,
                claims,
                templates,
                settings,
                cache,
                inflight: Mutex::new(HashMap::new()),
                deleted: Mutex::new(std::collections::HashSet::new()),
            }),
        }
    }

    /// Waits until the pod cache holds the first full list.
    pub async fn cache_ready(&self) {
        // kube's readiness future wakes only the last of several tasks waiting on it, so the
        // others look again now and then instead of waiting for a wake-up that never comes.
        loop {
            match tokio::time::timeout(
                std::time::Duration::from_millis(100),
                self.inner.cache.wait_until_ready(),
            )
            .await
            {
                Ok(_) => return,
                Err(_) => continue,
            }
        }
    }

    /// The pool's pods as last seen (for reconciliation and the API).
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.inner.cache.state()
    }

    /// Pods with a start in flight.
    pub fn starting(&self) -> std::collections::HashSet<String> {
        self.inner
            .inflight
            .lock()
            .expect("inflight")
            .keys()
            .cloned()
            .collect()
    }

    /// The settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// The templates.
    pub fn templates(&self) -> &TemplateDir {
        &self.inner.templates
    }

    /// Starts or gets `owner`'s session of `session_type`. Returns at once; the handle gives
    /// progress and the outcome. A ready, owned pod in the cache gives a finished handle.
    pub fn start_or_get(&self, owner: &Owner, session_type: &str) -> StartHandle {
        // Without a limit nothing is refused.
        self.start_or_get_within(owner, session_type, None)
            .unwrap_or_else(|n| unreachable!("a start without a limit refused at {n}"))
    }

    /// [`Backend::start_or_get`], unless `owner` has `max` sessions of other types already
    /// (pods in the cache and starts in flight): then `Err` with how many. The count and the
    /// start are one step, so starts at once cannot all pass the check.
    pub fn start_or_get_within(
        &self,
        owner: &Owner,
        session_type: &str,
        max: Option<usize>,
    ) -> Result<StartHandle, usize> {
        let name = names::pod_name(&owner.user, session_type);
        if let Some(target) = self.cached_ready(&name, owner, session_type) {
            let (_tx, rx) = watch::channel(Progress::Ready(target));
            return Ok(StartHandle { rx });
        }
        let mut inflight = self.inner.inflight.lock().expect("inflight");
        if let Some(i) = inflight.get(&name) {
            return Ok(StartHandle { rx: i.rx.clone() });
        }
        if let Some(max) = max {
            let mut types: std::collections::HashSet<String> = inflight
                .values()
                .filter(|i| i.user == owner.user)
                .map(|i| i.session_type.clone())
                .collect();
            for pod in self.inner.cache.state() {
                let a = pod.metadata.annotations.as_ref();
                if a.and_then(|a| a.get(names::USER_ANNOTATION)) == Some(&owner.user)
                    && let Some(t) = a.and_then(|a| a.get(names::TYPE_ANNOTATION))
                {
                    types.insert(t.clone());
                }
            }
            if types.len() >= max && !types.contains(session_type) {
                return Err(types.len());
            }
        }
        let (tx, rx) = watch::channel(Progress::Looking { pod: name.clone() });
        inflight.insert(
            name.clone(),
            Inflight {
                user: owner.user.clone(),
                session_type: session_type.to_owned(),
                rx: rx.clone(),
            },
        );
        drop(inflight);
        let me = self.clone();
        let owner = owner.clone();
        let session_type = session_type.to_string();
        tokio::spawn(async move {
            let outcome = me.drive(&owner, &session_type, &name, &tx).await;
            me.inner.inflight.lock().expect("inflight").remove(&name);
            tx.send_replace(match outcome {
                Ok(t) => Progress::Ready(t),
                Err(e) => {
                    tracing::info!(pod = %name, error = %e, "session pod start failed");
                    Progress::Failed(e)
                }
            });
        });
        Ok(StartHandle { rx })
    }

    /// Deletes `owner`'s pod of `session_type` (log-off). `Ok(false)` when there was none.
    pub async fn delete(&self, user: &str, session_type: &str) -> Result<bool, StartError> {
        let name = names::pod_name(user, session_type);
        match self.inner.pods.get_opt(&name).await? {
            Some(pod) if owned_by(&pod, user, session_type) => {
                let gone = delete_pod(&self.inner.pods, &name).await?;
                self.forget_cached(&pod);
                Ok(gone)
            }
            Some(_) => Err(StartError::NotOwner { pod: name }),
            None => Ok(false),
        }
    }

    /// Deletes a pod by name (reconciliation).
    pub async fn delete_pod(&self, name: &str) -> Result<bool, StartError> {
        let cached = self
            .inner
            .cache
            .get(&ObjectRef::new(name).within(&self.inner.settings.render.namespace));
        let gone = delete_pod(&self.inner.pods, name).await?;
        if let Some(pod) = cached {
            self.forget_cached(&pod);
        }
        Ok(gone)
    }

    /// Remembers that `pod` is deleted, so that the cache's copy (until its watch catches up)
    /// is not taken for a ready session. Uids the cache no longer holds are dropped.
    fn forget_cached(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let live: std::collections::HashSet<String> = self
            .inner
            .cache
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        let mut d = self.inner.deleted.lock().expect("deleted");
        d.retain(|u| live.contains(u));
        d.insert(uid);
    }

    fn cached_ready(&self, name: &str, owner: &Owner, session_type: &str) -> Option<Target> {
        let pod = self
            .inner
            .cache
            .get(&ObjectRef::new(name).within(&self.inner.settings.render.namespace))?;
        if !owned_by(&pod, &owner.user, session_type) {
            return None;
        }
        if pod
            .metadata
            .uid
            .as_ref()
            .is_some_and(|u| self.inner.deleted.lock().expect("deleted").contains(u))
        {
            // Deleted by us; the API says what is there now.
            return None;
        }
        match classify(&pod) {
            PodState::Ready { ip } => Some(self.target(name, ip, &pod)),
            _ => None,
        }
    }

    fn target(&self, name: &str, ip: IpAddr, pod: &Pod) -> Target {
        let port = session_port(pod).unwrap_or(self.inner.settings.render.default_port);
        Target {
            pod: name.to_string(),
            address: SocketAddr::new(ip, port),
        }
    }

    async fn drive(
        &self,
        owner: &Owner,
        session_type: &str,
        name: &str,
        tx: &watch::Sender<Progress>,
    ) -> Result<Target, StartError> {
        let inner = &self.inner;
        let template = |e: crate::template::TemplateError| StartError::Template {
            message: e.to_string(),
        };
        let (path, tpl) = inner
            .templates
            .lookup(owner, session_type)
            .map_err(template)?;
        let rendered =
            render(&tpl, &path, owner, session_type, &inner.settings.render).map_err(template)?;
        if let Some(claim) = &rendered.claim {
            match inner.claims.create(&PostParams::default(), claim).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // The user's home from an earlier session, or a claim of that name made by
                    // someone else (two names hashing alike, or made by hand): only the first
                    // is mounted.
                    let claim_name = claim.metadata.name.clone().unwrap_or_default();
                    let existing = inner.claims.get(&claim_name).await?;
                    let owner_of = existing
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(names::USER_ANNOTATION));
                    if owner_of.map(String::as_str) != Some(owner.user.as_str()) {
                        return Err(StartError::NotOwner { pod: claim_name });
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let budgets = inner.settings.budgets;
        let mut rounds = 0;
        'outer: loop {
            rounds += 1;
            if rounds > 8 {
                return Err(StartError::Api {
                    message: format!("pod {name} keeps changing; giving up"),
                });
            }
            let pod = match inner.pods.get_opt(name).await? {
                Some(p) => p,
                None => {
                    tx.send_replace(Progress::Creating {
                        pod: name.to_string(),
                    });
                    match inner
                        .pods
                        .create(&PostParams::default(), &rendered.pod)
                        .await
                    {
                        Ok(p) => p,
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if !owned_by(&pod, &owner.user, session_type) {
                return Err(StartError::NotOwner {
                    pod: name.to_string(),
                });
            }
            let mut state = classify(&pod);
            let mut rv = pod.metadata.resource_version.clone().unwrap_or_default();
            let mut stage = None;
            let mut deadline = Instant::now();
            loop {
                match state {
                    PodState::Ready { ip } => return Ok(self.target(name, ip, &pod)),
                    PodState::Broken { reason, message } => {
                        let _ = delete_pod(&inner.pods, name).await;
                        return Err(StartError::Broken {
                            pod: name.to_string(),
                            reason,
                            message,
                        });
                    }
                    PodState::Replace { reason } => {
                        tx.send_replace(Progress::Replacing {
                            pod: name.to_string(),
                            reason,
                        });
                        self.replace(name, &rv).await?;
                        continue 'outer;
                    }
                    PodState::Waiting { stage: s, detail } => {
                        if stage != Some(s) {
                            stage = Some(s);
                            deadline = Instant::now() + budgets.of(s);
                        }
                        tx.send_if_modified(|p| {
                            let new = Progress::Waiting {
                                pod: name.to_string(),
                                stage: s,
                                detail,
                            };
                            if *p == new {
                                false
                            } else {
                                *p = new;
                                true
                            }
                        });
                    }
                }
                let s = stage.expect("set while waiting");
                let wp = WatchParams::default()
                    .fields(&format!("metadata.name={name}"))
                    .timeout(290);
                let mut events =
                    match tokio::time::timeout_at(deadline, inner.pods.watch(&wp, &rv)).await {
                        Err(_) => return Err(self.timed_out(name, s).await),
                        Ok(r) => r?.boxed(),
                    };
                state = loop {
                    let next = match tokio::time::timeout_at(deadline, events.try_next()).await {
                        Err(_) => return Err(self.timed_out(name, s).await),
                        Ok(n) => n,
                    };
                    match next {
                        Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                            rv = p.metadata.resource_version.clone().unwrap_or(rv);
                            let st = classify(&p);
                            if let PodState::Ready { ip } = st {
                                return Ok(self.target(name, ip, &p));
                            }
                            break st;
                        }
                        Ok(Some(WatchEvent::Deleted(_))) => continue 'outer,
                        Ok(Some(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                        // 410 Gone (resourceVersion too old) and other watch errors: read again.
                        Ok(Some(WatchEvent::Error(_))) | Err(_) => continue 'outer,
                        // The server ended the watch (timeout): watch again from where we were.
                        Ok(None) => {
                            events =
                                match tokio::time::timeout_at(deadline, inner.pods.watch(&wp, &rv))
                                    .await
                                {
                                    Err(_) => return Err(self.timed_out(name, s).await),
                                    Ok(r) => r?.boxed(),
                                };
                        }
                    }
                };
            }
        }
    }

    async fn timed_out(&self, name: &str, stage: Stage) -> StartError {
        let _ = delete_pod(&self.inner.pods, name).await;
        StartError::Timeout {
            pod: name.to_string(),
            stage: stage.as_str(),
            budget_secs: self.inner.settings.budgets.of(stage).as_secs(),
        }
    }

    /// Deletes `name` (unless it is already going) and waits until it is gone.
    async fn replace(&self, name: &str, rv: &str) -> Result<(), StartError> {
        let pods = &self.inner.pods;
        let deadline = Instant::now() + self.inner.settings.deletion_timeout;
        delete_pod(pods, name).await?;
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(60);
        let mut rv = rv.to_string();
        loop {
            if pods.get_opt(name).await?.is_none() {
                return Ok(());
            }
            let mut events = match tokio::time::timeout_at(deadline, pods.watch(&wp, &rv)).await {
                Err(_) => break,
                Ok(r) => r?.boxed(),
            };
            loop {
                match tokio::time::timeout_at(deadline, events.try_next()).await {
                    Err(_) => {
                        return Err(StartError::Timeout {
                            pod: name.to_string(),
                            stage: "deletion",
                            budget_secs: self.inner.settings.deletion_timeout.as_secs(),
                        });
                    }
                    Ok(Ok(Some(WatchEvent::Deleted(_)))) => return Ok(()),
                    Ok(Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p)))) => {
                        rv = p.metadata.resource_version.unwrap_or(rv);
                    }
                    Ok(Ok(Some(WatchEvent::Bookmark(b)))) => rv = b.metadata.resource_version,
                    Ok(Ok(Some(WatchEvent::Error(_))) | Err(_) | Ok(None)) => {
                        rv = String::new();
                        break;
                    }
                }
            }
        }
        Err(StartError::Timeout {
            pod: name.to_string(),
            stage: "deletion",
            budget_secs: self.inner.settings.deletion_timeout.as_secs(),
        })
    }
}

async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<bool, StartError> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `pod` is `user`'s session of `session_type` (by its annotations).
pub fn owned_by(pod: &Pod, user: &str, session_type: &str) -> bool {
    let a = pod.metadata.annotations.as_ref();
    a.and_then(|a| a.get(names::USER_ANNOTATION))
        .map(String::as_str)
        == Some(user)
        && a.and_then(|a| a.get(names::TYPE_ANNOTATION))
            .map(String::as_str)
            == Some(session_type)
}

/// The port a container names `session` or `xpra`.
pub fn session_port(pod: &Pod) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| matches!(p.name.as_deref(), Some("session" | "xpra")))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_events_are_flat_json_objects() {
        // Clients (the gateway's waiting page, REST callers) read these fields directly.
        let failed = Progress::Failed(StartError::Broken {
            pod: "alice-xfce".into(),
            reason: "ImagePullBackOff".into(),
            message: "Back-off pulling image".into(),
        });
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({ "event": "failed", "error": "broken", "pod": "alice-xfce",
                "reason": "ImagePullBackOff", "message": "Back-off pulling image" })
        );
        let waiting = Progress::Waiting {
            pod: "p".into(),
            stage: Stage::Pulling,
            detail: Some("ContainerCreating".into()),
        };
        assert_eq!(
            serde_json::to_value(&waiting).unwrap(),
            serde_json::json!({ "event": "waiting", "pod": "p", "stage": "pulling", "detail": "ContainerCreating" })
        );
        let ready = Progress::Ready(Target {
            pod: "p".into(),
            address: "10.0.0.1:14500".parse().unwrap(),
        });
        assert_eq!(
            serde_json::to_value(&ready).unwrap(),
            serde_json::json!({ "event": "ready", "pod": "p", "address": "10.0.0.1:14500" })
        );
    }
}
