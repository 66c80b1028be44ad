//! `store-recovery`: the embedded store's startup after a crash with a
//! large write-ahead log. A child process (`store-fill`) appends messages
//! with checkpoints switched off until the log holds `--log-mib`, then
//! exits without closing the store, as after `kill -9`: every answered
//! append is in the log and nothing of it is checkpointed in redb. This
//! process then opens the store (replaying the whole log) and reports the
//! time, its RSS, and whether every message is there.

use dongdong_bot::Sampler;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use storage::{DeviceKey, DeviceRegistry, HistoryQuery, MessageStore, NewMessage, PendingStore};
use storage_embedded::{EmbeddedOptions, EmbeddedStore};

/// Appends in flight at once while filling (as many connections would).
const FILL_CONCURRENCY: usize = 256;
/// Conversations the messages are spread over.
const CONVERSATIONS: usize = 1000;

fn message(c: usize, n: u64, payload: usize) -> NewMessage {
    let (from, to) = (format!("s{c}"), format!("r{c}"));
    let mut text = format!("{n:016} ");
    text.extend(std::iter::repeat_n('.', payload.saturating_sub(text.len())));
    NewMessage {
        tenant: "bench".into(),
        conversation_id: im_core::conversation_id("bench", &from, &to),
        from_user: from,
        from_device: "d0".into(),
        to_user: to,
        client_msg_id: format!("m{n}"),
        content: im_core::pb::Content { kind: Some(im_core::pb::content::Kind::Text(text)) },
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// The child: fills the log, prints how many messages were acked, exits
/// without closing anything.
pub async fn fill(data: PathBuf, log_mib: u64, payload: usize) -> anyhow::Result<()> {
    let options = EmbeddedOptions {
        checkpoint_interval: Duration::from_secs(365 * 24 * 3600),
        checkpoint_bytes: u64::MAX,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(&data, options)?;
    // Every receiver has a device, so each message also leaves a pending mark.
    for c in 0..CONVERSATIONS {
        store.register_device(&DeviceKey::new("bench", format!("r{c}"), "d0")).await?;
    }
    let wal = data.join("wal");
    let target = log_mib << 20;
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..FILL_CONCURRENCY {
        let (store, next, acked, wal) = (store.clone(), next.clone(), acked.clone(), wal.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n % 4096 == 0 && dir_bytes(&wal) >= target {
                    return anyhow::Ok(());
                }
                store.append(message(n as usize % CONVERSATIONS, n, payload)).await?;
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The first task to see the log full ends the fill.
    let (first, _, rest) = futures_util::future::select_all(tasks).await;
    first??;
    let acked = acked.load(Ordering::Relaxed);
    println!("{}", json!({ "acked": acked, "fill_s": started.elapsed().as_secs_f64(), "log_bytes": dir_bytes(&wal) }));
    drop(rest);
    // As after kill -9: no close, no checkpoint, no destructor.
    std::process::exit(0)
}

/// The parent: runs the fill in a child process, then times the reopen.
pub async fn recovery(data: Option<PathBuf>, log_mib: u64, payload: usize) -> anyhow::Result<Value> {
    let tmp = tempfile_dir()?;
    let data = data.unwrap_or_else(|| tmp.join("data"));
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["store-fill", "--log-mib", &log_mib.to_string(), "--payload", &payload.to_string(), "--data"])
        .arg(&data)
        .output()?;
    anyhow::ensure!(out.status.success(), "store-fill failed: {}", String::from_utf8_lossy(&out.stderr));
    let filled: Value = serde_json::from_slice(out.stdout.trim_ascii())?;
    let acked = filled["acked"].as_u64().unwrap_or(0);
    let redb_bytes = std::fs::metadata(data.join("dongdong.redb")).map(|m| m.len()).unwrap_or(0);
    // Sampled on another worker while the open blocks this one.
    let sampler = Sampler::start(std::process::id())?;
    let rss_before = sampler.rss_kib().unwrap_or(0);
    let started = Instant::now();
    let store = EmbeddedStore::open(&data, EmbeddedOptions::default())?;
    let open_s = started.elapsed().as_secs_f64();
    let rss_after = sampler.rss_kib().unwrap_or(0);
    let rss_peak = sampler.finish().map_or(rss_after, |s| s.rss_peak_kib.max(rss_after));
    // Every acked message is back: the top seq and pending count of each
    // conversation add up to what was acked.
    let (mut stored, mut pending) = (0u64, 0u64);
    for c in 0..CONVERSATIONS {
        let (from, to) = (format!("s{c}"), format!("r{c}"));
        let query = HistoryQuery {
            tenant: "bench".into(),
            conversation_id: im_core::conversation_id("bench", &from, &to),
            after_seq: 0,
            before_seq: u64::MAX,
            limit: 1,
        };
        stored += store.history(query).await?.messages.last().map_or(0, |m| m.seq);
        pending += store.pending_count(&DeviceKey::new("bench", &to, "d0")).await?;
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(json!({
        "scenario": "store-recovery", "log_bytes": filled["log_bytes"], "redb_bytes_at_crash": redb_bytes,
        "acked": acked, "fill_s": filled["fill_s"], "open_s": open_s,
        "rss_kib_before_open": rss_before, "rss_kib_after_open": rss_after,
        "rss_kib_peak_during_open": rss_peak,
        "stored_after": stored, "pending_after": pending,
        "lost": acked.saturating_sub(stored.min(pending)),
    }))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("dd-bench-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
