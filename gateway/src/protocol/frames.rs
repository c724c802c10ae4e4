//! Encoding server frames. Message pushes are encoded once per node and encoding and cached
//! on the gateway's `Delivery`; history replies encode each message again, splicing in only
//! the payload bytes.

use super::{CloseReason, Encoding, ErrorCode, UnsubscribeReason, centrifuge};
use bytes::Bytes;
use fanout::{ControlEvent, Publication};
use serde::Serialize;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

fn encode<T: Serialize>(encoding: Encoding, value: &T) -> Bytes {
    let bytes = match encoding {
        // Centrifugo's frames are written by `centrifuge`, never here.
        Encoding::Json | Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf => {
            serde_json::to_vec(value).expect("server frames always serialize")
        }
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

/// An ok reply with body `ok` (v1).
fn reply_frame<T: Serialize>(encoding: Encoding, id: i64, ok: &T) -> Bytes {
    encode(encoding, &Reply { id, ok })
}

/// One page of a channel's members, as `presence` answers it.
#[derive(Debug, Clone, Default)]
pub struct PresencePage {
    /// The members, by user id.
    pub members: Vec<presence::Member>,
    /// Where the next page starts, when more members follow.
    pub cursor: Option<String>,
}

impl PresencePage {
    /// v1's body (and the HTTP API's): `{"members"}`, plus `"cursor"` when more follow.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "members": members_json(&self.members) });
        if let Some(cursor) = &self.cursor {
            body["cursor"] = serde_json::json!(cursor);
        }
        body
    }
}

/// What a command answers, before a protocol puts it in its words.
#[derive(Debug)]
pub enum Answer<'a> {
    /// `ping`.
    Pong,
    /// `unsubscribe`.
    Unsubscribed,
    /// `publish`: where the message landed.
    Published {
        /// Its offset.
        offset: u64,
        /// The channel's epoch.
        epoch: &'a str,
    },
    /// `refresh`: the connection's new expiry.
    Refreshed {
        /// Unix seconds.
        exp: u64,
        /// The connection's id (Centrifugo's `client`).
        client: &'a str,
    },
    /// `sub_refresh`: the subscription's new expiry.
    SubRefreshed {
        /// Unix seconds.
        exp: u64,
    },
    /// `presence_stats`.
    PresenceStats {
        /// Distinct users.
        users: u64,
        /// Their connections.
        conns: u64,
    },
    /// `presence`.
    Presence(&'a PresencePage),
    /// `rpc`: the backend's answer, JSON text (`null` for none).
    Rpc {
        /// JSON text.
        data: &'a [u8],
    },
}

/// The reply carrying `answer`.
pub fn answer_frame(encoding: Encoding, id: i64, answer: &Answer<'_>) -> Bytes {
    use serde_json::json;
    if encoding.is_centrifuge() {
        return centrifuge::answer(encoding, id, answer);
    }
    match answer {
        Answer::Pong | Answer::Unsubscribed => reply_frame(encoding, id, &json!({})),
        Answer::Published { offset, epoch } => {
            reply_frame(encoding, id, &json!({ "offset": offset, "epoch": epoch }))
        }
        Answer::Refreshed { exp, .. } | Answer::SubRefreshed { exp } => {
            reply_frame(encoding, id, &json!({ "exp": exp }))
        }
        Answer::PresenceStats { users, conns } => {
            reply_frame(encoding, id, &json!({ "users": users, "conns": conns }))
        }
        Answer::Presence(page) => reply_frame(encoding, id, &page.to_json()),
        Answer::Rpc { data } => {
            // The backend's JSON was checked when it came; `null` should it not parse.
            let data: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
            reply_frame(encoding, id, &json!({ "data": data }))
        }
    }
}

/// The reply to `subscribe` and what follows it: v1 answers `{offset, epoch, recovered}` and
/// then replays the missed messages as pushes; Centrifugo's protocol carries them inside the
/// reply. Returns the reply and the publications still to push, in order.
pub fn subscribe_reply_frame(
    encoding: Encoding,
    id: i64,
    recovery: SubscribeAnswer,
) -> (Bytes, Vec<Arc<Publication>>) {
    let SubscribeAnswer {
        offset,
        epoch,
        since,
        recovered,
        publications,
        expires,
        delta,
    } = recovery;
    if encoding.is_centrifuge() {
        // A recovered subscription's reply holds the client's own position, which the
        // publications in it carry forward; otherwise the channel's.
        let (offset, publications) = match since {
            Some(since) if recovered => (since, publications),
            _ => (offset, Vec::new()),
        };
        let reply = centrifuge::subscribe_reply(
            encoding,
            id,
            centrifuge::SubscribeResult {
                offset,
                epoch: &epoch,
                recovering: since.map(|_| recovered),
                publications: &publications,
                expires,
                delta,
            },
        );
        return (reply, Vec::new());
    }
    let reply = reply_frame(
        encoding,
        id,
        &serde_json::json!({ "offset": offset, "epoch": &*epoch, "recovered": recovered }),
    );
    (reply, publications)
}

/// What a subscribe found (see [`subscribe_reply_frame`]).
#[derive(Debug)]
pub struct SubscribeAnswer {
    /// The position to report (the channel's latest, or where recovery ends).
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: Arc<str>,
    /// The client's position, when it asked to recover.
    pub since: Option<u64>,
    /// Whether every missed publication is in `publications`.
    pub recovered: bool,
    /// The missed publications, oldest first.
    pub publications: Vec<Arc<Publication>>,
    /// When the subscription expires (a subscription token's `exp`, Unix seconds): the
    /// client renews it before then (Centrifugo's `sub_refresh`; v1 has no such tokens).
    pub expires: Option<u64>,
    /// Fossil deltas granted (Centrifugo's protocol).
    pub delta: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
    /// On a failed `publish` only: whether the message may still be published.
    #[serde(skip_serializing_if = "Option::is_none")]
    maybe_published: Option<bool>,
    /// A backend's refusal: its own code (`ErrorCode::Backend`).
    #[serde(skip_serializing_if = "Option::is_none")]
    backend_code: Option<u32>,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    id: i64,
    error: ErrorBody<'a>,
}

/// An error reply.
pub fn error_frame(encoding: Encoding, id: i64, code: ErrorCode, message: &str) -> Bytes {
    if encoding.is_centrifuge() {
        return centrifuge::error(encoding, id, code, message);
    }
    encode(
        encoding,
        &ErrorReply {
            id,
            error: ErrorBody {
                code: code.as_str(),
                message,
                maybe_published: None,
                backend_code: match code {
                    ErrorCode::Backend { code, .. } => Some(code),
                    _ => None,
                },
            },
        },
    )
}

/// The error reply of a failed `publish`: `maybe_published` says whether the message may
/// still be published (the backend got it and did not answer in time) or surely was not.
pub fn publish_error_frame(encoding: Encoding, id: i64, error: &fanout::BrokerError) -> Bytes {
    if encoding.is_centrifuge() {
        return centrifuge::error(encoding, id, ErrorCode::from(error), &error.to_string());
    }
    encode(
        encoding,
        &ErrorReply {
            id,
            error: ErrorBody {
                code: ErrorCode::from(error).as_str(),
                message: &error.to_string(),
                maybe_published: Some(error.maybe_applied()),
                backend_code: None,
            },
        },
    )
}

/// The `message` push for `publication` as a ready WebSocket message (text for JSON, binary
/// for MessagePack). The payload bytes are spliced in as they are (converted once when the
/// publisher used the other encoding); nodes cache the result per encoding (`Delivery`).
pub fn message_frame(encoding: Encoding, publication: &Publication) -> Message {
    let p = publication;
    match encoding {
        Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf => {
            to_message(encoding, centrifuge::publication_push(encoding, p))
        }
        Encoding::Json => {
            let data = p.data.to_json().unwrap_or_else(|e| {
                tracing::error!(error = %e, channel = %p.channel, "unreadable payload");
                Bytes::from_static(b"null")
            });
            let mut out = Vec::with_capacity(data.len() + p.channel.len() + p.from.len() + 96);
            out.extend_from_slice(b"{\"op\":\"message\",\"channel\":");
            write_json_str(&mut out, &p.channel);
            out.extend_from_slice(b",\"offset\":");
            out.extend_from_slice(p.offset.to_string().as_bytes());
            out.extend_from_slice(b",\"epoch\":");
            write_json_str(&mut out, &p.epoch);
            out.extend_from_slice(b",\"from\":");
            write_json_str(&mut out, &p.from);
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(&data);
            out.extend_from_slice(b",\"ts\":");
            out.extend_from_slice(p.ts.to_string().as_bytes());
            out.push(b'}');
            to_message(encoding, Bytes::from(out))
        }
        Encoding::MsgPack => {
            use rmp::encode as mp;
            let data = p.data.to_msgpack().unwrap_or_else(|e| {
                tracing::error!(error = %e, channel = %p.channel, "unreadable payload");
                Bytes::from_static(&[0xc0])
            });
            let mut out = Vec::with_capacity(data.len() + p.channel.len() + p.from.len() + 64);
            // Writing to a Vec cannot fail.
            let _ = mp::write_map_len(&mut out, 7);
            let _ = mp::write_str(&mut out, "op");
            let _ = mp::write_str(&mut out, "message");
            let _ = mp::write_str(&mut out, "channel");
            let _ = mp::write_str(&mut out, &p.channel);
            let _ = mp::write_str(&mut out, "offset");
            let _ = mp::write_uint(&mut out, p.offset);
            let _ = mp::write_str(&mut out, "epoch");
            let _ = mp::write_str(&mut out, &p.epoch);
            let _ = mp::write_str(&mut out, "from");
            let _ = mp::write_str(&mut out, &p.from);
            let _ = mp::write_str(&mut out, "data");
            out.extend_from_slice(&data);
            let _ = mp::write_str(&mut out, "ts");
            let _ = mp::write_uint(&mut out, p.ts);
            to_message(encoding, Bytes::from(out))
        }
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping, into the buffer.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Wraps an encoded frame for the socket: text for JSON (serde_json output is UTF-8; the
/// check runs once here), binary for MessagePack and Protobuf.
pub fn to_message(encoding: Encoding, frame: Bytes) -> Message {
    match encoding {
        Encoding::Json | Encoding::CentrifugeJson => match Utf8Bytes::try_from(frame) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Text(Utf8Bytes::from_static("{}")),
        },
        Encoding::MsgPack | Encoding::CentrifugeProtobuf => Message::Binary(frame),
    }
}

/// Appends `payload` to `out` as one whole, unmasked WebSocket data frame (text for JSON,
/// binary for MessagePack and Protobuf), the header written by tungstenite's own
/// [`FrameHeader`]. A session writes its batches this way, straight to the socket after
/// tungstenite has flushed (see `Session::write_pending`), and a publication's frame is built
/// once per encoding and copied to each subscriber (`Delivery::wire`). Text must be UTF-8:
/// serde_json's output is; anything else is sent as `{}`, as [`to_message`] does.
pub fn put_frame(out: &mut Vec<u8>, encoding: Encoding, payload: &[u8]) {
    let (data, payload) = match encoding {
        Encoding::Json | Encoding::CentrifugeJson => match std::str::from_utf8(payload) {
            Ok(_) => (Data::Text, payload),
            Err(_) => (Data::Text, &b"{}"[..]),
        },
        Encoding::MsgPack | Encoding::CentrifugeProtobuf => (Data::Binary, payload),
    };
    let header = FrameHeader {
        opcode: OpCode::Data(data),
        ..FrameHeader::default()
    };
    let length = payload.len() as u64;
    out.reserve(header.len(length) + payload.len());
    // Formatting into a Vec cannot fail.
    let _ = header.format(length, out);
    out.extend_from_slice(payload);
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
    if encoding.is_centrifuge() {
        return centrifuge::presence_push(encoding, channel, op == "join", user);
    }
    encode(encoding, &ControlPush { op, channel, user })
}

#[derive(Serialize)]
struct PresenceDiffPush<'a> {
    op: &'static str,
    channel: &'a str,
    joins: Vec<&'a str>,
    leaves: Vec<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    overflow: bool,
}

/// A `presence_diff` push: the users who joined and left `channel` since the last one. Past
/// `max_users` users the lists are left empty and `overflow` says to re-read `presence`.
pub fn presence_diff_frame<'a>(
    encoding: Encoding,
    channel: &str,
    joins: impl ExactSizeIterator<Item = &'a str>,
    leaves: impl ExactSizeIterator<Item = &'a str>,
    max_users: usize,
) -> Bytes {
    let overflow = joins.len() + leaves.len() > max_users;
    if encoding.is_centrifuge() {
        // One join or leave push each, in one frame; the protocol has no overflow notice,
        // so past `max_users` the rest is not told (presence reads stay exact).
        let pushes: Vec<Bytes> = joins
            .map(|u| centrifuge::presence_push(encoding, channel, true, u))
            .chain(leaves.map(|u| centrifuge::presence_push(encoding, channel, false, u)))
            .take(max_users.max(1))
            .collect();
        return centrifuge::join_frames(encoding, pushes.iter().map(|b| &b[..]));
    }
    let (joins, leaves) = if overflow {
        (Vec::new(), Vec::new())
    } else {
        (joins.collect(), leaves.collect())
    };
    encode(
        encoding,
        &PresenceDiffPush {
            op: "presence_diff",
            channel,
            joins,
            leaves,
            overflow,
        },
    )
}

#[derive(Serialize)]
struct UnsubscribePush<'a> {
    op: &'static str,
    channel: &'a str,
    code: &'static str,
    resubscribe: bool,
}

