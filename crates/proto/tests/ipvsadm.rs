//! `ipvsadm` text: golden rules, change lines and listings, the parsers' errors and limits, a
//! round-trip property, and the same text fed to the real ipvsadm binary.
//!
//! # What the real ipvsadm can check here
//!
//! ipvsadm 1.31's `main()` calls `ipvs_init()` (and, if that fails, `modprobe ip_vs`) before it
//! looks at a single option, and gives up with `Can't initialize ipvs: Protocol not available`
//! when the kernel has no IPVS (this machine's kernel is built without it). On its own, then,
//! the binary checks nothing: a rules file and a line of garbage fail alike
//! (`bare_ipvsadm_fails_before_reading_any_option`).
//!
//! So the tests that use the binary load `crates/testkit/src/ipvsadm_fake_kernel.c` into it with `LD_PRELOAD`: a
//! stand-in for the kernel's IPVS generic-netlink family that answers ipvsadm's libnl requests
//! from a small table in a file, as Linux 6.1 would. That makes ipvsadm's own option parser,
//! its libipvs encoding, and its own `-S`/`-L` printers run on our text:
//!
//! - `-R` of [`render_rules`] output is accepted, and what ipvsadm sends the "kernel" (address
//!   family, protocol, addresses, ports, scheduler, flag bits, timeout, netmask bits,
//!   forwarding method, weight) is the golden `representative.kernel`;
//! - `-S -n` then prints exactly the lines [`render_rules`] wrote, and [`parse_rules`] reads
//!   them back to the same table, for the representative table and for random tables;
//! - `-R` of [`render_changes`] output turns the table into what `apply` predicts, with one
//!   kernel request per change, in order;
//! - `-L -n` prints the golden `representative.list`, and [`parse_list_counts`] reads its
//!   counters;
//! - `--set` from [`render_timeouts`] sets what `-L --timeout` shows;
//! - lines our parser refuses for ipvsadm's reasons are refused by ipvsadm too.
//!
//! What the stand-in cannot show is the real kernel's behaviour (scheduling, connection
//! handling, its own validation beyond the few refusals it copies). Every binary test prints
//! why it skipped and passes when ipvsadm or a C compiler is missing, when the stand-in cannot
//! be built or does not answer, or when the kernel does have IPVS (`/proc/net/ip_vs`): these
//! tests must never reach a real IPVS table.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use switchboard_core::ipvs::{
    Change, Forward, MAX_PERSISTENCE_SECS, MAX_WEIGHT, Persistence, Proto, RealServer, Table,
    Timeouts, VirtualAddr, VirtualService, apply, diff,
};
use switchboard_core::schedule::{HashOptions, SchedulerKind};
use switchboard_proto::ipvsadm::{
    MAX_INPUT, MAX_LINE, MAX_LINES, ParseError, parse_list_counts, parse_rules, render_changes,
    render_rules, render_timeouts,
};

// ---- tables ----

fn tcp(s: &str) -> VirtualAddr {
    VirtualAddr::Inet {
        proto: Proto::Tcp,
        addr: s.parse().unwrap(),
    }
}

fn udp(s: &str) -> VirtualAddr {
    VirtualAddr::Inet {
        proto: Proto::Udp,
        addr: s.parse().unwrap(),
    }
}

fn rs(s: &str, forward: Forward, weight: u32) -> RealServer {
    RealServer {
        addr: s.parse().unwrap(),
        forward,
        weight,
    }
}

fn persist(timeout_secs: u32, netmask: Option<u8>) -> Option<Persistence> {
    Some(Persistence {
        timeout_secs,
        netmask,
    })
}

fn service(
    vaddr: VirtualAddr,
    scheduler: SchedulerKind,
    flags: (bool, bool),
    persistence: Option<Persistence>,
    dests: &[RealServer],
) -> VirtualService {
    VirtualService {
        vaddr,
        scheduler,
        flags: HashOptions {
            fallback: flags.0,
            port: flags.1,
        },
        persistence,
        dests: dests.to_vec(),
    }
}

