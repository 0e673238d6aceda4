#![allow(clippy::unwrap_used)]
//! Session sources: parsers on outputs captured from the real programs (see
//! tests/fixtures/README.md), whole sources against stand-in programs, the `command` source
//! end to end with tests/fixtures/site-sessions.sh, and the command runner's limits.

use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchboard_agent::sources::{
    self, RunLimits, SessionAct, Source, SourceConfig, SourceError, command, logind, run, x2go,
    xpra,
};
use switchboard_core::model::{ReportedSession, ReportedState};
use tokio::time::Instant;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap()
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn session(id: &str, user: &str, state: ReportedState, idle: Option<u64>) -> ReportedSession {
    ReportedSession {
        backend_id: s(id),
        user: s(user),
        state,
        idle_secs: idle,
        info: None,
    }
}

/// `s` with its `info`: the one session line of fixture `name` (X2Go hands it to clients).
fn with_info(s: ReportedSession, name: &str) -> ReportedSession {
    let text = fixture(name);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap();
    ReportedSession {
        info: Some(line.to_owned()),
        ..s
    }
}

/// Writes an executable script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.to_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    #[serde(default)]
    source: Vec<SourceConfig>,
}

fn parse_config(text: &str) -> Result<Vec<SourceConfig>, String> {
    toml::from_str::<AgentFile>(text)
        .map(|f| f.source)
        .map_err(|e| e.to_string())
}

#[test]
fn config_defaults_for_every_kind() {
    let cfg = parse_config(
        r#"
        [[source]]
        kind = "x2go"
        [[source]]
        kind = "logind"
        [[source]]
        kind = "xpra"
        [[source]]
        kind = "command"
        list = ["/usr/local/lib/site/sessions", "list"]
        "#,
    )
    .unwrap();
    assert_eq!(cfg.len(), 4);
    assert_eq!(
        cfg[0],
        SourceConfig::X2go {
            list_command: vec![
                s("/usr/bin/sudo"),
                s("-n"),
                s("/usr/sbin/x2golistsessions_root")
            ],
            sudo: s("/usr/bin/sudo"),
            terminate_command: s("/usr/bin/x2goterminate-session"),
            suspend_command: s("/usr/bin/x2gosuspend-session"),
            pkill: s("/usr/bin/pkill"),
        }
    );
    assert_eq!(
        cfg[1],
        SourceConfig::Logind {
            loginctl: s("/usr/bin/loginctl"),
            session_classes: vec![s("user")],
            session_types: vec![],
            require_seat_or_remote: true,
        }
    );
    assert_eq!(
        cfg[2],
        SourceConfig::Xpra {
            xpra: s("/usr/bin/xpra"),
            sudo: s("/usr/bin/sudo"),
            pkill: s("/usr/bin/pkill"),
            users: None,
            runtime_dir: s("/run/user"),
            getent: s("/usr/bin/getent"),
        }
    );
    assert_eq!(
        cfg[3],
        SourceConfig::Command {
            list: vec![s("/usr/local/lib/site/sessions"), s("list")],
            terminate: None,
            kill: None,
            disconnect: None,
        }
    );
    let kinds: Vec<&str> = cfg.iter().map(SourceConfig::kind).collect();
    assert_eq!(kinds, ["x2go", "logind", "xpra", "command"]);
    for c in &cfg {
        c.validate().unwrap();
        assert_eq!(Source::new(c.clone()).kind(), c.kind());
    }
}

#[test]
fn config_overrides() {
    let cfg = parse_config(
        r#"
        [[source]]
        kind = "x2go"
        list_command = ["/usr/sbin/x2golistsessions_root"]
        terminate_command = "/opt/x2go/bin/x2goterminate-session"
        [[source]]
        kind = "logind"
        loginctl = "/bin/loginctl"
        session_classes = ["user", "background"]
        session_types = ["x11", "wayland"]
        require_seat_or_remote = false
        [[source]]
        kind = "xpra"
        users = ["alice", "bob"]
        [[source]]
        kind = "command"
        list = ["/site/sessions", "list"]
        terminate = ["/site/sessions", "end"]
        kill = ["/site/sessions", "kill"]
        disconnect = ["/site/sessions", "detach"]
        "#,
    )
    .unwrap();
    let SourceConfig::X2go {
        list_command,
        terminate_command,
        suspend_command,
        ..
    } = &cfg[0]
    else {
        panic!("{:?}", cfg[0]);
    };
    assert_eq!(list_command, &[s("/usr/sbin/x2golistsessions_root")]);
    assert_eq!(terminate_command, "/opt/x2go/bin/x2goterminate-session");
    assert_eq!(suspend_command, "/usr/bin/x2gosuspend-session");
    assert!(matches!(
        &cfg[1],
        SourceConfig::Logind { require_seat_or_remote: false, session_types, .. } if session_types.len() == 2
    ));
    assert!(matches!(&cfg[2], SourceConfig::Xpra { users: Some(u), .. } if u.len() == 2));
    assert!(
        matches!(&cfg[3], SourceConfig::Command { disconnect: Some(d), .. } if d[1] == "detach")
    );
}

