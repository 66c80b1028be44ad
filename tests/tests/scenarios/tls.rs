//! TLS on both listeners with a certificate from a private CA made here:
//! wss:// chat, https:// API, the bot with --ca, refusals of a plain client,
//! of a certificate for another name, and of an expired one after SIGHUP
//! re-read the files (open connections stay).

use super::child;
use dongdong_tests::server::TestServer;
use futures_util::{SinkExt, StreamExt};
use im_core::pb::{self, Frame, frame::Body};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ca { cert: params.self_signed(&key).unwrap(), key }
}

/// A server certificate for `names`, valid from `from` to `until` (years).
fn issue(ca: &Ca, dir: &Path, names: &[&str], from: i32, until: i32) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

fn client_config(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

type TlsWs = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn tls_connect(
    addr: &str,
    config: &Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.unwrap()
}

/// A wss:// client, authenticated.
async fn wss(s: &TestServer, config: &Arc<rustls::ClientConfig>, user: &str) -> TlsWs {
    let addr = s.ws_url.trim_start_matches("ws://").trim_end_matches("/ws");
    let stream = tls_connect(addr, config).await;
    let url = format!("wss://localhost:{}/ws", addr.rsplit(':').next().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let auth = Body::Auth(pb::Auth { token: s.token("acme", user), device_id: "d".into(), ..Default::default() });
    ws.send(WsMessage::Binary(
        im_core::encode_frame(im_core::Encoding::Protobuf, &Frame { req_id: 1, body: Some(auth) }).into(),
    ))
    .await
    .unwrap();
    assert!(matches!(next(&mut ws).await.body, Some(Body::AuthOk(_))));
    ws
}

async fn next(ws: &mut TlsWs) -> Frame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        if let WsMessage::Binary(b) = msg {
            return im_core::decode_frame(im_core::Encoding::Protobuf, b.as_ref()).unwrap();
        }
    }
}

async fn say(ws: &mut TlsWs, to: &str, cmid: &str) {
    let content = Some(pb::Content { kind: Some(pb::content::Kind::Text(format!("over TLS: {cmid}"))) });
    let send = Body::Send(pb::Send { client_msg_id: cmid.into(), to_user: to.into(), content });
    ws.send(WsMessage::Binary(
        im_core::encode_frame(im_core::Encoding::Protobuf, &Frame { req_id: 2, body: Some(send) }).into(),
    ))
    .await
    .unwrap();
}

/// Runs the bot against `url`; returns whether it exited 0, and its output.
fn bot(url: &str, ca: &Path) -> (bool, String) {
    let out = std::process::Command::new(child::binary())
        .args(["bot", "pairs", "--pairs", "2", "--window", "2", "--duration", "500ms", "--warmup", "0s", "--json"])
        .args(["--url", url, "--ca", &ca.display().to_string(), "--secret", dongdong_tests::SECRET, "--tenant", "acme"])
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_with_a_private_ca_and_a_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    issue(&ca, dir.path(), &["localhost"], 2024, 2099);
    std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let s = TestServer::start_with(|c| {
        c.server.tls_cert = cert.clone();
        c.server.tls_key = key.clone();
    })
    .await;
    let config = client_config(&ca);

    // Chat over wss://.
    let mut alice = wss(&s, &config, "alice").await;
    let mut bob = wss(&s, &config, "bob").await;
    say(&mut alice, "bob", "1").await;
    let Some(Body::Deliver(d)) = next(&mut bob).await.body else { panic!("a delivery") };
    assert_eq!(d.message.unwrap().client_msg_id, "1");

    // https:// for the API.
    let http_addr = s.http_url.trim_start_matches("http://");
    let mut tls = tls_connect(http_addr, &config).await;
    tls.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await.unwrap_or_default();
    assert!(reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"), "{reply}");

    // A plain client gets nowhere, promptly.
    let plain = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(&s.ws_url)).await;
    assert!(matches!(plain, Ok(Err(_))), "a ws:// client to the wss:// port fails cleanly");

    // The bot: with the CA and the right name it runs clean; the wrong
    // name (the certificate is for localhost only) is refused.
    let ws_port = s.ws_url.rsplit(':').next().unwrap().trim_end_matches("/ws").to_string();
    let ca_file = dir.path().join("ca.pem");
    let (ok, out) = bot(&format!("wss://localhost:{ws_port}/ws"), &ca_file);
    assert!(ok, "{out}");
    assert!(out.contains("\"clean\":true"), "{out}");
    let (ok, out) = bot(&format!("wss://127.0.0.1:{ws_port}/ws"), &ca_file);
    assert!(!ok && out.contains("tls"), "a certificate for another name is refused: {out}");

    // SIGHUP re-reads the files: now an expired certificate, which new
    // connections (the bot's) refuse; open connections go on.
    issue(&ca, dir.path(), &["localhost"], 2020, 2021);
    let hup = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
    assert!(hup.success());
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = bot(&format!("wss://localhost:{ws_port}/ws"), &ca_file);
        if !ok {
            assert!(out.contains("tls"), "{out}");
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the certificate was not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say(&mut alice, "bob", "2").await;
    let Some(Body::Deliver(d)) = next(&mut bob).await.body else { panic!("a delivery") };
    assert_eq!(d.message.unwrap().client_msg_id, "2", "connections opened before the reload go on");
    s.stop().await;
}
