//! Centrifugo's unidirectional transports, for clients that only listen (a dashboard, a
//! device, a script with `curl`): `POST /connection/uni_http_stream` with a connect request
//! as its body, or `GET /connection/uni_sse?cf_connect=...` (`POST` with the body works too).
//! The response is a stream of pushes: `{"connect": {...}}` first, then
//! `{"channel", "pub"}`, `{"channel", "join"}`, ... and `{"disconnect": {...}}` at the end,
//! `{}` as the server's ping. JSON only.
//!
//! The connect request is Centrifugo's `ConnectRequest`: `token`, and `subs`, the channels to
//! listen to, each with an optional `recover`, `offset`, `epoch` to recover from. (Centrifugo
//! takes a listener's channels from its token or a backend; here the client names them, and
//! each is checked as a subscribe would be.) The session is a Centrifugo session like any
//! other, over `http::emulation`'s bridge: its replies become pushes here ([`Listener`]),
//! and the bridge answers the server's pings for the client, who cannot.

use super::emulation::{Stream, open};
use crate::node::Node;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The connect request of a listen-only client.
#[derive(Debug, Default, Deserialize)]
struct ConnectRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    subs: std::collections::BTreeMap<String, SubscribeRequest>,
}

/// A channel to listen to, and where to recover from.
#[derive(Debug, Default, Deserialize)]
struct SubscribeRequest {
    #[serde(default)]
    recover: bool,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

/// `POST /connection/uni_http_stream`: pushes as JSON lines.
pub async fn http_stream(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match super::read_body(&node, body).await {
        Ok(body) => start(&node, &headers, &body, false),
        Err(e) => e.into_response(),
    }
}

/// `GET /connection/uni_sse?cf_connect=<the connect request as JSON>`: pushes as events.
pub async fn sse(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let request = query.get("cf_connect").map_or("{}", String::as_str);
    start(&node, &headers, request.as_bytes(), true)
}

/// `POST /connection/uni_sse`: the connect request as the body.
pub async fn sse_post(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    match super::read_body(&node, body).await {
        Ok(body) => start(&node, &headers, &body, true),
        Err(e) => e.into_response(),
    }
}

fn start(node: &Arc<Node>, headers: &HeaderMap, request: &[u8], sse: bool) -> Response {
    // `null` is an empty request, as in Centrifugo.
    let request: Option<ConnectRequest> = match serde_json::from_slice(request) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a connect request ({{\"token\", \"subs\"}}): {e}"),
            )
                .into_response();
        }
    };
    let request = request.unwrap_or_default();
    let limits = &node.config.limits;
    if request.subs.len() > limits.max_subscriptions {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "at most {} channels in subs (--max-subscriptions)",
                limits.max_subscriptions
            ),
        )
            .into_response();
    }
    // The session's first frame: connect, then a subscribe per channel, as one batch.
    let mut lines = vec![json!({"id": 1, "connect": {"token": request.token.unwrap_or_default()}})];
    let mut channels = Vec::with_capacity(request.subs.len());
    for (i, (channel, sub)) in request.subs.into_iter().enumerate() {
        let mut subscribe = json!({"channel": channel});
        if sub.recover {
            subscribe["recover"] = json!(true);
            subscribe["offset"] = json!(sub.offset);
            subscribe["epoch"] = json!(sub.epoch);
        }
        lines.push(json!({"id": i + 2, "subscribe": subscribe}));
        channels.push(channel);
    }
    let frame = lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    // The session reads it as one frame, which --max-frame-size bounds.
    if frame.len() > limits.max_frame_size {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the connect request makes a frame over {} bytes (--max-frame-size)",
                limits.max_frame_size
            ),
        )
            .into_response();
    }
    let listener = Listener { channels };
    open(
        node,
        headers,
        Stream::Uni { sse },
        Bytes::from(frame),
        Some(listener),
    )
}

/// Turns a listen-only client's session output into pushes.
#[derive(Debug)]
pub(super) struct Listener {
    /// The channels subscribed by the first frame: command `id` `i + 2` is `channels[i]`.
    channels: Vec<String>,
}

