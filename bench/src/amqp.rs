//! RabbitMQ drivers: the durable-broker comparison. Every receiver has its
//! own quorum queue (replicated log, fsync'd before a publisher confirm);
//! publishers use confirms with a window of unconfirmed publishes,
//! persistent messages; consumers ack each message as they read it
//! (manual acks, prefetch 20 as the MQTT receivers' inflight).

use crate::{BenchRef, parse, ticker};
use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{
    Ack, BasicProperties, Cancel, CloseChannel, DELIVERY_MODE_PERSISTENT, FieldTable, FieldValue, Nack, Return,
};
use dongdong_bot::{Latency, histogram};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

/// Unacknowledged deliveries per consumer, as the MQTT receivers' inflight.
const PREFETCH: u16 = 20;
/// Longest wait for a connection's handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Publishers filling their queues at once in `amqp-offline`.
const FILL_CONCURRENCY: usize = 64;

pub struct Amqp {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub run: String,
    pub epoch: Instant,
}

/// Counts publisher confirms (single and `multiple`) and returns their
/// window permits.
struct Confirms {
    window: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
    nacked: Arc<AtomicU64>,
    /// Every tag up to this one is confirmed.
    upto: u64,
    /// Tags above `upto` confirmed one by one.
    single: BTreeSet<u64>,
}

impl Confirms {
    /// How many publishes this confirm covers that no earlier one did.
    fn count(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag <= self.upto {
            return 0;
        }
        if !multiple {
            return u64::from(self.single.insert(tag));
        }
        let before = self.single.len();
        self.single.retain(|&t| t > tag);
        let n = (tag - self.upto) - (before - self.single.len()) as u64;
        self.upto = tag;
        n
    }

    /// Counts a confirm (or a nack) and gives its publishes' window back.
    fn settle(&mut self, tag: u64, multiple: bool, nack: bool) {
        let n = self.count(tag, multiple);
        if nack { &self.nacked } else { &self.acked }.fetch_add(n, Ordering::Relaxed);
        self.window.add_permits(n as usize);
    }
}

#[async_trait::async_trait]
impl ChannelCallback for Confirms {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.settle(ack.delivery_tag(), ack.mutiple(), false);
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.settle(nack.delivery_tag(), nack.multiple(), true);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// A publisher: its connection, a confirm-mode channel and its window.
struct Publisher {
    _conn: Connection,
    channel: Channel,
    window: Arc<Semaphore>,
    queue: String,
}

impl Publisher {
    async fn publish(&self, payload: Vec<u8>) -> anyhow::Result<()> {
        self.window.acquire().await?.forget();
        let props = BasicProperties::default().with_delivery_mode(DELIVERY_MODE_PERSISTENT).finish();
        self.channel.basic_publish(props, payload, BasicPublishArguments::new("", &self.queue)).await?;
        Ok(())
    }
}

impl Amqp {
    async fn connect(&self, name: &str) -> anyhow::Result<Connection> {
        let mut args = OpenConnectionArguments::new(&self.host, self.port, &self.user, &self.password);
        args.connection_name(&format!("dd-bench-{}-{name}", self.run));
        // A broker out of file handles accepts the socket and never answers.
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::open(&args)).await {
            Ok(conn) => Ok(conn?),
            Err(_) => anyhow::bail!("no AMQP handshake from {}:{} within {CONNECT_TIMEOUT:?}", self.host, self.port),
        }
    }

    fn queue(&self, i: usize) -> String {
        format!("dd-bench.{}.r{i}", self.run)
    }

    /// Declares receiver `i`'s quorum queue.
    async fn declare(&self, channel: &Channel, i: usize) -> anyhow::Result<()> {
        let mut args = FieldTable::new();
        args.insert("x-queue-type".try_into()?, FieldValue::S("quorum".try_into()?));
        channel
            .queue_declare(QueueDeclareArguments::durable_client_named(&self.queue(i)).arguments(args).finish())
            .await?;
        Ok(())
    }

