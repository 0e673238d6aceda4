//! X2Go's broker protocol: the session-profiles file, its ACLs, the request form and the
//! `/plain/` and `/json/` reply bodies (`shared/reference/x2go-broker.md` §2–3 describes them).
//!
//! Pure parse and format code: the broker's `x2go` module does the I/O. Every parser has a size
//! limit; `fuzz/` has targets for the profiles file and the request form.

pub mod acl;
pub mod dialect;
pub mod ini;

use acl::Acl;
use serde::Serialize;
use std::fmt;
use std::net::IpAddr;
use switchboard_core::config::{Host, HostAddr};

/// Largest request body accepted on `/plain/` and `/json/`.
pub const MAX_FORM: usize = 64 << 10;
/// Longest `pubkey` accepted.
pub const MAX_PUBKEY: usize = 16 << 10;
/// Most hosts in one profile.
pub const MAX_HOSTS: usize = 4096;

/// What the client sees instead of a host when nothing can be handed out.
pub const NO_SERVER: &str = "no-server-available";
/// What the client sees when a multi-host profile has no eligible host (x2gobroker's wording).
pub const NO_X2GO_SERVER: &str = "no-X2Go-Server-available";
/// The `key=` value announced for autologin profiles in the profile list.
pub const KEY_PLACEHOLDER: &str = "<will-be-exchanged-during-session-selection>";

/// Desktop commands: upper-cased and forced to `rootless=0` in profile lists, as x2gobroker does.
pub const DESKTOPS: &[&str] = &[
    "KDE", "GNOME", "XFCE", "CINNAMON", "MATE", "LXDE", "TRINITY", "UNITY", "ICEWM", "OPENBOX",
    "XDMCP",
];

/// Profile keys that python3-x2go 0.6.1.3 knows (its `X2GO_SESSIONPROFILE_DEFAULTS`). It fails
/// on any other key in a `/json/` profile list, so only these are sent there.
pub const JSON_KEYS: &[&str] = &[
    "autologin",
    "autoconnect",
    "autostart",
    "setsessiontitle",
    "sessiontitle",
    "speed",
    "pack",
    "quality",
    "iconvto",
    "iconvfrom",
    "useiconv",
    "usesshproxy",
    "sshproxyhost",
    "sshproxyport",
    "sshproxyuser",
    "sshproxykeyfile",
    "sshproxytype",
    "sshproxysameuser",
    "sshproxysamepass",
    "sshproxyautologin",
    "uniquehostkeyaliases",
    "useexports",
    "restoreexports",
    "fstunnel",
    "export",
    "usemimebox",
    "mimeboxextensions",
    "mimeboxaction",
    "fullscreen",
    "clipboard",
    "width",
    "height",
    "maxdim",
    "dpi",
    "setdpi",
    "xinerama",
    "multidisp",
    "display",
    "usekbd",
    "layout",
    "type",
    "variant",
    "sound",
    "soundsystem",
    "startsoundsystem",
    "soundtunnel",
    "defsndport",
    "sndport",
    "name",
    "icon",
    "host",
    "user",
    "key",
    "sshport",
    "krblogin",
    "forwardsshagent",
    "rootless",
    "applications",
    "command",
    "published",
    "directrdp",
    "directrdpsettings",
    "rdpclient",
    "rdpport",
    "rdpoptions",
    "rdpserver",
    "print",
    "xdmcpserver",
    "kdrive",
];

