//! The binary's command line, run as a user runs it.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::Command;

fn switchboard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .output()
        .expect("run switchboard")
}

#[test]
fn help_lists_every_subcommand() {
    let out = switchboard(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["up", "broker", "agent", "director", "ctl"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(sub)),
            "--help does not list {sub}:\n{text}"
        );
    }
}

#[test]
fn unfinished_subcommands_say_so_and_fail() {
    for sub in ["agent", "director", "ctl"] {
        let out = switchboard(&[sub]);
        assert_eq!(out.status.code(), Some(69), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not available in this build yet"),
            "{sub}: {err}"
        );
    }
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = switchboard(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}
