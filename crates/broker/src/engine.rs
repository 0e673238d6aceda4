//! The engine: one task owns the cluster state.
//!
//! Frontends send it [`Command`]s with a reply slot through an [`EngineHandle`]. The engine takes
//! whatever requests are queued (a batch), applies them in order, commits the durable events of
//! the whole batch to the store in one transaction, and only then replies: a reply that says
//! something exists means it is committed (group commit keeps this cheap under load). Readers get
//! an immutable [`Snapshot`] of hosts and pools, republished at most every 100 ms under load and
//! at once after operator changes; session queries run on the engine task.
//!
//! If a commit fails, every command of that batch gets `Unavailable` and the engine rebuilds its
//! state from the configuration and the store as soon as the store answers again (retrying with
//! backoff), so nothing acknowledged is lost and nothing unacknowledged is half there. What the
//! store does not hold (agent links and report intervals, the latest load, penalties and the
//! reservations already handed out) is carried from the state before the rebuild into the one
//! after it, so linked hosts stay placeable and no reservation a client was told of is dropped.

use crate::snapshot::{HostInfo, PoolInfo, Snapshot, host_info};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::model::{SessionState, Settings};
use switchboard_core::placement::Exclusion;
use switchboard_core::{
    AdminState, ClusterState, Command, CoreError, Event, HostSpec, Millis, Placement, PoolSpec,
};
use switchboard_store::{Store, StoreError};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Requests queued at most; senders wait when the engine is this far behind.
const QUEUE: usize = 4096;
/// Most requests applied in one batch (one store transaction).
const MAX_BATCH: usize = 512;
/// Snapshots are republished at most this often under load.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);
/// Time passes for the core (reservation expiry, stale reports) at least this often.
const TICK_EVERY: Duration = Duration::from_secs(1);

/// Where the engine's time comes from. The core never reads a clock: the engine passes it the
/// time with every command, from here.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's wall clock (what the broker runs on).
    Wall,
    /// A wall-clock start, moved on by tokio's clock: tests that pause tokio's time move the
    /// engine's with `tokio::time::advance`, so reservation expiry, liveness and the policies
    /// are tested without waiting for them.
    Tokio {
        /// The time at `at`.
        start: Millis,
        /// When the clock was made.
        at: Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's (paused in tests), starting at the wall clock's now.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            start: Millis::now_wall(),
            at: Instant::now(),
        }
    }

    /// The time now.
    pub fn now(&self) -> Millis {
        match self {
            Clock::Wall => Millis::now_wall(),
            Clock::Tokio { start, at } => start.after(at.elapsed()),
        }
    }
}

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The core refused the command (nothing changed).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The store could not commit; nothing of the command was kept.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

/// A read on the engine task; `None` means the state is being rebuilt (store unavailable).
type Query = Box<dyn FnOnce(Option<&ClusterState>) + Send>;
type Reply = oneshot::Sender<Result<Vec<Event>, EngineError>>;

enum Request {
    Apply {
        command: Command,
        reply: Reply,
    },

    Query(Query),
    Reconfigure {
        layout: Box<Layout>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
}

/// How often every host's view is rebuilt even if no event named it.
const FULL_EVERY: Duration = Duration::from_secs(1);

/// Host and pool views kept between snapshots: a snapshot rebuilds only the hosts that events
/// named since the last one (a report from one of 10,000 hosts rebuilds one view, not 10,000),
/// and everything once a second as a safety net.
struct Views {
    hosts: Vec<Arc<HostInfo>>,
    pos: HashMap<Arc<str>, usize>,
    changed: HashSet<Arc<str>>,
    all: bool,
    last_full: Instant,
    pool_hosts: HashMap<Arc<str>, Arc<Vec<String>>>,
}

impl Views {
    fn new() -> Views {
        Views {
            hosts: Vec::new(),
            pos: HashMap::new(),
            changed: HashSet::new(),
            all: true,
            last_full: Instant::now(),
            pool_hosts: HashMap::new(),
        }
    }