/// A load or parse error in the profiles file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileError {
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// The profile (section), where known.
    pub profile: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ProfileError {
    /// An error at a line.
    pub fn at(line: Option<usize>, message: impl Into<String>) -> ProfileError {
        ProfileError {
            line,
            profile: None,
            message: message.into(),
        }
    }

    fn in_profile(mut self, id: &str) -> ProfileError {
        self.profile.get_or_insert_with(|| id.to_owned());
        self
    }
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        if let Some(p) = &self.profile {
            write!(f, "profile [{p}]: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProfileError {}

/// A typed profile value (the type of the built-in default decides, as in x2gobroker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Text.
    Str(String),
    /// A number.
    Int(i64),
    /// A flag.
    Bool(bool),
    /// A comma-separated list.
    List(Vec<String>),
}

impl Value {
    /// As written in a `/plain/` profile: lists joined with `,`, flags as `0`/`1`.
    pub fn plain(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => u8::from(*b).to_string(),
            Value::List(l) => l.join(","),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    List,
}

/// x2gobroker's built-in profile defaults, in its order.
const DEFAULTS: &[(&str, Kind, &str)] = &[
    ("command", Kind::Str, "TERMINAL"),
    ("kdrive", Kind::Bool, "false"),
    ("defsndport", Kind::Bool, "true"),
    ("useiconv", Kind::Bool, "false"),
    ("iconvfrom", Kind::Str, "UTF-8"),
    ("height", Kind::Int, "600"),
    ("export", Kind::Str, ""),
    ("quality", Kind::Int, "9"),
    ("fullscreen", Kind::Bool, "false"),
    ("layout", Kind::Str, ""),
    ("useexports", Kind::Bool, "true"),
    ("width", Kind::Int, "800"),
    ("speed", Kind::Int, "2"),
    ("soundsystem", Kind::Str, "pulse"),
    ("print", Kind::Bool, "true"),
    ("type", Kind::Str, "auto"),
    ("sndport", Kind::Int, "4713"),
    ("xinerama", Kind::Bool, "true"),
    ("variant", Kind::Str, ""),
    ("usekbd", Kind::Bool, "true"),
    ("fstunnel", Kind::Bool, "true"),
    (
        "applications",
        Kind::List,
        "TERMINAL,WWWBROWSER,MAILCLIENT,OFFICE",
    ),
    ("multidisp", Kind::Bool, "false"),
    ("sshproxyport", Kind::Int, "22"),
    ("sound", Kind::Bool, "true"),
    ("rootless", Kind::Bool, "true"),
    ("iconvto", Kind::Str, "UTF-8"),
    ("soundtunnel", Kind::Bool, "true"),
    ("dpi", Kind::Int, "96"),
    ("sshport", Kind::Int, "22"),
    ("setdpi", Kind::Int, "0"),
    ("pack", Kind::Str, "16m-jpeg"),
    ("user", Kind::Str, "BROKER_USER"),
    ("host", Kind::List, "localhost"),
    ("directrdp", Kind::Bool, "false"),
];

fn kind_of(key: &str) -> Kind {
    DEFAULTS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map_or(Kind::Str, |(_, kind, _)| *kind)
}

/// Splits a list value: `a,b` or a Python list literal `['a', "b"]` (read, never evaluated).
/// Items are trimmed; empty items dropped.
pub fn split_list(v: &str) -> Vec<String> {
    let t = v.trim();
    if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .split(',')
            .map(|i| i.trim().trim_matches(['\'', '"']).trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect();
    }
    t.split([',', '\n'])
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty())
        .collect()
}

fn typed(key: &str, value: &str) -> Result<Value, String> {
    match kind_of(key) {
        Kind::Str => Ok(Value::Str(value.to_owned())),
        Kind::Int => value
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| format!("key `{key}`: {value:?} is not a whole number")),
        Kind::Bool => match value.trim().to_lowercase().as_str() {
            "1" | "yes" | "true" | "on" => Ok(Value::Bool(true)),
            "0" | "no" | "false" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("key `{key}`: {value:?} is not true or false")),
        },
        Kind::List => Ok(Value::List(split_list(value))),
    }
}

/// A host of a profile: the name the client and agents know, and where the client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileHost {
    /// Host name (what the agent and X2Go's session database report).
    pub name: String,
    /// Address and SSH port the client is sent to.
    pub address: HostAddr,
}

impl ProfileHost {
    /// What goes after `SERVER:` on `/plain/`. X2Go Client splits that line on `:`, so a host
    /// reachable only by an IPv6 literal is given by name there.
    pub fn plain_server(&self) -> String {
        match &self.address.host {
            Host::Ip(IpAddr::V6(_)) => self.name.clone(),
            _ => self.address.host_str(),
        }
    }
}

