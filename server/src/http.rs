//! HTTP endpoints: `/healthz`, `/metrics` (Prometheus text format), the
//! customer-service API (`/api/v1`, see [`crate::cs_api`]) and the web
//! consoles ([`crate::web`]).

use axum::Router as Http;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use session_router::Router;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The process-wide metrics recorder (installed once, shared by every server
/// in the process, e.g. in tests).
pub(crate) fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("dongdong_store_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

#[derive(Clone)]
struct AppState {
    router: Arc<Router>,
    node_id: String,
    health: Arc<dyn storage::HealthCheck>,
    metrics: PrometheusHandle,
}

/// The HTTP listener with TLS: handshakes run in tasks of their own (a
/// slow one holds up no other) and finished ones are handed to axum.
struct TlsListener {
    done: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    fn start(
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, done) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "HTTPS accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => drop(tx.send((stream, peer)).await),
                        Ok(Err(e)) => {
                            metrics::counter!("dongdong_handshake_failures_total").increment(1);
                            tracing::debug!(%peer, error = %e, "HTTPS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { done, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(x) => x,
            // Shut down: nothing more comes; axum stops through its own signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Arc<Router>,
    node_id: String,
    health: Arc<dyn storage::HealthCheck>,
    metrics: PrometheusHandle,
    api: Http,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let upkeep = metrics.clone();
    let upkeep_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                _ = upkeep_stop.cancelled() => break,
            }
        }
    });
    let app = Http::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { router, node_id, health, metrics })
        .merge(api);
    match tls {
        Some(acceptor) => {
            let listener = TlsListener::start(listener, acceptor, shutdown.clone())?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?,
    }
    Ok(())
}

/// 200 when every storage dependency answers, 503 otherwise.
async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let checks = tokio::time::timeout(Duration::from_secs(3), s.health.check())
        .await
        .unwrap_or_else(|_| vec![("storage", Err("health check timed out".to_string()))]);
    let healthy = checks.iter().all(|(_, r)| r.is_ok());
    let storage: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(()) => serde_json::json!("ok"),
                Err(e) => serde_json::json!({ "error": e }),
            };
            (name.to_string(), v)
        })
        .collect();
    let status = if healthy { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "node_id": s.node_id,
        "connections": s.router.local_connections(),
        "storage": storage,
    });
    (status, axum::Json(body))
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render())
}
