//! The result of a bot run: figures, errors by code, the correctness report
//! and, with `--server-pid`, the server's CPU and memory; printed for people
//! or as one JSON object (`--json`).

use super::ledger::Correctness;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A latency histogram in microseconds, 1 µs to 1 h, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  ({} samples)",
            self.p50, self.p90, self.p99, self.p99_9, self.max, self.count
        )
    }
}

/// Counts shared by every bot of a run: live figures for the progress bar
/// and errors by code for the report.
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// New (msg_id, device) deliveries, warm-up included.
    pub delivered: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    first_failure: Mutex<Option<String>>,
}

impl Live {
    pub fn error(&self, key: impl Into<String>) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(key.into()).or_default() += 1;
        }
    }

    /// Keeps the first connection failure's full text for the report.
    pub fn first_failure(&self, detail: String) {
        if let Ok(mut f) = self.first_failure.lock() {
            f.get_or_insert(detail);
        }
    }

    pub fn first_failure_detail(&self) -> Option<String> {
        self.first_failure.lock().ok().and_then(|f| f.clone())
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// A progress bar over `total` seconds showing the live delivery rate;
/// hidden with `--json` (and by indicatif when stderr is not a terminal).
pub fn progress(live: Arc<Live>, total: Duration, label: &'static str, hidden: bool) -> Progress {
    let bar = if hidden { ProgressBar::hidden() } else { ProgressBar::new(total.as_millis().max(1) as u64) };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {elapsed_precise} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label);
    let started = Instant::now();
    let ticker_bar = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut last = (Instant::now(), 0u64);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let delivered = live.delivered.load(Ordering::Relaxed);
            let rate = (delivered - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
            last = (Instant::now(), delivered);
            let errors: u64 = live.errors().values().sum();
            ticker_bar.set_position(started.elapsed().as_millis() as u64);
            ticker_bar.set_message(format!(
                "{rate:>8.0} deliveries/s  sent {}  acked {}  delivered {delivered}  errors {errors}",
                live.sent.load(Ordering::Relaxed),
                live.acked.load(Ordering::Relaxed),
            ));
        }
    });
    Progress { bar, ticker }
}

pub struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn phase(&self, label: &'static str) {
        self.bar.set_prefix(label);
    }

    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// Connection set-up figures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Connects {
    pub ok: u64,
    pub failed: u64,
    pub time: Option<Latency>,
}

/// CPU and resident memory of a process, sampled from /proc.
#[derive(Debug, Clone, Serialize)]
pub struct ProcStats {
    pub pid: u32,
    /// Average CPU over the sampled period, in percent of one core.
    pub cpu_percent_avg: f64,
    pub cpu_percent_max: f64,
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
}

/// The whole result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub urls: Vec<String>,
    pub tenant: String,
    pub settings: Map<String, Value>,
    /// Measured period (after warm-up), seconds.
    pub seconds: f64,
    pub connects: Connects,
    pub sent: u64,
    pub acked: u64,
    /// New (message, device) deliveries of messages sent in the measured period.
    pub delivered: u64,
    pub delivered_per_sec: f64,
    /// Send to delivery, of messages sent in the measured period.
    pub latency_ms: Option<Latency>,
    pub errors: BTreeMap<String, u64>,
    pub correctness: Correctness,
    /// Scenario-specific figures.
    pub figures: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ProcStats>,
    pub bot: Option<ProcStats>,
    pub clean: bool,
}

