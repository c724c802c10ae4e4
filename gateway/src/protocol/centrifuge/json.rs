//! Centrifugo's client protocol, JSON encoding (no subprotocol, or `centrifuge-json`).
//!
//! Wire facts this follows (from the protocol's schema and the SDKs' sources):
//! - One WebSocket text frame holds one or more JSON objects separated by `\n`, in both
//!   directions. Replies carry the command's `id`; pushes are `{"push": {...}}`; an empty
//!   object `{}` is the application-level ping (server to client) and pong (back).
//! - Field names are the schema's snake_case names; zero values are left out, except where
//!   the SDKs read a field without checking (a reply always carries its result object).
//! - `data`, `info` and friends are raw JSON embedded as it is, never base64.

use super::{
    ConnectResult, Inbound, MAX_BATCH, Request, SubscribeResult, error_code, json_data, to_inbound,
};
use crate::protocol::frames::Answer;
use crate::protocol::{CommandError, ErrorCode};
use bytes::Bytes;
use fanout::Publication;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The request fields this server reads; unknown keys (`flag`, `tf`, `delta`, ...) are
/// ignored, as the protocol asks of servers.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(default)]
    id: u32,
    #[serde(borrow)]
    connect: Option<ConnectRequest<'a>>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<ChannelRequest>,
    #[serde(borrow)]
    publish: Option<PublishRequest<'a>>,
    presence: Option<ChannelRequest>,
    presence_stats: Option<ChannelRequest>,
    history: Option<HistoryRequest>,
    ping: Option<serde::de::IgnoredAny>,
    send: Option<serde::de::IgnoredAny>,
    #[serde(borrow)]
    rpc: Option<RpcRequest<'a>>,
    refresh: Option<TokenRequest>,
    sub_refresh: Option<SubRefreshRequest>,
}

#[derive(Deserialize)]
struct ConnectRequest<'a> {
    #[serde(default)]
    token: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
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
    #[serde(default)]
    token: String,
    #[serde(default)]
    delta: String,
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
    /// How many publications to read (see [`super::history_limit`]).
    pub fn limit(&self) -> u64 {
        super::history_limit(self.limit)
    }
}

