//! The web consoles' server side: pages and assets from the binary, the
//! info endpoint, and the dev sign-in endpoint, which exists only while the
//! server signs with its generated dev secret. (The pages themselves are
//! tested in a real browser: tests/web/console.test.mjs.)

use dongdong_tests::client::Client;
use dongdong_tests::http::{get, request as http};
use dongdong_tests::server::TestServer;
use serde_json::json;

#[tokio::test]
async fn consoles_are_served_and_dev_sign_in_mints_working_tokens() {
    let s = TestServer::start_with(|c| c.auth.secret.clear()).await;
    for (path, needle) in [
        ("/agent", "/web/agent.js"),
        ("/chat", "/web/chat.js"),
        ("/supervisor", "/web/supervisor.js"),
        ("/web/dd.js", "export const DdError"),
        ("/web/dongdong-client.js", "var DongdongClient = class"),
        ("/web/style.css", ":root"),
        ("/web/embed.js", "iframe"),
    ] {
        let (status, body) = get(&s.http_url, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(needle), "{path} does not contain {needle}");
    }
    assert_eq!(get(&s.http_url, "/web/nope.js").await.0, 404);
    assert_eq!(get(&s.http_url, "/web/..%2FCargo.toml").await.0, 404);

    let (status, info) = http(&s.http_url, "GET", "/api/v1/info", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(info["dev_login"], true);
    let ws_port: u16 = s.ws_url.rsplit(':').next().unwrap().trim_end_matches("/ws").parse().unwrap();
    assert_eq!(info["ws_port"], ws_port);
    assert_eq!(info["ws_url"], "");

    let body = json!({ "tenant": "demo", "user": "amy", "role": "agent" });
    let (status, minted) = http(&s.http_url, "POST", "/api/v1/dev/token", None, Some(&body)).await;
    assert_eq!(status, 200, "{minted}");
    let token = minted["token"].as_str().unwrap();
    let agent = Client::login(&s.ws_url, token, "console-1").await;
    let ok = agent.auth_ok.clone().unwrap();
    assert_eq!((ok.tenant.as_str(), ok.user_id.as_str(), ok.role.as_str()), ("demo", "amy", "agent"));

    // Bad input gets a clear error, not a token.
    for bad in [
        json!({ "tenant": "demo", "user": "", "role": "agent" }),
        json!({ "tenant": "demo", "user": "amy", "role": "king" }),
        json!({ "tenant": "demo", "user": "amy" }),
    ] {
        let (status, e) = http(&s.http_url, "POST", "/api/v1/dev/token", None, Some(&bad)).await;
        assert_eq!(status, 400, "{bad} -> {e}");
        assert_eq!(e["error"]["code"], "INVALID_ARGUMENT");
    }

    // A customer may list the groups (to pick one), not manage them.
    let body = json!({ "tenant": "demo", "user": "carol", "role": "customer" });
    let (_, minted) = http(&s.http_url, "POST", "/api/v1/dev/token", None, Some(&body)).await;
    let customer = minted["token"].as_str().unwrap().to_string();
    let (status, groups) = http(&s.http_url, "GET", "/api/v1/service-groups", Some(&customer), None).await;
    assert_eq!(status, 200);
    assert_eq!(groups["groups"][0]["id"], "default");
    assert_eq!(groups["groups"][0]["agents_online"], 0);
    assert_eq!(http(&s.http_url, "GET", "/api/v1/groups", Some(&customer), None).await.0, 403);
    assert_eq!(http(&s.http_url, "GET", "/api/v1/service-groups", None, None).await.0, 401);
    s.stop().await;
}

#[tokio::test]
async fn dev_sign_in_does_not_exist_with_a_configured_secret() {
    let s = TestServer::start_with(|c| c.server.public_ws_url = "wss://chat.example.com/ws".into()).await;
    let body = json!({ "tenant": "demo", "user": "mallory", "role": "admin" });
    let (status, _) = http(&s.http_url, "POST", "/api/v1/dev/token", None, Some(&body)).await;
    assert_eq!(status, 404);
    let (_, info) = http(&s.http_url, "GET", "/api/v1/info", None, None).await;
    assert_eq!(info["dev_login"], false);
    assert_eq!(info["ws_url"], "wss://chat.example.com/ws");
    // The pages are still served: they ask the embedding application for a token.
    assert_eq!(get(&s.http_url, "/chat").await.0, 200);
    s.stop().await;
}

#[tokio::test]
async fn assets_are_compressed_versioned_and_revalidated() {
    use dongdong_tests::http::send;
    use std::io::Read as _;
    let s = TestServer::start().await;
    let gunzip = |b: &[u8]| {
        let mut out = String::new();
        flate2::read::GzDecoder::new(b).read_to_string(&mut out).expect("gzip");
        out
    };
    // The page: compressed when asked, revalidated each time (its URL has no version).
    let page = send(&s.http_url, "GET", "/agent", &[("accept-encoding", "gzip, br")], &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!((page.header("content-encoding"), page.header("cache-control")), (Some("gzip"), Some("no-cache")));
    let html = gunzip(&page.body);
    let etag = page.header("etag").expect("an ETag").to_string();
    let again = send(&s.http_url, "GET", "/agent", &[("accept-encoding", "gzip"), ("if-none-match", &etag)], &[]).await;
    assert_eq!((again.status, again.body.len()), (304, 0));
    let plain = send(&s.http_url, "GET", "/agent", &[], &[]).await;
    assert_eq!((plain.header("content-encoding"), String::from_utf8_lossy(&plain.body)), (None, html.as_str().into()));
    assert_ne!(plain.header("etag"), Some(etag.as_str()), "one ETag per encoding");

    // Its script by a versioned URL: cached for good; its imports versioned too.
    let start = html.find("/web/agent.js?v=").expect("a versioned script URL");
    let url = &html[start..html[start..].find('"').unwrap() + start];
    let script = send(&s.http_url, "GET", url, &[("accept-encoding", "gzip")], &[]).await;
    assert_eq!(script.status, 200);
    assert_eq!(script.header("cache-control"), Some("public, max-age=31536000, immutable"));
    let js = gunzip(&script.body);
    assert!(js.contains("from './ui.js?v="), "imports carry the version");
    assert!(script.body.len() * 2 < js.len(), "gzip: {} of {} bytes", script.body.len(), js.len());
    // An old version's URL, and the bare URL shops use, are revalidated instead.
    for path in ["/web/agent.js?v=000000000000", "/web/embed.js"] {
        let r = send(&s.http_url, "GET", path, &[], &[]).await;
        assert_eq!((r.status, r.header("cache-control")), (200, Some("no-cache")), "{path}");
    }
    let (_, index) = get(&s.http_url, "/web/index.html").await;
    assert!(index.contains("src=\"/web/embed.js\""), "the embed snippet shown to shops stays bare");
    s.stop().await;
}