/// One profile, ready to render for a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The profile id (section name; becomes the pool name).
    pub id: String,
    /// Header line.
    pub line: usize,
    /// Client keys in order, without `host`, `acl-*`, `broker-*`, `default` and `not-set` values.
    pub keys: Vec<(String, Value)>,
    /// Hosts in order.
    pub hosts: Vec<ProfileHost>,
    /// `broker-*` keys as written, with their lines.
    pub broker: Vec<(String, String, usize)>,
    /// The ACL.
    pub acl: Acl,
}

fn valid_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        && !n.starts_with('-')
}

/// Parses one `host=` item: `name`, `name (address)` or `name (address:port)`, where the
/// address is a DNS name, an IPv4 address or an IPv6 address (`[::1]:2200`, `[::1]` or `::1`).
pub fn parse_host(item: &str, sshport: u16) -> Result<ProfileHost, String> {
    let item = item.trim();
    let (name, addr) = match item.split_once('(') {
        Some((name, rest)) => {
            let Some(addr) = rest.trim_end().strip_suffix(')') else {
                return Err(format!("host {item:?}: expected `name (address:port)`"));
            };
            (name.trim(), Some(addr.trim()))
        }
        None => (item, None),
    };
    if !valid_host_name(name) {
        return Err(format!("host {item:?}: {name:?} is not a host name"));
    }
    let address = match addr {
        None => HostAddr {
            host: Host::Name(name.to_owned()),
            port: sshport,
        },
        Some(a) if !a.starts_with('[') && a.matches(':').count() >= 2 => {
            let ip: std::net::Ipv6Addr = a
                .parse()
                .map_err(|_| format!("host {item:?}: {a:?} is not an IPv6 address"))?;
            HostAddr::ip(IpAddr::V6(ip), sshport)
        }
        Some(a) => HostAddr::parse_with_default_port(a, sshport)
            .map_err(|e| format!("host {item:?}: {e}"))?,
    };
    if let Host::Name(n) = &address.host
        && !valid_host_name(n)
    {
        return Err(format!(
            "host {item:?}: {n:?} is not a host name or address"
        ));
    }
    Ok(ProfileHost {
        name: name.to_owned(),
        address,
    })
}

