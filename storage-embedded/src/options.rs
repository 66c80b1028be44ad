//! The embedded backend's tuning.

use std::time::Duration;

/// Tuning of the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most operations applied in one write transaction.
    pub max_batch: usize,
    /// Bound of the writer's queue; callers wait when it is full.
    pub queue: usize,
    /// Devices remembered per user; the least recently seen is forgotten.
    pub max_devices_per_user: usize,
    /// redb page cache.
    pub cache_bytes: usize,
    /// Longest time between checkpoints while writes arrive. Each one
    /// syncs what redb wrote since the last; their fsync competes with the
    /// log's, so they are kept rare (10 s: one run of 1,000 senders × 5
    /// msg/s had a p99 of 7 ms, against 10–12 ms at 1 s).
    pub checkpoint_interval: Duration,
    /// Log bytes after which a checkpoint is due regardless of the time:
    /// bounds the log on disk and the replay after a crash.
    pub checkpoint_bytes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            queue: 8192,
            max_devices_per_user: storage::DEFAULT_MAX_DEVICES_PER_USER,
            cache_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(10),
            checkpoint_bytes: 64 << 20,
        }
    }
}
