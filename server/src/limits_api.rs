//! The rate limits in force, changed while running: `[limits]` of the
//! config file (re-read on SIGHUP) with an override set through
//! `/api/v1/admin/limits` on top. The override is stored (so it survives
//! restarts and every node reads the same) and announced on the node bus,
//! so every node of a cluster applies it at once; a node whose bus
//! subscription was re-established reads it again.
//!
//! The API needs `Authorization: Bearer <auth.operator_key>`: the limits
//! are the operator's, not a tenant admin's.

use crate::cs_api::{ApiError, ApiResult, fail, json_body};
use access_gateway::limits::{InvalidLimit, TenantRates};
use access_gateway::{Limits, RateLimits};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use im_core::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::{NodeBus, Settings};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The stored override's name.
const SETTING: &str = "limits";
/// The bus channel announcing a changed override.
const CHANNEL: &str = "*limits";
/// Idle buckets are dropped this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// An override: the keys of `[limits]` that change, as in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_frames_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_frames_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_sends_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_sends_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_frames_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_frames_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_sends_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_sends_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handshakes_per_address: Option<u32>,
    /// Replaces `[limits.tenants]` as a whole when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenants: Option<BTreeMap<String, TenantRates>>,
}

impl LimitsPatch {
    fn over(&self, base: &RateLimits) -> RateLimits {
        let pick = |own: Option<u32>, base: u32| own.unwrap_or(base);
        RateLimits {
            rate_per_sec: pick(self.rate_per_sec, base.rate_per_sec),
            rate_burst: pick(self.rate_burst, base.rate_burst),
            user_frames_per_sec: pick(self.user_frames_per_sec, base.user_frames_per_sec),
            user_frames_burst: pick(self.user_frames_burst, base.user_frames_burst),
            user_sends_per_sec: pick(self.user_sends_per_sec, base.user_sends_per_sec),
            user_sends_burst: pick(self.user_sends_burst, base.user_sends_burst),
            tenant_frames_per_sec: pick(self.tenant_frames_per_sec, base.tenant_frames_per_sec),
            tenant_frames_burst: pick(self.tenant_frames_burst, base.tenant_frames_burst),
            tenant_sends_per_sec: pick(self.tenant_sends_per_sec, base.tenant_sends_per_sec),
            tenant_sends_burst: pick(self.tenant_sends_burst, base.tenant_sends_burst),
            handshakes_per_address: pick(self.handshakes_per_address, base.handshakes_per_address),
            tenants: self.tenants.clone().unwrap_or_else(|| base.tenants.clone()),
        }
    }
}

/// The node's limits and where they come from.
pub(crate) struct LiveLimits {
    limits: Arc<Limits>,
    /// `[limits]` of the config file as last read.
    file: Mutex<RateLimits>,
    /// The stored override as last read.
    patch: Mutex<Option<LimitsPatch>>,
    settings: Arc<dyn Settings>,
    bus: Option<Arc<dyn NodeBus>>,
    /// SHA-256 of `auth.operator_key` (`None`: the API is off).
    operator_key: Option<[u8; 32]>,
}

