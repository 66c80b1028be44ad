//! Configuration: defaults, then `--config FILE` (TOML), then `DONGDONG_*`
//! environment variables (`__` separates sections: `DONGDONG_AUTH__SECRET`),
//! then command-line flags. Validated at start-up; errors name the key.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub timeouts: TimeoutsConfig,
    pub cs: CsSection,
    pub im: ImSection,
    pub files: FilesSection,
    pub push: PushSection,
    pub log: LogConfig,
    /// Where it was loaded from, to load it again on SIGHUP (`None`: built
    /// in code).
    #[serde(skip)]
    pub source: Option<ConfigSource>,
}

/// The file and flags a configuration was loaded from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// Offline push through a webhook (see `dispatch::push`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    /// http(s) URL called for users with no connected device; empty: off.
    pub webhook_url: String,
    /// HMAC-SHA256 key of the X-Dongdong-Signature header (≥ 16 bytes when on).
    pub secret: String,
    /// Whether the body carries the message's first 100 characters.
    pub include_preview: bool,
    /// At most one push per user per this long (the latest state wins).
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Each webhook call's time limit.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Events waiting for the pusher; more are dropped (counted).
    pub queue: usize,
    /// Attempts per push (5xx and timeouts are retried with backoff; 4xx never).
    pub max_attempts: u32,
}

impl Default for PushSection {
    fn default() -> Self {
        let d = dispatch::push::PushConfig::default();
        Self {
            webhook_url: d.webhook_url,
            secret: d.secret,
            include_preview: d.include_preview,
            min_interval: d.min_interval,
            timeout: d.timeout,
            queue: d.queue,
            max_attempts: d.max_attempts,
        }
    }
}

/// Uploaded files (`POST /api/v1/files`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilesSection {
    /// Largest upload, in bytes.
    pub max_bytes: u64,
    /// Types accepted, as sniffed from the bytes.
    pub allowed_types: Vec<String>,
    /// Largest image, in pixels (width × height); checked before decoding.
    pub max_pixels: u64,
    /// Uploads per user and minute, on each node.
    pub uploads_per_minute: u32,
    /// How long a signed download link works.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// Uploads older than this are deleted ("0s": kept until deleted).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for FilesSection {
    fn default() -> Self {
        Self {
            max_bytes: 20 << 20,
            allowed_types: [
                "image/jpeg",
                "image/png",
                "image/gif",
                "image/webp",
                "application/pdf",
                "text/plain",
                "application/zip",
                "video/mp4",
            ]
            .map(String::from)
            .to_vec(),
            max_pixels: 40_000_000,
            uploads_per_minute: 30,
            link_ttl: Duration::from_secs(600),
            retention: Duration::ZERO,
        }
    }
}

/// Chat features.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImSection {
    /// How long after sending a user may recall their message (admins:
    /// always). "0s" turns recall off for everyone but admins.
    #[serde(with = "humantime_serde")]
    pub recall_window: Duration,
}

impl Default for ImSection {
    fn default() -> Self {
        Self { recall_window: Duration::from_secs(120) }
    }
}

/// Customer service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CsSection {
    /// A disconnected agent keeps their sessions this long.
    #[serde(with = "humantime_serde")]
    pub agent_grace: Duration,
    /// A customer waiting in line who is gone (no connection) this long
    /// leaves the line.
    #[serde(with = "humantime_serde")]
    pub customer_grace: Duration,
    /// How often max waits and grace periods are checked and the
    /// queue-length metric set; each tenant by one node.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Cluster backend: ended sessions and claimed left messages are kept
    /// this long in Redis (their messages stay in the history for good).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Groups created at start-up when they do not exist yet.
    pub groups: Vec<SeedGroup>,
}

