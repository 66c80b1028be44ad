//! `pairs` and `multi-device`: senders sending to receivers, open or closed
//! loop; plus the send and receive loops the other scenarios reuse.

use super::conn::{Conn, Incoming, error_name};
use super::ledger::{Acked, Correctness, DeviceLog};
use super::receipts::{self, Reader, SenderReceipts};
use super::report::{self, Latency, Report};
use super::{ConnSpec, Ctx, Load, connect_all};
use hdrhistogram::Histogram;
use im_core::Role;
use im_core::pb::{self, Frame, frame::Body};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Wait before resending a send the server refused as retryable.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// How a sender paces itself.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Keep this many sends unacknowledged.
    Window(usize),
    /// This many sends per second, on schedule.
    Rate(f64),
}

impl Pace {
    pub fn of(load: &Load) -> anyhow::Result<Self> {
        match (load.rate, load.window) {
            (Some(r), _) if r > 0.0 && r.is_finite() => Ok(Pace::Rate(r)),
            (Some(r), _) => anyhow::bail!("--rate must be a positive number, not {r}"),
            (None, Some(0)) => anyhow::bail!("--window must be at least 1"),
            (None, w) => Ok(Pace::Window(w.unwrap_or(10))),
        }
    }
}

/// When a sender stops issuing new sends.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    Deadline(Instant),
    Count(usize),
}

/// One sender's job.
pub struct SendPlan {
    pub to_user: String,
    /// Ledger devices every message must reach.
    pub expect: Vec<usize>,
    pub pace: Pace,
    pub until: Until,
    pub payload: usize,
}

/// What a sender ends with.
pub struct Sent {
    pub acked: Vec<Acked>,
    /// Receipts pushed to it, and the seqs acked to it.
    pub receipts: SenderReceipts,
}

/// Sends as planned; returns what the server acknowledged. Unacknowledged
/// sends are retried with the same client_msg_id after retryable errors.
pub async fn send_loop(ctx: &Ctx, conn: &mut Conn, plan: SendPlan) -> Sent {
    let live = &ctx.live;
    let mut acked = Vec::new();
    let mut receipts = SenderReceipts::default();
    let mut inflight: HashMap<u64, (String, String)> = HashMap::new();
    let mut retries: VecDeque<(Instant, String, String)> = VecDeque::new();
    let mut n = 0usize;
    let mut ticker = match plan.pace {
        Pace::Rate(r) => {
            // A random phase: senders that tick together would send in
            // bursts that no population of real clients produces.
            let period = Duration::from_secs_f64(1.0 / r);
            let mut t = tokio::time::interval_at(Instant::now() + period.mul_f64(rand::random::<f64>()), period);
            t.set_missed_tick_behavior(MissedTickBehavior::Burst);
            Some(t)
        }
        Pace::Window(_) => None,
    };
    let mut drain_until: Option<Instant> = None;
    loop {
        let sending = |n: usize| match plan.until {
            Until::Deadline(d) => Instant::now() < d,
            Until::Count(c) => n < c,
        };
        if let Pace::Window(w) = plan.pace {
            while sending(n) && inflight.len() + retries.len() < w {
                send_next(ctx, conn, &plan, &mut n, &mut inflight, ctx.now_us()).await;
            }
        }
        let still_sending = sending(n);
        if !still_sending {
            if inflight.is_empty() && retries.is_empty() {
                break;
            }
            drain_until.get_or_insert_with(|| Instant::now() + ctx.common.drain);
        }
        let retry_at = retries.front().map(|r| r.0);
        let deadline = match plan.until {
            Until::Deadline(d) => d,
            Until::Count(_) => Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            incoming = conn.recv() => match incoming {
                Incoming::Frame(Frame { req_id, body: Some(Body::SendAck(a)) }) => {
                    if inflight.remove(&req_id).is_some() {
                        live.acked.fetch_add(1, Ordering::Relaxed);
                        receipts.acked(&a);
                        // req_ids grow with every frame written: the write order.
                        acked.push(Acked { msg_id: a.msg_id, devices: plan.expect.clone(), written: req_id });
                    }
                }
                Incoming::Frame(Frame { req_id, body: Some(Body::Error(e)) }) => {
                    live.error(error_name(e.code));
                    if let Some((cmid, text)) = inflight.remove(&req_id)
                        && e.retryable
                    {
                        retries.push_back((Instant::now() + RETRY_BACKOFF, cmid, text));
                    }
                }
                Incoming::Frame(f) => {
                    receipts::on_frame(&f, conn, Some(&mut receipts), &ctx.receipts).await;
                }
                Incoming::Closed(code) => {
                    live.error(closed_key(code));
                    break;
                }
            },
            Some(scheduled) = tick(&mut ticker), if still_sending => {
                // Open loop: latency counts from when the message was due, so a
                // server that stalls the sender is not excused (no coordinated
                // omission).
                let due_us = scheduled.into_std().saturating_duration_since(ctx.epoch).as_micros() as u64;
                send_next(ctx, conn, &plan, &mut n, &mut inflight, due_us).await;
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or(deadline)), if retry_at.is_some() => {
                if let Some((_, cmid, text)) = retries.pop_front() {
                    let req = conn.send_text(&plan.to_user, cmid.clone(), text.clone()).await;
                    inflight.insert(req, (cmid, text));
                }
            }
            _ = tokio::time::sleep_until(deadline), if still_sending && matches!(plan.until, Until::Deadline(_)) => {}
            _ = tokio::time::sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => {
                for _ in 0..inflight.len() + retries.len() {
                    live.error("no SendAck before the drain timeout");
                }
                break;
            }
        }
    }
    Sent { acked, receipts }
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) -> Option<Instant> {
    match ticker {
        Some(t) => Some(t.tick().await),
        None => std::future::pending().await,
    }
}

