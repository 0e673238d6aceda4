//! Xpra sessions (xpra 3.1 on Debian 12): one xpra server per X display.
//!
//! `xpra list` only looks at the socket directories of the user who runs it (`/run/user/$UID/xpra`,
//! `~/.xpra`, and `/run/xpra` if the user may write there), and those are private to that user.
//! So the source asks each user in turn, as that user:
//!
//! * **users**: the configured `users`, or else the owners of the per-user runtime directories
//!   (`/run/user/<uid>`, uid >= 1000 and not 65534), named through `getent passwd UID…`. Every
//!   user with a logind session, or lingering, has one; an xpra server started over ssh or from a
//!   systemd user unit always does.
//! * **list**: `sudo -n -u USER -- xpra list`; the `LIVE session at :N` lines are the user's
//!   servers (`DEAD` and `UNKNOWN` sockets are skipped). After a server died, `xpra list` spends
//!   about 10 s re-probing its socket before removing it, so this call gets [`LIST_TIMEOUT`].
//! * **state**: `sudo -n -u USER -- xpra info :N`: `clients=0` → disconnected, more → running,
//!   with idle time the smallest `client.idle_time` / `client.<n>.idle_time` (seconds). When `info`
//!   fails (the server is busy or just went away) the server is reported running with no idle
//!   time, since `list` found it alive.
//! * **backend id**: the display, `:N` (unique on a host).
//! * **terminate**: `sudo -n -u USER -- xpra stop :N`; **disconnect**:
//!   `sudo -n -u USER -- xpra detach :N`; **kill**:
//!   `sudo -n -u USER -- pkill -KILL -u USER -f -- "[Xx]pra.* :N( |$)"`, which matches the server
//!   (`xpra start :N …`) and its X server (`Xvfb-for-Xpra-:N … :N`) and any `xpra attach :N`
//!   client of that user.
//!
//! Each call is a short Python start-up (about 0.15 s for `list`, 0.25 s for `info` on the build
//! host), so a listing costs one `list` per user and one `info` per server.

use super::{
    Listing, RunLimits, SessionAct, SourceError, check_user, display_argv, failed, run, run_checked,
};
use std::time::Duration;
use switchboard_core::model::{ReportedSession, ReportedState};

pub(super) fn default_xpra() -> String {
    "/usr/bin/xpra".to_owned()
}
pub(super) fn default_runtime_dir() -> String {
    "/run/user".to_owned()
}

/// Time allowed for one `xpra list`: with a stale socket (a server that died) it spends about 10 s
/// re-probing before it cleans the socket up.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Lowest uid whose runtime directory is looked at.
pub const MIN_UID: u32 = 1000;
/// The overflow uid (`nobody`), never a session user.
pub const NOBODY_UID: u32 = 65534;

/// The displays of the live servers in `xpra list` output.
pub fn parse_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("LIVE session at ") else {
            continue;
        };
        if let Some(display) = rest.split_whitespace().next()
            && check_display(display).is_ok()
        {
            out.push(display.to_owned());
        }
    }
    out
}

/// What `xpra info` tells about attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Connected clients.
    pub clients: u32,
    /// Seconds since the most recently active client did anything.
    pub idle_secs: Option<u64>,
}

/// The client count and idle time from `xpra info` output (`key=value` lines).
pub fn parse_info(argv: &str, text: &str) -> Result<Attachment, SourceError> {
    let mut clients = None;
    let mut idle: Option<u64> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "clients" {
            clients = value.trim().parse::<u32>().ok();
            continue;
        }
        let Some(rest) = key.strip_prefix("client.") else {
            continue;
        };
        let is_idle = rest == "idle_time"
            || rest
                .strip_suffix(".idle_time")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_idle && let Ok(v) = value.trim().parse::<u64>() {
            idle = Some(idle.map_or(v, |cur| cur.min(v)));
        }
    }
    let clients = clients.ok_or_else(|| SourceError::Parse {
        argv: argv.to_owned(),
        line: 0,
        detail: "no \"clients=\" line".to_owned(),
    })?;
    Ok(Attachment {
        clients,
        idle_secs: if clients > 0 { idle } else { None },
    })
}

/// Checks an X display as xpra names it: `:` and 1 to 9 digits.
pub fn check_display(d: &str) -> Result<(), SourceError> {
    match d.strip_prefix(':') {
        Some(n) if !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(SourceError::Invalid(format!(
            "xpra display {d:?} is not of the form :N"
        ))),
    }
}

/// User names from `getent passwd` output (`name:x:uid:gid:gecos:home:shell` lines).
pub fn parse_getent_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(':').next())
        .filter(|n| check_user(n).is_ok())
        .map(str::to_owned)
        .collect()
}