/// A service group created from the config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SeedGroup {
    pub tenant: String,
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub policy: storage::cs::Policy,
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    #[serde(with = "humantime_serde", default = "default_max_wait")]
    pub max_wait: Duration,
    /// Every agent of the tenant who goes online joins the group.
    #[serde(default)]
    pub auto_join: bool,
    #[serde(default = "default_capacity")]
    pub default_capacity: u32,
    /// Agents added at start-up (with the default capacity unless they
    /// already have one from another group).
    #[serde(default)]
    pub agents: Vec<String>,
}

fn default_max_queue() -> u32 {
    storage::cs::GroupSpec::default().max_queue
}
fn default_max_wait() -> Duration {
    Duration::from_millis(storage::cs::GroupSpec::default().max_wait_ms)
}
fn default_capacity() -> u32 {
    storage::cs::GroupSpec::default().default_capacity
}

impl SeedGroup {
    pub fn spec(&self) -> storage::cs::GroupSpec {
        storage::cs::GroupSpec {
            id: self.id.clone(),
            name: self.name.clone(),
            policy: self.policy,
            max_queue: self.max_queue,
            max_wait_ms: u64::try_from(self.max_wait.as_millis()).unwrap_or(u64::MAX),
            auto_join: self.auto_join,
            default_capacity: self.default_capacity,
        }
    }
}

