//! `switchboard ctl`: the operator console on the broker's or the director's management socket.
//!
//! With a command it runs it once and prints the daemon's text reply (aligned tables), exiting
//! non-zero on an error. Without one it is an interactive monitor with line editing, history
//! (`~/.switchboard_ctl_history`) and completion of commands, host, user and pool names.

use anyhow::{Context, Result};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Editor, Helper, Highlighter, Hinter, Validator};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchboard_proto::mgmt::{COMMANDS, DIRECTOR_COMMANDS};

/// Exit status when the daemon cannot be reached (sysexits EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// A reply: its lines, and whether it was an error.
struct Reply {
    lines: Vec<String>,
    error: bool,
}

impl Conn {
    fn open(socket: &Path) -> Result<Conn, String> {
        let s = UnixStream::connect(socket).map_err(|e| {
            format!(
                "cannot reach the management socket {}: {e} (is the broker or director running, and are you root or in its group?)",
                socket.display()
            )
        })?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Conn {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// Sends a line and reads a verbose reply (up to the line holding only `.`).
    fn text(&mut self, line: &str) -> Result<Reply, String> {
        writeln!(self.writer, "{line}")
            .map_err(|e| format!("the daemon closed the connection: {e}"))?;
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            let n = self.reader.read_line(&mut l).map_err(|e| e.to_string())?;
            if n == 0 {
                // Closed without the terminator: a refusal (one JSON line) or a broker going away.
                let msg = lines
                    .first()
                    .and_then(|l: &String| serde_json::from_str::<serde_json::Value>(l).ok())
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "the daemon closed the connection".to_owned());
                return Err(msg);
            }
            let l = l.trim_end_matches(['\n', '\r']);
            if l == "." {
                break;
            }
            lines.push(if l == ".." {
                ".".to_owned()
            } else {
                l.to_owned()
            });
        }
        let error = lines.first().is_some_and(|l| l.starts_with("error: "));
        if let Some(first) = lines.first_mut()
            && let Some(rest) = first.strip_prefix("error: ")
        {
            *first = rest.to_owned();
        }
        Ok(Reply { lines, error })
    }

    /// Sends a line in JSON mode and returns the `data` of a successful reply.
    fn json(&mut self, line: &str) -> Option<serde_json::Value> {
        writeln!(self.writer, "{line}").ok()?;
        let mut l = String::new();
        self.reader.read_line(&mut l).ok()?;
        let v: serde_json::Value = serde_json::from_str(&l).ok()?;
        (v["ok"] == true).then(|| v["data"].clone())
    }
}

/// Runs `switchboard ctl`.
pub fn run(socket: &Path, command: &[String]) -> Result<ExitCode> {
    let mut conn = match Conn::open(socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard ctl: {e}");
            return Ok(ExitCode::from(EX_UNAVAILABLE));
        }
    };
    if let Err(e) = conn.text("verbose on") {
        eprintln!("switchboard ctl: {e}");
        return Ok(ExitCode::from(EX_UNAVAILABLE));
    }
    if command.iter().any(|a| a.contains(['\n', '\r'])) {
        eprintln!("switchboard ctl: arguments may not contain line breaks");
        return Ok(ExitCode::FAILURE);
    }
    if !command.is_empty() {
        return Ok(match conn.text(&command.join(" ")) {
            Ok(r) if !r.error => {
                for l in r.lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Ok(r) => {
                for l in r.lines {
                    eprintln!("{l}");
                }
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("switchboard ctl: {e}");
                ExitCode::FAILURE
            }
        });
    }
    interactive(socket, conn)
}

/// Names offered for completion.
#[derive(Default)]
struct Names {
    hosts: Vec<String>,
    users: Vec<String>,
    pools: Vec<String>,
    /// The socket is a director's.
    director: bool,
    /// Director: service names and their backends.
    services: Vec<(String, Vec<String>)>,
}

#[derive(Helper, Hinter, Highlighter, Validator)]
struct Complete {
    names: Names,
}

const HOST_COMMANDS: &[&str] = &[
    "server",
    "offlineserver",
    "onlineserver",
    "drain",
    "undrain",
    "weight",
    "enroll",
    "revoke",
];
const USER_COMMANDS: &[&str] = &["user", "abortuser", "shutdownuser", "logoffuser", "explain"];

