//! One `Frame` per WebSocket message: protobuf in binary messages, canonical
//! JSON in text messages. Decoding never panics and never trusts a length it
//! has not checked (prost bounds every length by the input buffer).

use crate::pb::{Frame, Message};
use prost::Message as _;

/// The WebSocket message kind a frame travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary WebSocket message, protobuf encoding.
    Protobuf,
    /// Text WebSocket message, canonical protobuf JSON.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameDecodeError {
    #[error("binary message is not a protobuf Frame: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("text message is not a JSON Frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes one frame from the payload of one WebSocket message.
pub fn decode_frame(encoding: Encoding, payload: &[u8]) -> Result<Frame, FrameDecodeError> {
    match encoding {
        Encoding::Protobuf => Ok(Frame::decode(payload)?),
        Encoding::Json => Ok(serde_json::from_slice(payload)?),
    }
}

/// Encodes one frame as the payload of one WebSocket message.
pub fn encode_frame(encoding: Encoding, frame: &Frame) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => frame.encode_to_vec(),
        // Serialising generated pbjson types cannot fail: no maps with
        // non-string keys, no foreign Serialize impls.
        Encoding::Json => serde_json::to_vec(frame).unwrap_or_default(),
    }
}

/// Field number of `Frame.deliver` in `proto/dongdong.proto`.
const FRAME_DELIVER: u32 = 32;

