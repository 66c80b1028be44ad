//! The accept loop. A connection permit is taken before `accept`, so at the
//! limit new connections wait in the kernel's backlog instead of costing
//! memory here. Errors of one connection never reach the loop.

use crate::{Gateway, GatewayConfig, connection};
use im_core::CloseCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// The WebSocket path.
pub const WS_PATH: &str = "/ws";

/// tungstenite settings from the gateway limits: small I/O buffers (the
/// defaults allocate 128 KiB per connection) and the frame size limit.
pub fn websocket_config(config: &GatewayConfig) -> WebSocketConfig {
    let buffer = config.io_buffer_bytes.max(128);
    WebSocketConfig::default()
        .read_buffer_size(buffer)
        .write_buffer_size(buffer)
        .max_write_buffer_size(buffer + 4 * config.max_frame_bytes)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
}

/// Accepts connections on `listener` (with TLS when `tls` is given) until
/// `shutdown` fires, then closes every connection (code 1012) and returns
/// when all have finished.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let permits = Arc::new(Semaphore::new(gw.config.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let ws_config = websocket_config(&gw.config);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let gw = gw.clone();
        let conn_shutdown = shutdown.clone();
        let conn_tracker = tracker.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let timeout = gw.config.auth_timeout;
            let Some(tls) = tls else {
                let handshake = tokio_tungstenite::accept_hdr_async_with_config(tcp, check_path, Some(ws_config));
                match tokio::time::timeout(timeout, handshake).await {
                    // A task of its own: a task keeps the size of its largest
                    // state for life, and the handshake's is large.
                    Ok(Ok(ws)) => {
                        drop(conn_tracker.spawn(connection::handle_socket(ws, gw, conn_shutdown, peer).holding(permit)))
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "WebSocket handshake failed"),
                    Err(_) => debug!(%peer, "WebSocket handshake timed out"),
                }
                return;
            };
            // TLS, then the WebSocket handshake, within the same time.
            let handshake = async {
                let stream = tls.accept(tcp).await.map_err(|e| format!("TLS handshake failed: {e}"))?;
                tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(ws_config))
                    .await
                    .map_err(|e| format!("WebSocket handshake failed: {e}"))
            };
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(ws)) => {
                    drop(conn_tracker.spawn(connection::handle_socket(ws, gw, conn_shutdown, peer).holding(permit)))
                }
                Ok(Err(e)) => {
                    metrics::counter!("dongdong_handshake_failures_total").increment(1);
                    debug!(%peer, error = %e, "handshake failed")
                }
                Err(_) => debug!(%peer, "TLS or WebSocket handshake timed out"),
            }
        });
    }
    tracker.close();
    // Connections that are logging in see `shutdown`; the others are closed
    // through their mailboxes (one that registers after this sees `shutdown`).
    gw.dispatch.router().kick_all(CloseCode::ServiceRestart, "server shutting down");
    info!(connections = tracker.len(), "listener closed; waiting for connections to close");
    tracker.wait().await;
}

#[allow(clippy::result_large_err)]
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == WS_PATH {
        return Ok(resp);
    }
    let mut err = ErrorResponse::new(Some(format!("not found: the WebSocket endpoint is {WS_PATH}\n")));
    *err.status_mut() = StatusCode::NOT_FOUND;
    Err(err)
}
