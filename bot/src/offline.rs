//! `offline`: P receivers register a device and go offline; M messages each
//! are sent to them; they all reconnect at once. Measured: the time from the
//! reconnect until every pending message is replayed and acked; then a third
//! connection of each receiver checks that nothing is left pending.

use super::ledger::{Acked, Correctness, DeviceLog};
use super::pairs::{Pace, Received, SendPlan, Until, Window, receive_loop, send_loop};
use super::report::{self, Latency, Report};
use super::{ConnSpec, Ctx, connect_all};
use im_core::Role;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub async fn run(
    ctx: &Arc<Ctx>,
    receivers: usize,
    messages: usize,
    window: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        receivers >= 1 && messages >= 1 && window >= 1,
        "--receivers, --messages and --window must be at least 1"
    );
    let n_targets = ctx.targets.len();
    let receiver_spec = |i: usize| ConnSpec {
        target: (i + 1) % n_targets,
        source: None,
        user: ctx.user(&format!("r{i}")),
        role: Role::Customer,
        device: "d0".into(),
    };
    let progress = report::progress(ctx.live.clone(), Duration::from_secs(1), "offline", ctx.common.json);

    // 1. Every receiver registers its device, then goes away.
    progress.phase("registering");
    let (first, mut connects) = connect_all(ctx, (0..receivers).map(receiver_spec).collect(), ctx.common.ramp).await;
    drop(first);

    // 2. Fill their queues.
    progress.phase("sending");
    let sender_specs = (0..receivers)
        .map(|i| ConnSpec {
            target: i % n_targets,
            source: None,
            user: ctx.user(&format!("s{i}")),
            role: Role::Customer,
            device: "d0".into(),
        })
        .collect();
    let (senders, c) = connect_all(ctx, sender_specs, ctx.common.ramp).await;
    merge(&mut connects, c);
    let send_started = Instant::now();
    let mut tasks = Vec::new();
    for (i, conn) in senders.into_iter().enumerate() {
        let Some(mut conn) = conn else { continue };
        let plan = SendPlan {
            to_user: ctx.user(&format!("r{i}")),
            expect: vec![i],
            pace: Pace::Window(window),
            until: Until::Count(messages),
            payload,
        };
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let acked = send_loop(&ctx, &mut conn, plan).await.acked;
            drop(conn);
            acked
        }));
    }
    let mut acked: Vec<Acked> = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap_or_default());
    }
    let send_secs = send_started.elapsed().as_secs_f64();
    let mut per_receiver = vec![0usize; receivers];
    for a in &acked {
        per_receiver[a.devices[0]] += 1;
    }

    // 3. Everyone back at once: measure until all is replayed and acked.
    progress.phase("replaying");
    let stop = CancellationToken::new();
    let all = Window { from_us: 0, to_us: u64::MAX };
    let replay_started = Instant::now();
    // All at once (no ramp), so the replay load is simultaneous.
    let (again, c) = connect_all(ctx, (0..receivers).map(receiver_spec).collect(), Duration::ZERO).await;
    merge(&mut connects, c);
    let mut pending_reported = 0u64;
    let mut tasks = Vec::new();
    for (i, conn) in again.into_iter().enumerate() {
        let Some(conn) = conn else {
            tasks.push(None);
            continue;
        };
        pending_reported += conn.auth_ok.pending_count;
        let (ctx, stop) = (ctx.clone(), stop.clone());
        let expect = per_receiver[i];
        tasks.push(Some(tokio::spawn(async move { receive_loop(&ctx, conn, all, stop, Some(expect), false).await })));
    }
    let watchdog = {
        let stop = stop.clone();
        let limit = ctx.common.drain.max(Duration::from_secs(60));
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            stop.cancel();
        })
    };
    let mut logs = Vec::new();
    let mut done = report::histogram();
    let mut last = replay_started;
    let mut incomplete = 0;
    for t in tasks {
        let r = match t {
            Some(t) => t.await.ok(),
            None => None,
        };
        let Some(Received { log, complete_at, .. }) = r else {
            logs.push(DeviceLog::default());
            incomplete += 1;
            continue;
        };
        match complete_at {
            Some(at) => {
                let _ = done.record((at.duration_since(replay_started).as_micros() as u64).max(1));
                last = last.max(at);
            }
            None => incomplete += 1,
        }
        logs.push(log);
    }
    watchdog.abort();
    let replay_secs = last.duration_since(replay_started).as_secs_f64();

    // 4. A fresh connection of each receiver must find nothing pending.
    progress.phase("verifying");
    let left = left_pending(ctx, receivers, &receiver_spec).await;
    progress.finish();

    let mut report = ctx.report("offline");
    report.settings.insert("receivers".into(), receivers.into());
    report.settings.insert("messages".into(), messages.into());
    report.settings.insert("window".into(), window.into());
    report.settings.insert("payload".into(), payload.into());
    report.connects = connects;
    report.sent = ctx.live.sent.load(Ordering::Relaxed);
    report.acked = acked.len() as u64;
    let replayed: usize = logs.iter().map(DeviceLog::received).sum();
    report.delivered = replayed as u64;
    report.seconds = replay_secs;
    report.delivered_per_sec = replayed as f64 / replay_secs.max(1e-9);
    report.errors = ctx.live.errors();
    report.correctness = Correctness::check(&acked, &logs);
    let f = &mut report.figures;
    f.insert("fill".into(), format!("{} messages in {send_secs:.2} s", acked.len()).into());
    f.insert("replay_s".into(), round3(replay_secs).into());
    f.insert("pending_at_auth".into(), pending_reported.into());
    f.insert("incomplete".into(), incomplete.into());
    f.insert("left_pending".into(), left.into());
    if let Some(l) = Latency::of(&done) {
        f.insert("receiver_done_ms".into(), serde_json::to_value(l)?);
    }
    // Everything acked must have been replayed, and acked for good.
    if incomplete > 0 || left > 0 {
        report.correctness.acked_but_not_delivered = report.correctness.acked_but_not_delivered.max(1);
    }
    Ok(report)
}

/// Pending messages a new connection of each receiver is told about; acks
/// are applied in the background, so a non-zero count is looked at again.
async fn left_pending(ctx: &Arc<Ctx>, receivers: usize, spec: &dyn Fn(usize) -> ConnSpec) -> u64 {
    let mut left = 0;
    for attempt in 0..5 {
        let (conns, _) = connect_all(ctx, (0..receivers).map(spec).collect(), Duration::ZERO).await;
        left = conns.iter().flatten().map(|c| c.auth_ok.pending_count).sum();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    left
}

fn merge(into: &mut super::report::Connects, c: super::report::Connects) {
    into.ok += c.ok;
    into.failed += c.failed;
    // The figures of the latest phase: the reconnect is what is measured.
    into.time = c.time;
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
