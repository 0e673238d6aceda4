//! Session sources: how an agent finds the sessions on its host and acts on them.
//!
//! A host's agent config lists its sources as `[[source]]` tables, each with a `kind`:
//!
//! ```toml
//! [[source]]
//! kind = "x2go"     # x2golistsessions_root; x2goterminate-session / x2gosuspend-session as the user
//! [[source]]
//! kind = "logind"   # loginctl list-sessions / show-session / terminate-session / kill-session
//! [[source]]
//! kind = "xpra"     # xpra list / info / stop / detach, per user
//! [[source]]
//! kind = "command"  # a site's own program, see [`command`]
//! list = ["/usr/local/lib/site/sessions", "list"]
//! ```
//!
//! Every external program runs through [`run`]: an argument vector (never a shell string), stdin
//! from `/dev/null`, stdout captured up to [`MAX_OUTPUT`] bytes (more is an error), the last
//! [`STDERR_TAIL`] bytes of stderr kept for error messages, `LC_ALL=C.UTF-8`, its own process
//! group, and a timeout ([`DEFAULT_TIMEOUT`]) after which the group gets SIGTERM (which sudo
//! passes on to a command it runs as another user) and, a second later, SIGKILL.
//! The privileges each source needs, and the exact grants, are in `docs/agent-privileges.md`.

pub mod command;
pub mod logind;
pub mod x2go;
pub mod xpra;

use serde::Deserialize;
use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use switchboard_core::model::ReportedSession;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long one external command may run before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most stdout bytes read from one command; more is an error.
pub const MAX_OUTPUT: usize = 4 * 1024 * 1024;
/// How much of the end of stderr is kept for error messages.
pub const STDERR_TAIL: usize = 2048;
/// Longest user name or backend id accepted from a source or for an action.
pub const MAX_NAME_LEN: usize = 256;

/// One `[[source]]` table of the agent config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// X2Go sessions (x2goserver 4.1).
    X2go {
        /// Lists this host's sessions as root. x2golistsessions_root reads each user's session
        /// state file and may update the session database, so it runs through sudo by default.
        #[serde(default = "x2go::default_list_command")]
        list_command: Vec<String>,
        /// sudo, used to run the session scripts as the session's user.
        #[serde(default = "default_sudo")]
        sudo: String,
        /// The terminate script (run as the session's user with the session id).
        #[serde(default = "x2go::default_terminate_command")]
        terminate_command: String,
        /// The suspend script (run as the session's user with the session id).
        #[serde(default = "x2go::default_suspend_command")]
        suspend_command: String,
        /// pkill, used by `kill` after the terminate script.
        #[serde(default = "default_pkill")]
        pkill: String,
    },
    /// systemd-logind sessions.
    Logind {
        /// loginctl.
        #[serde(default = "logind::default_loginctl")]
        loginctl: String,
        /// Session classes reported (`Class=`); greeter, lock-screen and manager sessions are
        /// never reported.
        #[serde(default = "logind::default_classes")]
        session_classes: Vec<String>,
        /// Session types reported (`Type=`: tty, x11, wayland, mir, unspecified); empty means any.
        #[serde(default)]
        session_types: Vec<String>,
        /// Report only sessions with a seat or with `Remote=yes` (drops cron, systemd --user and
        /// other seatless local sessions).
        #[serde(default = "default_true")]
        require_seat_or_remote: bool,
    },
    /// Xpra servers (xpra 3.1), one per display.
    Xpra {
        /// xpra.
        #[serde(default = "xpra::default_xpra")]
        xpra: String,
        /// sudo, used to run xpra as each user (`xpra list` only sees the caller's sockets).
        #[serde(default = "default_sudo")]
        sudo: String,
        /// pkill, used by `kill`.
        #[serde(default = "default_pkill")]
        pkill: String,
        /// Users whose servers are listed. When absent, the owners (uid >= 1000) of the
        /// directories in `runtime_dir` are: every user with a logind session or lingering.
        #[serde(default)]
        users: Option<Vec<String>>,
        /// Per-user runtime directories, named by uid.
        #[serde(default = "xpra::default_runtime_dir")]
        runtime_dir: String,
        /// getent, to turn the runtime directories' uids into names.
        #[serde(default = "default_getent")]
        getent: String,
    },
    /// A site's own program (see [`command`] for its output format).
    Command {
        /// Lists the sessions, one JSON object per line.
        list: Vec<String>,
        /// Ends a session; the backend id and the user are appended as the last two arguments.
        #[serde(default)]
        terminate: Option<Vec<String>>,
        /// Kills a session; same arguments as `terminate`.
        #[serde(default)]
        kill: Option<Vec<String>>,
        /// Disconnects a session's client; same arguments as `terminate`.
        #[serde(default)]
        disconnect: Option<Vec<String>>,
    },
}