#[test]
fn config_errors() {
    let unknown_field = parse_config("[[source]]\nkind = \"x2go\"\nlist = [\"x\"]\n").unwrap_err();
    assert!(unknown_field.contains("unknown field"), "{unknown_field}");
    let unknown_kind = parse_config("[[source]]\nkind = \"vnc\"\n").unwrap_err();
    assert!(unknown_kind.contains("vnc"), "{unknown_kind}");
    let no_kind = parse_config("[[source]]\nlist = [\"x\"]\n").unwrap_err();
    assert!(no_kind.contains("kind"), "{no_kind}");
    let no_list = parse_config("[[source]]\nkind = \"command\"\n").unwrap_err();
    assert!(no_list.contains("list"), "{no_list}");

    let empty_list = parse_config("[[source]]\nkind = \"command\"\nlist = []\n").unwrap();
    assert!(empty_list[0].validate().unwrap_err().contains("list"));
    let empty_kill =
        parse_config("[[source]]\nkind = \"command\"\nlist = [\"x\"]\nkill = [\"\"]\n").unwrap();
    assert!(empty_kill[0].validate().unwrap_err().contains("kill"));
    let bad_user = parse_config("[[source]]\nkind = \"xpra\"\nusers = [\"-rf\"]\n").unwrap();
    assert!(bad_user[0].validate().is_err());
    let no_classes = parse_config("[[source]]\nkind = \"logind\"\nsession_classes = []\n").unwrap();
    assert!(no_classes[0].validate().is_err());
}

// ---------------------------------------------------------------------------------------------
// x2go

#[test]
fn x2go_reference_line() {
    let got = x2go::parse_list(
        "x2golistsessions",
        &fixture("x2golistsessions-reference.txt"),
    )
    .unwrap();
    assert_eq!(
        got,
        vec![with_info(
            session(
                "x2gotest-50-1795303252_stDXFCE_dp24",
                "x2gotest",
                ReportedState::Running,
                None
            ),
            "x2golistsessions-reference.txt"
        )]
    );
}

#[test]
fn x2go_captured_running_and_suspended() {
    let running = x2go::parse_list("l", &fixture("x2golistsessions-running.txt")).unwrap();
    assert_eq!(
        running,
        vec![with_info(
            session(
                "x2gotest-50-1795316575_stDXTERM_dp24",
                "x2gotest",
                ReportedState::Running,
                None
            ),
            "x2golistsessions-running.txt"
        )]
    );
    let suspended = x2go::parse_list("l", &fixture("x2golistsessions-suspended.txt")).unwrap();
    assert_eq!(
        suspended,
        vec![with_info(
            session(
                "x2gotest-50-1795317208_stDXTERM_dp24",
                "x2gotest",
                ReportedState::Disconnected,
                None
            ),
            "x2golistsessions-suspended.txt"
        )]
    );
    // R, F (finished: skipped), S.
    let mixed = x2go::parse_list("l", &fixture("x2golistsessions-mixed.txt")).unwrap();
    assert_eq!(mixed.len(), 2);
    assert_eq!(mixed[0].state, ReportedState::Running);
    assert_eq!(mixed[1].state, ReportedState::Disconnected);
}

#[test]
fn x2go_variants() {
    let line = fixture("x2golistsessions-reference.txt");
    let line = line.trim();
    // Terminating and unknown states are skipped; empty lines and CRLF are fine.
    let t = line.replace("|vm|R|", "|vm|T|");
    let q = line.replace("|vm|R|", "|vm|?|");
    let s_line = line.replace("|vm|R|", "|vm|S|");
    let text = format!("\n{t}\n{q}\r\n{s_line}\r\n\n");
    let got = x2go::parse_list("l", &text).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].state, ReportedState::Disconnected);
    // No sessions: empty output.
    assert!(x2go::parse_list("l", "").unwrap().is_empty());
}