/// The `unsubscribe` push: the server ended a subscription, and says why and whether to
/// subscribe again (with `since`, to recover what the connection may have missed).
pub fn unsubscribe_frame(encoding: Encoding, channel: &str, reason: UnsubscribeReason) -> Bytes {
    if encoding.is_centrifuge() {
        return centrifuge::unsubscribe_push(encoding, channel, reason);
    }
    encode(
        encoding,
        &UnsubscribePush {
            op: "unsubscribe",
            channel,
            code: reason.code(),
            resubscribe: reason.resubscribe(),
        },
    )
}

#[derive(Serialize)]
struct SubscribedPush<'a> {
    op: &'static str,
    channel: &'a str,
}

/// The push that tells a client the server subscribed it to `channel` (the server API's
/// `subscribe`): v1's `subscribed`, Centrifugo's `subscribe` push. The channel's messages
/// follow it.
pub fn server_subscribe_frame(encoding: Encoding, channel: &str) -> Bytes {
    if encoding.is_centrifuge() {
        return centrifuge::subscribe_push(encoding, channel);
    }
    encode(
        encoding,
        &SubscribedPush {
            op: "subscribed",
            channel,
        },
    )
}

/// The push that tells a client its connection's new expiry (the server API's `refresh`):
/// Centrifugo's `refresh` push. v1 has none (its clients refresh their own tokens).
pub fn refresh_frame(encoding: Encoding, expire_at: Option<u64>) -> Option<Bytes> {
    encoding
        .is_centrifuge()
        .then(|| centrifuge::refresh_push(encoding, expire_at))
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

/// A page of history as answered: the publications read, the channel's position, and how
/// the page is cut when it would not fit one frame.
#[derive(Debug, Clone, Copy)]
pub struct HistoryReply<'a> {
    /// What the broker read, oldest first.
    pub publications: &'a [Arc<Publication>],
    /// The channel's latest offset.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: &'a str,
    /// Most bytes of message frames in the answer; past it the page is cut and says
    /// `"truncated": true`.
    pub max_bytes: usize,
    /// Which end of the page survives a cut: the newest messages (a read without `since`),
    /// or the oldest (a read after `since`, continued with `since` = the last offset).
    pub keep_newest: bool,
    /// Newest first (Centrifugo's `reverse`; v1 answers oldest first).
    pub reverse: bool,
}

