//! Rate limits an operator can change while the server runs: token buckets
//! per connection, per user (all devices) and per tenant, for frames and
//! for sends, and a cap on connections logging in per source address.
//!
//! The values in force are swapped as a whole ([`Limits::set`]); the
//! buckets start full again when their values change. Buckets live in
//! keyed maps, created by a connection's first frame and swept once idle
//! ([`Limits::sweep`]), so an idle connection costs nothing here.

use arc_swap::ArcSwap;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

/// Highest rate accepted for any bucket, per second.
pub const MAX_RATE: u32 = 1_000_000;

/// The rate limits in force: the live part of `[limits]`. For the user and
/// tenant buckets a rate of 0 means no limit; a burst of 0 means one
/// second's worth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Frames per second per connection (at least 1), and its burst.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Frames per second of one user over all their devices.
    pub user_frames_per_sec: u32,
    pub user_frames_burst: u32,
    /// `Send` frames per second of one user over all their devices.
    pub user_sends_per_sec: u32,
    pub user_sends_burst: u32,
    /// Frames per second of a whole tenant (every user of it on this node).
    pub tenant_frames_per_sec: u32,
    pub tenant_frames_burst: u32,
    /// `Send` frames per second of a whole tenant on this node.
    pub tenant_sends_per_sec: u32,
    pub tenant_sends_burst: u32,
    /// Connections from one address between accept and a successful `Auth`
    /// (0: no limit). Beyond it new connections from there are closed at once.
    pub handshakes_per_address: u32,
    /// Per-tenant values of the user and tenant buckets, by tenant id.
    pub tenants: BTreeMap<String, TenantRates>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            rate_per_sec: 200,
            rate_burst: 400,
            user_frames_per_sec: 400,
            user_frames_burst: 800,
            user_sends_per_sec: 200,
            user_sends_burst: 400,
            tenant_frames_per_sec: 0,
            tenant_frames_burst: 0,
            tenant_sends_per_sec: 0,
            tenant_sends_burst: 0,
            handshakes_per_address: 256,
            tenants: BTreeMap::new(),
        }
    }
}

/// One tenant's own values; a key left out keeps the `[limits]` value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantRates {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_frames_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_frames_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_sends_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_sends_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_frames_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_frames_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_sends_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_sends_burst: Option<u32>,
}

/// A value out of range: the dotted key (as in the config file) and why.
pub type InvalidLimit = im_core::InvalidSetting;

/// The dimensions of a refusal, as named in `/metrics` and in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    ConnectionFrames,
    UserFrames,
    UserSends,
    TenantFrames,
    TenantSends,
    HandshakesPerAddress,
}

impl Dimension {
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::ConnectionFrames => "connection_frames",
            Dimension::UserFrames => "user_frames",
            Dimension::UserSends => "user_sends",
            Dimension::TenantFrames => "tenant_frames",
            Dimension::TenantSends => "tenant_sends",
            Dimension::HandshakesPerAddress => "handshakes_per_address",
        }
    }

    /// The refusal as a client reads it.
    fn describe(self, per_sec: u32) -> String {
        match self {
            Dimension::ConnectionFrames => format!("more than {per_sec} frames per second on this connection"),
            Dimension::UserFrames => format!("more than {per_sec} frames per second from this user (all devices)"),
            Dimension::UserSends => format!("more than {per_sec} messages per second from this user (all devices)"),
            Dimension::TenantFrames => format!("more than {per_sec} frames per second in this tenant"),
            Dimension::TenantSends => format!("more than {per_sec} messages per second in this tenant"),
            Dimension::HandshakesPerAddress => format!("more than {per_sec} connections logging in from this address"),
        }
    }
}

/// A frame refused: by which bucket, and the message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub dimension: Dimension,
    pub message: String,
}