impl Default for CsSection {
    fn default() -> Self {
        Config::default().cs
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// WebSocket listen address; the endpoint is ws://ADDR/ws.
    pub listen: SocketAddr,
    /// HTTP listen address for /healthz, /metrics, the API and the consoles.
    pub http: SocketAddr,
    /// The WebSocket URL the web consoles connect to. Empty: the page's own
    /// host name with the port of `listen` (set it behind a proxy or TLS).
    pub public_ws_url: String,
    /// PEM certificate chain and private key: both listeners speak TLS
    /// (wss://, https://); re-read on SIGHUP. Empty: plain (the default).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Behind a reverse proxy: the header it puts the client's address in
    /// (e.g. "x-forwarded-for"; the last address of a list is used). Set,
    /// WebSocket upgrades without it are refused; empty: the TCP peer's
    /// address is the client's (the default).
    pub trusted_proxy_header: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One data directory, no external service.
    Embedded,
    /// Redis and MongoDB shared by any number of identical nodes.
    Cluster,
}

impl Backend {
    /// As written in the config (and the name of its cargo feature).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Cluster => "cluster",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: Backend,
    /// Data directory of the embedded backend (and of the generated dev secret).
    pub data_dir: PathBuf,
    /// Devices remembered per user; the least recently seen is forgotten.
    pub max_devices_per_user: usize,
    /// This node's id in presence entries and its bus channel; generated and
    /// logged when empty. Must be unique within a cluster.
    pub node_id: String,
    /// Cluster backend: Redis for presence, pending ids and the node bus.
    pub redis_url: String,
    /// Cluster backend: MongoDB for the message log.
    pub mongo_url: String,
    pub mongo_database: String,
    /// Write concern of message inserts: "majority" or a number of members.
    pub mongo_write_concern: String,
    /// Whether message inserts wait for the MongoDB journal.
    pub mongo_journal: bool,
    /// Cluster backend: presence entries of a node that stops refreshing
    /// them expire after this long.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// Cluster backend: longest wait for a Redis reply, and for MongoDB to
    /// answer (server selection); past it a send fails with UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub mongo_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret shared by every node. Empty: a dev secret is generated on
    /// first start and kept in the data directory.
    pub secret: String,
    /// Bearer key of the operator API (`/api/v1/admin/limits`). Empty: that
    /// API is off.
    pub operator_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    pub delivery_queue: usize,
    pub ack_queue: usize,
    pub max_inflight: usize,
    pub max_sends_in_flight: usize,
    pub max_presence_subscriptions: usize,
    pub max_resends: u32,
    /// Frames per second per connection, and the burst above it.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Frames and sends per second of one user over all devices, and of a
    /// whole tenant on one node (0: no limit; burst 0: one second's worth).
    pub user_frames_per_sec: u32,
    pub user_frames_burst: u32,
    pub user_sends_per_sec: u32,
    pub user_sends_burst: u32,
    pub tenant_frames_per_sec: u32,
    pub tenant_frames_burst: u32,
    pub tenant_sends_per_sec: u32,
    pub tenant_sends_burst: u32,
    /// Connections from one address between accept and Auth (0: no limit).
    pub handshakes_per_address: u32,
    /// Per-tenant values of the user and tenant rates.
    pub tenants: std::collections::BTreeMap<String, access_gateway::limits::TenantRates>,
    pub max_connections: usize,
    pub history_page_default: usize,
    pub history_page_max: usize,
    pub io_buffer_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    #[serde(with = "humantime_serde")]
    pub auth: Duration,
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    #[serde(with = "humantime_serde")]
    pub ack: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. "info" or "info,access_gateway=debug". RUST_LOG wins.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        let gw = access_gateway::GatewayConfig::default();
        let dispatch = dispatch::DispatchLimits::default();
        let cluster = storage_cluster::ClusterOptions::default();
        let rates = access_gateway::RateLimits::default();
        Self {
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 7800)),
                http: SocketAddr::from(([127, 0, 0, 1], 7801)),
                public_ws_url: String::new(),
                tls_cert: PathBuf::new(),
                tls_key: PathBuf::new(),
                trusted_proxy_header: String::new(),
            },
            storage: StorageConfig {
                backend: Backend::Embedded,
                data_dir: PathBuf::from("./dongdong-data"),
                max_devices_per_user: storage::DEFAULT_MAX_DEVICES_PER_USER,
                node_id: String::new(),
                redis_url: cluster.redis_url,
                mongo_url: cluster.mongo_url,
                mongo_database: cluster.mongo_database,
                mongo_write_concern: cluster.write_concern,
                mongo_journal: cluster.journal,
                presence_ttl: cluster.presence_ttl,
                redis_timeout: cluster.redis_timeout,
                mongo_timeout: cluster.mongo_timeout,
            },
            auth: AuthConfig { secret: String::new(), operator_key: String::new() },
            limits: LimitsConfig {
                max_frame_bytes: gw.max_frame_bytes,
                outbound_queue: gw.outbound_queue,
                delivery_queue: gw.delivery_queue,
                ack_queue: dispatch.ack_queue,
                max_inflight: gw.max_inflight,
                max_sends_in_flight: gw.max_sends_in_flight,
                max_presence_subscriptions: gw.max_presence_subscriptions,
                max_resends: gw.max_resends,
                rate_per_sec: rates.rate_per_sec,
                rate_burst: rates.rate_burst,
                user_frames_per_sec: rates.user_frames_per_sec,
                user_frames_burst: rates.user_frames_burst,
                user_sends_per_sec: rates.user_sends_per_sec,
                user_sends_burst: rates.user_sends_burst,
                tenant_frames_per_sec: rates.tenant_frames_per_sec,
                tenant_frames_burst: rates.tenant_frames_burst,
                tenant_sends_per_sec: rates.tenant_sends_per_sec,
                tenant_sends_burst: rates.tenant_sends_burst,
                handshakes_per_address: rates.handshakes_per_address,
                tenants: rates.tenants,
                max_connections: gw.max_connections,
                history_page_default: dispatch.history_default,
                history_page_max: dispatch.history_max,
                io_buffer_bytes: gw.io_buffer_bytes,
            },
            timeouts: TimeoutsConfig { auth: gw.auth_timeout, idle: gw.idle_timeout, ack: gw.ack_timeout },
            cs: CsSection {
                agent_grace: cs_queue::CsConfig::default().agent_grace,
                customer_grace: cs_queue::CsConfig::default().customer_grace,
                sweep_interval: cs_queue::CsConfig::default().sweep_interval,
                retention: cluster.cs_retention,
                groups: vec![SeedGroup {
                    tenant: "demo".into(),
                    id: "default".into(),
                    name: "Customer service".into(),
                    policy: storage::cs::Policy::LeastLoaded,
                    max_queue: default_max_queue(),
                    max_wait: default_max_wait(),
                    auto_join: true,
                    default_capacity: default_capacity(),
                    agents: Vec::new(),
                }],
            },
            im: ImSection::default(),
            files: FilesSection::default(),
            push: PushSection::default(),
            log: LogConfig { filter: "info".into() },
            source: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Config::default().server
    }
}
impl Default for StorageConfig {
    fn default() -> Self {
        Config::default().storage
    }
}
impl Default for AuthConfig {
    fn default() -> Self {
        Config::default().auth
    }
}
impl LimitsConfig {
    /// These limits with `rates` as the live part.
    fn with_rates(mut self, rates: &access_gateway::RateLimits) -> Self {
        self.rate_per_sec = rates.rate_per_sec;
        self.rate_burst = rates.rate_burst;
        self.user_frames_per_sec = rates.user_frames_per_sec;
        self.user_frames_burst = rates.user_frames_burst;
        self.user_sends_per_sec = rates.user_sends_per_sec;
        self.user_sends_burst = rates.user_sends_burst;
        self.tenant_frames_per_sec = rates.tenant_frames_per_sec;
        self.tenant_frames_burst = rates.tenant_frames_burst;
        self.tenant_sends_per_sec = rates.tenant_sends_per_sec;
        self.tenant_sends_burst = rates.tenant_sends_burst;
        self.handshakes_per_address = rates.handshakes_per_address;
        self.tenants = rates.tenants.clone();
        self
    }

