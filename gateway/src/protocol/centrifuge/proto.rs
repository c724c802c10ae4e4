//! Centrifugo's client protocol, Protobuf encoding (subprotocol `centrifuge-protobuf`).
//!
//! Each binary WebSocket frame holds one or more messages, each preceded by its length as a
//! varint (Protobuf's length-delimited framing): `Command`s from the client, `Reply`s from
//! the server. An empty message (the single byte 0) is the ping and its pong.
//!
//! The messages are written out here with prost's derive rather than generated from the
//! protocol's `client.proto` by `prost-build`: that would need `protoc` at build time, and
//! the server reads and writes only a part of the schema. The field numbers and types below
//! are the schema's (`centrifugal/protocol`, `client.proto`); fields this server neither reads
//! nor writes are left out, and prost skips them when decoding, as Protobuf requires.

use super::{ConnectResult, Inbound, MAX_BATCH, Request, error_code, json_data, to_inbound};
use crate::protocol::frames::Answer;
use crate::protocol::{CommandError, ErrorCode};
use bytes::Bytes;
use fanout::Publication as Pub;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, PartialEq, prost::Message)]
struct Command {
    #[prost(uint32, tag = "1")]
    id: u32,
    #[prost(message, optional, tag = "4")]
    connect: Option<ConnectRequest>,
    #[prost(message, optional, tag = "5")]
    subscribe: Option<SubscribeRequest>,
    #[prost(message, optional, tag = "6")]
    unsubscribe: Option<ChannelRequest>,
    #[prost(message, optional, tag = "7")]
    publish: Option<PublishRequest>,
    #[prost(message, optional, tag = "8")]
    presence: Option<ChannelRequest>,
    #[prost(message, optional, tag = "9")]
    presence_stats: Option<ChannelRequest>,
    #[prost(message, optional, tag = "10")]
    history: Option<HistoryRequest>,
    #[prost(message, optional, tag = "11")]
    ping: Option<Empty>,
    #[prost(message, optional, tag = "12")]
    send: Option<Empty>,
    #[prost(message, optional, tag = "13")]
    rpc: Option<RpcRequest>,
    #[prost(message, optional, tag = "14")]
    refresh: Option<RefreshRequest>,
    #[prost(message, optional, tag = "15")]
    sub_refresh: Option<SubRefreshRequest>,
}