impl RateLimits {
    /// Checks every value; the first problem names its key.
    pub fn validate(&self) -> Result<(), InvalidLimit> {
        let bad = |key: &str, reason: &str| Err(InvalidLimit { key: key.to_string(), reason: reason.to_string() });
        if self.rate_per_sec == 0 || self.rate_per_sec > MAX_RATE {
            return bad("limits.rate_per_sec", "must be between 1 and 1000000");
        }
        if self.rate_burst == 0 || self.rate_burst > MAX_RATE {
            return bad("limits.rate_burst", "must be between 1 and 1000000");
        }
        for (name, rate, burst) in self.pairs() {
            if rate > MAX_RATE {
                return bad(&format!("limits.{name}_per_sec"), "must be at most 1000000 (0: no limit)");
            }
            if burst > MAX_RATE {
                return bad(&format!("limits.{name}_burst"), "must be at most 1000000 (0: as many as per second)");
            }
        }
        for (tenant, t) in &self.tenants {
            if let Err(e) = im_core::ids::validate_id("tenant", tenant) {
                return bad(&format!("limits.tenants.{tenant:?}"), &e);
            }
            for (name, rate, burst) in t.pairs() {
                if rate.is_some_and(|r| r > MAX_RATE) {
                    return bad(&format!("limits.tenants.{tenant}.{name}_per_sec"), "must be at most 1000000");
                }
                if burst.is_some_and(|b| b > MAX_RATE) {
                    return bad(&format!("limits.tenants.{tenant}.{name}_burst"), "must be at most 1000000");
                }
            }
        }
        Ok(())
    }

    fn pairs(&self) -> [(&'static str, u32, u32); 4] {
        [
            ("user_frames", self.user_frames_per_sec, self.user_frames_burst),
            ("user_sends", self.user_sends_per_sec, self.user_sends_burst),
            ("tenant_frames", self.tenant_frames_per_sec, self.tenant_frames_burst),
            ("tenant_sends", self.tenant_sends_per_sec, self.tenant_sends_burst),
        ]
    }
}

impl TenantRates {
    fn pairs(&self) -> [(&'static str, Option<u32>, Option<u32>); 4] {
        [
            ("user_frames", self.user_frames_per_sec, self.user_frames_burst),
            ("user_sends", self.user_sends_per_sec, self.user_sends_burst),
            ("tenant_frames", self.tenant_frames_per_sec, self.tenant_frames_burst),
            ("tenant_sends", self.tenant_sends_per_sec, self.tenant_sends_burst),
        ]
    }
}

/// A quota, or none for a rate of 0.
fn quota(per_sec: u32, burst: u32) -> Option<(Quota, u32)> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some((Quota::per_second(rate).allow_burst(burst), per_sec))
}

/// Buckets of one dimension keyed by a hash, with per-tenant values.
struct Buckets {
    dimension: Dimension,
    default: Option<Bucket>,
    /// Tenants with values of their own (`None`: no limit for them).
    tenants: HashMap<String, Option<Bucket>>,
}

struct Bucket {
    limiter: DefaultKeyedRateLimiter<u64>,
    per_sec: u32,
}

impl Bucket {
    fn new((quota, per_sec): (Quota, u32)) -> Self {
        Self { limiter: RateLimiter::keyed(quota), per_sec }
    }
}

impl Buckets {
    fn new(dimension: Dimension, default: Option<(Quota, u32)>) -> Self {
        Self { dimension, default: default.map(Bucket::new), tenants: HashMap::new() }
    }

    fn check(&self, tenant: &str, key: u64) -> Result<(), Refused> {
        let bucket = if self.tenants.is_empty() {
            self.default.as_ref()
        } else {
            self.tenants.get(tenant).map_or(self.default.as_ref(), Option::as_ref)
        };
        let Some(bucket) = bucket else { return Ok(()) };
        match bucket.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                let message =
                    format!("{}; retry in {} ms", self.dimension.describe(bucket.per_sec), wait.as_millis().max(1));
                Err(Refused { dimension: self.dimension, message })
            }
        }
    }

    /// No bucket at all: no limit for anyone.
    fn is_off(&self) -> bool {
        self.default.is_none() && self.tenants.values().all(Option::is_none)
    }

    fn sweep(&self) {
        for bucket in self.default.iter().chain(self.tenants.values().flatten()) {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.default.iter().chain(self.tenants.values().flatten()).map(|b| b.limiter.len()).sum()
    }
}