/// DR, NAT (one on another port) and tunnels, weights including 0, persistence with and
/// without a mask, IPv6, firewall marks (IPv4 and IPv6), sh and mh flags, a port-0 service, a
/// tunnel across address families, every scheduler Switchboard has.
fn representative() -> Table {
    use Forward::{Dr, Nat, Tunnel};
    use SchedulerKind::*;
    Table {
        services: vec![
            service(
                tcp("10.0.0.100:22"),
                Wlc,
                (false, false),
                persist(3600, None),
                &[
                    rs("10.0.1.11:22", Dr, 100),
                    rs("10.0.1.12:22", Dr, 100),
                    rs("10.0.1.13:22", Dr, 0),
                ],
            ),
            service(
                tcp("10.0.0.100:3389"),
                Sh,
                (true, true),
                None,
                &[
                    rs("10.0.1.21:3389", Nat, 1),
                    rs("10.0.1.22:3390", Nat, 2),
                    rs("10.0.1.23:3389", Tunnel, 1),
                ],
            ),
            service(
                udp("10.0.0.100:53"),
                Wrr,
                (false, false),
                None,
                &[rs("10.0.1.31:5353", Nat, 5), rs("10.0.1.32:5353", Nat, 0)],
            ),
            service(
                VirtualAddr::FwMark {
                    mark: 7,
                    ipv6: false,
                },
                Wlc,
                (false, false),
                persist(28800, Some(24)),
                &[rs("10.0.1.11:0", Dr, 1), rs("10.0.1.12:0", Dr, 1)],
            ),
            service(
                tcp("[2001:db8::100]:22"),
                Mh,
                (false, true),
                persist(600, Some(64)),
                &[
                    rs("[2001:db8::11]:22", Dr, 10),
                    rs("[2001:db8::12]:22", Tunnel, 0),
                ],
            ),
            service(
                VirtualAddr::FwMark {
                    mark: 8,
                    ipv6: true,
                },
                Sed,
                (false, false),
                persist(360, None),
                &[rs("[2001:db8::11]:0", Dr, 1)],
            ),
            service(
                tcp("10.0.0.101:0"),
                Lc,
                (false, false),
                persist(60, Some(16)),
                &[rs("10.0.1.41:0", Dr, 3)],
            ),
            service(
                tcp("10.0.0.102:80"),
                Nq,
                (false, false),
                None,
                &[rs("[2001:db8::21]:80", Tunnel, 3)],
            ),
            service(udp("[2001:db8::100]:53"), Rr, (false, false), None, &[]),
        ],
    }
}

/// A desired table for the diff golden: every kind of change, live and idle removals.
fn desired_and_live() -> (Table, impl Fn(&VirtualAddr, &SocketAddr) -> bool) {
    let mut t = representative();
    // Edit service: persistence longer; flags; scheduler.
    t.services[0].persistence = persist(7200, None);
    t.services[1].flags.port = false;
    t.services[2].scheduler = SchedulerKind::Rr;
    // Dests of service 0: drop .12 (live: quiesced) and .13 (idle: deleted), add .14, reweigh .11.
    t.services[0].dests = vec![
        rs("10.0.1.11:22", Forward::Dr, 50),
        rs("10.0.1.14:22", Forward::Dr, 100),
    ];
    // Service 1: NAT on another port dropped (idle), tunnel becomes DR.
    t.services[1].dests = vec![
        rs("10.0.1.21:3389", Forward::Nat, 1),
        rs("10.0.1.23:3389", Forward::Dr, 1),
    ];
    // Retire the IPv6 mh service (one dest live: quiesced) and fwmark 8 (idle: deleted).
    t.services.retain(|s| {
        s.vaddr != tcp("[2001:db8::100]:22")
            && s.vaddr
                != VirtualAddr::FwMark {
                    mark: 8,
                    ipv6: true,
                }
    });
    // A new service.
    t.services.push(service(
        udp("10.0.0.103:514"),
        SchedulerKind::Sh,
        (true, false),
        None,
        &[rs("10.0.1.51:514", Forward::Nat, 1)],
    ));
    let live: [SocketAddr; 2] = [
        "10.0.1.12:22".parse().unwrap(),
        "[2001:db8::11]:22".parse().unwrap(),
    ];
    (t, move |_: &VirtualAddr, a: &SocketAddr| live.contains(a))
}

/// Sorted and normalised: the table as sets, whatever order ipvsadm printed it in.
fn canonical(t: &Table) -> Vec<(String, String, Vec<String>)> {
    let mut out: Vec<_> = t
        .normalized()
        .services
        .iter()
        .map(|s| {
            let mut d: Vec<String> = s.dests.iter().map(|d| format!("{d:?}")).collect();
            d.sort();
            (
                format!("{:?}", s.vaddr),
                format!("{:?} {:?} {:?}", s.scheduler, s.flags, s.persistence),
                d,
            )
        })
        .collect();
    out.sort();
    out
}

fn sorted_lines(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort_unstable();
    v
}

// ---- golden files ----

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/ipvsadm")
        .join(name)
}

fn golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "differs from {}", path.display());
}

fn read_golden(name: &str) -> String {
    std::fs::read_to_string(golden_path(name)).unwrap()
}

#[test]
fn the_representative_table_renders_as_the_golden_rules_and_parses_back() {
    let t = representative();
    assert_eq!(t.validate(), Ok(()));
    let text = render_rules(&t);
    golden("representative.rules", &text);
    assert_eq!(parse_rules(&text).unwrap(), t);
}

#[test]
fn a_diff_renders_as_the_golden_change_lines() {
    let current = representative();
    let (desired, live) = desired_and_live();
    assert_eq!(desired.validate(), Ok(()));
    let changes = diff(&current, &desired, &live);
    golden("diff.changes", &render_changes(&changes));
    // The shape the golden file shows, spelled out.
    let kinds: Vec<&str> = changes
        .iter()
        .map(|c| match c {
            Change::AddService(_) => "A",
            Change::EditService(_) => "E",
            Change::DeleteService(_) => "D",
            Change::AddDest(..) => "a",
            Change::EditDest(..) => "e",
            Change::DeleteDest(..) => "d",
        })
        .collect();
    assert_eq!(kinds.concat(), "EEEAaeeaeddeD");
}

