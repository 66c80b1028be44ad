//! The accept loop. A connection permit is taken before `accept`, so at the
//! limit new connections wait in the kernel's backlog instead of costing
//! memory here. Errors of one connection never reach the loop.

use crate::limits::LoginGuard;
use crate::{Gateway, GatewayConfig, connection};
use im_core::CloseCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
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
    let buffer = config.limits.io_buffer_bytes.max(128);
    WebSocketConfig::default()
        .read_buffer_size(buffer)
        .write_buffer_size(buffer)
        .max_write_buffer_size(buffer + 4 * config.limits.max_frame_bytes)
        .max_message_size(Some(config.limits.max_frame_bytes))
        .max_frame_size(Some(config.limits.max_frame_bytes))
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
    let permits = Arc::new(Semaphore::new(gw.config.limits.max_connections.max(1)));
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
        // Without a trusted proxy the peer is the client: counted from
        // here. Behind one, from its header in the upgrade request.
        let guard = if gw.proxy_header.is_some() {
            None
        } else {
            match gw.limits.begin_login(peer.ip()) {
                Ok(g) => Some(g),
                Err(refused) => {
                    debug!(%peer, "{}", refused.message);
                    continue;
                }
            }
        };
        let gw = gw.clone();
        let conn_shutdown = shutdown.clone();
        let conn_tracker = tracker.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let deadline = tokio::time::Instant::now() + gw.config.timeouts.auth;
            let opened = async {
                let Some(tls) = tls else {
                    let (ws, peer, guard) = upgrade(tcp, &gw, peer, guard, ws_config).await?;
                    return Ok(conn_tracker
                        .spawn(connection::handle_socket(ws, gw.clone(), conn_shutdown, peer, guard).holding(permit)));
                };
                let stream = tls.accept(tcp).await.map_err(|e| format!("TLS handshake failed: {e}"))?;
                let (ws, peer, guard) = upgrade(stream, &gw, peer, guard, ws_config).await?;
                Ok::<_, String>(
                    conn_tracker
                        .spawn(connection::handle_socket(ws, gw.clone(), conn_shutdown, peer, guard).holding(permit)),
                )
            };
            // The connection runs in a task of its own: a task keeps the
            // size of its largest state for life, and the handshake's is large.
            match tokio::time::timeout_at(deadline, opened).await {
                Ok(Ok(task)) => drop(task),
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
    gw.router.kick_all(CloseCode::ServiceRestart, "server shutting down");
    info!(connections = tracker.len(), "listener closed; waiting for connections to close");
    tracker.wait().await;
}

/// The WebSocket handshake on `stream`. Behind a trusted proxy, the
/// client's address is read from its header and the connection counted
/// against that address's logins in progress (refused with 429 beyond).
async fn upgrade<S>(
    stream: S,
    gw: &Gateway,
    peer: SocketAddr,
    guard: Option<LoginGuard>,
    ws_config: WebSocketConfig,
) -> Result<(WebSocketStream<S>, SocketAddr, Option<LoginGuard>), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut found = (peer, guard);
    #[allow(clippy::result_large_err)] // tungstenite's callback type
    let callback = |req: &Request, resp: Response| check_request(req, resp, gw, &mut found);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config))
        .await
        .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
    Ok((ws, found.0, found.1))
}

#[allow(clippy::result_large_err)]
fn check_request(
    req: &Request,
    resp: Response,
    gw: &Gateway,
    found: &mut (SocketAddr, Option<LoginGuard>),
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, body: String| {
        let mut err = ErrorResponse::new(Some(body));
        *err.status_mut() = status;
        err
    };
    if req.uri().path() != WS_PATH {
        return Err(refuse(StatusCode::NOT_FOUND, format!("not found: the WebSocket endpoint is {WS_PATH}\n")));
    }
    let Some(header) = gw.proxy_header.as_deref() else { return Ok(resp) };
    let value = req.headers().get(header).map(|v| v.as_bytes());
    let Some(ip) = crate::limits::source_address(found.0.ip(), Some(header), value) else {
        let body = format!("no client address in the {header} header (server.trusted_proxy_header)\n");
        return Err(refuse(StatusCode::BAD_REQUEST, body));
    };
    let guard = gw.limits.begin_login(ip).map_err(|r| refuse(StatusCode::TOO_MANY_REQUESTS, r.message + "\n"))?;
    *found = (SocketAddr::new(ip, 0), Some(guard));
    Ok(resp)
}
