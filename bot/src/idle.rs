//! `idle`: N authenticated connections that only send heartbeats. With
//! `--server-pid`, the server's RSS growth per connection.

use super::conn::{Conn, Incoming, error_name};
use super::pairs::closed_key;
use super::report::{self, Report, Sampler};
use super::{ConnSpec, Ctx, connect_all};
use im_core::Role;
use im_core::pb::{self, frame::Body};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Connections per source address when the bot picks the addresses.
const PER_SOURCE: usize = 5000;
/// Time for the server's allocations to settle before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(
    ctx: &Arc<Ctx>,
    connections: usize,
    mut sources: Vec<IpAddr>,
    heartbeat: Duration,
    server: Option<&Sampler>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(heartbeat >= Duration::from_millis(100), "--heartbeat must be at least 100ms");
    if sources.is_empty() && ctx.targets.iter().all(|t| t.addr.ip().is_loopback() && t.addr.is_ipv4()) {
        let n = connections.div_ceil(PER_SOURCE).min(250);
        sources = (0..n).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))).collect();
    }
    let progress = report::progress(ctx.live.clone(), ctx.common.duration, "idle", ctx.common.json);
    progress.phase("connecting");
    let rss_before = server.and_then(Sampler::rss_kib);
    let specs = (0..connections)
        .map(|i| ConnSpec {
            target: i % ctx.targets.len(),
            source: if sources.is_empty() { None } else { Some(sources[i % sources.len()]) },
            user: ctx.user(&format!("i{i}")),
            role: Role::Customer,
            device: "d0".into(),
        })
        .collect();
    let (conns, connects) = connect_all(ctx, specs, ctx.common.ramp).await;
    let stop = CancellationToken::new();
    let disconnected = Arc::new(AtomicU64::new(0));
    let pongs = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for conn in conns.into_iter().flatten() {
        let (ctx, stop, disconnected, pongs) = (ctx.clone(), stop.clone(), disconnected.clone(), pongs.clone());
        tasks.push(tokio::spawn(hold(ctx, conn, heartbeat, stop, disconnected, pongs)));
    }
    progress.phase("settling");
    tokio::time::sleep(SETTLE).await;
    let rss_loaded = server.and_then(Sampler::rss_kib);
    progress.phase("holding");
    tokio::time::sleep(ctx.common.duration).await;
    let rss_end = server.and_then(Sampler::rss_kib);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    progress.finish();

    let mut report = ctx.report("idle");
    report.settings.insert("connections".into(), connections.into());
    report
        .settings
        .insert("sources".into(), sources.iter().map(ToString::to_string).collect::<Vec<_>>().join(",").into());
    report.settings.insert("heartbeat_s".into(), heartbeat.as_secs_f64().into());
    report.seconds = ctx.common.duration.as_secs_f64();
    let held = connects.ok;
    report.connects = connects;
    report.errors = ctx.live.errors();
    let f = &mut report.figures;
    f.insert("held".into(), held.into());
    f.insert("disconnected".into(), disconnected.load(Ordering::Relaxed).into());
    f.insert("pongs".into(), pongs.load(Ordering::Relaxed).into());
    if let (Some(before), Some(loaded)) = (rss_before, rss_loaded) {
        f.insert("server_rss_before_kib".into(), before.into());
        f.insert("server_rss_loaded_kib".into(), loaded.into());
        if let Some(end) = rss_end {
            f.insert("server_rss_end_kib".into(), end.into());
        }
        if held > 0 {
            let per = (loaded.saturating_sub(before)) as f64 * 1024.0 / held as f64;
            f.insert("server_bytes_per_conn".into(), per.round().into());
        }
    }
    // Idle connections must stay: a drop counts against the run.
    let dropped = disconnected.load(Ordering::Relaxed);
    if dropped > 0 {
        report.connects.failed += dropped;
    }
    Ok(report)
}

/// Keeps one connection: a Ping every `heartbeat`, reading what comes.
async fn hold(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    heartbeat: Duration,
    stop: CancellationToken,
    disconnected: Arc<AtomicU64>,
    pongs: Arc<AtomicU64>,
) {
    // Spread the heartbeats so they do not all fire together.
    let offset = Duration::from_millis(rand::random::<u64>() % heartbeat.as_millis().max(1) as u64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                conn.send(Body::Ping(pb::Ping {})).await;
            }
            incoming = conn.recv() => match incoming {
                Incoming::Frame(pb::Frame { body: Some(Body::Pong(_)), .. }) => {
                    pongs.fetch_add(1, Ordering::Relaxed);
                }
                Incoming::Frame(pb::Frame { body: Some(Body::Error(e)), .. }) => ctx.live.error(error_name(e.code)),
                Incoming::Frame(_) => {}
                Incoming::Closed(code) => {
                    ctx.live.error(closed_key(code));
                    disconnected.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        }
    }
}