#[test]
fn timeouts_render_as_set() {
    assert_eq!(
        render_timeouts(&Timeouts::KERNEL_DEFAULTS),
        "--set 900 120 300\n"
    );
    assert_eq!(
        render_timeouts(&Timeouts {
            tcp: 0,
            tcpfin: 60,
            udp: 0
        }),
        "--set 0 60 0\n"
    );
}

#[test]
fn the_golden_listing_gives_every_counter() {
    let got = parse_list_counts(&read_golden("representative.list")).unwrap();
    assert_eq!(sorted_counts(got), expected_counts(&representative()));
}

/// The counters the listing golden holds: real server i (in table order) has 3i+1 active and i
/// inactive connections.
fn expected_counts(t: &Table) -> Vec<(VirtualAddr, SocketAddr, u64, u64)> {
    let mut all: Vec<(VirtualAddr, SocketAddr, u64, u64)> = Vec::new();
    let mut i = 0u64;
    for s in &t.services {
        for d in &s.dests {
            all.push((s.vaddr, d.addr, 3 * i + 1, i));
            i += 1;
        }
    }
    // ipvsadm lists services and real servers sorted; compare as sets.
    all.sort_by_key(|e| format!("{e:?}"));
    all
}

fn sorted_counts(
    mut v: Vec<(VirtualAddr, SocketAddr, u64, u64)>,
) -> Vec<(VirtualAddr, SocketAddr, u64, u64)> {
    v.sort_by_key(|e| format!("{e:?}"));
    v
}

// ---- parsing what ipvsadm and people write ----

#[test]
fn rules_parse_with_long_options_defaults_comments_and_a_leading_ipvsadm() {
    let text = "\
# ipvsadm.rules
ipvsadm --add-service --tcp-service 10.0.0.100:22 --persistent -M 255.255.0.0
  --add-server --tcp-service=10.0.0.100:22 --real-server=10.0.1.11 --weight=0   # quiesced

-a -t 10.0.0.100:22 -r 10.0.1.12:22 --masquerading\r
-A --udp-service [2001:db8::1]:53 --scheduler sh --sched-flags sh-port,sh-fallback -p 30 -M 128
-a -u [2001:db8::1]:53 -r [2001:db8::2] -m
-A --fwmark-service -1294967296 -s mh -b mh-fallback
-A -f 9 --ipv6 -s rr -p
-a -f 9 -6 -r [2001:db8::3]:0 --ipip --tun-type ipip -w 4
";
    let t = parse_rules(text).unwrap();
    let want = Table {
        services: vec![
            service(
                tcp("10.0.0.100:22"),
                SchedulerKind::Wlc,
                (false, false),
                persist(360, Some(16)),
                &[
                    rs("10.0.1.11:22", Forward::Dr, 0),
                    rs("10.0.1.12:22", Forward::Nat, 1),
                ],
            ),
            service(
                udp("[2001:db8::1]:53"),
                SchedulerKind::Sh,
                (true, true),
                persist(30, None),
                &[rs("[2001:db8::2]:53", Forward::Nat, 1)],
            ),
            service(
                VirtualAddr::FwMark {
                    mark: 3_000_000_000,
                    ipv6: false,
                },
                SchedulerKind::Mh,
                (true, false),
                None,
                &[],
            ),
            service(
                VirtualAddr::FwMark {
                    mark: 9,
                    ipv6: true,
                },
                SchedulerKind::Rr,
                (false, false),
                persist(360, None),
                &[rs("[2001:db8::3]:0", Forward::Tunnel, 4)],
            ),
        ],
    };
    assert_eq!(t, want);
    // Marks are written unsigned, which ipvsadm -R reads.
    assert!(render_rules(&t).contains("-A -f 3000000000 -s mh -b mh-fallback\n"));
}

fn parse_err(text: &str) -> String {
    parse_rules(text).unwrap_err().to_string()
}

