//! A site's own session program.
//!
//! ```toml
//! [[source]]
//! kind = "command"
//! list = ["/usr/local/lib/site/sessions", "list"]
//! terminate = ["/usr/local/lib/site/sessions", "terminate"]    # optional
//! kill = ["/usr/local/lib/site/sessions", "kill"]              # optional
//! disconnect = ["/usr/local/lib/site/sessions", "disconnect"]  # optional
//! ```
//!
//! **list** prints one JSON object per line, one line per session:
//!
//! ```json
//! {"id": "desk-7", "user": "alice", "state": "running", "idle_secs": 12}
//! ```
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `id` | string, required | the session's id, unique on the host (1–256 bytes, no control characters) |
//! | `user` | string, required | its owner (1–256 bytes, no control characters) |
//! | `state` | `"running"` or `"disconnected"`, required | whether a client is attached |
//! | `idle_secs` | non-negative integer, optional | seconds since the user last did anything |
//!
//! Other fields are ignored; empty lines are skipped; any other line that is not such an object
//! makes the whole listing fail with an error naming the line number. The program must exit 0.
//!
//! **terminate**, **kill** and **disconnect** are run with the session's id and user appended as
//! the last two arguments (as separate arguments: no shell is involved, so spaces, quotes or `;`
//! in them reach the program unchanged). Exit 0 is success; the trimmed stdout, if any, is the
//! message returned to the broker. An action that is not configured is refused as unsupported.

use super::{Listing, MAX_NAME_LEN, RunLimits, SessionAct, SourceError, display_argv, run_checked};
use serde::Deserialize;
use switchboard_core::model::{ReportedSession, ReportedState};

#[derive(Deserialize)]
struct Line {
    id: String,
    user: String,
    state: LineState,
    #[serde(default)]
    idle_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum LineState {
    Running,
    Disconnected,
}

fn check_field(name: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_NAME_LEN {
        return Err(format!("\"{name}\" must be 1 to {MAX_NAME_LEN} bytes"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("\"{name}\" contains control characters"));
    }
    Ok(())
}

/// Parses the list program's output (see the module documentation); the first bad line is an
/// error naming it.
pub fn parse_list(argv: &str, text: &str) -> Result<Vec<ReportedSession>, SourceError> {
    let (rows, mut errors) = parse_rows(argv, text);
    match errors.drain(..).next() {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

/// Like [`parse_list`], but a bad line is skipped: the good rows, and an error per bad line.
pub fn parse_rows(argv: &str, text: &str) -> (Vec<ReportedSession>, Vec<SourceError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |detail: String| SourceError::Parse {
            argv: argv.to_owned(),
            line: i + 1,
            detail,
        };
        let l: Line = match serde_json::from_str(line) {
            Ok(l) => l,
            Err(e) => {
                errors.push(err(e.to_string()));
                continue;
            }
        };
        if let Err(e) = check_field("id", &l.id).and_then(|()| check_field("user", &l.user)) {
            errors.push(err(e));
            continue;
        }
        out.push(ReportedSession {
            backend_id: l.id,
            user: l.user,
            state: match l.state {
                LineState::Running => ReportedState::Running,
                LineState::Disconnected => ReportedState::Disconnected,
            },
            idle_secs: l.idle_secs,
            info: None,
        });
    }
    (out, errors)
}

pub(super) async fn list(argv: &[String], limits: &RunLimits) -> Result<Listing, SourceError> {
    let text = run_checked(argv, limits).await?;
    let (sessions, errors) = parse_rows(&display_argv(argv), &text);
    for e in &errors {
        super::note_skipped("command", e);
    }
    Ok(Listing {
        sessions,
        skipped: errors.len() as u64,
        failed_users: Vec::new(),
    })
}

/// The configured argument vector with the session's id and user appended.
pub fn act_argv(base: &[String], session: &ReportedSession) -> Vec<String> {
    let mut v = base.to_vec();
    v.push(session.backend_id.clone());
    v.push(session.user.clone());
    v
}

pub(super) async fn act(
    base: Option<&[String]>,
    act: SessionAct,
    session: &ReportedSession,
    limits: &RunLimits,
) -> Result<String, SourceError> {
    let Some(base) = base else {
        return Err(SourceError::Unsupported {
            kind: "command",
            act,
            why: "no command is configured for it",
        });
    };
    let argv = act_argv(base, session);
    let stdout = run_checked(&argv, limits).await?;
    let msg = stdout.trim();
    Ok(if msg.is_empty() {
        format!("{act} of {} done", session.backend_id)
    } else {
        msg.chars().take(1024).collect()
    })
}
