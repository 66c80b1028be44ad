//! The first frame of a connection: `Auth`, verified, the device
//! registered and its presence published, answered with `AuthOk`. Any
//! failure is answered with an `Error` and a close.

use super::outbox::Outbox;
use super::wire::{Exit, Incoming, classify, close, encode, error_frame};
use crate::Gateway;
use crate::resume::Parked;
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

/// How long a sign-in that resumes waits for the connection it replaces
/// (still open: the server had not noticed it was gone) to park its
/// session; past it, the sign-in replays from storage instead.
const REPLACED_PARKS_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

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
        Ok(a) => {
            let caller = cs_queue::Caller::of_device(&a.device, a.role);
            gw.cs.remember_identity(&caller, a.identity).await;
            gw.cs.on_connect(&caller).await;
            // Checked after registering: the server closes registered
            // connections through the router, and this one may have
            // registered just after it did.
            let shutting_down = shutdown.is_cancelled();
            let session = Session {
                gw,
                device: a.device,
                role: a.role,
                encoding: a.encoding,
                registration: a.registration,
                pending_count: a.pending_count,
                resumed: a.resumed,
            };
            Ok((session, shutting_down))
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
    /// The session this sign-in resumed.
    pub resumed: Option<Parked>,
}

/// A successful sign-in.
struct Authenticated {
    device: Arc<DeviceKey>,
    role: im_core::Role,
    encoding: Encoding,
    registration: Registration,
    pending_count: u64,
    identity: cs_queue::Identity,
    resumed: Option<Parked>,
}

/// Why a login fails: the `Error` it is answered with, then the close.
struct Refusal {
    code: ErrorCode,
    message: String,
    close: CloseCode,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>, close: CloseCode) -> Self {
        Self { code, message: message.into(), close }
    }

    /// Queues the `Error` (always room: nothing else was queued yet) and
    /// gives the close.
    fn answer(self, out: &mut Outbox, encoding: Encoding, req_id: u64) -> Exit {
        let _ = out.push(encode(encoding, &error_frame(req_id, self.code, self.message.clone())));
        close(self.close, self.message)
    }
}

/// How reading the first frame ended, when it did not yield an `Auth`.
enum NoAuth {
    /// Refused: in this encoding, as the answer to this req_id.
    Refused(Encoding, u64, Refusal),
    /// The socket ended or the server is shutting down: nothing to answer.
    Gone(Exit),
}

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
    let (encoding, req_id, mut auth) = match read_auth(stream, gw, shutdown).await {
        Ok(read) => read,
        Err(NoAuth::Refused(encoding, req_id, refusal)) => return Err(refusal.answer(out, encoding, req_id)),
        Err(NoAuth::Gone(exit)) => return Err(exit),
    };
    let resume_from = std::mem::take(&mut auth.resume_token);
    let (claims, device) = match check(gw, auth).await {
        Ok(checked) => checked,
        Err(refusal) => return Err(refusal.answer(out, encoding, req_id)),
    };
    let (registration, pending_count) = match register(gw, &device).await {
        Ok(registered) => registered,
        Err(refusal) => return Err(refusal.answer(out, encoding, req_id)),
    };
    let resumed = match gw.parked.connection_of(&resume_from) {
        Some(old) if !gw.config.sessions.resume_window.is_zero() => {
            let alive = || gw.router.holds(old);
            gw.parked.take_when_parked(old, &device, alive, Instant::now() + REPLACED_PARKS_WITHIN).await
        }
        _ => None,
    };
    metrics::counter!("dongdong_sign_ins_total", "resumed" => if resumed.is_some() { "true" } else { "false" })
        .increment(1);
    let resume_token =
        if gw.config.sessions.resume_window.is_zero() { String::new() } else { gw.parked.token(registration.conn_id) };
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
            resume_token: resume_token.clone(),
            resumed: resumed.is_some(),
        })),
    };
    let _ = out.push(encode(encoding, &ok));
    let identity = cs_queue::Identity { name: claims.name, avatar: claims.avatar };
    Ok(Authenticated { device, role: claims.role, encoding, registration, pending_count, identity, resumed })
}