    /// Notes which hosts the events touched.
    fn note(&mut self, events: &[Event]) {
        if self.all {
            return;
        }
        for e in events {
            match e.host() {
                Some(h) => {
                    self.changed.insert(h.clone());
                }
                None => self.all = true,
            }
        }
    }

    fn everything(&mut self) {
        self.all = true;
    }

    fn build(&mut self, state: &ClusterState, ready: bool) -> Snapshot {
        let mut full = self.all || self.last_full.elapsed() >= FULL_EVERY;
        if !full {
            for name in self.changed.drain() {
                match (self.pos.get(&name), state.host(&name)) {
                    (Some(&i), Some(v)) => self.hosts[i] = Arc::new(host_info(&v)),
                    (None, None) => {}
                    // Added or removed: positions move.
                    _ => {
                        full = true;
                        break;
                    }
                }
            }
        }
        if full {
            self.hosts = state.hosts().map(|h| Arc::new(host_info(&h))).collect();
            self.pos = state
                .hosts()
                .enumerate()
                .map(|(i, h)| (h.name.clone(), i))
                .collect();
            self.pool_hosts = state
                .pools()
                .map(|p| (p.name.clone(), Arc::new(p.spec.hosts.clone())))
                .collect();
            self.changed.clear();
            self.all = false;
            self.last_full = Instant::now();
        }
        let pools = state
            .pools()
            .map(|p| PoolInfo {
                name: p.name.to_string(),
                policy: p.spec.policy.to_string(),
                hosts: self
                    .pool_hosts
                    .get(p.name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(p.spec.hosts.clone())),
                eligible: p.eligible,
                excluded: Exclusion::ALL
                    .iter()
                    .filter(|c| p.excluded.get(**c) > 0)
                    .map(|c| (c.as_str().to_owned(), p.excluded.get(*c)))
                    .chain(
                        (p.excluded.penalized > 0)
                            .then(|| ("penalized".to_owned(), p.excluded.penalized)),
                    )
                    .collect(),
            })
            .collect();
        Snapshot {
            at: state.now(),
            hosts: self.hosts.clone(),
            pools,
            sessions_by_state: state.session_counts().to_vec(),
            reservations: state.reservation_count(),
            ready,
        }
    }
}

/// How frontends talk to the engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Request>,
    reports: Arc<std::sync::Mutex<Vec<(Command, Instant)>>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    running: broadcast::Sender<SessionRunning>,
}

/// A session that became `running` (committed): what waits for a login to arrive listens for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRunning {
    /// Its user.
    pub user: Arc<str>,
    /// Its host.
    pub host: Arc<str>,
}

/// Session news kept for slow listeners; one that falls further behind is told it lagged.
const RUNNING_NEWS: usize = 4096;

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Apply { command, .. } => write!(f, "Apply({command:?})"),
            Request::Query(_) => f.write_str("Query"),
            Request::Reconfigure { .. } => f.write_str("Reconfigure"),
        }
    }
}

