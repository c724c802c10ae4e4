//! Centrifugo's client protocol: what the official SDKs (centrifuge-js, centrifuge-python,
//! -swift, -java, -dart, -go, -csharp) speak at `/connection/websocket`, in its two
//! encodings: JSON (text frames, [`json`]) and Protobuf (binary frames, subprotocol
//! `centrifuge-protobuf`, [`proto`]).
//!
//! This module only translates: frames in become the same [`Command`]s the v1 door decodes
//! (plus `connect`, which the session's first phase handles); the node's answers and pushes
//! go out in this protocol's words. The node never learns which protocol a client speaks.
//! Both encodings decode into one [`Request`] first, so that one function ([`to_inbound`])
//! holds the rules (ids, channel names, data depth) for both.
//!
//! Payloads are JSON in both encodings: a Protobuf client's `data` bytes must be JSON text
//! (they are checked), and it receives JSON text in its publications' `data`. One channel is
//! one channel for every client, whatever it speaks, so a payload must have a form every
//! subscriber can read.

pub(crate) mod json;
mod proto;

pub(crate) use json::HistoryRequest;

use super::command::{MAX_DATA_DEPTH, MAX_HISTORY_LIMIT, json_text_depth};
use super::frames::Answer;
use super::{CloseReason, Command, CommandError, Encoding, ErrorCode, Op, UnsubscribeReason};
use crate::acl::{JoinLeave, valid_channel};
use bytes::Bytes;
use fanout::{Payload, Publication};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Most commands one frame may carry. A frame is already bounded in bytes (the largest
/// frame setting); this bounds the work one frame can ask for at once. Past it the frame is
/// a bad request (close 3501), like any malformed frame.
pub const MAX_BATCH: usize = 1000;

/// What one command of a client frame asks for.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// An empty command: the answer to the server's ping (or a client's own keep-alive).
    Pong,
    /// `connect`: the first command of a connection.
    Connect {
        /// The command id.
        id: i64,
        /// The connection token (JWT).
        token: Option<String>,
        /// What the connect proxy is told besides the token (none when the client sent
        /// nothing of it).
        info: Option<Box<ConnectInfo>>,
    },
    /// Any other command, decoded as the v1 door decodes it.
    Command(Command),
}

/// What a `connect` carries for the connect proxy: its `data` (JSON text), and the SDK's
/// name and version.
#[derive(Debug, Default, PartialEq)]
pub struct ConnectInfo {
    /// JSON text.
    pub data: Option<Bytes>,
    /// The SDK's name.
    pub name: String,
    /// The SDK's version.
    pub version: String,
}

/// The one delta type: Fossil's delta format (see `crate::delta`).
pub const DELTA_FOSSIL: &str = "fossil";

/// One command as either encoding reads it, before the shared rules apply. Fields this
/// server does not read (`flag`, `tf`, `data` of `connect`, ...) are ignored, as the
/// protocol asks of servers.
#[derive(Debug)]
pub(crate) enum Request<'a> {
    /// No method field: a pong.
    Empty,
    Connect {
        token: String,
        /// JSON text.
        data: Option<&'a [u8]>,
        name: String,
        version: String,
    },
    Subscribe {
        channel: String,
        recover: bool,
        offset: u64,
        epoch: String,
        join_leave: bool,
        token: String,
        /// The delta type asked for (`""`: none).
        delta: String,
    },
    Unsubscribe {
        channel: String,
    },
    /// `data` is JSON text (checked by the decoder).
    Publish {
        channel: String,
        data: &'a [u8],
    },
    Presence {
        channel: String,
    },
    PresenceStats {
        channel: String,
    },
    History {
        channel: String,
        limit: i64,
        since: Option<(u64, String)>,
        reverse: bool,
    },
    Ping,
    Send,
    Rpc {
        method: String,
        /// JSON text.
        data: Option<&'a [u8]>,
    },
    Refresh {
        token: String,
    },
    SubRefresh {
        channel: String,
        token: String,
    },
}

/// How many publications a history `limit` reads: 0 reads the position only, -1 (or any
/// negative) as many as the server gives.
pub(crate) fn history_limit(limit: i64) -> u64 {
    match limit {
        l if l < 0 => MAX_HISTORY_LIMIT,
        l => (l as u64).min(MAX_HISTORY_LIMIT),
    }
}

