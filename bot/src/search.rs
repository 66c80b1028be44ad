//! `search`: U users each write a conversation of mixed Chinese and English
//! sentences with order ids (a corpus generated here), then search it:
//! Q queries (a Chinese word, an English word, an order id or its number,
//! a quoted phrase) from random users, every page of each. Measured: how
//! long the last message took to become searchable after its ack (index
//! lag), and each query's round trip (all its pages). Checked against a
//! brute-force scan of what each user wrote and received: every matching
//! message is found (recall), exactly once, and nothing from a
//! conversation the user is not in.

use super::conn::{Conn, Incoming, error_name};
use super::ledger::Correctness;
use super::report::{self, Latency, Report};
use super::{ConnSpec, Ctx, connect_all};
use im_core::Role;
use im_core::pb::{self, Frame, frame::Body};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

const CJK_WORDS: &[&str] = &[
    "退款", "订单", "发货", "处理", "添加", "好友", "银行", "农业", "快递", "地址", "修改", "发票", "优惠", "尺码",
    "颜色", "客服", "质量", "物流", "取消", "支付", "售后", "换货", "已经", "还没", "什么", "时候", "谢谢", "请问",
];
const FILLER: &[&str] = &["我", "的", "了", "吗", "请", "您", "好", "在", "是", "这", "个", "有"];
const EN_WORDS: &[&str] = &[
    "refund", "order", "delivery", "invoice", "address", "please", "thanks", "size", "colour", "parcel", "return",
    "payment", "coupon", "cancel", "tracking", "damaged", "today", "tomorrow", "store", "price",
];
/// How long one query (all its pages) may take before it counts as lost.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pages of one query at most (50 results each).
const MAX_PAGES: usize = 40;

/// A sentence of the corpus: Chinese words with fillers, English words, and
/// sometimes an order id.
pub(crate) fn sentence(rng: &mut impl Rng, n: usize) -> String {
    let mut s = String::new();
    for _ in 0..rng.random_range(2..6) {
        if rng.random_bool(0.6) {
            s.push_str(CJK_WORDS[rng.random_range(0..CJK_WORDS.len())]);
            s.push_str(FILLER[rng.random_range(0..FILLER.len())]);
        } else {
            s.push(' ');
            s.push_str(EN_WORDS[rng.random_range(0..EN_WORDS.len())]);
            s.push(' ');
        }
    }
    if rng.random_bool(0.3) {
        s.push_str(&format!(" JD2026-{:06}", n));
    }
    s.trim().to_string()
}

/// A query a person would type about this corpus.
fn query(rng: &mut StdRng, texts: &[String]) -> String {
    match rng.random_range(0..5) {
        0 => CJK_WORDS[rng.random_range(0..CJK_WORDS.len())].to_string(),
        1 => EN_WORDS[rng.random_range(0..EN_WORDS.len())].to_uppercase(),
        2 => {
            let a = CJK_WORDS[rng.random_range(0..CJK_WORDS.len())];
            let b = EN_WORDS[rng.random_range(0..EN_WORDS.len())];
            format!("{a} {b}")
        }
        _ => {
            // An order id written somewhere, whole or by its number.
            let text = &texts[rng.random_range(0..texts.len())];
            match text.find("JD2026-") {
                Some(at) if rng.random_bool(0.5) => text[at..at + 13].to_string(),
                Some(at) => text[at + 7..at + 13].to_string(),
                None => format!("\"{}\"", text.chars().take(4).collect::<String>()),
            }
        }
    }
}

/// Acks a delivery as a client does (the server closes a connection that
/// leaves them unacknowledged); other frames are dropped.
async fn ack_delivery(conn: &mut Conn, frame: Frame) {
    if let Some(Body::Deliver(d)) = frame.body
        && let Some(m) = d.message
    {
        conn.send(Body::Ack(pb::Ack { msg_ids: vec![m.msg_id], event_ids: Vec::new() })).await;
    }
}