/// Sends message number `n` of the plan (its client_msg_id), stamped with
/// `sent_us`, and counts it.
async fn send_next(
    ctx: &Ctx,
    conn: &mut Conn,
    plan: &SendPlan,
    n: &mut usize,
    inflight: &mut HashMap<u64, (String, String)>,
    sent_us: u64,
) {
    let text = ctx.payload(sent_us, plan.payload);
    let cmid = n.to_string();
    *n += 1;
    let req = conn.send_text(&plan.to_user, cmid.clone(), text.clone()).await;
    ctx.live.sent.fetch_add(1, Ordering::Relaxed);
    inflight.insert(req, (cmid, text));
}

pub fn closed_key(code: Option<u16>) -> String {
    match code {
        Some(c) => format!("closed by server ({c})"),
        None => "connection lost".to_string(),
    }
}

/// What one receiving device measured.
pub struct Received {
    pub log: DeviceLog,
    pub latency: Histogram<u64>,
    /// Deliveries of messages sent within the measured period.
    pub counted: u64,
    /// When the device had `expect` messages (see `receive_loop`).
    pub complete_at: Option<Instant>,
    /// With read receipts: what its conversation list showed unread at the
    /// end (None: no answer).
    pub unread: Option<u64>,
}

/// The measured period, in payload microseconds.
#[derive(Clone, Copy)]
pub struct Window {
    pub from_us: u64,
    pub to_us: u64,
}

