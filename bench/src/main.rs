//! `dd-bench`: drives the peer brokers (Mosquitto over MQTT 3.1.1, RabbitMQ
//! over AMQP 0-9-1) through the same work `dongdong bot` does, for
//! `scripts/bench.sh` to print side by side. Benchmark-only: neither
//! protocol is part of the user-facing bot.
//!
//! MQTT clients use QoS 1 and a persistent session (clean_session=false);
//! each receiver has its own topic. AMQP: see `amqp.rs`. Prints one JSON
//! object on stdout.

mod amqp;
mod store;

use clap::{Parser, Subcommand};
use dongdong_bot::{Latency, Sampler, histogram};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, MissedTickBehavior};

#[derive(Parser)]
#[command(name = "dd-bench", about = "MQTT and AMQP peer benchmarks for scripts/bench.sh")]
struct Cli {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: String,
    /// Broker port (default: 1883 for mqtt-*, 5672 for amqp-*).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// AMQP user and password.
    #[arg(long, default_value = "guest", global = true)]
    amqp_user: String,
    #[arg(long, default_value = "guest", global = true)]
    amqp_password: String,
    /// Sample this broker process's RSS from /proc (idle).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

/// Named as the issue names them: the `mqtt-` prefix keeps them apart from
/// the `dongdong bot` scenarios in scripts and tables.
#[derive(Subcommand)]
#[allow(clippy::enum_variant_names)]
enum Command {
    /// P publisher -> subscriber pairs, one topic per subscriber.
    MqttPairs {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Open loop: publishes per second per publisher.
        #[arg(long, conflicts_with = "window")]
        rate: Option<f64>,
        /// Closed loop: unacknowledged publishes per publisher (MQTT inflight).
        #[arg(long)]
        window: Option<u16>,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// Subscribers go away; M messages each are queued for them; they come
    /// back at once: time until every queued message arrived.
    MqttOffline {
        #[arg(long, default_value_t = 1000)]
        receivers: usize,
        #[arg(long, default_value_t = 100)]
        messages: usize,
        #[arg(long, default_value_t = 10)]
        window: u16,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// RabbitMQ: P publisher -> consumer pairs, one quorum queue per
    /// consumer, publisher confirms, manual acks.
    AmqpPairs {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Open loop: publishes per second per publisher.
        #[arg(long)]
        rate: Option<f64>,
        /// Unconfirmed publishes per publisher.
        #[arg(long, default_value_t = 10)]
        window: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// RabbitMQ: M messages each are queued (confirmed) in R quorum queues
    /// with no consumer; then all consumers start at once.
    AmqpOffline {
        #[arg(long, default_value_t = 1000)]
        receivers: usize,
        #[arg(long, default_value_t = 100)]
        messages: usize,
        #[arg(long, default_value_t = 10)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// The embedded store's startup after a crash with a large log: fills
    /// a log of `--log-mib` in a child process that exits without closing
    /// the store, then times the reopen (dongdong's own, no peer).
    StoreRecovery {
        #[arg(long, default_value_t = 1024)]
        log_mib: u64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Data directory to fill (default: a temporary one, removed after).
        #[arg(long)]
        data: Option<std::path::PathBuf>,
    },
    /// The child of `store-recovery`.
    #[command(hide = true)]
    StoreFill {
        #[arg(long)]
        log_mib: u64,
        #[arg(long)]
        payload: usize,
        #[arg(long)]
        data: std::path::PathBuf,
    },
    /// N idle persistent-session connections (keep-alive only).
    MqttIdle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

/// Connections being opened at once.
const CONNECT_CONCURRENCY: usize = 256;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let run = format!("{:x}", std::time::UNIX_EPOCH.elapsed()?.as_millis());
    let epoch = Instant::now();
    let b = Bench { host: cli.host.clone(), port: cli.port.unwrap_or(1883), run: run.clone(), epoch };
    let a = amqp::Amqp {
        host: cli.host.clone(),
        port: cli.port.unwrap_or(5672),
        user: cli.amqp_user.clone(),
        password: cli.amqp_password.clone(),
        run,
        epoch,
    };
    let result = match cli.command {
        Command::AmqpPairs { pairs, rate, window, duration, warmup, payload } => {
            let server = cli.server_pid.map(Sampler::start).transpose()?;
            let mut r = a.pairs(pairs, rate, window, duration, warmup, payload).await?;
            if let Some(stats) = server.and_then(Sampler::finish) {
                r["server"] = serde_json::to_value(stats)?;
            }
            r
        }
        Command::AmqpOffline { receivers, messages, window, payload } => {
            a.offline(receivers, messages, window, payload).await?
        }
        Command::StoreRecovery { log_mib, payload, data } => store::recovery(data, log_mib, payload).await?,
        Command::StoreFill { log_mib, payload, data } => {
            store::fill(data, log_mib, payload).await?;
            return Ok(());
        }
        Command::MqttPairs { pairs, rate, window, duration, warmup, payload } => {
            let server = cli.server_pid.map(Sampler::start).transpose()?;
            let mut r = b.pairs(pairs, rate, window.unwrap_or(10), duration, warmup, payload).await?;
            if let Some(stats) = server.and_then(Sampler::finish) {
                r["server"] = serde_json::to_value(stats)?;
            }
            r
        }
        Command::MqttOffline { receivers, messages, window, payload } => {
            b.offline(receivers, messages, window, payload).await?
        }
        Command::MqttIdle { connections, duration } => b.idle(connections, duration, cli.server_pid).await?,
    };
    println!("{result}");
    Ok(())
}

struct Bench {
    host: String,
    port: u16,
    run: String,
    epoch: Instant,
}

impl Bench {
    fn options(&self, id: &str, inflight: u16) -> MqttOptions {
        let mut o = MqttOptions::new(format!("{}-{id}", self.run), self.host.clone(), self.port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(inflight.max(1));
        o
    }

    /// A client with TCP_NODELAY, as the dongdong bot uses.
    fn client(&self, id: &str, inflight: u16, cap: usize) -> (AsyncClient, EventLoop) {
        let (client, mut events) = AsyncClient::new(self.options(id, inflight), cap);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        events.set_network_options(net);
        (client, events)
    }

    fn topic(&self, i: usize) -> String {
        format!("bench/{}/r{i}", self.run)
    }

    /// Connects and subscribes receiver `i`; returns its event loop.
    async fn subscriber(&self, i: usize) -> anyhow::Result<(AsyncClient, EventLoop)> {
        let (client, mut events) = self.client(&format!("r{i}"), 20, 16);
        client.subscribe(self.topic(i), QoS::AtLeastOnce).await?;
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
                return Ok((client, events));
            }
        }
    }

    async fn pairs(
        &self,
        pairs: usize,
        rate: Option<f64>,
        window: u16,
        duration: Duration,
        warmup: Duration,
        payload: usize,
    ) -> anyhow::Result<Value> {
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let (stop_tx, stop) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let from = (start + warmup).duration_since(self.epoch).as_micros() as u64;
        let to = from + duration.as_micros() as u64;
        let mut receivers = Vec::new();
        for i in 0..pairs {
            let _permit = gate.acquire().await?;
            let (client, mut events) = self.subscriber(i).await?;
            let (mut stop, delivered) = (stop.clone(), delivered.clone());
            let epoch = self.epoch;
            receivers.push(tokio::spawn(async move {
                let _client = client;
                let mut h = histogram();
                let mut seen = HashSet::new();
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        e = events.poll() => match e {
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let (ts, n) = parse(&p.payload);
                                if seen.insert(n) {
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                    if ts >= from && ts <= to {
                                        let _ = h.record((epoch.elapsed().as_micros() as u64).saturating_sub(ts).max(1));
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
                (h, seen.len() as u64)
            }));
        }
        let deadline = Instant::now() + warmup + duration;
        let acked = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::new();
        for i in 0..pairs {
            let (client, mut events) = self.client(&format!("s{i}"), window, 1);
            let acked = acked.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        e = events.poll() => match e {
                            Ok(Event::Incoming(Packet::PubAck(_))) => { acked.fetch_add(1, Ordering::Relaxed); }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
            });
            let topic = self.topic(i);
            let base = (i as u64) << 32;
            let bench = BenchRef { epoch: self.epoch };
            senders.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut tick = rate.map(|r| ticker(r, i));
                while Instant::now() < deadline {
                    if let Some(t) = &mut tick {
                        t.tick().await;
                    }
                    let p = bench.payload(base + n, payload);
                    n += 1;
                    if client.publish(topic.clone(), QoS::AtLeastOnce, false, p).await.is_err() {
                        break;
                    }
                }
                n
            }));
        }
        let mut sent = 0;
        for s in senders {
            sent += s.await.unwrap_or(0);
        }
        // Let what is in flight arrive.
        let until = Instant::now() + Duration::from_secs(15);
        while (delivered.load(Ordering::Relaxed) < acked.load(Ordering::Relaxed)
            || acked.load(Ordering::Relaxed) < sent)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop_tx.send(true);
        let mut h = histogram();
        let mut distinct = 0;
        for r in receivers {
            if let Ok((rh, n)) = r.await {
                let _ = h.add(&rh);
                distinct += n;
            }
        }
        let acked = acked.load(Ordering::Relaxed);
        Ok(json!({
            "scenario": "mqtt-pairs", "pairs": pairs, "window": window, "rate": rate,
            "seconds": duration.as_secs_f64(), "sent": sent, "acked": acked, "delivered": h.len(),
            "delivered_per_sec": h.len() as f64 / duration.as_secs_f64(), "latency_ms": Latency::of(&h),
            "acked_but_not_delivered": acked.saturating_sub(distinct),
        }))
    }

    async fn offline(&self, receivers: usize, messages: usize, window: u16, payload: usize) -> anyhow::Result<Value> {
        // 1. Persistent subscriptions, then away.
        for i in 0..receivers {
            let (client, mut events) = self.subscriber(i).await?;
            client.disconnect().await?;
            while events.poll().await.is_ok() {}
        }
        // 2. Fill the queues.
        let fill_started = Instant::now();
        let mut senders = Vec::new();
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        for i in 0..receivers {
            let (client, mut events) = self.client(&format!("s{i}"), window, 1);
            let topic = self.topic(i);
            let bench = BenchRef { epoch: self.epoch };
            let gate = gate.clone();
            senders.push(tokio::spawn(async move {
                let _permit = gate.acquire().await;
                let publisher = tokio::spawn({
                    let client = client.clone();
                    async move {
                        for n in 0..messages {
                            let p = bench.payload(((i as u64) << 32) + n as u64, payload);
                            if client.publish(topic.clone(), QoS::AtLeastOnce, false, p).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                let mut acked = 0;
                while acked < messages {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                let _ = publisher.await;
                let _ = client.disconnect().await;
                acked
            }));
        }
        let mut acked = 0;
        for s in senders {
            acked += s.await.unwrap_or(0);
        }
        let fill_s = fill_started.elapsed().as_secs_f64();
        // 3. Everyone back at once.
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..receivers {
            let (client, mut events) = self.client(&format!("r{i}"), 20, 16);
            tasks.push(tokio::spawn(async move {
                let _client = client;
                let mut seen = HashSet::new();
                let limit = Instant::now() + Duration::from_secs(120);
                while seen.len() < messages && Instant::now() < limit {
                    match tokio::time::timeout_at(limit, events.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            seen.insert(parse(&p.payload).1);
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
                        Err(_) => break,
                    }
                }
                (seen.len(), Instant::now())
            }));
        }
        let mut delivered = 0;
        let mut last = started;
        for t in tasks {
            if let Ok((n, at)) = t.await {
                delivered += n;
                last = last.max(at);
            }
        }
        let replay_s = last.duration_since(started).as_secs_f64();
        Ok(json!({
            "scenario": "mqtt-offline", "receivers": receivers, "messages": messages, "acked": acked,
            "fill_s": fill_s, "delivered": delivered, "replay_s": replay_s,
            "acked_but_not_delivered": acked.saturating_sub(delivered),
        }))
    }

    async fn idle(&self, connections: usize, duration: Duration, pid: Option<u32>) -> anyhow::Result<Value> {
        let server = pid.map(Sampler::start).transpose()?;
        let rss_kib = || server.as_ref().and_then(Sampler::rss_kib);
        let before = rss_kib();
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let (stop_tx, stop) = watch::channel(false);
        let connected = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..connections {
            let (client, mut events) = self.client(&format!("i{i}"), 1, 1);
            let (gate, mut stop, connected, dropped) = (gate.clone(), stop.clone(), connected.clone(), dropped.clone());
            tasks.push(tokio::spawn(async move {
                let _client = client;
                let permit = gate.acquire().await;
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        e = events.poll() => match e {
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                connected.fetch_add(1, Ordering::Relaxed);
                                drop(permit);
                                break;
                            }
                            Ok(_) => {}
                            Err(_) => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        e = events.poll() => if e.is_err() {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }));
        }
        let until = Instant::now() + Duration::from_secs(120);
        while connected.load(Ordering::Relaxed) + dropped.load(Ordering::Relaxed) < connections as u64
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let loaded = rss_kib();
        tokio::time::sleep(duration).await;
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        let held = connected.load(Ordering::Relaxed);
        let per = match (before, loaded) {
            (Some(b), Some(l)) if held > 0 => json!((l.saturating_sub(b) as f64 * 1024.0 / held as f64).round()),
            _ => Value::Null,
        };
        Ok(json!({
            "scenario": "mqtt-idle", "connections": connections, "held": held,
            "dropped": dropped.load(Ordering::Relaxed), "server_rss_before_kib": before,
            "server_rss_loaded_kib": loaded, "server_bytes_per_conn": per,
        }))
    }
}

/// What a publisher task needs of the bench.
#[derive(Clone, Copy)]
pub(crate) struct BenchRef {
    pub(crate) epoch: Instant,
}

impl BenchRef {
    pub(crate) fn payload(&self, n: u64, size: usize) -> Vec<u8> {
        let mut p = format!("{:020} {n:016}", self.epoch.elapsed().as_micros() as u64).into_bytes();
        p.resize(size.max(p.len()), b'.');
        p
    }
}

/// Publisher `i`'s schedule at `rate` per second. The phases are spread
/// (golden-ratio sequence): publishers ticking together would send in bursts.
pub(crate) fn ticker(rate: f64, i: usize) -> tokio::time::Interval {
    let period = Duration::from_secs_f64(1.0 / rate);
    let phase = (i as f64 * 0.618_033_988_749_895).fract();
    let mut t = tokio::time::interval_at(Instant::now() + period.mul_f64(phase), period);
    t.set_missed_tick_behavior(MissedTickBehavior::Burst);
    t
}

/// (send time µs, message number) of a payload.
pub(crate) fn parse(p: &[u8]) -> (u64, u64) {
    let s = std::str::from_utf8(p).unwrap_or("");
    let ts = s.get(..20).and_then(|t| t.parse().ok()).unwrap_or(0);
    let n = s.get(21..37).and_then(|t| t.parse().ok()).unwrap_or(0);
    (ts, n)
}
