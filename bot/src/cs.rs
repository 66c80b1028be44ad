//! `cs`: customers arrive at a rate and ask a service group for an agent;
//! agent bots answer each customer message after a think time and end the
//! session after the last one; customers rate it and leave.

use super::conn::{Conn, Incoming, error_name};
use super::ledger::{Acked, Correctness, DeviceLog};
use super::pairs::{closed_key, text_of};
use super::report::{self, Latency, Report};
use super::{ConnSpec, Ctx, connect_all};
use hdrhistogram::Histogram;
use im_core::Role;
use im_core::pb::{self, Frame, frame::Body};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub struct Options {
    pub api: String,
    pub group: Option<String>,
    pub arrivals: f64,
    pub agents: usize,
    pub capacity: u32,
    pub messages: usize,
    pub think: Duration,
    pub payload: usize,
}

/// Creates or updates the group through the admin HTTP API.
async fn put_group(ctx: &Ctx, o: &Options, group: &str) -> anyhow::Result<()> {
    let token = ctx.token(&ctx.user("admin"), Role::Admin).await?;
    let url = format!("{}/api/v1/groups/{group}", o.api.trim_end_matches('/'));
    let body = serde_json::json!({
        "name": format!("bot run {}", ctx.run),
        "policy": "least-loaded",
        "auto_join": true,
        "default_capacity": o.capacity,
        "max_queue": 10_000,
        "max_wait_s": 3600,
    })
    .to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut resp = ureq::put(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .header("Authorization", &format!("Bearer {token}"))
            .content_type("application/json")
            .send(body.as_str())
            .map_err(|e| anyhow::anyhow!("PUT {url}: {e} (is --api the server's HTTP address?)"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            anyhow::bail!("PUT {url}: {status}: {}", text.trim());
        }
        Ok(())
    })
    .await?
}