impl Completer for Complete {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &before[start..];
        let words: Vec<&str> = before[..start].split_whitespace().collect();
        let pick = |items: &mut dyn Iterator<Item = &str>| -> Vec<Pair> {
            items
                .filter(|c| c.starts_with(word))
                .map(|c| Pair {
                    display: c.to_owned(),
                    replacement: if c.ends_with('=') {
                        c.to_owned()
                    } else {
                        format!("{c} ")
                    },
                })
                .collect()
        };
        if self.names.director {
            let service_names = || self.names.services.iter().map(|(n, _)| n.as_str());
            let candidates = match words.as_slice() {
                [] | ["help"] => pick(&mut DIRECTOR_COMMANDS.iter().map(|(n, _, _)| *n)),
                [cmd] if ["services", "stats", "drain", "undrain", "weight"].contains(cmd) => {
                    pick(&mut service_names())
                }
                [cmd, svc] if ["drain", "undrain", "weight"].contains(cmd) => pick(
                    &mut self
                        .names
                        .services
                        .iter()
                        .filter(|(n, _)| n == svc)
                        .flat_map(|(_, b)| b.iter().map(String::as_str)),
                ),
                ["weight", _, _] => pick(&mut ["reset"].into_iter()),
                _ => Vec::new(),
            };
            return Ok((start, candidates));
        }
        let candidates = match words.as_slice() {
            [] => pick(&mut COMMANDS.iter().map(|(n, _, _)| *n)),
            [cmd] if HOST_COMMANDS.contains(cmd) => {
                pick(&mut self.names.hosts.iter().map(String::as_str))
            }
            [cmd] if USER_COMMANDS.contains(cmd) => {
                pick(&mut self.names.users.iter().map(String::as_str))
            }
            ["explain", _] => pick(&mut self.names.pools.iter().map(String::as_str)),
            ["help"] => pick(&mut COMMANDS.iter().map(|(n, _, _)| *n)),
            ["drain", _] => pick(&mut ["--then-offline"].into_iter()),
            ["sessions", ..] => {
                let mut all: Vec<String> = ["user=", "host=", "pool=", "state="]
                    .map(str::to_owned)
                    .to_vec();
                all.extend(self.names.hosts.iter().map(|h| format!("host={h}")));
                all.extend(self.names.users.iter().map(|u| format!("user={u}")));
                all.extend(self.names.pools.iter().map(|p| format!("pool={p}")));
                all.extend(
                    ["starting", "running", "disconnected", "ending", "unknown"]
                        .iter()
                        .map(|s| format!("state={s}")),
                );
                pick(&mut all.iter().map(String::as_str))
            }
            _ => Vec::new(),
        };
        Ok((start, candidates))
    }
}

fn refresh(socket: &Path) -> Names {
    let Ok(mut c) = Conn::open(socket) else {
        return Names::default();
    };
    let list = |v: Option<serde_json::Value>, key: &str| -> Vec<String> {
        v.and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x[key].as_str().map(str::to_owned))
            .collect()
    };
    if c.json("hello").is_some_and(|h| h["director"] == true) {
        let services = c
            .json("services")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| {
                let name = s["name"].as_str()?.to_owned();
                let backends = list(Some(s["backends"].clone()), "address");
                Some((name, backends))
            })
            .collect();
        return Names {
            director: true,
            services,
            ..Names::default()
        };
    }
    let hosts = c.json("servers");
    let pools: Vec<String> = hosts
        .as_ref()
        .and_then(|h| h.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .flat_map(|h| {
            h["pools"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
        })
        .collect();
    let mut pools = pools;
    pools.sort();
    pools.dedup();
    Names {
        hosts: list(hosts, "name"),
        users: list(c.json("users"), "user"),
        pools,
        ..Names::default()
    }
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".switchboard_ctl_history"))
}

fn interactive(socket: &Path, mut conn: Conn) -> Result<ExitCode> {
    let mut rl: Editor<Complete, DefaultHistory> =
        Editor::new().context("cannot start line editing")?;
    rl.set_helper(Some(Complete {
        names: refresh(socket),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    if let Ok(r) = conn.text("hello") {
        for l in r.lines {
            println!("{l}");
        }
    }
    println!("Type `help` for the commands, Tab to complete, Ctrl-D to leave.");
    loop {
        match rl.readline("switchboard> ") {
            Ok(line) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let _ = rl.add_history_entry(line);
                if matches!(line, "quit" | "exit") {
                    break;
                }
                match conn.text(line) {
                    Ok(r) => {
                        for (i, l) in r.lines.iter().enumerate() {
                            if r.error && i == 0 {
                                println!("error: {l}");
                            } else {
                                println!("{l}");
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("switchboard ctl: {e}");
                        break;
                    }
                }
                if let Some(h) = rl.helper_mut() {
                    h.names = refresh(socket);
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("switchboard ctl: {e}");
                break;
            }
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}