    /// The live part: the rate limits an operator may change while running.
    pub fn rates(&self) -> access_gateway::RateLimits {
        access_gateway::RateLimits {
            rate_per_sec: self.rate_per_sec,
            rate_burst: self.rate_burst,
            user_frames_per_sec: self.user_frames_per_sec,
            user_frames_burst: self.user_frames_burst,
            user_sends_per_sec: self.user_sends_per_sec,
            user_sends_burst: self.user_sends_burst,
            tenant_frames_per_sec: self.tenant_frames_per_sec,
            tenant_frames_burst: self.tenant_frames_burst,
            tenant_sends_per_sec: self.tenant_sends_per_sec,
            tenant_sends_burst: self.tenant_sends_burst,
            handshakes_per_address: self.handshakes_per_address,
            tenants: self.tenants.clone(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Config::default().limits
    }
}
impl Default for TimeoutsConfig {
    fn default() -> Self {
        Config::default().timeouts
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        Config::default().log
    }
}

/// A configuration problem, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("invalid configuration: {0}")]
    Limit(access_gateway::limits::InvalidLimit),
}

/// Overrides from command-line flags.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// The defaults as a figment: built once (serializing the whole config is a
/// third of the cost of loading a small file, which the config fuzzer feels).
fn defaults() -> Figment {
    static DEFAULTS: std::sync::OnceLock<Figment> = std::sync::OnceLock::new();
    DEFAULTS.get_or_init(|| Figment::from(Serialized::defaults(Config::default()))).clone()
}

impl Config {
    /// Loads defaults, the file, `DONGDONG_*` variables and the flags, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = defaults();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("DONGDONG_").split("__"));
        let mut config: Config = figment.extract().map_err(|e| ConfigError::Parse(describe(e)))?;
        if let Some(a) = overrides.listen {
            config.server.listen = a;
        }
        if let Some(a) = overrides.http {
            config.server.http = a;
        }
        if let Some(d) = &overrides.data_dir {
            config.storage.data_dir = d.clone();
        }
        config.validate()?;
        config.source = Some(ConfigSource { file: file.map(Path::to_path_buf), overrides: overrides.clone() });
        Ok(config)
    }

    /// Loads the configuration again from where it was loaded (SIGHUP).
    pub fn reload(&self) -> Result<Option<Self>, ConfigError> {
        match &self.source {
            None => Ok(None),
            Some(s) => Self::load(s.file.as_deref(), &s.overrides).map(Some),
        }
    }

