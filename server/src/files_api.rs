//! Uploads and downloads under `/api/v1/files`.
//!
//! - `POST /api/v1/files` (Bearer token): the raw body with its
//!   Content-Type (name in `?name=`), or `multipart/form-data` with a part
//!   named `file`. The type is sniffed from the bytes; images lose their
//!   metadata and get a thumbnail (see [`crate::media`]). Answered 201 with
//!   the file's id and facts, and signed links to it.
//! - `GET /api/v1/files/{id}` and `.../thumbnail`: with a Bearer token
//!   (the uploader, a member of a conversation where a message refers to
//!   the file, or an admin of the tenant), or with a signed link's `t`,
//!   `exp` and `sig` query parameters, so that `<img src>` works.
//! - `POST /api/v1/files/{id}/link` (Bearer token, same access): fresh
//!   signed links, valid `files.link_ttl`.
//!
//! A link's `sig` is hex HMAC-SHA256, keyed with a key derived from the
//! server's token secret, of `tenant \n id \n variant \n exp` (`exp` in ms
//! since the epoch; variant `original` or `thumbnail`). Downloads carry
//! the sniffed type, `X-Content-Type-Options: nosniff`, a sandboxing CSP,
//! `Content-Disposition: attachment` for anything but images, an ETag (the
//! SHA-256) honoured by If-None-Match, and single byte ranges.
//!
//! Bounded: at most 8 uploads and 64 downloads are in progress per node
//! (each holds its bytes in memory, up to `files.max_bytes`); beyond that
//! the request is answered 503 UNAVAILABLE, retryable.

use crate::config::FilesSection;
use crate::cs_api::{ApiResult, CsApi, fail};
use crate::media::{self, MediaError};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use cs_queue::Caller;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, KeyInit, Mac};
use im_core::{ErrorCode, Role};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::sync::Arc;
use storage::files::{FileMeta, FileStore, Thumbnail, Variant};

#[derive(Clone)]
pub(crate) struct FilesApi {
    pub api: CsApi,
    pub files: Arc<dyn FileStore>,
    pub messages: Arc<dyn storage::MessageStore>,
    pub config: Arc<FilesSection>,
    /// Signs download links.
    pub link_key: Arc<Vec<u8>>,
    pub uploads: Arc<DefaultKeyedRateLimiter<String>>,
    /// Uploads being read and processed at once (each holds up to
    /// `files.max_bytes` in memory), and downloads being served.
    pub uploading: Arc<tokio::sync::Semaphore>,
    pub downloading: Arc<tokio::sync::Semaphore>,
}

/// Uploads and downloads in progress at once, per node; more are refused
/// with 503 UNAVAILABLE (retryable) rather than queued in memory.
const MAX_UPLOADS: usize = 8;
const MAX_DOWNLOADS: usize = 64;

fn busy(what: &str) -> crate::cs_api::ApiError {
    metrics::counter!("dongdong_file_transfers_refused_total", "what" => what.to_string()).increment(1);
    fail(ErrorCode::Unavailable, format!("too many {what}s at once on this server; retry in a moment"))
}

impl FilesApi {
    pub(crate) fn new(api: CsApi, backends: &storage::Backends, config: FilesSection, secret: &[u8]) -> Self {
        let per_minute = NonZeroU32::new(config.uploads_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable_key());
        mac.update(b"dongdong file links v1");
        Self {
            api,
            files: backends.files.clone(),
            messages: backends.messages.clone(),
            config: Arc::new(config),
            link_key: Arc::new(mac.finalize().into_bytes().to_vec()),
            uploads: Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))),
            uploading: Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS)),
            downloading: Arc::new(tokio::sync::Semaphore::new(MAX_DOWNLOADS)),
        }
    }
}

/// HMAC takes keys of any length; this is never reached.
fn unreachable_key() -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(b"dongdong").unwrap_or_else(|_| unreachable_key())
}

