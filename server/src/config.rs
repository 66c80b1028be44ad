//! Configuration: defaults, then `--config FILE` (TOML), then `DONGDONG_*`
//! environment variables (`__` separates sections: `DONGDONG_AUTH__SECRET`),
//! then command-line flags. Validated at start-up; errors name the key.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use im_core::InvalidSetting;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration: one section per `[table]` of the file. Each
/// key is declared once, in the crate that uses it (its type, default and
/// check beside it); a section that several crates share embeds their
/// types flattened.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub timeouts: access_gateway::Timeouts,
    pub cs: cs_queue::CsConfig,
    pub im: ImSection,
    pub files: FilesSection,
    pub push: dispatch::push::PushConfig,
    pub search: dispatch::search::SearchConfig,
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

impl FilesSection {
    fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key: &str, reason: &str| Err(InvalidSetting::new(key, reason));
        if !(1..=256 << 20).contains(&self.max_bytes) {
            return invalid("files.max_bytes", "must be between 1 and 268435456");
        }
        if self.uploads_per_minute == 0 {
            return invalid("files.uploads_per_minute", "must be at least 1");
        }
        if self.max_pixels == 0 {
            return invalid("files.max_pixels", "must be at least 1");
        }
        if self.link_ttl < Duration::from_secs(1) {
            return invalid("files.link_ttl", "must be at least 1s");
        }
        if self.allowed_types.iter().any(|t| t.eq_ignore_ascii_case("text/html") || !t.contains('/')) {
            return invalid("files.allowed_types", "must be media types (type/subtype), never text/html");
        }
        Ok(())
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

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7800)),
            http: SocketAddr::from(([127, 0, 0, 1], 7801)),
            public_ws_url: String::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            trusted_proxy_header: String::new(),
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key: &str, reason: &str| Err(InvalidSetting::new(key, reason));
        let header = &self.trusted_proxy_header;
        if !header.is_empty() && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return invalid("server.trusted_proxy_header", "must be an HTTP header name, e.g. x-forwarded-for");
        }
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            return invalid("server.tls_cert", "set server.tls_cert and server.tls_key together (or neither)");
        }
        let ws_url = &self.public_ws_url;
        if !(ws_url.is_empty() || ws_url.starts_with("ws://") || ws_url.starts_with("wss://")) {
            return invalid("server.public_ws_url", "must start with ws:// or wss://");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One data directory, no external service.
    #[default]
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

/// `[storage]`: the backend and what every backend reads, then the keys of
/// the cluster backend (`storage_cluster::ClusterOptions`).
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
    #[serde(flatten)]
    pub cluster: storage_cluster::ClusterOptions,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            data_dir: PathBuf::from("./dongdong-data"),
            max_devices_per_user: storage::DEFAULT_MAX_DEVICES_PER_USER,
            node_id: String::new(),
            cluster: storage_cluster::ClusterOptions::default(),
        }
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key: &str, reason: &str| Err(InvalidSetting::new(key, reason));
        if self.max_devices_per_user == 0 {
            return invalid("storage.max_devices_per_user", "must be at least 1");
        }
        if !self.node_id.is_empty() {
            im_core::ids::validate_id("storage.node_id", &self.node_id)
                .map_err(|e| InvalidSetting::new("storage.node_id", e))?;
            if self.node_id.contains(['{', '}', ' ']) {
                return invalid("storage.node_id", "must not contain braces or spaces");
            }
        }
        if self.backend == Backend::Cluster {
            self.cluster.validate()?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret shared by every node. Empty: a dev secret is generated on
    /// first start and kept in the data directory.
    pub secret: String,
    /// Bearer key of the operator API (`/api/v1/admin/limits`). Empty: that
    /// API is off.
    pub operator_key: String,
}

/// `[limits]`: the gateway's bounds of a connection, the rate limits (the
/// part an operator may change while running), and dispatch's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    #[serde(flatten)]
    pub connection: access_gateway::ConnectionLimits,
    #[serde(flatten)]
    pub rates: access_gateway::RateLimits,
    #[serde(flatten)]
    pub dispatch: dispatch::DispatchLimits,
}