/// A message whose fields this server does not read or write (`PingRequest`,
/// `SendRequest`, `UnsubscribeResult`, `PublishResult`, `PingResult`).
#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
struct ConnectRequest {
    #[prost(string, tag = "1")]
    token: String,
    #[prost(bytes = "bytes", tag = "2")]
    data: Bytes,
    #[prost(string, tag = "4")]
    name: String,
    #[prost(string, tag = "5")]
    version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SubscribeRequest {
    #[prost(string, tag = "1")]
    channel: String,
    #[prost(string, tag = "2")]
    token: String,
    #[prost(bool, tag = "3")]
    recover: bool,
    #[prost(string, tag = "6")]
    epoch: String,
    #[prost(uint64, tag = "7")]
    offset: u64,
    #[prost(bool, tag = "11")]
    join_leave: bool,
    #[prost(string, tag = "12")]
    delta: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ChannelRequest {
    #[prost(string, tag = "1")]
    channel: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PublishRequest {
    #[prost(string, tag = "1")]
    channel: String,
    #[prost(bytes = "bytes", tag = "2")]
    data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StreamPosition {
    #[prost(uint64, tag = "1")]
    offset: u64,
    #[prost(string, tag = "2")]
    epoch: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HistoryRequest {
    #[prost(string, tag = "1")]
    channel: String,
    #[prost(int32, tag = "7")]
    limit: i32,
    #[prost(message, optional, tag = "8")]
    since: Option<StreamPosition>,
    #[prost(bool, tag = "9")]
    reverse: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcRequest {
    #[prost(bytes = "bytes", tag = "1")]
    data: Bytes,
    #[prost(string, tag = "2")]
    method: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RefreshRequest {
    #[prost(string, tag = "1")]
    token: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SubRefreshRequest {
    #[prost(string, tag = "1")]
    channel: String,
    #[prost(string, tag = "2")]
    token: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Reply {
    #[prost(uint32, tag = "1")]
    id: u32,
    #[prost(message, optional, tag = "2")]
    error: Option<Error>,
    #[prost(message, optional, tag = "4")]
    push: Option<Push>,
    #[prost(message, optional, tag = "5")]
    connect: Option<ConnectResultMsg>,
    #[prost(message, optional, tag = "6")]
    subscribe: Option<SubscribeResult>,
    #[prost(message, optional, tag = "7")]
    unsubscribe: Option<Empty>,
    #[prost(message, optional, tag = "8")]
    publish: Option<Empty>,
    #[prost(message, optional, tag = "9")]
    presence: Option<PresenceResult>,
    #[prost(message, optional, tag = "10")]
    presence_stats: Option<PresenceStatsResult>,
    #[prost(message, optional, tag = "11")]
    history: Option<HistoryResult>,
    #[prost(message, optional, tag = "12")]
    ping: Option<Empty>,
    #[prost(message, optional, tag = "13")]
    rpc: Option<RpcResult>,
    #[prost(message, optional, tag = "14")]
    refresh: Option<RefreshResult>,
    #[prost(message, optional, tag = "15")]
    sub_refresh: Option<SubRefreshResult>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcResult {
    /// JSON text, as every payload here.
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Error {
    #[prost(uint32, tag = "1")]
    code: u32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(bool, tag = "3")]
    temporary: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Push {
    #[prost(string, tag = "2")]
    channel: String,
    #[prost(message, optional, tag = "4")]
    r#pub: Option<Publication>,
    #[prost(message, optional, tag = "5")]
    join: Option<JoinLeave>,
    #[prost(message, optional, tag = "6")]
    leave: Option<JoinLeave>,
    #[prost(message, optional, tag = "7")]
    unsubscribe: Option<Unsubscribe>,
    /// `Subscribe`: this server writes none of its fields.
    #[prost(message, optional, tag = "9")]
    subscribe: Option<Empty>,
    #[prost(message, optional, tag = "11")]
    disconnect: Option<DisconnectPush>,
    #[prost(message, optional, tag = "12")]
    refresh: Option<RefreshPush>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DisconnectPush {
    #[prost(uint32, tag = "1")]
    code: u32,
    #[prost(string, tag = "2")]
    reason: String,
}

/// `EmulationRequest`: what an HTTP-streaming or SSE client POSTs to `/emulation`.
#[derive(Clone, PartialEq, prost::Message)]
struct EmulationRequestMsg {
    #[prost(string, tag = "1")]
    node: String,
    #[prost(string, tag = "2")]
    session: String,
    #[prost(bytes = "bytes", tag = "3")]
    data: Bytes,
}

/// An `EmulationRequest` message (not length-delimited).
pub(super) fn emulation_request(body: &[u8]) -> Option<super::EmulationRequest> {
    let m = EmulationRequestMsg::decode(body).ok()?;
    Some(super::EmulationRequest {
        node: m.node,
        session: m.session,
        data: m.data,
    })
}

/// The `disconnect` push that ends a stream.
pub(super) fn disconnect_push(code: u16, reason: &str) -> Bytes {
    push("", |push| {
        push.disconnect = Some(DisconnectPush {
            code: u32::from(code),
            reason: reason.to_owned(),
        })
    })
}

#[derive(Clone, PartialEq, prost::Message)]
struct RefreshPush {
    #[prost(bool, tag = "1")]
    expires: bool,
    #[prost(uint32, tag = "2")]
    ttl: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ClientInfo {
    #[prost(string, tag = "1")]
    user: String,
    #[prost(string, tag = "2")]
    client: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Publication {
    #[prost(bytes = "bytes", tag = "4")]
    data: Bytes,
    #[prost(message, optional, tag = "5")]
    info: Option<ClientInfo>,
    #[prost(uint64, tag = "6")]
    offset: u64,
    #[prost(bool, tag = "8")]
    delta: bool,
}

/// `Join` and `Leave` have the same shape: `info` at field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct JoinLeave {
    #[prost(message, optional, tag = "1")]
    info: Option<ClientInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Unsubscribe {
    #[prost(uint32, tag = "2")]
    code: u32,
    #[prost(string, tag = "3")]
    reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConnectResultMsg {
    #[prost(string, tag = "1")]
    client: String,
    #[prost(string, tag = "2")]
    version: String,
    #[prost(bool, tag = "3")]
    expires: bool,
    #[prost(uint32, tag = "4")]
    ttl: u32,
    /// A `map<string, SubscribeResult>` on the wire, written as its entries: prost leaves a
    /// map entry's default value out, which protobuf.js (centrifuge-js) then reads as
    /// `null`; an entry's `value` as a present optional message is always written.
    #[prost(message, repeated, tag = "6")]
    subs: Vec<SubsEntry>,
    #[prost(uint32, tag = "7")]
    ping: u32,
    #[prost(bool, tag = "8")]
    pong: bool,
    #[prost(string, tag = "9")]
    session: String,
    #[prost(string, tag = "10")]
    node: String,
}

/// One entry of `ConnectResult.subs` (a map entry: key 1, value 2).
#[derive(Clone, PartialEq, prost::Message)]
struct SubsEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<SubscribeResult>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SubscribeResult {
    #[prost(bool, tag = "1")]
    expires: bool,
    #[prost(uint32, tag = "2")]
    ttl: u32,
    #[prost(bool, tag = "3")]
    recoverable: bool,
    #[prost(string, tag = "6")]
    epoch: String,
    #[prost(message, repeated, tag = "7")]
    publications: Vec<Publication>,
    #[prost(bool, tag = "8")]
    recovered: bool,
    #[prost(uint64, tag = "9")]
    offset: u64,
    #[prost(bool, tag = "10")]
    positioned: bool,
    #[prost(bool, tag = "12")]
    was_recovering: bool,
    #[prost(bool, tag = "13")]
    delta: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PresenceResult {
    #[prost(map = "string, message", tag = "1")]
    presence: HashMap<String, ClientInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PresenceStatsResult {
    #[prost(uint32, tag = "1")]
    num_clients: u32,
    #[prost(uint32, tag = "2")]
    num_users: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HistoryResult {
    #[prost(message, repeated, tag = "1")]
    publications: Vec<Publication>,
    #[prost(string, tag = "2")]
    epoch: String,
    #[prost(uint64, tag = "3")]
    offset: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RefreshResult {
    #[prost(string, tag = "1")]
    client: String,
    #[prost(bool, tag = "3")]
    expires: bool,
    #[prost(uint32, tag = "4")]
    ttl: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SubRefreshResult {
    #[prost(bool, tag = "1")]
    expires: bool,
    #[prost(uint32, tag = "2")]
    ttl: u32,
}

/// Decodes every message of one client frame, in order, into `out` (see
/// [`super::decode_frame`]). A length that is not a varint, or runs past the frame, or a
/// message that is not a `Command`, makes the whole frame malformed: past a bad length
/// nothing else in the frame can be found.
pub fn decode_frame(
    payload: &[u8],
    out: &mut Vec<Result<Inbound, CommandError>>,
) -> Result<(), CommandError> {
    if payload.is_empty() {
        return Err(CommandError::malformed("empty frame"));
    }
    let mut rest = payload;
    let mut n = 0;
    while !rest.is_empty() {
        if n >= MAX_BATCH {
            return Err(CommandError::malformed(format!(
                "more than {MAX_BATCH} commands in one frame"
            )));
        }
        n += 1;
        let len = prost::encoding::decode_varint(&mut rest)
            .map_err(|_| CommandError::malformed("message length is not a varint"))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= rest.len())
            .ok_or_else(|| CommandError::malformed("message length runs past the frame"))?;
        let (message, tail) = rest.split_at(len);
        rest = tail;
        let command = Command::decode(message)
            .map_err(|e| CommandError::malformed(format!("not a Command message: {e}")))?;
        out.push(decode_command(command));
    }
    Ok(())
}

/// A Protobuf client's `data` bytes, which must be JSON text (or, where `data` is optional,
/// empty: none): payloads are JSON for every client (see the module above). UTF-8 is checked
/// first (serde_json skips an ignored string's bytes without checking them), then JSON.
fn checked_json(id: i64, data: Bytes, optional: bool) -> Result<Bytes, CommandError> {
    if data.is_empty() && optional {
        return Ok(data);
    }
    let json = std::str::from_utf8(&data).ok();
    if json.is_none_or(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()) {
        return Err(CommandError::bad(
            id,
            "data must be JSON text: channels are shared with JSON clients",
        ));
    }
    Ok(data)
}

fn decode_command(c: Command) -> Result<Inbound, CommandError> {
    let data;
    let id = i64::from(c.id);
    let request = if let Some(r) = c.connect {
        data = checked_json(id, r.data, true)?;
        Request::Connect {
            token: r.token,
            data: (!data.is_empty()).then_some(&data[..]),
            name: r.name,
            version: r.version,
        }
    } else if let Some(s) = c.subscribe {
        Request::Subscribe {
            channel: s.channel,
            recover: s.recover,
            offset: s.offset,
            epoch: s.epoch,
            join_leave: s.join_leave,
            token: s.token,
            delta: s.delta,
        }
    } else if let Some(u) = c.unsubscribe {
        Request::Unsubscribe { channel: u.channel }
    } else if let Some(p) = c.publish {
        data = checked_json(id, p.data, false)?;
        Request::Publish {
            channel: p.channel,
            data: &data,
        }
    } else if let Some(p) = c.presence {
        Request::Presence { channel: p.channel }
    } else if let Some(p) = c.presence_stats {
        Request::PresenceStats { channel: p.channel }
    } else if let Some(h) = c.history {
        Request::History {
            channel: h.channel,
            limit: i64::from(h.limit),
            since: h.since.map(|p| (p.offset, p.epoch)),
            reverse: h.reverse,
        }
    } else if let Some(r) = c.refresh {
        Request::Refresh { token: r.token }
    } else if let Some(r) = c.sub_refresh {
        Request::SubRefresh {
            channel: r.channel,
            token: r.token,
        }
    } else if let Some(r) = c.rpc {
        data = checked_json(id, r.data, true)?;
        Request::Rpc {
            method: r.method,
            data: (!data.is_empty()).then_some(&data[..]),
        }
    } else if c.send.is_some() {
        Request::Send
    } else if c.ping.is_some() {
        Request::Ping
    } else {
        Request::Empty
    };
    to_inbound(c.id, request)
}

/// Commands the server answers carry ids the client gave, which fit `u32` (the schema's
/// type); the server API's and v1's negative ids never reach this encoding.
fn reply_id(id: i64) -> u32 {
    u32::try_from(id).unwrap_or(0)
}

fn encode(reply: &Reply) -> Bytes {
    Bytes::from(reply.encode_length_delimited_to_vec())
}

fn info(user: &str, client: &str) -> Option<ClientInfo> {
    Some(ClientInfo {
        user: user.to_owned(),
        client: client.to_owned(),
    })
}

fn publication(p: &Pub) -> Publication {
    Publication {
        data: json_data(p),
        info: info(&p.from, ""),
        offset: p.offset,
        delta: false,
    }
}

/// The `connect` reply.
pub(super) fn connect_reply(id: i64, c: &ConnectResult<'_>) -> Bytes {
    encode(&Reply {
        id: reply_id(id),
        connect: Some(ConnectResultMsg {
            client: c.client.to_owned(),
            version: c.version.to_owned(),
            expires: c.ttl.is_some(),
            ttl: c.ttl.unwrap_or(0),
            subs: vec![SubsEntry {
                key: c.personal.to_owned(),
                value: Some(SubscribeResult::default()),
            }],
            ping: c.ping,
            pong: true,
            session: c
                .emulation
                .map(|e| e.session.to_string())
                .unwrap_or_default(),
            node: c.emulation.map(|e| e.node.to_string()).unwrap_or_default(),
        }),
        ..Reply::default()
    })
}

/// The reply carrying `answer`.
pub(super) fn answer(id: i64, answer: &Answer<'_>) -> Bytes {
    let mut reply = Reply {
        id: reply_id(id),
        ..Reply::default()
    };
    let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    match answer {
        Answer::Pong => reply.ping = Some(Empty {}),
        Answer::Unsubscribed => reply.unsubscribe = Some(Empty {}),
        Answer::Published { .. } => reply.publish = Some(Empty {}),
        Answer::Refreshed { exp, client } => {
            reply.refresh = Some(RefreshResult {
                client: (*client).to_owned(),
                expires: true,
                ttl: super::ttl(*exp),
            })
        }
        Answer::SubRefreshed { exp } => {
            reply.sub_refresh = Some(SubRefreshResult {
                expires: true,
                ttl: super::ttl(*exp),
            })
        }
        Answer::PresenceStats { users, conns } => {
            reply.presence_stats = Some(PresenceStatsResult {
                num_clients: count(*conns),
                num_users: count(*users),
            })
        }
        Answer::Presence(page) => {
            reply.presence = Some(PresenceResult {
                presence: page
                    .members
                    .iter()
                    .map(|m| (m.user.clone(), info(&m.user, &m.user).unwrap_or_default()))
                    .collect(),
            })
        }
        Answer::Rpc { data } => {
            reply.rpc = Some(RpcResult {
                data: data.to_vec(),
            })
        }
    }
    encode(&reply)
}

/// An error reply.
pub(super) fn error(id: i64, code: ErrorCode, message: &str) -> Bytes {
    let (code, temporary) = error_code(code);
    encode(&Reply {
        id: reply_id(id),
        error: Some(Error {
            code,
            message: message.to_owned(),
            temporary,
        }),
        ..Reply::default()
    })
}

fn push(channel: &str, fill: impl FnOnce(&mut Push)) -> Bytes {
    let mut push = Push {
        channel: channel.to_owned(),
        ..Push::default()
    };
    fill(&mut push);
    encode(&Reply {
        push: Some(push),
        ..Reply::default()
    })
}

/// The `pub` push of one publication, or of `delta` from the previous one (its bytes in
/// `data`, `delta: true`).
pub(super) fn publication_push(p: &Pub, delta: Option<&[u8]>) -> Bytes {
    push(&p.channel, |push| {
        let mut publication = publication(p);
        if let Some(delta) = delta {
            publication.data = Bytes::copy_from_slice(delta);
            publication.delta = true;
        }
        push.r#pub = Some(publication);
    })
}

/// The `subscribe` reply (see [`super::subscribe_reply`]).
pub(super) fn subscribe_reply(id: i64, result: &super::SubscribeResult<'_>) -> Bytes {
    encode(&Reply {
        id: reply_id(id),
        subscribe: Some(SubscribeResult {
            expires: result.expires.is_some(),
            ttl: result.expires.map_or(0, super::ttl),
            recoverable: true,
            epoch: result.epoch.to_owned(),
            publications: result.publications.iter().map(|p| publication(p)).collect(),
            recovered: result.recovering == Some(true),
            offset: result.offset,
            positioned: true,
            was_recovering: result.recovering.is_some(),
            delta: result.delta,
        }),
        ..Reply::default()
    })
}

/// The `history` reply of one page (see [`super::history_reply`]).
pub(super) fn history_reply(id: i64, page: &[&Arc<Pub>], offset: u64, epoch: &str) -> Bytes {
    encode(&Reply {
        id: reply_id(id),
        history: Some(HistoryResult {
            publications: page.iter().map(|p| publication(p)).collect(),
            epoch: epoch.to_owned(),
            offset,
        }),
        ..Reply::default()
    })
}

/// A `join` or `leave` push.
pub(super) fn presence_push(channel: &str, joined: bool, user: &str) -> Bytes {
    let event = Some(JoinLeave {
        info: info(user, user),
    });
    push(channel, |push| {
        if joined {
            push.join = event;
        } else {
            push.leave = event;
        }
    })
}

/// The `subscribe` push (a server-side subscription).
pub(super) fn subscribe_push(channel: &str) -> Bytes {
    push(channel, |push| push.subscribe = Some(Empty {}))
}

/// The `refresh` push: `ttl` seconds left, or no expiry.
pub(super) fn refresh_push(ttl: Option<u32>) -> Bytes {
    push("", |push| {
        push.refresh = Some(RefreshPush {
            expires: ttl.is_some(),
            ttl: ttl.unwrap_or(0),
        })
    })
}

/// The `unsubscribe` push.
pub(super) fn unsubscribe_push(channel: &str, code: u32, reason: &str) -> Bytes {
    push(channel, |push| {
        push.unsubscribe = Some(Unsubscribe {
            code,
            reason: reason.to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command as Cmd, Op};
    use fanout::Payload;

    fn frame(commands: &[Command]) -> Vec<u8> {
        commands
            .iter()
            .flat_map(|c| c.encode_length_delimited_to_vec())
            .collect()
    }

    fn decode(payload: &[u8]) -> Vec<Result<Inbound, CommandError>> {
        let mut out = Vec::new();
        decode_frame(payload, &mut out).unwrap();
        out
    }

    #[test]
    fn a_frame_carries_length_delimited_commands_in_order() {
        let got = decode(&frame(&[
            Command {
                id: 1,
                connect: Some(ConnectRequest {
                    token: "t".into(),
                    ..ConnectRequest::default()
                }),
                ..Command::default()
            },
            Command {
                id: 2,
                subscribe: Some(SubscribeRequest {
                    channel: "room:a".into(),
                    recover: true,
                    offset: 7,
                    epoch: "e".into(),
                    ..SubscribeRequest::default()
                }),
                ..Command::default()
            },
            Command {
                id: 3,
                publish: Some(PublishRequest {
                    channel: "room:a".into(),
                    data: Bytes::from_static(b"{\"text\":\"hi\"}"),
                }),
                ..Command::default()
            },
            Command::default(),
        ]));
        assert_eq!(
            got[0],
            Ok(Inbound::Connect {
                id: 1,
                token: Some("t".into()),
                info: None,
            })
        );
        assert!(matches!(
            &got[1],
            Ok(Inbound::Command(Cmd { id: 2, op: Op::Subscribe { since: Some(7), epoch: Some(e), .. } })) if e == "e"
        ));
        assert!(matches!(
            &got[2],
            Ok(Inbound::Command(Cmd { id: 3, op: Op::Publish { data: Payload::Json(d), .. } })) if &d[..] == b"{\"text\":\"hi\"}"
        ));
        assert_eq!(got[3], Ok(Inbound::Pong));
    }

    #[test]
    fn bad_frames_and_bad_data_are_refused() {
        let mut out = Vec::new();
        // Empty; a length that never ends; a length past the frame; not a Command.
        for bad in [&b""[..], &[0xff; 11], &[5, 1, 2], &[2, 0xff, 0xff]] {
            assert!(decode_frame(bad, &mut out).is_err(), "{bad:?}");
        }
        let many = vec![0u8; MAX_BATCH + 1];
        assert!(decode_frame(&many, &mut out).is_err());
        // Data that is not JSON, or JSON whose string is not UTF-8 (a fuzz finding), is a
        // bad field of that command, not a bad frame.
        // Empty data is no JSON value either (it would be written as nothing into JSON
        // frames).
        for data in [&[0xde, 0xad][..], b"{\"t\xbbxt\":\"hi\"}", b""] {
            let got = decode(&frame(&[Command {
                id: 4,
                publish: Some(PublishRequest {
                    channel: "room:a".into(),
                    data: Bytes::copy_from_slice(data),
                }),
                ..Command::default()
            }]));
            assert!(got[0].as_ref().is_err_and(|e| !e.malformed && e.id == 4));
        }
    }

    #[test]
    fn pushes_and_replies_decode_as_the_schema_says() {
        let p = Arc::new(Pub {
            channel: "room:a".into(),
            offset: 9,
            epoch: "e".into(),
            from: "alice".into(),
            data: Payload::msgpack_from_value(&serde_json::json!({"text": "hi"})),
            ts: 1,
        });
        let mut bytes = publication_push(&p, None);
        let reply = Reply::decode_length_delimited(&mut bytes).unwrap();
        let push = reply.push.unwrap();
        assert_eq!(push.channel, "room:a");
        let publication = push.r#pub.unwrap();
        assert_eq!(&publication.data[..], b"{\"text\":\"hi\"}");
        assert_eq!(publication.offset, 9);
        assert_eq!(publication.info.unwrap().user, "alice");
        let result = super::super::SubscribeResult {
            offset: 8,
            epoch: "e",
            recovering: Some(true),
            publications: std::slice::from_ref(&p),
            expires: Some(fanout::util::unix_secs() + 60),
            delta: false,
        };
        let mut bytes = subscribe_reply(2, &result);
        let sub = Reply::decode_length_delimited(&mut bytes)
            .unwrap()
            .subscribe
            .unwrap();
        assert!(sub.recoverable && sub.recovered && sub.was_recovering && sub.expires);
        assert!((59..=60).contains(&sub.ttl), "{}", sub.ttl);
        assert_eq!((sub.offset, sub.publications[0].offset), (8, 9));
        let mut bytes = error(5, ErrorCode::RateLimited, "slow down");
        let e = Reply::decode_length_delimited(&mut bytes).unwrap();
        assert_eq!(e.id, 5);
        assert_eq!(
            e.error,
            Some(Error {
                code: 111,
                message: "slow down".into(),
                temporary: true
            })
        );
        // The ping is an empty message: its length alone.
        assert_eq!(encode(&Reply::default()), Bytes::from_static(&[0]));
    }

    #[test]
    fn deltas_are_read_and_written_at_the_schemas_fields() {
        // SubscribeRequest.delta is field 12.
        let command = Command {
            id: 2,
            subscribe: Some(SubscribeRequest {
                channel: "doc:a".into(),
                delta: "fossil".into(),
                ..SubscribeRequest::default()
            }),
            ..Command::default()
        };
        let got = decode_command(command);
        assert!(
            matches!(
                &got,
                Ok(Inbound::Command(Cmd {
                    op: Op::Subscribe { delta: true, .. },
                    ..
                }))
            ),
            "{got:?}"
        );
        // Publication.delta is field 8, with the delta's bytes in `data`.
        let p = Arc::new(Pub {
            channel: "doc:a".into(),
            offset: 3,
            epoch: "e".into(),
            from: "server".into(),
            data: Payload::Json(Bytes::from_static(b"{}")),
            ts: 1,
        });
        let mut bytes = publication_push(&p, Some(b"2\n2:{}0;"));
        let publication = Reply::decode_length_delimited(&mut bytes)
            .unwrap()
            .push
            .unwrap()
            .r#pub
            .unwrap();
        assert!(publication.delta);
        assert_eq!(&publication.data[..], b"2\n2:{}0;");
        // SubscribeResult.delta is field 13.
        let result = super::super::SubscribeResult {
            offset: 3,
            epoch: "e",
            recovering: None,
            publications: &[],
            expires: None,
            delta: true,
        };
        let mut bytes = subscribe_reply(2, &result);
        let sub = Reply::decode_length_delimited(&mut bytes)
            .unwrap()
            .subscribe
            .unwrap();
        assert!(sub.delta);
    }
}
