//! A quick load check against a running server: P sender→receiver pairs over
//! real WebSockets; each sender keeps a window of W unacknowledged sends;
//! receivers ack every delivery. Prints delivered msg/s and end-to-end latency
//! percentiles, and checks nothing acked went missing.
//!
//! The full load bot with scenarios is `dongdong bot` (issue 4); this is the
//! smallest honest measurement.
//!
//! ```text
//! cargo run --release -p dongdong-tests --example quick_load -- \
//!     ws://127.0.0.1:7800/ws[,ws://...] SECRET PAIRS WINDOW SECONDS
//! ```
//! With several URLs (nodes of a cluster), pair i's sender connects to node
//! i mod n and its receiver to the next node, so every message crosses nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dongdong_tests::Client;
use im_core::pb::{self, frame::Body};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let urls: Vec<String> = args
        .get(1)
        .map(|a| a.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| vec!["ws://127.0.0.1:7800/ws".into()]);
    let secret = args.get(2).cloned().unwrap_or_else(|| dongdong_tests::SECRET.into());
    let pairs: usize = args.get(3).map(|a| a.parse().unwrap()).unwrap_or(100);
    let window: usize = args.get(4).map(|a| a.parse().unwrap()).unwrap_or(10);
    let seconds: u64 = args.get(5).map(|a| a.parse().unwrap()).unwrap_or(30);
    let signer = access_gateway::TokenSigner::new(secret.as_bytes());
    let tenant = format!("load-{}", im_core::now_ms());
    let token = |u: &str| signer.mint(&tenant, u, im_core::Role::Customer, Duration::from_secs(3600)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);

    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for p in 0..pairs {
        let mut rx = Client::login(&urls[(p + 1) % urls.len()], &token(&format!("r{p}")), "d").await;
        let mut tx = Client::login(&urls[p % urls.len()], &token(&format!("s{p}")), "d").await;
        receivers.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut seen = HashSet::new();
            loop {
                let frame = match rx.recv(Duration::from_secs(3)).await {
                    Some(Ok(f)) => f,
                    _ => break,
                };
                if let Some(Body::Deliver(d)) = frame.body {
                    let m = d.message.unwrap();
                    if let Some(pb::content::Kind::Text(t)) = m.content.and_then(|c| c.kind) {
                        let sent_us: u64 = t.parse().unwrap_or(0);
                        let now_us = std::time::UNIX_EPOCH.elapsed().unwrap().as_micros() as u64;
                        hist.record(now_us.saturating_sub(sent_us).max(1)).unwrap();
                    }
                    rx.ack(vec![m.msg_id.clone()]).await;
                    seen.insert(m.msg_id);
                }
            }
            (hist, seen)
        }));
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut inflight = std::collections::VecDeque::new();
            let mut n = 0u64;
            let mut errors = 0u64;
            while Instant::now() < deadline || !inflight.is_empty() {
                while inflight.len() < window && Instant::now() < deadline {
                    let now_us = std::time::UNIX_EPOCH.elapsed().unwrap().as_micros() as u64;
                    inflight
                        .push_back(tx.send_text_nowait(&format!("r{p}"), &format!("c{n}"), &now_us.to_string()).await);
                    n += 1;
                }
                let Some(req) = inflight.pop_front() else { break };
                match tx.reply(req).await.body {
                    Some(Body::SendAck(a)) => acked.push(a.msg_id),
                    _ => errors += 1,
                }
            }
            (acked, errors)
        }));
    }
    let started = Instant::now();
    let mut acked = Vec::new();
    let mut errors = 0;
    for s in senders {
        let (a, e) = s.await.unwrap();
        acked.extend(a);
        errors += e;
    }
    let send_secs = started.elapsed().as_secs_f64();
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut seen = HashSet::new();
    for r in receivers {
        let (h, s) = r.await.unwrap();
        hist.add(h).unwrap();
        seen.extend(s);
    }
    let lost = acked.iter().filter(|id| !seen.contains(*id)).count();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "nodes={} pairs={pairs} window={window} duration={send_secs:.1}s acked={} delivered={} msg/s={:.0} \
         latency_ms p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2} errors={errors} acked_but_not_delivered={lost}",
        urls.len(),
        acked.len(),
        hist.len(),
        hist.len() as f64 / send_secs,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0,
    );
}
