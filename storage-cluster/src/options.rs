//! The cluster backend's settings: its keys of `[storage]` (declared here
//! once, with their defaults and checks), compiled even without the
//! `backend` feature, so a build without the drivers still reads every key.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where and how to reach Redis and MongoDB. Serialized, the keys of
/// `[storage]` that only the cluster backend reads; the fields that are
/// not keys are set by whoever opens the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterOptions {
    /// Redis, for presence, pending ids, the node bus and customer service.
    pub redis_url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each), used
    /// instead of `redis_url` when given. A list, or in an environment
    /// variable one string with the seeds separated by commas.
    #[serde(deserialize_with = "seeds")]
    pub redis_cluster: Vec<String>,
    /// MongoDB, for the message log and files.
    pub mongo_url: String,
    pub mongo_database: String,
    /// Write concern of message inserts: "majority" or a number of members.
    #[serde(rename = "mongo_write_concern")]
    pub write_concern: String,
    /// Whether message inserts wait for the MongoDB journal.
    #[serde(rename = "mongo_journal")]
    pub journal: bool,
    /// Presence entries of a node that stops refreshing them expire after
    /// this long.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// Longest wait for a Redis reply, and for MongoDB to answer (server
    /// selection); past it a send fails with UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub mongo_timeout: Duration,
    /// Devices remembered per user (`storage.max_devices_per_user`).
    #[serde(skip)]
    pub max_devices_per_user: usize,
    /// Most documents per insert_many.
    #[serde(skip)]
    pub max_batch: usize,
    /// How long ended service sessions and claimed left messages are kept
    /// (`cs.retention`).
    #[serde(skip)]
    pub cs_retention: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster: Vec::new(),
            mongo_url: "mongodb://127.0.0.1:27017".into(),
            mongo_database: "dongdong".into(),
            write_concern: "majority".into(),
            journal: true,
            presence_ttl: Duration::from_secs(60),
            redis_timeout: Duration::from_secs(2),
            mongo_timeout: Duration::from_secs(5),
            max_devices_per_user: 16,
            max_batch: 256,
            cs_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A list of strings, or one string of comma-separated items (as an
/// environment variable gives it).
fn seeds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seeds {
        List(Vec<String>),
        One(String),
    }
    Ok(match Seeds::deserialize(d)? {
        Seeds::List(v) => v,
        Seeds::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
    })
}

impl ClusterOptions {
    /// Where Redis is, for messages: the cluster's seeds, or the URL.
    pub fn redis_target(&self) -> String {
        if self.redis_cluster.is_empty() {
            format!("Redis at {}", self.redis_url)
        } else {
            format!("the Redis Cluster at {}", self.redis_cluster.join(","))
        }
    }

    /// Checks the keys (when the cluster backend is the one in use).
    pub fn validate(&self) -> Result<(), im_core::InvalidSetting> {
        let invalid = |key: &str, reason: &str| Err(im_core::InvalidSetting::new(format!("storage.{key}"), reason));
        let redis_scheme = |url: &str| url.starts_with("redis://") || url.starts_with("rediss://");
        if !redis_scheme(&self.redis_url) {
            return invalid("redis_url", "must start with redis:// or rediss://");
        }
        if !self.redis_cluster.iter().all(|seed| redis_scheme(seed)) {
            return invalid("redis_cluster", "every seed node must start with redis:// or rediss://");
        }
        if !self.mongo_url.starts_with("mongodb://") && !self.mongo_url.starts_with("mongodb+srv://") {
            return invalid("mongo_url", "must start with mongodb:// or mongodb+srv://");
        }
        if self.mongo_database.is_empty() {
            return invalid("mongo_database", "must not be empty");
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return invalid("presence_ttl", "must be at least 1s");
        }
        for (key, v) in [("redis_timeout", self.redis_timeout), ("mongo_timeout", self.mongo_timeout)] {
            if v < Duration::from_millis(100) {
                return invalid(key, "must be at least 100ms");
            }
        }
        Ok(())
    }
}
