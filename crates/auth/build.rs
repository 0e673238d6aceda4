//! Lets the PAM binding link on a machine without `libpam0g-dev`.
//!
//! `libpam-sys` asks the linker for `-lpam`, which needs the development symlink `libpam.so`.
//! Debian installs only the runtime `libpam.so.0` by default (every system has it: login, sshd
//! and sudo use it). When the symlink is missing, this script makes one in `OUT_DIR` pointing at
//! the runtime library and adds that directory to the link search path, so `cargo build` works on
//! a fresh machine with only the Rust toolchain. The binary then loads `libpam.so.0` as usual.

use std::path::{Path, PathBuf};

const DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if DIRS.iter().any(|d| Path::new(d).join("libpam.so").exists()) {
        return;
    }
    let Some(runtime) = DIRS
        .iter()
        .map(|d| Path::new(d).join("libpam.so.0"))
        .find(|p| p.exists())
    else {
        println!(
            "cargo:warning=libpam.so.0 not found: install libpam0g (Debian) or pam (other systems)"
        );
        return;
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let link = out.join("libpam.so");
    let _ = std::fs::remove_file(&link);
    if let Err(e) = std::os::unix::fs::symlink(&runtime, &link) {
        println!("cargo:warning=cannot link {}: {e}", link.display());
        return;
    }
    println!("cargo:rustc-link-search=native={}", out.display());
}