/// The buckets built from one [`RateLimits`].
struct Active {
    values: Arc<RateLimits>,
    conn_frames: Buckets,
    user_frames: Buckets,
    user_sends: Buckets,
    tenant_frames: Buckets,
    tenant_sends: Buckets,
}

impl Active {
    fn new(values: RateLimits) -> Self {
        let v = &values;
        let conn = quota(v.rate_per_sec.max(1), v.rate_burst.max(1));
        let mut active = Self {
            conn_frames: Buckets::new(Dimension::ConnectionFrames, conn),
            user_frames: Buckets::new(Dimension::UserFrames, quota(v.user_frames_per_sec, v.user_frames_burst)),
            user_sends: Buckets::new(Dimension::UserSends, quota(v.user_sends_per_sec, v.user_sends_burst)),
            tenant_frames: Buckets::new(Dimension::TenantFrames, quota(v.tenant_frames_per_sec, v.tenant_frames_burst)),
            tenant_sends: Buckets::new(Dimension::TenantSends, quota(v.tenant_sends_per_sec, v.tenant_sends_burst)),
            values: Arc::new(values.clone()),
        };
        for (tenant, t) in &values.tenants {
            let pick = |own: Option<u32>, default: u32| own.unwrap_or(default);
            let dims = [
                (
                    &mut active.user_frames,
                    t.user_frames_per_sec,
                    t.user_frames_burst,
                    v.user_frames_per_sec,
                    v.user_frames_burst,
                ),
                (
                    &mut active.user_sends,
                    t.user_sends_per_sec,
                    t.user_sends_burst,
                    v.user_sends_per_sec,
                    v.user_sends_burst,
                ),
                (
                    &mut active.tenant_frames,
                    t.tenant_frames_per_sec,
                    t.tenant_frames_burst,
                    v.tenant_frames_per_sec,
                    v.tenant_frames_burst,
                ),
                (
                    &mut active.tenant_sends,
                    t.tenant_sends_per_sec,
                    t.tenant_sends_burst,
                    v.tenant_sends_per_sec,
                    v.tenant_sends_burst,
                ),
            ];
            for (buckets, rate, burst, default_rate, default_burst) in dims {
                if rate.is_none() && burst.is_none() {
                    continue;
                }
                let q = quota(pick(rate, default_rate), pick(burst, default_burst));
                buckets.tenants.insert(tenant.clone(), q.map(Bucket::new));
            }
        }
        active
    }

    fn all(&self) -> [&Buckets; 5] {
        [&self.conn_frames, &self.user_frames, &self.user_sends, &self.tenant_frames, &self.tenant_sends]
    }
}

/// Who a frame comes from, for the buckets.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub conn_id: u64,
    pub tenant: &'a str,
    pub user: &'a str,
}

/// The node's rate limits: the values in force and their buckets.
pub struct Limits {
    active: ArcSwap<Active>,
    hasher: RandomState,
    /// Connections logging in, by source address.
    handshakes: DashMap<IpAddr, u32>,
}

impl Limits {
    /// `values` must have passed [`RateLimits::validate`].
    pub fn new(values: RateLimits) -> Arc<Self> {
        Arc::new(Self {
            active: ArcSwap::from_pointee(Active::new(values)),
            hasher: RandomState::new(),
            handshakes: DashMap::new(),
        })
    }

    /// Puts `values` in force (validated first): every bucket starts full.
    pub fn set(&self, values: RateLimits) -> Result<(), InvalidLimit> {
        values.validate()?;
        if *self.active.load().values != values {
            self.active.store(Arc::new(Active::new(values)));
        }
        Ok(())
    }

    /// The values in force.
    pub fn values(&self) -> Arc<RateLimits> {
        self.active.load().values.clone()
    }

