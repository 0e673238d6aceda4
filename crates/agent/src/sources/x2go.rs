//! X2Go sessions (x2goserver 4.1.0.3).
//!
//! * **list**: `sudo -n /usr/sbin/x2golistsessions_root` (root: it reads each user's
//!   `~/.x2go/C-<id>/state` and corrects the session database). One line per session,
//!   `|`-separated: field 2 is the session id, field 5 the state (`R` → running, `S` → suspended =
//!   disconnected; `T`erminating and `F`inished lines are skipped), field 12 the user. X2Go does not
//!   tell idle time.
//! * **terminate**: `sudo -n -u USER -- /usr/bin/x2goterminate-session ID`. The script works on
//!   `$HOME/.x2go` and signals the user's x2goagent, so it must run as the session's user (as
//!   x2gobroker-agent does with `sudo -u`).
//! * **disconnect**: `sudo -n -u USER -- /usr/bin/x2gosuspend-session ID`, likewise.
//! * **kill**: the terminate script (which also marks the session finished in the database), then
//!   `sudo -n -u USER -- /usr/bin/pkill -KILL -u USER -f -- ID`: every process of the user whose
//!   command line contains the session id, which are the session's x2goagent (`-name X2GO-<id>`)
//!   and x2goruncommand (started with the id as an argument); the desktop's processes lose their
//!   X server with them. Only a failure of pkill itself fails the kill (exit 1, "nothing matched",
//!   means the session was already gone).
//!
//! Session ids and user names are checked before they reach a command line: ids are what
//! x2gostartagent generates (`[A-Za-z0-9._@-]`, not starting with `-`).

use super::{
    Listing, MAX_NAME_LEN, RunLimits, SessionAct, SourceError, check_user, display_argv, failed,
    run, run_checked,
};
use switchboard_core::model::{ReportedSession, ReportedState};

pub(super) fn default_list_command() -> Vec<String> {
    vec![
        "/usr/bin/sudo".to_owned(),
        "-n".to_owned(),
        "/usr/sbin/x2golistsessions_root".to_owned(),
    ]
}
pub(super) fn default_terminate_command() -> String {
    "/usr/bin/x2goterminate-session".to_owned()
}
pub(super) fn default_suspend_command() -> String {
    "/usr/bin/x2gosuspend-session".to_owned()
}

/// Longest `x2golistsessions` line kept as a session's `info` (handed to X2Go clients that
/// resume the session).
pub const MAX_INFO: usize = 1024;

/// Parses the output of `x2golistsessions_root` (or `x2golistsessions`). Empty lines are skipped;
/// a line with fewer than 12 fields, or an empty or unsafe id or user, is an error naming the line.
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
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let err = |detail: String| SourceError::Parse {
            argv: argv.to_owned(),
            line: i + 1,
            detail,
        };
        let fields: Vec<&str> = line.split('|').collect();
        if fields.len() < 12 {
            errors.push(err(format!(
                "expected at least 12 '|'-separated fields, found {}",
                fields.len()
            )));
            continue;
        }
        let (id, state, user) = (fields[1], fields[4], fields[11]);
        if let Err(e) = check_session_id(id).and_then(|()| check_user(user)) {
            errors.push(err(e.to_string()));
            continue;
        }
        let state = match state {
            "R" => ReportedState::Running,
            "S" => ReportedState::Disconnected,
            // T (terminating) and F (finished) are on their way out; anything else is unknown.
            _ => continue,
        };
        out.push(ReportedSession {
            backend_id: id.to_owned(),
            user: user.to_owned(),
            state,
            idle_secs: None,
            info: (line.len() <= MAX_INFO && !line.chars().any(char::is_control))
                .then(|| line.to_owned()),
        });
    }
    (out, errors)
}

/// Checks an X2Go session id: non-empty, at most [`MAX_NAME_LEN`] bytes, only the characters
/// x2gostartagent leaves in (`[A-Za-z0-9._@-]`), not starting with `-`.
pub fn check_session_id(id: &str) -> Result<(), SourceError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SourceError::Invalid(format!(
            "X2Go session id {id:?} is not of the form x2gostartagent generates ([A-Za-z0-9._@-]+)"
        )))
    }
}

pub(super) async fn list(argv: &[String], limits: &RunLimits) -> Result<Listing, SourceError> {
    let text = run_checked(argv, limits).await?;
    let (sessions, errors) = parse_rows(&display_argv(argv), &text);
    for e in &errors {
        super::note_skipped("x2go", e);
    }
    Ok(Listing {
        sessions,
        skipped: errors.len() as u64,
        failed_users: Vec::new(),
    })
}

/// Programs the actions use.
#[derive(Debug)]
pub struct Commands<'a> {
    /// sudo.
    pub sudo: &'a str,
    /// x2goterminate-session.
    pub terminate: &'a str,
    /// x2gosuspend-session.
    pub suspend: &'a str,
    /// pkill.
    pub pkill: &'a str,
}

/// The argument vector that runs `program id` as `user` through sudo.
pub fn as_user(sudo: &str, user: &str, program: &str, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [sudo, "-n", "-u", user, "--", program]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    v.extend(args.iter().map(|s| (*s).to_owned()));
    v
}

/// The argument vectors for `act` on `session`, in order (kill has two).
pub fn act_argvs(
    cmds: &Commands<'_>,
    act: SessionAct,
    session: &ReportedSession,
) -> Result<Vec<Vec<String>>, SourceError> {
    let (user, id) = (session.user.as_str(), session.backend_id.as_str());
    check_user(user)?;
    check_session_id(id)?;
    Ok(match act {
        SessionAct::Terminate => vec![as_user(cmds.sudo, user, cmds.terminate, &[id])],
        SessionAct::Disconnect => vec![as_user(cmds.sudo, user, cmds.suspend, &[id])],
        SessionAct::Kill => vec![
            as_user(cmds.sudo, user, cmds.terminate, &[id]),
            as_user(
                cmds.sudo,
                user,
                cmds.pkill,
                &["-KILL", "-u", user, "-f", "--", id],
            ),
        ],
    })
}

pub(super) async fn act(
    cmds: &Commands<'_>,
    act: SessionAct,
    session: &ReportedSession,
    limits: &RunLimits,
) -> Result<String, SourceError> {
    let argvs = act_argvs(cmds, act, session)?;
    let id = &session.backend_id;
    match act {
        SessionAct::Terminate => {
            run_checked(&argvs[0], limits).await?;
            Ok(format!("x2go session {id} terminated"))
        }
        SessionAct::Disconnect => {
            run_checked(&argvs[0], limits).await?;
            Ok(format!("x2go session {id} suspended"))
        }
        SessionAct::Kill => {
            let terminate = match run_checked(&argvs[0], limits).await {
                Ok(_) => "terminated".to_owned(),
                Err(e) => {
                    tracing::warn!(error = %e, session = %id, "x2go terminate before kill failed");
                    format!("terminate failed ({e})")
                }
            };
            let out = run(&argvs[1], limits).await?;
            match out.status.code() {
                Some(0) => Ok(format!(
                    "x2go session {id}: {terminate}; remaining processes killed"
                )),
                Some(1) => Ok(format!(
                    "x2go session {id}: {terminate}; no processes were left"
                )),
                _ => Err(failed(&argvs[1], &out)),
            }
        }
    }
}
