//! Test harness: start dongdong in-process on port 0 ([`TestServer`]) or as
//! the real binary in a child process ([`ChildServer`]), and talk to it with a
//! real WebSocket [`Client`]. The scenarios live in `scenarios/`, one test
//! binary for all of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod child;
pub mod client;
pub mod server;

pub use child::ChildServer;
pub use client::Client;
pub use server::TestServer;

/// The token secret every test server uses.
pub const SECRET: &str = "test-secret-0123456789abcdef";

#[cfg(test)]
mod scenarios;