    /// The settings that take effect only at start differ from `other`'s
    /// (all but the rate limits and the TLS files' contents, which are
    /// reloaded).
    pub fn needs_restart_for(&self, other: &Config) -> bool {
        let fixed = |c: &Config| {
            let mut c = c.clone();
            c.limits = c.limits.clone().with_rates(&access_gateway::RateLimits::default());
            c.source = None;
            c
        };
        fixed(self) != fixed(other)
    }

    /// The defaults and `text` (a config file's TOML) only, validated: the
    /// file part of [`Config::load`] (the fuzz target's entry).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let figment = defaults().merge(Toml::string(text));
        let config: Config = figment.extract().map_err(|e| ConfigError::Parse(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.to_string() });
        let l = &self.limits;
        if !(1024..=16 << 20).contains(&l.max_frame_bytes) {
            return invalid("limits.max_frame_bytes", "must be between 1024 and 16777216");
        }
        for (key, v) in [
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.delivery_queue", l.delivery_queue),
            ("limits.ack_queue", l.ack_queue),
            ("limits.max_inflight", l.max_inflight),
            ("limits.max_sends_in_flight", l.max_sends_in_flight),
            ("limits.max_presence_subscriptions", l.max_presence_subscriptions),
            ("limits.max_connections", l.max_connections),
            ("limits.history_page_default", l.history_page_default),
            ("limits.history_page_max", l.history_page_max),
            ("storage.max_devices_per_user", self.storage.max_devices_per_user),
        ] {
            if v == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        l.rates().validate().map_err(ConfigError::Limit)?;
        if l.history_page_default > l.history_page_max {
            return invalid("limits.history_page_default", "must not exceed limits.history_page_max");
        }
        if l.history_page_max > 1000 {
            return invalid("limits.history_page_max", "must be at most 1000");
        }
        if !(128..=1 << 20).contains(&l.io_buffer_bytes) {
            return invalid("limits.io_buffer_bytes", "must be between 128 and 1048576");
        }
        if l.outbound_queue < 16 {
            return invalid("limits.outbound_queue", "must be at least 16");
        }
        let header = &self.server.trusted_proxy_header;
        if !header.is_empty() && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return invalid("server.trusted_proxy_header", "must be an HTTP header name, e.g. x-forwarded-for");
        }
        if self.server.tls_cert.as_os_str().is_empty() != self.server.tls_key.as_os_str().is_empty() {
            return invalid("server.tls_cert", "set server.tls_cert and server.tls_key together (or neither)");
        }
        let ws_url = &self.server.public_ws_url;
        if !(ws_url.is_empty() || ws_url.starts_with("ws://") || ws_url.starts_with("wss://")) {
            return invalid("server.public_ws_url", "must start with ws:// or wss://");
        }
        let t = &self.timeouts;
        for (key, v) in [("timeouts.auth", t.auth), ("timeouts.idle", t.idle), ("timeouts.ack", t.ack)] {
            if v < Duration::from_millis(10) {
                return invalid(key, "must be at least 10ms");
            }
        }
        if self.cs.sweep_interval < Duration::from_millis(50) {
            return invalid("cs.sweep_interval", "must be at least 50ms");
        }
        if self.cs.retention < Duration::from_secs(1) {
            return invalid("cs.retention", "must be at least 1s");
        }
        for g in &self.cs.groups {
            if let Err(e) = im_core::ids::validate_id("tenant", &g.tenant) {
                return Err(ConfigError::Invalid { key: "cs.groups", reason: e });
            }
            let mut spec = g.spec();
            if spec.name.is_empty() {
                spec.name = spec.id.clone();
            }
            if let Err(e) = spec.validate() {
                return Err(ConfigError::Invalid { key: "cs.groups", reason: format!("group {:?}: {e}", g.id) });
            }
            for a in &g.agents {
                if let Err(e) = im_core::ids::validate_id("agent", a) {
                    return Err(ConfigError::Invalid { key: "cs.groups", reason: format!("group {:?}: {e}", g.id) });
                }
            }
        }
        let p = &self.push;
        if !p.webhook_url.is_empty() {
            if !(p.webhook_url.starts_with("http://") || p.webhook_url.starts_with("https://")) {
                return invalid("push.webhook_url", "must start with http:// or https://");
            }
            if p.secret.len() < 16 {
                return invalid("push.secret", "must be at least 16 bytes when push.webhook_url is set");
            }
        }
        if p.timeout < Duration::from_millis(100) {
            return invalid("push.timeout", "must be at least 100ms");
        }
        if p.queue == 0 {
            return invalid("push.queue", "must be at least 1");
        }
        if !(1..=20).contains(&p.max_attempts) {
            return invalid("push.max_attempts", "must be between 1 and 20");
        }
        let f = &self.files;
        if !(1..=256 << 20).contains(&f.max_bytes) {
            return invalid("files.max_bytes", "must be between 1 and 268435456");
        }
        if f.uploads_per_minute == 0 {
            return invalid("files.uploads_per_minute", "must be at least 1");
        }
        if f.max_pixels == 0 {
            return invalid("files.max_pixels", "must be at least 1");
        }
        if f.link_ttl < Duration::from_secs(1) {
            return invalid("files.link_ttl", "must be at least 1s");
        }
        if f.allowed_types.iter().any(|t| t.eq_ignore_ascii_case("text/html") || !t.contains('/')) {
            return invalid("files.allowed_types", "must be media types (type/subtype), never text/html");
        }
        if !self.auth.secret.is_empty() && self.auth.secret.len() < 16 {
            return invalid("auth.secret", "must be at least 16 bytes (or empty for a generated dev secret)");
        }
        let s = &self.storage;
        if !s.node_id.is_empty() {
            if let Err(e) = im_core::ids::validate_id("storage.node_id", &s.node_id) {
                return Err(ConfigError::Invalid { key: "storage.node_id", reason: e });
            }
            if s.node_id.contains(['{', '}', ' ']) {
                return invalid("storage.node_id", "must not contain braces or spaces");
            }
        }
        if s.backend == Backend::Cluster {
            if !s.redis_url.starts_with("redis://") && !s.redis_url.starts_with("rediss://") {
                return invalid("storage.redis_url", "must start with redis:// or rediss://");
            }
            if !s.mongo_url.starts_with("mongodb://") && !s.mongo_url.starts_with("mongodb+srv://") {
                return invalid("storage.mongo_url", "must start with mongodb:// or mongodb+srv://");
            }
            if s.mongo_database.is_empty() {
                return invalid("storage.mongo_database", "must not be empty");
            }
            if s.presence_ttl < Duration::from_secs(1) {
                return invalid("storage.presence_ttl", "must be at least 1s");
            }
            for (key, v) in [("storage.redis_timeout", s.redis_timeout), ("storage.mongo_timeout", s.mongo_timeout)] {
                if v < Duration::from_millis(100) {
                    return invalid(key, "must be at least 100ms");
                }
            }
        }
        Ok(())
    }

    pub fn gateway(&self) -> access_gateway::GatewayConfig {
        let l = &self.limits;
        access_gateway::GatewayConfig {
            max_frame_bytes: l.max_frame_bytes,
            outbound_queue: l.outbound_queue,
            delivery_queue: l.delivery_queue,
            max_inflight: l.max_inflight,
            max_sends_in_flight: l.max_sends_in_flight,
            max_presence_subscriptions: l.max_presence_subscriptions,
            auth_timeout: self.timeouts.auth,
            idle_timeout: self.timeouts.idle,
            ack_timeout: self.timeouts.ack,
            max_resends: l.max_resends,
            max_connections: l.max_connections,
            io_buffer_bytes: l.io_buffer_bytes,
        }
    }

    /// The cluster backend's options.
    pub fn cluster(&self) -> storage_cluster::ClusterOptions {
        let s = &self.storage;
        storage_cluster::ClusterOptions {
            redis_url: s.redis_url.clone(),
            mongo_url: s.mongo_url.clone(),
            mongo_database: s.mongo_database.clone(),
            write_concern: s.mongo_write_concern.clone(),
            journal: s.mongo_journal,
            presence_ttl: s.presence_ttl,
            redis_timeout: s.redis_timeout,
            mongo_timeout: s.mongo_timeout,
            max_devices_per_user: s.max_devices_per_user,
            cs_retention: self.cs.retention,
            ..storage_cluster::ClusterOptions::default()
        }
    }

    /// `storage.node_id`, or a fresh id when it is empty.
    pub fn node_id(&self) -> String {
        if self.storage.node_id.is_empty() {
            format!("n-{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
        } else {
            self.storage.node_id.clone()
        }
    }

    pub fn cs(&self) -> cs_queue::CsConfig {
        cs_queue::CsConfig {
            agent_grace: self.cs.agent_grace,
            customer_grace: self.cs.customer_grace,
            sweep_interval: self.cs.sweep_interval,
            ..cs_queue::CsConfig::default()
        }
    }

    pub fn push(&self) -> dispatch::push::PushConfig {
        let p = &self.push;
        dispatch::push::PushConfig {
            webhook_url: p.webhook_url.clone(),
            secret: p.secret.clone(),
            include_preview: p.include_preview,
            min_interval: p.min_interval,
            timeout: p.timeout,
            queue: p.queue,
            max_attempts: p.max_attempts,
        }
    }

    pub fn dispatch(&self) -> dispatch::DispatchLimits {
        dispatch::DispatchLimits {
            history_default: self.limits.history_page_default,
            history_max: self.limits.history_page_max,
            // Each field well inside one frame.
            max_field_bytes: self.limits.max_frame_bytes,
            ack_queue: self.limits.ack_queue,
            recall_window: self.im.recall_window,
        }
    }
}