/// Reads the session-profiles file into profiles sorted by id.
pub fn parse_profiles(text: &str) -> Result<Vec<Profile>, ProfileError> {
    let (defaults, sections) = ini::parse(text)?;
    let mut out = Vec::with_capacity(sections.len());
    for s in sections {
        out.push(build(&s, &defaults).map_err(|e| e.in_profile(&s.name))?);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn build(s: &ini::Section, defaults: &[ini::Entry]) -> Result<Profile, ProfileError> {
    let id = &s.name;
    if id.len() > 128 || id.contains(['[', ']', '\n']) {
        return Err(ProfileError::at(
            Some(s.line),
            "a profile id is at most 128 characters, without brackets",
        ));
    }
    // Own options first, then [DEFAULT]'s that the section does not set (configparser's view).
    let mut entries: Vec<&ini::Entry> = s.entries.iter().collect();
    for d in defaults {
        if !s.entries.iter().any(|e| e.key == d.key) {
            entries.push(d);
        }
    }
    let mut keys: Vec<(String, Value)> = Vec::new();
    let mut broker = Vec::new();
    let mut acl_keys = Vec::new();
    let mut host_value: Option<(&str, usize)> = None;
    for e in &entries {
        if e.key.starts_with("acl-") {
            acl_keys.push((e.key.as_str(), e.value.as_str(), e.line));
            continue;
        }
        if e.key.starts_with("broker-") {
            broker.push((e.key.clone(), e.value.clone(), e.line));
            continue;
        }
        if e.key == "default" || e.value == "not-set" {
            continue;
        }
        if e.key == "host" {
            host_value = Some((&e.value, e.line));
            continue;
        }
        let v = typed(&e.key, &e.value).map_err(|m| ProfileError::at(Some(e.line), m))?;
        keys.push((e.key.clone(), v));
    }
    for (k, _, d) in DEFAULTS {
        if *k != "host" && !keys.iter().any(|(have, _)| have == k) {
            // Only keys removed as `not-set` stay out.
            if entries.iter().any(|e| e.key == *k && e.value == "not-set") {
                continue;
            }
            keys.push((
                (*k).to_owned(),
                typed(k, d).map_err(|m| ProfileError::at(None, m))?,
            ));
        }
    }
    let sshport = match keys.iter().find(|(k, _)| k == "sshport") {
        Some((_, Value::Int(p))) => u16::try_from(*p).ok().filter(|p| *p > 0).ok_or_else(|| {
            ProfileError::at(Some(s.line), format!("sshport {p} is not a TCP port"))
        })?,
        _ => 22,
    };
    let (host_text, host_line) = host_value.unwrap_or(("localhost", s.line));
    let items = split_list(host_text);
    if items.is_empty() {
        return Err(ProfileError::at(Some(host_line), "key `host`: no hosts"));
    }
    if items.len() > MAX_HOSTS {
        return Err(ProfileError::at(
            Some(host_line),
            format!("key `host`: more than {MAX_HOSTS} hosts"),
        ));
    }
    let mut hosts: Vec<ProfileHost> = Vec::new();
    for item in items {
        let h = parse_host(&item, sshport)
            .map_err(|m| ProfileError::at(Some(host_line), format!("key `host`: {m}")))?;
        if hosts.iter().any(|x| x.name == h.name) {
            return Err(ProfileError::at(
                Some(host_line),
                format!("key `host`: {:?} is listed twice", h.name),
            ));
        }
        hosts.push(h);
    }
    let acl = Acl::from_keys(acl_keys)?;
    Ok(Profile {
        id: id.clone(),
        line: s.line,
        keys,
        hosts,
        broker,
        acl,
    })
}

impl Profile {
    /// A `broker-*` key's value.
    pub fn broker_key(&self, key: &str) -> Option<&str> {
        self.broker
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.as_str())
    }

    /// The profile as sent to `user`: `user=BROKER_USER` filled in, desktop commands upper-cased
    /// with `rootless=0`, autologin announced; `host` is every host name, or with a live session
    /// only its host plus `status=R|S` (`/plain/` only: python3-x2go does not know `status`).
    pub fn for_user(
        &self,
        user: &str,
        session: Option<(&str, char)>,
        autologin: bool,
        json: bool,
    ) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = Vec::with_capacity(self.keys.len() + 3);
        let desktop = self.keys.iter().any(|(k, v)| {
            k == "command"
                && matches!(v, Value::Str(c) if DESKTOPS.contains(&c.to_uppercase().as_str()))
        });
        for (k, v) in &self.keys {
            let v = match (k.as_str(), v) {
                ("user", Value::Str(u)) if u == "BROKER_USER" => Value::Str(user.to_owned()),
                ("command", Value::Str(c)) if desktop => Value::Str(c.to_uppercase()),
                ("rootless", _) if desktop => Value::Bool(false),
                _ => v.clone(),
            };
            out.push((k.clone(), v));
        }
        let hosts = match session {
            Some((host, _)) => vec![host.to_owned()],
            None => self.hosts.iter().map(|h| h.name.clone()).collect(),
        };
        out.insert(
            out.iter()
                .position(|(k, _)| k == "name")
                .map_or(0, |p| p + 1),
            ("host".to_owned(), Value::List(hosts)),
        );
        if let Some((_, status)) = session
            && !json
        {
            out.push(("status".to_owned(), Value::Str(status.to_string())));
        }
        if autologin {
            out.retain(|(k, _)| k != "autologin" && k != "key");
            out.push(("autologin".to_owned(), Value::Bool(true)));
            out.push(("key".to_owned(), Value::Str(KEY_PLACEHOLDER.to_owned())));
        }
        if json {
            out.retain(|(k, _)| JSON_KEYS.contains(&k.as_str()));
        }
        out
    }
}

/// A profile's `/plain/` listing (`[id]`, its keys and the blank line after them), rendered
/// once when the profiles are loaded: a request only fills in the parts that depend on it, the
/// user (`user=BROKER_USER`), the host list (one host when the user has a session there) and the
/// session's `status`. A realistic profile carries some 35 client keys; rendering them for
/// every request would make `listsessions` cost in proportion to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainListing {
    pieces: Vec<Piece>,
    /// Every host name, comma-separated (the host list without a session).
    hosts: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    User,
    Hosts,
    Status,
}

