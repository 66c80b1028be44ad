//! `dongdong bot <scenario>`: load-simulating clients that speak the real
//! protocol over real WebSockets, measure what a deployment delivers, and
//! prove nothing was lost while they loaded it (the correctness report).
//!
//! Scenarios: `pairs`, `multi-device`, `offline`, `history`, `idle`, `cs`,
//! `soak`. Every run
//! uses fresh user ids (prefixed with a run id), so runs never see each
//! other's messages.

mod conn;
mod cs;
mod history;
mod idle;
mod ledger;
mod offline;
mod pairs;
mod receipts;
mod report;
mod search;
mod soak;

pub use ledger::Correctness;
pub use report::{Latency, ProcStats, Report, Sampler, histogram};

use conn::{Conn, ConnectError, Target};
use im_core::token::TokenSigner;
use im_core::{Encoding, Role};
use report::{Connects, Live};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Options every scenario takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// PEM certificates to trust for wss:// (a private CA); without it,
    /// the usual public roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Server WebSocket URL (ws:// or wss://). Several (comma-separated or
    /// repeated) spread the bots over the nodes of a cluster.
    #[arg(long = "url", value_delimiter = ',', default_value = "ws://127.0.0.1:7800/ws")]
    pub urls: Vec<String>,
    /// Tenant of the bot users.
    #[arg(long, default_value = "bot")]
    pub tenant: String,
    /// HS256 secret to mint tokens with. Default: [auth] secret of the
    /// config (or DONGDONG_AUTH__SECRET), else the dev secret in the data
    /// directory, as `dongdong token` does.
    #[arg(long)]
    pub secret: Option<String>,
    /// Instead of a secret: a shell command that prints a token, run once per
    /// bot user with DDBOT_TENANT, DDBOT_USER and DDBOT_ROLE in its
    /// environment (not DONGDONG_*: `dongdong token` would read those as
    /// configuration).
    #[arg(long, conflicts_with = "secret")]
    pub token_cmd: Option<String>,
    /// Config file, for the secret.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Data directory holding the dev secret.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// How long to load (after warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load before measuring; messages sent during it are not counted.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Spread opening the connections over this long.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// After sending stops, the longest wait for acknowledged messages still
    /// on their way.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// How receivers acknowledge: one Ack frame for each Deliver as it is
    /// read (what browsers and mobile SDKs do), or one Ack per burst of
    /// frames read together.
    #[arg(long, default_value = "per-message", value_parser = ["per-message", "batched"])]
    pub ack: String,
    /// What message texts say after their send time: `dots` (padding), or
    /// `mixed`: generated Chinese and English sentences with order ids, as
    /// a search index has to tokenize them.
    #[arg(long, default_value = "dots", value_parser = ["dots", "mixed"])]
    pub text: String,
    /// Frame encoding: protobuf (binary messages) or json (text messages).
    #[arg(long, default_value = "protobuf", value_parser = ["protobuf", "json"])]
    pub encoding: String,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Sample this server process's CPU and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Sending options of the message scenarios.