    async fn declare_all(&self, n: usize) -> anyhow::Result<()> {
        let conn = self.connect("admin").await?;
        let channel = conn.open_channel(None).await?;
        for i in 0..n {
            self.declare(&channel, i).await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// Deletes this run's queues (quorum queues outlive their clients).
    pub async fn delete_all(&self, n: usize) -> anyhow::Result<()> {
        let conn = self.connect("admin").await?;
        let channel = conn.open_channel(None).await?;
        for i in 0..n {
            channel.queue_delete(QueueDeleteArguments::new(&self.queue(i))).await?;
        }
        conn.close().await?;
        Ok(())
    }

    async fn publisher(
        &self,
        i: usize,
        window: usize,
        acked: Arc<AtomicU64>,
        nacked: Arc<AtomicU64>,
    ) -> anyhow::Result<Publisher> {
        let conn = self.connect(&format!("s{i}")).await?;
        let channel = conn.open_channel(None).await?;
        let window = Arc::new(Semaphore::new(window.max(1)));
        let confirms = Confirms { window: window.clone(), acked, nacked, upto: 0, single: BTreeSet::new() };
        channel.register_callback(confirms).await?;
        channel.confirm_select(ConfirmSelectArguments::default()).await?;
        Ok(Publisher { _conn: conn, channel, window, queue: self.queue(i) })
    }

    /// A consumer of receiver `i`'s queue with manual acks: hands each
    /// payload to `on` (which says whether the consumer is done), then acks
    /// it; ends on `stop`, at `limit` or when done, returning its state.
    async fn consume<S: Send + 'static>(
        &self,
        i: usize,
        mut stop: watch::Receiver<bool>,
        mut state: S,
        on: fn(&mut S, &[u8]) -> bool,
        limit: Instant,
    ) -> anyhow::Result<tokio::task::JoinHandle<S>> {
        let conn = self.connect(&format!("r{i}")).await?;
        let channel = conn.open_channel(None).await?;
        channel.basic_qos(BasicQosArguments::new(0, PREFETCH, false)).await?;
        let (_tag, mut rx) =
            channel.basic_consume_rx(BasicConsumeArguments::new(&self.queue(i), "").manual_ack(true).finish()).await?;
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep_until(limit) => break,
                    m = rx.recv() => {
                        let Some(m) = m else { break };
                        let (Some(d), Some(body)) = (m.deliver, m.content) else { continue };
                        let done = on(&mut state, &body);
                        if channel.basic_ack(BasicAckArguments::new(d.delivery_tag(), false)).await.is_err() || done {
                            break;
                        }
                    }
                }
            }
            let _ = channel.close().await;
            let _ = conn.close().await;
            state
        }))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn pairs(
        &self,
        pairs: usize,
        rate: Option<f64>,
        window: usize,
        duration: Duration,
        warmup: Duration,
        payload: usize,
    ) -> anyhow::Result<Value> {
        self.declare_all(pairs).await?;
        let (stop_tx, stop) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let from = (start + warmup).duration_since(self.epoch).as_micros() as u64;
        let to = from + duration.as_micros() as u64;
        let forever = start + Duration::from_secs(24 * 3600);
        let mut receivers = Vec::new();
        for i in 0..pairs {
            let state = Received {
                seen: HashSet::new(),
                h: histogram(),
                delivered: delivered.clone(),
                epoch: self.epoch,
                from,
                to,
            };
            receivers.push(self.consume(i, stop.clone(), state, Received::record, forever).await?);
        }
        let acked = Arc::new(AtomicU64::new(0));
        let nacked = Arc::new(AtomicU64::new(0));
        let mut publishers = Vec::new();
        for i in 0..pairs {
            publishers.push(self.publisher(i, window, acked.clone(), nacked.clone()).await?);
        }
        let deadline = Instant::now() + warmup + duration;
        let mut senders = Vec::new();
        for (i, p) in publishers.into_iter().enumerate() {
            let base = (i as u64) << 32;
            let bench = BenchRef { epoch: self.epoch };
            senders.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut tick = rate.map(|r| ticker(r, i));
                while Instant::now() < deadline {
                    if let Some(t) = &mut tick {
                        t.tick().await;
                    }
                    if p.publish(bench.payload(base + n, payload)).await.is_err() {
                        break;
                    }
                    n += 1;
                }
                (n, p)
            }));
        }
        let mut sent = 0;
        let mut keep = Vec::new();
        for s in senders {
            if let Ok((n, p)) = s.await {
                sent += n;
                keep.push(p);
            }
        }
        // Let what is in flight be confirmed and arrive.
        let until = Instant::now() + Duration::from_secs(15);
        while (delivered.load(Ordering::Relaxed) < acked.load(Ordering::Relaxed)
            || acked.load(Ordering::Relaxed) + nacked.load(Ordering::Relaxed) < sent)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop_tx.send(true);
        let mut h = histogram();
        let mut distinct = 0;
        for r in receivers {
            if let Ok(r) = r.await {
                let _ = h.add(&r.h);
                distinct += r.seen.len() as u64;
            }
        }
        drop(keep);
        let acked = acked.load(Ordering::Relaxed);
        self.delete_all(pairs).await?;
        Ok(json!({
            "scenario": "amqp-pairs", "pairs": pairs, "window": window, "rate": rate,
            "seconds": duration.as_secs_f64(), "sent": sent, "acked": acked,
            "nacked": nacked.load(Ordering::Relaxed), "delivered": h.len(),
            "delivered_per_sec": h.len() as f64 / duration.as_secs_f64(), "latency_ms": Latency::of(&h),
            "acked_but_not_delivered": acked.saturating_sub(distinct),
        }))
    }

    pub async fn offline(
        &self,
        receivers: usize,
        messages: usize,
        window: usize,
        payload: usize,
    ) -> anyhow::Result<Value> {
        // 1. The queues exist before anything is published (durable).
        self.declare_all(receivers).await?;
        // 2. Fill them, every publish confirmed.
        let fill_started = Instant::now();
        let acked = Arc::new(AtomicU64::new(0));
        let nacked = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(FILL_CONCURRENCY));
        let mut tasks = Vec::new();
        for i in 0..receivers {
            let permit = gate.clone().acquire_owned().await?;
            let p = self.publisher(i, window, acked.clone(), nacked.clone()).await?;
            let bench = BenchRef { epoch: self.epoch };
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                for n in 0..messages {
                    if p.publish(bench.payload(((i as u64) << 32) + n as u64, payload)).await.is_err() {
                        break;
                    }
                }
                // The whole window back means every publish is settled.
                let _ = p.window.acquire_many(window.max(1) as u32).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let fill_s = fill_started.elapsed().as_secs_f64();
        // 3. Every consumer at once: time until each has read its queue.
        let (_stop_tx, stop) = watch::channel(false);
        let started = Instant::now();
        let limit = started + Duration::from_secs(120);
        let mut consumers = Vec::new();
        for i in 0..receivers {
            let state = Replayed { seen: HashSet::new(), messages, complete_at: None };
            consumers.push(self.consume(i, stop.clone(), state, Replayed::record, limit).await?);
        }
        let (mut delivered, mut last) = (0, started);
        for c in consumers {
            if let Ok(r) = c.await {
                delivered += r.seen.len();
                last = last.max(r.complete_at.unwrap_or(limit));
            }
        }
        let acked = acked.load(Ordering::Relaxed);
        self.delete_all(receivers).await?;
        Ok(json!({
            "scenario": "amqp-offline", "receivers": receivers, "messages": messages, "acked": acked,
            "nacked": nacked.load(Ordering::Relaxed), "fill_s": fill_s, "delivered": delivered,
            "replay_s": last.duration_since(started).as_secs_f64(),
            "acked_but_not_delivered": acked.saturating_sub(delivered as u64),
        }))
    }
}

/// A pairs receiver's tally.
struct Received {
    seen: HashSet<u64>,
    h: hdrhistogram::Histogram<u64>,
    delivered: Arc<AtomicU64>,
    epoch: Instant,
    /// The measured window, µs since `epoch`.
    from: u64,
    to: u64,
}

impl Received {
    fn record(&mut self, body: &[u8]) -> bool {
        let (ts, n) = parse(body);
        if self.seen.insert(n) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            if ts >= self.from && ts <= self.to {
                let _ = self.h.record((self.epoch.elapsed().as_micros() as u64).saturating_sub(ts).max(1));
            }
        }
        false
    }
}

/// An offline receiver's tally: done when all its messages arrived.
struct Replayed {
    seen: HashSet<u64>,
    messages: usize,
    complete_at: Option<Instant>,
}

impl Replayed {
    fn record(&mut self, body: &[u8]) -> bool {
        self.seen.insert(parse(body).1);
        let done = self.seen.len() >= self.messages;
        if done && self.complete_at.is_none() {
            self.complete_at = Some(Instant::now());
        }
        done
    }
}