/// `[im]`: chat features (dispatch's) and sessions (the gateway's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImSection {
    #[serde(flatten)]
    pub messages: dispatch::ImConfig,
    #[serde(flatten)]
    pub sessions: access_gateway::Sessions,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. "info" or "info,access_gateway=debug". RUST_LOG wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { filter: "info".into() }
    }
}

/// A configuration problem, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] InvalidSetting),
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
        let mut config: Config = figment.extract().map_err(|e| ConfigError::Parse(describe(e, &figment)))?;
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
            c.limits.rates = access_gateway::RateLimits::default();
            c.source = None;
            c
        };
        fixed(self) != fixed(other)
    }

    /// The defaults and `text` (a config file's TOML) only, validated: the
    /// file part of [`Config::load`] (the fuzz target's entry).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let figment = defaults().merge(Toml::string(text));
        let config: Config = figment.extract().map_err(|e| ConfigError::Parse(describe(e, &figment)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section (each crate's keys by its own rules).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.storage.validate()?;
        self.limits.connection.validate()?;
        self.limits.rates.validate()?;
        self.limits.dispatch.validate()?;
        self.timeouts.validate()?;
        self.cs.validate()?;
        self.push.validate()?;
        self.search.validate()?;
        self.files.validate()?;
        self.im.sessions.validate()?;
        if !self.auth.secret.is_empty() && self.auth.secret.len() < 16 {
            let reason = "must be at least 16 bytes (or empty for a generated dev secret)";
            return Err(InvalidSetting::new("auth.secret", reason).into());
        }
        Ok(())
    }

    /// The gateway's part.
    pub fn gateway(&self) -> access_gateway::GatewayConfig {
        access_gateway::GatewayConfig {
            limits: self.limits.connection.clone(),
            timeouts: self.timeouts.clone(),
            sessions: self.im.sessions.clone(),
            order_across_nodes: self.storage.backend == Backend::Cluster,
        }
    }

    /// The cluster backend's options: its keys, and what it takes from other
    /// sections.
    pub fn cluster(&self) -> storage_cluster::ClusterOptions {
        storage_cluster::ClusterOptions {
            max_devices_per_user: self.storage.max_devices_per_user,
            cs_retention: self.cs.retention,
            ..self.storage.cluster.clone()
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

    /// Dispatch's part.
    pub fn dispatch(&self) -> dispatch::DispatchConfig {
        dispatch::DispatchConfig {
            limits: self.limits.dispatch.clone(),
            im: self.im.messages.clone(),
            // Each field well inside one frame.
            max_field_bytes: self.limits.connection.max_frame_bytes,
        }
    }
}

/// One line per problem: the dotted key (as in the TOML file, whatever the
/// source), what is wrong, and where the value came from.
fn describe(e: figment::Error, figment: &Figment) -> String {
    e.into_iter()
        .map(|e| {
            let mut key = e.path.join(".").to_lowercase();
            if e.path.len() == 1 && !matches!(e.kind, figment::error::Kind::UnknownField(..)) {
                // A section of flattened parts names only itself: find the
                // key whose value is not of its default's kind.
                if let Some(inner) = mistyped_key(figment, &key) {
                    key = format!("{key}.{inner}");
                }
            }
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

/// The first key of `section` whose value is of another kind (text,
/// number, true/false, table, list) than its default.
fn mistyped_key(figment: &Figment, section: &str) -> Option<String> {
    use figment::value::Value;
    fn kind(v: &Value) -> u8 {
        match v {
            Value::String(..) | Value::Char(..) => 0,
            Value::Num(..) => 1,
            Value::Bool(..) => 2,
            Value::Dict(..) => 3,
            Value::Array(..) => 4,
            Value::Empty(..) => 5,
        }
    }
    let given = figment.find_value(section).ok()?.into_dict()?;
    let defaults = defaults().find_value(section).ok()?.into_dict()?;
    given
        .iter()
        .find(|(k, v)| defaults.get(k.as_str()).is_some_and(|d| kind(d) != kind(v)))
        .map(|(k, _)| k.to_lowercase())
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

    /// Every key's dotted path (a list or an empty table counts as one).
    fn keys(dict: &figment::value::Dict, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in dict {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v.as_dict() {
                Some(inner) if !inner.is_empty() => keys(inner, &path, out),
                _ => out.push(path),
            }
        }
    }

    /// The example config names every key, each at its default: read on
    /// its own (no defaults under it), it is the default config, and its
    /// keys are the defaults' keys, none missing, none left over.
    #[test]
    fn the_example_config_lists_every_key_at_its_default() {
        Config::default().validate().unwrap();
        let example = include_str!("../../dongdong.example.toml");
        let parsed: Config = Figment::from(Toml::string(example)).extract().unwrap();
        assert_eq!(parsed, Config::default(), "the example config shows the defaults");
        let (mut documented, mut known) = (Vec::new(), Vec::new());
        keys(&Figment::from(Toml::string(example)).extract().unwrap(), "", &mut documented);
        keys(&defaults().extract().unwrap(), "", &mut known);
        documented.sort();
        known.sort();
        let missing: Vec<_> = known.iter().filter(|k| !documented.contains(k)).collect();
        let stale: Vec<_> = documented.iter().filter(|k| !known.contains(k)).collect();
        assert!(missing.is_empty() && stale.is_empty(), "dongdong.example.toml: missing {missing:?}, stale {stale:?}");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn redis_cluster_seeds_are_a_list_or_one_string_with_commas() {
        let seeds = |toml: &str| Config::from_toml_str(toml).map(|c| c.storage.cluster.redis_cluster);
        let list = "[storage]\nbackend = \"cluster\"\nredis_cluster = [\"redis://a:1\", \"redis://b:2\"]\n";
        assert_eq!(seeds(list).unwrap(), ["redis://a:1", "redis://b:2"]);
        let one = "[storage]\nbackend = \"cluster\"\nredis_cluster = \"redis://a:1, redis://b:2,\"\n";
        assert_eq!(seeds(one).unwrap(), ["redis://a:1", "redis://b:2"]);
        let e = seeds("[storage]\nbackend = \"cluster\"\nredis_cluster = [\"a:1\"]\n").unwrap_err();
        assert!(e.to_string().contains("storage.redis_cluster"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_wrong_type_in_a_shared_section_names_the_key() {
        let e = Config::from_toml_str("[limits]\nmax_inflight = \"many\"\n").unwrap_err();
        assert!(e.to_string().contains("limits.max_inflight: invalid type"), "{e}");
        let e = Config::from_toml_str("[storage]\nredis_timeout = 5\n").unwrap_err();
        assert!(e.to_string().contains("storage.redis_timeout: invalid type"), "{e}");
        let e = Config::from_toml_str("[limits]\nmax_inflight = 9\nrate_per_secs = 1\n").unwrap_err();
        assert!(e.to_string().contains("limits: unknown field `rate_per_secs`"), "{e}");
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
            // Keys of sections several crates share, from the environment.
            jail.set_env("DONGDONG_LIMITS__MAX_INFLIGHT", "100");
            jail.set_env("DONGDONG_LIMITS__USER_SENDS_PER_SEC", "7");
            jail.set_env("DONGDONG_LIMITS__HISTORY_PAGE_MAX", "300");
            jail.set_env("DONGDONG_STORAGE__MONGO_JOURNAL", "false");
            jail.set_env("DONGDONG_STORAGE__REDIS_TIMEOUT", "3s");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.timeouts.idle, Duration::from_secs(30));
            assert_eq!(c.auth.secret, "0123456789abcdef0123");
            assert_eq!(
                (
                    c.limits.connection.max_inflight,
                    c.limits.rates.user_sends_per_sec,
                    c.limits.dispatch.history_page_max
                ),
                (100, 7, 300)
            );
            assert_eq!((c.storage.cluster.journal, c.storage.cluster.redis_timeout), (false, Duration::from_secs(3)));
            jail.set_env("DONGDONG_LIMITS__MAX_INFLIGHT", "lots");
            let e = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("limits.max_inflight: "), "{e}");
            Ok(())
        });
    }
}
