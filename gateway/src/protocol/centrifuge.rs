//! Centrifugo's client protocol, JSON encoding: what the official SDKs (centrifuge-js,
//! centrifuge-python, -swift, -java, -dart, -go, -csharp) speak at `/connection/websocket`.
//!
//! This module only translates: frames in become the same [`Command`]s the v1 door decodes
//! (plus `connect`, which the session's first phase handles); the node's answers and pushes
//! go out in this protocol's words. The node never learns which protocol a client speaks.
//!
//! Wire facts this follows (from the protocol's schema and the SDKs' sources):
//! - One WebSocket text frame holds one or more JSON objects separated by `\n`, in both
//!   directions. Replies carry the command's `id`; pushes are `{"push": {...}}`; an empty
//!   object `{}` is the application-level ping (server to client) and pong (back).
//! - Field names are the schema's snake_case names; zero values are left out, except where
//!   the SDKs read a field without checking (a reply always carries its result object).
//! - `data`, `info` and friends are raw JSON embedded as it is, never base64.

use super::command::{MAX_DATA_DEPTH, MAX_HISTORY_LIMIT, json_text_depth};
use super::{CloseReason, Command, CommandError, ErrorCode, Op, UnsubscribeReason};
use crate::acl::{JoinLeave, valid_channel};
use bytes::Bytes;
use fanout::{Payload, Publication};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// Most commands one frame may carry. A frame is already bounded in bytes (the largest
/// frame setting); this bounds the work one frame can ask for at once. Past it the frame is
/// a bad request (close 3501), like any malformed frame.
pub const MAX_BATCH: usize = 1000;

/// What one line of a client frame asks for.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// `{}`: the answer to the server's ping (or a client's own keep-alive).
    Pong,
    /// `connect`: the first command of a connection.
    Connect {
        /// The command id.
        id: i64,
        /// The connection token (JWT).
        token: Option<String>,
    },
    /// Any other command, decoded as the v1 door decodes it.
    Command(Command),
}

/// The request fields this server reads; unknown keys (`flag`, `tf`, `delta`, ...) are
/// ignored, as the protocol asks of servers.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(default)]
    id: u32,
    connect: Option<ConnectRequest>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<ChannelRequest>,
    #[serde(borrow)]
    publish: Option<PublishRequest<'a>>,
    presence: Option<ChannelRequest>,
    presence_stats: Option<ChannelRequest>,
    history: Option<HistoryRequest>,
    ping: Option<serde::de::IgnoredAny>,
    send: Option<serde::de::IgnoredAny>,
    rpc: Option<RpcRequest>,
    refresh: Option<RefreshRequest>,
    sub_refresh: Option<ChannelRequest>,
}

