//! A connection over an in-memory socket (axum's testing-websockets
//! pattern): the whole protocol path of one connection without a network,
//! on the embedded store: a login, the replay of what was pending, a send,
//! an ack.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::handle_socket;
use crate::{Gateway, GatewayConfig, Limits, RateLimits, TokenSigner};
use futures_util::{Sink, Stream};
use im_core::pb::{self, Frame, frame::Body};
use im_core::{DeviceKey, Encoding, Role};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;

/// The server's end of an in-memory WebSocket.
struct MemorySocket {
    from_client: mpsc::UnboundedReceiver<WsMessage>,
    to_client: mpsc::UnboundedSender<WsMessage>,
}

impl Stream for MemorySocket {
    type Item = Result<WsMessage, WsError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.from_client.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<WsMessage> for MemorySocket {
    type Error = WsError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: WsMessage) -> Result<(), WsError> {
        self.to_client.send(item).map_err(|_| WsError::ConnectionClosed)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

/// The client's end.
struct MemoryClient {
    to_server: mpsc::UnboundedSender<WsMessage>,
    from_server: mpsc::UnboundedReceiver<WsMessage>,
}

impl MemoryClient {
    fn send(&self, req_id: u64, body: Body) {
        let frame = Frame { req_id, body: Some(body) };
        self.to_server.send(WsMessage::binary(im_core::encode_frame(Encoding::Protobuf, &frame))).unwrap();
    }

    async fn next(&mut self) -> Frame {
        let message = tokio::time::timeout(Duration::from_secs(5), self.from_server.recv())
            .await
            .expect("a frame within 5 s")
            .expect("the connection is open");
        match message {
            WsMessage::Binary(b) => im_core::decode_frame(Encoding::Protobuf, &b).unwrap(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}

fn text(s: &str) -> pb::Content {
    pb::Content { kind: Some(pb::content::Kind::Text(s.into())) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_replay_send_and_ack_over_an_in_memory_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (backends, store) = storage_embedded::open(dir.path(), Default::default()).unwrap();
    let router = Arc::new(session_router::Router::new("n1", backends.presence.clone(), 64));
    let dispatch = dispatch::Dispatcher::new(
        backends.clone(),
        router.clone(),
        dispatch::DispatchConfig { max_field_bytes: 64 << 10, ..Default::default() },
    );
    let shutdown = CancellationToken::new();
    let cs = cs_queue::CsService::start(
        backends.cs.clone(),
        dispatch.clone(),
        router.clone(),
        Default::default(),
        shutdown.clone(),
    );
    let signer = Arc::new(TokenSigner::new(b"0123456789abcdef"));
    let gw = Arc::new(Gateway {
        config: GatewayConfig::default(),
        signer: signer.clone(),
        dispatch: dispatch.clone(),
        router,
        cs,
        revocations: backends.revocations.clone(),
        limits: Limits::new(RateLimits::default()),
        proxy_header: None,
        parked: Default::default(),
    });
    // Alice wrote to Bob before he ever connected: pending for him.
    let alice = DeviceKey::new("acme", "alice", "a1");
    let first = pb::Send { client_msg_id: "c1".into(), to_user: "bob".into(), content: Some(text("are you there?")) };
    let stored = dispatch.send(&alice, first).await.unwrap();

    let (to_server, from_client) = mpsc::unbounded_channel();
    let (to_client, from_server) = mpsc::unbounded_channel();
    let socket = MemorySocket { from_client, to_client };
    let peer = "127.0.0.1:1".parse().unwrap();
    let task = tokio::spawn(handle_socket(socket, gw.clone(), shutdown.clone(), peer, None));
    let mut bob = MemoryClient { to_server, from_server };

    let token = signer.mint("acme", "bob", Role::Customer, Duration::from_secs(60)).unwrap();
    bob.send(1, Body::Auth(pb::Auth { token, device_id: "phone".into(), ..Default::default() }));
    let Frame { req_id: 1, body: Some(Body::AuthOk(ok)) } = bob.next().await else { panic!("AuthOk first") };
    assert_eq!((ok.user_id.as_str(), ok.pending_count), ("bob", 1));
    let Some(Body::Deliver(d)) = bob.next().await.body else { panic!("the replay") };
    let m = d.message.unwrap();
    assert!(d.replay);
    assert_eq!((m.msg_id.as_str(), m.seq), (stored.msg_id.as_str(), 1));

    let reply = pb::Send { client_msg_id: "b1".into(), to_user: "alice".into(), content: Some(text("yes")) };
    bob.send(2, Body::Send(reply));
    let Frame { req_id: 2, body: Some(Body::SendAck(ack)) } = bob.next().await else { panic!("SendAck") };
    assert_eq!(ack.seq, 2);

    bob.send(3, Body::Ack(pb::Ack { msg_ids: vec![m.msg_id], event_ids: vec![] }));
    // Frames take effect in order: once the Ping is answered, the Ack was
    // taken, and a flush of the node's ack queue stores it.
    bob.send(4, Body::Ping(pb::Ping {}));
    let Frame { req_id: 4, body: Some(Body::Pong(_)) } = bob.next().await else { panic!("Pong") };
    dispatch.acks().flush().await;
    let device = DeviceKey::new("acme", "bob", "phone");
    assert_eq!(dispatch.pending_count(&device).await.unwrap(), 0, "the ack reached the store");

    drop(bob);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    shutdown.cancel();
    store.close().await;
}
