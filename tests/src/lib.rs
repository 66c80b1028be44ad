//! Test harness: start dongdong in-process on port 0 ([`TestServer`]) and
//! talk to it with a real WebSocket [`Client`]. The scenarios live in
//! `tests/scenarios/` (one test binary), which also runs the real server
//! binary as a child process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod client;
pub mod http;
pub mod server;
pub mod services;

pub use client::Client;
pub use server::TestServer;

/// The token secret every test server uses.
pub const SECRET: &str = "test-secret-0123456789abcdef";
