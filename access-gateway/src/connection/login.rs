//! The first frame of a connection: `Auth`, verified, the device
//! registered and its presence published, answered with `AuthOk`. Any
//! failure is answered with an `Error` and a close.

use super::outbox::Outbox;
use super::wire::{Exit, Incoming, classify, close, encode, error_frame};
use crate::Gateway;
use futures_util::{Stream, StreamExt};
use im_core::DeviceKey;
use im_core::pb::{self, Frame, frame::Body};
use im_core::token::AuthError;
use im_core::{CloseCode, Encoding, ErrorCode};
use session_router::Registration;
use std::sync::Arc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What the login phase hands on: the socket, what is queued for it, and
/// the session with whether the server is shutting down (or why not).
pub(crate) struct LoggedIn<S> {
    pub ws: S,
    pub outbox: Outbox,
    pub session: Result<(Session, bool), Exit>,
}

/// The login phase of a connection: `Auth`, then the customer-service
/// bookkeeping of a new connection.
pub(crate) async fn login<S>(
    mut ws: S,
    gw: Arc<Gateway>,
    shutdown: CancellationToken,
    guard: Option<crate::limits::LoginGuard>,
) -> LoggedIn<S>
where
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let mut outbox = Outbox::new(gw.config.limits.outbound_queue);
    let session = match authenticate(&mut ws, &mut outbox, &gw, &shutdown).await {
        Ok((device, role, encoding, registration, pending_count, identity)) => {
            let caller = cs_queue::Caller::of_device(&device, role);
            gw.cs.remember_identity(&caller, identity).await;
            gw.cs.on_connect(&caller).await;
            // Checked after registering: the server closes registered
            // connections through the router, and this one may have
            // registered just after it did.
            let shutting_down = shutdown.is_cancelled();
            Ok((Session { gw, device, role, encoding, registration, pending_count }, shutting_down))
        }
        Err(exit) => Err(exit),
    };
    drop(guard);
    LoggedIn { ws, outbox, session }
}

/// An authenticated, registered connection.
pub(crate) struct Session {
    pub gw: Arc<Gateway>,
    pub device: Arc<DeviceKey>,
    pub role: im_core::Role,
    pub encoding: Encoding,
    pub registration: Registration,
    pub pending_count: u64,
}

type Authenticated = (Arc<DeviceKey>, im_core::Role, Encoding, Registration, u64, cs_queue::Identity);

/// Reads and answers the Auth frame. Replies are queued in `out`.
async fn authenticate<S>(
    stream: &mut S,
    out: &mut Outbox,
    gw: &Gateway,
    shutdown: &CancellationToken,
) -> Result<Authenticated, Exit>
where
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let deadline = Instant::now() + gw.config.timeouts.auth;
    let max_frame = gw.config.limits.max_frame_bytes;
    let mut reject = |encoding: Encoding, req_id: u64, code: ErrorCode, message: String, close_code: CloseCode| {
        // Always room: nothing else was queued yet.
        let _ = out.push(encode(encoding, &error_frame(req_id, code, message.clone())));
        close(close_code, message)
    };
    let (encoding, payload) = loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = sleep_until(deadline) => {
                let secs = gw.config.timeouts.auth.as_secs_f64();
                return Err(reject(Encoding::Json, 0, ErrorCode::Unauthenticated,
                    format!("no Auth frame within {secs}s"), CloseCode::PolicyViolation));
            }
            _ = shutdown.cancelled() => return Err(close(CloseCode::ServiceRestart, "server shutting down")),
        };
        match classify(item, max_frame) {
            Incoming::Data(enc, payload) => break (enc, payload),
            Incoming::Heard => continue,
            Incoming::Exit(Exit::Close(CloseCode::TooLarge, reason)) => {
                return Err(reject(Encoding::Json, 0, ErrorCode::TooLarge, reason.into_owned(), CloseCode::TooLarge));
            }
            Incoming::Exit(exit) => return Err(exit),
        }
    };
    let frame = match im_core::decode_frame(encoding, &payload) {
        Ok(f) => f,
        Err(e) => {
            return Err(reject(encoding, 0, ErrorCode::BadFrame, e.to_string(), CloseCode::PolicyViolation));
        }
    };
    let req_id = frame.req_id;
    let auth = match frame.body {
        Some(Body::Auth(a)) => a,
        _ => {
            return Err(reject(
                encoding,
                req_id,
                ErrorCode::Unauthenticated,
                "the first frame must be Auth".into(),
                CloseCode::PolicyViolation,
            ));
        }
    };
    let claims = match gw.signer.verify(&auth.token) {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("dongdong_auth_failures_total").increment(1);
            let message = match e {
                AuthError::Expired => "token expired".to_string(),
                other => other.to_string(),
            };
            return Err(reject(encoding, req_id, ErrorCode::Unauthenticated, message, CloseCode::PolicyViolation));
        }
    };
    match crate::auth::is_revoked(gw.revocations.as_ref(), &claims).await {
        Ok(true) => {
            metrics::counter!("dongdong_auth_failures_total").increment(1);
            let message = "token revoked: sign in again".to_string();
            return Err(reject(encoding, req_id, ErrorCode::Unauthenticated, message, CloseCode::PolicyViolation));
        }
        Ok(false) => {}
        Err(e) => {
            let message = format!("cannot check the token now: {e}");
            return Err(reject(encoding, req_id, ErrorCode::Unavailable, message, CloseCode::TryAgainLater));
        }
    }
    if let Err(e) = im_core::ids::validate_id("device_id", &auth.device_id) {
        return Err(reject(encoding, req_id, ErrorCode::InvalidArgument, e, CloseCode::PolicyViolation));
    }
    let identity = cs_queue::Identity { name: claims.name, avatar: claims.avatar };
    let device = Arc::new(DeviceKey::new(claims.tenant, claims.sub, auth.device_id));
    let mut unavailable = |e: im_core::ClientError| {
        warn!(error = %e, "could not register the connection");
        reject(encoding, req_id, e.code, e.message, CloseCode::TryAgainLater)
    };
    let registration = match gw.dispatch.register_device(&device).await {
        Ok(r) => r,
        Err(e) => return Err(unavailable(e)),
    };
    if let Some(evicted) = &registration.evicted {
        info!(evicted, "device limit reached; forgot the least recently seen device");
    }
    let registration = match gw.router.register(device.clone()).await {
        Ok(r) => r,
        Err(e) => return Err(unavailable(e.into())),
    };
    // Acks this node took before (e.g. on the connection this one replaces)
    // reach the store first, so that they are not counted or replayed.
    gw.dispatch.acks().flush().await;
    let pending_count = match gw.dispatch.pending_count(&device).await {
        Ok(n) => n,
        Err(e) => {
            gw.router.unregister(registration.conn_id).await;
            return Err(unavailable(e));
        }
    };
    let ok = Frame {
        req_id,
        body: Some(Body::AuthOk(pb::AuthOk {
            tenant: device.tenant.clone(),
            user_id: device.user.clone(),
            device_id: device.device.clone(),
            node_id: gw.router.node_id().to_string(),
            server_time_ms: im_core::now_ms(),
            pending_count,
            role: claims.role.to_string(),
        })),
    };
    let _ = out.push(encode(encoding, &ok));
    Ok((device, claims.role, encoding, registration, pending_count, identity))
}