/// Deletes uploads older than `files.retention`, every tenth of it (between
/// a second and an hour), until `shutdown`. Every node of a cluster does
/// it; deleting twice is harmless.
pub(crate) fn start_retention(
    files: Arc<dyn FileStore>,
    retention: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if retention.is_zero() {
        return;
    }
    let every = (retention / 10).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let cutoff = im_core::now_ms().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
            loop {
                let old = match files.files_before(cutoff, 500).await {
                    Ok(old) => old,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list expired files");
                        break;
                    }
                };
                let mut deleted = 0;
                for (tenant, id) in &old {
                    match files.delete_file(tenant, id).await {
                        Ok(_) => deleted += 1,
                        Err(e) => tracing::warn!(error = %e, file_id = %id, "cannot delete an expired file"),
                    }
                }
                metrics::counter!("dongdong_files_expired_total").increment(deleted);
                if old.len() < 500 || deleted == 0 {
                    break;
                }
            }
        }
    });
}

pub(crate) fn routes(api: FilesApi) -> Router {
    // The body limit is applied while reading (a clear TOO_LARGE); axum's
    // own 2 MB default must not cut in first.
    let limit = usize::try_from(api.config.max_bytes).unwrap_or(usize::MAX).saturating_add(1 << 20);
    Router::new()
        .route("/api/v1/files", post(upload))
        .route("/api/v1/files/{id}", get(download_original))
        .route("/api/v1/files/{id}/thumbnail", get(download_thumbnail))
        .route("/api/v1/files/{id}/link", post(link))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}

#[derive(Deserialize, Default)]
struct UploadQuery {
    #[serde(default)]
    name: String,
}

/// A file name for people: no path, no control characters, ≤ 255 bytes.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out: String = base.chars().filter(|c| !c.is_control()).collect();
    while out.len() > 255 {
        out.pop();
    }
    out
}

fn too_large(max: u64) -> crate::cs_api::ApiError {
    fail(ErrorCode::TooLarge, format!("the file is larger than files.max_bytes ({max} bytes)"))
}

/// The upload's bytes, the name and type the client gave.
async fn read_upload(
    config: &FilesSection,
    headers: &HeaderMap,
    name: String,
    body: Body,
) -> Result<(Vec<u8>, String, Option<String>), crate::cs_api::ApiError> {
    let max = config.max_bytes;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(ct) = content_type.as_deref().filter(|ct| ct.starts_with("multipart/form-data")) {
        let boundary = multer::parse_boundary(ct).map_err(|e| fail(ErrorCode::InvalidArgument, e.to_string()))?;
        let limits = multer::Constraints::new()
            .size_limit(multer::SizeLimit::new().whole_stream(max + (64 << 10)).per_field(max));
        let mut parts = multer::Multipart::with_constraints(body.into_data_stream(), boundary, limits);
        loop {
            let field = parts.next_field().await.map_err(|e| multipart_error(&e, max))?;
            let Some(field) = field else {
                return Err(fail(ErrorCode::InvalidArgument, "multipart body without a part named \"file\""));
            };
            if field.name() != Some("file") {
                continue;
            }
            let file_name = field.file_name().map(str::to_string).unwrap_or(name);
            let declared = field.content_type().map(|m| m.to_string());
            let bytes = field.bytes().await.map_err(|e| multipart_error(&e, max))?;
            return Ok((bytes.to_vec(), file_name, declared));
        }
    }
    let bytes = axum::body::to_bytes(body, usize::try_from(max).unwrap_or(usize::MAX)).await.map_err(|e| {
        let source = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
        if source.contains("length limit") || e.to_string().contains("length limit") {
            too_large(max)
        } else {
            fail(ErrorCode::InvalidArgument, format!("cannot read the body: {e}"))
        }
    })?;
    Ok((bytes.to_vec(), name, content_type))
}