fn default_sudo() -> String {
    "/usr/bin/sudo".to_owned()
}
fn default_pkill() -> String {
    "/usr/bin/pkill".to_owned()
}
fn default_getent() -> String {
    "/usr/bin/getent".to_owned()
}
fn default_true() -> bool {
    true
}

impl SourceConfig {
    /// The `kind` identifier.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::X2go { .. } => "x2go",
            SourceConfig::Logind { .. } => "logind",
            SourceConfig::Xpra { .. } => "xpra",
            SourceConfig::Command { .. } => "command",
        }
    }

    /// Checks what serde cannot: no empty command vectors or program paths.
    pub fn validate(&self) -> Result<(), String> {
        let argv = |name: &str, v: &[String]| {
            if v.first().is_none_or(|p| p.is_empty()) {
                Err(format!(
                    "{} source: {name} must name a program",
                    self.kind()
                ))
            } else {
                Ok(())
            }
        };
        let prog = |name: &str, p: &str| argv(name, std::slice::from_ref(&p.to_owned()));
        match self {
            SourceConfig::X2go {
                list_command,
                sudo,
                terminate_command,
                suspend_command,
                pkill,
            } => {
                argv("list_command", list_command)?;
                prog("sudo", sudo)?;
                prog("terminate_command", terminate_command)?;
                prog("suspend_command", suspend_command)?;
                prog("pkill", pkill)
            }
            SourceConfig::Logind {
                loginctl,
                session_classes,
                ..
            } => {
                prog("loginctl", loginctl)?;
                if session_classes.is_empty() {
                    return Err("logind source: session_classes must not be empty".to_owned());
                }
                Ok(())
            }
            SourceConfig::Xpra {
                xpra,
                sudo,
                pkill,
                users,
                runtime_dir,
                getent,
            } => {
                prog("xpra", xpra)?;
                prog("sudo", sudo)?;
                prog("pkill", pkill)?;
                prog("getent", getent)?;
                if runtime_dir.is_empty() {
                    return Err("xpra source: runtime_dir must not be empty".to_owned());
                }
                for u in users.iter().flatten() {
                    check_user(u).map_err(|e| format!("xpra source: {e}"))?;
                }
                Ok(())
            }
            SourceConfig::Command {
                list,
                terminate,
                kill,
                disconnect,
            } => {
                argv("list", list)?;
                for (name, v) in [
                    ("terminate", terminate),
                    ("kill", kill),
                    ("disconnect", disconnect),
                ] {
                    if let Some(v) = v {
                        argv(name, v)?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// What the broker asks a source to do to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionAct {
    /// End it cleanly (log the user off).
    Terminate,
    /// End it by force (processes killed).
    Kill,
    /// Detach its client, keep it running for a later resume.
    Disconnect,
}

impl SessionAct {
    /// Lowercase name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAct::Terminate => "terminate",
            SessionAct::Kill => "kill",
            SessionAct::Disconnect => "disconnect",
        }
    }
}

impl fmt::Display for SessionAct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why listing or acting failed. Messages name the program (its argument vector) and say what
/// went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The program could not be started.
    #[error("{argv}: cannot start: {source}")]
    Spawn {
        /// The command.
        argv: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading its output or waiting for it failed.
    #[error("{argv}: {source}")]
    Io {
        /// The command.
        argv: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It ran longer than allowed and was killed (with its process group).
    #[error("{argv}: no answer within {timeout:?}; killed")]
    Timeout {
        /// The command.
        argv: String,
        /// The limit.
        timeout: Duration,
    },
    /// It wrote more than allowed to stdout and was killed.
    #[error("{argv}: output larger than {limit} bytes; killed")]
    OutputTooLarge {
        /// The command.
        argv: String,
        /// The limit.
        limit: usize,
    },
    /// It exited unsuccessfully.
    #[error("{argv} failed ({status}){}", stderr_suffix(stderr))]
    Failed {
        /// The command.
        argv: String,
        /// Exit status, as the OS describes it.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// Its output is not in the expected format.
    #[error("{argv}: output line {line}: {detail}")]
    Parse {
        /// The command.
        argv: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        detail: String,
    },
    /// The source cannot do this.
    #[error("the {kind} source cannot {act} sessions: {why}")]
    Unsupported {
        /// Source kind.
        kind: &'static str,
        /// The action.
        act: SessionAct,
        /// Why, and what to do instead.
        why: &'static str,
    },
    /// A user name, backend id or configured command is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Renders an argument vector for messages: each element quoted, so spaces stay visible.
pub fn display_argv(argv: &[String]) -> String {
    let parts: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", parts.join(" "))
}

/// Limits for one external command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// Kill it after this long.
    pub timeout: Duration,
    /// Most stdout bytes accepted.
    pub max_output: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            timeout: DEFAULT_TIMEOUT,
            max_output: MAX_OUTPUT,
        }
    }
}

/// What a finished command left.
#[derive(Clone, Debug)]
pub struct CommandOutput {
    /// How it exited.
    pub status: ExitStatus,
    /// All of stdout (lossily decoded as UTF-8).
    pub stdout: String,
    /// The last [`STDERR_TAIL`] bytes of stderr, trimmed.
    pub stderr_tail: String,
}

/// Runs `argv` (program and arguments, no shell) under `limits` and returns its output whatever
/// its exit status. Errors: cannot start, timeout, too much output (the process group is killed in
/// both cases), I/O.
pub async fn run(argv: &[String], limits: &RunLimits) -> Result<CommandOutput, SourceError> {
    let shown = || display_argv(argv);
    let Some((program, args)) = argv.split_first() else {
        return Err(SourceError::Invalid("empty command".to_owned()));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // ETXTBSY: the program was just written and a process forked elsewhere still holds it open
    // for writing until its exec; that passes within milliseconds (Go's os/exec retries too).
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(26) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * tries)).await;
            }
            Err(source) => {
                return Err(SourceError::Spawn {
                    argv: shown(),
                    source,
                });
            }
        }
    };
    let pid = child.id();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(SourceError::Io {
            argv: shown(),
            source: std::io::Error::other("no pipes to the child"),
        });
    };
    let stderr_task = tokio::spawn(read_tail(stderr, STDERR_TAIL));
    let outcome = tokio::time::timeout(limits.timeout, async {
        let out = read_capped(stdout, limits.max_output).await;
        let out = match out {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(Fail::TooLarge),
            Err(e) => return Err(Fail::Io(e)),
        };
        let status = child.wait().await.map_err(Fail::Io)?;
        Ok((out, status))
    })
    .await;
    let result = match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(Fail::TooLarge)) => Err(SourceError::OutputTooLarge {
            argv: shown(),
            limit: limits.max_output,
        }),
        Ok(Err(Fail::Io(source))) => Err(SourceError::Io {
            argv: shown(),
            source,
        }),
        Err(_) => Err(SourceError::Timeout {
            argv: shown(),
            timeout: limits.timeout,
        }),
    };
    match result {
        Ok((out, status)) => {
            // The child has exited; a grandchild may still hold stderr open, so do not wait long.
            let mut stderr_task = stderr_task;
            let stderr_tail =
                match tokio::time::timeout(Duration::from_secs(1), &mut stderr_task).await {
                    Ok(Ok(Ok(tail))) => tail,
                    _ => {
                        stderr_task.abort();
                        String::new()
                    }
                };
            Ok(CommandOutput {
                status,
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr_tail,
            })
        }
        Err(e) => {
            kill_group(&mut child, pid).await;
            stderr_task.abort();
            Err(e)
        }
    }
}

