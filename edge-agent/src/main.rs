//! `edge-agent`: the agent binary and the technician's tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_agent::config::AgentConfig;
use edge_agent::update::{self, bundle};

/// The edge agent: Modbus in, durable queue, MQTT to the hub.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// agent.toml
    #[arg(long, value_name = "FILE", global = true, env = "EDGE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate an agent.toml and the profiles it names, then exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Write a working agent.toml after checking that the hub accepts the credentials.
    Provision {
        /// The hub, HOST:PORT (or a full mqtt:// / mqtts:// URL).
        #[arg(long)]
        hub: String,
        /// The agent id registered at the hub.
        #[arg(long)]
        id: String,
        /// The agent's secret.
        #[arg(long)]
        secret: String,
        /// Where to write the config.
        #[arg(long, default_value = "agent.toml")]
        out: PathBuf,
        /// Connect with TLS (mqtts://).
        #[arg(long)]
        tls: bool,
        /// CA certificates (PEM) for TLS instead of the system roots (written as `ca`).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// data_dir to write into the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// update_key to write into the config (hex ed25519 public key).
        #[arg(long)]
        update_key: Option<String>,
        /// Write the file even if the hub cannot be reached (a refusal still fails).
        #[arg(long)]
        offline: bool,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Install a signed release bundle: verify, keep the previous version, switch, health-check,
    /// roll back on failure.
    Update {
        /// The bundle file.
        bundle: PathBuf,
        /// Install directory (versions/, current, previous); default: agent.install_dir, or the
        /// directory the running binary was installed in.
        #[arg(long)]
        install_dir: Option<PathBuf>,
        /// Verify with this key instead of agent.update_key.
        #[arg(long)]
        key: Option<String>,
        /// Install even if the bundle is not newer than the current version.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// The health check an update runs: load the config and profiles, check the data
    /// directory is writable. Exit 0 when fit to run.
    SelfTest,
    /// Make a signed release bundle (release engineering).
    Bundle {
        /// The edge-agent binary to ship.
        #[arg(long)]
        binary: PathBuf,
        /// Its version.
        #[arg(long)]
        version: String,
        /// File holding the hex ed25519 signing key.
        #[arg(long)]
        signing_key: PathBuf,
        /// Target (ARCH-OS), default: this machine's.
        #[arg(long)]
        target: Option<String>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make an update signing key; prints the public key for agent.update_key.
    Keygen {
        /// File to write the secret key to (hex, mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Logs to stderr, filtered by `RUST_LOG` (`info` by default; `edge_agent=debug,info` style).
fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter: Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("edge-agent: RUST_LOG `{spec}`: {e}; logging at info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    // One malloc arena: glibc otherwise gives each thread that allocates (workers, the blocking
    // pool doing fsyncs) its own arena, and freed memory stays resident in each. Measured in
    // docs/PERFORMANCE.md: about 1.5 MB less resident memory, no throughput loss.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edge-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers are plenty for tens of devices; blocking work (fsync, downloads) has its own
    // small pool.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_stack_size(512 * 1024)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn load(config: Option<PathBuf>) -> anyhow::Result<AgentConfig> {
    let path = config.context("--config FILE is required (or EDGE_AGENT_CONFIG)")?;
    Ok(AgentConfig::load(&path)?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            let cfg = AgentConfig::load(&file)?;
            // The uplink reads the TLS files only when it starts (and only for mqtts://); check
            // them now too.
            let s = edge_agent::agent::uplink_settings(&cfg.file.agent);
            if s.hubs.iter().any(|h| h.starts_with("mqtts://")) {
                edge_agent::uplink::check_tls_files(s.ca.as_deref(), s.client_cert.as_ref())?;
            }
            println!(
                "{}: ok ({} modbus devices, {} cameras)",
                file.display(),
                cfg.file.modbus.len(),
                cfg.file.camera.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let cfg = load(cli.config)?;
            let exit = runtime()?.block_on(edge_agent::agent::run(cfg))?;
            Ok(match exit {
                edge_agent::agent::Exit::Stopped => ExitCode::SUCCESS,
                edge_agent::agent::Exit::Reboot => ExitCode::from(edge_agent::REBOOT_EXIT_CODE),
            })
        }
        Some(Command::SelfTest) => {
            if let Some(path) = cli.config {
                let cfg = AgentConfig::load(&path)?;
                let dir = &cfg.file.agent.data_dir;
                std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
                let probe = dir.join(".self-test");
                std::fs::write(&probe, b"ok")
                    .with_context(|| format!("{} is not writable", dir.display()))?;
                let _ = std::fs::remove_file(&probe);
                if let Some(k) = &cfg.file.agent.update_key {
                    bundle::parse_public_key(k)?;
                }
                edge_agent::uplink::hub_options(&edge_agent::agent::uplink_settings(
                    &cfg.file.agent,
                ))?;
            }
            println!("self-test ok: edge-agent {}", edge_agent::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Provision {
            hub,
            id,
            secret,
            out,
            tls,
            ca_file,
            data_dir,
            update_key,
            offline,
            force,
        }) => {
            use edge_agent::provision::{Provision, ProvisionError, write_config};
            let p = Provision {
                hub,
                id,
                secret,
                tls,
                ca_file,
                data_dir,
                update_key,
            };
            p.validate()?;
            if out.exists() && !force {
                anyhow::bail!("{} exists; pass --force to replace it", out.display());
            }
            match runtime()?.block_on(p.check(Duration::from_secs(10))) {
                Ok(()) => println!("hub {} accepted agent {}", p.hub_url(), p.id),
                Err(ProvisionError::Unreachable { hub, reason }) if offline => {
                    eprintln!(
                        "edge-agent: warning: hub {hub} not reachable ({reason}); writing the config anyway (--offline)"
                    );
                }
                Err(e) => return Err(e.into()),
            }
            write_config(&out, &p.render(), force)?;
            // Prove the file is a working config before telling the technician so.
            AgentConfig::load(&out)?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Update {
            bundle: file,
            install_dir,
            key,
            allow_downgrade,
        }) => {
            let cfg = match &cli.config {
                Some(p) => Some(AgentConfig::load(p)?),
                None => None,
            };
            let key = key
                .or_else(|| cfg.as_ref().and_then(|c| c.file.agent.update_key.clone()))
                .ok_or(update::UpdateError::NoKey)?;
            let install_dir = install_dir
                .or_else(|| cfg.as_ref().and_then(|c| c.file.agent.install_dir.clone()))
                .or_else(update::install_dir_of_running_binary)
                .ok_or(update::UpdateError::NoInstallDir)?;
            let opts = update::InstallOptions {
                install_dir,
                config: cli.config.clone(),
                allow_downgrade,
                check_timeout: Duration::from_secs(60),
            };
            let done = update::install(&file, &key, &opts)?;
            println!(
                "installed {} (previous: {}); restart the agent to run it",
                done.version,
                done.previous.as_deref().unwrap_or("none")
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bundle {
            binary,
            version,
            signing_key,
            target,
            out,
        }) => {
            let text = std::fs::read_to_string(&signing_key)
                .with_context(|| format!("{}", signing_key.display()))?;
            let key = bundle::parse_signing_key(&text)?;
            let target = target.unwrap_or_else(bundle::this_target);
            let m = bundle::create(&binary, &version, &target, &key, &out)?;
            let sha = {
                use sha2::Digest;
                let bytes = std::fs::read(&out)?;
                hex::encode(sha2::Sha256::digest(&bytes))
            };
            println!(
                "wrote {} (version {}, {} bytes binary); bundle sha256 {sha}",
                out.display(),
                m.version,
                m.binary_size
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Keygen { out }) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = bundle::generate_key();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("{}", out.display()))?;
            writeln!(f, "{}", hex::encode(key.to_bytes()))?;
            println!(
                "update_key = \"{}\"",
                hex::encode(key.verifying_key().to_bytes())
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