#[test]
fn rule_errors_name_the_line_and_the_option() {
    let svc = "-A -t 10.0.0.100:22\n";
    let cases: &[(&str, &str)] = &[
        (
            "-A -t 10.0.0.100:22 -s fo",
            "line 1: scheduler `fo` is not supported by Switchboard (it supports rr, wrr, lc, wlc, sed, nq, sh, mh)",
        ),
        (
            "-A -t 10.0.0.100:22 -s twos",
            "line 1: scheduler `twos` is not supported by Switchboard (it supports rr, wrr, lc, wlc, sed, nq, sh, mh)",
        ),
        (
            "-A -t 10.0.0.100:22 -s lblcr",
            "line 1: scheduler `lblcr` is not supported by Switchboard (it supports rr, wrr, lc, wlc, sed, nq, sh, mh)",
        ),
        (
            "-A -t 10.0.0.100:22 -s fancy",
            "line 1: unknown scheduler `fancy`",
        ),
        (
            "\n-A -t 10.0.0.100:22 -s wlc --pe sip",
            "line 2: `--pe`: persistence engines (--pe) are not supported by Switchboard",
        ),
        (
            "-A -u 10.0.0.100:53 -s rr -o",
            "line 1: `-o`: one-packet scheduling (-o/--ops) is not supported by Switchboard",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -x 10",
            "line 2: `-x`: connection thresholds (-x/-y) are not supported by Switchboard",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22 --l-threshold=3",
            "line 2: `--l-threshold`: connection thresholds (-x/-y) are not supported by Switchboard",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -i --tun-type gue",
            "line 2: `--tun-type gue`: only ipip tunnels are supported by Switchboard",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -i --tun-port 6080",
            "line 2: `--tun-port`: tunnel options are not supported by Switchboard (only plain IPIP tunnels, -i)",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -i --tun-nocsum",
            "line 2: `--tun-nocsum`: tunnel options are not supported by Switchboard (only plain IPIP tunnels, -i)",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -g --tun-type ipip",
            "line 2: `--tun-type` applies only to -i (tunnelled) real servers",
        ),
        (
            "-A --sctp-service 10.0.0.100:22",
            "line 1: `--sctp-service`: SCTP services are not supported by Switchboard",
        ),
        (
            "-a -t 10.0.0.101:22 -r 10.0.1.1:22",
            "line 2: real server for TCP 10.0.0.101:22, which no earlier -A line adds",
        ),
        (
            "-a -f 7 -r 10.0.1.1:22",
            "line 2: real server for FWM 7, which no earlier -A line adds",
        ),
        (
            "-A -t 10.0.0.100:22 -s rr",
            "line 2: TCP 10.0.0.100:22 was already added at line 1",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22\n-a -t 10.0.0.100:22 -r 10.0.1.1:22 -w 3",
            "line 3: real server 10.0.1.1:22 was already added to TCP 10.0.0.100:22 at line 2",
        ),
        (
            "-E -t 10.0.0.100:22 -s rr",
            "line 2: `-E` does not describe a table: rules have only -A and -a lines",
        ),
        (
            "--set 900 120 300",
            "line 2: `--set` does not describe a table: rules have only -A and -a lines",
        ),
        (
            "-A -t 10.0.0.100:23 --frobnicate",
            "line 2: unknown option `--frobnicate`",
        ),
        ("-A -t 10.0.0.100:23 -s", "line 2: `-s` needs a value"),
        (
            "-A -t 10.0.0.100:23 wlc",
            "line 2: unexpected argument `wlc`",
        ),
        ("-t 10.0.0.100:23", "line 2: no command: expected -A or -a"),
        ("-A -s rr", "line 2: no service: expected -t, -u or -f"),
        (
            "-A -t 10.0.0.100:23 -f 7",
            "line 2: `-f` conflicts with `-t`",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -g -m",
            "line 2: `-m` conflicts with `-g`",
        ),
        (
            "-A -t 10.0.0.100:23 -s rr -s wlc",
            "line 2: `-s` given twice",
        ),
        (
            "-A -t 10.0.0.100:23 -A",
            "line 2: more than one command (`-A`)",
        ),
        (
            "-A -t 10.0.0.100:23 -M 255.255.255.0",
            "line 2: `-M` without -p",
        ),
        (
            "-A -t 10.0.0.100:23 -p -M 24",
            "line 2: `-M`: an IPv4 mask must be dotted, e.g. 255.255.255.0 (ipvsadm reads `24` as 0.0.0.24)",
        ),
        (
            "-A -t 10.0.0.100:23 -p -M 255.0.255.0",
            "line 2: `-M`: netmask `255.0.255.0` is not contiguous",
        ),
        (
            "-A -t [::1]:23 -p -M 129",
            "line 2: `-M`: invalid IPv6 prefix length `129` (1..=128)",
        ),
        (
            "-A -t 10.0.0.100:23 -p 0",
            "line 2: `-p`: invalid timeout `0` (1..=2678400 seconds)",
        ),
        (
            "-A -t 10.0.0.100:23 -s wlc -b sh-port",
            "line 2: scheduler flag `sh-port` does not apply to scheduler `wlc`",
        ),
        (
            "-A -t 10.0.0.100:23 -s mh -b sh-port",
            "line 2: scheduler flag `sh-port` does not apply to scheduler `mh`",
        ),
        (
            "-A -t 10.0.0.100:23 -s rr -b flag-1",
            "line 2: scheduler flag `flag-1` is not supported by Switchboard",
        ),
        (
            "-A -t 10.0.0.100:23 -6",
            "line 2: `-6` applies only to -f services",
        ),
        ("-A -f 0", "line 2: `-f`: invalid firewall mark `0`"),
        (
            "-A -t lb.example:22",
            "line 2: `-t`: invalid address `lb.example:22` (numeric IP[:PORT] or [IPv6][:PORT])",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:ssh",
            "line 2: `-r`: invalid address `10.0.1.1:ssh` (numeric IP[:PORT] or [IPv6][:PORT])",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -w 2147483648",
            "line 2: `-w`: invalid weight `2147483648` (0..=2147483647)",
        ),
        (
            "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -w -1",
            "line 2: `-w`: invalid weight `-1` (0..=2147483647)",
        ),
        (
            "-a -t 10.0.0.100:22 -s rr -r 10.0.1.1:22",
            "line 2: `-s` does not belong on an -a line",
        ),
        (
            "-A -t 10.0.0.101:22 -w 3",
            "line 2: `-w` does not belong on an -A line",
        ),
        ("-a -t 10.0.0.100:22", "line 2: an -a line needs -r"),
        (
            "-A -t 10.0.0.101:22 --gatewaying=yes",
            "line 2: `--gatewaying` takes no value",
        ),
    ];
    for (input, want) in cases {
        // Lines that start a file get no service line in front.
        let text = if want.starts_with("line 1:") || input.starts_with('\n') {
            input.to_string()
        } else {
            format!("{svc}{input}")
        };
        assert_eq!(&parse_err(&text), want, "input: {text:?}");
    }
    assert_eq!(
        parse_rules("wlc").unwrap_err(),
        ParseError {
            line: 1,
            message: "unexpected argument `wlc`".into()
        }
    );
}