/// Logs and acks deliveries until `stop`, or until the device has `expect`
/// distinct messages. With `--ack per-message` each Deliver is acked as it
/// is read; with `batched`, one Ack covers a burst of frames read together.
pub async fn receive_loop(
    ctx: &Ctx,
    mut conn: Conn,
    window: Window,
    stop: CancellationToken,
    expect: Option<usize>,
    read_receipts: bool,
) -> Received {
    let mut r = Received {
        log: DeviceLog::default(),
        latency: report::histogram(),
        counted: 0,
        complete_at: None,
        unread: None,
    };
    let per_message = ctx.common.ack == "per-message";
    let mut reader = Reader::default();
    let mut acks = Vec::new();
    'outer: loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            i = conn.recv() => i,
        };
        let mut next = Some(first);
        while let Some(incoming) = next {
            match incoming {
                Incoming::Frame(Frame { body: Some(Body::Deliver(pb::Deliver { message: Some(m), .. })), .. }) => {
                    if r.log.record(&m) {
                        ctx.live.delivered.fetch_add(1, Ordering::Relaxed);
                        if let Some(sent) = text_of(&m).and_then(Ctx::sent_us)
                            && sent >= window.from_us
                            && sent <= window.to_us
                        {
                            let _ = r.latency.record(ctx.now_us().saturating_sub(sent).max(1));
                            r.counted += 1;
                        }
                    }
                    if read_receipts {
                        reader.saw(&m);
                    }
                    if per_message {
                        conn.send(Body::Ack(pb::Ack { msg_ids: vec![m.msg_id], event_ids: vec![] })).await;
                        reader.mark(&mut conn, &ctx.receipts).await;
                    } else {
                        acks.push(m.msg_id);
                    }
                }
                Incoming::Frame(Frame { body: Some(Body::Error(e)), .. }) => ctx.live.error(error_name(e.code)),
                Incoming::Frame(f) => {
                    receipts::on_frame(&f, &mut conn, None, &ctx.receipts).await;
                }
                Incoming::Closed(code) => {
                    ctx.live.error(closed_key(code));
                    break 'outer;
                }
            }
            next = conn.try_recv();
        }
        if !acks.is_empty() {
            conn.send(Body::Ack(pb::Ack { msg_ids: std::mem::take(&mut acks), event_ids: vec![] })).await;
        }
        reader.mark(&mut conn, &ctx.receipts).await;
        if expect.is_some_and(|n| r.log.received() >= n) {
            r.complete_at = Some(Instant::now());
            break;
        }
    }
    if !acks.is_empty() {
        conn.send(Body::Ack(pb::Ack { msg_ids: acks, event_ids: vec![] })).await;
    }
    if read_receipts {
        reader.mark(&mut conn, &ctx.receipts).await;
        r.unread = receipts::unread_left(&mut conn, &ctx.receipts, Instant::now() + ctx.common.drain).await;
    }
    r
}

pub fn text_of(m: &pb::Message) -> Option<&str> {
    match m.content.as_ref()?.kind.as_ref()? {
        pb::content::Kind::Text(t) => Some(t),
        _ => None,
    }
}

