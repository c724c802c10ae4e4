//! Centrifugo's client protocol at `/connection/websocket`, frame by frame: what the SDKs
//! rely on (replies in order within a frame, the connect reply, application pings) and what
//! a careless or hostile client gets (the protocol's close codes and error codes). The SDKs
//! themselves are driven in tests/browser/centrifuge-suite.mjs.

use e2e::{Gateway, Token, eventually, metric, secs, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw connection to the Centrifugo door.
struct Cf {
    ws: Ws,
    /// Every object received, in order (a frame's lines split).
    seen: Vec<Value>,
}

impl Cf {
    async fn open(addr: &str) -> Cf {
        let (ws, response) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket"))
                .await
                .expect("the upgrade needs no token");
        assert_eq!(response.status(), 101);
        Cf {
            ws,
            seen: Vec::new(),
        }
    }

    /// Opens and connects as `user`; returns the connect reply's result.
    async fn connect(addr: &str, user: &str) -> (Cf, Value) {
        let mut cf = Cf::open(addr).await;
        cf.send(&json!({"id": 1, "connect": {"token": token(user), "name": "test"}}))
            .await;
        let reply = cf.reply(1).await;
        assert!(reply.get("error").is_none(), "{reply}");
        (cf, reply["connect"].clone())
    }

    async fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Reads one frame into `seen`; the close code if the connection ended instead.
    async fn read(&mut self, deadline: Instant) -> Result<(), Option<u16>> {
        let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
            Err(_) => return Err(None),
            Ok(None) | Ok(Some(Err(_))) => return Err(Some(1006)),
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => {
                assert!(!text.trim().is_empty(), "an empty frame breaks the SDKs");
                for line in text.split('\n') {
                    self.seen
                        .push(serde_json::from_str(line).expect("each line is JSON"));
                }
                Ok(())
            }
            Message::Close(frame) => Err(Some(frame.map_or(1005, |f| f.code.into()))),
            Message::Binary(_) => panic!("binary frame on a JSON connection"),
            _ => Ok(()),
        }
    }

    /// The reply to command `id`, within 10 s.
    async fn reply(&mut self, id: u64) -> Value {
        let deadline = Instant::now() + secs(10);
        loop {
            if let Some(r) = self.seen.iter().find(|v| v["id"] == id) {
                return r.clone();
            }
            if let Err(code) = self.read(deadline).await {
                panic!("no reply to {id} (closed: {code:?}); seen {:?}", self.seen);
            }
        }
    }

    /// Reads until the server closes; its close code (panics after `within`).
    async fn closed(&mut self, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            match self.read(deadline).await {
                Ok(()) => {}
                Err(Some(code)) => return code,
                Err(None) => panic!("not closed within {within:?}; seen {:?}", self.seen),
            }
        }
    }
}

