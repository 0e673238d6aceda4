//! The password file: one `user:hash` per line, argon2 (`$argon2id$…`, as written by
//! `switchboard passwd`) or bcrypt (`$2b$…`, as written by `htpasswd -B`). Lines starting with `#`
//! and empty lines are ignored.
//!
//! The file is read again when its modification time or size changes, so `switchboard passwd`
//! takes effect on the next login without a reload. Hash checks run on the authenticator's bounded
//! [`crate::pool::Pool`] (argon2 is deliberately slow: `[auth] workers` at once, `[auth] queue`
//! waiting, the rest refused), and an unknown user costs the same as a wrong password.

use crate::AuthError;
use crate::pool::{Pool, PoolError};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest password file read.
pub const MAX_FILE: u64 = 16 << 20;

/// A hash compared against when the user is unknown, so timing does not tell.
fn dummy() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("switchboard-unknown-user").unwrap_or_default())
}

type Entries = Arc<HashMap<String, String>>;

/// What identifies one version of the file: inode, size, mtime and ctime (to the nanosecond), so
/// a rewrite within one timestamp tick is still noticed.
type Stamp = (u64, u64, i64, i64, i64, i64);

/// A password file, cached until it changes.
#[derive(Clone, Debug)]
pub struct PasswordFile {
    path: PathBuf,
    cache: Arc<Mutex<Option<(Stamp, Entries)>>>,
}

/// Parses the file's text: `user:hash` lines. Errors name the line.
pub fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("line {}: expected `user:hash`", i + 1));
        };
        if !crate::valid_user(user) {
            return Err(format!("line {}: {user:?} is not a user name", i + 1));
        }
        if !(is_argon2(hash) || is_bcrypt(hash)) {
            return Err(format!(
                "line {}: the hash for {user:?} is neither argon2 ($argon2id$…) nor bcrypt ($2b$…)",
                i + 1
            ));
        }
        if out.insert(user.to_owned(), hash.to_owned()).is_some() {
            return Err(format!("line {}: user {user:?} is listed twice", i + 1));
        }
    }
    Ok(out)
}

fn is_argon2(h: &str) -> bool {
    h.starts_with("$argon2id$") || h.starts_with("$argon2i$") || h.starts_with("$argon2d$")
}

fn is_bcrypt(h: &str) -> bool {
    ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| h.starts_with(p))
}

/// Checks `password` against one stored hash.
pub fn check(hash: &str, password: &str) -> bool {
    if is_bcrypt(hash) {
        bcrypt::verify(password, hash).unwrap_or(false)
    } else {
        PasswordHash::new(hash).is_ok_and(|h| {
            // argon2 0.5 computes `p * 8` before it checks p's range: a lane count over
            // u32::MAX / 8 overflows (a panic where overflow checks are on), so it is refused
            // here first (fixed upstream in RustCrypto/password-hashes#745, after 0.5.3). Every
            // `p` is checked: the PHC parser lets a name repeat, and argon2 takes the last.
            let lanes_ok = h
                .params
                .iter()
                .filter(|(k, _)| k.as_str() == "p")
                .all(|(_, v)| v.decimal().is_ok_and(|p| p <= argon2::Params::MAX_P_COST));
            lanes_ok
                && Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
        })
    }
}

/// An argon2id hash of `password` with a fresh salt and argon2's default cost (19 MiB, two
/// passes).
pub fn hash(password: &str) -> Result<String, String> {
    hash_with(password, argon2::Params::default())
}

/// An argon2id hash of `password` with a fresh salt, costing `memory_kib` KiB of memory and
/// `passes` passes over it (one lane). Checking it costs the same.
pub fn hash_costing(password: &str, memory_kib: u32, passes: u32) -> Result<String, String> {
    let params = argon2::Params::new(memory_kib, passes, 1, None).map_err(|e| e.to_string())?;
    hash_with(password, params)
}