/// Stand-ins that no user or host name can contain (NUL), so that the rendering can find them.
const USER_SLOT: &str = "\u{0}user\u{0}";
const HOST_SLOT: &str = "\u{0}host\u{0}";

impl PlainListing {
    /// Appends the listing for `user`, with `session` (its host and `R`/`S`) if the user has one.
    pub fn write(&self, out: &mut String, user: &str, session: Option<(&str, char)>) {
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::User => out.push_str(&user.replace(['\n', '\r'], " ")),
                Piece::Hosts => match session {
                    Some((host, _)) => out.push_str(host),
                    None => out.push_str(&self.hosts),
                },
                Piece::Status => {
                    if let Some((_, status)) = session {
                        out.push_str("status=");
                        out.push(status);
                        out.push('\n');
                    }
                }
            }
        }
    }
}

impl Profile {
    /// This profile's `/plain/` listing, rendered now (see [`PlainListing`]). The rules are
    /// [`Profile::for_user`]'s: it is rendered through it, with stand-ins for what varies.
    pub fn plain_listing(&self, autologin: bool) -> PlainListing {
        let keys = self.for_user(USER_SLOT, Some((HOST_SLOT, 'S')), autologin, false);
        let mut pieces = Vec::new();
        let mut text = format!("[{}]\n", self.id);
        let mut cut = |text: &mut String, piece: Piece| {
            pieces.push(Piece::Text(std::mem::take(text)));
            pieces.push(piece);
        };
        for (k, v) in &keys {
            if k == "status" {
                cut(&mut text, Piece::Status);
                continue;
            }
            text.push_str(k);
            text.push('=');
            let value = v.plain().replace(['\n', '\r'], " ");
            let mut rest = value.as_str();
            while let Some(i) = rest.find('\u{0}') {
                text.push_str(&rest[..i]);
                let slot = &rest[i..];
                let (piece, len) = if slot.starts_with(USER_SLOT) {
                    (Piece::User, USER_SLOT.len())
                } else if slot.starts_with(HOST_SLOT) {
                    (Piece::Hosts, HOST_SLOT.len())
                } else {
                    // A NUL of the file itself (the parser keeps values as written).
                    text.push('\u{0}');
                    rest = &slot[1..];
                    continue;
                };
                cut(&mut text, piece);
                rest = &slot[len..];
            }
            text.push_str(rest);
            text.push('\n');
        }
        text.push('\n');
        pieces.push(Piece::Text(text));
        pieces.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
        PlainListing {
            pieces,
            hosts: self
                .hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// The `/plain/` reply to `listsessions`/`listprofiles` from pre-rendered listings, each with
/// the user's session in it if there is one; the same text as [`plain_list`] of
/// [`Profile::for_user`].
pub fn plain_list_rendered<'a>(
    authid: Option<&str>,
    user: &str,
    profiles: impl ExactSizeIterator<Item = (&'a PlainListing, Option<(&'a str, char)>)>,
) -> String {
    let mut s = plain_head(authid);
    if profiles.len() == 0 {
        return s;
    }
    s.push_str("START_USER_SESSIONS\n\n");
    for (listing, session) in profiles {
        listing.write(&mut s, user, session);
    }
    s.push_str("END_USER_SESSIONS\n");
    s
}

// ----- requests -----

/// The fields of a `/plain/` or `/json/` request. Its `Debug` leaves out the password, the
/// AUTHID and the pubkey.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Form {
    /// `task`.
    pub task: String,
    /// `user`: the broker user.
    pub user: String,
    /// `password`.
    pub password: String,
    /// `login`: the X2Go server account (defaults to `user`).
    pub login: String,
    /// `authid`.
    pub authid: String,
    /// `sid` (plain) or `profile-id` (JSON).
    pub profile: String,
    /// `pubkey`.
    pub pubkey: String,
    /// `clientevent` fields worth recording: `event`, `sid`, `server`, `cmd`, `display`.
    pub event: Vec<(String, String)>,
}

