//! `soak`: pairs whose receivers have one or more devices, that keep going
//! through faults. Every bot reconnects when its connection ends (to the
//! next URL, with backoff), senders resend what was not acknowledged with
//! the same client_msg_id, and receivers' devices go offline in waves and
//! come back. At the end every acknowledged message must have reached every
//! device of its receiver (after a drain), no message twice under two ids,
//! and each sender's messages in the order it wrote them.

use super::conn::{Conn, Incoming, error_name};
use super::ledger::{Acked, Correctness, DeviceLog};
use super::report::{self, Connects, Latency};
use super::{Ctx, Report};
use hdrhistogram::Histogram;
use im_core::Role;
use im_core::pb::{self, Frame, frame::Body};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Wait before resending a send refused as retryable (the first time).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Sends a sender keeps awaiting their SendAck (the server allows 64).
const MAX_IN_FLIGHT: usize = 32;
/// Reconnect backoff: from the first to the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the soak scenario takes besides the common options.
#[derive(Debug, Clone)]
pub struct Options {
    pub pairs: usize,
    pub devices: usize,
    pub rate: f64,
    pub payload: usize,
    /// How often a wave of receiver devices goes offline (zero: never).
    pub wave_every: Duration,
    /// Share of receiver devices in each wave.
    pub wave_share: f64,
    /// How long a device of a wave stays offline.
    pub offline_for: Duration,
}

/// Counters of the reconnecting bots.
#[derive(Default)]
struct Churn {
    /// Connections that ended without the bot asking (server gone, closed).
    lost: AtomicU64,
    /// Connections closed on purpose by a wave.
    waves: AtomicU64,
    /// Successful reconnects, and the longest time one took (ms).
    reconnects: AtomicU64,
    longest_reconnect_ms: AtomicU64,
    /// Connect attempts that failed (a node down, refused, timed out).
    failed_attempts: AtomicU64,
    /// Sends resent after a reconnect or a retryable error.
    resent: AtomicU64,
}