/// Waits until `target` deliveries were logged or `limit` passed.
pub async fn await_deliveries(ctx: &Ctx, target: u64, limit: Duration) {
    let until = Instant::now() + limit;
    while ctx.live.delivered.load(Ordering::Relaxed) < target && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run(
    ctx: &Arc<Ctx>,
    name: &'static str,
    load: &Load,
    pairs: usize,
    devices: usize,
) -> anyhow::Result<Report> {
    anyhow::ensure!(pairs >= 1, "--pairs must be at least 1");
    let pace = Pace::of(load)?;
    let n_targets = ctx.targets.len();
    // Per pair: the sender's devices (device 0 sends), then the receiver's.
    let mut specs = Vec::new();
    for p in 0..pairs {
        for (who, offset) in [("s", 0), ("r", 1)] {
            for d in 0..devices {
                specs.push(ConnSpec {
                    target: (p + offset + d) % n_targets,
                    source: None,
                    user: ctx.user(&format!("{who}{p}")),
                    role: Role::Customer,
                    device: format!("d{d}"),
                });
            }
        }
    }
    let progress = report::progress(ctx.live.clone(), ctx.common.warmup + ctx.common.duration, name, ctx.common.json);
    progress.phase("connecting");
    let (conns, connects) = connect_all(ctx, specs, ctx.common.ramp).await;
    let mut conns = conns.into_iter();

    let start = Instant::now();
    let measure_from = start + ctx.common.warmup;
    let measure_to = measure_from + ctx.common.duration;
    let window = Window {
        from_us: measure_from.into_std().duration_since(ctx.epoch).as_micros() as u64,
        to_us: measure_to.into_std().duration_since(ctx.epoch).as_micros() as u64,
    };
    let stop = CancellationToken::new();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut skipped = 0;
    progress.phase(name);
    for p in 0..pairs {
        let group: Vec<Option<Conn>> = conns.by_ref().take(2 * devices).collect();
        if group.iter().any(Option::is_none) {
            skipped += 1;
            continue;
        }
        let mut group = group.into_iter().flatten();
        let Some(mut sender) = group.next() else { continue };
        let mut expect = Vec::new();
        for conn in group {
            expect.push(receivers.len());
            let (ctx, stop) = (ctx.clone(), stop.clone());
            let read_receipts = load.read_receipts;
            receivers
                .push(tokio::spawn(async move { receive_loop(&ctx, conn, window, stop, None, read_receipts).await }));
        }
        let plan = SendPlan {
            to_user: ctx.user(&format!("r{p}")),
            expect,
            pace,
            until: Until::Deadline(measure_to),
            payload: load.payload,
        };
        let (ctx, read_receipts) = (ctx.clone(), load.read_receipts);
        senders.push(tokio::spawn(async move {
            let mut sent = send_loop(&ctx, &mut sender, plan).await;
            if read_receipts {
                let until = Instant::now() + ctx.common.drain;
                receipts::await_receipts(&mut sender, &mut sent.receipts, &ctx.receipts, until).await;
            }
            sent
        }));
    }
    let mut acked = Vec::new();
    let mut receipts_missing = 0;
    for s in senders {
        if let Ok(sent) = s.await {
            acked.extend(sent.acked);
            receipts_missing += sent.receipts.missing();
        }
    }
    progress.phase("draining");
    let expected: u64 = acked.iter().map(|a| a.devices.len() as u64).sum();
    await_deliveries(ctx, expected, ctx.common.drain).await;
    stop.cancel();
    let mut logs = Vec::new();
    let mut latency = report::histogram();
    let mut counted = 0;
    let mut unread_left = 0;
    for r in receivers {
        match r.await {
            Ok(r) => {
                let _ = latency.add(&r.latency);
                counted += r.counted;
                logs.push(r.log);
                // No answer counts as one left unread: it must not pass.
                unread_left += r.unread.unwrap_or(1);
            }
            Err(_) => logs.push(DeviceLog::default()),
        }
    }
    progress.finish();

    let mut report = ctx.report(name);
    report.settings.insert("pairs".into(), pairs.into());
    report.settings.insert("devices".into(), devices.into());
    match pace {
        Pace::Window(w) => report.settings.insert("window".into(), w.into()),
        Pace::Rate(r) => report.settings.insert("rate".into(), r.into()),
    };
    report.settings.insert("payload".into(), load.payload.into());
    report.settings.insert("duration_s".into(), ctx.common.duration.as_secs_f64().into());
    report.settings.insert("warmup_s".into(), ctx.common.warmup.as_secs_f64().into());
    if skipped > 0 {
        report.figures.insert("skipped pairs".into(), format!("{skipped} (a connection failed)").into());
    }
    report.seconds = ctx.common.duration.as_secs_f64();
    report.connects = connects;
    report.sent = ctx.live.sent.load(Ordering::Relaxed);
    report.acked = acked.len() as u64;
    report.delivered = counted;
    report.delivered_per_sec = counted as f64 / report.seconds.max(1e-9);
    report.latency_ms = Latency::of(&latency);
    report.errors = ctx.live.errors();
    report.correctness = Correctness::check(&acked, &logs);
    if load.read_receipts {
        report.settings.insert("read_receipts".into(), true.into());
        let c = &mut report.correctness;
        c.receipts_missing = Some(receipts_missing);
        c.unread_left = Some(unread_left);
        c.marks = Some(ctx.receipts.marks.load(Ordering::Relaxed));
        c.receipts = Some(ctx.receipts.receipts.load(Ordering::Relaxed));
    }
    Ok(report)
}
