//! `history`: one conversation of N messages, then a client scrolling back
//! through it: K history requests (`SyncRequest` with `before_seq`) of
//! `limit` messages each, one at a time, the first for the newest page and
//! the rest before seqs spread over the whole conversation. Measured: the
//! round trip of each page. Checked: every page holds exactly the `limit`
//! messages below its `before_seq`, ascending, none missing or repeated.

use super::conn::{Incoming, error_name};
use super::ledger::Correctness;
use super::pairs::{Pace, SendPlan, Until, send_loop};
use super::report::{self, Latency, Report};
use super::{ConnSpec, Ctx, connect_all};
use im_core::Role;
use im_core::pb::{self, Frame, frame::Body};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// How long one page may take before it counts as lost.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn run(
    ctx: &Arc<Ctx>,
    messages: usize,
    pages: usize,
    limit: u32,
    window: usize,
    payload: usize,
) -> anyhow::Result<Report> {
    anyhow::ensure!(messages >= 1 && pages >= 1 && window >= 1, "--messages, --pages and --window must be at least 1");
    anyhow::ensure!((1..=200).contains(&limit), "--limit must be 1..=200 (the server's maximum page)");
    let progress = report::progress(ctx.live.clone(), Duration::from_secs(1), "history", ctx.common.json);
    let peer = ctx.user("peer");
    let spec =
        ConnSpec { target: 0, source: None, user: ctx.user("reader"), role: Role::Customer, device: "d0".into() };

    // 1. The conversation. The peer never connects, so nothing is pending.
    progress.phase("sending");
    let (mut conns, connects) = connect_all(ctx, vec![spec], ctx.common.ramp).await;
    let Some(mut conn) = conns.pop().flatten() else { anyhow::bail!("could not connect the reader") };
    let fill_started = Instant::now();
    let plan = SendPlan {
        to_user: peer.clone(),
        expect: Vec::new(),
        pace: Pace::Window(window),
        until: Until::Count(messages),
        payload,
    };
    let acked = send_loop(ctx, &mut conn, plan).await.acked;
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let newest = acked.len() as u64;

    // 2. Scroll back, one page at a time.
    progress.phase("paging");
    let mut h = report::histogram();
    let mut c = Correctness::check(&acked, &[]);
    let mut fetched = 0u64;
    let started = Instant::now();
    for k in 0..pages {
        // The newest page first, then before seqs spread evenly (golden
        // ratio) over the pages that are full.
        let before = if k == 0 {
            u64::MAX
        } else {
            let span = newest.saturating_sub(u64::from(limit)).max(1) as f64;
            u64::from(limit) + 1 + ((k as f64 * 0.618_033_988_749_895).fract() * span) as u64
        };
        let sync = pb::SyncRequest { with_user: peer.clone(), before_seq: before, limit, ..Default::default() };
        let asked = Instant::now();
        let req = conn.send(Body::SyncRequest(sync)).await;
        let page = loop {
            match tokio::time::timeout(PAGE_TIMEOUT, conn.recv()).await {
                Ok(Incoming::Frame(Frame { req_id, body: Some(Body::HistoryPage(p)) })) if req_id == req => {
                    break Some(p);
                }
                Ok(Incoming::Frame(Frame { req_id, body: Some(Body::Error(e)) })) if req_id == req => {
                    ctx.live.error(format!("history: {}", error_name(e.code)));
                    break None;
                }
                Ok(Incoming::Frame(_)) => continue,
                Ok(Incoming::Closed(_)) => anyhow::bail!("the server closed the reader's connection"),
                Err(_) => {
                    ctx.live.error("history: timeout");
                    break None;
                }
            }
        };
        let _ = h.record((asked.elapsed().as_micros() as u64).max(1));
        let Some(page) = page else { continue };
        fetched += 1;
        check_page(&page, before.min(newest + 1), limit, &mut c);
    }
    let paging_secs = started.elapsed().as_secs_f64();
    progress.finish();

    let mut report = ctx.report("history");
    report.settings.insert("messages".into(), messages.into());
    report.settings.insert("pages".into(), pages.into());
    report.settings.insert("limit".into(), limit.into());
    report.settings.insert("window".into(), window.into());
    report.settings.insert("payload".into(), payload.into());
    report.connects = connects;
    report.sent = ctx.live.sent.load(Ordering::Relaxed);
    report.acked = newest;
    report.delivered = fetched;
    report.seconds = paging_secs;
    report.delivered_per_sec = fetched as f64 / paging_secs.max(1e-9);
    report.latency_ms = Latency::of(&h);
    report.errors = ctx.live.errors();
    report.correctness = c;
    let f = &mut report.figures;
    f.insert("fill".into(), format!("{newest} messages in {fill_secs:.2} s").into());
    f.insert("pages_per_s".into(), ((fetched as f64 / paging_secs.max(1e-9)).round()).into());
    Ok(report)
}

/// A page before `before` (at most the newest seq + 1) must hold the
/// `limit` seqs just below it, ascending: what is missing counts as acked
/// but not delivered, repeats as duplicates, a step back as out of order.
fn check_page(page: &pb::HistoryPage, before: u64, limit: u32, c: &mut Correctness) {
    let want = u64::from(limit).min(before.saturating_sub(1));
    let mut expect = before - want;
    for m in &page.messages {
        if m.seq < expect {
            if m.seq + 1 == expect {
                c.duplicates += 1;
            } else {
                c.out_of_order += 1;
            }
            continue;
        }
        c.acked_but_not_delivered += m.seq - expect;
        expect = m.seq + 1;
    }
    c.acked_but_not_delivered += before.saturating_sub(expect);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seqs: &[u64]) -> pb::HistoryPage {
        let messages = seqs.iter().map(|&seq| pb::Message { seq, ..Default::default() }).collect();
        pb::HistoryPage { messages, ..Default::default() }
    }

    #[test]
    fn a_full_page_is_clean_and_holes_repeats_and_short_pages_are_not() {
        let check = |seqs: &[u64], before: u64| {
            let mut c = Correctness::default();
            check_page(&page(seqs), before, 3, &mut c);
            (c.acked_but_not_delivered, c.duplicates, c.out_of_order)
        };
        assert_eq!(check(&[7, 8, 9], 10), (0, 0, 0));
        assert_eq!(check(&[1, 2], 3), (0, 0, 0), "fewer than limit exist below seq 3");
        assert_eq!(check(&[7, 9], 10), (1, 0, 0));
        assert_eq!(check(&[7, 8], 10), (1, 0, 0));
        assert_eq!(check(&[7, 8, 8, 9], 10), (0, 1, 0));
        assert_eq!(check(&[8, 7, 9], 10), (1, 0, 1));
        assert_eq!(check(&[], 10), (3, 0, 0));
    }
}