impl EngineHandle {
    /// Applies a command; `Ok` means its durable effects are committed.
    pub async fn apply(&self, command: Command) -> Result<Vec<Event>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Apply { command, reply })
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Queues an agent's load report that arrived at `received`, without waiting for it to be
    /// applied (it is volatile, and a bad one is only logged). The engine takes queued reports
    /// every [`REPORT_DRAIN_EVERY`], so thousands of agents reporting every second cost it a
    /// hundred wake-ups a second, not thousands. The time until a snapshot shows a report is
    /// recorded as `switchboard_report_to_snapshot_seconds`. When the queue is full (the engine
    /// is far behind) the report is dropped: the agent's next one replaces it.
    pub fn report(&self, command: Command, received: Instant) {
        let mut q = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() >= MAX_QUEUED_REPORTS {
            drop(q);
            metrics::counter!("switchboard_agent_reports_dropped_total").increment(1);
            return;
        }
        q.push((command, received));
    }

    /// Places a session for `user` in `pool`: the user's live session there if there is one,
    /// else a reservation on the best host. The answer carries what frontends need (host,
    /// address, the resumed session and its backend id, the reason).
    pub async fn place(
        &self,
        user: String,
        pool: String,
        client: Option<std::net::IpAddr>,
    ) -> Result<Placement, EngineError> {
        let events = self.apply(Command::Reserve { user, pool, client }).await?;
        events
            .into_iter()
            .find_map(|e| match e {
                Event::Placed(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| EngineError::Unavailable("placement produced no decision".into()))
    }

    /// Sessions that become `running` from now on (committed first).
    pub fn subscribe_running(&self) -> broadcast::Receiver<SessionRunning> {
        self.running.subscribe()
    }

    /// Runs a read-only function on the engine's current state.
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&ClusterState) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        let (tx, rx) = oneshot::channel();
        let q: Query = Box::new(move |s| {
            let _ = tx.send(s.map(f));
        });
        self.tx
            .send(Request::Query(q))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await
            .map_err(|_| EngineError::ShuttingDown)?
            .ok_or_else(|| EngineError::Unavailable("the broker is rebuilding its state".into()))
    }

    /// Replaces hosts, pools and placement settings with a new layout.
    pub async fn reconfigure(&self, layout: Layout) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Reconfigure {
                layout: Box::new(layout),
                reply,
            })
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// A receiver that sees every new snapshot (for change streams).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }
}

/// The configured part of the cluster (settings, hosts, pools): all the engine takes from the
/// configuration, and what it rebuilds from after a store outage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    /// Cluster-wide placement settings.
    pub settings: Settings,
    /// Every host, once, in first-seen order.
    pub hosts: Vec<HostSpec>,
    /// Every pool.
    pub pools: Vec<PoolSpec>,
}

/// How often queued agent load reports are applied.
pub const REPORT_DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Queued load reports beyond which new ones are dropped.
const MAX_QUEUED_REPORTS: usize = 1 << 17;

/// How often cluster gauges are refreshed from snapshots.
const METRICS_EVERY: Duration = Duration::from_secs(1);

struct Engine<S: Store> {
    state: ClusterState,
    clock: Clock,
    store: Arc<S>,
    layout: Layout,
    /// Hosts whose weight was set at run time: a reload keeps their weight.
    weight_overrides: HashSet<String>,
    rx: mpsc::Receiver<Request>,
    reports: Arc<std::sync::Mutex<Vec<(Command, Instant)>>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    last_publish: Instant,
    dirty: bool,
    /// Arrival times of agent reports applied since the last snapshot.
    unpublished: Vec<Instant>,
    /// When the snapshot's metrics were last recorded.
    last_metrics: Instant,
    /// Host and pool views between snapshots.
    views: Views,
    /// Where sessions that became running are announced.
    running: broadcast::Sender<SessionRunning>,
    /// The generation of the store connection the engine's commits go through, as last seen.
    connection: u64,
}

