//! The management socket's transport, shared by the broker and the director: binding the UNIX
//! socket with its mode and group, checking each peer's credentials, reading bounded lines and
//! writing replies in the two forms of [`crate::mgmt`] (one JSON object per reply, or human text
//! ended by a line holding only `.`).
//!
//! What the commands mean is the daemon's business: it implements [`Handler`]. `verbose` and
//! `quit` are answered here, the same for every daemon.
//!
//! On top of the file permissions (default 0660 with a configured group), each connection's peer
//! credentials (SO_PEERCRED) are checked: root, the daemon's own user, and members of the
//! configured group are served; anyone else is told so and disconnected.

use crate::mgmt::MAX_LINE;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// A command's outcome: JSON for programs, text for people.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The `data` of `{"ok": true, "data": …}`.
    pub json: Value,
    /// The text shown with `verbose on`.
    pub text: String,
}

impl Reply {
    /// A reply from its two forms.
    pub fn new(json: Value, text: impl Into<String>) -> Reply {
        Reply {
            json,
            text: text.into(),
        }
    }
}

/// What a daemon does with one command line (never empty, never `verbose` or `quit`).
pub trait Handler: Send + Sync + 'static {
    /// Runs `line` for the peer user `actor`.
    fn execute(
        &self,
        line: String,
        actor: String,
    ) -> impl Future<Output = Result<Reply, String>> + Send;
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("management socket {path}: {message}")]
pub struct SocketError {
    /// The path.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// The gid of a group named in /etc/group.
pub fn gid_of_group(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

/// The user name of `uid` (from /etc/passwd), or `uid:N`.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                f.next()?;
                (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// Supplementary groups of a process (from /proc/PID/status).
fn groups_of(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Groups:")).map(|l| {
                l[7..]
                    .split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Binds the socket at `path` with `mode` and `group`. A stale socket left by a crash is
/// replaced; a live one (another daemon) is an error. Returns the listener and the group's gid.
pub async fn bind(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<(UnixListener, Option<u32>), SocketError> {
    let err = |message: String| SocketError {
        path: path.display().to_string(),
        message,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(err("exists and is not a socket; not touching it".into()));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(err("another process is listening on it".into()));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    let gid = match group {
        Some(g) => Some(gid_of_group(g).ok_or_else(|| err(format!("group {g:?} does not exist")))?),
        None => None,
    };
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(format!("cannot set its mode: {e}")))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| err(format!("cannot give it to the group: {e}")))?;
    }
    Ok((listener, gid))
}

/// Connections one user may hold on the socket at once.
pub const MAX_PER_UID: usize = 64;

/// One connection's place in the per-uid count; dropping it gives the place back.
struct UidSlot {
    table: Arc<std::sync::Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl UidSlot {
    fn take(table: &Arc<std::sync::Mutex<HashMap<u32, usize>>>, uid: u32) -> Option<UidSlot> {
        let mut t = table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = t.entry(uid).or_insert(0);
        if *n >= MAX_PER_UID {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            table: table.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut t = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = t.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.uid);
            }
        }
    }
}

/// Serves connections with `handler` until `shutdown`, then removes the socket file. Each user
/// (peer uid) holds at most [`MAX_PER_UID`] connections at once.
pub fn spawn<H: Handler>(
    handler: Arc<H>,
    listener: UnixListener,
    path: PathBuf,
    gid: Option<u32>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let own_uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    let per_uid: Arc<std::sync::Mutex<HashMap<u32, usize>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "management socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let h = handler.clone();
            let stop = shutdown.clone();
            let per_uid = per_uid.clone();
            tokio::spawn(async move {
                let Ok(cred) = stream.peer_cred() else {
                    return;
                };
                let uid = cred.uid();
                // One user (a script gone wrong) cannot take every connection: a cap per uid.
                let Some(_held) = UidSlot::take(&per_uid, uid) else {
                    let (_, mut w) = stream.into_split();
                    let _ = send(
                        &mut w,
                        false,
                        Err(format!(
                            "too many connections from user {} (at most {MAX_PER_UID} at once)",
                            user_name(uid)
                        )),
                    )
                    .await;
                    return;
                };
                let allowed = uid == 0
                    || uid == own_uid
                    || gid.is_some_and(|g| {
                        cred.gid() == g || cred.pid().is_some_and(|p| groups_of(p).contains(&g))
                    });
                let actor = user_name(uid);
                let (r, mut w) = stream.into_split();
                if !allowed {
                    tracing::warn!(user = %actor, uid, "management socket: refused");
                    let _ = send(
                        &mut w,
                        false,
                        Err(format!("user {actor} may not use the management socket")),
                    )
                    .await;
                    return;
                }
                serve(&*h, BufReader::new(r), w, actor, stop).await;
            });
        }
        let _ = std::fs::remove_file(&path);
    })
}

