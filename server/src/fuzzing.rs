//! The HTTP API driven by arbitrary bytes, for the `http_body` fuzz target
//! (fuzz/) and the replay of its corpus in ordinary tests: a real server's
//! routes on the embedded backend in a scratch directory, requests sent
//! in-process. The first byte picks the endpoint, the second the caller's
//! role, the rest is the body (or the query string). Every answer must be
//! a clean 2xx–4xx: a panic or a 5xx is a finding.

use crate::config::Config;
use access_gateway::TokenSigner;
use axum::body::Body;
use axum::http::Request;
use im_core::Role;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// (method, path, what the rest of the input is).
const ENDPOINTS: &[(&str, &str, Part)] = &[
    ("PUT", "/api/v1/groups/g1", Part::Json),
    ("PUT", "/api/v1/groups/g1/agents/a1", Part::Json),
    ("POST", "/api/v1/quick-replies", Part::Json),
    ("PUT", "/api/v1/customers/c1/note", Part::Json),
    ("POST", "/api/v1/admin/users/x1/disconnect", Part::Json),
    ("POST", "/api/v1/admin/users/x1/revoke", Part::Json),
    ("POST", "/api/v1/dev/token", Part::Json),
    ("POST", "/api/v1/files", Part::Upload),
    ("GET", "/api/v1/users", Part::Query),
    ("GET", "/api/v1/users/c1/sessions", Part::Query),
    ("GET", "/api/v1/groups/g1/left-messages", Part::Query),
    ("DELETE", "/api/v1/groups/g2", Part::Json),
];

#[derive(Clone, Copy)]
enum Part {
    Json,
    Upload,
    Query,
}

const UPLOAD_TYPES: &[&str] =
    &["image/png", "image/jpeg", "image/webp", "image/gif", "text/plain", "application/pdf", ""];

pub struct HttpFuzzer {
    rt: tokio::runtime::Runtime,
    routes: axum::Router,
    tokens: Vec<String>,
    shutdown: CancellationToken,
    dir: std::path::PathBuf,
}

impl Drop for HttpFuzzer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl HttpFuzzer {
    /// A server on a fresh data directory under the system's temp dir.
    pub fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let dir = std::env::temp_dir().join(format!("dd-http-fuzz-{}-{}", std::process::id(), im_core::new_msg_id()));
        let mut config = Config::default();
        config.storage.data_dir = dir.clone();
        config.files.uploads_per_minute = u32::MAX;
        config.files.max_bytes = 1 << 20;
        config.files.max_pixels = 4_000_000;
        // Empty secret: the dev secret, and with it POST /api/v1/dev/token.
        config.auth.secret = String::new();
        let shutdown = CancellationToken::new();
        let (routes, tokens) = rt.block_on(async {
            let (backends, _store) = crate::open_storage(&config, "fuzz").await?;
            let assembled = crate::assemble(&config, "fuzz", backends, 0, shutdown.clone()).await?;
            let signer = TokenSigner::new(&crate::secret::resolve(&config)?);
            let ttl = Duration::from_secs(365 * 24 * 3600);
            let tokens = [("c1", Role::Customer), ("a1", Role::Agent), ("root", Role::Admin)]
                .iter()
                .map(|(u, r)| signer.mint("fz", u, *r, ttl).map_err(|e| anyhow::anyhow!("{e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::Ok((assembled.routes, tokens))
        })?;
        Ok(Self { rt, routes, tokens, shutdown, dir })
    }

    /// Sends the request `data` describes; returns the status. Panics on a
    /// 5xx (a finding).
    pub fn run(&self, data: &[u8]) -> u16 {
        let (Some(&pick), Some(&who)) = (data.first(), data.get(1)) else { return 0 };
        let (method, path, part) = ENDPOINTS[usize::from(pick) % ENDPOINTS.len()];
        let token = &self.tokens[usize::from(who) % self.tokens.len()];
        let rest = &data[2..];
        let builder = Request::builder().method(method).header("authorization", format!("Bearer {token}"));
        let request = match part {
            Part::Json => builder.uri(path).header("content-type", "application/json").body(Body::from(rest.to_vec())),
            Part::Upload => {
                let (kind, bytes) = rest
                    .split_first()
                    .map_or(("", &[][..]), |(k, b)| (UPLOAD_TYPES[usize::from(*k) % UPLOAD_TYPES.len()], b));
                builder.uri(format!("{path}?name=fuzz")).header("content-type", kind).body(Body::from(bytes.to_vec()))
            }
            Part::Query => {
                let query: String = String::from_utf8_lossy(rest)
                    .chars()
                    .filter(|c| !c.is_control() && *c != ' ' && *c != '#')
                    .collect();
                builder.uri(format!("{path}?{query}")).body(Body::empty())
            }
        };
        // A query the URI parser refuses is the client's problem, not ours.
        let Ok(request) = request else { return 0 };
        let status = self.rt.block_on(self.routes.clone().oneshot(request)).map(|r| r.status().as_u16()).unwrap_or(0);
        assert!(status < 500, "{method} {path}: HTTP {status}");
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `http_body` fuzzer's corpus (fuzz/corpus/http_body) answered
    /// cleanly by a real server: the fuzz target's check, replayed by every
    /// `cargo test` without nightly Rust.
    #[test]
    fn the_http_fuzz_corpus_answers_cleanly() {
        let fuzzer = HttpFuzzer::new().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/http_body");
        let mut statuses = Vec::new();
        for entry in std::fs::read_dir(root).expect("the corpus is in the repository") {
            let path = entry.unwrap().path();
            let status = fuzzer.run(&std::fs::read(&path).unwrap());
            statuses.push((path.file_name().unwrap().to_string_lossy().to_string(), status));
        }
        assert!(statuses.len() >= 16, "{statuses:?}");
        let ok = statuses.iter().filter(|(_, s)| (200..300).contains(s)).count();
        assert!(ok >= 10, "most seeds are valid requests: {statuses:?}");
        assert!(statuses.iter().any(|(n, s)| n == "upload-png" && *s == 201), "{statuses:?}");
        assert!(statuses.iter().any(|(n, s)| n == "bad-json" && *s == 400), "{statuses:?}");
    }
}
