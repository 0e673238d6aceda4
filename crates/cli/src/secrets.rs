//! Secrets and files of secrets: `switchboard passwd`, the agent's credential table of
//! `authkeys`, and files written 0600 from the start.

use crate::{AuthkeysOp, runtime};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::ExitCode;

pub(crate) fn passwd(file: &Path, user: &str) -> Result<ExitCode> {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {user}: "))?;
        let second = rpassword::prompt_password("Again: ")?;
        if first != second {
            eprintln!("switchboard: the passwords differ; nothing changed");
            return Ok(ExitCode::from(1));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    match switchboard_auth::file::set_password(file, user, &password) {
        Ok(added) => {
            eprintln!(
                "{} {user:?} in {}",
                if added {
                    "added"
                } else {
                    "changed the password of"
                },
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("switchboard: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `NAME CREDENTIAL` lines for simulated hosts; exactly the first `n` simulated names.
pub(crate) fn read_credential_table(
    path: &Path,
    n: usize,
) -> Result<Vec<switchboard_agent::sim::SimHost>, String> {
    let text = switchboard_agent::config::read_private(path)?;
    let mut table = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, cred)) = line.split_once(char::is_whitespace) else {
            return Err(format!(
                "{}: line {}: expected `NAME CREDENTIAL`",
                path.display(),
                i + 1
            ));
        };
        table.insert(name.to_owned(), cred.trim().to_owned());
    }
    (0..n)
        .map(|i| {
            let name = switchboard_agent::sim::host_name(i);
            match table.remove(&name) {
                Some(credential) => Ok(switchboard_agent::sim::SimHost { name, credential }),
                None => Err(format!("{}: no credential for {name}", path.display())),
            }
        })
        .collect()
}

pub(crate) fn authkeys(op: AuthkeysOp) -> Result<ExitCode> {
    use std::io::Read;
    let mut key = String::new();
    if !matches!(op, AuthkeysOp::Sweep) {
        std::io::stdin()
            .take(16 * 1024)
            .read_to_string(&mut key)
            .context("reading the key from standard input")?;
    }
    let key = key.lines().next().unwrap_or_default().trim().to_owned();
    let user = std::env::var("USER").context("USER is not set")?;
    let op = match op {
        AuthkeysOp::Add { expires_at_ms } => {
            switchboard_agent::authkeys::KeyOp::Add { key, expires_at_ms }
        }
        AuthkeysOp::Remove => switchboard_agent::authkeys::KeyOp::Remove { key },
        AuthkeysOp::Sweep => switchboard_agent::authkeys::KeyOp::Sweep,
    };
    let done = runtime()?.block_on(switchboard_agent::authkeys::apply_local(&user, op))?;
    println!("{done}");
    Ok(ExitCode::SUCCESS)
}

/// Writes a secret file (0600) whole or not at all: a crash never leaves it empty.
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<()> {
    switchboard_auth::secret::write_atomically(path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}