/// Like [`run`], and a non-zero exit is an error carrying the status and the end of stderr.
pub async fn run_checked(argv: &[String], limits: &RunLimits) -> Result<String, SourceError> {
    let out = run(argv, limits).await?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(failed(argv, &out))
    }
}

/// The error for a command that exited unsuccessfully.
pub fn failed(argv: &[String], out: &CommandOutput) -> SourceError {
    SourceError::Failed {
        argv: display_argv(argv),
        status: out.status.to_string(),
        stderr: out.stderr_tail.clone(),
    }
}

enum Fail {
    TooLarge,
    Io(std::io::Error),
}

async fn kill_group(child: &mut tokio::process::Child, pid: Option<u32>) {
    // The child leads its own process group (process_group(0)). SIGTERM first: sudo relays it to
    // the command it runs as another user, which the agent itself may not signal (and sudo's
    // command_timeout only works while sudo is alive). Then SIGKILL to the whole group, so a
    // script's children do not outlive it. Errors mean the group is already gone, or that some of
    // it belongs to another user.
    let pgid = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pgid) = pgid {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM);
        let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
}

/// Reads to EOF; `Ok(None)` as soon as more than `max` bytes arrive.
async fn read_capped(
    mut r: impl AsyncRead + Unpin,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Some(buf));
        }
        if buf.len() + n > max {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads to EOF keeping only the last `keep` bytes, trimmed and lossily decoded.
async fn read_tail(mut r: impl AsyncRead + Unpin, keep: usize) -> std::io::Result<String> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > keep * 2 {
            let cut = buf.len() - keep;
            buf.drain(..cut);
        }
    }
    let start = buf.len().saturating_sub(keep);
    Ok(String::from_utf8_lossy(&buf[start..]).trim().to_owned())
}