#[derive(clap::Args, Clone, Debug)]
pub struct Load {
    /// Open loop: messages per second from each sender, whatever the server's
    /// pace (latency counts from the scheduled send time).
    #[arg(long, conflicts_with = "window")]
    pub rate: Option<f64>,
    /// Closed loop: unacknowledged sends each sender keeps going (default 10
    /// when --rate is not given).
    #[arg(long)]
    pub window: Option<usize>,
    /// Text payload size in bytes (at least the 20 bytes of the timestamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Receivers mark each conversation read as messages arrive (MarkRead
    /// per message with --ack per-message, per burst with batched) and
    /// senders ack the receipts; the report checks that every sender got
    /// the receipt of its last message and that nothing is left unread.
    #[arg(long)]
    pub read_receipts: bool,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Scenario {
    /// P one-to-one pairs: each sender sends to its receiver, which acks.
    Pairs {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 100)]
        pairs: usize,
    },
    /// Pairs of users with several devices each: every message must reach
    /// every device of the receiver and the sender's other devices.
    MultiDevice {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Devices per user (the sender sends from its first).
        #[arg(long, default_value_t = 3)]
        devices: usize,
    },
    /// Receivers go offline, M messages each are sent to them, they come back
    /// at once: the time until every pending message is replayed and acked.
    Offline {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        receivers: usize,
        /// Messages per receiver.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Unacknowledged sends per sender while filling the queues.
        #[arg(long, default_value_t = 10)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// One conversation of M messages, then a client scrolling back through
    /// it: page requests of `limit` messages, one at a time.
    History {
        #[command(flatten)]
        common: Common,
        /// Messages in the conversation.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Pages requested after the conversation is written.
        #[arg(long, default_value_t = 1000)]
        pages: usize,
        /// Messages per page (the server's maximum is 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Unacknowledged sends while writing the conversation.
        #[arg(long, default_value_t = 50)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// N authenticated connections that only send heartbeats, spread over
    /// local source addresses (127.0.0.2, 127.0.0.3, ...) for loopback servers.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Local addresses to connect from (comma-separated). Default for a
        /// loopback server: 127.0.0.2 onwards, one per 5,000 connections.
        #[arg(long, value_delimiter = ',')]
        sources: Vec<IpAddr>,
        /// Interval of the Ping frames each connection sends.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
    },
    /// Pairs that keep going through faults: every bot reconnects when its
    /// connection ends (trying the next --url), senders resend what was not
    /// acknowledged, receivers' devices go offline in waves; the report
    /// checks every acknowledged message reached every device, in order.
    Soak {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Devices per receiver.
        #[arg(long, default_value_t = 1)]
        devices: usize,
        /// Messages per second from each sender.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// How often a wave of receiver devices goes offline (0s: never).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wave_every: Duration,
        /// Share of receiver devices in each wave.
        #[arg(long, default_value_t = 0.2)]
        wave_share: f64,
        /// How long a device of a wave stays offline.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        offline_for: Duration,
    },
    /// U users write a conversation each of generated Chinese and English
    /// sentences with order ids, then search it: the index lag of the last
    /// message, each query's time, and recall checked against a scan.
    Search {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        users: usize,
        /// Messages in all.
        #[arg(long, default_value_t = 5000)]
        messages: usize,
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Unacknowledged sends per user while writing.
        #[arg(long, default_value_t = 50)]
        window: usize,
        /// Seed of the corpus and the queries.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Customers arrive at a rate into a service group served by agent bots
    /// that reply after a think time and end each session.
    Cs {
        #[command(flatten)]
        common: Common,
        /// The server's HTTP address, to create the service group.
        #[arg(long, default_value = "http://127.0.0.1:7801")]
        api: String,
        /// Service group (created or updated: auto-join, capacity).
        /// Default: a new group per run.
        #[arg(long)]
        group: Option<String>,
        /// Customers arriving per second.
        #[arg(long, default_value_t = 20.0)]
        arrivals: f64,
        #[arg(long, default_value_t = 20)]
        agents: usize,
        /// Concurrent sessions per agent.
        #[arg(long, default_value_t = 5)]
        capacity: u32,
        /// Customer messages per session (the first is the request's
        /// first message); the agent answers each and then ends the session.
        #[arg(long, default_value_t = 3)]
        messages: usize,
        /// Agent's think time before each reply.
        #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
        think: Duration,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
}

impl Scenario {
    /// The options every scenario has.
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Pairs { common, .. }
            | Scenario::MultiDevice { common, .. }
            | Scenario::Offline { common, .. }
            | Scenario::History { common, .. }
            | Scenario::Idle { common, .. }
            | Scenario::Soak { common, .. }
            | Scenario::Search { common, .. }
            | Scenario::Cs { common, .. } => common,
        }
    }
}

/// Finds the server's secret from `--config` and `--data` when neither
/// `--secret` nor `--token-cmd` is given (the `dongdong` command reads the
/// server's configuration and dev secret the way `serve` does).
pub type FindSecret = Box<dyn FnOnce(Option<&Path>, Option<&Path>) -> anyhow::Result<Vec<u8>> + Send>;