#[test]
fn the_parsers_enforce_their_limits() {
    // Whole input: the error names the line where 1 MiB runs out.
    let line = "-A -t 10.0.0.100:22 -s wlc\n";
    let big = line.repeat(MAX_INPUT / line.len() + 1);
    let err = parse_rules(&big).unwrap_err();
    assert_eq!(err.line, MAX_INPUT / line.len() + 1);
    assert_eq!(err.message, "input longer than 1048576 bytes");
    assert_eq!(parse_list_counts(&big).unwrap_err().message, err.message);
    // Lines: 100,000 blank lines are fine, one more is not.
    let blank = "\n".repeat(MAX_LINES);
    assert_eq!(parse_rules(&blank), Ok(Table::default()));
    assert_eq!(parse_list_counts(&blank), Ok(vec![]));
    let err = parse_rules(&format!("{blank}\n")).unwrap_err();
    assert_eq!(err.to_string(), "line 100001: more than 100000 lines");
    assert_eq!(
        parse_list_counts(&format!("{blank}\n")).unwrap_err().line,
        100_001
    );
    // One line: 4096 bytes are fine, 4097 are not.
    let pad = |n: usize| format!("-A -t 10.0.0.100:22{}", " ".repeat(n - 19));
    assert!(parse_rules(&pad(MAX_LINE)).is_ok());
    assert_eq!(
        parse_rules(&format!("\n{}", pad(MAX_LINE + 1)))
            .unwrap_err()
            .to_string(),
        "line 2: line longer than 4096 bytes"
    );
    assert_eq!(
        parse_list_counts(&" ".repeat(MAX_LINE + 1))
            .unwrap_err()
            .to_string(),
        "line 1: line longer than 4096 bytes"
    );
}

#[test]
fn listing_errors_name_the_line() {
    let cases: &[(&str, &str)] = &[
        (
            "  -> 10.0.1.11:22 Route 1 0 0",
            "line 1: real server row before any service row",
        ),
        (
            "TCP  10.0.0.100:22 wlc\n  -> 10.0.1.11:22 Route 1 0",
            "line 2: expected `-> RIP:PORT FORWARD WEIGHT ACTIVECONN INACTCONN` (the default ipvsadm -L -n listing), found 4 columns",
        ),
        (
            "TCP  10.0.0.100:22 wlc\n  -> 10.0.1.11:22 Route 1 0 0 0",
            "line 2: expected `-> RIP:PORT FORWARD WEIGHT ACTIVECONN INACTCONN` (the default ipvsadm -L -n listing), found 6 columns",
        ),
        (
            "TCP  lb:ssh wlc",
            "line 1: invalid virtual service `lb:ssh` (numeric, from ipvsadm -L -n)",
        ),
        (
            "TCP  10.0.0.100:22 wlc\n  -> s1:ssh Route 1 0 0",
            "line 2: invalid real server `s1:ssh` (numeric, from ipvsadm -L -n)",
        ),
        (
            "TCP  10.0.0.100:22 wlc\n  -> 10.0.1.11:22 Sideways 1 0 0",
            "line 2: unknown forwarding method `Sideways`",
        ),
        (
            "TCP  10.0.0.100:22 wlc\n  -> 10.0.1.11:22 Route 1 x 0",
            "line 2: invalid connection count `x`",
        ),
        (
            "TCP  10.0.0.100:22 wlc\n  -> 10.0.1.11:22 Route 1 0 -1",
            "line 2: invalid connection count `-1`",
        ),
        ("FWM  0 wlc", "line 1: invalid firewall mark `0`"),
        (
            "SCTP 10.0.0.100:22 wlc",
            "line 1: SCTP services are not supported by Switchboard",
        ),
        (
            "Timeout (tcp tcpfin udp): 900 120 300",
            "line 1: unexpected `Timeout`: expected a TCP, UDP or FWM service row or an `->` real server row",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            &parse_list_counts(input).unwrap_err().to_string(),
            want,
            "input: {input:?}"
        );
    }
    // Marks above 2147483647 come out of ipvsadm negative.
    assert_eq!(
        parse_list_counts("FWM  -1294967296 rr\n  -> 1.2.3.4:0 Route 1 2 3").unwrap(),
        vec![(
            VirtualAddr::FwMark {
                mark: 3_000_000_000,
                ipv6: false
            },
            "1.2.3.4:0".parse().unwrap(),
            2,
            3
        )]
    );
}