/// The reply to `history`: `{"id", "ok": <history body>}`.
pub fn history_reply_frame(encoding: Encoding, id: i64, reply: HistoryReply<'_>) -> Bytes {
    if encoding.is_centrifuge() {
        return centrifuge::history_reply(encoding, id, reply);
    }
    let mut out = Vec::new();
    match encoding {
        Encoding::Json | Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf => {
            out.extend_from_slice(format!("{{\"id\":{id},\"ok\":").as_bytes())
        }
        Encoding::MsgPack => {
            // Writing to a Vec cannot fail.
            let _ = rmp::encode::write_map_len(&mut out, 2);
            let _ = rmp::encode::write_str(&mut out, "id");
            let _ = rmp::encode::write_sint(&mut out, id);
            let _ = rmp::encode::write_str(&mut out, "ok");
        }
    }
    write_history_body(&mut out, encoding, reply);
    if encoding.is_text() {
        out.push(b'}');
    }
    Bytes::from(out)
}

/// The body of a history answer, `{"messages": [...], "offset", "epoch"}` (and `"truncated":
/// true` when cut), as the `ok` of the `history` reply and as the HTTP API's reply. The
/// messages are each publication's message frame, encoded here (the payload bytes spliced in).
pub fn history_body(encoding: Encoding, reply: HistoryReply<'_>) -> Bytes {
    let mut out = Vec::new();
    write_history_body(&mut out, encoding, reply);
    Bytes::from(out)
}

