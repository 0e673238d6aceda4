//! systemd-logind sessions, through `loginctl` (systemd 252 on Debian 12).
//!
//! * **list**: `loginctl list-sessions --no-legend --no-pager -o json` for the ids (the plain
//!   `--no-legend` table is accepted too, for a loginctl that ignores `-o json` there), then one
//!   `loginctl show-session --no-pager -p Id -p Name -p State -p Active -p IdleHint
//!   -p IdleSinceHint -p Class -p Type -p Remote -p Seat ID…` for all of them. A session that ends
//!   between the two calls is simply missing from the second (loginctl then exits 1 with
//!   "No session 'N' known", which is not an error here).
//! * **state**: `State=active` or `online` → running; `closing` (the user logged out, processes
//!   linger) and anything else → not reported. logind's `Active=` says whether the session is
//!   the foreground one on its seat (VT switching); a remote session exists only while its
//!   connection does, and an `online` (not foreground) session is a background or
//!   switched-away one: all of those are reported as running. logind has no notion of a
//!   disconnected session, so a logind source never reports one.
//! * **idle**: when `IdleHint=yes`, `now - IdleSinceHint` (microseconds since the epoch).
//! * **filter**: `Class=` in `session_classes` (default `user`; greeter, lock-screen, manager and
//!   manager-early are never reported), `Type=` in `session_types` if given, and with
//!   `require_seat_or_remote` (default) a seat or `Remote=yes`.
//! * **terminate**: `loginctl --no-ask-password terminate-session -- ID`;
//!   **kill**: `loginctl --no-ask-password kill-session -s KILL -- ID`. Both need the polkit action
//!   `org.freedesktop.login1.manage` for the agent's user. **disconnect** is not supported.

use super::{
    MAX_NAME_LEN, RunLimits, SessionAct, SourceError, check_user, display_argv, failed, run,
    run_checked,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard_core::model::{ReportedSession, ReportedState};

/// Classes never reported, whatever `session_classes` says.
pub const NEVER_CLASSES: &[&str] = &["greeter", "lock-screen", "manager", "manager-early"];

/// The properties asked of `show-session`.
pub const PROPERTIES: &[&str] = &[
    "Id",
    "Name",
    "State",
    "Active",
    "IdleHint",
    "IdleSinceHint",
    "Class",
    "Type",
    "Remote",
    "Seat",
];

pub(super) fn default_loginctl() -> String {
    "/usr/bin/loginctl".to_owned()
}
pub(super) fn default_classes() -> Vec<String> {
    vec!["user".to_owned()]
}

/// Which sessions a logind source reports.
#[derive(Clone, Copy, Debug)]
pub struct Filter<'a> {
    /// Accepted `Class=` values.
    pub classes: &'a [String],
    /// Accepted `Type=` values; empty = any.
    pub types: &'a [String],
    /// Only sessions with a seat or `Remote=yes`.
    pub require_seat_or_remote: bool,
}

#[derive(Deserialize)]
struct JsonRow {
    session: String,
}

/// Session ids from `loginctl list-sessions` output: the JSON array of `-o json`, or the plain
/// table (`--no-legend`; a header line starting with `SESSION` and the "N sessions listed."
/// footer are skipped if present).
pub fn parse_list_sessions(argv: &str, text: &str) -> Result<Vec<String>, SourceError> {
    let trimmed = text.trim();
    let ids: Vec<String> = if trimmed.starts_with('[') {
        let rows: Vec<JsonRow> = serde_json::from_str(trimmed).map_err(|e| SourceError::Parse {
            argv: argv.to_owned(),
            line: e.line(),
            detail: format!("not the JSON loginctl writes: {e}"),
        })?;
        rows.into_iter().map(|r| r.session).collect()
    } else {
        text.lines()
            .filter_map(|line| {
                let t = line.trim();
                if t.is_empty()
                    || t.starts_with("SESSION")
                    || t.ends_with("listed.")
                    || t == "No sessions."
                {
                    return None;
                }
                t.split_whitespace().next().map(str::to_owned)
            })
            .collect()
    };
    for id in &ids {
        check_session_id(id)?;
    }
    Ok(ids)
}

/// Checks a logind session id (`1`, `c2`, …): non-empty, ASCII letters, digits, `-` and `_`, not
/// starting with `-`.
pub fn check_session_id(id: &str) -> Result<(), SourceError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SourceError::Invalid(format!(
            "logind session id {id:?} is not of the form logind uses"
        )))
    }
}