/// The first frame, which must be an `Auth`, within `timeouts.auth`.
async fn read_auth<S>(
    stream: &mut S,
    gw: &Gateway,
    shutdown: &CancellationToken,
) -> Result<(Encoding, u64, pb::Auth), NoAuth>
where
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let deadline = Instant::now() + gw.config.timeouts.auth;
    let refuse = |encoding, req_id, code, message: String, close| {
        NoAuth::Refused(encoding, req_id, Refusal::new(code, message, close))
    };
    let (encoding, payload) = loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = sleep_until(deadline) => {
                let secs = gw.config.timeouts.auth.as_secs_f64();
                return Err(refuse(Encoding::Json, 0, ErrorCode::Unauthenticated,
                    format!("no Auth frame within {secs}s"), CloseCode::PolicyViolation));
            }
            _ = shutdown.cancelled() => {
                return Err(NoAuth::Gone(close(CloseCode::ServiceRestart, "server shutting down")));
            }
        };
        match classify(item, gw.config.limits.max_frame_bytes) {
            Incoming::Data(enc, payload) => break (enc, payload),
            Incoming::Heard => continue,
            Incoming::Exit(Exit::Close(CloseCode::TooLarge, reason)) => {
                return Err(refuse(Encoding::Json, 0, ErrorCode::TooLarge, reason.into_owned(), CloseCode::TooLarge));
            }
            Incoming::Exit(exit) => return Err(NoAuth::Gone(exit)),
        }
    };
    let frame = im_core::decode_frame(encoding, &payload)
        .map_err(|e| refuse(encoding, 0, ErrorCode::BadFrame, e.to_string(), CloseCode::PolicyViolation))?;
    match frame.body {
        Some(Body::Auth(auth)) => Ok((encoding, frame.req_id, auth)),
        _ => Err(refuse(
            encoding,
            frame.req_id,
            ErrorCode::Unauthenticated,
            "the first frame must be Auth".into(),
            CloseCode::PolicyViolation,
        )),
    }
}

/// The token (signature, expiry, claims, not revoked) and the device id.
async fn check(gw: &Gateway, auth: pb::Auth) -> Result<(im_core::token::Claims, Arc<DeviceKey>), Refusal> {
    let unauthenticated =
        |message: String| Refusal::new(ErrorCode::Unauthenticated, message, CloseCode::PolicyViolation);
    let claims = gw.signer.verify(&auth.token).map_err(|e| {
        metrics::counter!("dongdong_auth_failures_total").increment(1);
        unauthenticated(match e {
            AuthError::Expired => "token expired".to_string(),
            other => other.to_string(),
        })
    })?;
    match crate::auth::is_revoked(gw.revocations.as_ref(), &claims).await {
        Ok(false) => {}
        Ok(true) => {
            metrics::counter!("dongdong_auth_failures_total").increment(1);
            return Err(unauthenticated("token revoked: sign in again".into()));
        }
        Err(e) => {
            let message = format!("cannot check the token now: {e}");
            return Err(Refusal::new(ErrorCode::Unavailable, message, CloseCode::TryAgainLater));
        }
    }
    im_core::ids::validate_id("device_id", &auth.device_id)
        .map_err(|e| Refusal::new(ErrorCode::InvalidArgument, e, CloseCode::PolicyViolation))?;
    let device = Arc::new(DeviceKey::new(claims.tenant.clone(), claims.sub.clone(), auth.device_id));
    Ok((claims, device))
}

/// Records the device, registers the connection where pushes find it, and
/// counts what is pending for the device.
async fn register(gw: &Gateway, device: &Arc<DeviceKey>) -> Result<(Registration, u64), Refusal> {
    let unavailable = |e: im_core::ClientError| {
        warn!(error = %e, "could not register the connection");
        Refusal::new(e.code, e.message, CloseCode::TryAgainLater)
    };
    let known = gw.dispatch.register_device(device).await.map_err(unavailable)?;
    if let Some(evicted) = &known.evicted {
        info!(evicted, "device limit reached; forgot the least recently seen device");
    }
    let registration = gw.router.register(device.clone()).await.map_err(|e| unavailable(e.into()))?;
    // Acks this node took before (e.g. on the connection this one replaces)
    // reach the store first, so that they are not counted or replayed.
    gw.dispatch.acks().flush().await;
    match gw.dispatch.pending_count(device).await {
        Ok(n) => Ok((registration, n)),
        Err(e) => {
            gw.router.unregister(registration.conn_id).await;
            Err(unavailable(e))
        }
    }
}