#[test]
fn x2go_malformed_lines_name_the_line() {
    let good = fixture("x2golistsessions-reference.txt");
    let e =
        x2go::parse_list("x2golistsessions_root", &format!("{good}17450|short|R\n")).unwrap_err();
    assert!(matches!(e, SourceError::Parse { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("line 2"), "{e}");
    let bad_id = good.replace("x2gotest-50-1795303252_stDXFCE_dp24", "x;rm -rf ~");
    assert!(x2go::parse_list("l", &bad_id).is_err());
    let bad_user = good.replace("|x2gotest|2|", "|-x|2|");
    assert!(x2go::parse_list("l", &bad_user).is_err());
}

#[test]
fn x2go_action_argvs() {
    let cmds = x2go::Commands {
        sudo: "/usr/bin/sudo",
        terminate: "/usr/bin/x2goterminate-session",
        suspend: "/usr/bin/x2gosuspend-session",
        pkill: "/usr/bin/pkill",
    };
    let sess = session(
        "alice-50-1795303252_stDXFCE_dp24",
        "alice",
        ReportedState::Running,
        None,
    );
    let t = x2go::act_argvs(&cmds, SessionAct::Terminate, &sess).unwrap();
    assert_eq!(
        t,
        vec![vec![
            s("/usr/bin/sudo"),
            s("-n"),
            s("-u"),
            s("alice"),
            s("--"),
            s("/usr/bin/x2goterminate-session"),
            s("alice-50-1795303252_stDXFCE_dp24"),
        ]]
    );
    let d = x2go::act_argvs(&cmds, SessionAct::Disconnect, &sess).unwrap();
    assert_eq!(d[0][5], "/usr/bin/x2gosuspend-session");
    let k = x2go::act_argvs(&cmds, SessionAct::Kill, &sess).unwrap();
    assert_eq!(k.len(), 2);
    assert_eq!(k[0], t[0]);
    assert_eq!(
        k[1][5..],
        [
            s("/usr/bin/pkill"),
            s("-KILL"),
            s("-u"),
            s("alice"),
            s("-f"),
            s("--"),
            s("alice-50-1795303252_stDXFCE_dp24")
        ]
    );
    for (id, user) in [
        ("-rf", "alice"),
        ("a b", "alice"),
        ("ok", "root"),
        ("ok", "#0"),
        ("ok", "-u"),
        ("ok", ""),
    ] {
        let bad = session(id, user, ReportedState::Running, None);
        assert!(
            x2go::act_argvs(&cmds, SessionAct::Terminate, &bad).is_err(),
            "{id:?} {user:?}"
        );
    }
}

/// A stand-in for sudo: records its arguments, checks the `-n -u USER --` shape, runs the rest.
const FAKE_SUDO: &str = r#"#!/bin/sh
printf '%s\n' "$@" >> "$(dirname "$0")/sudo.log"
[ "$1" = "-n" ] && [ "$2" = "-u" ] && [ "$4" = "--" ] || { echo "bad sudo call: $*" >&2; exit 9; }
shift 4
exec "$@"
"#;

#[tokio::test]
async fn x2go_source_end_to_end_with_stand_ins() {
    let dir = tempfile::tempdir().unwrap();
    let sudo = script(dir.path(), "sudo", FAKE_SUDO);
    let log = dir.path().join("calls.log");
    let record = format!(
        "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> {}\n",
        log.display()
    );
    let terminate = script(dir.path(), "x2goterminate-session", &record);
    let suspend = script(dir.path(), "x2gosuspend-session", &record);
    // pkill exits 1 when nothing matched: the session was already gone.
    let pkill = script(dir.path(), "pkill", &format!("{record}exit 1\n"));
    let src = Source::new(SourceConfig::X2go {
        list_command: vec![
            s("cat"),
            fixtures()
                .join("x2golistsessions-mixed.txt")
                .to_str()
                .unwrap()
                .to_owned(),
        ],
        sudo,
        terminate_command: terminate,
        suspend_command: suspend,
        pkill,
    });
    let list = src.list().await.unwrap();
    assert_eq!(list.len(), 2);
    let msg = src.act(SessionAct::Disconnect, &list[0]).await.unwrap();
    assert!(msg.contains("suspended"), "{msg}");
    let msg = src.act(SessionAct::Kill, &list[1]).await.unwrap();
    assert!(msg.contains("no processes were left"), "{msg}");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls,
        "x2gosuspend-session x2gotest-50-1795316575_stDXTERM_dp24\n\
         x2goterminate-session x2gotest-50-1795317208_stDXTERM_dp24\n\
         pkill -KILL -u x2gotest -f -- x2gotest-50-1795317208_stDXTERM_dp24\n"
    );
}

// ---------------------------------------------------------------------------------------------
// logind

#[test]
fn logind_list_sessions_json_and_table() {
    let json = logind::parse_list_sessions("l", &fixture("loginctl-list-sessions.json")).unwrap();
    assert_eq!(json, ["1", "2", "5", "6"]);
    let table =
        logind::parse_list_sessions("l", &fixture("loginctl-list-sessions-table.txt")).unwrap();
    assert_eq!(table, json);
    assert!(logind::parse_list_sessions("l", "[]\n").unwrap().is_empty());
    assert!(
        logind::parse_list_sessions("l", "No sessions.\n")
            .unwrap()
            .is_empty()
    );
    assert!(logind::parse_list_sessions("l", "[{\"session\": 3}]").is_err());
    assert!(logind::parse_list_sessions("l", "[{\"session\": \"-1\"}]").is_err());
}

fn user_filter() -> (Vec<String>, Vec<String>) {
    (vec![s("user")], vec![])
}

#[test]
fn logind_show_session_captured() {
    let blocks = logind::parse_show_session(&fixture("loginctl-show-sessions.txt"));
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[0]["Name"], "sbxpra");
    assert_eq!(blocks[1]["IdleSinceHint"], "0");
    let (classes, types) = user_filter();
    let filter = logind::Filter {
        classes: &classes,
        types: &types,
        require_seat_or_remote: true,
    };
    let got = logind::sessions_from_blocks(&blocks, &filter, 1_795_317_200_000_000);
    assert_eq!(
        got,
        vec![
            session("1", "sbxpra", ReportedState::Running, None),
            session("2", "x2gotest", ReportedState::Running, None),
            session("5", "x2gotest", ReportedState::Running, None),
            session("6", "sbxpra", ReportedState::Running, None),
        ]
    );
    let ttys_only = [s("x11")];
    let filter = logind::Filter {
        classes: &classes,
        types: &ttys_only,
        require_seat_or_remote: true,
    };
    assert!(logind::sessions_from_blocks(&blocks, &filter, 0).is_empty());
}