async fn serve<H: Handler>(
    handler: &H,
    mut r: impl AsyncBufRead + Unpin,
    mut w: impl AsyncWrite + Unpin,
    actor: String,
    shutdown: CancellationToken,
) {
    let mut buf = Vec::new();
    let mut verbose = false;
    loop {
        let line = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = read_line(&mut r, &mut buf) => l,
        };
        let line = match line {
            Err(_) | Ok(None) => return,
            Ok(Some(Err(e))) => {
                if send(&mut w, verbose, Err(e)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Some(Ok(line))) => line,
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let result = match words.first().map(|w| w.to_ascii_lowercase()).as_deref() {
            None => continue,
            Some("quit" | "exit") if words.len() == 1 => {
                let _ = send(&mut w, verbose, Ok(Reply::new(json!("bye"), "bye"))).await;
                return;
            }
            Some("verbose") => match words.get(1..) {
                Some([]) => Ok(()),
                Some([v]) if v.eq_ignore_ascii_case("on") => {
                    verbose = true;
                    Ok(())
                }
                Some([v]) if v.eq_ignore_ascii_case("off") => {
                    verbose = false;
                    Ok(())
                }
                _ => Err("usage: verbose [on|off]".to_owned()),
            }
            .map(|()| {
                Reply::new(
                    json!({"verbose": verbose}),
                    format!("verbose {}", if verbose { "on" } else { "off" }),
                )
            }),
            Some(_) => handler.execute(line.clone(), actor.clone()).await,
        };
        if send(&mut w, verbose, result).await.is_err() {
            return;
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes. `Ok(None)` at the end of the stream;
/// `Ok(Some(Err(_)))` for a line that is too long (discarded up to its newline) or not UTF-8.
pub async fn read_line(
    r: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<String, String>>> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(None);
        }
        let (chunk, used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            buf.extend_from_slice(chunk);
            if buf.len() > MAX_LINE {
                too_long = true;
                buf.clear();
            }
        }
        r.consume(used);
        if done {
            break;
        }
    }
    if too_long {
        return Ok(Some(Err(format!(
            "line longer than {MAX_LINE} bytes; ignored"
        ))));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(
        String::from_utf8(std::mem::take(buf)).map_err(|_| "the line is not UTF-8".to_owned()),
    ))
}

/// The bytes of one reply: JSON (`verbose off`) or text ended by `.` (`verbose on`).
pub fn format_reply(verbose: bool, r: Result<Reply, String>) -> String {
    let mut out = String::new();
    if verbose {
        let text = match r {
            Ok(reply) => reply.text,
            Err(e) => format!("error: {e}"),
        };
        for line in text.lines() {
            // A line holding only "." would end the reply early: escape it, as SMTP does.
            out.push_str(if line == "." { ".." } else { line });
            out.push('\n');
        }
        out.push_str(".\n");
    } else {
        let v = match r {
            Ok(reply) => json!({"ok": true, "data": reply.json}),
            Err(e) => json!({"ok": false, "error": e}),
        };
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

async fn send(
    w: &mut (impl AsyncWrite + Unpin),
    verbose: bool,
    r: Result<Reply, String>,
) -> std::io::Result<()> {
    w.write_all(format_reply(verbose, r).as_bytes()).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies_escape_a_lone_dot_and_end_with_one() {
        let r = format_reply(true, Ok(Reply::new(json!(1), "a\n.\nb")));
        assert_eq!(r, "a\n..\nb\n.\n");
        let r = format_reply(false, Err("nope".into()));
        assert_eq!(r, "{\"error\":\"nope\",\"ok\":false}\n");
    }

    #[tokio::test]
    async fn long_lines_are_refused_and_skipped() {
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\nhello\r\n");
        let mut r = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert!(read_line(&mut r, &mut buf).await.unwrap().unwrap().is_err());
        assert_eq!(
            read_line(&mut r, &mut buf).await.unwrap().unwrap().unwrap(),
            "hello"
        );
        assert!(read_line(&mut r, &mut buf).await.unwrap().is_none());
    }

    struct Echo;

    impl Handler for Echo {
        async fn execute(&self, line: String, _actor: String) -> Result<Reply, String> {
            Ok(Reply::new(json!(line), "ok"))
        }
    }

    async fn ask(c: &mut BufReader<UnixStream>, line: &str) -> String {
        c.get_mut().write_all(line.as_bytes()).await.unwrap();
        c.get_mut().write_all(b"\n").await.unwrap();
        let mut got = String::new();
        c.read_line(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn one_user_holds_at_most_its_share_of_connections() {
        let dir = std::env::temp_dir().join(format!("sb-mgmt-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let (listener, gid) = bind(&path, 0o600, None).await.unwrap();
        let stop = CancellationToken::new();
        let task = spawn(Arc::new(Echo), listener, path.clone(), gid, stop.clone());
        let mut held = Vec::new();
        for i in 0..MAX_PER_UID {
            let mut c = BufReader::new(UnixStream::connect(&path).await.unwrap());
            assert!(
                ask(&mut c, &format!("n{i}")).await.contains("true"),
                "served"
            );
            held.push(c);
        }
        let mut over = BufReader::new(UnixStream::connect(&path).await.unwrap());
        let refused = ask(&mut over, "one more").await;
        assert!(refused.contains("too many connections"), "{refused}");
        drop(held.pop());
        // The freed place is someone else's to take (its task may still be closing).
        let start = std::time::SystemTime::now();
        loop {
            let mut c = BufReader::new(UnixStream::connect(&path).await.unwrap());
            if ask(&mut c, "again").await.contains("true") {
                break;
            }
            assert!(start.elapsed().unwrap() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
