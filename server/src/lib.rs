//! The dongdong server assembled from its parts: storage, router, dispatch,
//! gateway and the HTTP endpoints. [`run`] takes already-bound listeners and a
//! shutdown token, so tests bind port 0 and own the trigger.

mod admin_api;
pub mod config;
mod cs_api;
mod files_api;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod limits_api;
mod media;
mod search_api;
pub mod secret;
mod web;
mod widget_api;

pub use config::{Config, ConfigError, Overrides};

use access_gateway::{Gateway, TokenSigner};
use anyhow::Context;
use dispatch::Dispatcher;
use session_router::Router;
use std::sync::Arc;
use storage::Backends;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Presence changes within this window are announced once, as they stand.
const PRESENCE_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);
/// How often each node looks up again the users its connections watch.
const PRESENCE_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

/// The open storage backend, to close at shutdown.
pub enum Store {
    #[cfg(feature = "embedded")]
    Embedded(Arc<storage_embedded::EmbeddedStore>),
    Cluster,
}

impl Store {
    /// Closes what needs closing (the embedded store's log and database).
    pub async fn close(&self) {
        #[cfg(feature = "embedded")]
        if let Store::Embedded(store) = self {
            store.close().await;
            info!("storage closed");
        }
    }

    /// The embedded store, if that is the backend.
    #[cfg(feature = "embedded")]
    pub fn embedded(&self) -> Option<&Arc<storage_embedded::EmbeddedStore>> {
        match self {
            Store::Embedded(store) => Some(store),
            Store::Cluster => None,
        }
    }
}

/// Opens the configured storage backend for node `node_id`, with the
/// handle that closes it at shutdown.
pub async fn open_storage(config: &Config, node_id: &str) -> anyhow::Result<(Backends, Store)> {
    #[cfg(not(feature = "cluster"))]
    let _ = node_id;
    match config.storage.backend {
        #[cfg(feature = "cluster")]
        config::Backend::Cluster => {
            let (backends, _) = storage_cluster::connect(config.cluster(), node_id).await?;
            Ok((backends, Store::Cluster))
        }
        #[cfg(feature = "embedded")]
        config::Backend::Embedded => {
            let options = storage_embedded::EmbeddedOptions {
                max_devices_per_user: config.storage.max_devices_per_user,
                ..Default::default()
            };
            let (backends, store) = storage_embedded::open(&config.storage.data_dir, options)
                .with_context(|| format!("cannot open the data directory {}", config.storage.data_dir.display()))?;
            Ok((backends, Store::Embedded(store)))
        }
        #[allow(unreachable_patterns)]
        other => anyhow::bail!(
            "storage.backend = \"{}\": this dongdong was built without that backend (cargo feature `{}`)",
            other.name(),
            other.name()
        ),
    }
}

/// Rebuilds the search index of the configured storage from its messages
/// (`dongdong reindex`); returns how many were indexed.
pub async fn reindex(config: &Config, progress: impl FnMut(u64)) -> anyhow::Result<u64> {
    let node_id = format!("reindex-{}", config.node_id());
    let (backends, store) = open_storage(config, &node_id).await?;
    let result = dispatch::search::rebuild(&backends, progress).await;
    store.close().await;
    result.context("cannot rebuild the search index")
}

/// Runs a server on the configured storage until `shutdown` fires.
pub async fn run(
    ws: TcpListener,
    http: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let node_id = config.node_id();
    let (backends, store) = open_storage(&config, &node_id).await?;
    let result = run_with_backends(ws, http, &config, &node_id, backends, shutdown).await;
    store.close().await;
    result
}

/// The parts of a running server, wired to `backends`: what
/// [`run_with_backends`] serves (and what the HTTP fuzzer drives).
pub(crate) struct Assembled {
    pub gateway: Arc<Gateway>,
    pub router: Arc<Router>,
    pub health: Arc<dyn storage::HealthCheck>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The API and the consoles, without /healthz and /metrics.
    pub routes: axum::Router,
    pub limits: Arc<limits_api::LiveLimits>,
}

