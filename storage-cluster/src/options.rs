//! The cluster backend's settings: compiled even without the `backend`
//! feature, so a build without the drivers still reads every key.

use std::time::Duration;

/// Where and how to reach Redis and MongoDB.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub redis_url: String,
    pub mongo_url: String,
    /// MongoDB database holding the `messages` collection.
    pub mongo_database: String,
    /// Write concern of message inserts: "majority" or a number of nodes.
    pub write_concern: String,
    /// Whether inserts wait for the journal.
    pub journal: bool,
    /// Longest wait for one Redis reply.
    pub redis_timeout: Duration,
    /// Longest wait for MongoDB to pick a server / connect.
    pub mongo_timeout: Duration,
    /// Presence entries expire this long after their node last refreshed them.
    pub presence_ttl: Duration,
    /// Devices remembered per user.
    pub max_devices_per_user: usize,
    /// Most documents per insert_many.
    pub max_batch: usize,
    /// How long ended service sessions and claimed left messages are kept.
    pub cs_retention: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            mongo_url: "mongodb://127.0.0.1:27017".into(),
            mongo_database: "dongdong".into(),
            write_concern: "majority".into(),
            journal: true,
            redis_timeout: Duration::from_secs(2),
            mongo_timeout: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(60),
            max_devices_per_user: 16, // storage::DEFAULT_MAX_DEVICES_PER_USER
            max_batch: 256,
            cs_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}
