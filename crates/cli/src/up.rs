//! `switchboard up`: the all-in-one broker on one machine, with a local agent, the dashboard and
//! the X2Go frontend on 127.0.0.1, and a data directory that holds everything it made.

use crate::secrets::write_secret;
use crate::signals::signals;
use crate::{install_crypto, runtime};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::ExitCode;
use switchboard_agent::config::{AgentConfig, short_hostname};
use switchboard_broker::config::Config;
use switchboard_broker::tokens::{self, Access};
use tokio_util::sync::CancellationToken;

/// Session sources for `switchboard up`'s local agent: those this machine has.
pub(crate) fn local_sources() -> Vec<switchboard_agent::sources::SourceConfig> {
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

pub(crate) fn up(
    data_dir: &Path,
    listen: &str,
    agents_listen: &str,
    simulate: usize,
) -> Result<ExitCode> {
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
    // A token file cut short (a crash of an older version while writing it) counts as missing.
    let have_token =
        std::fs::read_to_string(&token_path).is_ok_and(|t| t.trim().starts_with("sbt_"));
    if !have_token {
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
