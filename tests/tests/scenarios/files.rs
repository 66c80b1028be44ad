//! Files and images over real HTTP and WebSockets: upload, what is stored
//! (metadata stripped, a thumbnail), who may download it, signed links,
//! and messages that refer to uploads.

use dongdong_tests::client::{Client, code, msg};
use dongdong_tests::http::{Reply, send};
use dongdong_tests::server::TestServer;
use im_core::pb::{self, content::Kind};
use im_core::{ErrorCode, Role};
use std::io::Cursor;
use std::time::Duration;

/// A PNG of `w`×`h` with a tEXt chunk holding a "location".
fn png_with_text(w: u32, h: u32) -> Vec<u8> {
    let img = image::DynamicImage::new_rgb8(w, h);
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    let mut b = out.into_inner();
    let text = b"Location\x0031.2304N 121.4737E";
    let mut chunk = (text.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(b"tEXt");
    chunk.extend_from_slice(text);
    chunk.extend_from_slice(&[0, 0, 0, 0]);
    let iend = b.len() - 12;
    b.splice(iend..iend, chunk);
    b
}

async fn upload(s: &TestServer, token: &str, content_type: &str, name: &str, body: &[u8]) -> Reply {
    let auth = format!("Bearer {token}");
    let path = format!("/api/v1/files?name={name}");
    send(&s.http_url, "POST", &path, &[("authorization", &auth), ("content-type", content_type)], body).await
}

async fn fetch(s: &TestServer, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    send(&s.http_url, "GET", path, &headers, &[]).await
}

fn image_of(m: &pb::Message) -> pb::Image {
    match m.content.as_ref().and_then(|c| c.kind.clone()) {
        Some(Kind::Image(i)) => i,
        other => panic!("not an image: {other:?}"),
    }
}

fn send_image(file_id: &str) -> pb::Content {
    pb::Content { kind: Some(Kind::Image(pb::Image { file_id: file_id.into(), ..Default::default() })) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_is_stripped_thumbnailed_sent_and_read_only_by_the_conversation() {
    let s = TestServer::start().await;
    let (alice_t, carol_t) = (s.token("acme", "alice"), s.token("acme", "carol"));
    let photo = png_with_text(1200, 800);
    let r = upload(&s, &alice_t, "image/png", "parcel.png", &photo).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let up = r.json();
    let id = up["file_id"].as_str().unwrap().to_string();
    assert_eq!(
        (up["content_type"].as_str(), up["width"].as_u64(), up["height"].as_u64()),
        (Some("image/png"), Some(1200), Some(800))
    );
    assert_eq!(up["name"], "parcel.png");
    assert!(up["url"].as_str().unwrap().contains("sig=") && up["thumbnail_url"].is_string());
    assert_eq!(up["thumbnail_id"].as_str().unwrap(), format!("{id}.thumbnail"));

    // Nobody else can read it yet; the uploader can, without the text chunk.
    let path = format!("/api/v1/files/{id}");
    let bob_t = s.token("acme", "bob");
    assert_eq!(fetch(&s, &path, Some(&bob_t), &[]).await.status, 404);
    let mine = fetch(&s, &path, Some(&alice_t), &[]).await;
    assert_eq!(mine.status, 200);
    assert_eq!(mine.header("content-type"), Some("image/png"));
    assert_eq!(mine.header("x-content-type-options"), Some("nosniff"));
    assert!(mine.header("content-disposition").is_none(), "images show inline");
    assert!(!mine.body.windows(8).any(|w| w == b"Location"), "metadata stripped");
    assert_eq!(mine.body.len() as u64, up["size"].as_u64().unwrap());
    let decoded = image::load_from_memory(&mine.body).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (1200, 800));

    // Sent to bob: his devices get the facts, and he may read it now.
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let ack = alice.send("bob", "photo-1", send_image(&id)).await.unwrap();
    let got = image_of(msg(&bob.next_deliver().await));
    assert_eq!((got.file_id.as_str(), got.width, got.height, got.has_thumbnail), (id.as_str(), 1200, 800, true));
    assert_eq!((got.content_type.as_str(), got.size_bytes), ("image/png", up["size"].as_u64().unwrap()));
    assert!(got.url.is_empty());
    let history = bob.sync(pb::SyncRequest { with_user: "alice".into(), ..Default::default() }).await.unwrap();
    assert_eq!(image_of(&history.messages[0]).file_id, id, "history carries it: seq {}", ack.seq);
    let bobs = fetch(&s, &path, Some(&bob_t), &[]).await;
    assert_eq!((bobs.status, bobs.body == mine.body), (200, true));
    let thumb = fetch(&s, &format!("{path}/thumbnail"), Some(&bob_t), &[]).await;
    assert_eq!(thumb.status, 200);
    let t = image::load_from_memory(&thumb.body).unwrap();
    assert_eq!((t.width(), t.height()), (320, 213));
    assert_eq!(fetch(&s, &format!("/api/v1/files/{id}.thumbnail"), Some(&bob_t), &[]).await.body, thumb.body);
    // Carol is not in the conversation; another tenant's admin neither.
    assert_eq!(fetch(&s, &path, Some(&carol_t), &[]).await.status, 404);
    let other_admin = s.token_with_role("other", "root", Role::Admin);
    assert_eq!(fetch(&s, &path, Some(&other_admin), &[]).await.status, 404);
    let admin = s.token_with_role("acme", "root", Role::Admin);
    assert_eq!(fetch(&s, &path, Some(&admin), &[]).await.status, 200);
    assert_eq!(fetch(&s, &path, None, &[]).await.status, 401);

    // Signed links: what an <img src> uses, no header needed.
    let link =
        send(&s.http_url, "POST", &format!("{path}/link"), &[("authorization", &format!("Bearer {bob_t}"))], &[]).await;
    assert_eq!(link.status, 200);
    let url = link.json()["thumbnail_url"].as_str().unwrap().to_string();
    assert_eq!(fetch(&s, &url, None, &[]).await.body, thumb.body);
    let forged = url.replace("/thumbnail?", "?");
    assert_eq!(fetch(&s, &forged, None, &[]).await.status, 401, "a thumbnail's link opens only the thumbnail");
    let tampered = url.replacen("sig=", "sig=0", 1);
    assert_eq!(fetch(&s, &tampered, None, &[]).await.status, 401);
    let carol_link =
        send(&s.http_url, "POST", &format!("{path}/link"), &[("authorization", &format!("Bearer {carol_t}"))], &[])
            .await;
    assert_eq!(carol_link.status, 404);

    // Caching and ranges.
    let etag = mine.header("etag").unwrap().to_string();
    assert_eq!(fetch(&s, &path, Some(&bob_t), &[("if-none-match", &etag)]).await.status, 304);
    let part = fetch(&s, &path, Some(&bob_t), &[("range", "bytes=0-99")]).await;
    assert_eq!((part.status, part.body.len()), (206, 100));
    assert_eq!(part.body, mine.body[..100]);
    assert_eq!(part.header("content-range"), Some(format!("bytes 0-99/{}", mine.body.len()).as_str()));
    assert_eq!(fetch(&s, &path, Some(&bob_t), &[("range", "bytes=99999999-")]).await.status, 416);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_with_clear_codes_and_leave_nothing_behind() {
    let s = TestServer::start_with(|c| {
        c.files.max_bytes = 50_000;
        c.files.uploads_per_minute = 8;
        c.files.max_pixels = 1_000_000;
    })
    .await;
    let t = s.token("acme", "alice");
    let code_of = |r: &Reply| r.json()["error"]["code"].as_str().unwrap_or("").to_string();
    let r = upload(&s, &t, "image/png", "x", &[]).await;
    assert_eq!((r.status, code_of(&r).as_str()), (400, "INVALID_ARGUMENT"));
    let r = upload(&s, &t, "application/octet-stream", "big", &vec![b'a'; 60_000]).await;
    assert_eq!((r.status, code_of(&r).as_str()), (413, "TOO_LARGE"));
    let r = upload(&s, &t, "image/jpeg", "liar.jpg", &png_with_text(10, 10)).await;
    assert_eq!((r.status, code_of(&r).as_str()), (400, "INVALID_ARGUMENT"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("image/png"));
    let r = upload(&s, &t, "text/html", "page.html", b"<html><body>hi</body></html>").await;
    assert_eq!((r.status, code_of(&r).as_str()), (400, "INVALID_ARGUMENT"), "HTML is never accepted");
    let r = upload(&s, &t, "image/png", "bomb.png", &png_with_text(2000, 1000)).await;
    assert_eq!((r.status, code_of(&r).as_str()), (413, "TOO_LARGE"), "{:?}", r.json());
    let r = send(&s.http_url, "POST", "/api/v1/files", &[("content-type", "text/plain")], b"no token").await;
    assert_eq!(r.status, 401);
    // A text file: served as an attachment.
    let r = upload(&s, &t, "text/plain", "notes.txt", "订单 1234 坏了".as_bytes()).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["file_id"].as_str().unwrap().to_string();
    let d = fetch(&s, &format!("/api/v1/files/{id}"), Some(&t), &[]).await;
    assert_eq!(d.header("content-type"), Some("text/plain"));
    assert_eq!(d.header("content-disposition"), Some("attachment; filename*=UTF-8''notes.txt"));
    assert_eq!(d.body, "订单 1234 坏了".as_bytes());
    // Multipart, as a browser form sends it.
    let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"C:\\\\fakepath\\\\a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XyZ--\r\n";
    let auth = format!("Bearer {t}");
    let r = send(
        &s.http_url,
        "POST",
        "/api/v1/files",
        &[("authorization", &auth), ("content-type", "multipart/form-data; boundary=XyZ")],
        body,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!((r.json()["name"].as_str(), r.json()["size"].as_u64()), (Some("a.txt"), Some(5)));
    // The rate limit: 8 a minute, refused attempts included (7 so far).
    assert_eq!(upload(&s, &t, "text/plain", "n0", b"x").await.status, 201);
    let r = upload(&s, &t, "text/plain", "n1", b"x").await;
    assert_eq!((r.status, code_of(&r).as_str()), (429, "RATE_LIMITED"));
    // Nothing half-written is left in the data directory.
    let tmp = s.dir.path().join("files/tmp");
    let leftovers = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "{}", tmp.display());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_may_only_refer_to_the_senders_own_uploads() {
    let s = TestServer::start().await;
    let bob_t = s.token("acme", "bob");
    let bobs = upload(&s, &bob_t, "image/png", "b.png", &png_with_text(20, 20)).await.json();
    let bobs_id = bobs["file_id"].as_str().unwrap();
    let text = upload(&s, &s.token("acme", "alice"), "text/plain", "t.txt", b"plain").await.json();
    let mut alice = s.login("acme", "alice", "a1").await;
    let e = alice.send("bob", "steal", send_image(bobs_id)).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    let e = alice.send("bob", "ghost", send_image("0190b1f2-0000-7000-8000-000000000000")).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotFound);
    let e = alice.send("bob", "not-image", send_image(text["file_id"].as_str().unwrap())).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    let both = pb::Content {
        kind: Some(Kind::Image(pb::Image { url: "https://x/y.png".into(), file_id: "z".into(), ..Default::default() })),
    };
    assert_eq!(code(&alice.send("bob", "both", both).await.unwrap_err()), ErrorCode::InvalidArgument);
    // As a file: the facts come from the upload.
    let file = pb::Content {
        kind: Some(Kind::File(pb::File { file_id: text["file_id"].as_str().unwrap().into(), ..Default::default() })),
    };
    let mut bob = s.login("acme", "bob", "b1").await;
    alice.send("bob", "doc", file).await.unwrap();
    let Some(Kind::File(f)) = msg(&bob.next_deliver().await).content.clone().and_then(|c| c.kind) else {
        panic!("a file")
    };
    assert_eq!((f.name.as_str(), f.size_bytes, f.content_type.as_str()), ("t.txt", 5, "text/plain"));
    assert_eq!(f.sha256.len(), 64);
    let mut other = Client::login(&s.ws_url, &s.token("other", "alice"), "a").await;
    let e = other.send("bob", "cross", send_image(bobs_id)).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotFound, "tenant wall");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalled_messages_file_is_deleted_and_old_uploads_expire() {
    let s = TestServer::start_with(|c| c.files.retention = Duration::from_secs(2)).await;
    let (alice_t, bob_t) = (s.token("acme", "alice"), s.token("acme", "bob"));
    let up = upload(&s, &alice_t, "image/png", "oops.png", &png_with_text(30, 30)).await.json();
    let id = up["file_id"].as_str().unwrap().to_string();
    let mut alice = s.login("acme", "alice", "a1").await;
    let ack = alice.send("bob", "img", send_image(&id)).await.unwrap();
    let path = format!("/api/v1/files/{id}");
    assert_eq!(fetch(&s, &path, Some(&bob_t), &[]).await.status, 200);
    let recall = pb::frame::Body::Recall(pb::Recall { msg_id: ack.msg_id });
    assert!(matches!(alice.request(recall).await.body, Some(pb::frame::Body::Recalled(_))));
    for t in [&alice_t, &bob_t] {
        assert_eq!(fetch(&s, &path, Some(t), &[]).await.status, 404, "recalled with its message");
    }
    // Retention: an upload older than 2 s is gone within the next sweep.
    let kept = upload(&s, &alice_t, "text/plain", "old.txt", b"old").await.json();
    let old = format!("/api/v1/files/{}", kept["file_id"].as_str().unwrap());
    assert_eq!(fetch(&s, &old, Some(&alice_t), &[]).await.status, 200);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while fetch(&s, &old, Some(&alice_t), &[]).await.status != 404 {
        assert!(tokio::time::Instant::now() < until, "the old upload outlived files.retention");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_progress_are_bounded_per_node() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start().await;
    let t = s.token("acme", "alice");
    let addr = s.http_url.trim_start_matches("http://").to_string();
    // Eight uploads whose bodies never finish hold the eight slots.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /api/v1/files?name=slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\nslow"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        slow.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = upload(&s, &s.token("acme", "bob"), "text/plain", "n", b"hello").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("UNAVAILABLE")), "{:?}", r.json());
    // They give up: the slots are free again.
    drop(slow);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = upload(&s, &s.token("acme", "bob"), "text/plain", "n", b"hello").await;
        if r.status == 201 {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "slots never freed: {}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}