impl fmt::Debug for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Form")
            .field("task", &self.task)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("login", &self.login)
            .field(
                "authid",
                &if self.authid.is_empty() {
                    ""
                } else {
                    "<hidden>"
                },
            )
            .field("profile", &self.profile)
            .field("pubkey", &self.pubkey.len())
            .field("event", &self.event)
            .finish()
    }
}

impl Form {
    /// The X2Go server account asked for.
    pub fn login(&self) -> &str {
        if self.login.is_empty() {
            &self.user
        } else {
            &self.login
        }
    }
}

/// Parses a request body (`application/x-www-form-urlencoded`, which is also how bodies with
/// another content type are read, as x2gobroker does for X2Go Client bug #138). For repeated
/// fields the last one counts (tornado's `get_argument`).
pub fn parse_form(body: &[u8]) -> Result<Form, String> {
    if body.len() > MAX_FORM {
        return Err(format!("request body larger than {MAX_FORM} bytes"));
    }
    let mut f = Form::default();
    let mut sid = String::new();
    let mut profile_id = String::new();
    for (k, v) in form_urlencoded::parse(body) {
        let v = v.into_owned();
        match &*k {
            "task" => f.task = v,
            "user" => f.user = v,
            "password" => f.password = v,
            "login" => f.login = v,
            "authid" => f.authid = v,
            "sid" => sid = v,
            "profile-id" => profile_id = v,
            "pubkey" => {
                if v.len() > MAX_PUBKEY {
                    return Err(format!("pubkey longer than {MAX_PUBKEY} bytes"));
                }
                f.pubkey = v;
            }
            "event" | "server" | "cmd" | "display" => {
                f.event.retain(|(x, _)| x != &*k);
                f.event
                    .push((k.into_owned(), v.chars().take(256).collect()));
            }
            _ => {}
        }
    }
    f.profile = if profile_id.is_empty() {
        sid
    } else {
        profile_id
    };
    if !sid_is_sane(&f.profile) {
        return Err("profile id with control characters".into());
    }
    f.user = f.user.trim().to_owned();
    f.login = f.login.trim().to_owned();
    f.authid = f.authid.trim().to_owned();
    f.task = f.task.trim().to_owned();
    Ok(f)
}

fn sid_is_sane(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

// ----- replies -----

/// The `/plain/` reply head: `AUTHID:…` (when tokens are in use) and `Access granted`.
pub fn plain_head(authid: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(a) = authid {
        s.push_str("AUTHID:");
        s.push_str(a);
        s.push('\n');
    }
    s.push_str("Access granted\n");
    s
}

/// The `/plain/` profile list.
pub fn plain_list(authid: Option<&str>, profiles: &[(&str, Vec<(String, Value)>)]) -> String {
    let mut s = plain_head(authid);
    if profiles.is_empty() {
        return s;
    }
    s.push_str("START_USER_SESSIONS\n\n");
    for (id, keys) in profiles {
        s.push('[');
        s.push_str(id);
        s.push_str("]\n");
        for (k, v) in keys {
            s.push_str(k);
            s.push('=');
            // One value per line: embedded line breaks would start a new key for the client.
            s.push_str(&v.plain().replace(['\n', '\r'], " "));
            s.push('\n');
        }
        s.push('\n');
    }
    s.push_str("END_USER_SESSIONS\n");
    s
}

/// A selected server, with what goes with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selected {
    /// Host (address, or name for IPv6 on `/plain/`).
    pub server: String,
    /// SSH port.
    pub port: u16,
    /// Private key for autologin (PEM).
    pub key: Option<String>,
    /// The client's own public key was installed.
    pub pubkey_accepted: bool,
    /// The session to resume, an `x2golistsessions` line.
    pub session_info: Option<String>,
}

/// The `/plain/` reply to `selectsession`.
pub fn plain_select(authid: Option<&str>, sel: &Selected) -> String {
    let mut s = plain_head(authid);
    s.push_str(&format!("SERVER:{}:{}\n", sel.server, sel.port));
    if let Some(k) = &sel.key {
        s.push_str(k.trim_end());
        s.push('\n');
    }
    if let Some(i) = &sel.session_info {
        s.push_str("SESSION_INFO:");
        s.push_str(i);
        s.push('\n');
    }
    s
}