/// The rules both encodings share: a command has an id (but `send`), channels are valid
/// names, `data` nests at most [`MAX_DATA_DEPTH`] levels.
pub(crate) fn to_inbound(id: u32, request: Request<'_>) -> Result<Inbound, CommandError> {
    let id = i64::from(id);
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
    let op = match request {
        Request::Empty if id == 0 => return Ok(Inbound::Pong),
        Request::Empty => return Err(CommandError::malformed("command names no known method")),
        Request::Connect {
            token,
            data,
            name,
            version,
        } => {
            if data.is_some_and(|d| json_text_depth(d) > MAX_DATA_DEPTH) {
                return Err(bad(&format!(
                    "data nests arrays and maps deeper than {MAX_DATA_DEPTH} levels"
                )));
            }
            let info = (data.is_some() || !name.is_empty() || !version.is_empty()).then(|| {
                Box::new(ConnectInfo {
                    data: data.map(Bytes::copy_from_slice),
                    name,
                    version,
                })
            });
            return Ok(Inbound::Connect {
                id,
                token: (!token.is_empty()).then_some(token),
                info,
            });
        }
        Request::Subscribe {
            channel: c,
            recover,
            offset,
            epoch,
            join_leave,
            token,
            delta,
        } => Op::Subscribe {
            delta: match delta.as_str() {
                "" => false,
                DELTA_FOSSIL => true,
                _ => return Err(bad("delta must be \"fossil\" (or left out)")),
            },
            channel: channel(c)?,
            since: recover.then_some(offset),
            epoch: (recover && !epoch.is_empty()).then_some(epoch),
            join_leave: Some(if join_leave {
                JoinLeave::Each
            } else {
                JoinLeave::Off
            }),
            token: (!token.is_empty()).then_some(token),
        },
        Request::Unsubscribe { channel: c } => Op::Unsubscribe {
            channel: channel(c)?,
        },
        Request::Publish { channel: c, data } => {
            if json_text_depth(data) > MAX_DATA_DEPTH {
                return Err(bad(&format!(
                    "data nests arrays and maps deeper than {MAX_DATA_DEPTH} levels"
                )));
            }
            Op::Publish {
                channel: channel(c)?,
                data: Payload::Json(Bytes::copy_from_slice(data)),
                idem: None,
            }
        }
        Request::Presence { channel: c } => Op::Presence {
            channel: channel(c)?,
            limit: None,
            cursor: None,
        },
        Request::PresenceStats { channel: c } => Op::PresenceStats {
            channel: channel(c)?,
        },
        Request::History {
            channel: c,
            limit,
            since,
            reverse,
        } => {
            let (since, epoch) = match since {
                Some((offset, epoch)) => (Some(offset), (!epoch.is_empty()).then_some(epoch)),
                None => (None, None),
            };
            Op::History {
                channel: channel(c)?,
                since,
                before: None,
                limit: history_limit(limit),
                epoch,
                reverse,
            }
        }
        Request::Refresh { token } => {
            if token.is_empty() {
                return Err(bad("refresh without a token"));
            }
            Op::Refresh { token }
        }
        Request::SubRefresh { channel: c, token } => {
            if token.is_empty() {
                return Err(bad("sub_refresh without a token"));
            }
            Op::SubRefresh {
                channel: channel(c)?,
                token,
            }
        }
        Request::Rpc { method, data } => {
            if data.is_some_and(|d| json_text_depth(d) > MAX_DATA_DEPTH) {
                return Err(bad(&format!(
                    "data nests arrays and maps deeper than {MAX_DATA_DEPTH} levels"
                )));
            }
            Op::Rpc {
                method,
                data: data.map(|d| Payload::Json(Bytes::copy_from_slice(d))),
            }
        }
        Request::Send => Op::Send,
        Request::Ping => Op::Ping,
    };
    if id == 0 && op != Op::Send {
        return Err(CommandError::malformed("command without an id"));
    }
    Ok(Inbound::Command(Command { id, op }))
}

/// Decodes every command of one client frame, in order, into `out`. A frame that is not
/// well formed in its encoding (newline-separated JSON objects; varint-delimited Protobuf
/// messages), or holds more than [`MAX_BATCH`] commands, is one error: the session closes
/// with 3501 (bad request), as the protocol says.
pub fn decode_frame(
    encoding: Encoding,
    payload: &[u8],
    out: &mut Vec<Result<Inbound, CommandError>>,
) -> Result<(), CommandError> {
    match encoding {
        Encoding::CentrifugeProtobuf => proto::decode_frame(payload, out),
        _ => json::decode_frame(payload, out),
    }
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
        ErrorCode::Backend { code, temporary } => (code, temporary),
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
    /// The connect proxy refused (its error went in the reply): do not reconnect as is.
    pub const UNAUTHORIZED: (u16, &str) = (3500, "unauthorized");
    /// The connect proxy failed or did not answer in time: try again.
    pub const BACKEND_FAILED: (u16, &str) = (3004, "internal server error");
}

/// The application-level ping: an empty object in JSON, an empty message (its length, one
/// zero byte) in Protobuf. The SDKs answer it in kind.
pub fn ping(encoding: Encoding) -> Message {
    match encoding {
        Encoding::CentrifugeProtobuf => Message::Binary(Bytes::from_static(&[0])),
        _ => Message::Text(Utf8Bytes::from_static("{}")),
    }
}