#[test]
fn logind_idle_filter_and_states() {
    let text = "\
Id=3\nName=alice\nSeat=seat0\nRemote=no\nType=x11\nClass=user\nActive=no\nState=online\nIdleHint=yes\nIdleSinceHint=1000000000\n\n\
Id=c1\nName=lightdm\nSeat=seat0\nRemote=no\nType=x11\nClass=greeter\nActive=yes\nState=active\nIdleHint=no\nIdleSinceHint=0\n\n\
Id=7\nName=bob\nSeat=\nRemote=no\nType=unspecified\nClass=user\nActive=no\nState=online\nIdleHint=no\nIdleSinceHint=0\n\n\
Id=8\nName=carol\nSeat=\nRemote=yes\nType=tty\nClass=user\nActive=yes\nState=closing\nIdleHint=no\nIdleSinceHint=0\n\n\
Id=9\nName=dave\nSeat=\nRemote=yes\nType=tty\nClass=user\nActive=yes\nState=active\nIdleHint=yes\nIdleSinceHint=0\n";
    let blocks = logind::parse_show_session(text);
    assert_eq!(blocks.len(), 5);
    let classes = [s("user"), s("greeter")];
    let filter = logind::Filter {
        classes: &classes,
        types: &[],
        require_seat_or_remote: true,
    };
    let got = logind::sessions_from_blocks(&blocks, &filter, 1_090_500_000);
    assert_eq!(
        got,
        vec![
            // online on a seat (switched away): running, idle 90 s.
            session("3", "alice", ReportedState::Running, Some(90)),
            // greeter: never, even if listed; bob: no seat, not remote; carol: closing.
            session("9", "dave", ReportedState::Running, None),
        ]
    );
    let filter = logind::Filter {
        classes: &classes,
        types: &[],
        require_seat_or_remote: false,
    };
    let got = logind::sessions_from_blocks(&blocks, &filter, 1_090_500_000);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].user, "bob");
}

#[test]
fn logind_action_argvs() {
    assert_eq!(
        logind::act_argv("/usr/bin/loginctl", SessionAct::Terminate, "5").unwrap(),
        [
            "/usr/bin/loginctl",
            "--no-ask-password",
            "terminate-session",
            "--",
            "5"
        ]
    );
    assert_eq!(
        logind::act_argv("/usr/bin/loginctl", SessionAct::Kill, "c2").unwrap(),
        [
            "/usr/bin/loginctl",
            "--no-ask-password",
            "kill-session",
            "-s",
            "KILL",
            "--",
            "c2"
        ]
    );
    let e = logind::act_argv("/usr/bin/loginctl", SessionAct::Disconnect, "5").unwrap_err();
    assert!(matches!(e, SourceError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("cannot disconnect"), "{e}");
    assert!(logind::act_argv("/usr/bin/loginctl", SessionAct::Kill, "--all").is_err());
    assert!(logind::act_argv("/usr/bin/loginctl", SessionAct::Kill, "1 2").is_err());
}

#[tokio::test]
async fn logind_source_end_to_end_with_a_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    // A loginctl that answers from the captured outputs; session 6 "ended" between the two calls.
    let body = format!(
        r#"#!/bin/sh
echo "$*" >> "$(dirname "$0")/loginctl.log"
case "$1" in
  list-sessions) cat {list} ;;
  show-session)
    cat {show} | awk 'BEGIN{{RS="";ORS="\n\n"}} !/Id=6\n/'
    echo "Failed to get session path: No session '6' known" >&2
    exit 1 ;;
  --no-ask-password) exit 0 ;;
  *) exit 2 ;;
