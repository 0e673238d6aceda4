//! `ipvsadm` text: the rules `ipvsadm -S -n` writes and `ipvsadm -R` reads, the change lines
//! that apply a [`diff`](switchboard_core::ipvs::diff), `--set` timeouts, and the connection
//! counters of `ipvsadm -L -n`. Pure: nothing here runs ipvsadm.
//!
//! # Rules format (ipvsadm 1.31, `print_service_entry()` with `FMT_RULE`)
//!
//! ```text
//! -A -t 10.0.0.100:22 -s wlc -p 3600
//! -a -t 10.0.0.100:22 -r 10.0.1.11:22 -g -w 100
//! -A -t 10.0.0.100:3389 -s sh -b sh-fallback,sh-port
//! -a -t 10.0.0.100:3389 -r 10.0.1.22:3389 -i -w 1 --tun-type ipip
//! -A -f 7 -s wlc -p 28800 -M 255.255.255.0
//! -A -f 8 -6 -s mh -p 360 -M 64 -b mh-port
//! -a -f 8 -6 -r [2001:db8::1]:0 -g -w 1
//! ```
//!
//! - A service is `-t VIP:PORT`, `-u VIP:PORT`, `-f MARK` or `-f MARK -6`; IPv6 addresses are
//!   bracketed, `[2001:db8::1]:22`, written as Rust writes them, which is RFC 5952 and, but for
//!   IPv4-compatible forms like `::1.2.3.4`, what glibc's `inet_ntop` writes.
//! - The service line continues ` -s SCHED`, then ` -p TIMEOUT` with persistence, then
//!   ` -M MASK` when the mask is not /32 (IPv4) or /128 (IPv6), then ` -b FLAGS` (`sh-fallback`,
//!   `sh-port`, `mh-fallback`, `mh-port`, in that order, comma-separated) for sh and mh only.
//! - **`-M` is a dotted netmask for IPv4 and a prefix length for IPv6.** ipvsadm 1.31 parses an
//!   IPv4 `-M` with `inet_aton()`, so `-M 24` means the mask 0.0.0.24; it prints the mask back
//!   with `inet_ntoa()`. For IPv6 it uses `atoi()` (1..=128) and prints `%i`. Verified by running
//!   ipvsadm 1.31 against a stand-in for the kernel (`tests/ipvsadm.rs`).
//! - A real-server line is `-a SERVICE -r RIP:PORT -g|-m|-i -w WEIGHT`; ipvsadm 1.31 adds
//!   ` --tun-type ipip` to tunnelled ones in `-S` output, and [`render_rules`] does the same, so
//!   its output is byte for byte what `ipvsadm -S -n` prints for the same table (ipvsadm sorts
//!   services and real servers by address; [`render_rules`] keeps the table's order).
//! - ipvsadm replaces the port of a direct-routing or tunnelled real server of a `-t`/`-u`
//!   service with the virtual port; [`Table::validate`](switchboard_core::ipvs::Table::validate)
//!   reports tables where that would change anything. [`parse_rules`] keeps what the text says.
//!
//! # Feeding `ipvsadm -R`
//!
//! - `ipvsadm -R` runs each line as one ipvsadm command and is not transactional. A line that
//!   its option parser rejects ends the whole restore (exit 2, or 255 with a usage hint); a
//!   command the kernel refuses prints the error and the restore goes on.
//! - **ipvsadm 1.31's `-R` does not skip `#` comments** (config_stream.c tests for `#` in the
//!   wrong buffer): a comment line ends the restore with a usage error. Debian's
//!   `ipvsadm-restore` and init script strip `^#` lines with grep for that reason. Nothing
//!   rendered here contains a comment.
//! - `-E` and `-e` replace every setting (an omitted `-p` turns persistence off, an omitted `-w`
//!   means weight 1), so [`render_changes`] always writes them in full.
//! - [`render_changes`] leaves `--tun-type` out (IPIP is the default), which keeps its output
//!   readable by ipvsadm releases older than 1.31 too.
//!
//! # Parsing
//!
//! [`parse_rules`] reads `ipvsadm -S -n` output, Debian's `/etc/ipvsadm.rules` and
//! [`render_rules`] output; [`parse_list_counts`] reads the default `ipvsadm -L -n` listing.
//! Both accept at most [`MAX_INPUT`] bytes, [`MAX_LINES`] lines and [`MAX_LINE`] bytes a line,
//! and report errors as [`ParseError`] (`line N: message`, N 1-based).
//!
//! The scheduler names ipvsadm knows but Switchboard does not (`fo`, `ovf`, `lblc`, `lblcr`,
//! `dh`, `twos`), persistence engines (`--pe`), one-packet scheduling (`-o`), connection
//! thresholds (`-x`, `-y`), tunnel types other than IPIP and tunnel options (`--tun-port`,
//! `--tun-*csum`) and SCTP services are errors naming the line and the option: **the director
//! refuses to manage an IPVS table holding anything Switchboard cannot express**, rather than
//! manage part of it and risk rewriting the rest.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use switchboard_core::ipvs::{
    Change, DEFAULT_PERSISTENCE_SECS, Forward, MAX_PERSISTENCE_SECS, MAX_WEIGHT, Persistence,
    Proto, RealServer, Table, Timeouts, VirtualAddr, VirtualService,
};
use switchboard_core::schedule::{HashOptions, SchedulerKind};

