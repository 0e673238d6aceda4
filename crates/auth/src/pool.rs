//! The bounded pool that blocking sign-in work runs on: PAM conversations and password-file
//! hash checks.
//!
//! A pool has `workers` places that run (each a tokio blocking thread) and `queue` places that
//! wait for one. A job that finds every place taken is refused at once with [`Busy`] instead of
//! waiting: a burst of sign-ins from many addresses costs at most `workers` threads (and, for
//! argon2, `workers` times its memory) and `queue` cheap waiting tasks, whatever its size.
//!
//! A suspect (a source address that has just failed) may take at most `workers - 1` of the
//! running places (all of them when there is one) and at most three quarters of all the places,
//! so a stream of wrong passwords from many addresses leaves room for users with clean records.
//!
//! A place is held until the job's thread returns: a caller that stops waiting (a timeout, a
//! closed connection) frees its place at once if its job has not started, and otherwise when the
//! job ends, so the bound on threads always holds. A job that panics frees its places too.
//!
//! Metrics (labelled `work`, the pool's name): `switchboard_auth_busy_total` (jobs refused),
//! `switchboard_auth_running` and `switchboard_auth_waiting` (gauges).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default waiting places.
pub const DEFAULT_QUEUE: usize = 64;
/// Most workers a pool may have.
pub const MAX_WORKERS: usize = 256;
/// Most waiting places a pool may have.
pub const MAX_QUEUE: usize = 4096;

/// Default workers for password-file checks: one per CPU, at most 4 (argon2 as written by
/// `switchboard passwd` takes 19 MiB and a few tens of milliseconds per check: more threads than
/// cores only add memory, and 4 keep it under 80 MiB).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// A pool's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Jobs running at once (blocking threads).
    pub workers: usize,
    /// Jobs waiting for a worker; beyond it jobs are refused.
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            workers: default_workers(),
            queue: DEFAULT_QUEUE,
        }
    }
}

/// Why a job did not run to its end.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every place was taken: refused without waiting.
    #[error("busy: every worker and waiting place is taken")]
    Busy,
    /// The job panicked.
    #[error("the job panicked: {0}")]
    Panicked(String),
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    limits: Limits,
    places: Arc<Semaphore>,
    suspect_places: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    suspect_workers: Arc<Semaphore>,
    admitted: AtomicUsize,
    running: AtomicUsize,
}

/// A bounded pool for blocking work. Cheap to clone; clones share the places.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// What a job holds while it waits or runs; dropping it gives everything back.
struct Admission {
    inner: Arc<Inner>,
    running: bool,
    _places: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    workers: Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)>,
}

impl Admission {
    fn start(&mut self, held: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)) {
        self.workers = Some(held);
        self.running = true;
        self.inner.running.fetch_add(1, Ordering::Relaxed);
        self.inner.publish();
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.running {
            self.inner.running.fetch_sub(1, Ordering::Relaxed);
        }
        self.inner.admitted.fetch_sub(1, Ordering::Relaxed);
        self.inner.publish();
    }
}

impl Inner {
    fn publish(&self) {
        let admitted = self.admitted.load(Ordering::Relaxed);
        let running = self.running.load(Ordering::Relaxed);
        metrics::gauge!("switchboard_auth_running", "work" => self.name).set(running as f64);
        metrics::gauge!("switchboard_auth_waiting", "work" => self.name)
            .set(admitted.saturating_sub(running) as f64);
    }
}

impl Pool {
    /// A pool named `name` (in logs and metrics) with `limits` (workers at least 1).
    pub fn new(name: &'static str, limits: Limits) -> Pool {
        let workers = limits.workers.max(1);
        let places = workers.saturating_add(limits.queue);
        let suspect_places = places.saturating_sub((places / 4).max(1)).max(1);
        Pool {
            inner: Arc::new(Inner {
                name,
                limits: Limits {
                    workers,
                    queue: limits.queue,
                },
                places: Arc::new(Semaphore::new(places)),
                suspect_places: Arc::new(Semaphore::new(suspect_places)),
                workers: Arc::new(Semaphore::new(workers)),
                suspect_workers: Arc::new(Semaphore::new(workers.saturating_sub(1).max(1))),
                admitted: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
            }),
        }
    }