pub async fn run(ctx: &Arc<Ctx>, o: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(o.arrivals > 0.0 && o.arrivals.is_finite(), "--arrivals must be a positive number");
    anyhow::ensure!(
        o.agents >= 1 && o.capacity >= 1 && o.messages >= 1,
        "--agents, --capacity, --messages must be >= 1"
    );
    let group = o.group.clone().unwrap_or_else(|| ctx.user("g"));
    put_group(ctx, o, &group).await?;
    let progress = report::progress(ctx.live.clone(), ctx.common.duration, "cs", ctx.common.json);

    // Agents first: online in the group before anyone arrives.
    progress.phase("agents");
    let specs = (0..o.agents)
        .map(|i| ConnSpec {
            target: i % ctx.targets.len(),
            source: None,
            user: ctx.user(&format!("a{i}")),
            role: Role::Agent,
            device: "console".into(),
        })
        .collect();
    let (agents, mut connects) = connect_all(ctx, specs, ctx.common.ramp).await;
    let stop_agents = CancellationToken::new();
    let mut agent_tasks = Vec::new();
    for (i, conn) in agents.into_iter().enumerate() {
        // Agent i keeps ledger slot i even if it could not connect.
        let Some(mut conn) = conn else {
            agent_tasks.push(tokio::spawn(async { AgentOutcome::default() }));
            continue;
        };
        // Online before the first customer: wait for the CsState answer.
        let req = conn.send(Body::SetStatus(pb::SetStatus { status: pb::AgentStatus::Online as i32 })).await;
        loop {
            match conn.recv().await {
                Incoming::Frame(Frame { req_id, body: Some(Body::CsState(_)) }) if req_id == req => break,
                Incoming::Frame(Frame { req_id, body: Some(Body::Error(e)) }) if req_id == req => {
                    anyhow::bail!("agent {i} could not go online: {} {}", error_name(e.code), e.message)
                }
                Incoming::Frame(_) => {}
                Incoming::Closed(code) => anyhow::bail!("agent {i} was disconnected: {}", closed_key(code)),
            }
        }
        let (ctx, stop) = (ctx.clone(), stop_agents.clone());
        let (k, think) = (o.messages, o.think);
        agent_tasks.push(tokio::spawn(async move { agent(&ctx, conn, k, think, stop).await }));
    }

    // Customers arrive on schedule during the run.
    progress.phase("cs");
    let give_up = Instant::now() + ctx.common.duration + ctx.common.drain + o.think * (o.messages as u32 + 1);
    let mut arrivals = tokio::time::interval(Duration::from_secs_f64(1.0 / o.arrivals));
    arrivals.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let end = Instant::now() + ctx.common.duration;
    let mut customers = Vec::new();
    let started = Instant::now();
    while arrivals.tick().await < end {
        let j = customers.len();
        let (ctx, group) = (ctx.clone(), group.clone());
        let (k, payload, agents) = (o.messages, o.payload, o.agents);
        customers.push(tokio::spawn(async move { customer(&ctx, j, &group, k, payload, agents, give_up).await }));
    }
    progress.phase("finishing");
    let mut outcomes = Vec::new();
    for c in customers {
        outcomes.push(c.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop_agents.cancel();
    let mut logs: Vec<DeviceLog> = Vec::new();
    let mut acked: Vec<Acked> = Vec::new();
    let mut latency = report::histogram();
    for a in agent_tasks {
        let a = a.await.unwrap_or_default();
        logs.push(a.log);
        acked.extend(a.acked);
        let _ = latency.add(&a.latency);
    }
    let offset = logs.len();
    let mut wait = report::histogram();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut queued = 0u64;
    for c in outcomes {
        logs.push(c.log);
        acked.extend(c.acked);
        let _ = latency.add(&c.latency);
        if let Some(w) = c.assigned_after {
            let _ = wait.record(w.max(1));
        }
        *counts.entry(c.end).or_default() += 1;
        queued += u64::from(c.queued);
        connects.ok += u64::from(c.connected);
        connects.failed += u64::from(!c.connected);
    }
    progress.finish();
    // Agents' acks name customers by arrival number: shift into the ledger.
    for a in &mut acked {
        for d in &mut a.devices {
            if *d >= CUSTOMER_BASE {
                *d = *d - CUSTOMER_BASE + offset;
            }
        }
    }

    let mut report = ctx.report("cs");
    for (k, v) in [
        ("arrivals_per_s", serde_json::json!(o.arrivals)),
        ("agents", o.agents.into()),
        ("capacity", o.capacity.into()),
        ("messages", o.messages.into()),
        ("think_ms", (o.think.as_millis() as u64).into()),
        ("group", group.clone().into()),
    ] {
        report.settings.insert(k.into(), v);
    }
    let customers: u64 = counts.values().sum();
    report.seconds = elapsed;
    report.connects = connects;
    report.sent = ctx.live.sent.load(Ordering::Relaxed);
    report.acked = acked.len() as u64;
    report.delivered = latency.len();
    report.delivered_per_sec = latency.len() as f64 / elapsed.max(1e-9);
    report.latency_ms = Latency::of(&latency);
    report.errors = ctx.live.errors();
    report.correctness = Correctness::check(&acked, &logs);
    let f = &mut report.figures;
    f.insert("customers".into(), customers.into());
    f.insert("queued_first".into(), queued.into());
    for (k, v) in &counts {
        f.insert(k.clone(), (*v).into());
    }
    let completed = counts.get(END_RATED).copied().unwrap_or(0);
    f.insert("sessions_per_s".into(), ((completed as f64 / elapsed * 100.0).round() / 100.0).into());
    if let Some(l) = Latency::of(&wait) {
        f.insert("assign_wait_ms".into(), serde_json::to_value(l)?);
    }
    // Every customer must have been served to the end.
    if completed < customers {
        report.correctness.acked_but_not_delivered =
            report.correctness.acked_but_not_delivered.max(customers - completed);
    }
    Ok(report)
}

/// Ledger slots of customers are `CUSTOMER_BASE + arrival number` until
/// the agents' slots are known.
const CUSTOMER_BASE: usize = 1 << 40;

const END_RATED: &str = "served_and_rated";

struct AgentOutcome {
    log: DeviceLog,
    acked: Vec<Acked>,
    latency: Histogram<u64>,
}

impl Default for AgentOutcome {
    fn default() -> Self {
        Self { log: DeviceLog::default(), acked: Vec::new(), latency: report::histogram() }
    }
}

/// An agent bot: answers each customer message after `think`; after the
/// `k`-th answer is acknowledged, ends the session.
async fn agent(ctx: &Ctx, mut conn: Conn, k: usize, think: Duration, stop: CancellationToken) -> AgentOutcome {
    let mut out = AgentOutcome::default();
    let customer_prefix = ctx.user("c");
    // customer -> (session id, answers sent)
    let mut sessions: HashMap<String, (String, usize)> = HashMap::new();
    let mut due: std::collections::BTreeMap<(Instant, u64), String> = BTreeMap::new();
    let mut seq = 0u64;
    // req_id of an answer -> (customer, whether it is the last one)
    let mut answers: HashMap<u64, (String, bool)> = HashMap::new();
    loop {
        let next_due = due.keys().next().map(|k| k.0);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let Some((_, customer)) = due.pop_first() else { continue };
                let Some((_, sent)) = sessions.get_mut(&customer) else { continue };
                *sent += 1;
                let last = *sent >= k;
                let text = ctx.payload(ctx.now_us(), 0);
                let req = conn.send_text(&customer, format!("{customer}-{sent}"), text).await;
                ctx.live.sent.fetch_add(1, Ordering::Relaxed);
                answers.insert(req, (customer, last));
            }
            incoming = conn.recv() => match incoming {
                Incoming::Frame(Frame { body: Some(Body::SessionAssigned(a)), .. }) => {
                    if let Some(s) = a.session {
                        sessions.insert(s.customer, (s.session_id, 0));
                    }
                }
                Incoming::Frame(Frame { body: Some(Body::SessionEnded(e)), .. }) => {
                    if let Some(s) = e.session {
                        sessions.remove(&s.customer);
                    }
                }
                Incoming::Frame(Frame { body: Some(Body::Deliver(d)), .. }) => {
                    let Some(m) = d.message else { continue };
                    if out.log.record(&m) {
                        ctx.live.delivered.fetch_add(1, Ordering::Relaxed);
                        if let Some(sent) = text_of(&m).and_then(Ctx::sent_us) {
                            let _ = out.latency.record(ctx.now_us().saturating_sub(sent).max(1));
                        }
                        if sessions.contains_key(&m.from_user) {
                            seq += 1;
                            due.insert((Instant::now() + think, seq), m.from_user.clone());
                        }
                    }
                    conn.send(Body::Ack(pb::Ack { msg_ids: vec![m.msg_id], event_ids: vec![] })).await;
                }
                Incoming::Frame(Frame { req_id, body: Some(Body::SendAck(a)) }) => {
                    let Some((customer, last)) = answers.remove(&req_id) else { continue };
                    ctx.live.acked.fetch_add(1, Ordering::Relaxed);
                    if let Some(j) = customer.strip_prefix(&customer_prefix).and_then(|j| j.parse::<usize>().ok()) {
                        out.acked.push(Acked { msg_id: a.msg_id, devices: vec![CUSTOMER_BASE + j], written: req_id });
                    }
                    if last && let Some((session_id, _)) = sessions.get(&customer) {
                        let session_id = session_id.clone();
                        conn.send(Body::EndSession(pb::EndSession { session_id })).await;
                    }
                }
                Incoming::Frame(Frame { body: Some(Body::Error(e)), .. }) => ctx.live.error(error_name(e.code)),
                Incoming::Frame(_) => {}
                Incoming::Closed(code) => {
                    ctx.live.error(closed_key(code));
                    break;
                }
            },
        }
    }
    out
}

