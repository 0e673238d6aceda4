//! The management socket's line protocol (VERDE's command set and more), as pure parsing.
//!
//! One command per line, at most [`MAX_LINE`] bytes. Words are separated by blanks; nothing is
//! ever interpreted by a shell. With `verbose on` a reply is human text ending with a line that
//! holds only `.` (an error's first line starts with `error: `); with `verbose off` (the default
//! for programs) it is exactly one JSON object on one line: `{"ok": true, "data": …}` or
//! `{"ok": false, "error": "…"}`.

use std::fmt;

/// Longest line accepted, newline excluded.
pub const MAX_LINE: usize = 4096;

/// A target of `abortuser`, `shutdownuser` and `logoffuser`: a session id, or a user name (all of
/// that user's sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Switchboard's session id (all digits).
    Session(u64),
    /// A user name.
    User(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Session(id) => write!(f, "session {id}"),
            Target::User(u) => write!(f, "user {u}"),
        }
    }
}

/// Filters of `sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// `user=…`
    pub user: Option<String>,
    /// `host=…`
    pub host: Option<String>,
    /// `pool=…`
    pub pool: Option<String>,
    /// `state=…`
    pub state: Option<String>,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `help [command]`
    Help(Option<String>),
    /// `hello`
    Hello,
    /// `verbose [on|off]` (no argument: show the current setting)
    Verbose(Option<bool>),
    /// `servers`
    Servers,
    /// `server NAME`
    Server(String),
    /// `users`
    Users,
    /// `user NAME`
    User(String),
    /// `offlineserver NAME`
    OfflineServer(String),
    /// `onlineserver NAME`
    OnlineServer(String),
    /// `abortuser USER|SESSION`: kill now.
    AbortUser(Target),
    /// `shutdownuser USER|SESSION`: graceful terminate.
    ShutdownUser(Target),
    /// `logoffuser USER|SESSION [GRACE]`: terminate, then kill after GRACE seconds (default 60).
    LogoffUser(Target, u64),
    /// `quit`
    Quit,
    /// `drain NAME [--then-offline]`
    Drain {
        /// The host.
        host: String,
        /// Take it offline once it has no sessions left.
        then_offline: bool,
    },
    /// `undrain NAME`
    Undrain(String),
    /// `weight NAME N`
    Weight(String, u32),
    /// `sessions [user=…] [host=…] [pool=…] [state=…]`
    Sessions(SessionFilter),
    /// `reservations`
    Reservations,
    /// `explain USER POOL`
    Explain(String, String),
    /// `enroll HOST`
    Enroll(String),
    /// `revoke HOST`
    Revoke(String),
    /// `audit [N] [before=ID]`: the newest N records, or the N just older than record ID.
    Audit {
        /// How many.
        n: u32,
        /// The id of the last record of the previous page.
        before: Option<String>,
    },
}

/// Default grace of `logoffuser`, seconds.
pub const DEFAULT_GRACE: u64 = 60;
/// Default and largest count of `audit`.
pub const DEFAULT_AUDIT: u32 = 20;
/// See [`DEFAULT_AUDIT`].
pub const MAX_AUDIT: u32 = 1000;

/// Every command with its usage and what it does, for `help` and completion.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "help [command]", "list commands, or explain one"),
    (
        "hello",
        "hello",
        "greeting with counts of hosts, sessions and users",
    ),
    (
        "verbose",
        "verbose [on|off]",
        "human text replies (on) or one JSON object per reply (off)",
    ),
    (
        "servers",
        "servers",
        "every host: admin state, health, sessions, load",
    ),
    ("server", "server NAME", "one host in detail"),
    ("users", "users", "every user with sessions, and how many"),
    ("user", "user NAME", "one user's sessions"),
    (
        "offlineserver",
        "offlineserver NAME",
        "no new sessions and no resumes on NAME",
    ),
    (
        "onlineserver",
        "onlineserver NAME",
        "NAME takes sessions again",
    ),
    (
        "abortuser",
        "abortuser USER|SESSION",
        "kill the user's sessions (or one session) now",
    ),
    (
        "shutdownuser",
        "shutdownuser USER|SESSION",
        "terminate gracefully",
    ),
    (
        "logoffuser",
        "logoffuser USER|SESSION [GRACE]",
        "terminate, then kill after GRACE seconds (default 60)",
    ),
    ("quit", "quit", "close this connection"),
    (
        "drain",
        "drain NAME [--then-offline]",
        "no new sessions on NAME (it still resumes); optionally offline once empty",
    ),
    ("undrain", "undrain NAME", "undo drain"),
    (
        "weight",
        "weight NAME N",
        "set NAME's weight (0 = no new sessions)",
    ),
    (
        "sessions",
        "sessions [user=U] [host=H] [pool=P] [state=S]",
        "live sessions, filtered",
    ),
    (
        "reservations",
        "reservations",
        "placements not confirmed yet",
    ),
    (
        "explain",
        "explain USER POOL",
        "what placement would do for USER in POOL, and why",
    ),
    (
        "enroll",
        "enroll HOST",
        "issue HOST's agent credential (shown once)",
    ),
    (
        "revoke",
        "revoke HOST",
        "revoke HOST's agent credential and drop its link",
    ),
    (
        "audit",
        "audit [N] [before=ID]",
        "the last N operator actions (default 20); before=ID pages on from record ID",
    ),
];

