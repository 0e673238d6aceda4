//! X2Go autologin keys: short-lived public keys in `~USER/.x2go/authorized_keys`.
//!
//! The broker hands an X2Go client a one-time key pair and asks the session host's agent to
//! authorise the public half for a while (x2gobroker's `addauthkey`/`delauthkey`). A line added by
//! Switchboard is OpenSSH's own `expiry-time` option, then the key (type, base64 blob, its own
//! comment if any) with a marker appended to the comment field:
//!
//! ```text
//! expiry-time="20261122030255Z" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI… broker-login switchboard-expires=1795316575000
//! ```
//!
//! sshd (OpenSSH 8.2 and later) refuses the key after that time (UTC) whatever becomes of the
//! line, so a key left behind by a crash or a lost removal is useless once it has expired. The
//! marker (epoch milliseconds) is how Switchboard recognises its lines: every edit drops those
//! whose expiry has passed, [`KeyOp::Sweep`] does only that (the agent sweeps on a timer), and no
//! other line ever changes (comments, blank lines and the user's own keys stay byte for byte).
//! Lines written by earlier versions, without the option, are still recognised. Keys are
//! accepted only without an options prefix and of the types
//! `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256/384/521`, `sk-ssh-ed25519@openssh.com` and
//! `sk-ecdsa-sha2-nistp256@openssh.com`.
//!
//! [`apply`] edits the file: the user is resolved with `getent passwd USER` (unknown users, uids
//! below 1000 and `nobody` are refused); the file is replaced atomically (a new file in the same
//! directory, then a rename) with mode 0600 and, when the agent runs as root, the user's
//! ownership; `.x2go` is created with mode 0700 if missing. The directory is opened without
//! following symlinks and every later step works relative to it, so neither it nor the file can be
//! a symlink, even one swapped in while the edit runs. Editing another user's file needs the agent
//! to run as root (see `docs/agent-privileges.md`); otherwise only the agent's own user can be
//! edited.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The marker appended to the comment of a line Switchboard manages.
pub const MARKER: &str = "switchboard-expires=";
/// Longest key line accepted (a 16384-bit RSA key is about 2.8 KB).
pub const MAX_KEY_LEN: usize = 8192;
/// A larger authorized_keys file is refused.
pub const MAX_FILE_LEN: u64 = 1024 * 1024;
/// Lowest uid whose keys are edited.
pub const MIN_UID: u32 = 1000;
/// The overflow uid (`nobody`).
pub const NOBODY_UID: u32 = 65534;

/// Key types accepted.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Why a key or an edit was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthKeysError {
    /// The key line is not acceptable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The user is unknown, or not one whose keys are edited.
    #[error("user {user:?}: {why}")]
    User {
        /// The user.
        user: String,
        /// Why.
        why: String,
    },
    /// The file or directory is not safe to edit (a symlink, not a regular file, wrong owner,
    /// too large).
    #[error("{path}: {why}")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The per-user helper run through sudo failed.
    #[error(
        "editing {user:?}'s authorized_keys through `sudo -u {user} switchboard authkeys`: {message}"
    )]
    Delegated {
        /// The user.
        user: String,
        /// What went wrong (the helper's error, or sudo's).
        message: String,
    },
    /// This process may not edit that user's file.
    #[error("editing {user:?}'s authorized_keys needs the agent to run as root or as that user")]
    NotPermitted {
        /// The user.
        user: String,
    },
}

/// The type and blob of a validated key, plus its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key<'a> {
    kind: &'a str,
    blob: &'a str,
    comment: Vec<&'a str>,
}

