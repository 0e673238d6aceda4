//! The `switchboard` binary: parses the command line, sets up logging and signals, and hands over
//! to the daemon crates. Thin by design; everything else lives in libraries.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchboard_broker::config::{Config, DEFAULT_CONFIG_PATH};
use switchboard_broker::tokens::{self, Access};
use tokio_util::sync::CancellationToken;

/// Exit status for a subcommand this build cannot run yet (sysexits EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;
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
    /// All-in-one on this machine: the broker with SQLite in a data directory and the REST API on
    /// 127.0.0.1, with a generated admin token. Prints where to look. (The local agent, dashboard
    /// and X2Go frontend join it in later releases.)
    Up {
        /// Where the database and the admin token live (created if missing).
        #[arg(long, default_value = "./switchboard-data")]
        data_dir: PathBuf,
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
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
    /// Manage REST API tokens in a tokens file (which stores only their hashes).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Runs on every session host: reports load and sessions, carries out the broker's commands.
    /// [Not available yet.]
    Agent {
        /// Agent configuration file.
        #[arg(long, default_value = "/etc/switchboard/agent.toml")]
        config: PathBuf,
    },
    /// L4 load balancer for ssh and desktop protocols (userspace proxy or kernel IPVS rules).
    /// [Not available yet; its schedulers exist in switchboard-core.]
    Director {
        /// Director configuration file.
        #[arg(long, default_value = "/etc/switchboard/director.toml")]
        config: PathBuf,
    },
    /// Operator console on the management socket: interactive without a command, one-shot with one.
    /// [Not available yet.]
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

fn unavailable(what: &str) -> Result<ExitCode> {
    eprintln!(
        "switchboard: `{what}` is not available in this build yet. This release has the broker \
         (`switchboard up`, `switchboard broker`); the agent, director and console follow. See \
         README.md."
    );
    Ok(ExitCode::from(EX_UNAVAILABLE))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
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
            config.pools.len(),
            config.hosts.len(),
            switchboard_broker::redact(&config.store_url)
        );
        return Ok(ExitCode::SUCCESS);
    }
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        let broker = switchboard_broker::Broker::start(config, shutdown.clone()).await?;
        let engine = broker.engine.clone();
        let path = config_path.to_owned();
        signals(
            shutdown,
            Some(Box::new(move || {
                let engine = engine.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    match Config::load(&path) {
                        Ok(c) => match engine.reconfigure(c).await {
                            Ok(()) => tracing::info!(file = %path.display(), "configuration reloaded"),
                            Err(e) => tracing::error!(error = %e, "configuration not applied"),
                        },
                        Err(e) => tracing::error!(error = %e, "configuration not reloaded; keeping the running one"),
                    }
                });
            })),
        )?;
        broker.wait().await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn short_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().split('.').next().unwrap_or("localhost").to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn up(data_dir: &Path, listen: &str) -> Result<ExitCode> {
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
    let text = format!(
        r#"data_dir = {dir:?}
[store]
url = "sqlite://{db}"
[http]
listen = {listen:?}
[api]
tokens_file = {tokens:?}
[[pool]]
name = "desktops"
[[pool.host]]
name = {host:?}
address = "127.0.0.1:22"
"#,
        dir = data_dir.display().to_string(),
        db = data_dir.join("switchboard.db").display(),
        tokens = tokens_file.display().to_string(),
    );
    let config = match Config::parse(&text, "switchboard up") {
        Ok(c) => c,
        Err(e) => bail!("{e}"),
    };
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        let broker = switchboard_broker::Broker::start(config, shutdown.clone()).await?;
        let url = format!("http://{}", broker.http_addr);
        println!("Switchboard is up (Ctrl-C stops it).");
        println!(
            "  REST API  {url}/api/v1/   (bearer token in {})",
            token_path.display()
        );
        if let Some(t) = &new_token {
            println!("  Admin token (shown once, saved 0600 in the file above): {t}");
        }
        println!("  OpenAPI   {url}/api/v1/openapi.json");
        println!("  Metrics   {url}/metrics");
        println!("  Data      {} (SQLite)", data_dir.display());
        println!("  Pool      desktops = this machine ({host}, 127.0.0.1:22)");
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
        Command::Up { data_dir, listen } => up(&data_dir, &listen),
        Command::Broker {
            config,
            check_config,
        } => broker(&config, check_config),
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
        Command::Agent { .. } => unavailable("agent"),
        Command::Director { .. } => unavailable("director"),
        Command::Ctl { .. } => unavailable("ctl"),
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
