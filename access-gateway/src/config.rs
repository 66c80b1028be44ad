//! Limits and timers of the gateway. Defaults are the documented ones.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
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
    /// Time allowed for the WebSocket handshake and then for the Auth frame.
    pub auth_timeout: Duration,
    /// A connection silent this long is closed (a WebSocket ping is sent at half).
    pub idle_timeout: Duration,
    /// Unacknowledged deliveries are sent again after this long.
    pub ack_timeout: Duration,
    /// Resends of one delivery before the connection is closed (it stays pending).
    pub max_resends: u32,
    /// Open connections this node accepts; more wait in the listen backlog.
    pub max_connections: usize,
    /// tungstenite read/write buffer per connection: the main per-connection memory cost.
    pub io_buffer_bytes: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            delivery_queue: 1024,
            max_inflight: 512,
            max_sends_in_flight: 64,
            max_presence_subscriptions: 200,
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            ack_timeout: Duration::from_secs(10),
            max_resends: 3,
            max_connections: 19_000,
            io_buffer_bytes: 256,
        }
    }
}

impl GatewayConfig {
    /// The delivery window's share of these limits.
    pub fn window_limits(&self) -> crate::window::WindowLimits {
        crate::window::WindowLimits {
            max_inflight: self.max_inflight,
            ack_timeout: self.ack_timeout,
            max_resends: self.max_resends,
        }
    }
}