esac
"#,
        list = f.join("loginctl-list-sessions.json").display(),
        show = f.join("loginctl-show-sessions.txt").display(),
    );
    let loginctl = script(dir.path(), "loginctl", &body);
    let src = Source::new(SourceConfig::Logind {
        loginctl,
        session_classes: vec![s("user")],
        session_types: vec![],
        require_seat_or_remote: true,
    });
    let list = src.list().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s.backend_id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "5"]);
    let msg = src.act(SessionAct::Terminate, &list[0]).await.unwrap();
    assert!(msg.contains("terminated"), "{msg}");
    let e = src.act(SessionAct::Disconnect, &list[0]).await.unwrap_err();
    assert!(matches!(e, SourceError::Unsupported { .. }));
    let log = std::fs::read_to_string(dir.path().join("loginctl.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "list-sessions --no-legend --no-pager -o json");
    assert!(lines[1].starts_with("show-session --no-pager -p Id -p Name"));
    assert!(lines[1].ends_with("-- 1 2 5 6"), "{}", lines[1]);
    assert_eq!(lines[2], "--no-ask-password terminate-session -- 1");
}

// ---------------------------------------------------------------------------------------------
// xpra

#[test]
fn xpra_list_captured() {
    assert_eq!(xpra::parse_list(&fixture("xpra-list-user.txt")), [":100"]);
    assert!(xpra::parse_list(&fixture("xpra-list-none.txt")).is_empty());
    // A server killed with SIGKILL: its socket is UNKNOWN, then cleaned up.
    assert!(xpra::parse_list(&fixture("xpra-list-dead.txt")).is_empty());
    let mixed = "Found the following xpra sessions:\n/run/user/1000/xpra:\n\tLIVE session at :7\n\tDEAD session at :8\n\tUNKNOWN session at :9\n\tLIVE session at :bad\n";
    assert_eq!(xpra::parse_list(mixed), [":7"]);
}

#[test]
fn xpra_info_captured() {
    let attached = xpra::parse_info("info", &fixture("xpra-info-attached.txt")).unwrap();
    assert_eq!(
        attached,
        xpra::Attachment {
            clients: 1,
            idle_secs: Some(7),
        }
    );
    let detached = xpra::parse_info("info", &fixture("xpra-info-detached.txt")).unwrap();
    assert_eq!(
        detached,
        xpra::Attachment {
            clients: 0,
            idle_secs: None,
        }
    );
    // Several clients: numbered keys, the most recently active one counts.
    let two =
        "clients=2\nclient.0.idle_time=30\nclient.1.idle_time=4\nclient.1.window.1.idle_time=99\n";
    assert_eq!(
        xpra::parse_info("info", two).unwrap(),
        xpra::Attachment {
            clients: 2,
            idle_secs: Some(4),
        }
    );
    assert!(xpra::parse_info("info", "server.display=:100\n").is_err());
}

#[test]
fn xpra_action_argvs() {
    let sess = session(":100", "sbxpra", ReportedState::Running, None);
    let argv = |act| xpra::act_argv("sudo", "xpra", "pkill", act, &sess).unwrap();
    assert_eq!(
        argv(SessionAct::Terminate),
        ["sudo", "-n", "-u", "sbxpra", "--", "xpra", "stop", ":100"]
    );
    assert_eq!(
        argv(SessionAct::Disconnect)[5..],
        ["xpra", "detach", ":100"]
    );
    assert_eq!(
        argv(SessionAct::Kill)[5..],
        [
            "pkill",
            "-KILL",
            "-u",
            "sbxpra",
            "-f",
            "--",
            "[Xx]pra.* :100( |$)"
        ]
    );
    for bad in ["100", ":", ":1 --foo", ":1234567890", ":-1"] {
        let b = session(bad, "sbxpra", ReportedState::Running, None);
        assert!(xpra::act_argv("sudo", "xpra", "pkill", SessionAct::Terminate, &b).is_err());
    }
}

#[test]
fn xpra_kill_pattern_matches_the_real_processes() {
    // Command lines of the server and its X server as ps showed them for `xpra start :100`.
    let server = "/usr/bin/python3 /usr/bin/xpra start :100 --daemon=yes --mdns=no --pulseaudio=no";
    let xvfb = "Xvfb-for-Xpra-:100 +extension GLX +extension Composite -screen 0 5760x2560x24+32 -dpi 96 -nolisten tcp -noreset -auth /home/sbxpra/.Xauthority :100";
    let other = "Xvfb-for-Xpra-:1000 -nolisten tcp :1000";
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cmdlines");
    std::fs::write(&input, format!("{server}\n{xvfb}\n{other}\n")).unwrap();
    let out = std::process::Command::new("grep")
        .args(["-E", "--", "[Xx]pra.* :100( |$)"])
        .arg(&input)
        .output()
        .unwrap();
    let matched = String::from_utf8(out.stdout).unwrap();
    assert_eq!(matched, format!("{server}\n{xvfb}\n"));
}

#[tokio::test]
async fn xpra_source_end_to_end_with_stand_ins() {
    let dir = tempfile::tempdir().unwrap();
    let sudo = script(dir.path(), "sudo", FAKE_SUDO);
    let f = fixtures();
    let body = format!(
        r#"#!/bin/sh
case "$1 $2" in
  "list ") cat {list} ;;
  "info :100") cat {attached} ;;
  "stop :100") echo "server stopped" ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"#,
        list = f.join("xpra-list-user.txt").display(),
        attached = f.join("xpra-info-attached.txt").display(),
    );
    let xpra_bin = script(dir.path(), "xpra", &body);
    let src = Source::new(SourceConfig::Xpra {
        xpra: xpra_bin,
        sudo,
        pkill: s("/bin/false"),
        users: Some(vec![s("sbxpra")]),
        runtime_dir: s("/nonexistent"),
        getent: s("getent"),
    });
    let list = src.list().await.unwrap();
    assert_eq!(
        list,
        vec![session(":100", "sbxpra", ReportedState::Running, Some(7))]
    );
    let msg = src.act(SessionAct::Terminate, &list[0]).await.unwrap();
    assert!(msg.contains("stopped"), "{msg}");
    let sudo_log = std::fs::read_to_string(dir.path().join("sudo.log")).unwrap();
    assert!(sudo_log.starts_with("-n\n-u\nsbxpra\n--\n"), "{sudo_log}");
}

