//! API bearer tokens: a file of hashes, never the tokens themselves.
//!
//! One token per line, `NAME:ACCESS:SHA256`, where ACCESS is `rw` or `ro` and SHA256 is the hex
//! SHA-256 of the token. `#` starts a comment. `switchboard token add FILE NAME [--read-only]`
//! appends a line and prints the new token once; `switchboard token revoke FILE NAME` removes it.
//! The broker rereads the file when it changes, without a restart.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Longest tokens file accepted.
const MAX_FILE: u64 = 1 << 20;
/// How often the broker looks for changes to the file.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and change.
    ReadWrite,
    /// Only read.
    ReadOnly,
}

/// A known token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its name (who holds it; shown in logs and audit, never the token).
    pub name: String,
    /// What it may do.
    pub access: Access,
}

/// A problem with the tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A malformed line.
    #[error("{path}: line {line}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// `add` with a name that exists, or `revoke` with one that does not.
    #[error("{0}")]
    Name(String),
}

fn io(path: &Path, source: std::io::Error) -> TokenError {
    TokenError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Hex SHA-256 of a token.
pub fn hash(token: &str) -> String {
    switchboard_auth::secret::sha256_hex(token)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// Parses the file's text into hash → token.
pub fn parse(text: &str, path: &Path) -> Result<HashMap<String, TokenInfo>, TokenError> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |message: String| TokenError::Syntax {
            path: path.display().to_string(),
            line: i + 1,
            message,
        };
        let mut parts = line.split(':');
        let (Some(name), Some(access), Some(h), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(syntax("expected NAME:ACCESS:SHA256".into()));
        };
        if !valid_name(name) {
            return Err(syntax(format!("bad token name {name:?}")));
        }
        let access = match access {
            "rw" => Access::ReadWrite,
            "ro" => Access::ReadOnly,
            other => return Err(syntax(format!("access must be rw or ro, not {other:?}"))),
        };
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax("the hash must be 64 hex digits".into()));
        }
        out.insert(
            h.to_ascii_lowercase(),
            TokenInfo {
                name: name.to_owned(),
                access,
            },
        );
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, TokenError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_FILE => {
            return Err(io(path, std::io::Error::other("file larger than 1 MiB")));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(io(path, e)),
    }
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}

fn write_atomically(path: &Path, text: &str) -> Result<(), TokenError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    switchboard_auth::secret::write_atomically(path, text.as_bytes(), 0o600)
        .map_err(|e| io(path, e))
}

/// Holds the tokens file's lock for a read-modify-write (two `token add`s at once, or one
/// beside a running broker's `up`, must not lose a token).
fn lock(path: &Path) -> Result<std::fs::File, TokenError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    switchboard_auth::secret::lock_for_update(path).map_err(|e| io(path, e))
}

/// A new random token: `sbt_` and 43 base64url characters (256 bits).
pub fn generate() -> Result<String, TokenError> {
    switchboard_auth::secret::random_token("sbt_", 32).map_err(|e| TokenError::Name(e.to_string()))
}

/// Adds a token named `name` and returns it (the file keeps only its hash).
pub fn add(path: &Path, name: &str, access: Access) -> Result<String, TokenError> {
    if !valid_name(name) {
        return Err(TokenError::Name(format!(
            "bad token name {name:?}: use up to 64 letters, digits, '-', '_', '.', '@'"
        )));
    }
    let _lock = lock(path)?;
    let text = read(path)?;
    let existing = parse(&text, path)?;
    if existing.values().any(|t| t.name == name) {
        return Err(TokenError::Name(format!(
            "a token named {name:?} exists already in {}; revoke it first",
            path.display()
        )));
    }
    let token = generate()?;
    let mut out = text;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str(
            "# Switchboard API tokens: NAME:ACCESS:SHA256 (managed by `switchboard token`)\n",
        );
    }
    let a = match access {
        Access::ReadWrite => "rw",
        Access::ReadOnly => "ro",
    };
    out.push_str(&format!("{name}:{a}:{}\n", hash(&token)));
    write_atomically(path, &out)?;
    Ok(token)
}

