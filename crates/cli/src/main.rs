//! The `switchboard` binary: parses the command line, sets up logging and signals, and hands over
//! to the daemon crates. Thin by design; everything else lives in libraries.

mod ctl;
mod daemons;
mod secrets;
mod signals;
mod up;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use daemons::{Simulation, agent, broker, director};
use secrets::{authkeys, passwd};
use std::path::PathBuf;
use std::process::ExitCode;
use switchboard_broker::config::DEFAULT_CONFIG_PATH;
use switchboard_broker::tokens::{self, Access};
use up::up;

/// Exit status for a bad configuration (sysexits EX_USAGE, as linkerd does).
pub(crate) const EX_CONFIG: u8 = 64;

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
pub(crate) enum AuthkeysOp {
    /// Authorise the key on standard input until EXPIRES_AT_MS (epoch milliseconds).
    Add {
        /// Expiry, milliseconds since the epoch.
        expires_at_ms: u64,
    },
    /// Withdraw the key on standard input.
    Remove,
    /// Drop the expired Switchboard lines (standard input is not read).
    Sweep,
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

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn run(cli: Cli) -> Result<ExitCode> {
    if matches!(
        cli.command,
        Command::Up { .. }
            | Command::Broker { .. }
            | Command::Agent { .. }
            | Command::Director { .. }
    ) {
        // A daemon may hold many connections: the soft descriptor limit goes up to the hard
        // one (systemd leaves 1,024 soft), and every listener's caps are sized below it.
        let nofile = switchboard_broker::web::serve::raise_nofile();
        tracing::debug!(nofile, "descriptor limit");
    }
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
