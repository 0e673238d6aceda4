//! The daemons' subcommands: `switchboard broker`, `director` and `agent` (with `--check`, and
//! the director's `--dry-run`): load the configuration, then run until a signal.

use crate::secrets::read_credential_table;
use crate::signals::{reload_on_hup, signals};
use crate::{EX_CONFIG, install_crypto, runtime};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::ExitCode;
use switchboard_agent::config::AgentConfig;
use switchboard_broker::config::Config;
use tokio_util::sync::CancellationToken;

pub(crate) fn broker(config_path: &Path, check: bool) -> Result<ExitCode> {
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

pub(crate) fn director(config_path: &Path, check: bool, dry_run: bool) -> Result<ExitCode> {
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

/// `switchboard agent --simulate` settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Simulation {
    pub(crate) hosts: usize,
    pub(crate) seed: u64,
    pub(crate) sessions_per_host: f64,
    pub(crate) mean_session: u64,
}

pub(crate) fn agent(
    config_path: &Path,
    check: bool,
    simulate: Option<Simulation>,
) -> Result<ExitCode> {
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