/// Builds the state from the configuration and the store's durable records.
async fn build_state<S: Store>(
    store: &S,
    layout: &Layout,
    clock: Clock,
) -> Result<(ClusterState, HashSet<String>), StoreError> {
    let durable = store.load().await?;
    let mut state = ClusterState::new(layout.settings.clone());
    let now = clock.now();
    for h in &layout.hosts {
        if let Err(e) = state.apply(Command::AddHost(h.clone()), now) {
            tracing::error!(host = %h.name, error = %e, "host from the configuration refused");
        }
    }
    for p in &layout.pools {
        if let Err(e) = state.apply(Command::DefinePool(p.clone()), now) {
            tracing::error!(pool = %p.name, error = %e, "pool from the configuration refused");
        }
    }
    let mut overrides = HashSet::new();
    let drains: Vec<(String, String)> = durable
        .hosts
        .iter()
        .filter(|h| h.admin == AdminState::Draining)
        .filter_map(|h| Some((h.name.clone(), h.offline_when_empty.clone()?)))
        .collect();
    for h in durable.hosts {
        if state.host(&h.name).is_none() {
            tracing::warn!(host = %h.name, "stored state for a host that is no longer configured; ignored");
            continue;
        }
        let _ = state.apply(
            Command::SetAdminState {
                host: h.name.clone(),
                state: h.admin,
            },
            now,
        );
        if let Some(w) = h.weight {
            let _ = state.apply(
                Command::SetWeight {
                    host: h.name.clone(),
                    weight: w,
                },
                now,
            );
            overrides.insert(h.name);
        }
    }
    for (host, hash) in durable.credentials {
        if let Err(e) = state.apply(Command::IssueCredential { host, hash }, now) {
            tracing::warn!(error = %e, "stored agent credential not restored");
        }
    }
    let _ = state.apply(
        Command::SeedIds {
            above: switchboard_core::SessionId(durable.max_session_id),
        },
        now,
    );
    let mut orphans = 0usize;
    for s in durable.sessions {
        if let Err(e) = state.apply(Command::RestoreSession(s), now) {
            orphans += 1;
            tracing::debug!(error = %e, "stored session not restored");
        }
    }
    if orphans > 0 {
        tracing::warn!(
            sessions = orphans,
            "stored sessions on hosts that are no longer configured were not restored (kept in the store)"
        );
    }
    // Pending "drain then offline"s, once the sessions are back: a host that is empty now (its
    // last reservation lapsed with the broker) goes offline at once, and that is committed.
    let mut changes = Vec::new();
    for (host, by) in drains {
        match state.apply(Command::DrainThenOffline { host, by }, now) {
            Ok(events) => changes.extend(events.into_iter().filter(Event::is_durable)),
            Err(e) => tracing::warn!(error = %e, "stored drain-then-offline not restored"),
        }
    }
    if !changes.is_empty() {
        store.commit(&changes).await?;
    }
    Ok((state, overrides))
}

/// Starts the engine task on the wall clock. Fails if the store cannot be read at start-up.
pub async fn start<S: Store>(
    store: Arc<S>,
    layout: Layout,
    shutdown: CancellationToken,
) -> Result<(EngineHandle, tokio::task::JoinHandle<()>), StoreError> {
    start_with_clock(store, layout, Clock::Wall, shutdown).await
}

