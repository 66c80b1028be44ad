//! Limits and timers of the gateway, as configured: [`ConnectionLimits`]
//! are the gateway's keys of `[limits]`, [`Timeouts`] the `[timeouts]`
//! section. Each key is declared here once, with its default and its check;
//! the server's config embeds these types.

use im_core::InvalidSetting;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The gateway's keys of `[limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Largest WebSocket message accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Frames queued for writing to one connection; beyond it the client is a
    /// slow consumer and is disconnected.
    pub outbound_queue: usize,
    /// Messages the router may queue for one connection.
    pub delivery_queue: usize,
    /// Deliveries a connection may leave unacknowledged; replay sends at most
    /// this many before waiting for acks.
    pub max_inflight: usize,
    /// Sends of one connection being stored at the same time.
    pub max_sends_in_flight: usize,
    /// Users one connection may watch the presence of.
    pub max_presence_subscriptions: usize,
    /// Resends of one delivery before the connection is closed (it stays pending).
    pub max_resends: u32,
    /// Open connections this node accepts; more wait in the listen backlog.
    pub max_connections: usize,
    /// tungstenite read/write buffer per connection: the main per-connection memory cost.
    pub io_buffer_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            delivery_queue: 1024,
            max_inflight: 512,
            max_sends_in_flight: 64,
            max_presence_subscriptions: 200,
            max_resends: 3,
            max_connections: 19_000,
            io_buffer_bytes: 256,
        }
    }
}

impl ConnectionLimits {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(1024..=16 << 20).contains(&self.max_frame_bytes) {
            return Err(InvalidSetting::new("limits.max_frame_bytes", "must be between 1024 and 16777216"));
        }
        for (key, v) in [
            ("limits.delivery_queue", self.delivery_queue),
            ("limits.max_inflight", self.max_inflight),
            ("limits.max_sends_in_flight", self.max_sends_in_flight),
            ("limits.max_presence_subscriptions", self.max_presence_subscriptions),
            ("limits.max_connections", self.max_connections),
        ] {
            if v == 0 {
                return Err(InvalidSetting::new(key, "must be at least 1"));
            }
        }
        if self.outbound_queue < 16 {
            return Err(InvalidSetting::new("limits.outbound_queue", "must be at least 16"));
        }
        if !(128..=1 << 20).contains(&self.io_buffer_bytes) {
            return Err(InvalidSetting::new("limits.io_buffer_bytes", "must be between 128 and 1048576"));
        }
        Ok(())
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time allowed for the WebSocket handshake and then for the Auth frame.
    #[serde(with = "humantime_serde")]
    pub auth: Duration,
    /// A connection silent this long is closed (a WebSocket ping is sent at half).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Unacknowledged deliveries are sent again after this long.
    #[serde(with = "humantime_serde")]
    pub ack: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { auth: Duration::from_secs(10), idle: Duration::from_secs(90), ack: Duration::from_secs(10) }
    }
}

impl Timeouts {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (key, v) in [("timeouts.auth", self.auth), ("timeouts.idle", self.idle), ("timeouts.ack", self.ack)] {
            if v < Duration::from_millis(10) {
                return Err(InvalidSetting::new(key, "must be at least 10ms"));
            }
        }
        Ok(())
    }
}

/// The gateway's keys of `[im]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sessions {
    /// A connection that drops (no Close from the client) keeps its session
    /// this long for its device to resume (`Auth.resume_token`): what it
    /// had not acknowledged is resent and nothing replayed from storage.
    /// "0s": no resume.
    #[serde(with = "humantime_serde")]
    pub resume_window: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Self { resume_window: Duration::from_secs(300) }
    }
}

impl Sessions {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.resume_window > Duration::from_secs(3600) {
            return Err(InvalidSetting::new("im.resume_window", "must be at most 1h (0s: no resume)"));
        }
        Ok(())
    }
}

/// Everything a connection is bounded and timed by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayConfig {
    pub limits: ConnectionLimits,
    pub timeouts: Timeouts,
    pub sessions: Sessions,
    /// More than one node stores messages (the cluster backend): see
    /// [`WindowLimits::order_across_nodes`](crate::window::WindowLimits).
    pub order_across_nodes: bool,
}

impl GatewayConfig {
    /// The delivery window's share of these limits.
    pub fn window_limits(&self) -> crate::window::WindowLimits {
        crate::window::WindowLimits {
            max_inflight: self.limits.max_inflight,
            ack_timeout: self.timeouts.ack,
            max_resends: self.limits.max_resends,
            order_across_nodes: self.order_across_nodes,
        }
    }
}