pub(crate) async fn assemble(
    config: &Config,
    node_id: &str,
    backends: Backends,
    ws_port: u16,
    shutdown: CancellationToken,
) -> anyhow::Result<Assembled> {
    let metrics = http::install_metrics();
    let secret = secret::resolve(config)?;
    let health = backends.health.clone();
    let router = Arc::new(Router::new(node_id, backends.presence.clone(), config.limits.connection.delivery_queue));
    if let Some(bus) = &backends.bus {
        router.attach_bus(bus.clone(), shutdown.clone()).await.context("cannot subscribe to the node bus")?;
    }
    router.start_presence(PRESENCE_WINDOW, PRESENCE_RECHECK, shutdown.clone());
    let live_limits = limits_api::LiveLimits::start(
        config.limits.rates.clone(),
        &config.auth.operator_key,
        backends.settings.clone(),
        backends.bus.clone(),
        shutdown.clone(),
    )
    .await
    .context("cannot start the rate limits")?;
    let cs_store = backends.cs.clone();
    let revocations = backends.revocations.clone();
    let files_backends = backends.clone();
    let dispatch = Dispatcher::new(backends, router.clone(), config.dispatch());
    if let Some(pusher) = dispatch::push::Pusher::start(
        config.push.clone(),
        files_backends.messages.clone(),
        files_backends.push_queue.clone(),
        shutdown.clone(),
    ) {
        info!(url = %config.push.webhook_url, "offline push through the webhook is on");
        dispatch.set_pusher(pusher);
    }
    dispatch.start_indexer(config.search.clone(), shutdown.clone());
    let cs =
        cs_queue::CsService::start(cs_store, dispatch.clone(), router.clone(), config.cs.clone(), shutdown.clone());
    for g in &config.cs.groups {
        cs.seed(&g.tenant, g.spec(), &g.agents)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the configured group {}/{}: {}", g.tenant, g.id, e.message))?;
    }
    let signer = Arc::new(TokenSigner::new(&secret));
    let api = cs_api::CsApi {
        cs: cs.clone(),
        signer: signer.clone(),
        revocations: revocations.clone(),
        router: router.clone(),
    };
    let dev_login = config.auth.secret.is_empty();
    if dev_login {
        tracing::warn!(
            "dev sign-in is on (POST /api/v1/dev/token mints any token): the server runs with its generated dev secret"
        );
    }
    let web = web::Web {
        public_ws_url: config.server.public_ws_url.clone(),
        ws_port,
        dev_signer: dev_login.then(|| signer.clone()),
        recall_window: config.im.messages.recall_window,
        max_file_bytes: config.files.max_bytes,
    };
    let proxy_header = Some(config.server.trusted_proxy_header.to_ascii_lowercase()).filter(|h| !h.is_empty());
    let search = search_api::SearchApi { api: api.clone(), dispatch: dispatch.clone() };
    let widget = widget_api::WidgetApi { api: api.clone(), settings: files_backends.settings.clone() };
    let gateway = Arc::new(Gateway {
        config: config.gateway(),
        signer,
        dispatch,
        router: router.clone(),
        cs,
        revocations,
        limits: live_limits.limits(),
        proxy_header,
        parked: Default::default(),
    });
    let files = files_api::FilesApi::new(api.clone(), &files_backends, config.files.clone(), &secret);
    files_api::start_retention(files_backends.files.clone(), config.files.retention, shutdown.clone());
    let routes = cs_api::routes(api.clone())
        .merge(admin_api::routes(api))
        .merge(files_api::routes(files))
        .merge(search_api::routes(search))
        .merge(widget_api::routes(widget))
        .merge(limits_api::routes(live_limits.clone()))
        .merge(web::routes(web));
    Ok(Assembled { gateway, router, health, metrics, routes, limits: live_limits })
}