impl Report {
    pub fn print(&self) {
        println!("dongdong bot {} against {} (tenant {})", self.scenario, self.urls.join(", "), self.tenant);
        let settings: Vec<String> = self.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  settings      {}", settings.join(" "));
        println!(
            "  connections   {} ok, {} failed{}",
            self.connects.ok,
            self.connects.failed,
            self.connects.time.as_ref().map(|t| format!("; connect+auth {}", t.line())).unwrap_or_default()
        );
        if self.sent > 0 || self.delivered > 0 {
            println!(
                "  messages      sent {}  acked {}  delivered {} in {:.1} s = {:.0} deliveries/s",
                self.sent, self.acked, self.delivered, self.seconds, self.delivered_per_sec
            );
        }
        if let Some(l) = &self.latency_ms {
            println!("  latency       {}", l.line());
        }
        for (k, v) in &self.figures {
            match v {
                Value::String(s) => println!("  {k:<13} {s}"),
                v => println!("  {k:<13} {v}"),
            }
        }
        if self.errors.is_empty() {
            println!("  errors        none");
        } else {
            let e: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("  errors        {}", e.join(", "));
        }
        for (who, p) in [("server", &self.server), ("bot", &self.bot)] {
            if let Some(p) = p {
                println!(
                    "  {who:<13} pid {} CPU avg {:.0}% max {:.0}% of one core; RSS start {} KiB, peak {} KiB, end {} KiB",
                    p.pid, p.cpu_percent_avg, p.cpu_percent_max, p.rss_start_kib, p.rss_peak_kib, p.rss_end_kib
                );
            }
        }
        let c = &self.correctness;
        println!(
            "  correctness   {}: acked {}, acked-but-never-delivered {}, duplicates {}, out-of-order {}, sender-order-violated {}, redeliveries {} (deduplicated)",
            match (self.clean, c.clean()) {
                (true, _) => "CLEAN".to_string(),
                (false, true) => format!("FAILED ({} connections failed or dropped)", self.connects.failed),
                (false, false) => "FAILED".to_string(),
            },
            c.acked,
            c.acked_but_not_delivered,
            c.duplicates,
            c.out_of_order,
            c.sender_order_violated,
            c.redeliveries
        );
        if let (Some(missing), Some(unread)) = (c.receipts_missing, c.unread_left) {
            println!(
                "  receipts      MarkRead sent {}, receipts received {}; senders missing the last receipt {}, left unread {}",
                c.marks.unwrap_or(0),
                c.receipts.unwrap_or(0),
                missing,
                unread
            );
        }
        if let (Some(missed), Some(foreign)) = (c.search_missed, c.search_foreign) {
            println!(
                "  search        matching messages not found {missed}, results not matching or not the user's {foreign} (against a scan)"
            );
        }
        if !c.missing_examples.is_empty() {
            println!("  missing e.g.  {}", c.missing_examples.join(", "));
        }
        for example in &c.out_of_order_examples {
            println!("  out of order  {example}");
        }
    }
}

/// Samples a process's CPU time and RSS twice a second.
pub struct Sampler {
    pid: u32,
    state: Arc<Mutex<SamplerState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct SamplerState {
    first: Option<(Instant, u64)>,
    last: Option<(Instant, u64)>,
    cpu_max: f64,
    rss_start: u64,
    rss_peak: u64,
    rss_last: u64,
}

/// Linux reports CPU times in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SEC: f64 = 100.0;

impl Sampler {
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        read_proc(pid).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}: no such process?"))?;
        let state = Arc::new(Mutex::new(SamplerState::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut prev: Option<(Instant, u64)> = None;
            loop {
                tick.tick().await;
                let Some((ticks, rss)) = read_proc(pid) else { return };
                let now = Instant::now();
                let Ok(mut st) = s.lock() else { return };
                if st.first.is_none() {
                    st.first = Some((now, ticks));
                    st.rss_start = rss;
                }
                if let Some((t0, c0)) = prev {
                    let pct = (ticks - c0) as f64 / TICKS_PER_SEC / now.duration_since(t0).as_secs_f64() * 100.0;
                    st.cpu_max = st.cpu_max.max(pct);
                }
                st.last = Some((now, ticks));
                st.rss_peak = st.rss_peak.max(rss);
                st.rss_last = rss;
                prev = Some((now, ticks));
            }
        });
        Ok(Self { pid, state, task })
    }

    /// The current RSS, read now.
    pub fn rss_kib(&self) -> Option<u64> {
        read_proc(self.pid).map(|(_, rss)| rss)
    }

    pub fn finish(self) -> Option<ProcStats> {
        self.task.abort();
        let st = self.state.lock().ok()?;
        let ((t0, c0), (t1, c1)) = (st.first?, st.last?);
        let secs = t1.duration_since(t0).as_secs_f64();
        let avg = if secs > 0.0 { (c1 - c0) as f64 / TICKS_PER_SEC / secs * 100.0 } else { 0.0 };
        Some(ProcStats {
            pid: self.pid,
            cpu_percent_avg: avg,
            cpu_percent_max: st.cpu_max,
            rss_start_kib: st.rss_start,
            rss_peak_kib: st.rss_peak,
            rss_end_kib: st.rss_last,
        })
    }
}

/// (utime + stime in ticks, VmRSS in KiB) of a process.
fn read_proc(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some((ticks, rss))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_cpu_and_rss() {
        let (ticks, rss) = super::read_proc(std::process::id()).expect("own /proc entry");
        assert!(rss > 0);
        let _ = ticks;
    }
}