/// Runs a scenario to its end and returns its report.
pub async fn run(scenario: Scenario, find_secret: FindSecret) -> anyhow::Result<Report> {
    let ctx = Arc::new(Ctx::new(scenario.common(), find_secret).await?);
    let server = match scenario.common().server_pid {
        Some(pid) => Some(Sampler::start(pid)?),
        None => None,
    };
    let bot = Sampler::start(std::process::id()).ok();
    let mut report = match scenario {
        Scenario::Pairs { load, pairs, .. } => pairs::run(&ctx, "pairs", &load, pairs, 1).await?,
        Scenario::MultiDevice { load, pairs, devices, .. } => {
            anyhow::ensure!(devices >= 1, "--devices must be at least 1");
            pairs::run(&ctx, "multi-device", &load, pairs, devices).await?
        }
        Scenario::Offline { receivers, messages, window, payload, .. } => {
            offline::run(&ctx, receivers, messages, window, payload).await?
        }
        Scenario::History { messages, pages, limit, window, payload, .. } => {
            history::run(&ctx, messages, pages, limit, window, payload).await?
        }
        Scenario::Idle { connections, sources, heartbeat, .. } => {
            idle::run(&ctx, connections, sources, heartbeat, server.as_ref()).await?
        }
        Scenario::Soak { pairs, devices, rate, payload, wave_every, wave_share, offline_for, .. } => {
            let opts = soak::Options { pairs, devices, rate, payload, wave_every, wave_share, offline_for };
            soak::run(&ctx, opts).await?
        }
        Scenario::Search { users, messages, queries, window, seed, .. } => {
            search::run(&ctx, &search::Options { users, messages, queries, window, seed }).await?
        }
        Scenario::Cs { api, group, arrivals, agents, capacity, messages, think, payload, .. } => {
            let opts = cs::Options { api, group, arrivals, agents, capacity, messages, think, payload };
            cs::run(&ctx, &opts).await?
        }
    };
    if let Some(f) = ctx.live.first_failure_detail() {
        report.figures.insert("first connect failure".into(), f.into());
    }
    report.server = server.and_then(Sampler::finish);
    report.bot = bot.and_then(Sampler::finish);
    report.clean = report.correctness.clean() && report.connects.failed == 0;
    Ok(report)
}

/// Where a run's tokens come from.
enum Tokens {
    Secret(Box<TokenSigner>),
    Command(String),
}

/// What every scenario needs: targets, tokens, the run id, live counters.
pub(crate) struct Ctx {
    pub targets: Vec<Target>,
    pub tenant: String,
    tokens: Tokens,
    pub run: String,
    pub encoding: Encoding,
    pub live: Arc<Live>,
    pub common: Common,
    /// Time zero of the payload timestamps.
    pub epoch: Instant,
    /// Receipt traffic (`--read-receipts`).
    pub receipts: receipts::Counters,
}

impl Ctx {
    async fn new(common: &Common, find_secret: FindSecret) -> anyhow::Result<Self> {
        anyhow::ensure!(!common.urls.is_empty(), "give at least one --url");
        let mut targets = Vec::new();
        for url in &common.urls {
            targets.push(Target::resolve(url, common.ca.as_deref()).await.map_err(anyhow::Error::msg)?);
        }
        let tokens = if let Some(cmd) = &common.token_cmd {
            Tokens::Command(cmd.clone())
        } else if let Some(secret) = &common.secret {
            Tokens::Secret(Box::new(TokenSigner::new(secret.as_bytes())))
        } else {
            Tokens::Secret(Box::new(TokenSigner::new(&find_secret(common.config.as_deref(), common.data.as_deref())?)))
        };
        let encoding = if common.encoding == "json" { Encoding::Json } else { Encoding::Protobuf };
        // Base 36 of the start time in ms: short, unique per run, valid in ids.
        let run = radix36(im_core::now_ms());
        Ok(Self {
            targets,
            tenant: common.tenant.clone(),
            tokens,
            run,
            encoding,
            live: Arc::new(Live::default()),
            common: common.clone(),
            epoch: Instant::now(),
            receipts: Default::default(),
        })
    }

    /// The id of bot user `name` of this run.
    pub fn user(&self, name: &str) -> String {
        format!("{}-{name}", self.run)
    }