fn parse_key(key: &str) -> Result<Key<'_>, AuthKeysError> {
    let bad = |why: &str| Err(AuthKeysError::InvalidKey(why.to_owned()));
    let key = key.trim();
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("longer than 8192 bytes");
    }
    if key.chars().any(|c| c.is_control() && c != '\t') {
        return bad("more than one line, or control characters");
    }
    let mut tokens = key.split_whitespace();
    let kind = tokens.next().unwrap_or("");
    if !KEY_TYPES.contains(&kind) {
        return bad(
            "must start with a key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521, \
             sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com); options are not \
             allowed",
        );
    }
    let blob = tokens.next().unwrap_or("");
    let body = blob.trim_end_matches('=');
    let well_formed = !body.is_empty()
        && blob.len().is_multiple_of(4)
        && blob.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !well_formed {
        return bad("the key data is not base64");
    }
    let comment: Vec<&str> = tokens.collect();
    if comment.iter().any(|t| t.contains(MARKER)) {
        return bad("the comment must not contain the expiry marker");
    }
    Ok(Key {
        kind,
        blob,
        comment,
    })
}

/// OpenSSH's `expiry-time` option for `ms` (epoch milliseconds), in UTC to the second, rounded
/// up so that the key is never refused before the broker's own expiry.
pub fn expiry_option(ms: u64) -> String {
    let secs = ms.div_ceil(1000);
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "expiry-time=\"{y:04}{m:02}{d:02}{:02}{:02}{:02}Z\"",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// For a line Switchboard added: its key type, blob and expiry.
fn managed(line: &str) -> Option<(&str, &str, u64)> {
    let mut tokens = line.split_whitespace().peekable();
    // Ours start with the expiry option (older versions wrote none); any other option prefix
    // is not a line of ours.
    if tokens
        .peek()
        .is_some_and(|t| t.starts_with("expiry-time=\"") && t.ends_with('"'))
    {
        tokens.next();
    }
    let kind = tokens.next()?;
    let blob = tokens.next()?;
    let last = tokens.last()?;
    let expiry = last.strip_prefix(MARKER)?.parse::<u64>().ok()?;
    KEY_TYPES.contains(&kind).then_some((kind, blob, expiry))
}

/// Keeps every line except expired Switchboard lines and Switchboard lines for `drop_key`.
fn keep_lines<'a>(existing: &'a str, drop_key: Option<&Key<'_>>, now_ms: u64) -> Vec<&'a str> {
    existing
        .lines()
        .filter(|line| match managed(line) {
            Some((kind, blob, expiry)) => {
                expiry > now_ms && drop_key.is_none_or(|k| k.kind != kind || k.blob != blob)
            }
            None => true,
        })
        .collect()
}

fn join(lines: &[&str]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// `existing` with `key` authorised until `expires_at_ms`: an earlier Switchboard line for the
/// same key is replaced, expired Switchboard lines are dropped, other lines are kept unchanged.
pub fn add_line(
    existing: &str,
    key: &str,
    expires_at_ms: u64,
    now_ms: u64,
) -> Result<String, AuthKeysError> {
    let k = parse_key(key)?;
    if expires_at_ms <= now_ms {
        return Err(AuthKeysError::InvalidKey(
            "its expiry is not in the future".to_owned(),
        ));
    }
    let mut lines = keep_lines(existing, Some(&k), now_ms);
    let mut new = format!("{} {} {}", expiry_option(expires_at_ms), k.kind, k.blob);
    for t in &k.comment {
        new.push(' ');
        new.push_str(t);
    }
    new.push(' ');
    new.push_str(MARKER);
    new.push_str(&expires_at_ms.to_string());
    lines.push(&new);
    Ok(join(&lines))
}

/// `existing` without the Switchboard line for `key` and without expired Switchboard lines; other
/// lines (including the user's own line for the same key, if any) are kept unchanged.
pub fn remove_line(existing: &str, key: &str, now_ms: u64) -> Result<String, AuthKeysError> {
    let k = parse_key(key)?;
    Ok(join(&keep_lines(existing, Some(&k), now_ms)))
}

/// An edit of a user's X2Go authorized_keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOp {
    /// Authorise `key` until `expires_at_ms` (epoch milliseconds).
    Add {
        /// The public key line.
        key: String,
        /// When it stops being authorised.
        expires_at_ms: u64,
    },
    /// Withdraw `key`.
    Remove {
        /// The public key line.
        key: String,
    },
    /// Drop the expired Switchboard lines only.
    Sweep,
}

/// An account as `getent passwd` tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// Parses one `getent passwd` line (`name:x:uid:gid:gecos:home:shell`).
pub fn parse_passwd_line(line: &str) -> Option<Account> {
    let f: Vec<&str> = line.trim_end().split(':').collect();
    if f.len() < 7 {
        return None;
    }
    Some(Account {
        name: f[0].to_owned(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(f[5]),
    })
}

/// Resolves `user` with `getent passwd USER`; refuses unknown users, uids below [`MIN_UID`],
/// `nobody`, and homes that are not absolute paths.
pub async fn lookup_user(user: &str) -> Result<Account, AuthKeysError> {
    let refuse = |why: String| AuthKeysError::User {
        user: user.to_owned(),
        why,
    };
    crate::sources::check_user(user).map_err(|e| refuse(e.to_string()))?;
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("getent")
            .args(["passwd", "--", user])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| refuse("getent passwd did not answer within 10 s".to_owned()))?
    .map_err(|e| refuse(format!("cannot run getent: {e}")))?;
    if out.status.code() == Some(2) {
        return Err(refuse("no such user".to_owned()));
    }
    if !out.status.success() {
        return Err(refuse(format!("getent passwd failed ({})", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let acct = text
        .lines()
        .filter_map(parse_passwd_line)
        .find(|a| a.name == user)
        .ok_or_else(|| refuse("getent passwd returned no matching entry".to_owned()))?;
    if acct.uid < MIN_UID || acct.uid == NOBODY_UID {
        return Err(refuse(format!(
            "uid {} is a system account; only uids >= {MIN_UID} are managed",
            acct.uid
        )));
    }
    if !acct.home.is_absolute() {
        return Err(refuse(format!(
            "home directory {:?} is not absolute",
            acct.home
        )));
    }
    Ok(acct)
}

/// Now, in milliseconds since the epoch (the clock key expiries are written in).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Applies `op` to `~USER/.x2go/authorized_keys` (see the module documentation); returns what
/// was done. When this process is neither root nor `user` (the shipped unit runs the agent as
/// `switchboard-agent`), the edit is done by `switchboard authkeys` run as `user` through
/// `sudo -n -u USER` (the grant is in packaging/sudoers.d/switchboard-agent), with the key on
/// its standard input.
pub async fn apply(user: &str, op: KeyOp) -> Result<String, AuthKeysError> {
    match apply_local(user, op.clone()).await {
        Err(AuthKeysError::NotPermitted { .. }) => delegate(user, op).await,
        r => r,
    }
}

/// The sudo the agent delegates with.
pub const SUDO: &str = "/usr/bin/sudo";

async fn delegate(user: &str, op: KeyOp) -> Result<String, AuthKeysError> {
    use tokio::io::AsyncWriteExt;
    let fail = |message: String| AuthKeysError::Delegated {
        user: user.to_owned(),
        message,
    };
    let exe =
        std::env::current_exe().map_err(|e| fail(format!("cannot find this program: {e}")))?;
    let (args, key) = match op {
        KeyOp::Add { key, expires_at_ms } => {
            (vec!["add".to_owned(), expires_at_ms.to_string()], key)
        }
        KeyOp::Remove { key } => (vec!["remove".to_owned()], key),
        KeyOp::Sweep => (vec!["sweep".to_owned()], String::new()),
    };
    let mut child = tokio::process::Command::new(SUDO)
        .args(["-n", "-u", user, "--"])
        .arg(&exe)
        .arg("authkeys")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run {SUDO}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{key}\n").as_bytes())
            .await
            .map_err(|e| fail(format!("writing the key: {e}")))?;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| fail("no answer within 10 s".to_owned()))?
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .trim()
            .chars()
            .rev()
            .take(500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(fail(format!("{} ({})", tail, out.status)))
    }
}

/// Like [`apply`], but never delegates: for `switchboard authkeys`, which runs as the user.
pub async fn apply_local(user: &str, op: KeyOp) -> Result<String, AuthKeysError> {
    // Validate the key before touching anything.
    match &op {
        KeyOp::Add { key, .. } | KeyOp::Remove { key } => {
            parse_key(key)?;
        }
        KeyOp::Sweep => {}
    }
    let acct = lookup_user(user).await?;
    let euid = rustix::process::geteuid();
    let chown = if euid.is_root() {
        true
    } else if euid.as_raw() == acct.uid {
        false
    } else {
        return Err(AuthKeysError::NotPermitted {
            user: user.to_owned(),
        });
    };
    tokio::task::spawn_blocking(move || edit_file(&acct, &op, chown, now_ms()))
        .await
        .map_err(|e| AuthKeysError::Io {
            what: "editing",
            path: PathBuf::from("authorized_keys"),
            source: std::io::Error::other(e.to_string()),
        })?
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(rustix::io::Errno) -> AuthKeysError {
    let path = path.to_owned();
    move |e| AuthKeysError::Io {
        what,
        path,
        source: e.into(),
    }
}

fn edit_file(acct: &Account, op: &KeyOp, chown: bool, now: u64) -> Result<String, AuthKeysError> {
    let dir_path = acct.home.join(".x2go");
    let file_path = dir_path.join("authorized_keys");
    let home = rustix::fs::open(
        &acct.home,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("opening", &acct.home))?;
    let dir = open_x2go_dir(&home, acct, &dir_path, chown)?;
    // One edit of a user's file at a time, across the agent's tasks and the sudo helper
    // (another process): an exclusive lock on the directory, held until `dir` is closed.
    lock_dir(&dir, &dir_path)?;

    // Current content (none if the file does not exist yet), read under the lock.
    let existing = match rustix::fs::openat(
        &dir,
        "authorized_keys",
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => read_regular(fd, &file_path, acct.uid)?,
        Err(rustix::io::Errno::NOENT) => String::new(),
        Err(rustix::io::Errno::LOOP) => {
            return Err(AuthKeysError::Unsafe {
                path: file_path,
                why: "is a symlink".to_owned(),
            });
        }
        Err(e) => return Err(io_err("opening", &file_path)(e)),
    };
    let (updated, what) = match op {
        KeyOp::Add { key, expires_at_ms } => (
            add_line(&existing, key, *expires_at_ms, now)?,
            format!("key added to {} until {expires_at_ms}", file_path.display()),
        ),
        KeyOp::Remove { key } => (
            remove_line(&existing, key, now)?,
            format!("key removed from {}", file_path.display()),
        ),
        KeyOp::Sweep => (
            join(&keep_lines(&existing, None, now)),
            format!("expired keys dropped from {}", file_path.display()),
        ),
    };
    if updated == existing {
        // Nothing to change (a sweep with nothing expired): the file is left alone.
        return Ok(format!("{} unchanged", file_path.display()));
    }
    write_replace(&dir, &file_path, acct, chown, updated.as_bytes())?;
    Ok(what)
}

fn open_x2go_dir(
    home: &OwnedFd,
    acct: &Account,
    dir_path: &Path,
    chown: bool,
) -> Result<OwnedFd, AuthKeysError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(home, ".x2go", flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            match rustix::fs::mkdirat(home, ".x2go", Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io_err("creating", dir_path)(e)),
            }
            let fd = rustix::fs::openat(home, ".x2go", flags, Mode::empty())
                .map_err(io_err("opening", dir_path))?;
            if chown {
                let st = rustix::fs::fstat(&fd).map_err(io_err("checking", dir_path))?;
                // Only a directory this call created (owned by root) is handed over.
                if st.st_uid == 0 {
                    let f = File::from(fd);
                    std::os::unix::fs::fchown(&f, Some(acct.uid), Some(acct.gid)).map_err(
                        |source| AuthKeysError::Io {
                            what: "changing the owner of",
                            path: dir_path.to_owned(),
                            source,
                        },
                    )?;
                    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                        .map_err(|source| AuthKeysError::Io {
                            what: "setting the mode of",
                            path: dir_path.to_owned(),
                            source,
                        })?;
                    return Ok(OwnedFd::from(f));
                }
            }
            fd
        }
        Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            return Err(AuthKeysError::Unsafe {
                path: dir_path.to_owned(),
                why: "is a symlink or not a directory".to_owned(),
            });
        }
        Err(e) => return Err(io_err("opening", dir_path)(e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(io_err("checking", dir_path))?;
    if st.st_uid != acct.uid {
        return Err(AuthKeysError::Unsafe {
            path: dir_path.to_owned(),
            why: format!("is owned by uid {}, not by the user", st.st_uid),
        });
    }
    Ok(fd)
}

/// How long an edit waits for another one of the same user's file.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes the exclusive `flock` of the user's `.x2go` directory, waiting at most [`LOCK_WAIT`].
fn lock_dir(dir: &OwnedFd, path: &Path) -> Result<(), AuthKeysError> {
    use rustix::fs::FlockOperation;
    const STEP: Duration = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    loop {
        match rustix::fs::flock(dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) if waited < LOCK_WAIT => {
                // A blocking thread of its own (the edit runs in `spawn_blocking`).
                std::thread::sleep(STEP);
                waited += STEP;
            }
            Err(e) => return Err(io_err("locking", path)(e)),
        }
    }
}

/// Reads the user's file: a regular file, owned by the user, with one link. A hard link to
/// another file (`ln /etc/shadow ~/.x2go/authorized_keys`) or a file someone else put there is
/// refused, so that a root agent never copies a file it did not write into one the user owns.
fn read_regular(fd: OwnedFd, path: &Path, uid: u32) -> Result<String, AuthKeysError> {
    let st = rustix::fs::fstat(&fd).map_err(io_err("checking", path))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(AuthKeysError::Unsafe {
            path: path.to_owned(),
            why: "is not a regular file".to_owned(),
        });
    }
    if st.st_nlink != 1 {
        return Err(AuthKeysError::Unsafe {
            path: path.to_owned(),
            why: format!("has {} hard links (a link to another file?)", st.st_nlink),
        });
    }
    if st.st_uid != uid {
        return Err(AuthKeysError::Unsafe {
            path: path.to_owned(),
            why: format!("is owned by uid {}, not by the user ({uid})", st.st_uid),
        });
    }
    let mut buf = Vec::new();
    File::from(fd)
        .take(MAX_FILE_LEN + 1)
        .read_to_end(&mut buf)
        .map_err(|source| AuthKeysError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        })?;
    if buf.len() as u64 > MAX_FILE_LEN {
        return Err(AuthKeysError::Unsafe {
            path: path.to_owned(),
            why: format!("is larger than {MAX_FILE_LEN} bytes"),
        });
    }
    String::from_utf8(buf).map_err(|_| AuthKeysError::Unsafe {
        path: path.to_owned(),
        why: "is not UTF-8".to_owned(),
    })
}

fn write_replace(
    dir: &OwnedFd,
    path: &Path,
    acct: &Account,
    chown: bool,
    content: &[u8],
) -> Result<(), AuthKeysError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp_name = format!(
        ".authorized_keys.switchboard-{}-{nanos}",
        std::process::id()
    );
    let tmp = rustix::fs::openat(
        dir,
        tmp_name.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io_err("creating a temporary file next to", path))?;
    let result = (|| {
        let mut f = File::from(tmp);
        let wrap = |what: &'static str| {
            move |source| AuthKeysError::Io {
                what,
                path: path.to_owned(),
                source,
            }
        };
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(wrap("setting the mode of"))?;
        if chown {
            std::os::unix::fs::fchown(&f, Some(acct.uid), Some(acct.gid))
                .map_err(wrap("changing the owner of"))?;
        }
        f.write_all(content).map_err(wrap("writing"))?;
        f.sync_all().map_err(wrap("syncing"))?;
        rustix::fs::renameat(dir, tmp_name.as_str(), dir, "authorized_keys")
            .map_err(io_err("replacing", path))?;
        // The rename itself is durable only once the directory is.
        rustix::fs::fsync(dir).map_err(io_err("syncing the directory of", path))
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp_name.as_str(), AtFlags::empty());
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGn2bVbY7nqjZyK0dYxJ4r8sJ1u3m6yWqfIh0pQzX9aB";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 broker@host";

    #[test]
    fn add_to_empty_appends_a_marked_line() {
        let out = add_line("", ED, 2_000, 1_000).unwrap();
        assert_eq!(
            out,
            format!("expiry-time=\"19700101000002Z\" {ED} switchboard-expires=2000\n")
        );
    }

    #[test]
    fn add_keeps_the_comment_and_other_lines_byte_for_byte() {
        let existing = "# my keys\n\nssh-rsa  AAAAB3NzaC1yc2EAAAADAQABAAABAQC7   alice@laptop  \ncommand=\"x\" ssh-ed25519 AAAA\n";
        let out = add_line(existing, RSA, 5_000, 1_000).unwrap();
        assert_eq!(
            out,
            format!(
                "{existing}expiry-time=\"19700101000005Z\" ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 broker@host switchboard-expires=5000\n"
            )
        );
    }

    #[test]
    fn add_replaces_an_earlier_switchboard_line_for_the_same_key() {
        let first = add_line("", ED, 2_000, 1_000).unwrap();
        let second = add_line(&first, ED, 9_000, 1_500).unwrap();
        assert_eq!(
            second,
            format!("expiry-time=\"19700101000009Z\" {ED} switchboard-expires=9000\n")
        );
    }

    #[test]
    fn add_drops_expired_switchboard_lines_only() {
        let existing = format!(
            "{RSA} switchboard-expires=500\nssh-ed25519 AAAAother user\n{ED} switchboard-expires=800\n"
        );
        let out = add_line(&existing, RSA, 3_000, 1_000).unwrap();
        assert_eq!(
            out,
            format!(
                "ssh-ed25519 AAAAother user\nexpiry-time=\"19700101000003Z\" {RSA} switchboard-expires=3000\n"
            )
        );
    }

    #[test]
    fn the_expiry_option_is_utc_to_the_second_rounded_up() {
        assert_eq!(expiry_option(0), "expiry-time=\"19700101000000Z\"");
        assert_eq!(expiry_option(1), "expiry-time=\"19700101000001Z\"");
        assert_eq!(
            expiry_option(1_795_316_575_000),
            "expiry-time=\"20261122030255Z\""
        );
        // A leap day, and the end of a century that is not a leap year.
        assert_eq!(
            expiry_option(951_782_400_000),
            "expiry-time=\"20000229000000Z\""
        );
        assert_eq!(
            expiry_option(4_107_542_399_000),
            "expiry-time=\"21000228235959Z\""
        );
    }

    #[test]
    fn a_sweep_drops_expired_lines_of_both_formats_and_nothing_else() {
        let own = "command=\"x\" ssh-ed25519 AAAA\n# mine\n";
        let old_format = format!("{RSA} switchboard-expires=500\n");
        let live = add_line("", ED, 9_000, 1_000).unwrap();
        let expired =
            add_line("", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC8", 2_000, 1_000).unwrap();
        let file = format!("{own}{old_format}{expired}{live}");
        assert_eq!(
            join(&keep_lines(&file, None, 3_000)),
            format!("{own}{live}")
        );
        // A line with options of the user's own is never taken for ours.
        let users = format!("expiry-time=\"20991231000000Z\" no-pty {ED} switchboard-expires=1\n");
        assert_eq!(join(&keep_lines(&users, None, 3_000)), users);
    }

    #[test]
    fn add_refuses_a_past_expiry() {
        assert!(add_line("", ED, 1_000, 1_000).is_err());
    }

    #[test]
    fn remove_drops_only_our_line_for_that_key() {
        let users_own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGn2bVbY7nqjZyK0dYxJ4r8sJ1u3m6yWqfIh0pQzX9aB me@home\n";
        let with_ours = add_line(users_own, ED, 9_000, 1_000).unwrap();
        assert_ne!(with_ours, users_own);
        let out = remove_line(&with_ours, ED, 2_000).unwrap();
        assert_eq!(out, users_own);
    }

    #[test]
    fn remove_of_an_absent_key_only_expires() {
        let existing = format!("# c\n{RSA} switchboard-expires=10\n");
        assert_eq!(remove_line(&existing, ED, 100).unwrap(), "# c\n");
    }

    #[test]
    fn the_key_comment_may_be_matched_regardless_of_comment() {
        // A remove names the key by type and blob; the comment may differ.
        let added = add_line("", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 one", 9_000, 1).unwrap();
        let out = remove_line(&added, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 two", 2).unwrap();
        assert_eq!(out, "");
    }

    #[test]
    fn invalid_keys_are_refused() {
        for bad in [
            "",
            "   ",
            "command=\"/bin/sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
            "no-pty ssh-rsa AAAAB3NzaC1yc2E",
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
            "ssh-ed25519",
            "ssh-ed25519 not*base64",
            "ssh-ed25519 AAAAC3Nz\nssh-rsa AAAAB3Nz",
            "ssh-ed25519 AAAAC3Nz\rx",
            "ssh-ed25519 AAAAC3Nz\u{0}",
            "ssh-ed25519 AAAAC3Nz switchboard-expires=99999999999999",
            "ssh-ed25519 AAAAC3N",
        ] {
            assert!(add_line("", bad, 10, 1).is_err(), "accepted {bad:?}");
            assert!(remove_line("", bad, 1).is_err(), "accepted {bad:?}");
        }
        let long = format!("ssh-rsa {}", "A".repeat(MAX_KEY_LEN));
        assert!(add_line("", &long, 10, 1).is_err());
    }

    #[test]
    fn every_accepted_key_type() {
        for t in KEY_TYPES {
            let key = format!("{t} AAAAB3NzaC1yc2EAAAADAQAB");
            let out = add_line("", &key, 10, 1).unwrap();
            assert_eq!(
                out,
                format!("expiry-time=\"19700101000001Z\" {key} switchboard-expires=10\n")
            );
        }
    }

    #[test]
    fn lines_that_only_look_managed_are_kept() {
        // Not a known key type, or no numeric expiry: not ours, never touched.
        let existing =
            "ssh-dss AAAA x switchboard-expires=1\nssh-rsa AAAA switchboard-expires=soon\n";
        assert_eq!(remove_line(existing, ED, 1_000).unwrap(), existing);
    }

    #[test]
    fn passwd_lines() {
        let a = parse_passwd_line("alice:x:1001:1001:Alice,,,:/home/alice:/bin/bash\n").unwrap();
        assert_eq!(
            a,
            Account {
                name: "alice".to_owned(),
                uid: 1001,
                gid: 1001,
                home: PathBuf::from("/home/alice"),
            }
        );
        assert!(parse_passwd_line("broken:x:1").is_none());
        assert!(parse_passwd_line("bad:x:uid:1:g:/h:/s").is_none());
    }

    #[tokio::test]
    async fn apply_refuses_system_and_unknown_users() {
        let key = ED.to_owned();
        let e = apply("root", KeyOp::Remove { key: key.clone() })
            .await
            .unwrap_err();
        assert!(matches!(e, AuthKeysError::User { .. }), "{e}");
        let e = apply("daemon", KeyOp::Remove { key: key.clone() })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("system account"), "{e}");
        let e = apply("no-such-user-sb-test", KeyOp::Remove { key })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no such user"), "{e}");
    }

    #[tokio::test]
    async fn apply_validates_the_key_first() {
        let e = apply(
            "root",
            KeyOp::Add {
                key: "command=\"x\" ssh-rsa AAAA".to_owned(),
                expires_at_ms: u64::MAX,
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AuthKeysError::InvalidKey(_)), "{e}");
    }
}
