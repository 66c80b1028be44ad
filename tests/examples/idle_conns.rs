//! Holds N authenticated idle connections to a running server for a while,
//! so its memory per connection can be read from /proc (the full `idle`
//! bot scenario is issue 4's).
//!
//! ```text
//! cargo run --release -p dongdong-tests --example idle_conns -- ws://127.0.0.1:7800/ws SECRET N SECONDS
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dongdong_tests::Client;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().unwrap_or_else(|| "ws://127.0.0.1:7800/ws".into());
    let secret = args.get(2).cloned().unwrap_or_else(|| dongdong_tests::SECRET.into());
    let n: usize = args.get(3).map(|a| a.parse().unwrap()).unwrap_or(1000);
    let seconds: u64 = args.get(4).map(|a| a.parse().unwrap()).unwrap_or(10);
    let signer = access_gateway::TokenSigner::new(secret.as_bytes());
    let tenant = format!("idle-{}", im_core::now_ms());
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let token = signer.mint(&tenant, &format!("u{i}"), im_core::Role::Customer, Duration::from_secs(3600)).unwrap();
        conns.push(Client::login(&url, &token, "d").await);
    }
    println!("connected={n}");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    println!("done");
}