fn multipart_error(e: &multer::Error, max: u64) -> crate::cs_api::ApiError {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => too_large(max),
        other => fail(ErrorCode::InvalidArgument, format!("bad multipart body: {other}")),
    }
}

async fn upload(
    State(f): State<FilesApi>,
    headers: HeaderMap,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> ApiResult {
    let caller = f.api.caller(&headers).await?;
    if f.uploads.check_key(&format!("{}\u{0}{}", caller.tenant, caller.user)).is_err() {
        metrics::counter!("dongdong_uploads_refused_total", "why" => "rate").increment(1);
        let n = f.config.uploads_per_minute;
        return Err(fail(ErrorCode::RateLimited, format!("more than {n} uploads a minute")));
    }
    if f.uploads.len() > 100_000 {
        f.uploads.retain_recent();
    }
    let _slot = f.uploading.clone().try_acquire_owned().map_err(|_| busy("upload"))?;
    let started = std::time::Instant::now();
    let name = query.name;
    let (bytes, name, declared) = read_upload(&f.config, &headers, name, body).await?;
    let config = f.config.clone();
    let processed = tokio::task::spawn_blocking(move || {
        media::process(bytes, declared.as_deref(), &config.allowed_types, config.max_pixels)
    })
    .await
    .map_err(|e| fail(ErrorCode::Internal, e.to_string()))?
    .map_err(|e| {
        metrics::counter!("dongdong_uploads_refused_total", "why" => "content").increment(1);
        match e {
            MediaError::TooManyPixels { .. } => fail(ErrorCode::TooLarge, e.to_string()),
            e => fail(ErrorCode::InvalidArgument, e.to_string()),
        }
    })?;
    let (thumb_bytes, thumbnail) = match processed.thumbnail {
        Some((content_type, b)) => {
            let t = Thumbnail {
                content_type: content_type.into(),
                size: b.len() as u64,
                sha256: hex::encode(Sha256::digest(&b)),
            };
            (Some(b), Some(t))
        }
        None => (None, None),
    };
    let meta = FileMeta {
        id: im_core::new_msg_id(),
        tenant: caller.tenant.clone(),
        uploader: caller.user.clone(),
        name: clean_name(&name),
        content_type: processed.content_type,
        size: processed.bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&processed.bytes)),
        width: processed.width,
        height: processed.height,
        thumbnail,
        created_ms: im_core::now_ms(),
    };
    f.files.put_file(&meta, processed.bytes, thumb_bytes).await.map_err(im_core::ClientError::from)?;
    metrics::counter!("dongdong_uploads_total").increment(1);
    metrics::counter!("dongdong_upload_bytes_total").increment(meta.size);
    metrics::histogram!("dongdong_upload_seconds").record(started.elapsed().as_secs_f64());
    let body = described_with_links(&f, &meta);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn describe(m: &FileMeta) -> serde_json::Value {
    json!({
        "file_id": m.id,
        "name": m.name,
        "size": m.size,
        "content_type": m.content_type,
        "sha256": m.sha256,
        "width": m.width,
        "height": m.height,
        "thumbnail_id": m.thumbnail.as_ref().map(|_| format!("{}.thumbnail", m.id)),
    })
}

/// [`describe`] and [`links`] in one object.
fn described_with_links(f: &FilesApi, m: &FileMeta) -> serde_json::Value {
    let mut body = describe(m);
    if let (Some(o), serde_json::Value::Object(l)) = (body.as_object_mut(), links(f, m)) {
        o.extend(l);
    }
    body
}

fn variant_name(v: Variant) -> &'static str {
    match v {
        Variant::Original => "original",
        Variant::Thumbnail => "thumbnail",
    }
}