/// The director's commands (its own management socket), for `help` and completion.
pub const DIRECTOR_COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "help [command]", "list commands, or explain one"),
    (
        "hello",
        "hello",
        "greeting with counts of services, backends and connections",
    ),
    (
        "services",
        "services [SERVICE]",
        "services and backends as `ipvsadm -L -n` shows them, with each backend's state",
    ),
    (
        "stats",
        "stats [SERVICE]",
        "connections, bytes and rates as `ipvsadm -L -n --stats --rate`",
    ),
    (
        "drain",
        "drain SERVICE BACKEND",
        "no new connections to BACKEND (live ones and, by default, persistent clients stay)",
    ),
    ("undrain", "undrain SERVICE BACKEND", "undo drain"),
    (
        "weight",
        "weight SERVICE BACKEND N|reset",
        "set BACKEND's weight at runtime (0 = no new connections), or go back to the configured one",
    ),
];

/// Why a line is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn usage(cmd: &str) -> ParseError {
    let u = COMMANDS
        .iter()
        .find(|(n, _, _)| *n == cmd)
        .map_or(cmd, |(_, u, _)| u);
    ParseError(format!("usage: {u}"))
}

fn name(w: &str) -> Result<String, ParseError> {
    if w.len() > 256 || w.chars().any(char::is_control) {
        return Err(ParseError(format!("bad name {w:?}")));
    }
    Ok(w.to_owned())
}

fn target(w: &str) -> Result<Target, ParseError> {
    if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
        return w
            .parse()
            .map(Target::Session)
            .map_err(|_| ParseError(format!("session id {w} is out of range")));
    }
    name(w).map(Target::User)
}

/// Parses one line (without its newline). An empty line is `Ok(None)`.
pub fn parse(line: &str) -> Result<Option<Request>, ParseError> {
    if line.len() > MAX_LINE {
        return Err(ParseError(format!("line longer than {MAX_LINE} bytes")));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&cmd, args)) = words.split_first() else {
        return Ok(None);
    };
    let cmd_lc = cmd.to_ascii_lowercase();
    let one = |args: &[&str]| match args {
        [a] => name(a),
        _ => Err(usage(&cmd_lc)),
    };
    let none = |args: &[&str], r: Request| {
        if args.is_empty() {
            Ok(r)
        } else {
            Err(usage(&cmd_lc))
        }
    };
    let r = match cmd_lc.as_str() {
        "help" => match args {
            [] => Request::Help(None),
            [c] => Request::Help(Some(c.to_ascii_lowercase())),
            _ => return Err(usage("help")),
        },
        "hello" => none(args, Request::Hello)?,
        "verbose" => match args {
            [] => Request::Verbose(None),
            [w] if w.eq_ignore_ascii_case("on") => Request::Verbose(Some(true)),
            [w] if w.eq_ignore_ascii_case("off") => Request::Verbose(Some(false)),
            _ => return Err(usage("verbose")),
        },
        "servers" => none(args, Request::Servers)?,
        "server" => Request::Server(one(args)?),
        "users" => none(args, Request::Users)?,
        "user" => Request::User(one(args)?),
        "offlineserver" => Request::OfflineServer(one(args)?),
        "onlineserver" => Request::OnlineServer(one(args)?),
        "abortuser" => match args {
            [t] => Request::AbortUser(target(t)?),
            _ => return Err(usage("abortuser")),
        },
        "shutdownuser" => match args {
            [t] => Request::ShutdownUser(target(t)?),
            _ => return Err(usage("shutdownuser")),
        },
        "logoffuser" => match args {
            [t] => Request::LogoffUser(target(t)?, DEFAULT_GRACE),
            [t, g] => {
                let grace = g
                    .parse::<u64>()
                    .ok()
                    .filter(|g| *g <= 86_400)
                    .ok_or_else(|| {
                        ParseError(format!("GRACE must be 0–86400 seconds, not {g:?}"))
                    })?;
                Request::LogoffUser(target(t)?, grace)
            }
            _ => return Err(usage("logoffuser")),
        },
        "quit" | "exit" => none(args, Request::Quit)?,
        "drain" => match args {
            [h] => Request::Drain {
                host: name(h)?,
                then_offline: false,
            },
            [h, "--then-offline"] | ["--then-offline", h] => Request::Drain {
                host: name(h)?,
                then_offline: true,
            },
            _ => return Err(usage("drain")),
        },
        "undrain" => Request::Undrain(one(args)?),
        "weight" => match args {
            [h, w] => Request::Weight(
                name(h)?,
                w.parse()
                    .map_err(|_| ParseError(format!("weight must be a whole number, not {w:?}")))?,
            ),
            _ => return Err(usage("weight")),
        },
        "sessions" => {
            let mut f = SessionFilter::default();
            for a in args {
                let (k, v) = a
                    .split_once('=')
                    .ok_or_else(|| ParseError(format!("expected key=value, not {a:?}")))?;
                let slot = match k {
                    "user" => &mut f.user,
                    "host" => &mut f.host,
                    "pool" => &mut f.pool,
                    "state" => &mut f.state,
                    _ => {
                        return Err(ParseError(format!(
                            "unknown filter {k:?} (user, host, pool, state)"
                        )));
                    }
                };
                *slot = Some(name(v)?);
            }
            Request::Sessions(f)
        }
        "reservations" => none(args, Request::Reservations)?,
        "explain" => match args {
            [u, p] => Request::Explain(name(u)?, name(p)?),
            _ => return Err(usage("explain")),
        },
        "enroll" => Request::Enroll(one(args)?),
        "revoke" => Request::Revoke(one(args)?),
        "audit" => {
            let mut n = None;
            let mut before = None;
            for a in args {
                if let Some(id) = a.strip_prefix("before=") {
                    if before.is_some() || id.is_empty() || id.len() > 64 {
                        return Err(usage("audit"));
                    }
                    before = Some(name(id)?);
                } else if n.is_none() {
                    n = Some(
                        a.parse::<u32>()
                            .ok()
                            .filter(|n| (1..=MAX_AUDIT).contains(n))
                            .ok_or_else(|| {
                                ParseError(format!("N must be 1–{MAX_AUDIT}, not {a:?}"))
                            })?,
                    );
                } else {
                    return Err(usage("audit"));
                }
            }
            Request::Audit {
                n: n.unwrap_or(DEFAULT_AUDIT),
                before,
            }
        }
        _ => {
            return Err(ParseError(format!(
                "unknown command {cmd:?}; `help` lists the commands"
            )));
        }
    };
    Ok(Some(r))
}