/// Runs a server on the given backends until `shutdown` fires: stops
/// accepting, closes every connection with 1012, then returns.
pub async fn run_with_backends(
    ws: TcpListener,
    http: TcpListener,
    config: &Config,
    node_id: &str,
    backends: Backends,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Assembled { gateway, router, health, metrics, routes, limits } =
        assemble(config, node_id, backends, ws.local_addr()?.port(), shutdown.clone()).await?;
    let tls = tls_files(config)?;
    on_hangup(config, limits, tls.clone(), shutdown.clone())?;
    let (ws_tls, http_tls) = match &tls {
        Some(files) => (
            Some(files.acceptor(&[]).map_err(|e| anyhow::anyhow!(e))?),
            Some(files.acceptor(&[b"http/1.1"]).map_err(|e| anyhow::anyhow!(e))?),
        ),
        None => (None, None),
    };
    let (ws_scheme, http_scheme) = if tls.is_some() { ("wss", "https") } else { ("ws", "http") };
    let ws_addr = ws.local_addr()?;
    let http_addr = http.local_addr()?;
    info!(
        node_id,
        ws = %format!("{ws_scheme}://{ws_addr}/ws"),
        http = %format!("{http_scheme}://{http_addr}"),
        consoles = %format!("{http_scheme}://{http_addr}/chat /agent /supervisor"),
        "dongdong serving"
    );

    let http_task = tokio::spawn(http::serve(
        http,
        http_tls,
        router,
        node_id.to_string(),
        health,
        metrics,
        routes,
        shutdown.clone(),
    ));
    access_gateway::serve(ws, gateway.clone(), shutdown.clone(), ws_tls).await;
    shutdown.cancel();
    // Acks of the closed connections reach the store before it closes.
    gateway.dispatch.acks().flush().await;
    http_task.await.context("HTTP task failed")??;
    info!("all connections closed");
    Ok(())
}

/// The TLS certificate and key of the configuration, if set.
fn tls_files(config: &Config) -> anyhow::Result<Option<Arc<access_gateway::tls::TlsFiles>>> {
    let (cert, key) = (&config.server.tls_cert, &config.server.tls_key);
    if cert.as_os_str().is_empty() {
        return Ok(None);
    }
    let files = access_gateway::tls::TlsFiles::load(cert, key).map_err(|e| anyhow::anyhow!("server.tls_cert: {e}"))?;
    Ok(Some(files))
}

/// On every SIGHUP until `shutdown`: the TLS certificate is read again, and
/// the config file, whose rate limits are put in force. Anything invalid
/// is logged and what is running stays.
fn on_hangup(
    config: &Config,
    limits: Arc<limits_api::LiveLimits>,
    tls: Option<Arc<access_gateway::tls::TlsFiles>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut hangups =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut running = config.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: cannot reload the TLS certificate; the one in use stays")
                    }
                }
            }
            match running.reload() {
                Ok(None) => {}
                Ok(Some(new)) => {
                    if let Err(e) = limits.set_file(new.limits.rates.clone()) {
                        tracing::error!(error = %e, "SIGHUP: the running limits stay");
                        continue;
                    }
                    info!("SIGHUP: configuration read again");
                    if new.needs_restart_for(&running) {
                        tracing::warn!("SIGHUP: changes other than [limits] rates take effect at the next start");
                    }
                    running = new;
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: the configuration is invalid; the running limits stay"),
            }
        }
    });
    Ok(())
}

/// Listens on `addr` with a deep accept backlog (capped by the kernel's
/// somaxconn): thousands of clients reconnecting at once after a restart
/// must queue in the kernel, not have their SYNs dropped and retried a
/// second later. tokio's `TcpListener::bind` asks for 128 here.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accept backlog of the listeners.
pub const LISTEN_BACKLOG: u32 = 4096;