    /// Takes a token for one frame from `source` (and one for a send when
    /// `is_send`) from each bucket in turn; the first one empty refuses.
    pub fn check_frame(&self, source: Source<'_>, is_send: bool) -> Result<(), Refused> {
        let active = self.active.load();
        // Hashed only for buckets that are on (the tenant ones are off by default).
        let user_on = !active.user_frames.is_off() || (is_send && !active.user_sends.is_off());
        let tenant_on = !active.tenant_frames.is_off() || (is_send && !active.tenant_sends.is_off());
        let user = if user_on { self.hasher.hash_one((source.tenant, source.user)) } else { 0 };
        let tenant = if tenant_on { self.hasher.hash_one(source.tenant) } else { 0 };
        let refused = |r: Refused| {
            metrics::counter!("dongdong_rate_limited_total", "limit" => r.dimension.as_str()).increment(1);
            r
        };
        active.conn_frames.check(source.tenant, source.conn_id).map_err(refused)?;
        active.user_frames.check(source.tenant, user).map_err(refused)?;
        active.tenant_frames.check(source.tenant, tenant).map_err(refused)?;
        if is_send {
            active.user_sends.check(source.tenant, user).map_err(refused)?;
            active.tenant_sends.check(source.tenant, tenant).map_err(refused)?;
        }
        Ok(())
    }

    /// Counts a connection from `addr` as logging in until the guard is
    /// dropped; `Err` when `handshakes_per_address` are already.
    pub fn begin_login(self: &Arc<Self>, addr: IpAddr) -> Result<LoginGuard, Refused> {
        let max = self.active.load().values.handshakes_per_address;
        let mut count = self.handshakes.entry(addr).or_insert(0);
        if max > 0 && *count >= max {
            metrics::counter!("dongdong_rate_limited_total", "limit" => Dimension::HandshakesPerAddress.as_str())
                .increment(1);
            let dimension = Dimension::HandshakesPerAddress;
            return Err(Refused { dimension, message: dimension.describe(max) });
        }
        *count += 1;
        Ok(LoginGuard { limits: self.clone(), addr })
    }

    /// Drops the buckets that are full again (idle keys), and returns how
    /// many are left. Call it now and then (every node does each minute).
    pub fn sweep(&self) -> usize {
        let active = self.active.load();
        active.all().iter().for_each(|b| b.sweep());
        active.all().iter().map(|b| b.len()).sum()
    }

    /// Addresses with connections logging in.
    pub fn addresses_logging_in(&self) -> usize {
        self.handshakes.len()
    }
}

/// A connection counted as logging in from its address.
pub struct LoginGuard {
    limits: Arc<Limits>,
    addr: IpAddr,
}