/// The `Key=Value` blocks of `loginctl show-session` output (blocks separated by empty lines).
pub fn parse_show_session(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut blocks = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                blocks.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            cur.insert(k.to_owned(), v.to_owned());
        }
    }
    if !cur.is_empty() {
        blocks.push(cur);
    }
    blocks
}

/// Turns `show-session` blocks into reported sessions: filtered and mapped as the module
/// documentation says. `now_us` is the current time in microseconds since the epoch.
pub fn sessions_from_blocks(
    blocks: &[BTreeMap<String, String>],
    filter: &Filter<'_>,
    now_us: u64,
) -> Vec<ReportedSession> {
    let mut out = Vec::new();
    for b in blocks {
        let get = |k: &str| b.get(k).map(String::as_str).unwrap_or("");
        let (id, user, class) = (get("Id"), get("Name"), get("Class"));
        if check_session_id(id).is_err() || check_user(user).is_err() {
            continue;
        }
        if NEVER_CLASSES.contains(&class) || !filter.classes.iter().any(|c| c == class) {
            continue;
        }
        if !filter.types.is_empty() && !filter.types.iter().any(|t| t == get("Type")) {
            continue;
        }
        if filter.require_seat_or_remote && get("Seat").is_empty() && get("Remote") != "yes" {
            continue;
        }
        let state = match get("State") {
            "active" | "online" => ReportedState::Running,
            _ => continue,
        };
        let idle_secs = if get("IdleHint") == "yes" {
            get("IdleSinceHint")
                .parse::<u64>()
                .ok()
                .filter(|since| *since > 0)
                .map(|since| now_us.saturating_sub(since) / 1_000_000)
        } else {
            None
        };
        out.push(ReportedSession {
            backend_id: id.to_owned(),
            user: user.to_owned(),
            state,
            idle_secs,
            info: None,
        });
    }
    out
}

/// The `show-session` argument vector for `ids`.
pub fn show_argv(loginctl: &str, ids: &[String]) -> Vec<String> {
    let mut v = vec![
        loginctl.to_owned(),
        "show-session".to_owned(),
        "--no-pager".to_owned(),
    ];
    for p in PROPERTIES {
        v.push("-p".to_owned());
        v.push((*p).to_owned());
    }
    v.push("--".to_owned());
    v.extend(ids.iter().cloned());
    v
}

pub(super) async fn list(
    loginctl: &str,
    filter: &Filter<'_>,
    limits: &RunLimits,
) -> Result<Vec<ReportedSession>, SourceError> {
    let list_argv: Vec<String> = [
        loginctl,
        "list-sessions",
        "--no-legend",
        "--no-pager",
        "-o",
        "json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let text = run_checked(&list_argv, limits).await?;
    let ids = parse_list_sessions(&display_argv(&list_argv), &text)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let argv = show_argv(loginctl, &ids);
    let out = run(&argv, limits).await?;
    if !out.status.success() && !out.stderr_tail.contains("No session") {
        return Err(failed(&argv, &out));
    }
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Ok(sessions_from_blocks(
        &parse_show_session(&out.stdout),
        filter,
        now_us,
    ))
}

/// The argument vector for `act` on the session `id`.
pub fn act_argv(loginctl: &str, act: SessionAct, id: &str) -> Result<Vec<String>, SourceError> {
    check_session_id(id)?;
    let mid: &[&str] = match act {
        SessionAct::Terminate => &["terminate-session"],
        SessionAct::Kill => &["kill-session", "-s", "KILL"],
        SessionAct::Disconnect => {
            return Err(SourceError::Unsupported {
                kind: "logind",
                act,
                why: "logind sessions have no detachable client; terminate the session, or use \
                      the source of the remote-desktop software that runs in it",
            });
        }
    };
    let mut v = vec![loginctl.to_owned(), "--no-ask-password".to_owned()];
    v.extend(mid.iter().map(|s| (*s).to_owned()));
    v.push("--".to_owned());
    v.push(id.to_owned());
    Ok(v)
}

pub(super) async fn act(
    loginctl: &str,
    act: SessionAct,
    session: &ReportedSession,
    limits: &RunLimits,
) -> Result<String, SourceError> {
    let argv = act_argv(loginctl, act, &session.backend_id)?;
    run_checked(&argv, limits).await?;
    Ok(match act {
        SessionAct::Kill => format!("logind session {} killed", session.backend_id),
        _ => format!("logind session {} terminated", session.backend_id),
    })
}