#[derive(Deserialize)]
struct RpcRequest<'a> {
    #[serde(default)]
    method: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TokenRequest {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
struct SubRefreshRequest {
    channel: String,
    #[serde(default)]
    token: String,
}

/// Decodes every line of one client frame, in order, into `out` (see
/// [`super::decode_frame`]).
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
    for (n, line) in text.split('\n').enumerate() {
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
    let request = if let Some(c) = frame.connect {
        Request::Connect {
            token: c.token.unwrap_or_default(),
            data: c.data.map(|d| d.get().as_bytes()),
            name: c.name,
            version: c.version,
        }
    } else if let Some(s) = frame.subscribe {
        Request::Subscribe {
            channel: s.channel,
            recover: s.recover,
            offset: s.offset,
            epoch: s.epoch,
            join_leave: s.join_leave,
            token: s.token,
            delta: s.delta,
        }
    } else if let Some(u) = frame.unsubscribe {
        Request::Unsubscribe { channel: u.channel }
    } else if let Some(p) = frame.publish {
        Request::Publish {
            channel: p.channel,
            data: p.data.get().as_bytes(),
        }
    } else if let Some(p) = frame.presence {
        Request::Presence { channel: p.channel }
    } else if let Some(p) = frame.presence_stats {
        Request::PresenceStats { channel: p.channel }
    } else if let Some(h) = frame.history {
        Request::History {
            channel: h.channel,
            limit: h.limit,
            since: h.since.map(|p| (p.offset, p.epoch)),
            reverse: h.reverse,
        }
    } else if let Some(r) = frame.refresh {
        Request::Refresh { token: r.token }
    } else if let Some(r) = frame.sub_refresh {
        Request::SubRefresh {
            channel: r.channel,
            token: r.token,
        }
    } else if let Some(r) = frame.rpc {
        Request::Rpc {
            method: r.method,
            data: r.data.map(|d| d.get().as_bytes()),
        }
    } else if frame.send.is_some() {
        Request::Send
    } else if frame.ping.is_some() {
        Request::Ping
    } else {
        Request::Empty
    };
    to_inbound(frame.id, request)
}

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

/// The `connect` reply (see [`super::connect_reply`]).
pub(super) fn connect_reply(id: i64, c: &ConnectResult<'_>) -> Bytes {
    let mut subs = serde_json::Map::new();
    subs.insert(c.personal.to_owned(), serde_json::json!({}));
    let mut result = serde_json::json!({
        "client": c.client,
        "version": c.version,
        "ping": c.ping,
        "pong": true,
        "subs": subs,
    });
    if let Some(ttl) = c.ttl {
        result["expires"] = true.into();
        result["ttl"] = ttl.into();
    }
    if let Some(e) = c.emulation {
        result["session"] = serde_json::json!(&*e.session);
        result["node"] = serde_json::json!(&*e.node);
    }
    reply(id, "connect", &result)
}

/// A reply whose result is the JSON object `result`.
fn reply(id: i64, method: &str, result: &serde_json::Value) -> Bytes {
    let mut out = Vec::with_capacity(64);
    reply_start(&mut out, id, method);
    let _ = serde_json::to_writer(&mut out, result);
    out.push(b'}');
    Bytes::from(out)
}

/// The reply carrying `answer`.
pub(super) fn answer(id: i64, answer: &Answer<'_>) -> Bytes {
    use serde_json::json;
    let (method, result) = match answer {
        Answer::Pong => ("ping", json!({})),
        Answer::Unsubscribed => ("unsubscribe", json!({})),
        Answer::Published { .. } => ("publish", json!({})),
        Answer::Refreshed { exp, client } => (
            "refresh",
            json!({ "client": client, "expires": true, "ttl": super::ttl(*exp) }),
        ),
        Answer::SubRefreshed { exp } => (
            "sub_refresh",
            json!({ "expires": true, "ttl": super::ttl(*exp) }),
        ),
        Answer::PresenceStats { users, conns } => (
            "presence_stats",
            json!({ "num_clients": conns, "num_users": users }),
        ),
        Answer::Presence(page) => {
            let members: serde_json::Map<String, serde_json::Value> = page
                .members
                .iter()
                .map(|m| (m.user.clone(), json!({ "user": m.user, "client": m.user })))
                .collect();
            ("presence", json!({ "presence": members }))
        }
        Answer::Rpc { data } => {
            let data: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
            ("rpc", json!({ "data": data }))
        }
    };
    reply(id, method, &result)
}

/// An error reply.
pub(super) fn error(id: i64, code: ErrorCode, message: &str) -> Bytes {
    let (code, temporary) = error_code(code);
    let mut error = serde_json::json!({ "code": code, "message": message });
    if temporary {
        error["temporary"] = true.into();
    }
    frame(&serde_json::json!({ "id": id, "error": error }))
}

/// A publication as the protocol writes it: `{"data", "offset", "info"}` (the payload
/// spliced in; a MessagePack payload converted to JSON). On a subscription with deltas,
/// `data` is a JSON string instead, as centrifuge-js expects there: the payload's text
/// (`Data::Text`), or a delta's (`Data::Delta`, which adds `"delta":true`).
fn write_publication(out: &mut Vec<u8>, p: &Publication, data: Data<'_>) {
    out.extend_from_slice(b"{\"data\":");
    match data {
        Data::Raw => out.extend_from_slice(&json_data(p)),
        Data::Text => json_text(out, &json_data(p)),
        Data::Delta(delta) => json_text(out, delta),
    }
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(p.offset.to_string().as_bytes());
    out.extend_from_slice(b",\"info\":{\"user\":");
    json_str(out, &p.from);
    out.extend_from_slice(b",\"client\":\"\"}");
    if matches!(data, Data::Delta(_)) {
        out.extend_from_slice(b",\"delta\":true");
    }
    out.push(b'}');
}

/// How a publication's `data` is written (see [`write_publication`]).
#[derive(Debug, Clone, Copy)]
enum Data<'a> {
    Raw,
    Text,
    Delta(&'a [u8]),
}

/// UTF-8 `text` as a JSON string (the callers' bytes are UTF-8: JSON text, or a delta checked
/// to be; anything else would be sent with replacement characters).
fn json_text(out: &mut Vec<u8>, text: &[u8]) {
    json_str(out, &String::from_utf8_lossy(text));
}

/// A JSON array of publications.
fn write_publications<'a>(
    out: &mut Vec<u8>,
    publications: impl IntoIterator<Item = &'a Arc<Publication>>,
    data: Data<'_>,
) {
    out.push(b'[');
    for (i, p) in publications.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_publication(out, p, data);
    }
    out.push(b']');
}