/// Most input bytes [`parse_rules`] and [`parse_list_counts`] accept: 1 MiB.
pub const MAX_INPUT: usize = 1 << 20;
/// Most lines they accept.
pub const MAX_LINES: usize = 100_000;
/// Longest line they accept, in bytes, line ending excluded.
pub const MAX_LINE: usize = 4096;

/// A parse failure: 1-based line number and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

impl ParseError {
    fn new(line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

// ---- rendering ----

/// The table as `ipvsadm -S -n` prints it and `ipvsadm -R` reads it: per service an `-A` line,
/// then an `-a` line per real server, in the table's order. Each line ends with `\n`.
pub fn render_rules(table: &Table) -> String {
    let mut out = String::new();
    for s in &table.services {
        out.push_str("-A ");
        write_service(&mut out, s);
        out.push('\n');
        for d in &s.dests {
            out.push_str("-a ");
            write_dest(&mut out, &s.vaddr, d);
            if d.forward == Forward::Tunnel {
                out.push_str(" --tun-type ipip");
            }
            out.push('\n');
        }
    }
    out
}

/// The changes as lines for `ipvsadm -R`: `-A`/`-E` with the full service options, `-D SERVICE`,
/// `-a`/`-e SERVICE -r RIP:PORT -g|-m|-i -w W`, `-d SERVICE -r RIP:PORT`. Each line ends with
/// `\n`.
pub fn render_changes(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes {
        match c {
            Change::AddService(s) | Change::EditService(s) => {
                out.push_str(if matches!(c, Change::AddService(_)) {
                    "-A "
                } else {
                    "-E "
                });
                write_service(&mut out, s);
            }
            Change::DeleteService(v) => {
                out.push_str("-D ");
                write_vaddr(&mut out, v);
            }
            Change::AddDest(v, d) | Change::EditDest(v, d) => {
                out.push_str(if matches!(c, Change::AddDest(..)) {
                    "-a "
                } else {
                    "-e "
                });
                write_dest(&mut out, v, d);
            }
            Change::DeleteDest(v, a) => {
                out.push_str("-d ");
                write_vaddr(&mut out, v);
                out.push_str(" -r ");
                write_addr(&mut out, *a);
            }
        }
        out.push('\n');
    }
    out
}

/// `--set TCP TCPFIN UDP\n` (0 = leave unchanged), for `ipvsadm -R` or as ipvsadm's arguments.
pub fn render_timeouts(t: &Timeouts) -> String {
    format!("--set {} {} {}\n", t.tcp, t.tcpfin, t.udp)
}

fn write_vaddr(out: &mut String, v: &VirtualAddr) {
    match v {
        VirtualAddr::Inet { proto, addr } => {
            out.push_str(match proto {
                Proto::Tcp => "-t ",
                Proto::Udp => "-u ",
            });
            write_addr(out, *addr);
        }
        VirtualAddr::FwMark { mark, ipv6 } => {
            let _ = write!(out, "-f {mark}");
            if *ipv6 {
                out.push_str(" -6");
            }
        }
    }
}

/// `a.b.c.d:port` or `[v6]:port`, never a scope id.
fn write_addr(out: &mut String, a: SocketAddr) {
    let _ = match a {
        SocketAddr::V4(a) => write!(out, "{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => write!(out, "[{}]:{}", a.ip(), a.port()),
    };
}

fn write_service(out: &mut String, s: &VirtualService) {
    write_vaddr(out, &s.vaddr);
    let _ = write!(out, " -s {}", s.scheduler);
    if let Some(p) = s.persistence {
        let _ = write!(out, " -p {}", p.timeout_secs);
        let ipv6 = s.vaddr.is_ipv6();
        let prefix = p.prefix_len(ipv6);
        if ipv6 && prefix != 128 {
            let _ = write!(out, " -M {prefix}");
        } else if !ipv6 && prefix != 32 {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            let _ = write!(out, " -M {}", Ipv4Addr::from(mask));
        }
    }
    let prefix = match s.scheduler {
        SchedulerKind::Sh => "sh",
        SchedulerKind::Mh => "mh",
        _ => return,
    };
    let mut names = Vec::new();
    if s.flags.fallback {
        names.push(format!("{prefix}-fallback"));
    }
    if s.flags.port {
        names.push(format!("{prefix}-port"));
    }
    if !names.is_empty() {
        let _ = write!(out, " -b {}", names.join(","));
    }
}

fn write_dest(out: &mut String, v: &VirtualAddr, d: &RealServer) {
    write_vaddr(out, v);
    out.push_str(" -r ");
    write_addr(out, d.addr);
    let _ = write!(out, " {} -w {}", d.forward.switch(), d.weight);
}

// ---- input limits ----

/// The input's lines, numbered from 1, after the size checks; a line over a limit is an error.
fn lines(
    text: &str,
) -> Result<impl Iterator<Item = (usize, Result<&str, ParseError>)>, ParseError> {
    if text.len() > MAX_INPUT {
        let at = text.as_bytes()[..MAX_INPUT]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        return Err(ParseError::new(
            at,
            format!("input longer than {MAX_INPUT} bytes"),
        ));
    }
    Ok(text.lines().enumerate().map(|(i, line)| {
        let n = i + 1;
        let line = if n > MAX_LINES {
            Err(ParseError::new(n, format!("more than {MAX_LINES} lines")))
        } else if line.len() > MAX_LINE {
            Err(ParseError::new(
                n,
                format!("line longer than {MAX_LINE} bytes"),
            ))
        } else {
            Ok(line)
        };
        (n, line)
    }))
}

// ---- rules ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cmd {
    AddService,
    AddServer,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Opt {
    Tcp,
    Udp,
    FwMark,
    Ipv6,
    Scheduler,
    Persistent,
    Netmask,
    SchedFlags,
    RealServer,
    Forward(Forward),
    Weight,
    TunType,
}

enum Arg {
    /// Takes no value.
    None,
    /// Takes a value.
    Required,
    /// Takes a value if the next word does not start with `-` (popt's optional argument).
    Optional,
}

enum Known {
    Cmd(Cmd),
    Opt(Opt, Arg),
    /// A command ipvsadm has that does not describe a table.
    OtherCmd,
    /// An option Switchboard cannot express, and why.
    Unsupported(&'static str),
}

/// ipvsadm 1.31's options, by short and long name.
fn lookup(name: &str) -> Option<Known> {
    use Known::*;
    const THRESHOLDS: &str = "connection thresholds (-x/-y) are not supported by Switchboard";
    const TUNNEL: &str =
        "tunnel options are not supported by Switchboard (only plain IPIP tunnels, -i)";
    Some(match name {
        "-A" | "--add-service" => Cmd(self::Cmd::AddService),
        "-a" | "--add-server" => Cmd(self::Cmd::AddServer),
        "-t" | "--tcp-service" => Opt(self::Opt::Tcp, Arg::Required),
        "-u" | "--udp-service" => Opt(self::Opt::Udp, Arg::Required),
        "-f" | "--fwmark-service" => Opt(self::Opt::FwMark, Arg::Required),
        "-6" | "--ipv6" => Opt(self::Opt::Ipv6, Arg::None),
        "-s" | "--scheduler" => Opt(self::Opt::Scheduler, Arg::Required),
        "-p" | "--persistent" => Opt(self::Opt::Persistent, Arg::Optional),
        "-M" | "--netmask" => Opt(self::Opt::Netmask, Arg::Required),
        "-b" | "--sched-flags" => Opt(self::Opt::SchedFlags, Arg::Required),
        "-r" | "--real-server" => Opt(self::Opt::RealServer, Arg::Required),
        "-g" | "--gatewaying" => Opt(self::Opt::Forward(Forward::Dr), Arg::None),
        "-m" | "--masquerading" => Opt(self::Opt::Forward(Forward::Nat), Arg::None),
        "-i" | "--ipip" => Opt(self::Opt::Forward(Forward::Tunnel), Arg::None),
        "-w" | "--weight" => Opt(self::Opt::Weight, Arg::Required),
        "--tun-type" => Opt(self::Opt::TunType, Arg::Required),
        "-E" | "--edit-service" | "-D" | "--delete-service" | "-C" | "--clear" | "-e"
        | "--edit-server" | "-d" | "--delete-server" | "-L" | "-l" | "--list" | "-Z" | "--zero"
        | "-R" | "--restore" | "-S" | "--save" | "--set" | "--start-daemon" | "--stop-daemon"
        | "-h" | "--help" | "-v" | "--version" => OtherCmd,
        "--sctp-service" => Unsupported("SCTP services are not supported by Switchboard"),
        "--pe" => Unsupported("persistence engines (--pe) are not supported by Switchboard"),
        "-o" | "--ops" => {
            Unsupported("one-packet scheduling (-o/--ops) is not supported by Switchboard")
        }
        "-x" | "--u-threshold" | "-y" | "--l-threshold" => Unsupported(THRESHOLDS),
        "--tun-port" | "--tun-nocsum" | "--tun-csum" | "--tun-remcsum" => Unsupported(TUNNEL),
        _ => return None,
    })
}

/// The words of one line, with options and their values gathered.
struct Words<'a> {
    cmd: Cmd,
    opts: Vec<(Opt, &'a str, Option<&'a str>)>,
}

impl<'a> Words<'a> {
    fn get(&self, opt: Opt) -> Option<(&'a str, Option<&'a str>)> {
        self.opts
            .iter()
            .find(|(o, ..)| *o == opt)
            .map(|&(_, name, value)| (name, value))
    }

    fn value(&self, opt: Opt) -> Option<&'a str> {
        self.get(opt).and_then(|(_, v)| v)
    }

    fn has(&self, opt: Opt) -> bool {
        self.get(opt).is_some()
    }

    fn forward(&self) -> Option<Forward> {
        self.opts.iter().find_map(|(o, ..)| match o {
            Opt::Forward(f) => Some(*f),
            _ => None,
        })
    }
}

fn split_words(n: usize, line: &str) -> Result<Option<Words<'_>>, ParseError> {
    let err = |m: String| ParseError::new(n, m);
    let line = line.split('#').next().unwrap_or("");
    let mut words = line.split_ascii_whitespace().peekable();
    if words.peek() == Some(&"ipvsadm") {
        words.next();
    }
    let mut cmd = None;
    let mut opts: Vec<(Opt, &str, Option<&str>)> = Vec::new();
    while let Some(word) = words.next() {
        if !word.starts_with('-') || word == "-" {
            return Err(err(format!("unexpected argument `{word}`")));
        }
        let (name, inline) = match word.split_once('=') {
            Some((name, value)) if word.starts_with("--") => (name, Some(value)),
            _ => (word, None),
        };
        let known = lookup(name).ok_or_else(|| err(format!("unknown option `{name}`")))?;
        match known {
            Known::Cmd(c) => {
                if cmd.is_some() {
                    return Err(err(format!("more than one command (`{name}`)")));
                }
                cmd = Some(c);
            }
            Known::OtherCmd => {
                return Err(err(format!(
                    "`{name}` does not describe a table: rules have only -A and -a lines"
                )));
            }
            Known::Unsupported(why) => return Err(err(format!("`{name}`: {why}"))),
            Known::Opt(opt, arg) => {
                let value = match arg {
                    Arg::None => {
                        if inline.is_some() {
                            return Err(err(format!("`{name}` takes no value")));
                        }
                        None
                    }
                    Arg::Required => Some(match inline {
                        Some(v) => v,
                        None => words
                            .next()
                            .ok_or_else(|| err(format!("`{name}` needs a value")))?,
                    }),
                    Arg::Optional => match inline {
                        Some(v) => Some(v),
                        None => words.next_if(|w| !w.starts_with('-')),
                    },
                };
                let same_slot = |o: &Opt| {
                    *o == opt
                        || matches!((o, opt), (Opt::Forward(_), Opt::Forward(_)))
                        || (is_service(*o) && is_service(opt))
                };
                if let Some((_, first, _)) = opts.iter().find(|(o, ..)| same_slot(o)) {
                    return Err(err(if first == &name {
                        format!("`{name}` given twice")
                    } else {
                        format!("`{name}` conflicts with `{first}`")
                    }));
                }
                opts.push((opt, name, value));
            }
        }
    }
    match cmd {
        Some(cmd) => Ok(Some(Words { cmd, opts })),
        None if opts.is_empty() => Ok(None),
        None => Err(err("no command: expected -A or -a".to_owned())),
    }
}

fn is_service(o: Opt) -> bool {
    matches!(o, Opt::Tcp | Opt::Udp | Opt::FwMark)
}

/// Reads rules as `ipvsadm -S -n` writes them (and [`render_rules`], and Debian's
/// `/etc/ipvsadm.rules`): `-A` and `-a` lines with ipvsadm's short or long options (a long
/// option's value may follow `=`), an optional leading `ipvsadm` word, `#` comments and blank
/// lines. ipvsadm's defaults apply to what a line leaves out: scheduler wlc, a bare `-p` 360 s,
/// forwarding `-g`, weight 1, a real server's port the virtual port. Addresses and ports must be
/// numeric. See the module docs for what is refused.
pub fn parse_rules(text: &str) -> Result<Table, ParseError> {
    let mut table = Table::default();
    // Where each service and real server was added, for duplicates.
    let mut services: Vec<(VirtualAddr, usize)> = Vec::new();
    let mut dests: std::collections::HashMap<(VirtualAddr, SocketAddr), usize> =
        std::collections::HashMap::new();
    for (n, line) in lines(text)? {
        let Some(words) = split_words(n, line?)? else {
            continue;
        };
        let err = |m: String| ParseError::new(n, m);
        let vaddr = service_of(n, &words)?;
        match words.cmd {
            Cmd::AddService => {
                let misplaced = words.opts.iter().find(|(o, ..)| {
                    matches!(
                        o,
                        Opt::RealServer | Opt::Weight | Opt::TunType | Opt::Forward(_)
                    )
                });
                if let Some((_, name, _)) = misplaced {
                    return Err(err(format!("`{name}` does not belong on an -A line")));
                }
                if let Some(&(_, first)) = services.iter().find(|(v, _)| *v == vaddr) {
                    return Err(err(format!("{vaddr} was already added at line {first}")));
                }
                let service = service_settings(n, &words, vaddr)?;
                services.push((vaddr, n));
                table.services.push(service);
            }
            Cmd::AddServer => {
                let misplaced = words.opts.iter().find(|(o, ..)| {
                    matches!(
                        o,
                        Opt::Scheduler | Opt::Persistent | Opt::Netmask | Opt::SchedFlags
                    )
                });
                if let Some((_, name, _)) = misplaced {
                    return Err(err(format!("`{name}` does not belong on an -a line")));
                }
                let rs = real_server(n, &words, &vaddr)?;
                let Some(i) = services.iter().position(|(v, _)| *v == vaddr) else {
                    return Err(err(format!(
                        "real server for {vaddr}, which no earlier -A line adds"
                    )));
                };
                if let Some(first) = dests.insert((vaddr, rs.addr), n) {
                    return Err(err(format!(
                        "real server {} was already added to {vaddr} at line {first}",
                        rs.addr
                    )));
                }
                table.services[i].dests.push(rs);
            }
        }
    }
    Ok(table)
}

fn service_of(n: usize, w: &Words<'_>) -> Result<VirtualAddr, ParseError> {
    let err = |m: String| ParseError::new(n, m);
    let ipv6 = w.has(Opt::Ipv6);
    let found = w.opts.iter().find(|(o, ..)| is_service(*o));
    let Some(&(opt, name, value)) = found else {
        return Err(err("no service: expected -t, -u or -f".to_owned()));
    };
    let value = value.unwrap_or_default();
    if opt == Opt::FwMark {
        let mark = parse_mark(value)
            .ok_or_else(|| err(format!("`{name}`: invalid firewall mark `{value}`")))?;
        return Ok(VirtualAddr::FwMark { mark, ipv6 });
    }
    if ipv6 {
        return Err(err("`-6` applies only to -f services".to_owned()));
    }
    let (ip, port) = parse_addr_port(value).ok_or_else(|| {
        err(format!(
            "`{name}`: invalid address `{value}` (numeric IP[:PORT] or [IPv6][:PORT])"
        ))
    })?;
    Ok(VirtualAddr::Inet {
        proto: if opt == Opt::Tcp {
            Proto::Tcp
        } else {
            Proto::Udp
        },
        addr: SocketAddr::new(ip, port.unwrap_or(0)),
    })
}

/// A firewall mark, 1..=4294967295. ipvsadm 1.31 prints marks with `%d`, so one above
/// 2147483647 comes out negative (`-f -1294967296` for 3000000000); such a value is read back
/// as the mark it stands for. (ipvsadm itself cannot restore that line; [`render_rules`] writes
/// the mark unsigned, which it can.)
fn parse_mark(s: &str) -> Option<u32> {
    let mark = match s.strip_prefix('-') {
        Some(_) => s.parse::<i32>().ok().filter(|&m| m < 0)?.cast_unsigned(),
        None => s.parse::<u32>().ok()?,
    };
    (mark > 0).then_some(mark)
}

/// `1.2.3.4`, `1.2.3.4:22`, `[2001:db8::1]`, `[2001:db8::1]:22` or `2001:db8::1`.
fn parse_addr_port(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, rest) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        let port = match rest {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':')?)?),
        };
        return Some((IpAddr::V6(ip), port));
    }
    if let Ok(ip) = s.parse::<Ipv6Addr>() {
        return Some((IpAddr::V6(ip), None));
    }
    match s.split_once(':') {
        Some((ip, port)) => Some((IpAddr::V4(ip.parse().ok()?), Some(parse_port(port)?))),
        None => Some((IpAddr::V4(s.parse().ok()?), None)),
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn service_settings(
    n: usize,
    w: &Words<'_>,
    vaddr: VirtualAddr,
) -> Result<VirtualService, ParseError> {
    let err = |m: String| ParseError::new(n, m);
    let scheduler = match w.value(Opt::Scheduler) {
        None => SchedulerKind::Wlc,
        Some(name) => name.parse().map_err(|_| {
            err(
                if ["fo", "ovf", "lblc", "lblcr", "dh", "twos"].contains(&name) {
                    format!(
                        "scheduler `{name}` is not supported by Switchboard (it supports rr, \
                         wrr, lc, wlc, sed, nq, sh, mh)"
                    )
                } else {
                    format!("unknown scheduler `{name}`")
                },
            )
        })?,
    };
    let mut flags = HashOptions::default();
    if let Some(list) = w.value(Opt::SchedFlags) {
        let prefix = match scheduler {
            SchedulerKind::Sh => Some("sh"),
            SchedulerKind::Mh => Some("mh"),
            _ => None,
        };
        for flag in list.split(',') {
            match (prefix, flag.split_once('-')) {
                (Some(p), Some((q, "fallback"))) if p == q => flags.fallback = true,
                (Some(p), Some((q, "port"))) if p == q => flags.port = true,
                _ if flag.starts_with("flag-") => {
                    return Err(err(format!(
                        "scheduler flag `{flag}` is not supported by Switchboard"
                    )));
                }
                _ => {
                    return Err(err(format!(
                        "scheduler flag `{flag}` does not apply to scheduler `{scheduler}`"
                    )));
                }
            }
        }
    }
    let persistence = match w.get(Opt::Persistent) {
        None => {
            if let Some((name, _)) = w.get(Opt::Netmask) {
                return Err(err(format!("`{name}` without -p")));
            }
            None
        }
        Some((name, value)) => {
            let timeout_secs = match value {
                None => DEFAULT_PERSISTENCE_SECS,
                Some(v) => v
                    .parse::<u32>()
                    .ok()
                    .filter(|t| (1..=MAX_PERSISTENCE_SECS).contains(t))
                    .ok_or_else(|| {
                        err(format!(
                            "`{name}`: invalid timeout `{v}` (1..={MAX_PERSISTENCE_SECS} seconds)"
                        ))
                    })?,
            };
            let netmask = match w.get(Opt::Netmask) {
                None => None,
                Some((name, value)) => parse_mask(value.unwrap_or_default(), vaddr.is_ipv6())
                    .map_err(|m| err(format!("`{name}`: {m}")))?,
            };
            Some(Persistence {
                timeout_secs,
                netmask,
            })
        }
    };
    Ok(VirtualService {
        vaddr,
        scheduler,
        flags,
        persistence,
        dests: Vec::new(),
    })
}

/// A prefix length, `None` for a full-length mask.
fn parse_mask(s: &str, ipv6: bool) -> Result<Option<u8>, String> {
    if ipv6 {
        let p = s
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=128).contains(p))
            .ok_or_else(|| format!("invalid IPv6 prefix length `{s}` (1..=128)"))?;
        return Ok((p != 128).then_some(p));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "an IPv4 mask must be dotted, e.g. 255.255.255.0 (ipvsadm reads `{s}` as 0.0.0.{s})"
        ));
    }
    let mask = u32::from(
        s.parse::<Ipv4Addr>()
            .map_err(|_| format!("invalid IPv4 netmask `{s}`"))?,
    );
    let p = mask.leading_ones();
    if mask.checked_shl(p).unwrap_or(0) != 0 {
        return Err(format!("netmask `{s}` is not contiguous"));
    }
    // p <= 32
    Ok((p != 32).then_some(p as u8))
}