/// Waits for the answer to `req`; `None` on an error or timeout.
async fn answer(ctx: &Ctx, conn: &mut Conn, req: u64) -> anyhow::Result<Option<pb::SearchPage>> {
    loop {
        match tokio::time::timeout(QUERY_TIMEOUT, conn.recv()).await {
            Ok(Incoming::Frame(Frame { req_id, body: Some(Body::SearchPage(p)) })) if req_id == req => {
                return Ok(Some(p));
            }
            Ok(Incoming::Frame(Frame { req_id, body: Some(Body::Error(e)) })) if req_id == req => {
                ctx.live.error(format!("search: {}", error_name(e.code)));
                return Ok(None);
            }
            Ok(Incoming::Frame(f)) => ack_delivery(conn, f).await,
            Ok(Incoming::Closed(why)) => anyhow::bail!("the server closed a searcher's connection: {why:?}"),
            Err(_) => {
                ctx.live.error("search: timeout");
                return Ok(None);
            }
        }
    }
}

/// Every hit of `q` (the first `pages` pages), page by page: msg_ids in
/// the order returned, and the first page's round trip.
async fn search_all(
    ctx: &Ctx,
    conn: &mut Conn,
    q: &str,
    pages: usize,
) -> anyhow::Result<Option<(Vec<String>, Duration)>> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    let mut first = None;
    let asked = Instant::now();
    for _ in 0..pages {
        let req = conn
            .send(Body::SearchRequest(pb::SearchRequest {
                query: q.to_string(),
                cursor: cursor.clone(),
                limit: 50,
                ..Default::default()
            }))
            .await;
        let Some(page) = answer(ctx, conn, req).await? else { return Ok(None) };
        first.get_or_insert(asked.elapsed());
        ids.extend(page.hits.into_iter().filter_map(|h| h.message.map(|m| m.msg_id)));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    Ok(Some((ids, first.unwrap_or_default())))
}

/// Writes `count` sentences to `to` with `window` unacknowledged; returns
/// the connection and (msg_id, text, ack time) of each acknowledged one.
async fn fill(
    ctx: &Ctx,
    mut conn: Conn,
    to: &str,
    count: usize,
    window: usize,
    rng: &mut StdRng,
    first: usize,
) -> anyhow::Result<(Conn, Vec<(String, String, Instant)>)> {
    let mut in_flight: HashMap<u64, String> = HashMap::new();
    let mut written = Vec::with_capacity(count);
    let mut sent = 0;
    while sent < count || !in_flight.is_empty() {
        while sent < count && in_flight.len() < window {
            let text = sentence(rng, first + sent);
            let req = conn.send_text(to, format!("q{sent}"), text.clone()).await;
            ctx.live.sent.fetch_add(1, Ordering::Relaxed);
            in_flight.insert(req, text);
            sent += 1;
        }
        let first = match tokio::time::timeout(QUERY_TIMEOUT, conn.recv()).await {
            Ok(incoming) => incoming,
            Err(_) => anyhow::bail!("no SendAck within {QUERY_TIMEOUT:?}"),
        };
        // Everything that has arrived, before sending more: deliveries are
        // acked as they are read, or the server closes a consumer that
        // leaves too many unacknowledged.
        let mut next = Some(first);
        while let Some(incoming) = next.take().or_else(|| conn.try_recv()) {
            match incoming {
                Incoming::Frame(Frame { req_id, body: Some(Body::SendAck(a)) }) => {
                    if let Some(text) = in_flight.remove(&req_id) {
                        ctx.live.acked.fetch_add(1, Ordering::Relaxed);
                        written.push((a.msg_id, text, Instant::now()));
                    }
                }
                Incoming::Frame(Frame { req_id, body: Some(Body::Error(e)) })
                    if in_flight.remove(&req_id).is_some() =>
                {
                    ctx.live.error(format!("send: {}", error_name(e.code)));
                }
                Incoming::Frame(f) => ack_delivery(&mut conn, f).await,
                Incoming::Closed(why) => anyhow::bail!("the server closed a sender's connection: {why:?}"),
            }
        }
    }
    Ok((conn, written))
}

/// One customer connection per user on `device`, spread over the targets.
fn user_specs(ctx: &Ctx, users: &[String], device: &str) -> Vec<ConnSpec> {
    let spec = |(i, user): (usize, &String)| ConnSpec {
        target: i % ctx.targets.len(),
        source: None,
        user: user.clone(),
        role: Role::Customer,
        device: device.into(),
    };
    users.iter().enumerate().map(spec).collect()
}