impl LiveLimits {
    /// Puts the file's limits with the stored override in force and keeps
    /// them current until `shutdown`.
    pub(crate) async fn start(
        file: RateLimits,
        operator_key: &str,
        settings: Arc<dyn Settings>,
        bus: Option<Arc<dyn NodeBus>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let live = Arc::new(Self {
            limits: Limits::new(file.clone()),
            file: Mutex::new(file),
            patch: Mutex::new(None),
            settings,
            bus: bus.clone(),
            operator_key: (!operator_key.is_empty()).then(|| Sha256::digest(operator_key.as_bytes()).into()),
        });
        // Subscribed before the first read: a change announced while the
        // node starts is either read here or heard of (a node started in the
        // same moment as an override once ran without it).
        let changes = match &bus {
            Some(bus) => Some(bus.subscribe(CHANNEL).await?),
            None => None,
        };
        if let Err(e) = live.reread().await {
            // A stored override that cannot be read now: the file's values
            // stand until it can (the next announcement or SIGHUP).
            warn!(error = %e, "cannot read the stored limits override; running with the config file's");
        }
        if let Some(mut changes) = changes {
            let this = Arc::downgrade(&live);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        got = changes.recv() => if got.is_none() { return },
                        _ = stop.cancelled() => return,
                    }
                    // A change, or a resubscription that may have missed one.
                    let Some(live) = this.upgrade() else { return };
                    if let Err(e) = live.reread().await {
                        warn!(error = %e, "cannot read the changed limits override; the running limits stay");
                    }
                }
            });
        }
        let limits = live.limits.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                metrics::gauge!("dongdong_rate_buckets").set(limits.sweep() as f64);
            }
        });
        Ok(live)
    }

    pub(crate) fn limits(&self) -> Arc<Limits> {
        self.limits.clone()
    }

    /// Reads the stored override and applies it.
    async fn reread(&self) -> anyhow::Result<()> {
        let stored = self.settings.setting(SETTING).await?;
        let patch = match stored {
            None => None,
            Some(text) => Some(serde_json::from_str::<LimitsPatch>(&text)?),
        };
        *self.patch.lock().unwrap_or_else(|e| e.into_inner()) = patch;
        self.apply()?;
        Ok(())
    }

    /// The file's values with the override on top, put in force.
    fn apply(&self) -> Result<(), InvalidLimit> {
        let values = self.effective_values();
        let changed = *self.limits.values() != values;
        self.limits.set(values)?;
        if changed {
            info!(limits = %serde_json::to_string(&*self.limits.values()).unwrap_or_default(), "rate limits now in force");
        }
        Ok(())
    }

    fn effective_values(&self) -> RateLimits {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match &*self.patch.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(p) => p.over(&file),
            None => file,
        }
    }

    /// New values from the config file (SIGHUP). Invalid ones were refused
    /// by the config loader already.
    pub(crate) fn set_file(&self, file: RateLimits) -> Result<(), InvalidLimit> {
        let old = std::mem::replace(&mut *self.file.lock().unwrap_or_else(|e| e.into_inner()), file);
        self.apply().inspect_err(|_| *self.file.lock().unwrap_or_else(|e| e.into_inner()) = old)
    }

    fn view(&self) -> serde_json::Value {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let patch = self.patch.lock().unwrap_or_else(|e| e.into_inner()).clone();
        json!({ "effective": *self.limits.values(), "file": file, "override": patch })
    }

    /// Stores a new override (or clears it), applies it here and tells the
    /// other nodes.
    async fn store(&self, patch: Option<LimitsPatch>) -> Result<(), ApiError> {
        if let Some(p) = &patch {
            let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone();
            p.over(&file).validate().map_err(|e| fail(ErrorCode::InvalidArgument, e.to_string()))?;
        }
        let text = patch.as_ref().map(|p| serde_json::to_string(p).unwrap_or_default());
        let unavailable = |e: storage::StorageError| fail(ErrorCode::Unavailable, e.to_string());
        self.settings.set_setting(SETTING, text).await.map_err(unavailable)?;
        *self.patch.lock().unwrap_or_else(|e| e.into_inner()) = patch;
        self.apply().map_err(|e| fail(ErrorCode::InvalidArgument, e.to_string()))?;
        if let Some(bus) = &self.bus {
            // Stored already: a node that misses this reads it again when
            // its subscription comes back.
            if let Err(e) = bus.publish(CHANNEL, b"changed".to_vec()).await {
                warn!(error = %e, "cannot announce the new limits; other nodes read them when their bus reconnects");
            }
        }
        Ok(())
    }

    fn check_operator(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(want) = &self.operator_key else {
            return Err(fail(ErrorCode::Forbidden, "the limits API is off: set auth.operator_key in the config"));
        };
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| fail(ErrorCode::Unauthenticated, "send Authorization: Bearer <auth.operator_key>"))?;
        // Digests compared: no timing signal about the key's bytes.
        if Sha256::digest(given.as_bytes()).as_slice() != want.as_slice() {
            return Err(fail(ErrorCode::Forbidden, "not the operator key"));
        }
        Ok(())
    }
}

pub(crate) fn routes(live: Arc<LiveLimits>) -> Router {
    Router::new().route("/api/v1/admin/limits", get(show).put(replace).delete(clear)).with_state(live)
}

async fn show(State(live): State<Arc<LiveLimits>>, headers: HeaderMap) -> ApiResult {
    live.check_operator(&headers)?;
    Ok(Json(live.view()).into_response())
}

async fn replace(
    State(live): State<Arc<LiveLimits>>,
    headers: HeaderMap,
    body: Result<Json<LimitsPatch>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    live.check_operator(&headers)?;
    let patch = json_body(body)?;
    live.store(Some(patch)).await?;
    info!("rate limits override set through the API");
    Ok(Json(live.view()).into_response())
}

async fn clear(State(live): State<Arc<LiveLimits>>, headers: HeaderMap) -> ApiResult {
    live.check_operator(&headers)?;
    live.store(None).await?;
    info!("rate limits override cleared through the API");
    Ok(Json(live.view()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_changes_only_its_keys_and_unknown_keys_are_named() {
        let base = RateLimits::default();
        let p: LimitsPatch = serde_json::from_str(r#"{"user_sends_per_sec": 5}"#).unwrap();
        let merged = p.over(&base);
        assert_eq!(merged.user_sends_per_sec, 5);
        assert_eq!(RateLimits { user_sends_per_sec: base.user_sends_per_sec, ..merged }, base);
        let e = serde_json::from_str::<LimitsPatch>(r#"{"user_sends_per_second": 5}"#).unwrap_err();
        assert!(e.to_string().contains("user_sends_per_second"), "{e}");
        let e = serde_json::from_str::<LimitsPatch>(r#"{"tenants": {"t": {"sends": 1}}}"#).unwrap_err();
        assert!(e.to_string().contains("sends"), "{e}");
    }
}