/// Checks a user name before it goes into a command line (as `sudo -u` or an argument): non-empty,
/// at most [`MAX_NAME_LEN`] bytes, no control characters or whitespace, not starting with `-`
/// (an option), `#` (a sudo uid) or `%`/`+` (sudo groups), and not root.
/// One listing of a source: one row that cannot be accepted (a root session, an odd user name,
/// a malformed line) or one user whose own listing failed never costs the host its whole
/// inventory. Such rows are skipped and counted; a failed user's last known sessions are kept.
#[derive(Debug, Default)]
pub struct Listing {
    /// The sessions listed.
    pub sessions: Vec<ReportedSession>,
    /// Rows skipped, and users whose listing failed.
    pub skipped: u64,
    /// Users whose own listing failed (their last known sessions stand).
    pub failed_users: Vec<String>,
}

/// Logs a skipped row once per distinct reason (a root session is skipped at every listing).
pub(crate) fn note_skipped(source: &str, e: &SourceError) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let msg = e.to_string();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen.len() < 1000 && seen.insert(msg.clone()) {
        tracing::warn!(source, error = %msg, "session row skipped (the rest of the listing is reported)");
    } else {
        tracing::debug!(source, error = %msg, "session row skipped");
    }
}

pub fn check_user(user: &str) -> Result<(), SourceError> {
    let bad = |why: &str| Err(SourceError::Invalid(format!("user name {user:?} {why}")));
    if user.is_empty() || user.len() > MAX_NAME_LEN {
        return bad("is empty or too long");
    }
    if user
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == ':' || c == '/')
    {
        return bad("contains whitespace, control characters, ':' or '/'");
    }
    if user.starts_with(['-', '#', '%', '+']) {
        return bad("starts with '-', '#', '%' or '+'");
    }
    if user == "root" {
        return bad("is root: sessions of root are not managed");
    }
    Ok(())
}