#[tokio::test]
async fn commands_behind_connect_in_one_frame_are_answered_in_order() {
    let gw = Gateway::start(&[]).await;
    let mut cf = Cf::open(gw.addr()).await;
    // What centrifuge-js sends on open: connect and its subscribes, in one frame.
    let frame = [
        json!({"connect": {"token": token("alice"), "name": "js"}, "id": 1}),
        json!({"subscribe": {"channel": "room:a", "flag": 1}, "id": 2}),
        json!({"publish": {"channel": "room:a", "data": {"text": "hi"}}, "id": 3}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    cf.send_text(&frame).await;
    cf.reply(3).await;
    // The replies in the order of the commands (the pub push may come before the publish
    // reply: the message is delivered while it is being published).
    let replies: Vec<&Value> = cf.seen.iter().filter(|v| v.get("id").is_some()).collect();
    let ids: Vec<&Value> = replies.iter().map(|v| &v["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(2), &json!(3)], "{:?}", cf.seen);
    let connect = &replies[0]["connect"];
    assert!(connect["client"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(
        (&connect["pong"], &connect["expires"]),
        (&json!(true), &json!(true))
    );
    assert!(connect["ping"].as_u64().unwrap() > 0);
    assert!(connect["ttl"].as_u64().unwrap() > 3500);
    assert!(connect["subs"]["user:alice"].is_object(), "{connect}");
    let sub = &replies[1]["subscribe"];
    assert_eq!(sub["recoverable"], true);
    assert!(sub["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(*replies[2], json!({"id": 3, "publish": {}}));
    // The publication reaches the publisher, who is subscribed.
    let deadline = Instant::now() + secs(10);
    while !cf.seen.iter().any(|v| v["push"]["pub"]["offset"] == 1) {
        cf.read(deadline).await.expect("the pub push");
    }
    let push = cf.seen.iter().find(|v| v.get("push").is_some()).unwrap();
    assert_eq!(push["push"]["channel"], "room:a");
    assert_eq!(push["push"]["pub"]["data"], json!({"text": "hi"}));
    assert!(push.get("id").is_none(), "pushes carry no id: {push}");
    // Counted by protocol.
    let by_protocol = |p: &str| format!("gateway_protocol_connections{{protocol=\"{p}\"}}");
    eventually("one Centrifugo connection counted", secs(10), async || {
        metric(gw.addr(), &by_protocol("centrifuge")).await == Some(1.0)
    })
    .await;
    assert_eq!(metric(gw.addr(), &by_protocol("v1")).await, Some(0.0));
    drop(cf);
    eventually("the connection uncounted", secs(10), async || {
        metric(gw.addr(), &by_protocol("centrifuge")).await == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn the_first_command_must_be_a_connect_with_a_good_token() {
    let gw = Gateway::start(&[]).await;
    // Garbage, a command before connect, a binary frame: bad request, do not reconnect.
    for first in [
        Message::Text("hello".into()),
        Message::Text(
            json!({"id": 1, "subscribe": {"channel": "room:a"}})
                .to_string()
                .into(),
        ),
        Message::Binary(vec![0x00].into()),
    ] {
        let mut cf = Cf::open(gw.addr()).await;
        cf.ws.send(first.clone()).await.unwrap();
        assert_eq!(cf.closed(secs(10)).await, 3501, "after {first:?}");
    }
    // A token that does not verify: 3500, do not reconnect with it.
    let mut cf = Cf::open(gw.addr()).await;
    let forged = Token::new("alice").bad_signature();
    cf.send(&json!({"id": 1, "connect": {"token": forged}}))
        .await;
    assert_eq!(cf.closed(secs(10)).await, 3500);
    // An expired one: error 109, which makes the SDKs fetch a new token and come back.
    let mut cf = Cf::open(gw.addr()).await;
    let expired = Token::new("alice").exp_in(-3600).hs256();
    cf.send(&json!({"id": 1, "connect": {"token": expired}}))
        .await;
    let reply = cf.reply(1).await;
    assert_eq!(reply["error"]["code"], 109, "{reply}");
    // No token at all.
    let mut cf = Cf::open(gw.addr()).await;
    cf.send(&json!({"id": 1, "connect": {}})).await;
    assert_eq!(cf.closed(secs(10)).await, 3501);
    // A second connect on a connected socket.
    let (mut cf, _) = Cf::connect(gw.addr(), "alice").await;
    cf.send(&json!({"id": 2, "connect": {"token": token("alice")}}))
        .await;
    assert_eq!(cf.closed(secs(10)).await, 3501);
}

#[tokio::test]
async fn a_socket_that_never_connects_is_closed_as_stale() {
    let gw = Gateway::start(&[]).await;
    let started = Instant::now();
    let mut cf = Cf::open(gw.addr()).await;
    // Centrifugo's deadline: 15 s; waited for generously.
    assert_eq!(cf.closed(secs(40)).await, 3502);
    assert!(
        started.elapsed() >= secs(14),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bad_commands_get_the_protocols_error_codes_and_the_connection_stays() {
    let gw = Gateway::start(&["--max-subscriptions", "2"]).await;
    let (mut cf, _) = Cf::connect(gw.addr(), "alice").await;
    let cases = [
        // A channel outside every namespace: permission denied.
        (json!({"subscribe": {"channel": "secret:x"}}), 103),
        (json!({"publish": {"channel": "secret:x", "data": {}}}), 103),
        (json!({"history": {"channel": "secret:x", "limit": 1}}), 103),
        // A bad channel name, an empty one.
        (json!({"subscribe": {"channel": "room:a b"}}), 107),
        (json!({"subscribe": {"channel": ""}}), 107),
        // Data nested past the limit.
        (
            json!({"publish": {"channel": "room:a", "data": deep(100)}}),
            107,
        ),
        // Nothing serves RPC yet.
        (json!({"rpc": {"method": "hello", "data": {}}}), 104),
        // A subscription token that does not verify; a sub_refresh for a channel no
        // subscription token granted, and one without a token.
        (
            json!({"subscribe": {"channel": "secret:x", "token": "x"}}),
            103,
        ),
        (
            json!({"sub_refresh": {"channel": "room:a", "token": "x"}}),
            103,
        ),
        (json!({"sub_refresh": {"channel": "room:a"}}), 107),
        // A history position in another epoch.
        (
            json!({"history": {"channel": "room:a", "limit": 1, "since": {"offset": 0, "epoch": "nope"}}}),
            112,
        ),
    ];
    for (i, (mut command, code)) in cases.into_iter().enumerate() {
        let id = 10 + i as u64;
        command["id"] = json!(id);
        cf.send(&command).await;
        let reply = cf.reply(id).await;
        assert_eq!(reply["error"]["code"], code, "{command} -> {reply}");
    }
    // The subscription limit: 106 past it.
    for (id, channel) in [(30, "room:a"), (31, "room:b")] {
        cf.send(&json!({"id": id, "subscribe": {"channel": channel}}))
            .await;
        assert!(cf.reply(id).await.get("error").is_none());
    }
    cf.send(&json!({"id": 32, "subscribe": {"channel": "room:c"}}))
        .await;
    assert_eq!(cf.reply(32).await["error"]["code"], 106);
    // Unsubscribing from a channel it does not have succeeds (the SDKs reconnect on an
    // error here), and the connection is still fine.
    cf.send(&json!({"id": 33, "unsubscribe": {"channel": "room:zzz"}}))
        .await;
    assert_eq!(cf.reply(33).await, json!({"id": 33, "unsubscribe": {}}));
}

fn deep(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

#[tokio::test]
async fn malformed_frames_after_connect_close_with_bad_request() {
    let gw = Gateway::start(&[]).await;
    let too_many = vec!["{}"; 10_000].join("\n");
    for frame in [
        "not json".to_string(),
        json!({"publish": {"channel": "room:a", "data": 1}}).to_string(),
        json!({"id": 5, "frobnicate": {}}).to_string(),
        too_many,
    ] {
        let (mut cf, _) = Cf::connect(gw.addr(), "alice").await;
        cf.send_text(&frame).await;
        let shown: String = frame.chars().take(40).collect();
        assert_eq!(cf.closed(secs(10)).await, 3501, "after {shown}");
    }
    // Larger than the largest frame: 1009, which the SDKs do not reconnect after.
    let (mut cf, _) = Cf::connect(gw.addr(), "alice").await;
    let big = json!({"id": 2, "publish": {"channel": "room:a", "data": "x".repeat(70_000)}});
    let _ = cf.ws.send(Message::Text(big.to_string().into())).await;
    assert_eq!(cf.closed(secs(10)).await, 1009);
    // The node is unharmed.
    let (mut cf, _) = Cf::connect(gw.addr(), "bob").await;
    cf.send(&json!({"id": 2, "presence_stats": {"channel": "room:a"}}))
        .await;
    assert!(cf.reply(2).await.get("presence_stats").is_some());
}

#[tokio::test]
async fn the_server_pings_with_an_empty_object_and_closes_a_silent_client() {
    let gw = Gateway::start(&["--ping-interval-secs", "1", "--idle-timeout-secs", "4"]).await;
    let (mut cf, connect) = Cf::connect(gw.addr(), "alice").await;
    assert_eq!(connect["ping"], 1);
    // Answering each ping keeps the connection: 6 s is past the idle timeout.
    let until = Instant::now() + secs(6);
    let mut pings = 0;
    while Instant::now() < until {
        let before = cf.seen.len();
        match cf.read(until).await {
            Ok(()) => {
                for v in &cf.seen[before..] {
                    if *v == json!({}) {
                        pings += 1;
                        cf.ws.send(Message::Text("{}".into())).await.unwrap();
                    }
                }
            }
            Err(None) => break,
            Err(Some(code)) => panic!("closed with {code} while answering pings"),
        }
    }
    assert!(pings >= 4, "{pings} pings in 6 s");
    // Silence: closed with 3012 (no pong), a code the SDKs reconnect after.
    assert_eq!(cf.closed(secs(20)).await, 3012);
}

/// Protobuf's length prefix (a varint).
fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited `Command {id: 1, connect: {token}}`, written by hand from the schema
/// (field 1 varint; field 4 message holding field 1 string) so that the test does not share
/// the gateway's encoder.
fn protobuf_connect(token: &str) -> Vec<u8> {
    let mut connect = vec![0x0a];
    varint(token.len(), &mut connect);
    connect.extend_from_slice(token.as_bytes());
    let mut command = vec![0x08, 0x01, 0x22];
    varint(connect.len(), &mut command);
    command.extend_from_slice(&connect);
    let mut frame = Vec::new();
    varint(command.len(), &mut frame);
    frame.extend_from_slice(&command);
    frame
}

/// Opens the door with the `centrifuge-protobuf` subprotocol.
async fn open_protobuf(addr: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/connection/websocket")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "centrifuge-protobuf".parse().unwrap(),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "centrifuge-protobuf"
    );
    ws
}

/// Reads binary frames until the close; its code (or 1006 when the socket just ends).
async fn protobuf_closed(ws: &mut Ws) -> u16 {
    let deadline = Instant::now() + secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("not closed within 10 s"),
            Ok(None) | Ok(Some(Err(_))) => return 1006,
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map_or(1005, |f| f.code.into()),
            Ok(Some(Ok(Message::Text(t)))) => panic!("text frame on a Protobuf connection: {t}"),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Connects over Protobuf as `user`; checks that the first frame is the connect reply.
async fn protobuf_connected(addr: &str, user: &str) -> Ws {
    let mut ws = open_protobuf(addr).await;
    ws.send(Message::Binary(protobuf_connect(&token(user)).into()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(secs(10), ws.next())
        .await
        .expect("a connect reply within 10 s")
        .unwrap()
        .unwrap();
    let Message::Binary(bytes) = reply else {
        panic!("{reply:?}")
    };
    // One length-delimited Reply: id 1 (field 1), then the connect result (field 5).
    assert_eq!(&bytes[1..4], &[0x08, 0x01, 0x2a], "{bytes:?}");
    ws
}

#[tokio::test]
async fn protobuf_frames_that_are_not_delimited_commands_close_with_bad_request() {
    let gw = Gateway::start(&[]).await;
    // Before connect: garbage, and a text frame on a binary connection.
    for frame in [
        Message::Binary(vec![0xff; 11].into()),
        Message::Text("{\"id\":1,\"connect\":{}}".into()),
    ] {
        let mut ws = open_protobuf(gw.addr()).await;
        ws.send(frame).await.unwrap();
        assert_eq!(protobuf_closed(&mut ws).await, 3501);
    }
    // After connect: a length that is not a varint, a length past the frame, a message that
    // is not a Command, a text frame, and 10,000 commands in one frame.
    let mut not_a_command = Vec::new();
    varint(2, &mut not_a_command);
    not_a_command.extend_from_slice(&[0xff, 0xff]);
    for frame in [
        Message::Binary(vec![0xff; 11].into()),
        Message::Binary(vec![5, 1, 2].into()),
        Message::Binary(not_a_command.into()),
        Message::Text("{}".into()),
        Message::Binary(vec![0; 10_000].into()),
    ] {
        let mut ws = protobuf_connected(gw.addr(), "alice").await;
        let shown = format!("{frame:?}").chars().take(40).collect::<String>();
        ws.send(frame).await.unwrap();
        assert_eq!(protobuf_closed(&mut ws).await, 3501, "after {shown}");
    }
    // The node is unharmed: a JSON client is served.
    let (mut cf, _) = Cf::connect(gw.addr(), "bob").await;
    cf.send(&json!({"id": 2, "presence_stats": {"channel": "room:a"}}))
        .await;
    assert!(cf.reply(2).await.get("presence_stats").is_some());
}

/// `POST /centrifugo/api/<method>` with `body`; the answer's `result`.
async fn centrifugo_api(addr: &str, method: &str, body: Value) -> Value {
    let r = e2e::http(
        addr,
        "POST",
        &format!("/centrifugo/api/{method}"),
        &[("X-API-Key", e2e::API_KEY)],
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{method}: {r:?}");
    let answer: Value = r.json();
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

impl Cf {
    /// Reads until an object `pick` accepts arrives (answering pings); panics after 10 s.
    async fn until(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + secs(10);
        loop {
            if let Some(v) = self.seen.iter().find(|v| pick(v)) {
                return v.clone();
            }
            if let Err(code) = self.read(deadline).await {
                panic!("no {what} (closed: {code:?}); seen {:?}", self.seen);
            }
        }
    }
}

#[tokio::test]
async fn the_server_api_subscribes_refreshes_and_expires_a_users_connections() {
    let gw = Gateway::start(&["--ping-interval-secs", "1", "--jwt-leeway-secs", "0"]).await;
    // A token that runs out 6 s from now: only the API's refresh keeps the connection.
    let short = Token::new("kim").exp_in(6).hs256();
    let mut cf = Cf::open(gw.addr()).await;
    cf.send(&json!({"id": 1, "connect": {"token": short}}))
        .await;
    assert!(cf.reply(1).await.get("connect").is_some());
    let mut v1 = e2e::Client::connect(gw.addr(), &token("kim")).await;
    // Server-side subscribe: both connections of the user are told, then get the messages.
    let channel = "room:server-side";
    assert_eq!(
        centrifugo_api(
            gw.addr(),
            "subscribe",
            json!({"user": "kim", "channel": channel})
        )
        .await,
        json!({})
    );
    cf.until("the subscribe push", |v| {
        v["push"]["channel"] == channel && v["push"].get("subscribe").is_some()
    })
    .await;
    let pushed = v1.next_push_of("subscribed", secs(10)).await;
    assert_eq!(pushed.expect("a subscribed push")["channel"], channel);
    e2e::api_publish(gw.addr(), channel, json!({"n": 1})).await;
    let got = cf
        .until("the publication", |v| {
            v["push"]["channel"] == channel && v["push"].get("pub").is_some()
        })
        .await;
    assert_eq!(got["push"]["pub"]["data"], json!({"n": 1}));
    v1.expect_message(channel, secs(10)).await;
    // Refresh: an hour more, told by a refresh push; the connection outlives its token.
    let at = e2e::now_secs() + 3600;
    centrifugo_api(
        gw.addr(),
        "refresh",
        json!({"user": "kim", "expire_at": at}),
    )
    .await;
    let refresh = cf
        .until("the refresh push", |v| v["push"].get("refresh").is_some())
        .await;
    let ttl = refresh["push"]["refresh"]["ttl"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ttl), "{refresh}");
    // Twelve pings (1 s apart) take it past the token's 6 s: the connection stays.
    let deadline = Instant::now() + secs(30);
    while cf.seen.iter().filter(|v| **v == json!({})).count() < 12 {
        if let Err(code) = cf.read(deadline).await {
            panic!("closed before 12 pings: {code:?}; seen {:?}", cf.seen);
        }
    }
    // Expired: every connection of the user ends, each with its protocol's code.
    centrifugo_api(
        gw.addr(),
        "refresh",
        json!({"user": "kim", "expired": true}),
    )
    .await;
    assert_eq!(cf.closed(secs(10)).await, 3005);
    assert_eq!(v1.expect_close(secs(10)).await.1, 4001);
}

/// A subscription whose token runs out with no `sub_refresh` ends with the `unsubscribe`
/// push 2501, not before the token's `exp`, and the channel's messages stop: one published
/// after the push never comes, while a marker on the personal channel published after it
/// does (same queue, so a late delivery would come first).
#[tokio::test]
async fn a_subscription_token_that_runs_out_ends_the_subscription_with_2501() {
    let gw = Gateway::start(&["--ping-interval-secs", "1", "--jwt-leeway-secs", "0"]).await;
    let (mut cf, _) = Cf::connect(gw.addr(), "lena").await;
    let channel = "team:expiring";
    let sub = Token::new("lena")
        .claim("channel", json!(channel))
        .exp_in(3);
    let exp = sub.exp().unwrap();
    cf.send(&json!({"id": 2, "subscribe": {"channel": channel, "token": sub.hs256()}}))
        .await;
    let reply = cf.reply(2).await;
    assert_eq!(reply["subscribe"]["expires"], true, "{reply}");
    assert!(reply["subscribe"]["ttl"].as_u64().unwrap() <= 3, "{reply}");
    e2e::api_publish(gw.addr(), channel, json!({"n": 1})).await;
    cf.until("the publication", |v| {
        v["push"]["channel"] == channel && v["push"].get("pub").is_some()
    })
    .await;
    let push = cf
        .until("the unsubscribe push", |v| {
            v["push"]["channel"] == channel && v["push"].get("unsubscribe").is_some()
        })
        .await;
    assert!(
        e2e::now_secs() >= exp,
        "ended before its token's exp: {push}"
    );
    assert_eq!(push["push"]["unsubscribe"]["code"], 2501, "{push}");
    e2e::api_publish(gw.addr(), channel, json!({"n": 2})).await;
    e2e::api_publish(gw.addr(), "user:lena", json!({"marker": true})).await;
    cf.until("the marker", |v| v["push"]["channel"] == "user:lena")
        .await;
    let late: Vec<&Value> = cf
        .seen
        .iter()
        .filter(|v| v["push"]["channel"] == channel && v["push"].get("pub").is_some())
        .collect();
    assert_eq!(
        late.len(),
        1,
        "only the message sent while subscribed: {late:?}"
    );
}

/// A document of about 20 KB whose `version` and `title` change.
fn document(version: u64, title: &str) -> Value {
    let rows: Vec<Value> = (0..300)
        .map(|i| json!({"row": i, "name": format!("instrument {i}"), "bid": i * 7, "ask": i * 7 + 1}))
        .collect();
    json!({"version": version, "title": title, "rows": rows})
}

/// The payload text of a `pub` push on a subscription with deltas (`data` is a string),
/// given the text of the one before: the whole text, or the delta applied to `prev`.
fn payload_text(push: &Value, prev: Option<&str>) -> String {
    let data = push["data"]
        .as_str()
        .expect("with deltas, data is a string");
    if push["delta"] == true {
        let prev = prev.expect("a delta only follows a publication");
        let out = fossil_delta::apply(prev.as_bytes(), data.as_bytes()).expect("a valid delta");
        String::from_utf8(out).expect("UTF-8")
    } else {
        data.to_owned()
    }
}

#[tokio::test]
async fn fossil_deltas_carry_big_documents_and_recovery_sends_them_whole() {
    let dir = e2e::TempDir::new("delta");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        "[[namespaces]]\nprefix = \"doc:\"\nopen = true\nallowed_delta_types = [\"fossil\"]\n",
    )
    .unwrap();
    let gw = Gateway::builder()
        .arg("--config", config.display())
        .start()
        .await;
    let (mut cf, _) = Cf::connect(gw.addr(), "alice").await;
    cf.send(&json!({"id": 2, "subscribe": {"channel": "doc:board", "delta": "fossil"}}))
        .await;
    assert_eq!(cf.reply(2).await["subscribe"]["delta"], true);
    // A namespace without deltas says nothing of them, and sends payloads as they are.
    cf.send(&json!({"id": 3, "subscribe": {"channel": "room:plain", "delta": "fossil"}}))
        .await;
    assert_eq!(cf.reply(3).await["subscribe"].get("delta"), None);
    // An unknown delta type is a bad request.
    cf.send(&json!({"id": 4, "subscribe": {"channel": "doc:other", "delta": "xdelta"}}))
        .await;
    assert_eq!(cf.reply(4).await["error"]["code"], 107);

    let publish = async |doc: &Value| {
        let r = e2e::api_post(
            gw.addr(),
            "/api/publish",
            json!({"channel": "doc:board", "data": doc}),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        e2e::as_u64(&r.json()["offset"])
    };
    // é then è: a delta there would end inside a character, so that one goes whole.
    let titles = ["board", "board", "board é", "board è", "board"];
    let mut prev: Option<String> = None;
    let mut deltas = 0;
    for (n, title) in (1..=12).zip(titles.iter().cycle()) {
        let doc = document(n, title);
        let offset = publish(&doc).await;
        let push = cf
            .until("the publication", |v| v["push"]["pub"]["offset"] == offset)
            .await;
        let p = &push["push"]["pub"];
        if n == 1 {
            assert_eq!(p.get("delta"), None, "the first after a subscribe is whole");
        }
        if p["delta"] == true {
            deltas += 1;
            assert!(p["data"].as_str().unwrap().len() < 200, "{p}");
        }
        let text = payload_text(p, prev.as_deref());
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc);
        prev = Some(text);
    }
    assert!(deltas >= 8, "most went as deltas: {deltas}");

    // A client that recovers from offset 5 gets the missed ones whole in the reply, then a
    // delta from the last of them.
    let (mut late, _) = Cf::connect(gw.addr(), "bob").await;
    late.send(&json!({"id": 2, "subscribe": {"channel": "doc:board", "delta": "fossil",
        "recover": true, "offset": 5, "epoch": cf.seen.iter().find(|v| v["id"] == 2).unwrap()["subscribe"]["epoch"]}}))
        .await;
    let reply = late.reply(2).await;
    let sub = &reply["subscribe"];
    assert_eq!(
        (&sub["recovered"], &sub["delta"]),
        (&json!(true), &json!(true)),
        "{sub}"
    );
    let recovered = sub["publications"].as_array().unwrap();
    assert_eq!(recovered.len(), 7);
    let mut prev = None;
    for p in recovered {
        assert_eq!(p.get("delta"), None, "recovery sends whole payloads");
        prev = Some(payload_text(p, None));
    }
    // A client that subscribes without recovering has no base: its first one goes whole,
    // while the others get the delta.
    let (mut fresh, _) = Cf::connect(gw.addr(), "carol").await;
    fresh
        .send(&json!({"id": 2, "subscribe": {"channel": "doc:board", "delta": "fossil"}}))
        .await;
    assert_eq!(fresh.reply(2).await["subscribe"]["delta"], true);
    let doc = document(13, "board");
    let offset = publish(&doc).await;
    let at = |v: &Value| v["push"]["pub"]["offset"] == offset;
    let push = late.until("the next publication", at).await;
    assert_eq!(push["push"]["pub"]["delta"], true, "{push}");
    let text = payload_text(&push["push"]["pub"], prev.as_deref());
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc);
    let push = fresh.until("the next publication", at).await;
    assert_eq!(push["push"]["pub"].get("delta"), None, "{push}");
    let text = payload_text(&push["push"]["pub"], None);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc);
}
