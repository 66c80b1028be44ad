//! The access gateway: accepts WebSocket connections at `/ws`, authenticates
//! them, and runs each connection's protocol (see [`connection`]); the
//! delivery rules of a connection are the I/O-free [`window`].

mod auth;
pub mod backlog;
pub mod config;
pub mod connection;
pub mod limits;
pub mod resume;
mod server;
pub mod tls;
pub mod window;

pub use auth::is_revoked;
pub use config::{ConnectionLimits, GatewayConfig, Sessions, Timeouts};
pub use im_core::token::{AuthError, Claims, TokenSigner};
pub use limits::{Limits, RateLimits};
pub use server::{serve, websocket_config};

use dispatch::Dispatcher;
use session_router::Router;
use std::sync::Arc;

/// Everything a connection needs, shared by all of them.
pub struct Gateway {
    pub config: GatewayConfig,
    pub signer: Arc<TokenSigner>,
    pub dispatch: Arc<Dispatcher>,
    /// Registers connections and carries pushes, typing and presence.
    pub router: Arc<Router>,
    pub cs: Arc<cs_queue::CsService>,
    /// Tokens revoked by user: checked at every Auth.
    pub revocations: Arc<dyn storage::Revocations>,
    /// The rate limits in force (changeable while running).
    pub limits: Arc<Limits>,
    /// The HTTP header a trusted reverse proxy puts the client's address in
    /// (`None`: the TCP peer's address is the client's).
    pub proxy_header: Option<String>,
    /// Sessions of dropped connections, for their devices to resume.
    pub parked: resume::ParkedSessions,
}