fn write_history_body(out: &mut Vec<u8>, encoding: Encoding, reply: HistoryReply<'_>) {
    let mut frames: Vec<Message> = Vec::with_capacity(reply.publications.len());
    let mut bytes = 0usize;
    let mut truncated = false;
    let ordered: Box<dyn Iterator<Item = &Arc<Publication>>> = if reply.keep_newest {
        Box::new(reply.publications.iter().rev())
    } else {
        Box::new(reply.publications.iter())
    };
    for publication in ordered {
        let frame = message_frame(encoding, publication);
        let size = frame_bytes(&frame).len() + 1;
        if bytes + size > reply.max_bytes {
            truncated = true;
            break;
        }
        bytes += size;
        frames.push(frame);
    }
    if reply.keep_newest {
        frames.reverse();
    }
    out.reserve(bytes + 96);
    match encoding {
        Encoding::Json | Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf => {
            out.extend_from_slice(b"{\"messages\":[");
            for (i, frame) in frames.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(frame_bytes(frame));
            }
            out.extend_from_slice(b"],\"offset\":");
            out.extend_from_slice(reply.offset.to_string().as_bytes());
            out.extend_from_slice(b",\"epoch\":");
            out.extend_from_slice(&serde_json::to_vec(reply.epoch).expect("a string serializes"));
            if truncated {
                out.extend_from_slice(b",\"truncated\":true");
            }
            out.push(b'}');
        }
        Encoding::MsgPack => {
            use rmp::encode as mp;
            // Writing to a Vec cannot fail.
            let _ = mp::write_map_len(out, if truncated { 4 } else { 3 });
            let _ = mp::write_str(out, "messages");
            let _ = mp::write_array_len(out, frames.len() as u32);
            for frame in &frames {
                out.extend_from_slice(frame_bytes(frame));
            }
            let _ = mp::write_str(out, "offset");
            let _ = mp::write_uint(out, reply.offset);
            let _ = mp::write_str(out, "epoch");
            let _ = mp::write_str(out, reply.epoch);
            if truncated {
                let _ = mp::write_str(out, "truncated");
                let _ = mp::write_bool(out, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout::Payload;
    use serde_json::{Value, json};

    /// What `put_frame` writes is read back by a tungstenite client as the same messages, in
    /// order, across the three length forms of a frame header.
    #[test]
    fn frames_written_by_hand_read_back_as_messages() {
        use tokio_tungstenite::tungstenite::WebSocket;
        use tokio_tungstenite::tungstenite::protocol::Role;
        let sizes = [0usize, 1, 125, 126, 65_535, 65_536, 200_000];
        let mut out = Vec::new();
        for &n in &sizes {
            put_frame(&mut out, Encoding::Json, "j".repeat(n).as_bytes());
            put_frame(&mut out, Encoding::CentrifugeProtobuf, &vec![0xff; n]);
        }
        put_frame(&mut out, Encoding::CentrifugeJson, &[b'{', 0xff, b'}']);
        let mut client = WebSocket::from_raw_socket(std::io::Cursor::new(out), Role::Client, None);
        for &n in &sizes {
            assert_eq!(client.read().unwrap(), Message::Text("j".repeat(n).into()));
            assert_eq!(
                client.read().unwrap(),
                Message::Binary(vec![0xff; n].into())
            );
        }
        // Text that is not UTF-8 never reaches the socket as text.
        assert_eq!(client.read().unwrap(), Message::Text("{}".into()));
        assert!(client.read().is_err(), "nothing after the last frame");
    }

    fn publication(offset: u64) -> Arc<Publication> {
        Arc::new(Publication {
            channel: "room:\"a".into(),
            offset,
            epoch: "e1".into(),
            from: "alice".into(),
            data: Payload::from_value(&json!({"text": "hi", "n": [1, 2.5, null]})),
            ts: 1_732_281_600_000,
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
        assert_eq!(from_json["channel"], "room:\"a");
        assert_eq!(from_json["data"]["n"][1], 2.5);
        // A MessagePack payload reaches JSON subscribers converted, and the reverse.
        let packed_payload = Publication {
            data: Payload::msgpack_from_value(&json!({"text": "hi", "n": [1, 2.5, null]})),
            ..(*p).clone()
        };
        let from_packed: Value =
            serde_json::from_slice(frame_bytes(&message_frame(Encoding::Json, &packed_payload)))
                .unwrap();
        assert_eq!(from_packed, from_json);
    }

    #[test]
    fn history_reply_holds_each_message_frame() {
        let pubs = vec![publication(1), publication(2)];
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let reply = HistoryReply {
                publications: &pubs,
                offset: 2,
                epoch: "e1",
                max_bytes: usize::MAX,
                keep_newest: true,
                reverse: false,
            };
            let bytes = history_reply_frame(encoding, -4, reply);
            let v: Value = match encoding {
                Encoding::Json => serde_json::from_slice(&bytes).unwrap(),
                Encoding::MsgPack => rmp_serde::from_slice(&bytes).unwrap(),
                Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf => unreachable!(),
            };
            assert_eq!(v["id"], -4);
            assert_eq!(v["ok"]["offset"], 2);
            assert_eq!(v["ok"]["epoch"], "e1");
            assert_eq!(v["ok"]["messages"][1]["offset"], 2);
            assert_eq!(v["ok"]["messages"][0]["op"], "message");
            assert!(v["ok"].get("truncated").is_none());
            // Cut to one message: the newest survives without `since`, the oldest with it.
            let one = frame_bytes(&message_frame(encoding, &pubs[0])).len() + 1;
            for (keep_newest, kept) in [(true, 2), (false, 1)] {
                let cut = HistoryReply {
                    max_bytes: one,
                    keep_newest,
                    ..reply
                };
                let bytes = history_reply_frame(encoding, 1, cut);
                let v: Value = match encoding {
                    Encoding::Json => serde_json::from_slice(&bytes).unwrap(),
                    Encoding::MsgPack => rmp_serde::from_slice(&bytes).unwrap(),
                    Encoding::CentrifugeJson | Encoding::CentrifugeProtobuf => unreachable!(),
                };
                assert_eq!(v["ok"]["truncated"], true);
                assert_eq!(v["ok"]["messages"].as_array().unwrap().len(), 1);
                assert_eq!(v["ok"]["messages"][0]["offset"], kept);
            }
        }
    }
}
