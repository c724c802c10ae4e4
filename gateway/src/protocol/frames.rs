//! Encoding server frames. Message pushes are encoded once per encoding and cached on the
//! publication; history replies splice those cached frames instead of re-encoding them.

use super::{CloseReason, Encoding, ErrorCode};
use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use fanout::{ControlEvent, Publication};
use serde::Serialize;
use std::sync::Arc;

fn encode<T: Serialize>(encoding: Encoding, value: &T) -> Bytes {
    let bytes = match encoding {
        Encoding::Json => serde_json::to_vec(value).expect("server frames always serialize"),
        Encoding::MsgPack => {
            rmp_serde::to_vec_named(value).expect("server frames always serialize")
        }
    };
    Bytes::from(bytes)
}

#[derive(Serialize)]
struct Welcome<'a> {
    op: &'static str,
    user: &'a str,
    node: &'a str,
    session: &'a str,
    ping_interval: u64,
}

/// The `welcome` push.
pub fn welcome_frame(
    encoding: Encoding,
    user: &str,
    node: &str,
    session: &str,
    ping_interval: u64,
) -> Bytes {
    encode(
        encoding,
        &Welcome {
            op: "welcome",
            user,
            node,
            session,
            ping_interval,
        },
    )
}

#[derive(Serialize)]
struct Reply<'a, T> {
    id: i64,
    ok: &'a T,
}

/// An ok reply with body `ok`.
pub fn reply_frame<T: Serialize>(encoding: Encoding, id: i64, ok: &T) -> Bytes {
    encode(encoding, &Reply { id, ok })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    id: i64,
    error: ErrorBody<'a>,
}

/// An error reply.
pub fn error_frame(encoding: Encoding, id: i64, code: ErrorCode, message: &str) -> Bytes {
    encode(
        encoding,
        &ErrorReply {
            id,
            error: ErrorBody {
                code: code.as_str(),
                message,
            },
        },
    )
}

#[derive(Serialize)]
struct MessagePush<'a> {
    op: &'static str,
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    from: &'a str,
    data: &'a serde_json::Value,
    ts: u64,
}

/// The `message` push for `publication` as a ready WebSocket message (text for JSON, its
/// UTF-8 checked once; binary for MessagePack), encoded at most once per encoding and shared
/// by every subscriber.
pub fn message_frame(encoding: Encoding, publication: &Publication) -> Message {
    publication.frames.get_or_encode(encoding.slot(), || {
        let bytes = encode(
            encoding,
            &MessagePush {
                op: "message",
                channel: &publication.channel,
                offset: publication.offset,
                epoch: &publication.epoch,
                from: &publication.from,
                data: &publication.data,
                ts: publication.ts,
            },
        );
        to_message(encoding, bytes)
    })
}

/// Wraps an encoded frame for the socket: text for JSON (serde_json output is UTF-8; the
/// check runs once here), binary for MessagePack.
pub fn to_message(encoding: Encoding, frame: Bytes) -> Message {
    match encoding {
        Encoding::Json => match Utf8Bytes::try_from(frame) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Text(Utf8Bytes::from_static("{}")),
        },
        Encoding::MsgPack => Message::Binary(frame),
    }
}

/// The payload bytes of a data frame.
pub fn frame_bytes(message: &Message) -> &[u8] {
    match message {
        Message::Text(text) => text.as_bytes(),
        Message::Binary(bytes) => bytes,
        _ => &[],
    }
}

#[derive(Serialize)]
struct ControlPush<'a> {
    op: &'static str,
    channel: &'a str,
    user: &'a str,
}

/// A `join` or `leave` push.
pub fn control_frame(encoding: Encoding, event: &ControlEvent) -> Bytes {
    let (op, channel, user) = match event {
        ControlEvent::Join { channel, user } => ("join", channel, user),
        ControlEvent::Leave { channel, user } => ("leave", channel, user),
    };
    encode(encoding, &ControlPush { op, channel, user })
}

#[derive(Serialize)]
struct DisconnectPush {
    op: &'static str,
    code: &'static str,
    reconnect: bool,
}

/// The `disconnect` push that precedes a server-initiated close.
pub fn disconnect_frame(encoding: Encoding, reason: CloseReason) -> Bytes {
    encode(
        encoding,
        &DisconnectPush {
            op: "disconnect",
            code: reason.code(),
            reconnect: reason.reconnect(),
        },
    )
}

/// The `members` list of a presence answer (the `presence` reply and the HTTP API).
pub fn members_json(members: &[presence::Member]) -> Vec<serde_json::Value> {
    members
        .iter()
        .map(|m| serde_json::json!({ "user": m.user, "name": m.name, "conns": m.conns }))
        .collect()
}