struct CustomerOutcome {
    connected: bool,
    log: DeviceLog,
    acked: Vec<Acked>,
    latency: Histogram<u64>,
    /// Request to SessionAssigned, µs.
    assigned_after: Option<u64>,
    /// Waited in line (got a QueueUpdate) before an agent took them.
    queued: bool,
    end: String,
}

impl Default for CustomerOutcome {
    fn default() -> Self {
        Self {
            connected: false,
            log: DeviceLog::default(),
            acked: Vec::new(),
            latency: report::histogram(),
            assigned_after: None,
            queued: false,
            end: "connect failed".into(),
        }
    }
}

/// A customer bot: asks for service with its first message, sends the next
/// one after each answer, rates the session when the agent ends it.
async fn customer(
    ctx: &Ctx,
    j: usize,
    group: &str,
    k: usize,
    payload: usize,
    agents: usize,
    give_up: Instant,
) -> CustomerOutcome {
    let mut out = CustomerOutcome::default();
    let user = ctx.user(&format!("c{j}"));
    let Ok(mut conn) = ctx.connect(j % ctx.targets.len(), None, &user, Role::Customer, "d0").await else {
        return out;
    };
    out.connected = true;
    let agent_prefix = ctx.user("a");
    let first = pb::Content { kind: Some(pb::content::Kind::Text(ctx.payload(ctx.now_us(), payload))) };
    let asked = Instant::now();
    conn.send(Body::RequestService(pb::RequestService {
        group: group.to_string(),
        first_message: Some(first),
        ..Default::default()
    }))
    .await;
    ctx.live.sent.fetch_add(1, Ordering::Relaxed);
    let mut agent_slot = None;
    let mut session_id = String::new();
    let mut answers = 0;
    let mut my_sends: HashMap<u64, ()> = HashMap::new();
    let mut queued = false;
    let mut ended = false;
    out.end = "gave up waiting".into();
    loop {
        let incoming = tokio::select! {
            i = conn.recv() => i,
            _ = tokio::time::sleep_until(give_up) => break,
        };
        match incoming {
            Incoming::Frame(Frame { body: Some(Body::QueueUpdate(_)), .. }) => queued = true,
            Incoming::Frame(Frame { body: Some(Body::SessionAssigned(a)), .. }) => {
                let Some(s) = a.session else { continue };
                if out.assigned_after.is_none() {
                    out.assigned_after = Some(asked.elapsed().as_micros() as u64);
                }
                session_id = s.session_id;
                agent_slot =
                    s.agent.strip_prefix(&agent_prefix).and_then(|i| i.parse::<usize>().ok()).filter(|i| *i < agents);
            }
            Incoming::Frame(Frame { body: Some(Body::LeaveMessageOffer(offer)), .. }) => {
                out.end = format!("offered leave-a-message ({})", offer.reason().as_str_name());
                break;
            }
            Incoming::Frame(Frame { body: Some(Body::Deliver(d)), .. }) => {
                let Some(m) = d.message else { continue };
                let new = out.log.record(&m);
                conn.send(Body::Ack(pb::Ack { msg_ids: vec![m.msg_id.clone()], event_ids: vec![] })).await;
                if !new || m.from_user == user {
                    continue;
                }
                ctx.live.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(sent) = text_of(&m).and_then(Ctx::sent_us) {
                    let _ = out.latency.record(ctx.now_us().saturating_sub(sent).max(1));
                }
                answers += 1;
                if ended && answers >= k {
                    out.end = rate(&mut conn, &session_id, give_up).await;
                    break;
                }
                if answers < k {
                    let text = ctx.payload(ctx.now_us(), payload);
                    let req = conn.send_text(&m.from_user, format!("m{answers}"), text).await;
                    ctx.live.sent.fetch_add(1, Ordering::Relaxed);
                    my_sends.insert(req, ());
                }
            }
            Incoming::Frame(Frame { req_id, body: Some(Body::SendAck(a)) }) => {
                if my_sends.remove(&req_id).is_some() {
                    ctx.live.acked.fetch_add(1, Ordering::Relaxed);
                    if let Some(slot) = agent_slot {
                        out.acked.push(Acked { msg_id: a.msg_id, devices: vec![slot], written: req_id });
                    }
                }
            }
            Incoming::Frame(Frame { body: Some(Body::SessionEnded(_)), .. }) => {
                // The last answer may still be on its way.
                ended = true;
                out.end = "ended before every answer".into();
                if answers >= k {
                    out.end = rate(&mut conn, &session_id, give_up).await;
                    break;
                }
            }
            Incoming::Frame(Frame { body: Some(Body::Error(e)), .. }) => {
                ctx.live.error(error_name(e.code));
                out.end = format!("error {}", error_name(e.code));
                break;
            }
            Incoming::Frame(_) => {}
            Incoming::Closed(code) => {
                ctx.live.error(closed_key(code));
                out.end = "disconnected".into();
                break;
            }
        }
    }
    out.queued = queued;
    out
}

async fn rate(conn: &mut Conn, session_id: &str, give_up: Instant) -> String {
    let rate = pb::Rate { session_id: session_id.to_string(), score: 5, comment: String::new() };
    let req = conn.send(Body::Rate(rate)).await;
    match wait_reply(conn, req, give_up).await {
        Ok(()) => END_RATED.into(),
        Err(e) => format!("rating failed: {e}"),
    }
}

async fn wait_reply(conn: &mut Conn, req: u64, give_up: Instant) -> Result<(), String> {
    loop {
        let incoming = tokio::select! {
            i = conn.recv() => i,
            _ = tokio::time::sleep_until(give_up) => return Err("no answer".into()),
        };
        match incoming {
            Incoming::Frame(Frame { req_id, body: Some(Body::CsOk(_)) }) if req_id == req => return Ok(()),
            Incoming::Frame(Frame { req_id, body: Some(Body::Error(e)) }) if req_id == req => {
                return Err(error_name(e.code));
            }
            Incoming::Frame(_) => {}
            Incoming::Closed(code) => return Err(closed_key(code)),
        }
    }
}