/// Encodes `Frame { req_id: 0, deliver: Deliver { message, replay } }`
/// without copying the message into a frame first: a stored message goes to
/// every device of its conversation, and a copy per device is seven string
/// allocations. The protobuf bytes are exactly what encoding the frame gives.
pub fn encode_deliver(encoding: Encoding, message: &Message, replay: bool) -> Vec<u8> {
    use prost::encoding::{
        bool as pb_bool, encode_key, encode_varint, encoded_len_varint, key_len, message as pb_message,
    };
    match encoding {
        Encoding::Protobuf => {
            let inner = pb_message::encoded_len(1, message) + if replay { pb_bool::encoded_len(2, &replay) } else { 0 };
            let mut buf = Vec::with_capacity(key_len(FRAME_DELIVER) + encoded_len_varint(inner as u64) + inner);
            encode_key(FRAME_DELIVER, prost::encoding::WireType::LengthDelimited, &mut buf);
            encode_varint(inner as u64, &mut buf);
            pb_message::encode(1, message, &mut buf);
            if replay {
                pb_bool::encode(2, &replay, &mut buf);
            }
            buf
        }
        Encoding::Json => {
            let deliver = crate::pb::Deliver { message: Some(message.clone()), replay };
            encode_frame(encoding, &Frame { req_id: 0, body: Some(crate::pb::frame::Body::Deliver(deliver)) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Auth, Content, Send, content, frame::Body};

    /// What the fuzzers found (fuzz/corpus, minimized) decodes or fails
    /// cleanly, and what decodes round-trips: the fuzz targets' checks,
    /// replayed by every `cargo test` without nightly Rust.
    #[test]
    fn the_fuzz_corpus_decodes_or_fails_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (dir, enc) in [("frame_protobuf", Encoding::Protobuf), ("frame_json", Encoding::Json)] {
            let mut inputs = 0;
            for entry in std::fs::read_dir(root.join(dir)).expect("the corpus is in the repository") {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                if let Ok(frame) = decode_frame(enc, &bytes) {
                    for out in [enc, Encoding::Protobuf] {
                        assert_eq!(decode_frame(out, &encode_frame(out, &frame)).ok(), Some(frame.clone()));
                    }
                }
                inputs += 1;
            }
            assert!(inputs > 10, "{dir}: only {inputs} inputs");
        }
    }

    fn send_frame() -> Frame {
        Frame {
            req_id: 7,
            body: Some(Body::Send(Send {
                client_msg_id: "c1".into(),
                to_user: "bob".into(),
                content: Some(Content { kind: Some(content::Kind::Text("hi".into())) }),
            })),
        }
    }

    #[test]
    fn deliver_encodes_as_the_frame_would() {
        let mut message = Message {
            msg_id: "019aa6a2-0000-7000-8000-000000000001".into(),
            conversation_id: "c5d1f".into(),
            seq: 300,
            from_user: "alice".into(),
            from_device: "a1".into(),
            to_user: "bob".into(),
            content: Some(Content { kind: Some(content::Kind::Text("你好 ".repeat(50))) }),
            client_msg_id: "c-1".into(),
            server_time_ms: 1_795_292_253_100,
            recalled_by: String::new(),
            recalled_ms: 0,
        };
        for m in [Message::default(), message.clone(), {
            message.content = None;
            message.recalled_by = "alice".into();
            message.recalled_ms = 1_795_292_253_200;
            message
        }] {
            for replay in [false, true] {
                let frame = Frame {
                    req_id: 0,
                    body: Some(Body::Deliver(crate::pb::Deliver { message: Some(m.clone()), replay })),
                };
                for enc in [Encoding::Protobuf, Encoding::Json] {
                    assert_eq!(encode_deliver(enc, &m, replay), encode_frame(enc, &frame), "{enc:?} replay={replay}");
                }
            }
        }
    }

    #[test]
    fn both_encodings_round_trip() {
        for enc in [Encoding::Protobuf, Encoding::Json] {
            let f = send_frame();
            let bytes = encode_frame(enc, &f);
            assert_eq!(decode_frame(enc, &bytes).unwrap(), f);
        }
    }

    #[test]
    fn json_is_canonical_camel_case_with_string_u64() {
        let f = Frame {
            req_id: 7,
            body: Some(Body::Auth(Auth { token: "t".into(), device_id: "d".into(), ..Default::default() })),
        };
        let json = String::from_utf8(encode_frame(Encoding::Json, &f)).unwrap();
        assert_eq!(json, r#"{"reqId":"7","auth":{"token":"t","deviceId":"d"}}"#);
        // Numbers are accepted for 64-bit fields too, as the JSON mapping allows.
        let parsed = decode_frame(Encoding::Json, br#"{"reqId":7,"auth":{"token":"t","deviceId":"d"}}"#).unwrap();
        assert_eq!(parsed, f);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_frame(Encoding::Protobuf, b"\xff\xff\xff\xff\xff").is_err());
        // Length prefix far beyond the buffer: rejected, nothing allocated for it.
        assert!(decode_frame(Encoding::Protobuf, b"\x5a\xff\xff\xff\xff\x0f").is_err());
        assert!(decode_frame(Encoding::Json, b"{").is_err());
        assert!(decode_frame(Encoding::Json, b"[]").is_err());
        assert!(decode_frame(Encoding::Json, b"{\"send\":5}").is_err());
    }

    mod properties {
        use super::*;
        use crate::pb::{Ack, Ping, SyncRequest};
        use proptest::prelude::*;

        fn content() -> impl Strategy<Value = Content> {
            prop_oneof![
                any::<String>().prop_map(|t| Content { kind: Some(content::Kind::Text(t)) }),
                (any::<String>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
                    |(url, width, height, size_bytes)| {
                        Content {
                            kind: Some(content::Kind::Image(crate::pb::Image {
                                url,
                                width,
                                height,
                                size_bytes,
                                ..Default::default()
                            })),
                        }
                    }
                ),
                (any::<String>(), any::<String>()).prop_map(|(r#type, json)| Content {
                    kind: Some(content::Kind::Custom(crate::pb::Custom { r#type, json }))
                }),
            ]
        }

        fn frame() -> impl Strategy<Value = Frame> {
            let body = prop_oneof![
                (any::<String>(), any::<String>()).prop_map(|(token, device_id)| Body::Auth(Auth {
                    token,
                    device_id,
                    ..Default::default()
                })),
                (any::<String>(), any::<String>(), proptest::option::of(content()))
                    .prop_map(|(client_msg_id, to_user, content)| Body::Send(Send { client_msg_id, to_user, content })),
                (proptest::collection::vec(any::<String>(), 0..8), proptest::collection::vec(any::<String>(), 0..3))
                    .prop_map(|(msg_ids, event_ids)| Body::Ack(Ack { msg_ids, event_ids })),
                (any::<String>(), any::<u64>()).prop_map(|(conversation_id, up_to_seq)| {
                    Body::MarkRead(crate::pb::MarkRead { conversation_id, up_to_seq })
                }),
                (any::<String>(), any::<u32>()).prop_map(|(cursor, limit)| Body::ConversationsRequest(
                    crate::pb::ConversationsRequest { cursor, limit }
                )),
                any::<String>().prop_map(|msg_id| Body::Recall(crate::pb::Recall { msg_id })),
                (any::<String>(), any::<String>(), any::<u64>(), any::<String>()).prop_map(
                    |(conversation_id, reader, up_to_seq, event_id)| Body::ReadReceipt(crate::pb::ReadReceipt {
                        conversation_id,
                        reader,
                        up_to_seq,
                        event_id
                    })
                ),
                (any::<String>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
                    |(conversation_id, after_seq, before_seq, limit)| Body::SyncRequest(SyncRequest {
                        conversation_id,
                        after_seq,
                        before_seq,
                        limit,
                        with_user: String::new(),
                        session_id: String::new(),
                    })
                ),
                Just(Body::Ping(Ping {})),
                (any::<String>(), proptest::option::of(content()), any::<String>()).prop_map(
                    |(group, first_message, page)| {
                        let user_agent = page.chars().rev().collect();
                        Body::RequestService(crate::pb::RequestService { group, first_message, page, user_agent })
                    }
                ),
                (any::<String>(), any::<String>(), any::<bool>(), any::<String>()).prop_map(
                    |(session_id, to, agent, note)| {
                        use crate::pb::transfer_session::Target;
                        let target = Some(if agent { Target::ToAgent(to) } else { Target::ToGroup(to) });
                        Body::TransferSession(crate::pb::TransferSession { session_id, target, note })
                    }
                ),
                (0i32..4).prop_map(|status| Body::SetStatus(crate::pb::SetStatus { status })),
                (any::<String>(), any::<u32>(), any::<String>()).prop_map(|(session_id, score, comment)| {
                    Body::Rate(crate::pb::Rate { session_id, score, comment })
                }),
                (any::<String>(), any::<u32>(), any::<u32>()).prop_map(|(group, position, estimated_wait_s)| {
                    Body::QueueUpdate(crate::pb::QueueUpdate {
                        session_id: String::new(),
                        group,
                        position,
                        estimated_wait_s,
                    })
                }),
            ];
            (any::<u64>(), proptest::option::of(body)).prop_map(|(req_id, body)| Frame { req_id, body })
        }

        proptest! {
            #[test]
            fn any_frame_round_trips_in_both_encodings(f in frame()) {
                for enc in [Encoding::Protobuf, Encoding::Json] {
                    let bytes = encode_frame(enc, &f);
                    prop_assert_eq!(decode_frame(enc, &bytes).unwrap(), f.clone());
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode_frame(Encoding::Protobuf, &bytes);
                let _ = decode_frame(Encoding::Json, &bytes);
            }

            #[test]
            fn mutated_valid_frames_never_panic(f in frame(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
                for enc in [Encoding::Protobuf, Encoding::Json] {
                    let mut bytes = encode_frame(enc, &f);
                    if bytes.is_empty() {
                        continue;
                    }
                    for (at, byte) in &flips {
                        let i = at % bytes.len();
                        bytes[i] = *byte;
                    }
                    let _ = decode_frame(enc, &bytes);
                }
            }
        }
    }
}