fn hash_with(password: &str, params: argon2::Params) -> Result<String, String> {
    let salt = crate::secret::random_bytes::<16>().map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

impl PasswordFile {
    /// The file at `path` (read on first use).
    pub fn new(path: PathBuf) -> PasswordFile {
        PasswordFile {
            path,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    fn entries(&self) -> Result<Entries, AuthError> {
        let unavailable =
            |m: String| AuthError::Unavailable(format!("{}: {m}", self.path.display()));
        let meta = std::fs::metadata(&self.path).map_err(|e| unavailable(e.to_string()))?;
        if meta.len() > MAX_FILE {
            return Err(unavailable(format!("larger than {MAX_FILE} bytes")));
        }
        use std::os::unix::fs::MetadataExt;
        let stamp: Stamp = (
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        );
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((t, e)) = &*cache
            && *t == stamp
        {
            return Ok(e.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| unavailable(e.to_string()))?;
        let entries = Arc::new(parse(&text).map_err(unavailable)?);
        *cache = Some((stamp, entries.clone()));
        Ok(entries)
    }

    /// Checks a user's password on `pool` (`suspect`: from a source that has just failed);
    /// refused at once with [`AuthError::Busy`] when the pool is full. Returns the user as the
    /// file writes it (names are compared exactly, so that is the name given).
    pub async fn verify(
        &self,
        pool: &Pool,
        user: &str,
        password: &str,
        suspect: bool,
    ) -> Result<String, AuthError> {
        let this = self.clone();
        let (user, password) = (user.to_owned(), password.to_owned());
        let job = pool.run(suspect, move || {
            let entries = this.entries()?;
            let known = entries.get_key_value(&user);
            let ok = check(known.map_or(dummy(), |(_, h)| h.as_str()), &password);
            match known {
                Some((name, _)) if ok => Ok(name.clone()),
                _ => Err(AuthError::Denied),
            }
        });
        match job.await {
            Ok(r) => r,
            Err(PoolError::Busy) => Err(AuthError::Busy),
            Err(PoolError::Panicked(e)) => Err(AuthError::Unavailable(format!(
                "password check panicked: {e}"
            ))),
        }
    }
}

/// Adds `user` to the file at `path` or changes their password, keeping every other line. The
/// file is replaced atomically; a new file is created with mode 0600.
pub fn set_password(path: &Path, user: &str, password: &str) -> Result<bool, String> {
    if !crate::valid_user(user) {
        return Err(format!(
            "{user:?} is not a user name (no ':', no control characters)"
        ));
    }
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    if password.len() > crate::MAX_PASSWORD {
        return Err(format!(
            "the password is longer than {} bytes",
            crate::MAX_PASSWORD
        ));
    }
    let (text, mode) = match std::fs::read_to_string(path) {
        Ok(t) => {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0o600);
            (t, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o600),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = format!("{user}:{}", hash(password)?);
    let mut out = String::new();
    let mut replaced = false;
    for l in text.lines() {
        if l.split_once(':').is_some_and(|(u, _)| u == user) && !l.trim_start().starts_with('#') {
            out.push_str(&line);
            replaced = true;
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    if !replaced {
        out.push_str(&line);
        out.push('\n');
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("passwd"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })?;
    Ok(!replaced)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn argon2_and_bcrypt_hashes_both_verify() {
        let a = hash("s3cret").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert!(check(&a, "s3cret"));
        assert!(!check(&a, "s3creT"));
        let b = bcrypt::hash("s3cret", 4).unwrap();
        assert!(check(&b, "s3cret"));
        assert!(!check(&b, "nope"));
        assert!(!check(dummy(), ""));
    }

    /// argon2 0.5 multiplies the lane count by 8 before checking its range, which overflows (a
    /// panic where overflow checks are on) for lane counts over u32::MAX / 8: such a hash is
    /// simply wrong (found by the password_file fuzz target).
    #[test]
    fn a_hash_with_too_many_lanes_is_wrong_not_a_panic() {
        // The PHC parser lets a name repeat, and argon2 takes the last.
        for p in [
            "p=536870912",
            "p=4294967295",
            "p=16777216",
            "p=1,p=4294967295",
        ] {
            let h = format!("$argon2id$v=19$m=65536,t=2,{p}$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA");
            assert!(PasswordHash::new(&h).is_ok(), "{h}");
            assert!(!check(&h, "x"), "{h}");
        }
        assert!(!check("$3$p=2322332233", "a23"));
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(parse("# c\n\nalice:$2b$04$abc\n").is_ok());
        assert!(parse("alice\n").unwrap_err().starts_with("line 1"));
        assert!(parse("\nalice:plain\n").unwrap_err().starts_with("line 2"));
        assert!(parse("a:$2b$x\na:$2b$y\n").unwrap_err().contains("twice"));
    }

    #[tokio::test]
    async fn set_password_adds_then_changes_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        assert!(set_password(&path, "alice", "one").unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.insert_str(0, "# site users\n");
        std::fs::write(&path, text).unwrap();
        assert!(set_password(&path, "bob", "two").unwrap());
        assert!(!set_password(&path, "alice", "three").unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# site users\nalice:$argon2id$"), "{text}");
        let f = PasswordFile::new(path.clone());
        let pool = Pool::new("file", crate::pool::Limits::default());
        assert_eq!(
            f.verify(&pool, "alice", "three", false).await.unwrap(),
            "alice"
        );
        assert_eq!(
            f.verify(&pool, "ALICE", "three", false).await,
            Err(AuthError::Denied),
            "names are compared exactly"
        );
        assert_eq!(
            f.verify(&pool, "alice", "one", false).await,
            Err(AuthError::Denied)
        );
        f.verify(&pool, "bob", "two", false).await.unwrap();
        assert_eq!(
            f.verify(&pool, "carol", "two", false).await,
            Err(AuthError::Denied)
        );
        assert!(set_password(&path, "x:y", "p").is_err());
        assert!(set_password(&path, "x", "").is_err());
    }

    #[tokio::test]
    async fn a_broken_file_is_unavailable_not_denied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let f = PasswordFile::new(path.clone());
        let pool = Pool::new("file", crate::pool::Limits::default());
        assert!(matches!(
            f.verify(&pool, "alice", "x", false).await,
            Err(AuthError::Unavailable(_))
        ));
        std::fs::write(&path, "alice:cleartext\n").unwrap();
        let e = f.verify(&pool, "alice", "x", false).await.unwrap_err();
        assert!(
            matches!(&e, AuthError::Unavailable(m) if m.contains("line 1")),
            "{e}"
        );
    }
}