/// The `pub` push of one publication: as it is, or for a subscription with deltas, its
/// payload as text (`delta: None`) or `delta` from the previous one.
pub(super) fn publication_push(p: &Publication, delta: Option<Option<&[u8]>>) -> Bytes {
    let data = match delta {
        None => Data::Raw,
        Some(None) => Data::Text,
        Some(Some(d)) => Data::Delta(d),
    };
    let mut out = Vec::with_capacity(p.data.bytes().len() + p.channel.len() + 112);
    out.extend_from_slice(b"{\"push\":{\"channel\":");
    json_str(&mut out, &p.channel);
    out.extend_from_slice(b",\"pub\":");
    write_publication(&mut out, p, data);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// The `subscribe` reply (see [`super::subscribe_reply`]).
pub(super) fn subscribe_reply(id: i64, result: &SubscribeResult<'_>) -> Bytes {
    let SubscribeResult {
        offset,
        epoch,
        recovering,
        publications,
        expires,
        delta,
    } = *result;
    let mut out = Vec::with_capacity(
        96 + publications
            .iter()
            .map(|p| super::publication_size(p))
            .sum::<usize>(),
    );
    reply_start(&mut out, id, "subscribe");
    out.extend_from_slice(b"{\"recoverable\":true,\"positioned\":true,\"epoch\":");
    json_str(&mut out, epoch);
    if offset > 0 {
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(offset.to_string().as_bytes());
    }
    if let Some(exp) = expires {
        out.extend_from_slice(b",\"expires\":true,\"ttl\":");
        out.extend_from_slice(super::ttl(exp).to_string().as_bytes());
    }
    if let Some(recovered) = recovering {
        out.extend_from_slice(b",\"was_recovering\":true");
        if recovered {
            out.extend_from_slice(b",\"recovered\":true");
        }
    }
    if delta {
        out.extend_from_slice(b",\"delta\":true");
    }
    if !publications.is_empty() {
        // With deltas every `data` is a string; recovered ones are whole payloads.
        out.extend_from_slice(b",\"publications\":");
        let data = if delta { Data::Text } else { Data::Raw };
        write_publications(&mut out, publications, data);
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// The `history` reply of one page (see [`super::history_reply`]).
pub(super) fn history_reply(
    id: i64,
    page: &[&Arc<Publication>],
    offset: u64,
    epoch: &str,
) -> Bytes {
    let mut out = Vec::with_capacity(
        96 + page
            .iter()
            .map(|p| super::publication_size(p))
            .sum::<usize>(),
    );
    reply_start(&mut out, id, "history");
    out.extend_from_slice(b"{\"publications\":");
    write_publications(&mut out, page.iter().copied(), Data::Raw);
    out.extend_from_slice(b",\"epoch\":");
    json_str(&mut out, epoch);
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(offset.to_string().as_bytes());
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// A `join` or `leave` push.
pub(super) fn presence_push(channel: &str, joined: bool, user: &str) -> Bytes {
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

/// A value as one frame.
fn frame(value: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a JSON value serializes"))
}

/// The `subscribe` push (a server-side subscription).
pub(super) fn subscribe_push(channel: &str) -> Bytes {
    frame(&serde_json::json!({ "push": { "channel": channel, "subscribe": {} } }))
}

/// The `refresh` push: `ttl` seconds left, or no expiry.
pub(super) fn refresh_push(ttl: Option<u32>) -> Bytes {
    let refresh = match ttl {
        Some(ttl) => serde_json::json!({ "expires": true, "ttl": ttl }),
        None => serde_json::json!({}),
    };
    frame(&serde_json::json!({ "push": { "refresh": refresh } }))
}

/// The `unsubscribe` push.
pub(super) fn unsubscribe_push(channel: &str, code: u32, reason: &str) -> Bytes {
    frame(&serde_json::json!({
        "push": { "channel": channel, "unsubscribe": { "code": code, "reason": reason } }
    }))
}

/// A JSON `EmulationRequest`: `{"session", "node", "data"}`, `data` a string of
/// newline-separated commands.
pub(super) fn emulation_request(body: &[u8]) -> Option<super::EmulationRequest> {
    #[derive(Deserialize)]
    struct Request {
        session: String,
        node: String,
        data: String,
    }
    let r: Request = serde_json::from_slice(body).ok()?;
    Some(super::EmulationRequest {
        node: r.node,
        session: r.session,
        data: Bytes::from(r.data),
    })
}

/// The `disconnect` push that ends a stream.
pub(super) fn disconnect_push(code: u16, reason: &str) -> Bytes {
    frame(&serde_json::json!({"push": {"disconnect": {"code": code, "reason": reason}}}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::JoinLeave;
    use crate::protocol::{Command, MAX_DATA_DEPTH, Op};
    use fanout::Payload;
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
                token: Some("t".into()),
                info: Some(Box::new(super::super::ConnectInfo {
                    name: "js".into(),
                    ..Default::default()
                })),
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
                    token: None,
                    delta: false,
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
        let push: Value = serde_json::from_slice(&publication_push(&p, None)).unwrap();
        assert_eq!(push["push"]["channel"], "room:a");
        assert_eq!(push["push"]["pub"]["data"]["text"], "hi");
        assert_eq!(push["push"]["pub"]["offset"], 9);
        assert_eq!(push["push"]["pub"]["info"]["user"], "alice");
        let result = SubscribeResult {
            offset: 8,
            epoch: "e",
            recovering: Some(true),
            publications: std::slice::from_ref(&p),
            expires: None,
            delta: false,
        };
        let sub: Value = serde_json::from_slice(&subscribe_reply(2, &result)).unwrap();
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
        let history: Value = serde_json::from_slice(&history_reply(3, &[&p, &p], 9, "e")).unwrap();
        assert_eq!(
            history["history"]["publications"].as_array().unwrap().len(),
            2
        );
        assert_eq!(history["history"]["epoch"], "e");
        let empty: Value = serde_json::from_slice(&history_reply(4, &[], 0, "e")).unwrap();
        assert_eq!(empty["history"]["publications"], json!([]));
        let e: Value =
            serde_json::from_slice(&error(5, ErrorCode::RateLimited, "slow down")).unwrap();
        assert_eq!(
            e,
            json!({"id": 5, "error": {"code": 111, "message": "slow down", "temporary": true}})
        );
    }

    #[test]
    fn deltas_are_asked_for_by_name_and_written_as_strings() {
        let got = decode(
            "{\"subscribe\":{\"channel\":\"c\",\"delta\":\"fossil\"},\"id\":1}\n\
             {\"subscribe\":{\"channel\":\"c\",\"delta\":\"xdelta\"},\"id\":2}",
        );
        assert!(
            matches!(
                &got[0],
                Ok(Inbound::Command(Command {
                    op: Op::Subscribe { delta: true, .. },
                    ..
                }))
            ),
            "{:?}",
            got[0]
        );
        let refused = got[1].as_ref().expect_err("an unknown delta type");
        assert!(format!("{refused:?}").contains("fossil"), "{refused:?}");

        let p = Publication {
            channel: "room:a".into(),
            offset: 9,
            epoch: "e".into(),
            from: "alice".into(),
            data: fanout::Payload::Json(bytes::Bytes::from_static(b"{\"text\":\"hi\"}")),
            ts: 0,
        };
        // The whole payload, as a JSON string.
        let whole: Value = serde_json::from_slice(&publication_push(&p, Some(None))).unwrap();
        assert_eq!(whole["push"]["pub"]["data"], "{\"text\":\"hi\"}");
        assert_eq!(whole["push"]["pub"].get("delta"), None);
        // A delta, as a JSON string, flagged.
        let delta = b"C\n5@0,2:ho1Ed2H;";
        let d: Value = serde_json::from_slice(&publication_push(&p, Some(Some(delta)))).unwrap();
        assert_eq!(d["push"]["pub"]["data"], "C\n5@0,2:ho1Ed2H;");
        assert_eq!(d["push"]["pub"]["delta"], true);
        assert_eq!(d["push"]["pub"]["offset"], 9);
        // A reply with deltas on says so, and its publications' data are strings too.
        let p = Arc::new(p);
        let result = SubscribeResult {
            offset: 8,
            epoch: "e",
            recovering: Some(true),
            publications: std::slice::from_ref(&p),
            expires: None,
            delta: true,
        };
        let sub: Value = serde_json::from_slice(&subscribe_reply(2, &result)).unwrap();
        assert_eq!(sub["subscribe"]["delta"], true);
        assert_eq!(
            sub["subscribe"]["publications"][0]["data"],
            "{\"text\":\"hi\"}"
        );
        assert_eq!(sub["subscribe"]["publications"][0].get("delta"), None);
    }
}
