//! A minimal HTTP/1.0 client for the tests (one request per connection).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `method path` with an optional bearer token and JSON body; returns
/// the status and the body as text.
pub async fn raw(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP port");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write request");
    tcp.write_all(body.as_bytes()).await.expect("write body");
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.expect("read response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// `GET path` without a token; the body as text.
pub async fn get(base: &str, path: &str) -> (u16, String) {
    raw(base, "GET", path, None, None).await
}

/// Like [`raw`], with the body parsed as JSON (`Null` when empty or not JSON).
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (status, body) = raw(base, method, path, token, body).await;
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}