/// The users whose runtime directories exist in `runtime_dir` (uid >= [`MIN_UID`], not
/// [`NOBODY_UID`]), by name.
pub(super) async fn runtime_users(
    runtime_dir: &str,
    getent: &str,
    limits: &RunLimits,
) -> Result<Vec<String>, SourceError> {
    let io_err = |source| SourceError::Io {
        argv: format!("reading {runtime_dir}"),
        source,
    };
    let mut uids = Vec::new();
    let mut rd = match tokio::fs::read_dir(runtime_dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    while let Some(entry) = rd.next_entry().await.map_err(io_err)? {
        if let Some(uid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            && uid >= MIN_UID
            && uid != NOBODY_UID
        {
            uids.push(uid);
        }
    }
    if uids.is_empty() {
        return Ok(Vec::new());
    }
    uids.sort_unstable();
    let mut argv = vec![getent.to_owned(), "passwd".to_owned()];
    argv.extend(uids.iter().map(u32::to_string));
    let out = run(&argv, limits).await?;
    // getent exits 2 when some key is unknown and still prints the others.
    if !matches!(out.status.code(), Some(0 | 2)) {
        return Err(failed(&argv, &out));
    }
    Ok(parse_getent_names(&out.stdout))
}

fn as_user(sudo: &str, user: &str, program: &str, args: &[&str]) -> Vec<String> {
    super::x2go::as_user(sudo, user, program, args)
}

pub(super) async fn list(
    sudo: &str,
    xpra: &str,
    users: &[String],
    limits: &RunLimits,
) -> Result<Listing, SourceError> {
    let mut out = Vec::new();
    let mut listing = Listing::default();
    for user in users {
        if let Err(e) = check_user(user) {
            super::note_skipped("xpra", &e);
            listing.skipped += 1;
            continue;
        }
        let argv = as_user(sudo, user, xpra, &["list"]);
        let list_limits = RunLimits {
            timeout: limits.timeout.max(LIST_TIMEOUT),
            ..*limits
        };
        // One user's failing `xpra list` (a hung home, a broken ~/.xpra) costs that user's
        // listing only: their last known sessions stand.
        let text = match run_checked(&argv, &list_limits).await {
            Ok(t) => t,
            Err(e) => {
                super::note_skipped("xpra", &e);
                listing.skipped += 1;
                listing.failed_users.push(user.clone());
                continue;
            }
        };
        for display in parse_list(&text) {
            let info_argv = as_user(sudo, user, xpra, &["info", &display]);
            let attachment = match run_checked(&info_argv, limits).await {
                Ok(text) => parse_info(&display_argv(&info_argv), &text),
                Err(e) => Err(e),
            };
            let (state, idle_secs) = match attachment {
                Ok(Attachment { clients: 0, .. }) => (ReportedState::Disconnected, None),
                Ok(a) => (ReportedState::Running, a.idle_secs),
                Err(e) => {
                    let session_display = &display;
                    tracing::warn!(error = %e, user = %user, session = %session_display,
                        "xpra info failed; reporting the server as running");
                    (ReportedState::Running, None)
                }
            };
            out.push(ReportedSession {
                backend_id: display,
                user: user.clone(),
                state,
                idle_secs,
                info: None,
            });
        }
    }
    listing.sessions = out;
    Ok(listing)
}

/// The argument vector for `act` on `session`.
pub fn act_argv(
    sudo: &str,
    xpra: &str,
    pkill: &str,
    act: SessionAct,
    session: &ReportedSession,
) -> Result<Vec<String>, SourceError> {
    let (user, display) = (session.user.as_str(), session.backend_id.as_str());
    check_user(user)?;
    check_display(display)?;
    Ok(match act {
        SessionAct::Terminate => as_user(sudo, user, xpra, &["stop", display]),
        SessionAct::Disconnect => as_user(sudo, user, xpra, &["detach", display]),
        SessionAct::Kill => {
            let pattern = format!("[Xx]pra.* {display}( |$)");
            as_user(
                sudo,
                user,
                pkill,
                &["-KILL", "-u", user, "-f", "--", &pattern],
            )
        }
    })
}

pub(super) async fn act(
    sudo: &str,
    xpra: &str,
    pkill: &str,
    act: SessionAct,
    session: &ReportedSession,
    limits: &RunLimits,
) -> Result<String, SourceError> {
    let argv = act_argv(sudo, xpra, pkill, act, session)?;
    let display = &session.backend_id;
    match act {
        SessionAct::Terminate => {
            run_checked(&argv, limits).await?;
            Ok(format!("xpra server {display} stopped"))
        }
        SessionAct::Disconnect => {
            run_checked(&argv, limits).await?;
            Ok(format!("xpra server {display}: clients detached"))
        }
        SessionAct::Kill => {
            let out = run(&argv, limits).await?;
            match out.status.code() {
                Some(0) => Ok(format!("xpra server {display} killed")),
                Some(1) => Ok(format!("xpra server {display}: no processes were left")),
                _ => Err(failed(&argv, &out)),
            }
        }
    }
}
