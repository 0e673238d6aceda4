//! Signals of the long-running commands: SIGTERM and SIGINT stop them, SIGHUP reloads their
//! configuration.

use anyhow::Result;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// The SIGHUP handler of a long-running command: reads `path` again with `load` and hands the
/// new configuration to `apply`. A file that does not load, or a configuration that is not
/// applied, is logged and the running configuration stays.
pub(crate) fn reload_on_hup<C, LE, AE, F, Fut>(
    path: &Path,
    load: fn(&Path) -> std::result::Result<C, LE>,
    apply: F,
) -> Option<Box<dyn Fn() + Send>>
where
    C: Send + 'static,
    LE: std::fmt::Display + 'static,
    AE: std::fmt::Display,
    F: Fn(C) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::result::Result<(), AE>> + Send + 'static,
{
    let path = path.to_owned();
    Some(Box::new(move || match load(&path) {
        Ok(c) => {
            let applied = apply(c);
            let path = path.clone();
            tokio::spawn(async move {
                match applied.await {
                    Ok(()) => tracing::info!(file = %path.display(), "configuration reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "configuration not applied; keeping the running one")
                    }
                }
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration not reloaded; keeping the running one")
        }
    }))
}

/// Cancels `token` on SIGINT or SIGTERM; calls `on_hup` on SIGHUP.
pub(crate) fn signals(
    token: CancellationToken,
    on_hup: Option<Box<dyn Fn() + Send>>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); token.cancel(); return; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); token.cancel(); return; }
                _ = hup.recv() => {
                    match &on_hup {
                        Some(f) => f(),
                        None => tracing::info!("SIGHUP ignored: nothing to reload"),
                    }
                }
            }
        }
    });
    Ok(())
}
