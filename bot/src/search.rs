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
fn sentence(rng: &mut StdRng, n: usize) -> String {
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
            Ok(Incoming::Frame(Frame { req_id, body: Some(Body::SendAck(_)) })) if req_id == req => continue,
            Ok(Incoming::Frame(_)) => continue,
            Ok(Incoming::Closed(_)) => anyhow::bail!("the server closed a searcher's connection"),
            Err(_) => {
                ctx.live.error("search: timeout");
                return Ok(None);
            }
        }
    }
}

/// Every hit of `q`, page by page: msg_ids in the order returned.
async fn search_all(ctx: &Ctx, conn: &mut Conn, q: &str) -> anyhow::Result<Option<Vec<String>>> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    for _ in 0..MAX_PAGES {
        let req = conn
            .send(Body::SearchRequest(pb::SearchRequest {
                query: q.to_string(),
                cursor: cursor.clone(),
                limit: 50,
                ..Default::default()
            }))
            .await;
        let Some(page) = answer(ctx, conn, req).await? else { return Ok(None) };
        ids.extend(page.hits.into_iter().filter_map(|h| h.message.map(|m| m.msg_id)));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    Ok(Some(ids))
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
    let specs = users
        .iter()
        .enumerate()
        .map(|(i, u)| ConnSpec {
            target: i % ctx.targets.len(),
            source: None,
            user: u.clone(),
            role: Role::Customer,
            device: "d0".into(),
        })
        .collect();
    progress.phase("connecting");
    let (conns, connects) = connect_all(ctx, specs, ctx.common.ramp).await;
    let mut conns: Vec<Conn> = conns.into_iter().flatten().collect();
    anyhow::ensure!(conns.len() == users.len(), "could not connect every user");

    // 1. The corpus: user i writes to user i+1, round robin, window-pipelined.
    progress.phase("sending");
    let mut rng = StdRng::seed_from_u64(o.seed);
    let mut texts: HashMap<String, (String, usize, usize)> = HashMap::new();
    let mut last_ack = Instant::now();
    let mut last_id = String::new();
    let fill_started = Instant::now();
    let per_user = o.messages.div_ceil(o.users);
    for (i, conn) in conns.iter_mut().enumerate() {
        let to = (i + 1) % users.len();
        let mut in_flight: HashMap<u64, String> = HashMap::new();
        let mut sent = 0;
        while sent < per_user || !in_flight.is_empty() {
            while sent < per_user && in_flight.len() < o.window {
                let text = sentence(&mut rng, i * per_user + sent);
                let req = conn.send_text(&users[to], format!("q{sent}"), text.clone()).await;
                ctx.live.sent.fetch_add(1, Ordering::Relaxed);
                in_flight.insert(req, text);
                sent += 1;
            }
            match tokio::time::timeout(QUERY_TIMEOUT, conn.recv()).await {
                Ok(Incoming::Frame(Frame { req_id, body: Some(Body::SendAck(a)) })) => {
                    if let Some(text) = in_flight.remove(&req_id) {
                        ctx.live.acked.fetch_add(1, Ordering::Relaxed);
                        last_ack = Instant::now();
                        last_id = a.msg_id.clone();
                        texts.insert(a.msg_id, (text, i, to));
                    }
                }
                Ok(Incoming::Frame(Frame { req_id, body: Some(Body::Error(e)) }))
                    if in_flight.remove(&req_id).is_some() =>
                {
                    ctx.live.error(format!("send: {}", error_name(e.code)));
                }
                Ok(Incoming::Frame(_)) => {}
                Ok(Incoming::Closed(_)) => anyhow::bail!("the server closed a sender's connection"),
                Err(_) => anyhow::bail!("no SendAck within {QUERY_TIMEOUT:?}"),
            }
        }
    }
    let fill_secs = fill_started.elapsed().as_secs_f64();

    // 2. Index lag: until the last acked message is found by its own words.
    progress.phase("indexing");
    let (last_text, writer, _) = texts[&last_id].clone();
    let probe = format!("\"{last_text}\"");
    let lag = loop {
        let found = search_all(ctx, &mut conns[writer], &probe).await?.unwrap_or_default();
        if found.contains(&last_id) {
            break last_ack.elapsed();
        }
        anyhow::ensure!(last_ack.elapsed() < Duration::from_secs(120), "the last message never became searchable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // 3. Queries, checked against a scan of each user's messages.
    progress.phase("querying");
    let corpus: Vec<String> = texts.values().map(|(t, _, _)| t.clone()).collect();
    let mut h = report::histogram();
    let mut c = Correctness { acked: texts.len() as u64, ..Default::default() };
    let (mut missing, mut foreign, mut results) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for _ in 0..o.queries {
        let q = query(&mut rng, &corpus);
        let who = rng.random_range(0..users.len());
        let clauses = search::parse(&q).map_err(|e| anyhow::anyhow!("query {q}: {e}"))?;
        let expected: HashSet<&str> = texts
            .iter()
            .filter(|(_, (t, from, to))| (*from == who || *to == who) && search::matches(&clauses, t))
            .map(|(id, _)| id.as_str())
            .collect();
        let asked = Instant::now();
        let Some(found) = search_all(ctx, &mut conns[who], &q).await? else { continue };
        let _ = h.record((asked.elapsed().as_micros() as u64).max(1));
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
