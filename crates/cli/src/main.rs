//! The `switchboard` binary: parses the command line, sets up logging and signals, and hands over
//! to the daemon crates. Thin by design; everything else lives in libraries.

mod ctl;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchboard_broker::config::{Config, DEFAULT_CONFIG_PATH};
use switchboard_broker::tokens::{self, Access};
use tokio_util::sync::CancellationToken;

/// Exit status for a bad configuration (sysexits EX_USAGE, as linkerd does).
const EX_CONFIG: u8 = 64;

/// Switchboard: session broker and load balancer for Linux remote-desktop and login clusters.
///
/// A user asks for a desktop or a shell; Switchboard resumes the session the user already has or
/// picks the best host for a new one, and tells the client where to go (broker) or carries the
/// connection itself (director).
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about)]
struct Cli {
    /// Log format on standard error (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SWITCHBOARD_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// All-in-one on this machine: the broker with SQLite in a data directory, the REST API on
    /// 127.0.0.1 with a generated admin token, and a local agent for this machine (its own CA,
    /// broker certificate and agent credential are made in the data directory), and the X2Go
    /// frontend on /plain/ and /json/ with PAM logins and one profile `desktops` (this machine),
    /// and the web dashboard on /ui/ (sign in with the admin token). Prints where to look.
    Up {
        /// Where the database, certificates and the admin token live (created if missing).
        #[arg(long, default_value = "./switchboard-data")]
        data_dir: PathBuf,
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Agent listener address.
        #[arg(long, default_value = "127.0.0.1:7443")]
        agents_listen: String,
        /// Also run N simulated hosts (pool `sim`, hosts sim-00001… at 127.x addresses) with
        /// synthetic load and sessions.
        #[arg(long, value_name = "N", default_value_t = 0)]
        simulate: usize,
    },
    /// The cluster master: state, placement, REST API and metrics, with a durable store (SQLite
    /// or PostgreSQL). SIGHUP reloads the configuration; SIGTERM stops it.
    Broker {
        /// Broker configuration file (TOML; see examples/broker.toml).
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Validate the configuration and exit (0 if valid, 64 if not).
        #[arg(long)]
        check_config: bool,
    },
    /// Edits the calling user's ~/.x2go/authorized_keys (X2Go autologin keys). The agent runs
    /// it as the session's user through `sudo -n -u USER` when it does not run as root; the key
    /// line comes on standard input.
    #[command(hide = true)]
    Authkeys {
        #[command(subcommand)]
        op: AuthkeysOp,
    },
    /// Add a user to a password file (`[auth] method = "file:PATH"`) or change their password.
    /// The password is read from standard input when it is not a terminal (one line), else asked
    /// for twice. The file keeps argon2id hashes only and is created with mode 0600.
    Passwd {
        /// The password file.
        file: PathBuf,
        /// The user name.
        user: String,
    },
    /// Manage REST API tokens in a tokens file (which stores only their hashes).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Runs on every session host: keeps a TLS link to the broker, reports load (from /proc) and
    /// the sessions its sources see (x2go, logind, xpra, a site command), and carries out the
    /// broker's commands (terminate, kill, disconnect, log off). Never needs setuid; see
    /// docs/agent-privileges.md for the narrow grants each source needs.
    Agent {
        /// Agent configuration file (TOML; see examples/agent.toml).
        #[arg(long, default_value = "/etc/switchboard/agent.toml")]
        config: PathBuf,
        /// Validate the configuration and exit (0 if valid, 64 if not).
        #[arg(long)]
        check_config: bool,
        /// Run N simulated hosts instead (sim-00001…, for demos and scale tests): the file's
        /// `credential_file` then holds one `NAME CREDENTIAL` line per simulated host.
        #[arg(long, value_name = "N")]
        simulate: Option<usize>,
        /// Seed of the simulation.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulation: sessions live on each host at a time, on average.
        #[arg(long, default_value_t = 3.0)]
        sessions_per_host: f64,
        /// Simulation: mean session lifetime, in seconds.
        #[arg(long, default_value_t = 1800)]
        mean_session: u64,
    },
    /// L4 load balancer for ssh and desktop protocols: a userspace TCP proxy (splice on Linux)
    /// with IPVS schedulers, health checks, persistence and drains, or kernel IPVS rules
    /// programmed from the same services (`[director] mode = "ipvs"`). SIGHUP reloads the
    /// services without dropping connections; SIGTERM stops accepting and waits for live
    /// connections. Console: `switchboard ctl --socket /run/switchboard/director.sock`.
    /// See examples/director.toml and docs/director.md.
    Director {
        /// Director configuration file (TOML; see examples/director.toml).
        #[arg(long, default_value = "/etc/switchboard/director.toml")]
        config: PathBuf,
        /// Validate the configuration and exit (0 if valid, 64 if not).
        #[arg(long)]
        check_config: bool,
        /// IPVS mode: print the `ipvsadm -R` lines that would bring the kernel table to the
        /// configuration (read with `ipvsadm -S -n`), and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Operator console on the broker's management socket (or, with `--socket`, the director's:
    /// `services`, `stats`, `drain`, `undrain`, `weight`): an interactive monitor (line editing,
    /// history, completion of commands, host and user names) without a command, one-shot with
    /// one (`switchboard ctl servers`, `switchboard ctl drain x2go1 --then-offline`). `help`
    /// lists the commands. Exits non-zero when the command fails.
    Ctl {
        /// Management socket path.
        #[arg(
            long,
            env = "SWITCHBOARD_SOCKET",
            default_value = "/run/switchboard/mgmt.sock"
        )]
        socket: PathBuf,
        /// Command to run once (e.g. `servers`); omit for the interactive monitor.
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuthkeysOp {
    /// Authorise the key on standard input until EXPIRES_AT_MS (epoch milliseconds).
    Add {
        /// Expiry, milliseconds since the epoch.
        expires_at_ms: u64,
    },
    /// Withdraw the key on standard input.
    Remove,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Add a token named NAME and print it once (the file keeps only its hash).
    Add {
        /// Tokens file (created 0600 if missing).
        file: PathBuf,
        /// Who holds the token (shown in logs, never the token).
        name: String,
        /// The token may only read.
        #[arg(long)]
        read_only: bool,
    },
    /// Remove the token named NAME; a running broker drops it within a second.
    Revoke {
        /// Tokens file.
        file: PathBuf,
        /// The token's name.
        name: String,
    },
}

fn passwd(file: &Path, user: &str) -> Result<ExitCode> {
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The SIGHUP handler of a long-running command: reads `path` again with `load` and hands the
/// new configuration to `apply`. A file that does not load, or a configuration that is not
/// applied, is logged and the running configuration stays.
fn reload_on_hup<C, LE, AE, F, Fut>(
    path: &Path,
    load: fn(&Path) -> std::result::Result<C, LE>,
    apply: F,
) -> Option<Box<dyn Fn() + Send>>
where
    C: Send + 'static,
    LE: std::fmt::Display + 'static,
    AE: std::fmt::Display,
    F: Fn(C) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::result::Result<(), AE>> + Send + 'static,
{
    let path = path.to_owned();
    Some(Box::new(move || match load(&path) {
        Ok(c) => {
            let applied = apply(c);
            let path = path.clone();
            tokio::spawn(async move {
                match applied.await {
                    Ok(()) => tracing::info!(file = %path.display(), "configuration reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "configuration not applied; keeping the running one")
                    }
                }
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration not reloaded; keeping the running one")
        }
    }))
}

/// Cancels `token` on SIGINT or SIGTERM; calls `on_hup` on SIGHUP.
fn signals(token: CancellationToken, on_hup: Option<Box<dyn Fn() + Send>>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); token.cancel(); return; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); token.cancel(); return; }
                _ = hup.recv() => {
                    match &on_hup {
                        Some(f) => f(),
                        None => tracing::info!("SIGHUP ignored: nothing to reload"),
                    }
                }
            }
        }
    });
    Ok(())
}

