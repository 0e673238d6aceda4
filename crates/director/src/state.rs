//! Runtime state: the weights and drains set with `switchboard ctl`, kept apart from the
//! configuration file so that the file stays what the operator wrote, and so that they survive a
//! restart or a reload.
//!
//! The file is JSON, `{"version": 1, "services": {"ssh": {"10.0.1.11:22": {"weight": 50,
//! "drain": true}}}}`, written whole to a temporary file, flushed and renamed over the old one
//! after every change: a crash leaves either the old or the new state, never half of one. An
//! override for a backend the configuration no longer has is kept (it applies again if the backend
//! comes back) until `undrain`/`weight … reset` clears it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest state file read.
const MAX_FILE: u64 = 16 << 20;

/// What was set at runtime for one backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// Weight set with `ctl weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Drained with `ctl drain`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

impl Override {
    fn is_empty(&self) -> bool {
        self.weight.is_none() && !self.drain
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    services: BTreeMap<String, BTreeMap<String, Override>>,
}

/// The runtime state and where it is kept.
#[derive(Debug)]
pub struct RuntimeState {
    path: PathBuf,
    services: BTreeMap<String, BTreeMap<String, Override>>,
}

impl RuntimeState {
    /// Reads the state file; a missing file is an empty state, an unreadable one an error (the
    /// director will not start and silently forget drains).
    pub fn load(path: &Path) -> Result<RuntimeState, String> {
        let services = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("state file {}: {e}", path.display())),
            Ok(m) if m.len() > MAX_FILE => {
                return Err(format!(
                    "state file {}: larger than {MAX_FILE} bytes",
                    path.display()
                ));
            }
            Ok(_) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("state file {}: {e}", path.display()))?;
                let f: File = serde_json::from_str(&text).map_err(|e| {
                    format!(
                        "state file {}: {e} (move it away to start without the runtime weights and drains it holds)",
                        path.display()
                    )
                })?;
                f.services
            }
        };
        Ok(RuntimeState {
            path: path.to_owned(),
            services,
        })
    }

    /// The override of `backend` in `service`.
    pub fn get(&self, service: &str, backend: &str) -> Override {
        self.services
            .get(service)
            .and_then(|m| m.get(backend))
            .cloned()
            .unwrap_or_default()
    }

    /// Changes one override and saves the file; on a failed save nothing changes.
    pub fn update(
        &mut self,
        service: &str,
        backend: &str,
        f: impl FnOnce(&mut Override),
    ) -> Result<Override, String> {
        let mut next = self.services.clone();
        let entry = next
            .entry(service.to_owned())
            .or_default()
            .entry(backend.to_owned())
            .or_default();
        f(entry);
        let result = entry.clone();
        if result.is_empty()
            && let Some(m) = next.get_mut(service)
        {
            m.remove(backend);
            if m.is_empty() {
                next.remove(service);
            }
        }
        save(&self.path, &next)?;
        self.services = next;
        Ok(result)
    }
}

fn save(
    path: &Path,
    services: &BTreeMap<String, BTreeMap<String, Override>>,
) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot save the state file {}: {e}", path.display());
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file = File {
        version: 1,
        services: services.clone(),
    };
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.write_all(b"\n").map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn overrides_survive_a_reload_and_empty_ones_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = RuntimeState::load(&path).unwrap();
        s.update("ssh", "127.0.0.1:22", |o| o.drain = true).unwrap();
        s.update("ssh", "127.0.0.2:22", |o| o.weight = Some(5))
            .unwrap();
        let again = RuntimeState::load(&path).unwrap();
        assert!(again.get("ssh", "127.0.0.1:22").drain);
        assert_eq!(again.get("ssh", "127.0.0.2:22").weight, Some(5));
        s.update("ssh", "127.0.0.1:22", |o| o.drain = false)
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("127.0.0.1:22"), "{text}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = RuntimeState::load(&path).unwrap_err();
        assert!(e.contains("move it away"), "{e}");
    }
}
