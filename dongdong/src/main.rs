//! The `dongdong` command: `serve` runs a node, `token` mints a token, `bot`
//! loads a server with simulated clients.

use clap::{Parser, Subcommand};
use dongdong_server::{Config, ConfigError, Overrides};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "dongdong", version, about = "Instant-messaging and customer-service chat backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// TOML config file (see dongdong.example.toml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Data directory (overrides [storage] data_dir).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server node.
    Serve {
        #[command(flatten)]
        common: Common,
        /// WebSocket listen address (overrides [server] listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP listen address for /healthz and /metrics (overrides [server] http).
        #[arg(long)]
        http: Option<SocketAddr>,
    },
    /// Print a token signed with the configured (or generated dev) secret.
    Token {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
        /// customer, agent or admin
        #[arg(long, default_value = "customer")]
        role: im_core::Role,
        /// Validity, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Display name shown to the other side of a chat (optional).
        #[arg(long, default_value = "")]
        name: String,
        /// Picture: an http(s) URL (optional).
        #[arg(long, default_value = "")]
        avatar: String,
    },
    /// Rebuild the message search index from the stored messages. Run it
    /// with the server stopped (embedded: the data directory is locked
    /// while a server runs); in a cluster the index is cleared and the node
    /// holding the indexing lease rebuilds it if one is running.
    Reindex {
        #[command(flatten)]
        common: Common,
    },
    /// Load a server with simulated clients and check nothing was lost.
    /// Exits 1 when the correctness report is not clean.
    Bot {
        #[command(subcommand)]
        scenario: Box<dongdong_bot::Scenario>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { common, listen, http } => {
            let overrides = Overrides { listen, http, data_dir: common.data };
            let config = match Config::load(common.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            init_tracing(&config.log.filter);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("dongdong: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("dongdong: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bot { scenario } => bot(*scenario),
        Command::Reindex { common } => {
            let overrides = Overrides { data_dir: common.data, ..Overrides::default() };
            let config = match Config::load(common.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            init_tracing("warn");
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("dongdong: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(reindex(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dongdong: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token { common, tenant, user, role, ttl, name, avatar } => {
            let overrides = Overrides { data_dir: common.data, ..Overrides::default() };
            let config = match Config::load(common.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let secret = match dongdong_server::secret::resolve(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("dongdong: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            match im_core::token::TokenSigner::new(&secret).mint_named(&tenant, &user, role, ttl, &name, &avatar) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dongdong: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn bot(scenario: dongdong_bot::Scenario) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dongdong bot: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = scenario.common().json;
    match runtime.block_on(dongdong_bot::run(scenario, Box::new(dev_secret))) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                report.print();
            }
            if report.clean { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("dongdong bot: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The server's secret as `dongdong serve` with this config and data
/// directory would use it (for the bot without --secret or --token-cmd).
fn dev_secret(config: Option<&std::path::Path>, data: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    let overrides = Overrides { data_dir: data.map(Into::into), ..Overrides::default() };
    let config = Config::load(config, &overrides)?;
    dongdong_server::secret::existing(&config)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no secret: give --secret (the server's [auth] secret), --token-cmd, or --data with the \
             server's data directory holding its dev secret ({} does not exist)",
            dongdong_server::secret::dev_secret_path(&config).display()
        )
    })
}

fn config_error(e: ConfigError) -> ExitCode {
    eprintln!("dongdong: {e}");
    ExitCode::from(2)
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn reindex(config: Config) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut last_report = started;
    let n = dongdong_server::reindex(&config, |n| {
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = std::time::Instant::now();
            eprintln!("reindex: {n} messages indexed");
        }
    })
    .await?;
    println!("reindex: {n} messages indexed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Before listening: whoever sees us listening can mint tokens with it.
    dongdong_server::secret::resolve(&config)?;
    let ws = dongdong_server::listen(config.server.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (server.listen): {e}", config.server.listen))?;
    let http = dongdong_server::listen(config.server.http)
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (server.http): {e}", config.server.http))?;
    // One line on stdout for scripts and tests that start us on port 0.
    println!("dongdong listening ws=ws://{}/ws http=http://{}", ws.local_addr()?, http.local_addr()?);
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    dongdong_server::run(ws, http, config, shutdown).await
}

async fn signal_shutdown(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
