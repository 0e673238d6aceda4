//! TCP connect health checks, as HAProxy's `check inter … rise … fall …` and keepalived's
//! TCP_CHECK: every `interval`, connect to the backend within `timeout`; `fall` failures in a
//! row take an up backend down (no new connections; live ones are left alone), `rise` successes
//! in a row bring it back. Backends start up, so a restart does not refuse connections for
//! `rise × interval`; a dead one is down within `fall × interval` plus a timeout.

use crate::service::{Backend, Service};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Checks `backend` of `service` until it is removed or the director stops.
pub fn spawn(service: Arc<Service>, backend: Arc<Backend>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let (mut ok_run, mut fail_run) = (0u32, 0u32);
        loop {
            let h = service.health();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = backend.stop.cancelled() => return,
                () = tokio::time::sleep(h.interval) => {}
            }
            if !h.enabled {
                backend.up.store(true, Ordering::Relaxed);
                continue;
            }
            let ok = matches!(
                tokio::time::timeout(h.timeout, TcpStream::connect(backend.addr)).await,
                Ok(Ok(_))
            );
            let up = backend.up.load(Ordering::Relaxed);
            if ok {
                ok_run += 1;
                fail_run = 0;
                if !up && ok_run >= h.rise {
                    backend.up.store(true, Ordering::Relaxed);
                    tracing::info!(service = %service.name, backend = %backend.addr, "backend up");
                }
            } else {
                fail_run += 1;
                ok_run = 0;
                if up && fail_run >= h.fall {
                    backend.up.store(false, Ordering::Relaxed);
                    tracing::warn!(service = %service.name, backend = %backend.addr, failures = fail_run, "backend down: health check failed");
                }
            }
        }
    });
}