// ---- round trip ----

fn ipv6_strategy() -> impl Strategy<Value = Ipv6Addr> {
    // Under 2001:db8::/32, so that no address has a form glibc and Rust write differently
    // (IPv4-compatible ::a.b.c.d).
    any::<u128>().prop_map(|x| Ipv6Addr::from((0x2001_0db8_u128 << 96) | (x >> 32)))
}

fn ip_strategy() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (x >> 8)))),
        ipv6_strategy().prop_map(IpAddr::V6),
    ]
}

fn vaddr_strategy(max_mark: u32) -> impl Strategy<Value = VirtualAddr> {
    prop_oneof![
        (any::<bool>(), ip_strategy(), any::<u16>()).prop_map(|(u, ip, port)| {
            VirtualAddr::Inet {
                proto: if u { Proto::Udp } else { Proto::Tcp },
                addr: SocketAddr::new(ip, port),
            }
        }),
        (1..=max_mark, any::<bool>()).prop_map(|(mark, ipv6)| VirtualAddr::FwMark { mark, ipv6 }),
    ]
}

fn service_strategy(max_mark: u32) -> impl Strategy<Value = VirtualService> {
    (
        vaddr_strategy(max_mark),
        prop::sample::select(SchedulerKind::ALL.to_vec()),
        any::<(bool, bool)>(),
        prop::option::of((1..=MAX_PERSISTENCE_SECS, prop::option::of(0u8..=128))),
        prop::collection::vec(
            (
                ip_strategy(),
                any::<u16>(),
                prop::sample::select(vec![Forward::Dr, Forward::Nat, Forward::Tunnel]),
                prop_oneof![0..=3u32, 0..=MAX_WEIGHT],
            ),
            0..5,
        ),
    )
        .prop_map(|(vaddr, scheduler, (fallback, port), p, dests)| {
            let ipv6 = vaddr.is_ipv6();
            let mut persistence = p.map(|(timeout_secs, netmask)| Persistence {
                timeout_secs,
                netmask: netmask.map(|m| if ipv6 { m.max(1) } else { m % 33 }),
            });
            if vaddr.port() == Some(0) && persistence.is_none() {
                persistence = Some(Persistence {
                    timeout_secs: 360,
                    netmask: None,
                });
            }
            let mut seen = std::collections::HashSet::new();
            let dests = dests
                .into_iter()
                .map(|(ip, port, mut forward, weight)| {
                    if ip.is_ipv6() != ipv6 {
                        forward = Forward::Tunnel;
                    }
                    let port = match (forward, vaddr.port()) {
                        (Forward::Dr | Forward::Tunnel, Some(vport)) => vport,
                        _ => port,
                    };
                    RealServer {
                        addr: SocketAddr::new(ip, port),
                        forward,
                        weight,
                    }
                })
                .filter(|d| seen.insert(d.addr))
                .collect();
            VirtualService {
                vaddr,
                scheduler,
                flags: HashOptions { fallback, port },
                persistence,
                dests,
            }
            .normalized()
        })
}

/// Valid, normalised tables: exactly what ipvsadm can hold and print.
fn table_strategy(max_mark: u32) -> impl Strategy<Value = Table> {
    prop::collection::vec(service_strategy(max_mark), 0..6).prop_map(|services| {
        let mut seen = std::collections::HashSet::new();
        Table {
            services: services
                .into_iter()
                .filter(|s| seen.insert(s.vaddr))
                .collect(),
        }
    })
}

proptest! {
    // Integration tests have no lib.rs for proptest to keep failures next to.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rules_round_trip(t in table_strategy(u32::MAX)) {
        prop_assert_eq!(t.validate(), Ok(()));
        let text = render_rules(&t);
        prop_assert_eq!(parse_rules(&text).unwrap(), t);
    }
}

// ---- the real ipvsadm ----

/// The stand-in kernel, built once per test run; `Err` says why the binary tests skip.
fn fake() -> Result<&'static Fake, &'static str> {
    static FAKE: OnceLock<Result<Fake, String>> = OnceLock::new();
    FAKE.get_or_init(Fake::build)
        .as_ref()
        .map_err(String::as_str)
}