/// Formats rows as an aligned text table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                let pad = widths[i] - c.chars().count() + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("  HELLO ").unwrap(), Some(Request::Hello));
        assert_eq!(
            parse("drain x2go1 --then-offline").unwrap(),
            Some(Request::Drain {
                host: "x2go1".into(),
                then_offline: true
            })
        );
        assert_eq!(
            parse("logoffuser alice").unwrap(),
            Some(Request::LogoffUser(Target::User("alice".into()), 60))
        );
        assert_eq!(
            parse("logoffuser 1763771234000001 5").unwrap(),
            Some(Request::LogoffUser(Target::Session(1763771234000001), 5))
        );
        assert_eq!(
            parse("sessions user=alice state=running").unwrap(),
            Some(Request::Sessions(SessionFilter {
                user: Some("alice".into()),
                state: Some("running".into()),
                ..SessionFilter::default()
            }))
        );
        assert_eq!(
            parse("audit").unwrap(),
            Some(Request::Audit {
                n: 20,
                before: None
            })
        );
        assert_eq!(
            parse("audit 5 before=0001abc").unwrap(),
            Some(Request::Audit {
                n: 5,
                before: Some("0001abc".into())
            })
        );
        assert_eq!(
            parse("verbose off").unwrap(),
            Some(Request::Verbose(Some(false)))
        );
    }

    #[test]
    fn bad_lines_explain_themselves() {
        for (line, needle) in [
            ("frobnicate", "unknown command"),
            ("server", "usage: server NAME"),
            ("weight x2go1 heavy", "whole number"),
            ("sessions colour=red", "unknown filter"),
            ("audit 0", "N must be"),
            ("audit 5 6", "usage: audit"),
            ("logoffuser alice -1", "GRACE"),
            ("abortuser 99999999999999999999999", "out of range"),
            ("hello there", "usage: hello"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.0.contains(needle), "{line}: {e}");
        }
        assert!(parse(&"x".repeat(MAX_LINE + 1)).is_err());
    }

    #[test]
    fn every_command_has_help_and_parses_its_usage_line_shape() {
        for (name, usage_line, _) in COMMANDS {
            assert!(usage_line.starts_with(name));
            let e = parse(&format!("{name} a b c d e f"));
            assert!(e.is_err(), "{name} accepts too many arguments");
        }
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["HOST", "STATE"],
            &[
                vec!["x2go1".into(), "online".into()],
                vec!["x".into(), "draining".into()],
            ],
        );
        assert_eq!(t, "HOST   STATE\nx2go1  online\nx      draining");
    }
}