/// Starts the engine task on `clock`. Fails if the store cannot be read at start-up.
pub async fn start_with_clock<S: Store>(
    store: Arc<S>,
    layout: Layout,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<(EngineHandle, tokio::task::JoinHandle<()>), StoreError> {
    let started = Instant::now();
    let (state, weight_overrides) = build_state(&*store, &layout, clock).await?;
    tracing::info!(
        hosts = state.host_count(),
        sessions = state.session_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state loaded"
    );
    let (tx, rx) = mpsc::channel(QUEUE);
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut views = Views::new();
    let (snap_tx, snap_rx) = watch::channel(Arc::new(views.build(&state, true)));
    let (running, _) = broadcast::channel(RUNNING_NEWS);
    let engine = Engine {
        running: running.clone(),
        connection: store.connection_generation(),
        state,
        clock,
        store,
        layout,
        weight_overrides,
        rx,
        reports: reports.clone(),
        snapshots: snap_tx,
        last_publish: Instant::now(),
        dirty: false,
        unpublished: Vec::new(),
        last_metrics: Instant::now() - METRICS_EVERY,
        views,
    };
    let task = tokio::spawn(engine.run(shutdown));
    Ok((
        EngineHandle {
            tx,
            reports,
            snapshots: snap_rx,
            running,
        },
        task,
    ))
}

/// Answers a request while the state is being rebuilt.
fn refuse(r: Request) {
    let why = || EngineError::Unavailable("the store is unavailable; retry shortly".into());
    match r {
        Request::Apply { reply, .. } => {
            let _ = reply.send(Err(why()));
        }
        Request::Reconfigure { reply, .. } => {
            let _ = reply.send(Err(why()));
        }
        Request::Query(q) => q(None),
    }
}

/// Logs (one warning per inventory, counts and the first reason only) and counts the inventory
/// rows the core skipped.
fn refused_rows(events: &[Event]) {
    for e in events {
        if let Event::InventoryRowsRefused {
            host,
            invalid,
            duplicate,
            first,
        } = e
        {
            tracing::warn!(
                host = %host,
                invalid,
                duplicate,
                first = %first,
                "inventory rows skipped (the rest of the inventory was applied)"
            );
            crate::metrics::inventory_rows_refused(*invalid, *duplicate);
        }
    }
}

/// Events after which readers must see the change at once (operators act on what they see).
fn changes_hosts(e: &Event) -> bool {
    matches!(
        e,
        Event::HostAdded(_)
            | Event::HostUpdated(_)
            | Event::HostRemoved { .. }
            | Event::PoolDefined(_)
            | Event::PoolRemoved { .. }
            | Event::AdminStateChanged { .. }
            | Event::WeightChanged { .. }
            | Event::HealthChanged { .. }
    )
}

impl<S: Store> Engine<S> {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut publish = tokio::time::interval(SNAPSHOT_EVERY);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain = tokio::time::interval(REPORT_DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = tick.tick() => {
                    // Timers can make durable changes (a drained host going offline when its
                    // last reservation lapses): a tick is committed like any command.
                    let (reply, _) = oneshot::channel();
                    self.process(vec![Request::Apply { command: Command::Tick, reply }]).await;
                    self.maybe_publish(false);
                    continue;
                }
                _ = publish.tick() => {
                    self.maybe_publish(false);
                    continue;
                }
                _ = drain.tick() => {
                    let urgent = self.apply_reports().await;
                    self.maybe_publish(urgent);
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.process(batch).await;
        }
        self.publish(false);
        tracing::info!("engine stopped");
    }

    async fn process(&mut self, batch: Vec<Request>) {
        let mut durable: Vec<Event> = Vec::new();
        let mut replies: Vec<(Reply, Vec<Event>)> = Vec::new();
        let mut reconfigured: Vec<oneshot::Sender<Result<(), EngineError>>> = Vec::new();
        let mut queries: Vec<Query> = Vec::new();
        let mut urgent = false;
        for req in batch {
            match req {
                Request::Apply { command, reply } => {
                    let started = Instant::now();
                    let is_placement = matches!(command, Command::Reserve { .. });
                    // A tick that fired no timer changed nothing readers see: no new snapshot.
                    let is_tick = matches!(command, Command::Tick);
                    let weight_host = match &command {
                        Command::SetWeight { host, .. } => Some(host.clone()),
                        _ => None,
                    };
                    match self.state.apply(command, self.clock.now()) {
                        Ok(events) => {
                            if is_placement {
                                crate::metrics::placement(&events, started.elapsed());
                            }
                            if let Some(h) = weight_host {
                                self.weight_overrides.insert(h);
                            }
                            refused_rows(&events);
                            urgent |= events.iter().any(changes_hosts);
                            self.views.note(&events);
                            self.dirty |= !is_tick || !events.is_empty();
                            if events.iter().any(Event::is_durable) {
                                durable.extend(events.iter().filter(|e| e.is_durable()).cloned());
                                replies.push((reply, events));
                            } else {
                                // Nothing to commit (placements, load): answer at once.
                                let _ = reply.send(Ok(events));
                            }
                        }
                        Err(e) => {
                            if is_placement {
                                crate::metrics::placement_failed(&e, started.elapsed());
                            }
                            // Timers that fired before the refusal still changed the state.
                            let held = self.state.take_held();
                            urgent |= held.iter().any(changes_hosts);
                            self.views.note(&held);
                            durable.extend(held.into_iter().filter(Event::is_durable));
                            self.dirty = true;
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
                Request::Query(q) => queries.push(q),
                Request::Reconfigure { layout, reply } => {
                    let events = self.reconfigure(*layout);
                    self.views.everything();
                    durable.extend(events.into_iter().filter(Event::is_durable));
                    urgent = true;
                    self.dirty = true;
                    reconfigured.push(reply);
                }
            }
        }
        let committed = if durable.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            let r = self.store.commit(&durable).await;
            crate::metrics::commit(started.elapsed(), r.is_ok());
            self.note_connection();
            r
        };
        match committed {
            Ok(()) => {
                for (reply, events) in replies {
                    self.announce(&events);
                    let _ = reply.send(Ok(events));
                }
                for reply in reconfigured {
                    let _ = reply.send(Ok(()));
                }
                for q in queries {
                    q(Some(&self.state));
                }
                self.maybe_publish(urgent);
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; refusing this batch and rebuilding from the store");
                let msg = e.to_string();
                for (reply, _) in replies {
                    let _ = reply.send(Err(EngineError::Unavailable(msg.clone())));
                }
                for reply in reconfigured {
                    let _ = reply.send(Err(EngineError::Unavailable(msg.clone())));
                }
                for q in queries {
                    q(None);
                }
                self.recover().await;
            }
        }
    }

    /// Notices that the store connection the engine commits through was opened again (after a
    /// failure): what was held on the old one is gone. Logged and counted; a broker holding a
    /// lock on that connection takes it again here.
    fn note_connection(&mut self) {
        let now = self.store.connection_generation();
        if now != self.connection {
            if self.connection != 0 {
                metrics::counter!("switchboard_store_reconnects_total").increment(1);
                tracing::warn!(
                    generation = now,
                    "the engine's store connection was opened again"
                );
            }
            self.connection = now;
        }
    }

    /// Waits for the store and rebuilds the state from it. The state in memory may hold the
    /// failed batch's changes, so until the rebuild every request is refused with `Unavailable`
    /// (readers of the snapshot keep the last one published, marked not ready).
    async fn recover(&mut self) {
        let mut last = (*self.snapshots.borrow().clone()).clone();
        last.ready = false;
        crate::metrics::snapshot(&last);
        self.snapshots.send_replace(Arc::new(last));
        // What the store does not hold (agent links, load, reservations already promised) is
        // carried over: the rebuild undoes the failed batch, not what agents told us.
        let carried = self.state.volatile();
        let mut delay = Duration::from_millis(100);
        loop {
            match build_state(&*self.store, &self.layout, self.clock).await {
                Ok((mut state, overrides)) => {
                    self.note_connection();
                    let restore = Command::RestoreVolatile(Box::new(carried));
                    if let Err(e) = state.apply(restore, self.clock.now()) {
                        tracing::warn!(error = %e, "runtime state not carried over the rebuild");
                    }
                    self.state = state;
                    self.weight_overrides = overrides;
                    self.views.everything();
                    tracing::info!(
                        sessions = self.state.session_count(),
                        "store is back; state rebuilt"
                    );
                    self.publish(true);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "store still unavailable");
                    let wake = tokio::time::sleep(delay);
                    tokio::pin!(wake);
                    loop {
                        tokio::select! {
                            _ = &mut wake => break,
                            r = self.rx.recv() => match r {
                                Some(r) => refuse(r),
                                None => return,
                            },
                        }
                    }
                    // Capped low: the state is back within half a second of the store.
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Moves hosts, pools and settings to a new configuration, keeping sessions and runtime
    /// state. Returns the events.
    fn reconfigure(&mut self, new: Layout) -> Vec<Event> {
        let now = self.clock.now();
        let mut events = Vec::new();
        let mut run = |state: &mut ClusterState, c: Command| match state.apply(c, now) {
            Ok(ev) => events.extend(ev),
            Err(e) => tracing::warn!(error = %e, "configuration change not applied"),
        };
        run(
            &mut self.state,
            Command::UpdateSettings(new.settings.clone()),
        );
        let wanted: HashSet<&str> = new.hosts.iter().map(|h| h.name.as_str()).collect();
        for h in &new.hosts {
            let mut spec = h.clone();
            match self.state.host(&h.name) {
                None => run(&mut self.state, Command::AddHost(spec)),
                Some(current) => {
                    if self.weight_overrides.contains(&h.name) {
                        spec.weight = current.spec.weight;
                    }
                    if *current.spec != spec {
                        run(&mut self.state, Command::UpdateHost(spec));
                    }
                }
            }
        }
        let wanted_pools: HashSet<&str> = new.pools.iter().map(|p| p.name.as_str()).collect();
        let old_pools: Vec<String> = self.state.pools().map(|p| p.name.to_string()).collect();
        for p in old_pools {
            if !wanted_pools.contains(p.as_str()) {
                run(&mut self.state, Command::RemovePool { name: p });
            }
        }
        let old_hosts: Vec<(String, u32)> = self
            .state
            .hosts()
            .map(|h| (h.name.to_string(), h.sessions))
            .collect();
        for (name, sessions) in old_hosts {
            if wanted.contains(name.as_str()) {
                continue;
            }
            if sessions > 0 {
                tracing::warn!(host = %name, sessions, "host left the configuration but has live sessions: draining it, it is removed once empty and reloaded");
                run(
                    &mut self.state,
                    Command::SetAdminState {
                        host: name,
                        state: AdminState::Draining,
                    },
                );
            } else {
                self.weight_overrides.remove(&name);
                run(&mut self.state, Command::RemoveHost { name, force: false });
            }
        }
        for p in &new.pools {
            let same = self.state.pool(&p.name).is_some_and(|cur| cur.spec == p);
            if !same {
                run(&mut self.state, Command::DefinePool(p.clone()));
            }
        }
        self.layout = new;
        events
    }

    /// Applies the queued agent reports; returns whether readers must see the result at once.
    /// Reports themselves change nothing durable, but timers that fire with them can.
    async fn apply_reports(&mut self) -> bool {
        let reports = std::mem::take(
            &mut *self
                .reports
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut urgent = false;
        let mut durable = Vec::new();
        let now = self.clock.now();
        for (command, received) in reports {
            self.unpublished.push(received);
            let events = match self.state.apply(command, now) {
                Ok(events) => events,
                Err(e) => {
                    tracing::debug!(error = %e, "agent report not applied");
                    self.state.take_held()
                }
            };
            self.views.note(&events);
            urgent |= events.iter().any(changes_hosts);
            durable.extend(events.into_iter().filter(Event::is_durable));
            self.dirty = true;
        }
        if !durable.is_empty() {
            let started = Instant::now();
            let r = self.store.commit(&durable).await;
            crate::metrics::commit(started.elapsed(), r.is_ok());
            if let Err(e) = r {
                tracing::error!(error = %e, "store commit failed; rebuilding from the store");
                self.recover().await;
                return true;
            }
        }
        urgent
    }

    /// Tells listeners about sessions these (committed) events made running.
    fn announce(&self, events: &[Event]) {
        if self.running.receiver_count() == 0 {
            return;
        }
        for e in events {
            let news = match e {
                Event::SessionStarted(s) if s.state == SessionState::Running => SessionRunning {
                    user: s.user.clone(),
                    host: s.host.clone(),
                },
                Event::SessionStateChanged {
                    id,
                    host,
                    state: SessionState::Running,
                    ..
                } => match self.state.session(*id) {
                    Some(s) => SessionRunning {
                        user: s.user,
                        host: host.clone(),
                    },
                    None => continue,
                },
                _ => continue,
            };
            let _ = self.running.send(news);
        }
    }

    fn maybe_publish(&mut self, urgent: bool) {
        if urgent || (self.dirty && self.last_publish.elapsed() >= SNAPSHOT_EVERY) {
            self.publish(true);
        }
    }

    fn publish(&mut self, ready: bool) {
        let snap = self.views.build(&self.state, ready);
        // Per-host gauges cost a map lookup each; scrapes come every few seconds, so once a
        // second is plenty even when snapshots go out every 100 ms.
        if !ready || self.last_metrics.elapsed() >= METRICS_EVERY {
            crate::metrics::snapshot(&snap);
            self.last_metrics = Instant::now();
        }
        self.snapshots.send_replace(Arc::new(snap));
        self.last_publish = Instant::now();
        self.dirty = false;
        crate::metrics::reports_published(&mut self.unpublished, self.last_publish);
    }
}