fn real_server(n: usize, w: &Words<'_>, vaddr: &VirtualAddr) -> Result<RealServer, ParseError> {
    let err = |m: String| ParseError::new(n, m);
    let Some((name, value)) = w.get(Opt::RealServer) else {
        return Err(err("an -a line needs -r".to_owned()));
    };
    let value = value.unwrap_or_default();
    let (ip, port) = parse_addr_port(value).ok_or_else(|| {
        err(format!(
            "`{name}`: invalid address `{value}` (numeric IP[:PORT] or [IPv6][:PORT])"
        ))
    })?;
    let addr = SocketAddr::new(ip, port.or(vaddr.port()).unwrap_or(0));
    let forward = w.forward().unwrap_or(Forward::Dr);
    if let Some((name, value)) = w.get(Opt::TunType) {
        let value = value.unwrap_or_default();
        if forward != Forward::Tunnel {
            return Err(err(format!(
                "`{name}` applies only to -i (tunnelled) real servers"
            )));
        }
        if value != "ipip" {
            return Err(err(format!(
                "`{name} {value}`: only ipip tunnels are supported by Switchboard"
            )));
        }
    }
    let weight = match w.get(Opt::Weight) {
        None => 1,
        Some((name, value)) => {
            let value = value.unwrap_or_default();
            value
                .parse::<u32>()
                .ok()
                .filter(|&v| v <= MAX_WEIGHT)
                .ok_or_else(|| {
                    err(format!(
                        "`{name}`: invalid weight `{value}` (0..={MAX_WEIGHT})"
                    ))
                })?
        }
    };
    Ok(RealServer {
        addr,
        forward,
        weight,
    })
}