/// Removes the token named `name`.
pub fn revoke(path: &Path, name: &str) -> Result<(), TokenError> {
    let _lock = lock(path)?;
    let text = read(path)?;
    parse(&text, path)?;
    let mut found = false;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let is_it = l.trim().split(':').next() == Some(name) && !l.trim().starts_with('#');
            found |= is_it;
            !is_it
        })
        .collect();
    if !found {
        return Err(TokenError::Name(format!(
            "no token named {name:?} in {}",
            path.display()
        )));
    }
    let mut out = kept.join("\n");
    out.push('\n');
    write_atomically(path, &out)
}

/// The tokens the broker accepts, reloaded when the file changes.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    current: ArcSwap<HashMap<String, TokenInfo>>,
}

impl Tokens {
    /// Loads the file (a missing file means no tokens).
    pub fn load(path: &Path) -> Result<Arc<Tokens>, TokenError> {
        let map = parse(&read(path)?, path)?;
        Ok(Arc::new(Tokens {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(map),
        }))
    }

    /// The token presented, if it is known.
    /// The token with this hash, if it is still in the file (dashboard sessions re-check theirs).
    pub fn check_hash(&self, hash: &str) -> Option<TokenInfo> {
        self.current.load().get(hash).cloned()
    }

    pub fn check(&self, token: &str) -> Option<TokenInfo> {
        self.current.load().get(&hash(token)).cloned()
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rereads the file now; a bad file keeps the tokens in force.
    pub fn reload(&self) {
        match read(&self.path).and_then(|t| parse(&t, &self.path)) {
            Ok(map) => {
                tracing::info!(tokens = map.len(), file = %self.path.display(), "API tokens reloaded");
                self.current.store(Arc::new(map));
            }
            Err(e) => {
                tracing::error!(error = %e, "tokens file not reloaded; keeping the tokens in force")
            }
        }
    }

    /// Watches the file and reloads on change until `shutdown`.
    pub fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let stamp = |p: &Path| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            };
            let mut last = stamp(&self.path);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RELOAD_EVERY) => {}
                }
                let now = stamp(&self.path);
                if now != last {
                    last = now;
                    self.reload();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_added_at_once_by_many_writers_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let added: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || add(path, &format!("t{i}"), Access::ReadOnly).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let file = Tokens::load(&path).unwrap();
        for t in &added {
            assert!(file.check(t).is_some(), "a concurrent add lost a token");
        }
        // No temp files left behind; the lock file is the only other file.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["tokens", "tokens.lock"]);
    }

    #[test]
    fn added_tokens_check_and_revoked_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let admin = add(&path, "admin", Access::ReadWrite).unwrap();
        let viewer = add(&path, "viewer", Access::ReadOnly).unwrap();
        assert!(admin.starts_with("sbt_") && admin.len() == 47);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&admin), "the file must not hold the token");
        let t = Tokens::load(&path).unwrap();
        assert_eq!(t.check(&admin).unwrap().access, Access::ReadWrite);
        assert_eq!(t.check(&viewer).unwrap().access, Access::ReadOnly);
        assert!(t.check("sbt_wrong").is_none());
        assert!(add(&path, "admin", Access::ReadOnly).is_err());
        revoke(&path, "admin").unwrap();
        t.reload();
        assert!(t.check(&admin).is_none());
        assert!(t.check(&viewer).is_some());
        assert!(revoke(&path, "admin").is_err());
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let e = parse("# ok\nadmin:rw:abc\n", Path::new("/etc/t"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/etc/t: line 2: the hash must be 64 hex digits");
        let e = parse(&format!("a:maybe:{}\n", "0".repeat(64)), Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rw or ro"), "{e}");
    }
}