fn broker(config_path: &Path, check: bool) -> Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: invalid configuration: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    if check {
        println!(
            "{}: ok ({} pools, {} hosts, store {})",
            config_path.display(),
            config.cluster.pools.len(),
            config.cluster.hosts.len(),
            switchboard_broker::redact(&config.store_url)
        );
        return Ok(ExitCode::SUCCESS);
    }
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        let broker = switchboard_broker::Broker::start(config, shutdown.clone()).await?;
        let reloader = broker.reloader();
        signals(
            shutdown,
            reload_on_hup(config_path, Config::load, move |c| {
                let reloader = reloader.clone();
                async move { reloader.apply(c).await }
            }),
        )?;
        broker.wait().await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn director(config_path: &Path, check: bool, dry_run: bool) -> Result<ExitCode> {
    use switchboard_director::config::{Config as DirectorConfig, Mode};
    let config = match DirectorConfig::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: invalid configuration: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    if check {
        println!(
            "{}: ok ({} services, mode {})",
            config_path.display(),
            config.services.len(),
            match config.mode {
                Mode::Proxy => "proxy",
                Mode::Ipvs => "ipvs",
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    if dry_run {
        return runtime()?.block_on(async move {
            match switchboard_director::ipvs::dry_run(&config).await {
                Ok((rules, notes)) => {
                    eprint!("{notes}");
                    print!("{rules}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("switchboard: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        });
    }
    // `[director] threads = 1` runs everything on one thread, as HAProxy's `nbthread 1`: no
    // wake-ups across threads, which pays on small machines.
    let rt = match config.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?,
        None => runtime()?,
    };
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let director = switchboard_director::Director::start(config, shutdown.clone()).await?;
        let d = director.clone();
        signals(
            shutdown,
            reload_on_hup(config_path, DirectorConfig::load, move |c| {
                let d = d.clone();
                async move { d.reload(c).await }
            }),
        )?;
        director.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}

use switchboard_agent::config::{AgentConfig, short_hostname};

/// `switchboard agent --simulate` settings.
#[derive(Debug, Clone, Copy)]
struct Simulation {
    hosts: usize,
    seed: u64,
    sessions_per_host: f64,
    mean_session: u64,
}

fn agent(config_path: &Path, check: bool, simulate: Option<Simulation>) -> Result<ExitCode> {
    let path = config_path.display().to_string();
    let text = match std::fs::read_to_string(config_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchboard: invalid configuration: {path}: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    let raw = match AgentConfig::parse(&text, &path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchboard: invalid configuration: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    let credential_file = raw.credential_file.clone();
    let (credential, table) = match simulate {
        None => match switchboard_agent::config::read_credential(&credential_file) {
            Ok(c) => (c, Vec::new()),
            Err(e) => {
                eprintln!("switchboard: invalid configuration: {path}: key `credential_file`: {e}");
                return Ok(ExitCode::from(EX_CONFIG));
            }
        },
        Some(sim) => match read_credential_table(&credential_file, sim.hosts) {
            Ok(t) => (String::new(), t),
            Err(e) => {
                eprintln!("switchboard: invalid configuration: {path}: key `credential_file`: {e}");
                return Ok(ExitCode::from(EX_CONFIG));
            }
        },
    };
    let config = match raw.validate(credential) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: invalid configuration: {path}: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    if let Err(e) = switchboard_agent::link::client_tls(&config.ca) {
        eprintln!("switchboard: invalid configuration: {path}: key `ca`: {e}");
        return Ok(ExitCode::from(EX_CONFIG));
    }
    if check {
        println!(
            "{path}: ok (host {}, broker {}, {} sources, report every {:?})",
            config.host,
            config.broker,
            config.sources.len(),
            config.report_interval
        );
        return Ok(ExitCode::SUCCESS);
    }
    install_crypto();
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        signals(shutdown.clone(), None)?;
        match simulate {
            None => {
                switchboard_agent::host::spawn(config, shutdown.clone())?;
            }
            Some(Simulation {
                hosts: n,
                seed,
                sessions_per_host,
                mean_session,
            }) => {
                let link = switchboard_agent::link::LinkParams {
                    broker: config.broker.clone(),
                    server_name: switchboard_agent::link::server_name(&config.server_name)?,
                    tls: switchboard_agent::link::client_tls(&config.ca)?,
                    host: String::new(),
                    credential: String::new(),
                    interval: config.report_interval,
                    quiet: true,
                };
                tracing::info!(hosts = n, broker = %config.broker, "simulating hosts");
                let mut opts = switchboard_agent::sim::SimOptions::new(link, seed);
                opts.sessions_per_host = sessions_per_host;
                opts.mean_session = std::time::Duration::from_secs(mean_session.max(1));
                switchboard_agent::sim::spawn(table, opts, shutdown.clone());
            }
        }
        shutdown.cancelled().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// `NAME CREDENTIAL` lines for simulated hosts; exactly the first `n` simulated names.
fn read_credential_table(
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

fn authkeys(op: AuthkeysOp) -> Result<ExitCode> {
    use std::io::Read;
    let mut key = String::new();
    std::io::stdin()
        .take(16 * 1024)
        .read_to_string(&mut key)
        .context("reading the key from standard input")?;
    let key = key.lines().next().unwrap_or_default().trim().to_owned();
    let user = std::env::var("USER").context("USER is not set")?;
    let op = match op {
        AuthkeysOp::Add { expires_at_ms } => {
            switchboard_agent::authkeys::KeyOp::Add { key, expires_at_ms }
        }
        AuthkeysOp::Remove => switchboard_agent::authkeys::KeyOp::Remove { key },
    };
    let done = runtime()?.block_on(switchboard_agent::authkeys::apply_local(&user, op))?;
    println!("{done}");
    Ok(ExitCode::SUCCESS)
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Session sources for `switchboard up`'s local agent: those this machine has.
fn local_sources() -> Vec<switchboard_agent::sources::SourceConfig> {
    let mut out = Vec::new();
    let mut add = |kind: &str| match toml::from_str(&format!("kind = {kind:?}")) {
        Ok(c) => out.push(c),
        Err(e) => tracing::warn!(kind, error = %e, "session source not available"),
    };
    if Path::new("/usr/bin/x2golistsessions_root").exists()
        || Path::new("/usr/sbin/x2golistsessions_root").exists()
    {
        add("x2go");
    }
    if Path::new("/run/systemd/system").exists() {
        add("logind");
    }
    out
}

fn up(data_dir: &Path, listen: &str, agents_listen: &str, simulate: usize) -> Result<ExitCode> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
    let tokens_file = data_dir.join("tokens");
    let token_path = data_dir.join("admin.token");
    let mut new_token = None;
    if !token_path.exists() {
        let _ = tokens::revoke(&tokens_file, "admin");
        let token = tokens::add(&tokens_file, "admin", Access::ReadWrite)?;
        write_secret(&token_path, &format!("{token}\n"))?;
        new_token = Some(token);
    }
    let host = short_hostname();
    // The X2Go frontend's profiles, in x2gobroker's format: one profile (pool) `desktops` with
    // this machine. Written once; edit it and send SIGHUP, or restart.
    let profiles_path = data_dir.join("x2gobroker-sessionprofiles.conf");
    if !profiles_path.exists() {
        std::fs::write(
            &profiles_path,
            format!(
                "# X2Go session profiles for `switchboard up` (x2gobroker's format). Each profile is a pool.\n\
                 [desktops]\nname=Desktop on {host}\nhost={host} (127.0.0.1:22)\ncommand=XFCE\n"
            ),
        )
        .with_context(|| format!("cannot write {}", profiles_path.display()))?;
    }
    let mut text = format!(
        r#"data_dir = {dir:?}
[store]
url = "sqlite://{db}"
[http]
listen = {listen:?}
[agents]
listen = {agents_listen:?}
[management]
socket = {socket:?}
[api]
tokens_file = {tokens:?}
[auth]
method = "pam"
[x2go]
session_profiles = {profiles:?}
"#,
        dir = data_dir.display().to_string(),
        db = data_dir.join("switchboard.db").display(),
        tokens = tokens_file.display().to_string(),
        socket = data_dir.join("mgmt.sock").display().to_string(),
        profiles = profiles_path.display().to_string(),
    );
    if simulate > 0 {
        text.push_str("[[pool]]\nname = \"sim\"\npolicy = \"least-load\"\n");
        for i in 0..simulate {
            text.push_str(&format!(
                "[[pool.host]]\nname = {:?}\naddress = {:?}\n",
                switchboard_agent::sim::host_name(i),
                switchboard_agent::sim::host_address(i)
            ));
        }
    }
    let config = match Config::parse(&text, "switchboard up") {
        Ok(c) => c,
        Err(e) => bail!("{e}"),
    };
    install_crypto();
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        let broker = switchboard_broker::Broker::start(config, shutdown.clone()).await?;
        let url = format!("http://{}", broker.http_addr);
        let (Some(agent_addr), Some(ca)) = (broker.agent_addr, broker.agent_ca.clone()) else {
            bail!("the agent listener did not start");
        };
        // The local agent: its credential lives in the data directory; a new one is issued when
        // the file is missing or the broker no longer knows it.
        let cred_path = data_dir.join("agent.credential");
        let known = std::fs::read_to_string(&cred_path).ok().map(|c| c.trim().to_owned());
        // `up` enrols its own agents; the audit log says so.
        let local = switchboard_broker::actions::Actor::new(
            switchboard_broker::actions::Surface::Local,
            "switchboard up",
        );
        let wanted = host.clone();
        let stored = broker
            .engine
            .query(move |s| s.credential(&wanted).map(str::to_owned))
            .await?;
        let credential = match (known, stored) {
            (Some(c), Some(h)) if switchboard_broker::tokens::hash(&c) == h => c,
            _ => {
                let c = broker.actions.enroll(&local, &host).await?;
                let _ = std::fs::remove_file(&cred_path);
                write_secret(&cred_path, &format!("{c}\n"))?;
                c
            }
        };
        let agent_config = AgentConfig {
            broker: agent_addr.to_string(),
            server_name: "localhost".into(),
            ca: ca.clone(),
            credential,
            host: host.clone(),
            report_interval: switchboard_agent::config::DEFAULT_INTERVAL,
            sources: local_sources(),
        };
        let sources = agent_config
            .sources
            .iter()
            .map(|s| s.kind())
            .collect::<Vec<_>>()
            .join(", ");
        switchboard_agent::host::spawn(agent_config, shutdown.clone())?;
        if simulate > 0 {
            // Enrolled concurrently: the engine commits them in shared batches.
            let mut enrolling = tokio::task::JoinSet::new();
            for i in 0..simulate {
                let (actions, local) = (broker.actions.clone(), local.clone());
                enrolling.spawn(async move {
                    let name = switchboard_agent::sim::host_name(i);
                    let credential = actions.enroll(&local, &name).await;
                    (i, name, credential)
                });
            }
            let mut hosts = Vec::with_capacity(simulate);
            while let Some(done) = enrolling.join_next().await {
                let (i, name, credential) = done?;
                hosts.push((i, switchboard_agent::sim::SimHost { name, credential: credential? }));
            }
            hosts.sort_by_key(|(i, _)| *i);
            let hosts: Vec<_> = hosts.into_iter().map(|(_, h)| h).collect();
            let link = switchboard_agent::link::LinkParams {
                broker: agent_addr.to_string(),
                server_name: switchboard_agent::link::server_name("localhost")?,
                tls: switchboard_agent::link::client_tls(&ca)?,
                host: String::new(),
                credential: String::new(),
                interval: switchboard_agent::config::DEFAULT_INTERVAL,
                quiet: true,
            };
            let mut opts = switchboard_agent::sim::SimOptions::new(link, 1);
            // A demo should move: sessions of ten minutes rather than half an hour.
            opts.mean_session = std::time::Duration::from_secs(600);
            switchboard_agent::sim::spawn(hosts, opts, shutdown.clone());
        }
        println!("Switchboard is up (Ctrl-C stops it).");
        println!(
            "  REST API  {url}/api/v1/   (bearer token in {})",
            token_path.display()
        );
        if let Some(t) = &new_token {
            println!("  Admin token (shown once, saved 0600 in the file above): {t}");
        }
        println!("  Dashboard {url}/ui/   (sign in with the admin token)");
        println!("  OpenAPI   {url}/api/v1/openapi.json");
        println!(
            "  Console   switchboard ctl --socket {}   (management socket, mode 0660)",
            broker.mgmt_socket.display()
        );
        println!("  Metrics   {url}/metrics");
        println!("  Data      {} (SQLite)", data_dir.display());
        println!(
            "  X2Go      {url}/plain/ (X2Go Client) and {url}/json/ (pyhoca-cli), PAM service `switchboard`"
        );
        println!(
            "  Profiles  {} (pool desktops = this machine, {host} at 127.0.0.1:22)",
            profiles_path.display()
        );
        println!(
            "  Agent     local agent linked over TLS to {agent_addr} (sources: {}; CA {})",
            if sources.is_empty() { "none found" } else { &sources },
            ca.display()
        );
        if simulate > 0 {
            println!("  Simulated pool `sim`: {simulate} hosts (sim-00001…) with synthetic load and sessions");
        }
        println!(
            "  Try       curl -s -H \"Authorization: Bearer $(cat {})\" {url}/api/v1/hosts",
            token_path.display()
        );
        signals(shutdown, None)?;
        broker.wait().await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up {
            data_dir,
            listen,
            agents_listen,
            simulate,
        } => up(&data_dir, &listen, &agents_listen, simulate),
        Command::Broker {
            config,
            check_config,
        } => broker(&config, check_config),
        Command::Passwd { file, user } => passwd(&file, &user),
        Command::Token { action } => {
            match action {
                TokenAction::Add {
                    file,
                    name,
                    read_only,
                } => {
                    let access = if read_only {
                        Access::ReadOnly
                    } else {
                        Access::ReadWrite
                    };
                    let token = tokens::add(&file, &name, access)?;
                    println!("{token}");
                    eprintln!(
                        "token {name:?} added to {} ({}); it is shown only this once",
                        file.display(),
                        if read_only { "read-only" } else { "read-write" }
                    );
                }
                TokenAction::Revoke { file, name } => {
                    tokens::revoke(&file, &name)?;
                    eprintln!("token {name:?} revoked in {}", file.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent {
            config,
            check_config,
            simulate,
            seed,
            sessions_per_host,
            mean_session,
        } => agent(
            &config,
            check_config,
            simulate.map(|n| Simulation {
                hosts: n,
                seed,
                sessions_per_host,
                mean_session,
            }),
        ),
        Command::Director {
            config,
            check_config,
            dry_run,
        } => director(&config, check_config, dry_run),
        Command::Authkeys { op } => authkeys(op),
        Command::Ctl { socket, command } => ctl::run(&socket, &command),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