// ---- ipvsadm -L -n ----

/// Reads the default `ipvsadm -L -n` listing (no `--stats`, `--rate`, `--thresholds`,
/// `--persistent-conn` or `--tun-info`) into `(service, real server, active, inactive)` per
/// real server, in listing order. Service rows are `TCP  VIP:PORT …`, `UDP  VIP:PORT …`,
/// `FWM  MARK …` or `FWM  MARK IPv6 …` (scheduler and flags after them are ignored); real-server
/// rows are `  -> RIP:PORT FORWARD WEIGHT ACTIVE INACTIVE`; the title lines are skipped.
pub fn parse_list_counts(
    text: &str,
) -> Result<Vec<(VirtualAddr, SocketAddr, u64, u64)>, ParseError> {
    let mut out = Vec::new();
    let mut service: Option<VirtualAddr> = None;
    for (n, line) in lines(text)? {
        let line = line?;
        let err = |m: String| ParseError::new(n, m);
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["IP", "Virtual", "Server", ..] | ["Prot", ..] | ["->", "RemoteAddress:Port", ..] => {}
            ["->", rest @ ..] => {
                let Some(v) = service else {
                    return Err(err("real server row before any service row".to_owned()));
                };
                let [addr, forward, weight, active, inactive] = rest else {
                    return Err(err(format!(
                        "expected `-> RIP:PORT FORWARD WEIGHT ACTIVECONN INACTCONN` (the \
                         default ipvsadm -L -n listing), found {} columns",
                        rest.len()
                    )));
                };
                let rip = match parse_addr_port(addr) {
                    Some((ip, Some(port))) => SocketAddr::new(ip, port),
                    _ => {
                        return Err(err(format!(
                            "invalid real server `{addr}` (numeric, from ipvsadm -L -n)"
                        )));
                    }
                };
                if !["Route", "Masq", "Tunnel", "Local"].contains(forward) {
                    return Err(err(format!("unknown forwarding method `{forward}`")));
                }
                if weight.parse::<i64>().is_err() {
                    return Err(err(format!("invalid weight `{weight}`")));
                }
                let count = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| err(format!("invalid connection count `{s}`")))
                };
                out.push((v, rip, count(active)?, count(inactive)?));
            }
            ["TCP" | "UDP", addr, ..] => {
                let proto = if words[0] == "TCP" {
                    Proto::Tcp
                } else {
                    Proto::Udp
                };
                let addr = match parse_addr_port(addr) {
                    Some((ip, Some(port))) => SocketAddr::new(ip, port),
                    _ => {
                        return Err(err(format!(
                            "invalid virtual service `{addr}` (numeric, from ipvsadm -L -n)"
                        )));
                    }
                };
                service = Some(VirtualAddr::Inet { proto, addr });
            }
            ["FWM", mark, rest @ ..] => {
                let mark = parse_mark(mark)
                    .ok_or_else(|| err(format!("invalid firewall mark `{mark}`")))?;
                let ipv6 = rest.first() == Some(&"IPv6");
                service = Some(VirtualAddr::FwMark { mark, ipv6 });
            }
            ["SCTP", ..] => {
                return Err(err(
                    "SCTP services are not supported by Switchboard".to_owned()
                ));
            }
            [first, ..] => {
                return Err(err(format!(
                    "unexpected `{first}`: expected a TCP, UDP or FWM service row or an `->` \
                     real server row"
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn masks_render_dotted_for_ipv4_and_as_a_prefix_for_ipv6() {
        for (prefix, text) in [
            (0u8, "0.0.0.0"),
            (1, "128.0.0.0"),
            (24, "255.255.255.0"),
            (31, "255.255.255.254"),
        ] {
            let s = VirtualService {
                persistence: Some(Persistence {
                    timeout_secs: 60,
                    netmask: Some(prefix),
                }),
                ..VirtualService::new(
                    VirtualAddr::FwMark {
                        mark: 1,
                        ipv6: false,
                    },
                    SchedulerKind::Rr,
                )
            };
            let mut out = String::new();
            write_service(&mut out, &s);
            assert_eq!(out, format!("-f 1 -s rr -p 60 -M {text}"));
            assert_eq!(parse_mask(text, false), Ok(Some(prefix)));
        }
        assert_eq!(parse_mask("255.255.255.255", false), Ok(None));
        assert_eq!(parse_mask("128", true), Ok(None));
        assert_eq!(parse_mask("64", true), Ok(Some(64)));
        assert!(
            parse_mask("255.0.255.0", false)
                .unwrap_err()
                .contains("not contiguous")
        );
        assert!(parse_mask("24", false).unwrap_err().contains("0.0.0.24"));
        assert!(parse_mask("0", true).is_err());
    }

    #[test]
    fn addresses_parse_in_every_form_ipvsadm_takes() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_addr_port("10.0.0.1:22"), Some((v4, Some(22))));
        assert_eq!(parse_addr_port("10.0.0.1"), Some((v4, None)));
        assert_eq!(parse_addr_port("[2001:db8::1]:22"), Some((v6, Some(22))));
        assert_eq!(parse_addr_port("[2001:db8::1]"), Some((v6, None)));
        assert_eq!(parse_addr_port("2001:db8::1"), Some((v6, None)));
        for bad in [
            "10.0.0.1:ssh",
            "host:22",
            "[2001:db8::1]22",
            "10.0.0.1:+22",
            "10.0.0.1:65536",
            "",
        ] {
            assert_eq!(parse_addr_port(bad), None, "{bad}");
        }
    }
}