fn signature(key: &[u8], tenant: &str, id: &str, variant: Variant, exp: u64) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable_key());
    mac.update(format!("{tenant}\n{id}\n{}\n{exp}", variant_name(variant)).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Signed links to the file and its thumbnail, valid `files.link_ttl`.
fn links(f: &FilesApi, m: &FileMeta) -> serde_json::Value {
    let exp = im_core::now_ms() + u64::try_from(f.config.link_ttl.as_millis()).unwrap_or(u64::MAX / 2);
    let url = |v: Variant, path: &str| {
        let sig = signature(&f.link_key, &m.tenant, &m.id, v, exp);
        format!("/api/v1/files/{}{path}?t={}&exp={exp}&sig={sig}", m.id, encode(&m.tenant))
    };
    json!({
        "url": url(Variant::Original, ""),
        "thumbnail_url": m.thumbnail.as_ref().map(|_| url(Variant::Thumbnail, "/thumbnail")),
        "expires_ms": exp,
    })
}

/// Whether `caller` may read the file: its uploader, an admin of its
/// tenant, a member of a conversation where a message refers to it, or
/// whoever may read that conversation as part of a service session (the
/// agent a session was transferred to, agents of the session's group:
/// [`cs_queue::CsService::may_read_conversation`]).
async fn may_read(f: &FilesApi, caller: &Caller, m: &FileMeta) -> Result<bool, crate::cs_api::ApiError> {
    if caller.tenant != m.tenant {
        return Ok(false);
    }
    if caller.role == Role::Admin || caller.user == m.uploader {
        return Ok(true);
    }
    let refs = f.files.file_refs(&m.tenant, &m.id, 100).await.map_err(im_core::ClientError::from)?;
    let mut conversations = Vec::new();
    for conv in refs {
        let found = f.messages.conversation(&m.tenant, &conv).await.map_err(im_core::ClientError::from)?;
        match found {
            Some(c) if c.has_member(&caller.user) => return Ok(true),
            Some(c) => conversations.push(c),
            None => {}
        }
    }
    for c in conversations {
        if f.api.cs.may_read_conversation(caller, &c.conversation_id, &c.members).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The file for a Bearer caller allowed to read it (NOT_FOUND otherwise:
/// whether it exists is nobody else's business).
async fn readable(f: &FilesApi, headers: &HeaderMap, id: &str) -> Result<FileMeta, crate::cs_api::ApiError> {
    let caller = f.api.caller(headers).await?;
    let not_found = || fail(ErrorCode::NotFound, "no such file, or not yours to read");
    let meta =
        f.files.file_meta(&caller.tenant, id).await.map_err(im_core::ClientError::from)?.ok_or_else(not_found)?;
    if !may_read(f, &caller, &meta).await? {
        return Err(not_found());
    }
    Ok(meta)
}

async fn link(State(f): State<FilesApi>, Path(id): Path<String>, headers: HeaderMap) -> ApiResult {
    let meta = readable(&f, &headers, &id).await?;
    let body = described_with_links(&f, &meta);
    Ok(Json(body).into_response())
}

#[derive(Deserialize, Default)]
struct Signed {
    t: Option<String>,
    exp: Option<u64>,
    sig: Option<String>,
}

async fn download_original(
    State(f): State<FilesApi>,
    Path(id): Path<String>,
    Query(query): Query<Signed>,
    headers: HeaderMap,
) -> ApiResult {
    match id.strip_suffix(".thumbnail") {
        Some(id) => download(f, id.to_string(), Variant::Thumbnail, query, headers).await,
        None => download(f, id, Variant::Original, query, headers).await,
    }
}

async fn download_thumbnail(
    State(f): State<FilesApi>,
    Path(id): Path<String>,
    Query(query): Query<Signed>,
    headers: HeaderMap,
) -> ApiResult {
    download(f, id, Variant::Thumbnail, query, headers).await
}

async fn download(f: FilesApi, id: String, variant: Variant, query: Signed, headers: HeaderMap) -> ApiResult {
    let signed = query;
    let meta = match (signed.t, signed.exp, signed.sig) {
        (Some(tenant), Some(exp), Some(sig)) => {
            let expected = signature(&f.link_key, &tenant, &id, variant, exp);
            if !constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
                return Err(fail(ErrorCode::Unauthenticated, "the link's signature does not match"));
            }
            if exp < im_core::now_ms() {
                return Err(fail(ErrorCode::Unauthenticated, "the link has expired: ask for a new one"));
            }
            let found = f.files.file_meta(&tenant, &id).await.map_err(im_core::ClientError::from)?;
            found.ok_or_else(|| fail(ErrorCode::NotFound, "no such file"))?
        }
        (None, None, None) => readable(&f, &headers, &id).await?,
        _ => return Err(fail(ErrorCode::InvalidArgument, "a signed link has t, exp and sig")),
    };
    let (content_type, size, sha) = match (variant, &meta.thumbnail) {
        (Variant::Original, _) => (meta.content_type.clone(), meta.size, meta.sha256.clone()),
        (Variant::Thumbnail, Some(t)) => (t.content_type.clone(), t.size, t.sha256.clone()),
        (Variant::Thumbnail, None) => return Err(fail(ErrorCode::NotFound, "this file has no thumbnail")),
    };
    let etag = format!("\"{sha}\"");
    let mut out = HeaderMap::new();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(&mut out, header::ETAG, &etag);
    set(&mut out, header::CACHE_CONTROL, "private, max-age=86400, immutable");
    set(&mut out, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(&mut out, header::CONTENT_SECURITY_POLICY, "default-src 'none'; sandbox");
    set(&mut out, header::ACCEPT_RANGES, "bytes");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    set(&mut out, header::CONTENT_TYPE, &content_type);
    if !content_type.starts_with("image/") {
        let name = if meta.name.is_empty() { "file".to_string() } else { meta.name.clone() };
        set(&mut out, header::CONTENT_DISPOSITION, &format!("attachment; filename*=UTF-8''{}", encode(&name)));
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match range.map(|r| parse_range(r, size)) {
        None => (StatusCode::OK, 0, size),
        Some(Some((start, end))) => {
            set(&mut out, header::CONTENT_RANGE, &format!("bytes {start}-{end}/{size}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Some(None) => {
            set(&mut out, header::CONTENT_RANGE, &format!("bytes */{size}"));
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, out).into_response());
        }
    };
    let _slot = f.downloading.clone().try_acquire_owned().map_err(|_| busy("download"))?;
    let bytes = f.files.read_file(&meta, variant, start, len).await.map_err(im_core::ClientError::from)?;
    let bytes = bytes.ok_or_else(|| fail(ErrorCode::Internal, "the file's bytes are missing"))?;
    metrics::counter!("dongdong_download_bytes_total").increment(bytes.len() as u64);
    Ok((status, out, bytes).into_response())
}

/// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n`, inclusive, within
/// `size`; `None` if it cannot be satisfied (several ranges are served as
/// the first).
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.strip_prefix("bytes=")?.split(',').next()?.trim();
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.checked_sub(n.min(size))?, size.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, size.checked_sub(1)?),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size.checked_sub(1)?)),
    };
    (start <= end && end < size).then_some((start, end))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=0-0,5-6", 100), Some((0, 0)));
        for bad in ["bytes=100-", "bytes=9-3", "bytes=x-1", "items=0-1", "bytes=-0"] {
            assert_eq!(parse_range(bad, 100), None, "{bad}");
        }
        assert_eq!(parse_range("bytes=0-", 0), None);
    }

    #[test]
    fn names_and_encoding() {
        assert_eq!(clean_name("C:\\fakepath\\照片 1.jpg"), "照片 1.jpg");
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("a\u{0}b\nc"), "abc");
        assert_eq!(clean_name(&"é".repeat(200)).len(), 254);
        assert_eq!(encode("a b&c/é"), "a%20b%26c%2F%C3%A9");
    }
}