/// A JSON body as x2gobroker writes it (`json.dumps(…, indent=4, sort_keys=True)`).
pub fn json_body(value: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    if value.serialize(&mut ser).is_err() {
        return "{}".to_owned();
    }
    String::from_utf8(out).unwrap_or_default()
}

fn json_head(authid: Option<&str>, task: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("auth-status".into(), "Access granted".into());
    if let Some(a) = authid {
        m.insert("next-authid".into(), a.into());
    }
    m.insert("task".into(), task.into());
    m
}

/// The `/json/` reply to a request without a task (the login) or with a no-op task.
pub fn json_plain_reply(authid: Option<&str>, task: &str) -> String {
    json_body(&serde_json::Value::Object(json_head(authid, task)))
}

/// The `/json/` profile list.
pub fn json_list(authid: Option<&str>, profiles: &[(&str, Vec<(String, Value)>)]) -> String {
    let mut m = json_head(authid, "listprofiles");
    let mut all = serde_json::Map::new();
    for (id, keys) in profiles {
        let mut p = serde_json::Map::new();
        for (k, v) in keys {
            p.insert(k.clone(), serde_json::to_value(v).unwrap_or_default());
        }
        all.insert((*id).to_owned(), serde_json::Value::Object(p));
    }
    m.insert("profiles".into(), serde_json::Value::Object(all));
    json_body(&serde_json::Value::Object(m))
}

/// The `/json/` reply to `selectsession`.
pub fn json_select(authid: Option<&str>, sel: &Selected) -> String {
    let mut m = json_head(authid, "selectsession");
    let mut s = serde_json::Map::new();
    s.insert("server".into(), sel.server.clone().into());
    s.insert("port".into(), sel.port.to_string().into());
    if let Some(k) = &sel.key {
        s.insert("key".into(), k.clone().into());
    }
    if sel.pubkey_accepted {
        s.insert("authentication_pubkey".into(), "ACCEPTED".into());
    }
    if let Some(i) = &sel.session_info {
        s.insert("session_info".into(), i.clone().into());
    }
    m.insert("selected_session".into(), serde_json::Value::Object(s));
    json_body(&serde_json::Value::Object(m))
}

/// The body of a 401 (tornado's page, which X2Go clients show).
pub const UNAUTHORIZED_BODY: &str =
    "<html><title>401: Unauthorized</title><body>401: Unauthorized</body></html>";

/// An `x2golistsessions` line with its state (field 5) set to `S`: how a session the broker just
/// had suspended is handed to the client.
pub fn as_suspended(line: &str) -> String {
    let mut fields: Vec<&str> = line.split('|').collect();
    if fields.len() > 4 && fields[4] == "R" {
        fields[4] = "S";
    }
    fields.join("|")
}

/// Checks a client's `pubkey`: exactly one OpenSSH public key line, `TYPE BASE64 [COMMENT]`,
/// without options, of a known type, whose blob names the same type. Returns it normalised.
pub fn check_pubkey(text: &str) -> Result<String, String> {
    use base64::Engine;
    let t = text.trim();
    if t.contains(['\n', '\r', '\0']) {
        return Err("pubkey must be a single line".into());
    }
    let mut parts = t.split_ascii_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err("pubkey must be `TYPE BASE64 [COMMENT]`".into());
    };
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    if !TYPES.contains(&kind) {
        return Err(format!(
            "pubkey type {:?} is not accepted (options before the key are not allowed either)",
            kind.chars().take(40).collect::<String>()
        ));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| "pubkey is not valid base64".to_owned())?;
    let named = raw
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| raw.get(4..4 + n))
        .ok_or("pubkey blob is truncated")?;
    if named != kind.as_bytes() {
        return Err("pubkey blob does not match its type".into());
    }
    let comment: Vec<&str> = parts.collect();
    let comment = comment.join(" ");
    if comment.chars().any(|c| c.is_control()) {
        return Err("pubkey comment has control characters".into());
    }
    Ok(if comment.is_empty() {
        format!("{kind} {blob}")
    } else {
        format!("{kind} {blob} {comment}")
    })
}

#[cfg(test)]
mod tests;