/// What one text frame of the session becomes.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Pushes {
    /// The pushes to write, in order.
    pub lines: Vec<String>,
    /// The frame held a server ping: answer it.
    pub pong: bool,
    /// The stream ends after these (the connect was refused).
    pub end: bool,
}

impl Listener {
    /// The pushes a text frame of the session (its lines) becomes.
    pub(super) fn pushes(&mut self, text: &str) -> Pushes {
        let mut out = Pushes::default();
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            if line == "{}" {
                out.lines.push("{}".into());
                out.pong = true;
                continue;
            }
            // A push, every publication among them: unwrapped as text, not parsed (this runs
            // per message per listener). The node writes pushes as `{"push":{...}}` exactly.
            if let Some(push) = line
                .strip_prefix("{\"push\":")
                .and_then(|rest| rest.strip_suffix('}'))
            {
                out.lines.push(push.to_owned());
                continue;
            }
            let Ok(mut v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(id) = v["id"].as_u64() else {
                continue;
            };
            let error = v.get("error").cloned();
            if id == 1 {
                match error {
                    Some(e) => {
                        let code = e["code"].as_u64().unwrap_or(3500);
                        out.lines.push(
                            json!({"disconnect": {"code": code, "reason": e["message"]}})
                                .to_string(),
                        );
                        out.end = true;
                    }
                    None => out
                        .lines
                        .push(json!({"connect": v["connect"].take()}).to_string()),
                }
                continue;
            }
            let Some(channel) = usize::try_from(id - 2)
                .ok()
                .and_then(|i| self.channels.get(i))
            else {
                continue;
            };
            match error {
                // Refused (not allowed, a limit): the channel is not listened to.
                Some(e) => out.lines.push(
                    json!({"channel": channel, "unsubscribe": {"code": 2000, "reason": e["message"]}})
                        .to_string(),
                ),
                None => {
                    let mut result = v["subscribe"].take();
                    let publications = result
                        .as_object_mut()
                        .and_then(|r| r.remove("publications"));
                    out.lines
                        .push(json!({"channel": channel, "subscribe": result}).to_string());
                    // What recovery found, in order, as the pushes they would have been.
                    for p in publications.iter().flat_map(|p| p.as_array()).flatten() {
                        out.lines
                            .push(json!({"channel": channel, "pub": p}).to_string());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_pushes() {
        let mut l = Listener {
            channels: vec!["room:a".into(), "secret:b".into()],
        };
        let p = l.pushes(
            "{\"id\":1,\"connect\":{\"client\":\"c\",\"ping\":25}}\n\
             {\"id\":2,\"subscribe\":{\"epoch\":\"e\",\"offset\":3,\"publications\":[{\"data\":{\"n\":3},\"offset\":3}]}}\n\
             {\"id\":3,\"error\":{\"code\":103,\"message\":\"permission denied\"}}",
        );
        let lines: Vec<Value> = p
            .lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0], json!({"connect": {"client": "c", "ping": 25}}));
        assert_eq!(
            lines[1],
            json!({"channel": "room:a", "subscribe": {"epoch": "e", "offset": 3}})
        );
        assert_eq!(
            lines[2],
            json!({"channel": "room:a", "pub": {"data": {"n": 3}, "offset": 3}})
        );
        assert_eq!(
            lines[3],
            json!({"channel": "secret:b", "unsubscribe": {"code": 2000, "reason": "permission denied"}})
        );
        assert!(!p.pong && !p.end);
        let p = l.pushes("{}\n{\"push\":{\"channel\":\"room:a\",\"pub\":{\"offset\":4}}}");
        assert_eq!(
            p.lines,
            ["{}", "{\"channel\":\"room:a\",\"pub\":{\"offset\":4}}"]
        );
        assert!(p.pong);
        let p = l.pushes("{\"id\":1,\"error\":{\"code\":109,\"message\":\"token expired\"}}");
        assert_eq!(
            p.lines,
            ["{\"disconnect\":{\"code\":109,\"reason\":\"token expired\"}}"]
        );
        assert!(p.end);
    }
}