/// The `connect` reply: the connection's id, the server ping interval (the client answers
/// each ping, and gives up after `ping` + its own delay without one), the token's time left
/// (the SDK sends `refresh` with a new token before it runs out; `None`: nothing to refresh),
/// and the personal channel the connection is subscribed to by the server.
pub fn connect_reply(
    encoding: Encoding,
    id: i64,
    client: &str,
    ping: u64,
    exp: Option<u64>,
    personal: &str,
    emulation: Option<&Emulation>,
) -> Bytes {
    let connect = ConnectResult {
        client,
        version: concat!("gateway ", env!("CARGO_PKG_VERSION")),
        ping: u32::try_from(ping).unwrap_or(u32::MAX),
        ttl: exp.map(ttl),
        personal,
        emulation,
    };
    match encoding {
        Encoding::CentrifugeProtobuf => proto::connect_reply(id, &connect),
        _ => json::connect_reply(id, &connect),
    }
}

/// What the `connect` reply says, in either encoding.
pub(crate) struct ConnectResult<'a> {
    pub client: &'a str,
    pub version: &'static str,
    pub ping: u32,
    /// Seconds until the client must `refresh`; `None`: it need not (no expiry, or the
    /// server refreshes: a connection the connect proxy let in).
    pub ttl: Option<u32>,
    pub personal: &'a str,
    pub emulation: Option<&'a Emulation>,
}

/// What an HTTP-streaming or SSE client POSTs to `/emulation`: commands for its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulationRequest {
    /// The node that holds the session.
    pub node: String,
    /// The session's id.
    pub session: String,
    /// Commands, as the connection's encoding frames them (JSON lines; varint-delimited
    /// Protobuf).
    pub data: Bytes,
}

/// Reads an `/emulation` body: Protobuf for `protobuf`, else JSON. `None`: not one.
pub fn emulation_request(protobuf: bool, body: &[u8]) -> Option<EmulationRequest> {
    if protobuf {
        proto::emulation_request(body)
    } else {
        json::emulation_request(body)
    }
}

/// The `disconnect` push that ends an HTTP-streaming or SSE stream (a WebSocket says it
/// with its close frame).
pub fn disconnect_push(encoding: Encoding, code: u16, reason: &str) -> Bytes {
    match encoding {
        Encoding::CentrifugeProtobuf => proto::disconnect_push(code, reason),
        _ => json::disconnect_push(code, reason),
    }
}

/// Where an HTTP-streaming or SSE client sends its commands (`/emulation`): the connect reply
/// says `session` and `node`, and the client names both in each request.
#[derive(Debug, Clone)]
pub struct Emulation {
    /// The session's id: 128 random bits, known only to the client (its stream carries it).
    pub session: Arc<str>,
    /// The node that holds the session.
    pub node: Arc<str>,
}

/// Seconds from now to `exp` (at least 1: 0 would read as "does not expire").
pub(crate) fn ttl(exp: u64) -> u32 {
    u32::try_from(exp.saturating_sub(fanout::util::unix_secs()).max(1)).unwrap_or(u32::MAX)
}

/// The reply carrying `answer`.
pub fn answer(encoding: Encoding, id: i64, answer: &Answer<'_>) -> Bytes {
    match encoding {
        Encoding::CentrifugeProtobuf => proto::answer(id, answer),
        _ => json::answer(id, answer),
    }
}

/// An error reply.
pub fn error(encoding: Encoding, id: i64, code: ErrorCode, message: &str) -> Bytes {
    match encoding {
        Encoding::CentrifugeProtobuf => proto::error(id, code, message),
        _ => json::error(id, code, message),
    }
}

/// The `pub` push of one publication.
pub fn publication_push(encoding: Encoding, p: &Publication) -> Bytes {
    match encoding {
        Encoding::CentrifugeProtobuf => proto::publication_push(p, None),
        _ => json::publication_push(p, None),
    }
}

/// The `pub` push of one publication to a subscription with deltas: `delta` from the
/// previous publication's payload, or (`None`) the whole payload. In JSON `data` is then a
/// string either way, which the caller's delta must allow (UTF-8; see `crate::delta`).
pub fn delta_push(encoding: Encoding, p: &Publication, delta: Option<&[u8]>) -> Bytes {
    match encoding {
        Encoding::CentrifugeProtobuf => proto::publication_push(p, delta),
        _ => json::publication_push(p, Some(delta)),
    }
}

/// A publication's payload as JSON text (a MessagePack payload converted).
pub(crate) fn json_data(p: &Publication) -> Bytes {
    p.data.to_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, channel = %p.channel, "unreadable payload");
        Bytes::from_static(b"null")
    })
}