    pub async fn token(&self, user: &str, role: Role) -> anyhow::Result<String> {
        match &self.tokens {
            Tokens::Secret(signer) => Ok(signer.mint(&self.tenant, user, role, Duration::from_secs(24 * 3600))?),
            Tokens::Command(cmd) => {
                let out = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .env("DDBOT_TENANT", &self.tenant)
                    .env("DDBOT_USER", user)
                    .env("DDBOT_ROLE", role.as_str())
                    .output()
                    .await
                    .map_err(|e| anyhow::anyhow!("--token-cmd: cannot run sh: {e}"))?;
                anyhow::ensure!(
                    out.status.success(),
                    "--token-cmd failed ({}) for user {user}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
                anyhow::ensure!(!token.is_empty(), "--token-cmd printed no token for user {user}");
                Ok(token)
            }
        }
    }

    /// Connects one bot; a failure is counted by kind and returned.
    pub async fn connect(
        &self,
        target: usize,
        source: Option<IpAddr>,
        user: &str,
        role: Role,
        device: &str,
    ) -> Result<Conn, ConnectError> {
        let r = match self.token(user, role).await {
            Ok(token) => {
                let t = &self.targets[target % self.targets.len()];
                Conn::open(t, source, &token, device, self.encoding).await
            }
            Err(e) => Err(ConnectError { key: "token".into(), detail: format!("{e:#}") }),
        };
        if let Err(e) = &r {
            self.live.error(e.key.clone());
            self.live.first_failure(e.to_string());
        }
        r
    }

    /// Microseconds since the run's epoch: the timestamp in payloads.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A text payload of `size` bytes carrying the send time.
    pub fn payload(&self, sent_us: u64, size: usize) -> String {
        let mut s = format!("{sent_us:020}");
        if self.common.text == "mixed" {
            s.push(' ');
            s.push_str(&search::sentence(&mut rand::rng(), sent_us as usize % 1_000_000));
        }
        if size > s.len() {
            s.push_str(&".".repeat(size - s.len()));
        }
        s
    }

    /// The send time a payload carries.
    pub fn sent_us(text: &str) -> Option<u64> {
        text.get(..20)?.parse().ok()
    }

    pub fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("encoding".into(), self.common.encoding.clone().into());
        m.insert("ack".into(), self.common.ack.clone().into());
        if self.common.text != "dots" {
            m.insert("text".into(), self.common.text.clone().into());
        }
        m
    }

    /// An empty report of `scenario` for this run.
    pub fn report(&self, scenario: &'static str) -> Report {
        Report {
            scenario,
            urls: self.common.urls.clone(),
            tenant: self.tenant.clone(),
            settings: self.settings(),
            seconds: 0.0,
            connects: Connects::default(),
            sent: 0,
            acked: 0,
            delivered: 0,
            delivered_per_sec: 0.0,
            latency_ms: None,
            errors: Default::default(),
            correctness: Correctness::default(),
            figures: Default::default(),
            server: None,
            bot: None,
            clean: false,
        }
    }
}

/// Opens `specs.len()` connections, at most `connect_concurrency` at a time
/// and spread over `ramp`; returns them in order (None where one failed)
/// with the connect figures.
pub(crate) async fn connect_all(ctx: &Arc<Ctx>, specs: Vec<ConnSpec>, ramp: Duration) -> (Vec<Option<Conn>>, Connects) {
    let gate = Arc::new(Semaphore::new(ctx.common.connect_concurrency.max(1)));
    let n = specs.len();
    let step = if n > 1 { ramp / n as u32 } else { Duration::ZERO };
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, spec) in specs.into_iter().enumerate() {
        let ctx = ctx.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(started + step * i as u32).await;
            let _permit = gate.acquire().await.ok()?;
            ctx.connect(spec.target, spec.source, &spec.user, spec.role, &spec.device).await.ok()
        }));
    }
    let mut conns = Vec::with_capacity(n);
    let mut times = report::histogram();
    let mut connects = Connects::default();
    for t in tasks {
        let c = t.await.ok().flatten();
        match &c {
            Some(c) => {
                connects.ok += 1;
                let _ = times.record((c.connect_time.as_micros() as u64).max(1));
            }
            None => connects.failed += 1,
        }
        conns.push(c);
    }
    connects.time = Latency::of(&times);
    (conns, connects)
}

/// One connection to open.
pub(crate) struct ConnSpec {
    pub target: usize,
    pub source: Option<IpAddr>,
    pub user: String,
    pub role: Role,
    pub device: String,
}

fn radix36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn radix36_is_short_and_ordered() {
        assert_eq!(super::radix36(35), "z");
        assert_eq!(super::radix36(36), "10");
        assert!(super::radix36(1_800_000_000_000).len() <= 8);
    }
}
