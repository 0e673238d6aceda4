//! The `switchboard` binary: parses the command line, sets up logging, and hands over to the
//! daemon crates. Thin by design; everything else lives in libraries.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for a subcommand this build cannot run yet (sysexits EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

/// Switchboard: session broker and load balancer for Linux remote-desktop and login clusters.
///
/// A user asks for a desktop or a shell; Switchboard resumes the session the user already has or
/// picks the best host for a new one, and tells the client where to go (broker) or carries the
/// connection itself (director).
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about)]
struct Cli {
    /// Log format on standard error.
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
    /// All-in-one on this machine: broker with SQLite, a local agent, dashboard and X2Go frontend on
    /// 127.0.0.1. [Not available yet: the broker is the next piece of work; today only the core
    /// state machine and placement engine exist.]
    Up {
        /// Where the SQLite database, tokens and certificates live.
        #[arg(long, default_value = "./switchboard-data")]
        data_dir: PathBuf,
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// The cluster master: state, placement, REST API, X2Go frontend, dashboard, metrics, agent
    /// listener, management socket. [Not available yet.]
    Broker {
        /// Broker configuration file.
        #[arg(long, default_value = "/etc/switchboard/broker.toml")]
        config: PathBuf,
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
        "switchboard: `{what}` is not available in this build yet. This release contains the core \
         state machine, placement policies and L4 schedulers (crate switchboard-core); the daemons \
         follow. See README.md."
    );
    Ok(ExitCode::from(EX_UNAVAILABLE))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up { .. } => unavailable("up"),
        Command::Broker { .. } => unavailable("broker"),
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