/// The reply to `history`: `{"id", "ok": <history body>}`.
pub fn history_reply_frame(
    encoding: Encoding,
    id: i64,
    publications: &[Arc<Publication>],
    offset: u64,
    epoch: &str,
) -> Bytes {
    let mut out = Vec::new();
    match encoding {
        Encoding::Json => out.extend_from_slice(format!("{{\"id\":{id},\"ok\":").as_bytes()),
        Encoding::MsgPack => {
            // Writing to a Vec cannot fail.
            let _ = rmp::encode::write_map_len(&mut out, 2);
            let _ = rmp::encode::write_str(&mut out, "id");
            let _ = rmp::encode::write_sint(&mut out, id);
            let _ = rmp::encode::write_str(&mut out, "ok");
        }
    }
    write_history_body(&mut out, encoding, publications, offset, epoch);
    if encoding == Encoding::Json {
        out.push(b'}');
    }
    Bytes::from(out)
}

/// The body of a history answer, `{"messages": [...], "offset", "epoch"}`, as the `ok` of
/// the `history` reply and as the HTTP API's reply. The messages are the publications'
/// cached frames, spliced in rather than encoded again.
pub fn history_body(
    encoding: Encoding,
    publications: &[Arc<Publication>],
    offset: u64,
    epoch: &str,
) -> Bytes {
    let mut out = Vec::new();
    write_history_body(&mut out, encoding, publications, offset, epoch);
    Bytes::from(out)
}

fn write_history_body(
    out: &mut Vec<u8>,
    encoding: Encoding,
    publications: &[Arc<Publication>],
    offset: u64,
    epoch: &str,
) {
    let frames: Vec<Message> = publications
        .iter()
        .map(|p| message_frame(encoding, p))
        .collect();
    out.reserve(
        frames
            .iter()
            .map(|f| frame_bytes(f).len() + 1)
            .sum::<usize>()
            + 64,
    );
    match encoding {
        Encoding::Json => {
            out.extend_from_slice(b"{\"messages\":[");
            for (i, frame) in frames.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(frame_bytes(frame));
            }
            out.extend_from_slice(b"],\"offset\":");
            out.extend_from_slice(offset.to_string().as_bytes());
            out.extend_from_slice(b",\"epoch\":");
            out.extend_from_slice(&serde_json::to_vec(epoch).expect("a string serializes"));
            out.push(b'}');
        }
        Encoding::MsgPack => {
            use rmp::encode as mp;
            // Writing to a Vec cannot fail.
            let _ = mp::write_map_len(out, 3);
            let _ = mp::write_str(out, "messages");
            let _ = mp::write_array_len(out, frames.len() as u32);
            for frame in &frames {
                out.extend_from_slice(frame_bytes(frame));
            }
            let _ = mp::write_str(out, "offset");
            let _ = mp::write_uint(out, offset);
            let _ = mp::write_str(out, "epoch");
            let _ = mp::write_str(out, epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout::FrameCache;
    use serde_json::{Value, json};
    use std::time::Instant;

    fn publication(offset: u64) -> Arc<Publication> {
        Arc::new(Publication {
            channel: "room:a".into(),
            offset,
            epoch: "e1".into(),
            from: "alice".into(),
            data: json!({"text": "hi", "n": [1, 2.5, null]}),
            ts: 1_732_281_600_000,
            accepted_at: Instant::now(),
            frames: FrameCache::default(),
        })
    }

    #[test]
    fn message_push_has_the_same_structure_in_both_encodings() {
        let p = publication(18);
        let json = message_frame(Encoding::Json, &p);
        let packed = message_frame(Encoding::MsgPack, &p);
        assert!(matches!(json, Message::Text(_)) && matches!(packed, Message::Binary(_)));
        let from_json: Value = serde_json::from_slice(frame_bytes(&json)).unwrap();
        let from_mp: Value = rmp_serde::from_slice(frame_bytes(&packed)).unwrap();
        assert_eq!(from_json, from_mp);
        assert_eq!(from_json["offset"], 18);
        assert_eq!(from_json["data"]["n"][1], 2.5);
        // Cached: the same bytes come back.
        assert_eq!(
            frame_bytes(&message_frame(Encoding::Json, &p)).as_ptr(),
            frame_bytes(&message_frame(Encoding::Json, &p)).as_ptr()
        );
    }

    #[test]
    fn history_reply_splices_cached_frames() {
        let pubs = vec![publication(1), publication(2)];
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let bytes = history_reply_frame(encoding, -4, &pubs, 2, "e1");
            let v: Value = match encoding {
                Encoding::Json => serde_json::from_slice(&bytes).unwrap(),
                Encoding::MsgPack => rmp_serde::from_slice(&bytes).unwrap(),
            };
            assert_eq!(v["id"], -4);
            assert_eq!(v["ok"]["offset"], 2);
            assert_eq!(v["ok"]["epoch"], "e1");
            assert_eq!(v["ok"]["messages"][1]["offset"], 2);
            assert_eq!(v["ok"]["messages"][0]["op"], "message");
        }
    }
}