/// A configured session source.
#[derive(Clone, Debug)]
pub struct Source {
    cfg: SourceConfig,
    limits: RunLimits,
}

impl Source {
    /// A source with the default limits ([`DEFAULT_TIMEOUT`], [`MAX_OUTPUT`]).
    pub fn new(cfg: SourceConfig) -> Source {
        Source {
            cfg,
            limits: RunLimits::default(),
        }
    }

    /// The same source with other limits for its commands.
    pub fn with_limits(mut self, limits: RunLimits) -> Source {
        self.limits = limits;
        self
    }

    /// The `kind` identifier (`x2go`, `logind`, `xpra`, `command`).
    pub fn kind(&self) -> &'static str {
        self.cfg.kind()
    }

    /// Its configuration.
    pub fn config(&self) -> &SourceConfig {
        &self.cfg
    }

    /// The sessions on this host now.
    pub async fn list(&self) -> Result<Vec<ReportedSession>, SourceError> {
        self.listing().await.map(|l| l.sessions)
    }

    /// Lists the sessions, skipping what cannot be reported (see [`Listing`]).
    pub async fn listing(&self) -> Result<Listing, SourceError> {
        let whole = |sessions| Listing {
            sessions,
            ..Listing::default()
        };
        match &self.cfg {
            SourceConfig::X2go { list_command, .. } => x2go::list(list_command, &self.limits).await,
            SourceConfig::Logind {
                loginctl,
                session_classes,
                session_types,
                require_seat_or_remote,
            } => {
                let filter = logind::Filter {
                    classes: session_classes,
                    types: session_types,
                    require_seat_or_remote: *require_seat_or_remote,
                };
                logind::list(loginctl, &filter, &self.limits)
                    .await
                    .map(whole)
            }
            SourceConfig::Xpra {
                xpra,
                sudo,
                users,
                runtime_dir,
                getent,
                ..
            } => {
                let users = match users {
                    Some(u) => u.clone(),
                    None => xpra::runtime_users(runtime_dir, getent, &self.limits).await?,
                };
                xpra::list(sudo, xpra, &users, &self.limits).await
            }
            SourceConfig::Command { list, .. } => command::list(list, &self.limits).await,
        }
    }

    /// Does `act` to `session` (which this source reported); returns a short description of what
    /// was done.
    pub async fn act(
        &self,
        act: SessionAct,
        session: &ReportedSession,
    ) -> Result<String, SourceError> {
        match &self.cfg {
            SourceConfig::X2go {
                sudo,
                terminate_command,
                suspend_command,
                pkill,
                ..
            } => {
                let cmds = x2go::Commands {
                    sudo,
                    terminate: terminate_command,
                    suspend: suspend_command,
                    pkill,
                };
                x2go::act(&cmds, act, session, &self.limits).await
            }
            SourceConfig::Logind { loginctl, .. } => {
                logind::act(loginctl, act, session, &self.limits).await
            }
            SourceConfig::Xpra {
                xpra, sudo, pkill, ..
            } => xpra::act(sudo, xpra, pkill, act, session, &self.limits).await,
            SourceConfig::Command {
                terminate,
                kill,
                disconnect,
                ..
            } => {
                let argv = match act {
                    SessionAct::Terminate => terminate,
                    SessionAct::Kill => kill,
                    SessionAct::Disconnect => disconnect,
                };
                command::act(argv.as_deref(), act, session, &self.limits).await
            }
        }
    }
}
