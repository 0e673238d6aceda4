//! Random secrets and constant-time comparison: the one place Switchboard draws session ids,
//! tokens, credentials and salts from the operating system and compares secrets.
//!
//! - [`random_bytes`]: raw bytes (salts, UUIDs);
//! - [`random_hex`]: lowercase hex of random bytes (cookies, session ids, CSRF tokens);
//! - [`random_token`]: a prefix and base64url without padding (API tokens `sbt_…`, agent
//!   credentials `sba_…`), so a leaked secret says what it is;
//! - [`sha256_hex`]: what is stored instead of a token;
//! - [`ct_eq`]: comparing a presented secret with the expected one without telling, by how long
//!   the comparison took, how much of it was right;
//! - [`write_atomically`] and [`lock_for_update`]: how a secret or state file is replaced, so
//!   that a crash leaves the old file or the new one, never an empty one, and two writers never
//!   lose each other's change.
//!
//! Ids that are not secrets (audit record ids) are drawn where they are used: the store does not
//! depend on this crate.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// The operating system could not supply randomness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no randomness available: {0}")]
pub struct SecretError(getrandom::Error);

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(SecretError)?;
    Ok(b)
}

/// `len` random bytes (for lengths chosen at run time).
fn random_vec(len: usize) -> Result<Vec<u8>, SecretError> {
    let mut b = vec![0u8; len];
    getrandom::fill(&mut b).map_err(SecretError)?;
    Ok(b)
}

/// `bytes` random bytes as lowercase hex (`2 * bytes` characters).
pub fn random_hex(bytes: usize) -> Result<String, SecretError> {
    Ok(hex(&random_vec(bytes)?))
}

/// `prefix` followed by `bytes` random bytes in base64url without padding (32 bytes give 43
/// characters).
pub fn random_token(prefix: &str, bytes: usize) -> Result<String, SecretError> {
    let b = random_vec(bytes)?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

/// Lowercase hex SHA-256 of `text` (64 characters).
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// Lowercase hex of `bytes`, two characters each.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Whether `a` and `b` are equal. Different lengths answer at once (lengths of secrets are not
/// secret); equally long inputs take the same time whichever bytes differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // subtle keeps the comparison branch-free and hides it from the optimiser, which a
    // hand-written fold of XORs cannot promise.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Replaces `path` with `data`, created with `mode`: written to a temp file of its own in the
/// same directory (`create_new`, so it follows no link and clobbers no other writer's), synced,
/// renamed over `path`, and the directory synced, so that after a crash the file is the old one
/// or the new one, whole.
pub fn write_atomically(path: &std::path::Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let unique = random_hex(8).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(".{name}.{}.{unique}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        // The mode exactly, whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

/// An exclusive lock for a read-modify-write of `path` by several processes (`switchboard
/// token add` beside a running broker, two `up`s): an advisory lock on `PATH.lock` (made 0600
/// and left in place), held until the returned file is dropped.
pub fn lock_for_update(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(std::path::Path::new(&lock))?;
    f.lock()?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn random_bytes_differ_between_draws() {
        let a = random_bytes::<32>().unwrap();
        let b = random_bytes::<32>().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn random_hex_is_lowercase_hex_of_the_length_asked() {
        let a = random_hex(32).unwrap();
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{a}"
        );
        assert_eq!(random_hex(16).unwrap().len(), 32);
        assert_ne!(a, random_hex(32).unwrap());
    }

    #[test]
    fn random_tokens_are_prefixed_base64url_without_padding() {
        let t = random_token("sba_", 32).unwrap();
        assert_eq!(t.len(), 4 + 43);
        let body = t.strip_prefix("sba_").unwrap();
        assert!(
            body.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{t}"
        );
        assert_ne!(t, random_token("sba_", 32).unwrap());
        assert_eq!(random_token("x", 1).unwrap().len(), 1 + 2);
    }

    #[test]
    fn sha256_hex_matches_the_known_vectors() {
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_is_two_lowercase_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(b""), "");
    }

    /// Moved from `switchboard_broker::agents::tests::hash_comparison_needs_equal_strings`.
    #[test]
    fn ct_eq_needs_equal_bytes_and_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"abcd", b"abc"));
        assert!(!ct_eq(b"", b"a"));
    }
}