/// One user's `xpra list` fails (a hung home, a broken ~/.xpra): that user is skipped, counted
/// and named so that the agent keeps their last known sessions, and every other user's sessions
/// are still listed (one failing user used to fail the whole source).
#[tokio::test]
async fn one_users_failing_xpra_list_costs_that_user_only() {
    let dir = tempfile::tempdir().unwrap();
    // A sudo stand-in that tells the program whose it is running as.
    let sudo = script(
        dir.path(),
        "sudo",
        "#!/bin/sh\n[ \"$1\" = \"-n\" ] && [ \"$2\" = \"-u\" ] && [ \"$4\" = \"--\" ] || exit 9\n\
         SB_USER=\"$3\"; export SB_USER; shift 4\nexec \"$@\"\n",
    );
    let f = fixtures();
    let body = format!(
        r#"#!/bin/sh
if [ "$SB_USER" = broken ]; then echo "cannot access /home/broken/.xpra" >&2; exit 1; fi
case "$1 $2" in
  "list ") cat {list} ;;
  "info :100") cat {attached} ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"#,
        list = f.join("xpra-list-user.txt").display(),
        attached = f.join("xpra-info-attached.txt").display(),
    );
    let xpra_bin = script(dir.path(), "xpra", &body);
    let src = Source::new(SourceConfig::Xpra {
        xpra: xpra_bin,
        sudo,
        pkill: s("/bin/false"),
        users: Some(vec![s("broken"), s("sbxpra")]),
        runtime_dir: s("/nonexistent"),
        getent: s("getent"),
    });
    let listing = src.listing().await.unwrap();
    assert_eq!(
        listing.sessions,
        vec![session(":100", "sbxpra", ReportedState::Running, Some(7))]
    );
    assert_eq!(listing.skipped, 1);
    assert_eq!(listing.failed_users, ["broken"]);
}

#[tokio::test]
async fn xpra_runtime_dir_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run-user");
    for d in ["0", "999", "65534", "not-a-uid", "1000", "4242424"] {
        std::fs::create_dir_all(runtime.join(d)).unwrap();
    }
    // A getent that knows uid 1000 only (and says so with exit 2, as the real one does).
    let getent = script(
        dir.path(),
        "getent",
        "#!/bin/sh\n[ \"$*\" = \"passwd 1000 4242424\" ] || { echo \"args: $*\" >&2; exit 9; }\necho 'alice:x:1000:1000:Alice:/home/alice:/bin/bash'\nexit 2\n",
    );
    let src = Source::new(SourceConfig::Xpra {
        xpra: s("/bin/false"),
        sudo: script(
            dir.path(),
            "sudo",
            "#!/bin/sh\necho \"$3\" >> \"$(dirname \"$0\")/users\"\n",
        ),
        pkill: s("/bin/false"),
        users: None,
        runtime_dir: runtime.to_str().unwrap().to_owned(),
        getent,
    });
    assert!(src.list().await.unwrap().is_empty());
    let asked = std::fs::read_to_string(dir.path().join("users")).unwrap();
    assert_eq!(asked, "alice\n");
}

// ---------------------------------------------------------------------------------------------
// command source, end to end with site-sessions.sh

struct Site {
    _dir: tempfile::TempDir,
    state: PathBuf,
    script: String,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let script = fixtures()
            .join("site-sessions.sh")
            .to_str()
            .unwrap()
            .to_owned();
        Site {
            _dir: dir,
            state,
            script,
        }
    }

    fn argv(&self, cmd: &str) -> Vec<String> {
        vec![
            self.script.clone(),
            s("--state"),
            self.state.to_str().unwrap().to_owned(),
            s(cmd),
        ]
    }

    fn add(&self, id: &str, user: &str, state: &str, idle: &str) {
        let st = std::process::Command::new(&self.script)
            .env("SITE_SESSIONS_STATE", &self.state)
            .args(["add", id, user, state, idle])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn source(&self, with_actions: bool) -> Source {
        Source::new(SourceConfig::Command {
            list: self.argv("list"),
            terminate: with_actions.then(|| self.argv("terminate")),
            kill: with_actions.then(|| self.argv("kill")),
            disconnect: with_actions.then(|| self.argv("disconnect")),
        })
    }

    /// The arguments of the last invocation of the script.
    fn last_call(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.state.with_extension("log")).unwrap();
        let last = log.rsplit("--\n").next().unwrap();
        last.lines().map(str::to_owned).collect()
    }
}