    /// The pool's size.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Relaxed)
    }

    /// Jobs admitted now: running or waiting for a worker.
    pub fn admitted(&self) -> usize {
        self.inner.admitted.load(Ordering::Relaxed)
    }

    fn busy(&self) -> PoolError {
        metrics::counter!("switchboard_auth_busy_total", "work" => self.inner.name).increment(1);
        PoolError::Busy
    }

    /// Runs `job` on a blocking thread once a worker is free, or refuses it at once when every
    /// place is taken. `suspect`: the job comes from a source that has just failed.
    pub async fn run<T, F>(&self, suspect: bool, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let inner = &self.inner;
        let suspect_place = if suspect {
            Some(
                inner
                    .suspect_places
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| self.busy())?,
            )
        } else {
            None
        };
        let place = inner
            .places
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.busy())?;
        inner.admitted.fetch_add(1, Ordering::Relaxed);
        let mut admission = Admission {
            inner: inner.clone(),
            running: false,
            _places: (place, suspect_place),
            workers: None,
        };
        inner.publish();
        // The semaphores are never closed, so these waits end only with a permit.
        let suspect_worker = if suspect {
            Some(
                inner
                    .suspect_workers
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| PoolError::Busy)?,
            )
        } else {
            None
        };
        let worker = inner
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Busy)?;
        admission.start((worker, suspect_worker));
        let handle = tokio::task::spawn_blocking(move || {
            let _admission = admission;
            job()
        });
        handle.await.map_err(|e| {
            tracing::error!(work = inner.name, error = %e, "a blocking sign-in job panicked");
            PoolError::Panicked(e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A job that blocks its thread until told to end.
    fn gate() -> (mpsc::Sender<()>, impl FnOnce() -> u8 + Send + 'static) {
        let (tx, rx) = mpsc::channel::<()>();
        (tx, move || {
            let _ = rx.recv();
            7
        })
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_pool_refuses_at_once_and_frees_its_places_when_jobs_end() {
        let pool = Pool::new(
            "test",
            Limits {
                workers: 1,
                queue: 1,
            },
        );
        let (end1, job1) = gate();
        let (end2, job2) = gate();
        let p = pool.clone();
        let first = tokio::spawn(async move { p.run(false, job1).await });
        settle().await;
        let p = pool.clone();
        let second = tokio::spawn(async move { p.run(false, job2).await });
        settle().await;
        assert_eq!((pool.running(), pool.admitted()), (1, 2));
        // Both places taken: a third job is refused without waiting, and never runs.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let refused = tokio::time::timeout(
            Duration::from_millis(200),
            pool.run(false, move || r.fetch_add(1, Ordering::Relaxed)),
        )
        .await
        .expect("a refusal does not wait");
        assert_eq!(refused, Err(PoolError::Busy));
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        end1.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(7));
        settle().await;
        assert_eq!((pool.running(), pool.admitted()), (1, 1));
        end2.send(()).unwrap();
        assert_eq!(second.await.unwrap(), Ok(7));
        assert_eq!((pool.running(), pool.admitted()), (0, 0));
        assert_eq!(pool.run(false, || 1).await, Ok(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_gives_its_places_back() {
        let pool = Pool::new(
            "test",
            Limits {
                workers: 1,
                queue: 0,
            },
        );
        let r = pool
            .run(false, || -> u8 { panic!("a job that panics") })
            .await;
        assert!(matches!(r, Err(PoolError::Panicked(_))), "{r:?}");
        assert_eq!((pool.running(), pool.admitted()), (0, 0));
        assert_eq!(pool.run(false, || 2).await, Ok(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_stops_waiting_frees_a_waiting_place_at_once_and_a_running_one_at_the_end()
     {
        let pool = Pool::new(
            "test",
            Limits {
                workers: 1,
                queue: 1,
            },
        );
        let (end, job) = gate();
        // The running job's caller gives up: its thread still runs and keeps its worker.
        let p = pool.clone();
        let running = tokio::spawn(async move { p.run(false, job).await });
        settle().await;
        running.abort();
        let _ = running.await;
        assert_eq!((pool.running(), pool.admitted()), (1, 1));
        // A waiting job's caller gives up: its place is free at once.
        let p = pool.clone();
        let waiting = tokio::spawn(async move { p.run(false, || 3).await });
        settle().await;
        assert_eq!(pool.admitted(), 2);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!((pool.running(), pool.admitted()), (1, 1));
        // The place is usable again; the worker comes back when the thread ends.
        let p = pool.clone();
        let next = tokio::spawn(async move { p.run(false, || 4).await });
        settle().await;
        assert_eq!(pool.run(false, || 5).await, Err(PoolError::Busy));
        end.send(()).unwrap();
        assert_eq!(next.await.unwrap(), Ok(4));
        assert_eq!((pool.running(), pool.admitted()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn suspects_leave_a_worker_and_a_quarter_of_the_places_to_clean_sources() {
        let pool = Pool::new(
            "test",
            Limits {
                workers: 2,
                queue: 2,
            },
        );
        let mut ends = Vec::new();
        let mut jobs = Vec::new();
        // Three of the four places go to suspects; the fourth is refused to a suspect.
        for _ in 0..3 {
            let (end, job) = gate();
            ends.push(end);
            let p = pool.clone();
            jobs.push(tokio::spawn(async move { p.run(true, job).await }));
            settle().await;
        }
        // Suspects hold only one of the two workers.
        assert_eq!((pool.running(), pool.admitted()), (1, 3));
        assert_eq!(pool.run(true, || 0).await, Err(PoolError::Busy));
        // A clean source gets the last place and the free worker at once.
        assert_eq!(pool.run(false, || 9).await, Ok(9));
        for e in ends {
            e.send(()).unwrap();
        }
        for j in jobs {
            assert_eq!(j.await.unwrap(), Ok(7));
        }
    }
}