/// One line per problem: the dotted key (as in the TOML file, whatever the
/// source), what is wrong, and where the value came from.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".").to_lowercase();
            let source = match &e.metadata {
                Some(m) => match &m.source {
                    Some(src) => format!(" (from {} {src})", m.name),
                    None => format!(" (from {})", m.name),
                },
                None => String::new(),
            };
            if key.is_empty() { format!("{}{source}", e.kind) } else { format!("{key}: {}{source}", e.kind) }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config fuzzer's corpus (fuzz/corpus/config) loads or fails with
    /// a message, never a panic; what loads is valid.
    #[test]
    fn the_fuzz_corpus_loads_or_fails_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config");
        let mut inputs = 0;
        for entry in std::fs::read_dir(root).expect("the corpus is in the repository") {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            if let Ok(c) = Config::from_toml_str(&String::from_utf8_lossy(&bytes)) {
                assert!(c.validate().is_ok());
            }
            inputs += 1;
        }
        assert!(inputs > 0);
    }

    #[test]
    fn defaults_are_valid_and_documented_example_parses() {
        Config::default().validate().unwrap();
        let example = include_str!("../../dongdong.example.toml");
        let parsed: Config =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(example)).extract().unwrap();
        assert_eq!(parsed, Config::default(), "the example config shows the defaults");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[limits]\nmax_frame_bytes = 10\n")?;
            let e = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("limits.max_frame_bytes"), "{e}");
            jail.create_file("typo.toml", "[limits]\nmax_frame_byte = 10\n")?;
            let e = Config::load(Some(Path::new("typo.toml")), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("max_frame_byte"), "{e}");
            assert!(e.to_string().contains("typo.toml"), "{e}");
            jail.set_env("DONGDONG_TIMEOUTS__IDLE", "soon");
            let e = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("timeouts.idle: "), "{e}");
            jail.set_env("DONGDONG_TIMEOUTS__IDLE", "30s");
            jail.set_env("DONGDONG_AUTH__SECRET", "0123456789abcdef0123");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.timeouts.idle, Duration::from_secs(30));
            assert_eq!(c.auth.secret, "0123456789abcdef0123");
            Ok(())
        });
    }
}