impl Drop for LoginGuard {
    fn drop(&mut self) {
        self.limits.handshakes.remove_if_mut(&self.addr, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// The address a connection comes from: the TCP peer, or with a trusted
/// proxy header the address the proxy put there (the last of a list, the
/// one the proxy appended). `None` when the header is configured but
/// missing or not an address.
pub fn source_address(peer: IpAddr, header: Option<&str>, value: Option<&[u8]>) -> Option<IpAddr> {
    if header.is_none() {
        return Some(peer);
    }
    let value = std::str::from_utf8(value?).ok()?;
    let last = value.rsplit(',').next()?.trim();
    // "for=" forms and ports are not ours to parse: a bare address only,
    // bracketed IPv6 accepted.
    last.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(conn_id: u64, user: &str) -> Source<'_> {
        Source { conn_id, tenant: "t1", user }
    }

    #[test]
    fn a_user_shares_one_bucket_across_devices() {
        let values = RateLimits { user_sends_per_sec: 1, user_sends_burst: 3, ..RateLimits::default() };
        let limits = Limits::new(values);
        assert!(limits.check_frame(source(1, "u"), true).is_ok());
        assert!(limits.check_frame(source(2, "u"), true).is_ok());
        assert!(limits.check_frame(source(3, "u"), true).is_ok());
        let refused = limits.check_frame(source(4, "u"), true).unwrap_err();
        assert_eq!(refused.dimension, Dimension::UserSends);
        assert!(refused.message.contains("this user (all devices)"), "{}", refused.message);
        // Another user, and frames that are not sends, are not held back.
        assert!(limits.check_frame(source(5, "v"), true).is_ok());
        assert!(limits.check_frame(source(1, "u"), false).is_ok());
    }

    #[test]
    fn a_tenant_override_applies_to_that_tenant_only() {
        let mut values = RateLimits { tenant_sends_per_sec: 0, ..RateLimits::default() };
        values.tenants.insert(
            "t1".into(),
            TenantRates { tenant_sends_per_sec: Some(1), tenant_sends_burst: Some(2), ..Default::default() },
        );
        let limits = Limits::new(values);
        let other = Source { conn_id: 9, tenant: "t2", user: "u" };
        for i in 0..10 {
            assert!(limits.check_frame(Source { conn_id: 20 + i, ..other }, true).is_ok());
        }
        assert!(limits.check_frame(source(1, "a"), true).is_ok());
        assert!(limits.check_frame(source(2, "b"), true).is_ok());
        assert_eq!(limits.check_frame(source(3, "c"), true).unwrap_err().dimension, Dimension::TenantSends);
    }

    #[test]
    fn new_values_take_effect_and_bad_ones_are_refused_by_key() {
        let limits = Limits::new(RateLimits { rate_per_sec: 1, rate_burst: 1, ..RateLimits::default() });
        assert!(limits.check_frame(source(1, "u"), false).is_ok());
        assert_eq!(limits.check_frame(source(1, "u"), false).unwrap_err().dimension, Dimension::ConnectionFrames);
        limits.set(RateLimits { rate_per_sec: 100, rate_burst: 100, ..RateLimits::default() }).unwrap();
        assert!(limits.check_frame(source(1, "u"), false).is_ok());
        let e = limits.set(RateLimits { user_sends_burst: 2_000_000, ..RateLimits::default() }).unwrap_err();
        assert_eq!(e.key, "limits.user_sends_burst");
        let mut bad_tenant = RateLimits::default();
        bad_tenant.tenants.insert(String::new(), TenantRates::default());
        assert!(limits.set(bad_tenant).unwrap_err().key.starts_with("limits.tenants."));
        assert_eq!(limits.values().rate_per_sec, 100, "the running values stay");
    }

    #[test]
    fn logins_in_progress_are_capped_per_address() {
        let limits = Limits::new(RateLimits { handshakes_per_address: 2, ..RateLimits::default() });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = limits.begin_login(a).unwrap();
        let _g2 = limits.begin_login(a).unwrap();
        assert!(limits.begin_login(a).is_err());
        let _g3 = limits.begin_login(b).unwrap();
        drop(g1);
        let _g4 = limits.begin_login(a).unwrap();
        assert_eq!(limits.addresses_logging_in(), 2);
    }

    #[test]
    fn the_proxy_header_gives_the_last_address() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let h = Some("x-forwarded-for");
        assert_eq!(source_address(peer, None, Some(b"1.2.3.4")), Some(peer));
        assert_eq!(source_address(peer, h, Some(b"1.2.3.4")), "1.2.3.4".parse().ok());
        assert_eq!(source_address(peer, h, Some(b"9.9.9.9, 1.2.3.4")), "1.2.3.4".parse().ok());
        assert_eq!(source_address(peer, h, Some(b"[::1]")), "::1".parse().ok());
        assert_eq!(source_address(peer, h, None), None);
        assert_eq!(source_address(peer, h, Some(b"nonsense")), None);
    }

    #[test]
    fn idle_buckets_are_swept() {
        let limits = Limits::new(RateLimits { rate_per_sec: 1_000_000, rate_burst: 1, ..RateLimits::default() });
        for i in 0..100 {
            let _ = limits.check_frame(source(i, "u"), false);
        }
        assert!(limits.sweep() < 300);
    }
}