/// What the `subscribe` reply says.
pub struct SubscribeResult<'a> {
    /// The stream position: the channel's, or the client's own when recovered (the
    /// publications in the reply carry it forward).
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: &'a str,
    /// `Some` when the client asked to recover: whether every missed publication is in
    /// `publications`, sent inside the reply.
    pub recovering: Option<bool>,
    /// The missed publications, oldest first.
    pub publications: &'a [Arc<Publication>],
    /// A subscription token's expiry, Unix seconds: the reply says `expires` and `ttl`.
    pub expires: Option<u64>,
    /// Fossil deltas granted: the reply says `delta: true` (and in JSON, `data` of the
    /// publications in it are strings).
    pub delta: bool,
}

/// The `subscribe` reply.
pub fn subscribe_reply(encoding: Encoding, id: i64, result: SubscribeResult<'_>) -> Bytes {
    match encoding {
        Encoding::CentrifugeProtobuf => proto::subscribe_reply(id, &result),
        _ => json::subscribe_reply(id, &result),
    }
}

/// Bytes a publication takes in a reply, about (for cutting history to a frame).
fn publication_size(p: &Publication) -> usize {
    p.data.bytes().len() + p.from.len() + 64
}

/// The publications a history reply keeps: cut to `max_bytes`, keeping the newest without
/// `since` and the oldest with it; newest first when `reverse`.
fn history_page(
    publications: &[Arc<Publication>],
    max_bytes: usize,
    keep_newest: bool,
    reverse: bool,
) -> Vec<&Arc<Publication>> {
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
    kept
}

/// The `history` reply: a page of publications (see [`history_page`]), the channel's epoch
/// and offset.
pub fn history_reply(encoding: Encoding, id: i64, reply: super::HistoryReply<'_>) -> Bytes {
    let page = history_page(
        reply.publications,
        reply.max_bytes,
        reply.keep_newest,
        reply.reverse,
    );
    match encoding {
        Encoding::CentrifugeProtobuf => proto::history_reply(id, &page, reply.offset, reply.epoch),
        _ => json::history_reply(id, &page, reply.offset, reply.epoch),
    }
}

/// A `join` or `leave` push for `user` (presence here is per user: the user id stands for
/// the client id too).
pub fn presence_push(encoding: Encoding, channel: &str, joined: bool, user: &str) -> Bytes {
    match encoding {
        Encoding::CentrifugeProtobuf => proto::presence_push(channel, joined, user),
        _ => json::presence_push(channel, joined, user),
    }
}

/// The `unsubscribe` push's code and reason: 2500 (insufficient state) makes the SDK
/// subscribe again and recover, 2501 (expired) subscribe again with a new subscription
/// token; 2000 ends the subscription.
fn unsubscribe_code(reason: UnsubscribeReason) -> (u32, &'static str) {
    match reason {
        UnsubscribeReason::InsufficientState => (2500, "insufficient state"),
        UnsubscribeReason::Server => (2000, "server unsubscribe"),
        UnsubscribeReason::Forbidden => (2000, "permission denied"),
        UnsubscribeReason::Expired => (2501, "subscription expired"),
    }
}

/// The `unsubscribe` push.
pub fn unsubscribe_push(encoding: Encoding, channel: &str, reason: UnsubscribeReason) -> Bytes {
    let (code, text) = unsubscribe_code(reason);
    match encoding {
        Encoding::CentrifugeProtobuf => proto::unsubscribe_push(channel, code, text),
        _ => json::unsubscribe_push(channel, code, text),
    }
}

/// The `subscribe` push: the server subscribed the connection to `channel` (the SDKs'
/// server-side subscription).
pub fn subscribe_push(encoding: Encoding, channel: &str) -> Bytes {
    match encoding {
        Encoding::CentrifugeProtobuf => proto::subscribe_push(channel),
        _ => json::subscribe_push(channel),
    }
}

/// The `refresh` push: the connection now expires at `expire_at` (Unix seconds), or never.
pub fn refresh_push(encoding: Encoding, expire_at: Option<u64>) -> Bytes {
    let ttl = expire_at.map(ttl);
    match encoding {
        Encoding::CentrifugeProtobuf => proto::refresh_push(ttl),
        _ => json::refresh_push(ttl),
    }
}

/// Joins several frames into one (what one WebSocket frame may carry): newline-separated in
/// JSON, simply one after another in Protobuf (each is length-delimited).
pub fn join_frames<'a>(encoding: Encoding, frames: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut out = Vec::new();
    for f in frames {
        if !out.is_empty() && encoding != Encoding::CentrifugeProtobuf {
            out.push(b'\n');
        }
        out.extend_from_slice(f);
    }
    Bytes::from(out)
}