#[derive(Deserialize)]
struct ConnectRequest {
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
struct SubscribeRequest {
    channel: String,
    #[serde(default)]
    recover: bool,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    join_leave: bool,
}

#[derive(Deserialize)]
struct ChannelRequest {
    channel: String,
}

#[derive(Deserialize)]
struct PublishRequest<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A position in a channel's stream.
#[derive(Deserialize)]
pub(crate) struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

/// `history`'s request, the same in the client protocol and the server API.
#[derive(Deserialize)]
pub(crate) struct HistoryRequest {
    pub channel: String,
    #[serde(default)]
    limit: i64,
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

impl HistoryRequest {
    /// How many publications to read: 0 (or none) reads the position only, -1 as many as
    /// the server gives.
    pub fn limit(&self) -> u64 {
        match self.limit {
            l if l < 0 => MAX_HISTORY_LIMIT,
            l => (l as u64).min(MAX_HISTORY_LIMIT),
        }
    }
}

#[derive(Deserialize)]
struct RpcRequest {
    #[serde(default)]
    method: String,
}

#[derive(Deserialize)]
struct RefreshRequest {
    #[serde(default)]
    token: String,
}

/// Decodes every line of one client frame, in order, into `out`. A frame that is not
/// newline-separated JSON objects, or holds more than [`MAX_BATCH`] of them, is one error
/// (the session closes with 3501 bad request, as the protocol says).
pub fn decode_frame(
    payload: &[u8],
    out: &mut Vec<Result<Inbound, CommandError>>,
) -> Result<(), CommandError> {
    let text =
        std::str::from_utf8(payload).map_err(|_| CommandError::malformed("frame is not UTF-8"))?;
    // One trailing newline is tolerated; an empty frame is not a command.
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(CommandError::malformed("empty frame"));
    }
    let lines = text.split('\n');
    for (n, line) in lines.enumerate() {
        if n >= MAX_BATCH {
            return Err(CommandError::malformed(format!(
                "more than {MAX_BATCH} commands in one frame"
            )));
        }
        out.push(decode_line(line));
    }
    Ok(())
}

fn decode_line(line: &str) -> Result<Inbound, CommandError> {
    let frame: Frame<'_> = serde_json::from_str(line)
        .map_err(|e| CommandError::malformed(format!("command is not valid JSON: {e}")))?;
    let id = i64::from(frame.id);
    let bad = |why: &str| CommandError::bad(id, why);
    let channel = |c: String| -> Result<String, CommandError> {
        if valid_channel(&c) {
            Ok(c)
        } else {
            Err(bad(
                "channel must be 1..=128 bytes of A-Z a-z 0-9 _ : . @ -",
            ))
        }
    };
    let op = if let Some(connect) = frame.connect {
        return Ok(Inbound::Connect {
            id,
            token: connect.token.filter(|t| !t.is_empty()),
        });
    } else if let Some(s) = frame.subscribe {
        Op::Subscribe {
            channel: channel(s.channel)?,
            since: s.recover.then_some(s.offset),
            epoch: (s.recover && !s.epoch.is_empty()).then_some(s.epoch),
            join_leave: Some(if s.join_leave {
                JoinLeave::Each
            } else {
                JoinLeave::Off
            }),
        }
    } else if let Some(u) = frame.unsubscribe {
        Op::Unsubscribe {
            channel: channel(u.channel)?,
        }
    } else if let Some(p) = frame.publish {
        let data = p.data.get().as_bytes();
        if json_text_depth(data) > MAX_DATA_DEPTH {
            return Err(bad(&format!(
                "data nests arrays and maps deeper than {MAX_DATA_DEPTH} levels"
            )));
        }
        Op::Publish {
            channel: channel(p.channel)?,
            data: Payload::Json(Bytes::copy_from_slice(data)),
            idem: None,
        }
    } else if let Some(p) = frame.presence {
        Op::Presence {
            channel: channel(p.channel)?,
            limit: None,
            cursor: None,
        }
    } else if let Some(p) = frame.presence_stats {
        Op::PresenceStats {
            channel: channel(p.channel)?,
        }
    } else if let Some(h) = frame.history {
        let limit = h.limit();
        let (since, epoch) = match h.since {
            Some(p) => (Some(p.offset), (!p.epoch.is_empty()).then_some(p.epoch)),
            None => (None, None),
        };
        Op::History {
            channel: channel(h.channel)?,
            since,
            before: None,
            limit,
            epoch,
            reverse: h.reverse,
        }
    } else if let Some(r) = frame.refresh {
        if r.token.is_empty() {
            return Err(bad("refresh without a token"));
        }
        Op::Refresh { token: r.token }
    } else if let Some(r) = frame.sub_refresh {
        Op::SubRefresh {
            channel: channel(r.channel)?,
        }
    } else if let Some(r) = frame.rpc {
        Op::Rpc { method: r.method }
    } else if frame.send.is_some() {
        Op::Send
    } else if frame.ping.is_some() {
        Op::Ping
    } else if id == 0 {
        return Ok(Inbound::Pong);
    } else {
        return Err(CommandError::malformed("command names no known method"));
    };
    if id == 0 && op != Op::Send {
        return Err(CommandError::malformed("command without an id"));
    }
    Ok(Inbound::Command(Command { id, op }))
}

/// The protocol's error code for one of ours, and whether the SDK should retry.
pub fn error_code(code: ErrorCode) -> (u32, bool) {
    match code {
        ErrorCode::Internal | ErrorCode::Unavailable => (100, true),
        ErrorCode::Unauthorized => (101, false),
        ErrorCode::Forbidden | ErrorCode::NotSubscribed => (103, false),
        ErrorCode::MethodNotFound => (104, false),
        ErrorCode::LimitExceeded => (106, false),
        ErrorCode::BadRequest | ErrorCode::TooLarge => (107, false),
        ErrorCode::NotAvailable => (108, false),
        ErrorCode::TokenExpired => (109, false),
        ErrorCode::RateLimited => (111, true),
        ErrorCode::UnrecoverablePosition => (112, false),
    }
}

/// The close code and reason text for one of our close reasons. The SDKs reconnect after
/// 3000-3499 and 4000-4499 and stay away after 3500-3999 and 4500-4999; the reason is plain
/// text (a reason that parses as JSON would be read as the legacy advice object).
pub fn close_code(reason: CloseReason) -> (u16, &'static str) {
    match reason {
        CloseReason::Shutdown => (3001, "shutdown"),
        CloseReason::Internal => (3004, "internal server error"),
        CloseReason::TokenExpired => (3005, "connection expired"),
        CloseReason::SlowConsumer => (3008, "slow"),
        CloseReason::HeartbeatTimeout => (3012, "no pong"),
        CloseReason::RateLimited => (3013, "too many requests"),
        CloseReason::Policy => (3501, "bad request"),
        CloseReason::TooLarge => (1009, "message too big"),
        CloseReason::Disconnected { reconnect: true } => (3011, "force reconnect"),
        CloseReason::Disconnected { reconnect: false } => (3503, "force disconnect"),
    }
}

/// Close codes of the first phase, before the connection is a session.
pub mod first_phase {
    /// The token does not verify (or names no user): do not reconnect with it.
    pub const INVALID_TOKEN: (u16, &str) = (3500, "invalid token");
    /// The first command was not `connect`, or the frame was malformed.
    pub const BAD_REQUEST: (u16, &str) = (3501, "bad request");
    /// No `connect` within the deadline.
    pub const STALE: (u16, &str) = (3502, "stale");
    /// The user has as many connections as allowed.
    pub const CONNECTION_LIMIT: (u16, &str) = (3504, "connection limit");
    /// The node is full or draining: try again (elsewhere).
    pub const SHUTDOWN: (u16, &str) = (3001, "shutdown");
}

/// The application-level ping: an empty object.
pub const PING: &str = "{}";

fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"id":N,"<method>":` — the start of a reply; the caller writes the result and `}`.
fn reply_start(out: &mut Vec<u8>, id: i64, method: &str) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b"\":");
}

/// The `connect` reply: the connection's id, the server ping interval (the client answers
/// each ping, and gives up after `ping` + its own delay without one), the token's time left
/// (the SDK sends `refresh` with a new token before it runs out), and the personal channel
/// the connection is subscribed to by the server.
pub fn connect_reply(id: i64, client: &str, ping: u64, exp: u64, personal: &str) -> Bytes {
    let ttl = exp.saturating_sub(fanout::util::unix_secs()).max(1);
    let mut subs = serde_json::Map::new();
    subs.insert(personal.to_owned(), serde_json::json!({}));
    reply(
        id,
        "connect",
        &serde_json::json!({
            "client": client,
            "version": concat!("gateway ", env!("CARGO_PKG_VERSION")),
            "ping": ping,
            "pong": true,
            "expires": true,
            "ttl": ttl,
            "subs": subs,
        }),
    )
}

/// A reply whose result is the JSON object `result`.
pub fn reply(id: i64, method: &str, result: &serde_json::Value) -> Bytes {
    let mut out = Vec::with_capacity(64);
    reply_start(&mut out, id, method);
    let _ = serde_json::to_writer(&mut out, result);
    out.push(b'}');
    Bytes::from(out)
}

/// An error reply.
pub fn error(id: i64, code: ErrorCode, message: &str) -> Bytes {
    let (code, temporary) = error_code(code);
    let mut error = serde_json::json!({ "code": code, "message": message });
    if temporary {
        error["temporary"] = true.into();
    }
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "id": id, "error": error }))
            .expect("a JSON value serializes"),
    )
}

/// A publication as the protocol writes it: `{"data", "offset", "info"}` (the payload
/// spliced in; a MessagePack payload converted to JSON).
fn write_publication(out: &mut Vec<u8>, p: &Publication) {
    let data = p.data.to_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, channel = %p.channel, "unreadable payload");
        Bytes::from_static(b"null")
    });
    out.extend_from_slice(b"{\"data\":");
    out.extend_from_slice(&data);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(p.offset.to_string().as_bytes());
    out.extend_from_slice(b",\"info\":{\"user\":");
    json_str(out, &p.from);
    out.extend_from_slice(b",\"client\":\"\"}}");
}

/// A JSON array of publications.
fn write_publications<'a>(
    out: &mut Vec<u8>,
    publications: impl IntoIterator<Item = &'a Arc<Publication>>,
) {
    out.push(b'[');
    for (i, p) in publications.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_publication(out, p);
    }
    out.push(b']');
}

/// Bytes [`write_publication`] writes for `p`, about (for cutting history to a frame).
fn publication_size(p: &Publication) -> usize {
    p.data.bytes().len() + p.from.len() + 64
}

/// The `pub` push of one publication.
pub fn publication_push(p: &Publication) -> Bytes {
    let mut out = Vec::with_capacity(p.data.bytes().len() + p.channel.len() + 96);
    out.extend_from_slice(b"{\"push\":{\"channel\":");
    json_str(&mut out, &p.channel);
    out.extend_from_slice(b",\"pub\":");
    write_publication(&mut out, p);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// The `subscribe` reply. `recovering`: the client asked to recover; then `recovered` says
/// whether every missed publication is in `publications` (sent inside the reply, and the
/// reply's offset is the client's own, which the publications carry forward).
pub fn subscribe_reply(
    id: i64,
    offset: u64,
    epoch: &str,
    recovering: Option<bool>,
    publications: &[Arc<Publication>],
) -> Bytes {
    let mut out = Vec::with_capacity(
        96 + publications
            .iter()
            .map(|p| publication_size(p))
            .sum::<usize>(),
    );
    reply_start(&mut out, id, "subscribe");
    out.extend_from_slice(b"{\"recoverable\":true,\"positioned\":true,\"epoch\":");
    json_str(&mut out, epoch);
    if offset > 0 {
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(offset.to_string().as_bytes());
    }
    if let Some(recovered) = recovering {
        out.extend_from_slice(b",\"was_recovering\":true");
        if recovered {
            out.extend_from_slice(b",\"recovered\":true");
        }
    }
    if !publications.is_empty() {
        out.extend_from_slice(b",\"publications\":");
        write_publications(&mut out, publications);
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// The `history` reply: publications (cut to `max_bytes`, keeping the newest without
/// `since` and the oldest with it), the channel's epoch and offset; newest first when
/// `reverse`.
pub fn history_reply(
    id: i64,
    publications: &[Arc<Publication>],
    offset: u64,
    epoch: &str,
    max_bytes: usize,
    keep_newest: bool,
    reverse: bool,
) -> Bytes {
    let mut kept: Vec<&Arc<Publication>> = Vec::with_capacity(publications.len());
    let mut bytes = 0;
    let ordered: Box<dyn Iterator<Item = &Arc<Publication>>> = if keep_newest {
        Box::new(publications.iter().rev())
    } else {
        Box::new(publications.iter())
    };
    for p in ordered {
        bytes += publication_size(p);
        if bytes > max_bytes {
            break;
        }
        kept.push(p);
    }
    // `kept` runs newest first when `keep_newest`: turn it to the order asked for.
    if keep_newest != reverse {
        kept.reverse();
    }
    let mut out = Vec::with_capacity(bytes + 96);
    reply_start(&mut out, id, "history");
    out.extend_from_slice(b"{\"publications\":");
    write_publications(&mut out, kept);
    out.extend_from_slice(b",\"epoch\":");
    json_str(&mut out, epoch);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(offset.to_string().as_bytes());
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// A `join` or `leave` push for `user` (presence here is per user: the user id stands for
/// the client id too).
pub fn presence_push(channel: &str, joined: bool, user: &str) -> Bytes {
    let mut out = Vec::with_capacity(channel.len() + 2 * user.len() + 64);
    out.extend_from_slice(b"{\"push\":{\"channel\":");
    json_str(&mut out, channel);
    out.extend_from_slice(if joined {
        b",\"join\":{\"info\":{\"user\":"
    } else {
        b",\"leave\":{\"info\":{\"user\":"
    });
    json_str(&mut out, user);
    out.extend_from_slice(b",\"client\":");
    json_str(&mut out, user);
    out.extend_from_slice(b"}}}}");
    Bytes::from(out)
}

/// The `unsubscribe` push: 2500 (insufficient state) makes the SDK subscribe again and
/// recover; 2000 ends the subscription.
pub fn unsubscribe_push(channel: &str, reason: UnsubscribeReason) -> Bytes {
    let (code, text) = match reason {
        UnsubscribeReason::InsufficientState => (2500, "insufficient state"),
        UnsubscribeReason::Server => (2000, "server unsubscribe"),
        UnsubscribeReason::Forbidden => (2000, "permission denied"),
    };
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "push": { "channel": channel, "unsubscribe": { "code": code, "reason": text } }
        }))
        .expect("a JSON value serializes"),
    )
}

/// Joins several frames into one, newline-separated (what one WebSocket frame may carry).
pub fn join_frames<'a>(frames: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut out = Vec::new();
    for f in frames {
        if !out.is_empty() {
            out.push(b'\n');
        }
        out.extend_from_slice(f);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn decode(text: &str) -> Vec<Result<Inbound, CommandError>> {
        let mut out = Vec::new();
        decode_frame(text.as_bytes(), &mut out).unwrap();
        out
    }

    #[test]
    fn a_frame_carries_commands_in_order() {
        let got = decode(
            "{\"connect\":{\"token\":\"t\",\"name\":\"js\"},\"id\":1}\n\
             {\"subscribe\":{\"channel\":\"room:a\",\"flag\":1},\"id\":2}\n{}",
        );
        assert_eq!(
            got[0],
            Ok(Inbound::Connect {
                id: 1,
                token: Some("t".into())
            })
        );
        assert_eq!(
            got[1],
            Ok(Inbound::Command(Command {
                id: 2,
                op: Op::Subscribe {
                    channel: "room:a".into(),
                    since: None,
                    epoch: None,
                    join_leave: Some(JoinLeave::Off),
                }
            }))
        );
        assert_eq!(got[2], Ok(Inbound::Pong));
    }

    #[test]
    fn recovery_position_and_publish_data_are_read() {
        let got = decode(
            "{\"subscribe\":{\"channel\":\"c\",\"recover\":true,\"offset\":7,\"epoch\":\"e\",\"join_leave\":true},\"id\":3}\n\
             {\"publish\":{\"channel\":\"c\",\"data\":{\"text\":\"hi\"}},\"id\":4}",
        );
        let Ok(Inbound::Command(Command {
            op:
                Op::Subscribe {
                    since,
                    epoch,
                    join_leave,
                    ..
                },
            ..
        })) = &got[0]
        else {
            panic!("{:?}", got[0])
        };
        assert_eq!(
            (*since, epoch.as_deref(), *join_leave),
            (Some(7), Some("e"), Some(JoinLeave::Each))
        );
        let Ok(Inbound::Command(Command {
            op: Op::Publish { data, .. },
            ..
        })) = &got[1]
        else {
            panic!("{:?}", got[1])
        };
        assert_eq!(
            data,
            &Payload::Json(Bytes::from_static(b"{\"text\":\"hi\"}"))
        );
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut out = Vec::new();
        assert!(decode_frame(b"", &mut out).is_err());
        assert!(decode_frame(b"\xff", &mut out).is_err());
        let many = vec!["{}"; MAX_BATCH + 1].join("\n");
        assert!(decode_frame(many.as_bytes(), &mut out).is_err());
        // Line by line: garbage, a command without an id, an unknown method, a bad field.
        let got = decode(
            "nope\n{\"publish\":{\"channel\":\"c\",\"data\":1}}\n{\"id\":5,\"frobnicate\":{}}\n\
             {\"id\":6,\"subscribe\":{\"channel\":\"\"}}",
        );
        assert!(got[0].as_ref().is_err_and(|e| e.malformed));
        assert!(got[1].as_ref().is_err_and(|e| e.malformed));
        assert!(got[2].as_ref().is_err_and(|e| e.malformed));
        assert!(got[3].as_ref().is_err_and(|e| !e.malformed && e.id == 6));
        let deep = format!(
            "{{\"id\":7,\"publish\":{{\"channel\":\"c\",\"data\":{}{}}}}}",
            "[".repeat(MAX_DATA_DEPTH + 1),
            "]".repeat(MAX_DATA_DEPTH + 1)
        );
        assert!(decode(&deep)[0].as_ref().is_err_and(|e| e.id == 7));
    }

    #[test]
    fn replies_and_pushes_read_as_the_sdks_expect() {
        let p = Arc::new(Publication {
            channel: "room:a".into(),
            offset: 9,
            epoch: "e".into(),
            from: "alice".into(),
            data: Payload::from_value(&json!({"text": "hi"})),
            ts: 1,
        });
        let push: Value = serde_json::from_slice(&publication_push(&p)).unwrap();
        assert_eq!(push["push"]["channel"], "room:a");
        assert_eq!(push["push"]["pub"]["data"]["text"], "hi");
        assert_eq!(push["push"]["pub"]["offset"], 9);
        assert_eq!(push["push"]["pub"]["info"]["user"], "alice");
        let sub: Value = serde_json::from_slice(&subscribe_reply(
            2,
            8,
            "e",
            Some(true),
            std::slice::from_ref(&p),
        ))
        .unwrap();
        assert_eq!(sub["id"], 2);
        let s = &sub["subscribe"];
        assert_eq!(
            (
                &s["recoverable"],
                &s["recovered"],
                &s["was_recovering"],
                &s["offset"]
            ),
            (&json!(true), &json!(true), &json!(true), &json!(8))
        );
        assert_eq!(s["publications"][0]["offset"], 9);
        let history: Value = serde_json::from_slice(&history_reply(
            3,
            &[p.clone(), p.clone()],
            9,
            "e",
            usize::MAX,
            true,
            false,
        ))
        .unwrap();
        assert_eq!(
            history["history"]["publications"].as_array().unwrap().len(),
            2
        );
        assert_eq!(history["history"]["epoch"], "e");
        let empty: Value =
            serde_json::from_slice(&history_reply(4, &[], 0, "e", usize::MAX, true, false))
                .unwrap();
        assert_eq!(empty["history"]["publications"], json!([]));
        let e: Value =
            serde_json::from_slice(&error(5, ErrorCode::RateLimited, "slow down")).unwrap();
        assert_eq!(
            e,
            json!({"id": 5, "error": {"code": 111, "message": "slow down", "temporary": true}})
        );
    }
}