#[tokio::test]
async fn command_source_lists_and_acts() {
    let site = Site::new();
    site.add("desk-1", "alice", "running", "12");
    site.add("desk-2", "bob", "disconnected", "");
    site.add("desk-3", "carol", "running", "");
    let src = site.source(true);
    assert_eq!(src.kind(), "command");
    let list = src.list().await.unwrap();
    assert_eq!(
        list,
        vec![
            session("desk-1", "alice", ReportedState::Running, Some(12)),
            session("desk-2", "bob", ReportedState::Disconnected, None),
            session("desk-3", "carol", ReportedState::Running, None),
        ]
    );

    src.act(SessionAct::Disconnect, &list[0]).await.unwrap();
    assert_eq!(site.last_call(), ["disconnect", "desk-1", "alice"]);
    let msg = src.act(SessionAct::Terminate, &list[1]).await.unwrap();
    assert_eq!(msg, "terminate: session desk-2 of bob ended");
    let msg = src.act(SessionAct::Kill, &list[2]).await.unwrap();
    assert_eq!(msg, "kill: session desk-3 of carol ended");
    assert_eq!(
        src.list().await.unwrap(),
        vec![session(
            "desk-1",
            "alice",
            ReportedState::Disconnected,
            Some(12)
        )]
    );

    // Terminating it again: the script's exit status and stderr are in the error.
    let e = src.act(SessionAct::Terminate, &list[1]).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, SourceError::Failed { .. }), "{text}");
    assert!(text.contains("site-sessions.sh"), "{text}");
    assert!(text.contains("exit status: 1"), "{text}");
    assert!(text.contains("no session desk-2 of user bob"), "{text}");
}

#[tokio::test]
async fn command_source_unconfigured_actions_are_unsupported() {
    let site = Site::new();
    site.add("d", "alice", "running", "");
    let src = site.source(false);
    let list = src.list().await.unwrap();
    for act in [
        SessionAct::Terminate,
        SessionAct::Kill,
        SessionAct::Disconnect,
    ] {
        let e = src.act(act, &list[0]).await.unwrap_err();
        assert!(matches!(e, SourceError::Unsupported { .. }), "{e}");
    }
}

#[tokio::test]
async fn command_source_passes_arguments_literally() {
    let site = Site::new();
    let marker = site.state.with_file_name("pwned");
    let id = format!(
        "a b;\"c' $(touch {}) `touch {}` | x & y",
        marker.display(),
        marker.display()
    );
    let user = format!("u ser;touch {} \\ '\"", marker.display());
    site.add(&id, &user, "running", "");
    let src = site.source(true);
    let list = src.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].backend_id, id);
    assert_eq!(list[0].user, user);
    src.act(SessionAct::Terminate, &list[0]).await.unwrap();
    assert_eq!(site.last_call(), [s("terminate"), id, user]);
    assert!(!marker.exists(), "a shell interpreted the arguments");
    assert!(src.list().await.unwrap().is_empty());
}

#[test]
fn command_list_parsing() {
    let ok = "{\"id\": \"x\", \"user\": \"u\", \"state\": \"running\", \"idle_secs\": 5, \"extra\": [1]}\n\n{\"id\": \"y\", \"user\": \"v\", \"state\": \"disconnected\"}\n";
    let got = command::parse_list("list", ok).unwrap();
    assert_eq!(
        got,
        vec![
            session("x", "u", ReportedState::Running, Some(5)),
            session("y", "v", ReportedState::Disconnected, None),
        ]
    );
    for (text, line) in [
        (
            "{\"id\": \"x\", \"user\": \"u\", \"state\": \"running\"}\nnot json\n",
            2,
        ),
        ("{\"id\": \"x\", \"user\": \"u\", \"state\": \"gone\"}\n", 1),
        ("{\"id\": \"x\", \"state\": \"running\"}\n", 1),
        (
            "\n\n{\"id\": \"\", \"user\": \"u\", \"state\": \"running\"}\n",
            3,
        ),
        (
            "{\"id\": \"x\\n\", \"user\": \"u\", \"state\": \"running\"}\n",
            1,
        ),
        (
            "{\"id\": \"x\", \"user\": \"u\", \"state\": \"running\", \"idle_secs\": -1}\n",
            1,
        ),
    ] {
        let e = command::parse_list("[\"site\" \"list\"]", text).unwrap_err();
        assert!(
            matches!(e, SourceError::Parse { line: l, .. } if l == line),
            "{text:?}: {e}"
        );
        assert!(e.to_string().contains(&format!("line {line}")), "{e}");
    }
    assert_eq!(
        command::act_argv(
            &[s("/x"), s("end")],
            &session("i d", "u;", ReportedState::Running, None)
        ),
        ["/x", "end", "i d", "u;"]
    );
}

/// A malformed line costs that line only: the good rows are reported and the bad one counted
/// (the strict parser still names it: `command_list_parsing`).
#[tokio::test]
async fn command_source_skips_a_malformed_line_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let lister = script(
        dir.path(),
        "lister",
        "#!/bin/sh\necho '{\"id\": \"a\", \"user\": \"u\", \"state\": \"running\"}'\necho 'oops'\n",
    );
    let src = Source::new(SourceConfig::Command {
        list: vec![lister],
        terminate: None,
        kill: None,
        disconnect: None,
    });
    let listing = src.listing().await.unwrap();
    assert_eq!(listing.skipped, 1);
    assert_eq!(listing.sessions.len(), 1);
    assert_eq!(listing.sessions[0].backend_id, "a");
    assert!(listing.failed_users.is_empty());
}

// ---------------------------------------------------------------------------------------------
// The runner

fn sh(script: &str) -> Vec<String> {
    vec![s("/bin/sh"), s("-c"), s(script)]
}