/// Connects `user`/`device`, trying the targets in turn from `*target`,
/// with backoff, until it works or `stop` fires. `None` when stopped.
async fn reconnect(
    ctx: &Ctx,
    churn: &Churn,
    target: &mut usize,
    user: &str,
    device: &str,
    stop: &CancellationToken,
) -> Option<Conn> {
    let started = Instant::now();
    let mut backoff = BACKOFF_FIRST;
    loop {
        if stop.is_cancelled() {
            return None;
        }
        match ctx.connect(*target, None, user, Role::Customer, device).await {
            Ok(c) => {
                let ms = started.elapsed().as_millis() as u64;
                churn.longest_reconnect_ms.fetch_max(ms, Ordering::Relaxed);
                return Some(c);
            }
            Err(_) => {
                churn.failed_attempts.fetch_add(1, Ordering::Relaxed);
                *target = (*target + 1) % ctx.targets.len();
                let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = stop.cancelled() => return None,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// A send not acknowledged yet.
struct Unacked {
    cmid: String,
    text: String,
    /// The sender-wide write index of its first attempt, once written.
    first_write: Option<u64>,
}

/// What a sender ends with.
struct SenderResult {
    acked: Vec<Acked>,
    sent: u64,
    unacked_at_end: u64,
}

/// One sender: `rate` messages per second until `until`, then until every
/// send is acknowledged or `give_up`.
#[allow(clippy::too_many_arguments)]
async fn sender(
    ctx: Arc<Ctx>,
    churn: Arc<Churn>,
    index: usize,
    opts: Options,
    expect: Vec<usize>,
    ready: Vec<oneshot::Receiver<()>>,
    until: Instant,
    give_up: Instant,
    stop: CancellationToken,
) -> SenderResult {
    // A device is known from its first connection on: messages sent before
    // would not be pending for it (docs/protocol.md, "Devices").
    for r in ready {
        tokio::select! {
            _ = r => {}
            _ = tokio::time::sleep_until(give_up) => break,
        }
    }
    let me = ctx.user(&format!("s{index}"));
    let to = ctx.user(&format!("r{index}"));
    let mut target = index % ctx.targets.len();
    let mut unacked: BTreeMap<u64, Unacked> = BTreeMap::new();
    let mut acked = Vec::new();
    let (mut next, mut writes, mut sent) = (0u64, 0u64, 0u64);
    // Retryable refusals in a row.
    let mut refusals = 0u32;
    let period = Duration::from_secs_f64(1.0 / opts.rate);
    let mut ticker = tokio::time::interval_at(Instant::now() + period.mul_f64(rand::random::<f64>()), period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let deadline = CancellationToken::new();
    let end = deadline.clone();
    let stop_at_give_up = tokio::spawn(async move {
        tokio::time::sleep_until(give_up).await;
        end.cancel();
    });
    let mut first = true;
    'connections: loop {
        let Some(mut conn) = reconnect(&ctx, &churn, &mut target, &me, "d0", &deadline).await else { break };
        if !first {
            churn.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        // req_id -> (message number, write index of this attempt).
        let mut by_req: HashMap<u64, (u64, u64)> = HashMap::new();
        // Messages to write when the window has room, oldest first: all
        // unacknowledged ones after a reconnect.
        let mut queued: BTreeSet<u64> = unacked.keys().copied().collect();
        let mut retries: Vec<(Instant, u64)> = Vec::new();
        loop {
            // Writes what is queued while fewer than MAX_IN_FLIGHT await
            // their SendAck, as a real client keeps below the server's
            // `limits.max_sends_in_flight`.
            while by_req.len() < MAX_IN_FLIGHT {
                let Some(k) = queued.pop_first() else { break };
                let Some(u) = unacked.get_mut(&k) else { continue };
                writes += 1;
                if u.first_write.is_some() {
                    churn.resent.fetch_add(1, Ordering::Relaxed);
                }
                u.first_write.get_or_insert(writes);
                let req = conn.send_text(&to, u.cmid.clone(), u.text.clone()).await;
                by_req.insert(req, (k, writes));
            }
            let sending = Instant::now() < until && !stop.is_cancelled();
            if !sending && unacked.is_empty() {
                break 'connections;
            }
            let retry_at = retries.iter().map(|r| r.0).min();
            tokio::select! {
                _ = ticker.tick(), if sending => {
                    next += 1;
                    sent += 1;
                    ctx.live.sent.fetch_add(1, Ordering::Relaxed);
                    let cmid = format!("m{next}");
                    let text = ctx.payload(ctx.now_us(), opts.payload);
                    unacked.insert(next, Unacked { cmid, text, first_write: None });
                    queued.insert(next);
                }
                _ = async { tokio::time::sleep_until(retry_at.unwrap_or(give_up)).await }, if retry_at.is_some() => {
                    let now = Instant::now();
                    queued.extend(retries.iter().filter(|r| r.0 <= now).map(|r| r.1));
                    retries.retain(|r| r.0 > now);
                }
                incoming = conn.recv() => match incoming {
                    Incoming::Frame(Frame { req_id, body: Some(Body::SendAck(a)) }) => {
                        refusals = 0;
                        if let Some((k, write)) = by_req.remove(&req_id)
                            && let Some(u) = unacked.remove(&k)
                        {
                            ctx.live.acked.fetch_add(1, Ordering::Relaxed);
                            // A retry of a message stored earlier: it stands
                            // where its first attempt was written.
                            let written = if a.duplicate { u.first_write.unwrap_or(write) } else { write };
                            acked.push(Acked { msg_id: a.msg_id, devices: expect.clone(), written });
                        }
                    }
                    Incoming::Frame(Frame { req_id, body: Some(Body::Error(e)) }) => {
                        ctx.live.error(error_name(e.code));
                        if let Some((k, _)) = by_req.remove(&req_id) {
                            if e.retryable {
                                // Backs off while refusals go on: 50 ms
                                // doubling to 1.6 s, reset by an ack.
                                refusals = (refusals + 1).min(6);
                                retries.push((Instant::now() + RETRY_BACKOFF * (1 << (refusals - 1)), k));
                            } else {
                                unacked.remove(&k);
                            }
                        }
                    }
                    Incoming::Frame(_) => {}
                    Incoming::Closed(_) => {
                        churn.lost.fetch_add(1, Ordering::Relaxed);
                        continue 'connections;
                    }
                },
                _ = deadline.cancelled() => break 'connections,
            }
        }
    }
    stop_at_give_up.abort();
    SenderResult { acked, sent, unacked_at_end: unacked.len() as u64 }
}

/// One receiving device: acks each delivery as it reads it, reconnects when
/// its connection ends, and sits out waves.
#[allow(clippy::too_many_arguments)]
async fn receiver(
    ctx: Arc<Ctx>,
    churn: Arc<Churn>,
    user: String,
    device: String,
    start_target: usize,
    opts: Options,
    mut ready: Option<oneshot::Sender<()>>,
    log: Arc<Mutex<DeviceLog>>,
    latency: Arc<Mutex<Histogram<u64>>>,
    stop: CancellationToken,
) {
    let mut target = start_target;
    let mut waves = (!opts.wave_every.is_zero()).then(|| {
        let every = opts.wave_every;
        let mut t = tokio::time::interval_at(Instant::now() + every.mul_f64(0.5 + rand::random::<f64>()), every);
        t.set_missed_tick_behavior(MissedTickBehavior::Skip);
        t
    });
    let mut first = true;
    'connections: loop {
        let Some(mut conn) = reconnect(&ctx, &churn, &mut target, &user, &device, &stop).await else { return };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        if !first {
            churn.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        loop {
            let wave = async {
                match &mut waves {
                    Some(w) => w.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                incoming = conn.recv() => match incoming {
                    Incoming::Frame(Frame { body: Some(Body::Deliver(d)), .. }) => {
                        let Some(m) = d.message else { continue };
                        let now = ctx.now_us();
                        let new = log.lock().unwrap_or_else(|e| e.into_inner()).record(&m);
                        if new {
                            ctx.live.delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(pb::content::Kind::Text(t)) = m.content.as_ref().and_then(|c| c.kind.as_ref())
                                && let Some(sent) = Ctx::sent_us(t)
                            {
                                let mut h = latency.lock().unwrap_or_else(|e| e.into_inner());
                                let _ = h.record(now.saturating_sub(sent).max(1));
                            }
                        }
                        conn.send(Body::Ack(pb::Ack { msg_ids: vec![m.msg_id], event_ids: vec![] })).await;
                    }
                    Incoming::Frame(_) => {}
                    Incoming::Closed(_) => {
                        churn.lost.fetch_add(1, Ordering::Relaxed);
                        continue 'connections;
                    }
                },
                _ = wave => {
                    if rand::random::<f64>() < opts.wave_share {
                        churn.waves.fetch_add(1, Ordering::Relaxed);
                        drop(conn);
                        tokio::select! {
                            _ = tokio::time::sleep(opts.offline_for) => {}
                            _ = stop.cancelled() => return,
                        }
                        continue 'connections;
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Runs the soak for the measured duration (no warm-up: everything counts).
pub(crate) async fn run(ctx: &Arc<Ctx>, opts: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.pairs >= 1, "--pairs must be at least 1");
    anyhow::ensure!(opts.devices >= 1, "--devices must be at least 1");
    anyhow::ensure!(opts.rate > 0.0 && opts.rate.is_finite(), "--rate must be a positive number");
    anyhow::ensure!((0.0..=1.0).contains(&opts.wave_share), "--wave-share must be between 0 and 1");
    let churn = Arc::new(Churn::default());
    let stop = CancellationToken::new();
    let latency = Arc::new(Mutex::new(report::histogram()));
    let started = Instant::now();
    let until = started + ctx.common.duration;
    let give_up = until + ctx.common.drain;
    let mut logs = Vec::new();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for p in 0..opts.pairs {
        let (mut expect, mut ready) = (Vec::new(), Vec::new());
        for d in 0..opts.devices {
            expect.push(logs.len());
            let (connected, first_connect) = oneshot::channel();
            ready.push(first_connect);
            let log = Arc::new(Mutex::new(DeviceLog::default()));
            logs.push(log.clone());
            let (ctx, churn, stop, latency, opts) =
                (ctx.clone(), churn.clone(), stop.clone(), latency.clone(), opts.clone());
            let (user, device) = (ctx.user(&format!("r{p}")), format!("d{d}"));
            // Devices of one user on different nodes when there are several.
            let target = p + d + 1;
            let connected = Some(connected);
            receivers
                .push(tokio::spawn(receiver(ctx, churn, user, device, target, opts, connected, log, latency, stop)));
        }
        let (ctx, churn, stop, opts) = (ctx.clone(), churn.clone(), stop.clone(), opts.clone());
        senders.push(tokio::spawn(sender(ctx, churn, p, opts, expect, ready, until, give_up, stop)));
    }
    let mut acked = Vec::new();
    let (mut sent, mut unacked_at_end) = (0, 0);
    for s in senders {
        if let Ok(r) = s.await {
            acked.extend(r.acked);
            sent += r.sent;
            unacked_at_end += r.unacked_at_end;
        }
    }
    // Drain: until every acknowledged message reached every device, or give up.
    let delivered_all = |logs: &[Arc<Mutex<DeviceLog>>]| {
        acked
            .iter()
            .all(|a| a.devices.iter().all(|&d| logs[d].lock().unwrap_or_else(|e| e.into_inner()).has(&a.msg_id)))
    };
    let drain_started = Instant::now();
    while !delivered_all(&logs) && Instant::now() < give_up.max(drain_started + ctx.common.drain) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_in = drain_started.elapsed();
    stop.cancel();
    for r in receivers {
        let _ = r.await;
    }
    let logs: Vec<DeviceLog> = logs
        .into_iter()
        .map(|l| Arc::try_unwrap(l).map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner())).unwrap_or_default())
        .collect();
    let seconds = ctx.common.duration.as_secs_f64();
    let mut report = ctx.report("soak");
    report.seconds = seconds;
    report.sent = sent;
    report.acked = acked.len() as u64;
    report.delivered = logs.iter().map(|l| l.received() as u64).sum();
    report.delivered_per_sec = report.delivered as f64 / seconds.max(0.001);
    report.latency_ms = Latency::of(&latency.lock().unwrap_or_else(|e| e.into_inner()));
    report.correctness = Correctness::check(&acked, &logs);
    report.errors = ctx.live.errors();
    report.connects = Connects { ok: (opts.pairs * (1 + opts.devices)) as u64, failed: 0, time: None };
    let f = &mut report.figures;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    f.insert("connections lost".into(), get(&churn.lost).into());
    f.insert("wave disconnects".into(), get(&churn.waves).into());
    f.insert("reconnects".into(), get(&churn.reconnects).into());
    f.insert("failed connect attempts".into(), get(&churn.failed_attempts).into());
    f.insert("longest reconnect ms".into(), get(&churn.longest_reconnect_ms).into());
    f.insert("sends resent".into(), get(&churn.resent).into());
    f.insert("sends never acked".into(), unacked_at_end.into());
    f.insert("drain seconds".into(), format!("{:.1}", drained_in.as_secs_f64()).into());
    report.settings.insert("pairs".into(), opts.pairs.into());
    report.settings.insert("devices".into(), opts.devices.into());
    report.settings.insert("rate".into(), opts.rate.into());
    report.settings.insert("wave_every".into(), humantime::format_duration(opts.wave_every).to_string().into());
    report.settings.insert("wave_share".into(), opts.wave_share.into());
    Ok(report)
}