pub struct Options {
    pub users: usize,
    pub messages: usize,
    pub queries: usize,
    pub window: usize,
    pub seed: u64,
}

pub async fn run(ctx: &Arc<Ctx>, o: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(o.users >= 2 && o.messages >= 1 && o.window >= 1, "--users ≥ 2, --messages and --window ≥ 1");
    let progress = report::progress(ctx.live.clone(), Duration::from_secs(1), "search", ctx.common.json);
    let users: Vec<String> = (0..o.users).map(|i| ctx.user(&format!("s{i}"))).collect();
    let specs = user_specs(ctx, &users, "d0");
    progress.phase("connecting");
    let (conns, connects) = connect_all(ctx, specs, ctx.common.ramp).await;
    let conns: Vec<Conn> = conns.into_iter().flatten().collect();
    anyhow::ensure!(conns.len() == users.len(), "could not connect every user");

    // 1. The corpus: user i writes to user i+1, all users at once, each
    //    with `window` sends unacknowledged.
    progress.phase("sending");
    let fill_started = Instant::now();
    let per_user = o.messages.div_ceil(o.users);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let (ctx, to, window) = (ctx.clone(), users[(i + 1) % users.len()].clone(), o.window);
        let mut rng = StdRng::seed_from_u64(o.seed.wrapping_add(i as u64));
        tasks.spawn(async move {
            let written = fill(&ctx, conn, &to, per_user, window, &mut rng, i * per_user).await;
            (i, written)
        });
    }
    let mut slots: Vec<Option<Conn>> = (0..users.len()).map(|_| None).collect();
    let mut texts: HashMap<String, (String, usize, usize)> = HashMap::new();
    let (mut last_ack, mut last_id) = (fill_started, String::new());
    while let Some(done) = tasks.join_next().await {
        let (i, written) = done?;
        let (conn, written) = written?;
        for (id, text, acked_at) in written {
            if acked_at >= last_ack {
                (last_ack, last_id) = (acked_at, id.clone());
            }
            texts.insert(id, (text, i, (i + 1) % users.len()));
        }
        slots[i] = Some(conn);
    }
    let mut conns: Vec<Conn> = slots.into_iter().flatten().collect();
    let fill_secs = fill_started.elapsed().as_secs_f64();
    // Every message was pushed before its ack: read and ack the last
    // deliveries, so that no connection is closed for leaving them.
    for conn in &mut conns {
        while let Ok(incoming) = tokio::time::timeout(Duration::from_millis(20), conn.recv()).await {
            match incoming {
                Incoming::Frame(f) => ack_delivery(conn, f).await,
                Incoming::Closed(why) => anyhow::bail!("the server closed a user's connection: {why:?}"),
            }
        }
    }
    anyhow::ensure!(!texts.is_empty(), "nothing was acknowledged");

    // 2. Index lag: until the last acked message is found by its own words.
    let mut rng = StdRng::seed_from_u64(o.seed);
    progress.phase("indexing");
    let (last_text, writer, _) = texts[&last_id].clone();
    let probe = format!("\"{last_text}\"");
    let lag = loop {
        let found = search_all(ctx, &mut conns[writer], &probe, 1).await?.map(|f| f.0).unwrap_or_default();
        if found.contains(&last_id) {
            break last_ack.elapsed();
        }
        anyhow::ensure!(last_ack.elapsed() < Duration::from_secs(120), "the last message never became searchable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Fresh connections for the queries: the others sat idle through the
    // catch-up (the server closes silent connections after timeouts.idle).
    drop(conns);
    let specs = user_specs(ctx, &users, "d1");
    let (conns, _) = connect_all(ctx, specs, Duration::ZERO).await;
    let mut conns: Vec<Conn> = conns.into_iter().flatten().collect();
    anyhow::ensure!(conns.len() == users.len(), "could not connect every user again");

    // 3. Queries, checked against a scan of each user's messages; and the
    //    same queries tenant-wide by an admin (first page only: a scan of
    //    everything per query would take the bot longer than the server).
    progress.phase("querying");
    let corpus: Vec<String> = texts.values().map(|(t, _, _)| t.clone()).collect();
    let mut of_user: Vec<Vec<(&str, &str)>> = vec![Vec::new(); users.len()];
    for (id, (t, from, to)) in &texts {
        of_user[*from].push((id, t));
        if to != from {
            of_user[*to].push((id, t));
        }
    }
    let admin_spec =
        ConnSpec { target: 0, source: None, user: ctx.user("admin"), role: Role::Admin, device: "d0".into() };
    let (admin, _) = connect_all(ctx, vec![admin_spec], Duration::ZERO).await;
    let Some(mut admin) = admin.into_iter().flatten().next() else { anyhow::bail!("could not connect the admin") };
    let mut h = report::histogram();
    let mut tenant_h = report::histogram();
    let mut c = Correctness { acked: texts.len() as u64, ..Default::default() };
    let (mut missing, mut foreign, mut results) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for _ in 0..o.queries {
        let q = query(&mut rng, &corpus);
        let who = rng.random_range(0..users.len());
        let clauses = search::parse(&q).map_err(|e| anyhow::anyhow!("query {q}: {e}"))?;
        let expected: HashSet<&str> =
            of_user[who].iter().filter(|(_, t)| search::matches(&clauses, t)).map(|(id, _)| *id).collect();
        let Some((found, first_page)) = search_all(ctx, &mut conns[who], &q, MAX_PAGES).await? else { continue };
        let _ = h.record((first_page.as_micros() as u64).max(1));
        results += found.len() as u64;
        let distinct: HashSet<&str> = found.iter().map(String::as_str).collect();
        c.duplicates += (found.len() - distinct.len()) as u64;
        for id in &expected {
            if !distinct.contains(id) {
                missing += 1;
                if c.missing_examples.len() < 5 {
                    c.missing_examples.push(format!("{q}: {id}"));
                }
            }
        }
        foreign += distinct.iter().filter(|id| !expected.contains(*id)).count() as u64;
        let Some((found, first_page)) = search_all(ctx, &mut admin, &q, 1).await? else { continue };
        let _ = tenant_h.record((first_page.as_micros() as u64).max(1));
        // What the admin found must match and be of this run's corpus.
        foreign +=
            found.iter().filter(|id| texts.get(*id).is_none_or(|(t, _, _)| !search::matches(&clauses, t))).count()
                as u64;
    }
    let query_secs = started.elapsed().as_secs_f64();
    progress.finish();
    c.search_missed = Some(missing);
    c.search_foreign = Some(foreign);

    let mut report = ctx.report("search");
    report.settings.insert("users".into(), o.users.into());
    report.settings.insert("messages".into(), o.messages.into());
    report.settings.insert("queries".into(), o.queries.into());
    report.settings.insert("window".into(), o.window.into());
    report.settings.insert("seed".into(), o.seed.into());
    report.connects = connects;
    report.sent = ctx.live.sent.load(Ordering::Relaxed);
    report.acked = texts.len() as u64;
    report.delivered = results;
    report.seconds = query_secs;
    report.delivered_per_sec = o.queries as f64 / query_secs.max(1e-9);
    report.latency_ms = Latency::of(&h);
    report.errors = ctx.live.errors();
    report.correctness = c;
    let f = &mut report.figures;
    f.insert("fill".into(), format!("{} messages in {fill_secs:.2} s", texts.len()).into());
    f.insert("index_lag_ms".into(), (lag.as_millis() as u64).into());
    f.insert("queries_per_s".into(), ((o.queries as f64 / query_secs.max(1e-9)).round()).into());
    f.insert("results".into(), results.into());
    if let Some(l) = Latency::of(&tenant_h) {
        f.insert("tenant_wide_first_page_ms".into(), serde_json::to_value(l)?);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_finds_what_it_was_built_from() {
        let mut rng = StdRng::seed_from_u64(7);
        let texts: Vec<String> = (0..200).map(|n| sentence(&mut rng, n)).collect();
        for _ in 0..100 {
            let q = query(&mut rng, &texts);
            let clauses = search::parse(&q).unwrap();
            assert!(!clauses.is_empty(), "{q}");
        }
        let with_id = texts.iter().find(|t| t.contains("JD2026-")).unwrap();
        let at = with_id.find("JD2026-").unwrap();
        assert!(search::matches(&search::parse(&with_id[at + 7..at + 13]).unwrap(), with_id));
    }
}