#[tokio::test]
async fn run_captures_output_status_and_stderr_tail() {
    let out = run(&sh("echo out; echo err >&2; exit 3"), &RunLimits::default())
        .await
        .unwrap();
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr_tail, "err");
    assert_eq!(out.status.code(), Some(3));
    // Only the end of a long stderr is kept.
    let out = run(
        &sh("i=0; while [ $i -lt 2000 ]; do echo line-$i >&2; i=$((i+1)); done; echo last >&2"),
        &RunLimits::default(),
    )
    .await
    .unwrap();
    assert!(out.stderr_tail.ends_with("last"));
    assert!(out.stderr_tail.len() <= sources::STDERR_TAIL);
    // stdin is /dev/null: cat ends at once.
    let out = run(&[s("cat")], &RunLimits::default()).await.unwrap();
    assert_eq!(out.stdout, "");
    assert!(out.status.success());
}

#[tokio::test]
async fn run_refuses_oversize_output() {
    let limits = RunLimits {
        timeout: Duration::from_secs(10),
        max_output: 1024 * 1024,
    };
    let start = Instant::now();
    // `yes` would write forever: the cap must stop it, not the timeout.
    let e = run(&[s("yes"), s("0123456789")], &limits)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            SourceError::OutputTooLarge {
                limit: 1_048_576,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("\"yes\""), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // Exactly at the limit is fine.
    let exact = run(&sh("head -c 1048576 /dev/zero"), &limits)
        .await
        .unwrap();
    assert_eq!(exact.stdout.len(), 1024 * 1024);
    // The default limit is 4 MiB.
    let e = run(&sh("head -c 4194305 /dev/zero"), &RunLimits::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            SourceError::OutputTooLarge {
                limit: 4_194_304,
                ..
            }
        ),
        "{e}"
    );
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

fn assert_gone(pid: u32) {
    // Dead, or a zombie waiting for a parent that is not us: in either case not running.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match process_state(pid) {
            None | Some('Z') | Some('X') => return,
            Some(st) if Instant::now() > deadline => panic!("pid {pid} still alive ({st})"),
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[tokio::test]
async fn run_times_out_and_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let child_pid = dir.path().join("child");
    let grandchild_pid = dir.path().join("grandchild");
    let script = format!(
        "echo $$ > {c}; sleep 60 & echo $! > {g}; wait",
        c = child_pid.display(),
        g = grandchild_pid.display()
    );
    let limits = RunLimits {
        timeout: Duration::from_millis(500),
        max_output: 1024,
    };
    let start = Instant::now();
    let e = run(&sh(&script), &limits).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(e, SourceError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("killed"), "{e}");
    let read_pid =
        |p: &Path| -> u32 { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
    assert_gone(read_pid(&child_pid));
    assert_gone(read_pid(&grandchild_pid));
}

#[tokio::test]
async fn run_reports_programs_that_cannot_start() {
    let e = run(&[s("/nonexistent/program"), s("x")], &RunLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Spawn { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/program"), "{e}");
    let e = run(&[], &RunLimits::default()).await.unwrap_err();
    assert!(matches!(e, SourceError::Invalid(_)), "{e}");
}

#[tokio::test]
async fn run_passes_arguments_without_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let tricky = [
        format!("; touch {}", marker.display()),
        format!("$(touch {})", marker.display()),
        s("a \"quoted\" 'arg'"),
        s("  spaces  "),
        s(""),
        s("*"),
    ];
    let mut argv = vec![s("printf"), s("[%s]\\n")];
    argv.extend(tricky.iter().cloned());
    let out = run(&argv, &RunLimits::default()).await.unwrap();
    let want: String = tricky.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(out.stdout, want);
    assert!(!marker.exists());
}

#[tokio::test]
async fn source_limits_apply_to_list() {
    let src = Source::new(SourceConfig::Command {
        list: sh("sleep 5"),
        terminate: None,
        kill: None,
        disconnect: None,
    })
    .with_limits(RunLimits {
        timeout: Duration::from_millis(200),
        max_output: 100,
    });
    let e = src.list().await.unwrap_err();
    assert!(matches!(e, SourceError::Timeout { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Packaging

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

#[test]
fn sudoers_grant_passes_visudo() {
    let file = repo_file("packaging/sudoers.d/switchboard-agent");
    assert!(file.exists(), "{}", file.display());
    let Some(visudo) = ["/usr/sbin/visudo", "/usr/bin/visudo"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("visudo is not installed: install Debian's `sudo` package (./scripts/test does)");
    };
    let out = std::process::Command::new(visudo)
        .arg("-cf")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("parsed OK"), "{text}");
}

#[test]
fn polkit_rule_grants_only_login1_manage_to_the_agent() {
    let rule = std::fs::read_to_string(repo_file(
        "packaging/polkit-1/rules.d/50-switchboard-agent.rules",
    ))
    .unwrap();
    let code: String = rule
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(code.matches("action.id").count(), 1, "{code}");
    assert!(code.contains("action.id == \"org.freedesktop.login1.manage\""));
    assert!(code.contains("subject.user == \"switchboard-agent\""));
    assert_eq!(code.matches("polkit.Result.YES").count(), 1);
}