struct Fake {
    ipvsadm: PathBuf,
    so: PathBuf,
    dir: PathBuf,
}

static KERNELS: AtomicUsize = AtomicUsize::new(0);

impl Fake {
    fn build() -> Result<Fake, String> {
        let ipvsadm =
            switchboard_testkit::ipvs::ipvsadm_binary().ok_or("ipvsadm is not installed")?;
        if Path::new("/proc/net/ip_vs").exists() {
            return Err("this kernel has IPVS; the tests never touch a real IPVS table".into());
        }
        // One directory per test process; those of finished processes are removed.
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("ipvsadm-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = tmp.join(format!("ipvsadm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let so = dir.join("fake_ipvs.so");
        switchboard_testkit::ipvs::build_fake_kernel(&so)?;
        let fake = Fake { ipvsadm, so, dir };
        // Read-only check that the stand-in answers (it reports a connection table of 4242).
        let k = fake.kernel();
        let out = k.run(&["-L", "-n"], "");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !stdout.starts_with("IP Virtual Server version 1.2.1 (size=4242)") {
            return Err(format!(
                "the stand-in kernel did not answer ipvsadm -L -n: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(fake)
    }

    /// A fresh, empty table.
    fn kernel(&self) -> Kernel<'_> {
        let n = KERNELS.fetch_add(1, Ordering::Relaxed);
        let state = self.dir.join(format!("kernel-{n}.state"));
        let log = self.dir.join(format!("kernel-{n}.log"));
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(&log);
        Kernel {
            fake: self,
            state,
            log,
        }
    }
}

struct Kernel<'a> {
    fake: &'a Fake,
    state: PathBuf,
    log: PathBuf,
}

impl Kernel<'_> {
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(&self.fake.ipvsadm)
            .args(args)
            .env("LD_PRELOAD", &self.fake.so)
            .env("FAKE_IPVS_STATE", &self.state)
            .env("FAKE_IPVS_LOG", &self.log)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `ipvsadm -R`, which must succeed silently.
    fn restore(&self, text: &str) {
        let out = self.run(&["-R"], text);
        assert!(
            out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
            "ipvsadm -R failed ({}): {}\ninput:\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.run(args, "");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "ipvsadm {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn save(&self) -> String {
        self.stdout(&["-S", "-n"])
    }

    fn state(&self) -> String {
        std::fs::read_to_string(&self.state).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

macro_rules! kernel_or_skip {
    () => {
        match fake() {
            Ok(f) => f.kernel(),
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        }
    };
}

#[test]
fn bare_ipvsadm_fails_before_reading_any_option() {
    let Some(ipvsadm) = switchboard_testkit::ipvs::ipvsadm_binary() else {
        eprintln!("skipped: ipvsadm is not installed");
        return;
    };
    if Path::new("/proc/net/ip_vs").exists() {
        eprintln!("skipped: this kernel has IPVS; the tests never touch a real IPVS table");
        return;
    }
    // Only commands that change nothing even where IPVS works: if ipvsadm parsed its options
    // first, `-h` would print its usage and succeed and the garbage would get a usage error.
    for (args, input) in [(&["-h"][..], ""), (&["-R"][..], "--no-such-option\n")] {
        let mut child = Command::new(&ipvsadm)
            .args(args)
            .env_remove("LD_PRELOAD")
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // ipvsadm failing before it reads its input is what this test shows, so it may well have
        // exited (and closed the pipe) before the write: a broken pipe is the expected outcome.
        match child.stdin.take().unwrap().write_all(input.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("writing to ipvsadm: {e}"),
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.contains("Can't initialize ipvs") {
            eprintln!("skipped: ipvsadm could initialise IPVS here: {stderr}");
            return;
        }
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn ipvsadm_reads_our_rules_and_prints_them_back_line_for_line() {
    let k = kernel_or_skip!();
    let t = representative();
    let rules = render_rules(&t);
    k.restore(&rules);
    // What ipvsadm asked the kernel for: families, protocols, ports, scheduler names, flag bits
    // (1 = persistent, 8/16 = sched flag 1/2), timeouts, masks (dotted IPv4, prefix IPv6),
    // forwarding (0 NAT, 2 tunnel, 3 DR) and weights.
    golden("representative.kernel", &k.state());
    let saved = k.save();
    assert_eq!(sorted_lines(&saved), sorted_lines(&rules));
    assert_eq!(canonical(&parse_rules(&saved).unwrap()), canonical(&t));
}

#[test]
fn ipvsadm_lists_the_counters_we_read() {
    let k = kernel_or_skip!();
    let t = representative();
    k.restore(&render_rules(&t));
    // Give real server i (table order) 3i+1 active and i inactive connections.
    let mut i = 0u64;
    let state: String = k
        .state()
        .lines()
        .map(|l| {
            if l.starts_with("D ") {
                let mut w: Vec<String> = l.split(' ').map(str::to_owned).collect();
                let n = w.len();
                w[n - 2] = (3 * i + 1).to_string();
                w[n - 1] = i.to_string();
                i += 1;
                w.join(" ") + "\n"
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&k.state, state).unwrap();
    let listing = k.stdout(&["-L", "-n"]);
    golden("representative.list", &listing);
    assert_eq!(
        sorted_counts(parse_list_counts(&listing).unwrap()),
        expected_counts(&t)
    );
}

#[test]
fn ipvsadm_applies_our_changes_as_apply_predicts() {
    let k = kernel_or_skip!();
    let current = representative();
    k.restore(&render_rules(&current));
    let _ = std::fs::remove_file(&k.log);
    let (desired, live) = desired_and_live();
    let changes = diff(&current, &desired, &live);
    k.restore(&render_changes(&changes));
    let mut predicted = current.clone();
    apply(&mut predicted, &changes).unwrap();
    assert_eq!(
        canonical(&parse_rules(&k.save()).unwrap()),
        canonical(&predicted)
    );
    // One kernel request per change, in order.
    let requests: Vec<&str> = k
        .log()
        .lines()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .map(|w| match w {
            "NEW_SERVICE" => "A",
            "SET_SERVICE" => "E",
            "DEL_SERVICE" => "D",
            "NEW_DEST" => "a",
            "SET_DEST" => "e",
            "DEL_DEST" => "d",
            other => panic!("unexpected request {other}"),
        })
        .collect();
    let kinds: Vec<&str> = changes
        .iter()
        .map(|c| match c {
            Change::AddService(_) => "A",
            Change::EditService(_) => "E",
            Change::DeleteService(_) => "D",
            Change::AddDest(..) => "a",
            Change::EditDest(..) => "e",
            Change::DeleteDest(..) => "d",
        })
        .collect();
    assert_eq!(requests, kinds);
    // Once nothing is live, the next run finishes the job.
    let now = parse_rules(&k.save()).unwrap();
    let rest = diff(&now, &desired, |_, _| false);
    assert!(!rest.is_empty());
    k.restore(&render_changes(&rest));
    assert_eq!(
        canonical(&parse_rules(&k.save()).unwrap()),
        canonical(&desired)
    );
}

#[test]
fn ipvsadm_sets_our_timeouts() {
    let k = kernel_or_skip!();
    k.restore(&render_timeouts(&Timeouts {
        tcp: 0,
        tcpfin: 60,
        udp: 0,
    }));
    assert_eq!(
        k.stdout(&["-L", "--timeout"]),
        "Timeout (tcp tcpfin udp): 900 60 300\n"
    );
}

#[test]
fn ipvsadm_refuses_what_our_parser_refuses_for_its_reasons() {
    let k = kernel_or_skip!();
    k.restore("-A -t 10.0.0.100:22 -s wlc\n");
    let before = k.state();
    for line in [
        "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -w 2147483648",
        "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -w -1",
        "-A -t 10.0.0.101:22 -s wlc -b sh-port",
        "-A -t 10.0.0.101:22 -s mh -b sh-fallback",
        "-A -t 10.0.0.101:22 -6",
        "-A -f 0 -s rr",
        "-A -t 10.0.0.101:22 -p 0",
        "-A -t [2001:db8::1]:22 -p 60 -M 129",
        "-A -t 10.0.0.101:22 wlc",
        "-A -t 10.0.0.101:22 --frobnicate",
        "-a -t 10.0.0.100:22 -r 10.0.1.1:22 -g -m",
    ] {
        let rules = format!("-A -t 10.0.0.100:22 -s wlc\n{line}\n");
        assert!(parse_rules(&rules).is_err(), "we accept {line:?}");
        let out = k.run(&["-R"], &format!("{line}\n"));
        assert!(!out.status.success(), "ipvsadm accepts {line:?}");
        assert_eq!(k.state(), before, "ipvsadm applied {line:?}");
    }
}

#[test]
fn ipvsadm_restore_stops_at_a_comment_line() {
    // config_stream.c looks for `#` in the wrong buffer, so ipvsadm 1.31 -R takes a comment
    // for arguments and ends the restore; render_rules and render_changes never write one.
    let k = kernel_or_skip!();
    let out = k.run(
        &["-R"],
        "-A -t 10.0.0.100:22\n# a comment\n-A -t 10.0.0.101:22\n",
    );
    assert!(!out.status.success());
    let saved = k.save();
    assert_eq!(saved, "-A -t 10.0.0.100:22 -s wlc\n");
    assert!(parse_rules("-A -t 10.0.0.100:22\n# a comment\n").is_ok());
}

proptest! {
    // Two ipvsadm runs a case.
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ipvsadm_round_trips_random_tables(t in table_strategy(i32::MAX.cast_unsigned())) {
        let k = match fake() {
            Ok(f) => f.kernel(),
            Err(_) => return Ok(()),
        };
        let rules = render_rules(&t);
        k.restore(&rules);
        let saved = k.save();
        prop_assert_eq!(sorted_lines(&saved), sorted_lines(&rules));
        prop_assert_eq!(canonical(&parse_rules(&saved).unwrap()), canonical(&t));
    }
}
