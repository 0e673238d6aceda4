//! The stand-in IPVS kernel for tests of the real `ipvsadm` binary on machines without IPVS.
//!
//! `ipvsadm_fake_kernel.c` (next to this file) overrides the libnl calls ipvsadm's libipvs makes
//! and answers them from a state file, as Linux 6.1's `ip_vs_ctl.c` would. It is compiled here
//! into a shared object that tests load into ipvsadm with `LD_PRELOAD`, naming the state file in
//! `$FAKE_IPVS_STATE`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The installed ipvsadm binary: on `$PATH`, or in `/usr/sbin` or `/sbin`.
pub fn ipvsadm_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d: PathBuf| d.join("ipvsadm"))
        .find(|p| p.is_file())
}

/// Compiles the stand-in kernel into the shared object `so` with `$CC` (default `cc`).
pub fn build_fake_kernel(so: &Path) -> Result<(), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ipvsadm_fake_kernel.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(so)
        .arg(&src)
        .output()
        .map_err(|e| format!("no C compiler ({cc}): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "building the stand-in kernel failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
