//! The agent listener's certificates: configured PEM files, or a private CA that the broker makes
//! for itself in the data directory on first start.
//!
//! Agents pin the CA certificate (`ca` in the agent's configuration), so a self-made CA is as
//! strong as a bought one here: copy `DATA_DIR/tls/agent-ca.crt` to each host. The CA key stays
//! in the data directory (mode 0600) so the broker certificate can be renewed without touching
//! the agents.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// File names under `DATA_DIR/tls`.
pub const CA_CERT: &str = "agent-ca.crt";
/// The CA's private key.
pub const CA_KEY: &str = "agent-ca.key";
/// The broker's certificate for the agent listener, signed by the CA.
pub const SERVER_CERT: &str = "agents.crt";
/// Its private key.
pub const SERVER_KEY: &str = "agents.key";

/// Paths of the agent listener's certificate material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPki {
    /// CA certificate the agents pin.
    pub ca_cert: PathBuf,
    /// Listener certificate chain.
    pub cert: PathBuf,
    /// Listener key.
    pub key: PathBuf,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Writing or reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot make certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Names the generated listener certificate is valid for: loopback, this machine's host name and
/// whatever the configuration adds (`[agents] names`).
pub fn default_names(extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_owned());
        }
    }
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// Uses the CA and listener certificate in `dir`, making them first if they do not exist yet.
pub fn ensure(dir: &Path, names: &[String]) -> Result<AgentPki, PkiError> {
    let pki = AgentPki {
        ca_cert: dir.join(CA_CERT),
        cert: dir.join(SERVER_CERT),
        key: dir.join(SERVER_KEY),
    };
    if pki.ca_cert.exists() && pki.cert.exists() && pki.key.exists() {
        return Ok(pki);
    }
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Switchboard agent CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Switchboard broker (agent links)");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let cert = params.signed_by(&key, &issuer)?;

    write(&dir.join(CA_KEY), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write(&pki.key, key.serialize_pem().as_bytes(), 0o600)?;
    write(&pki.cert, cert.pem().as_bytes(), 0o644)?;
    // The CA certificate last: its presence means the set is complete.
    write(&pki.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    tracing::info!(ca = %pki.ca_cert.display(), names = ?names, "made a CA and a certificate for agent links; copy the CA certificate to each agent");
    Ok(pki)
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    switchboard_auth::secret::write_atomically(path, data, mode).map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn makes_a_ca_once_and_keeps_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let names = default_names(&["broker.example.org".into()]);
        let a = ensure(dir.path(), &names).unwrap();
        let first = std::fs::read(&a.ca_cert).unwrap();
        let b = ensure(dir.path(), &names).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            std::fs::read(&b.ca_cert).unwrap(),
            first,
            "kept, not remade"
        );
        for key in [dir.path().join(CA_KEY), a.key.clone()] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        // The listener accepts it.
        crate::tls::server_config(&a.cert, &a.key).unwrap();
    }
}
