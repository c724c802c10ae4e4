//! Hostile and careless clients: close handshakes, revoked rights, deep payloads, tokens in
//! logs, foreign origins, subscribe floods, slow and unauthenticated bodies, socket floods,
//! history bounded in bytes and history pages too big for one frame.

use e2e::{
    API_AUTH, API_KEY, Client, Connect, Gateway, Token, api_get, api_post, as_u64, error_code,
    exchange_head, http, metric, parse_response, read_until_closed, secs, token,
};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Every push that arrives within `wait`, none dropped.
async fn pushes_within(c: &mut Client, wait: Duration) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    while let Some(p) = c
        .next_push(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        seen.push(p);
    }
    seen
}

#[tokio::test]
async fn a_client_close_frame_gets_its_reply() {
    let gw = Gateway::start(&[]).await;
    // RFC 6455 §5.5.1: the server echoes the close, so the client's close is clean.
    for code in [1000, 1001, 4000] {
        let c = Client::connect(gw.addr(), &token("alice")).await;
        assert_eq!(c.close_with(code).await, code, "reply to close {code}");
    }
    // A code no endpoint may send gets 1002 (protocol error).
    for code in [999, 1005, 1006, 1015, 2000] {
        let c = Client::connect(gw.addr(), &token("alice")).await;
        assert_eq!(c.close_with(code).await, 1002, "reply to close {code}");
    }
}

#[tokio::test]
async fn the_subscription_limit_is_exact_without_the_personal_channel() {
    let gw = Gateway::start(&["--max-subscriptions", "3"]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    c.request_ok("unsubscribe", json!({"channel": "user:alice"}))
        .await;
    for ch in ["room:a", "room:b", "room:c"] {
        c.subscribe(ch).await;
    }
    let r = c.request("subscribe", json!({"channel": "room:d"})).await;
    assert_eq!(error_code(&r), Some("forbidden"), "4th room: {r}");
    // Taking the personal channel back is within the limit as always.
    c.subscribe("user:alice").await;
    let r = c.request("subscribe", json!({"channel": "room:d"})).await;
    assert_eq!(error_code(&r), Some("forbidden"), "4th room: {r}");
}

#[tokio::test]
async fn refresh_to_fewer_channels_ends_the_revoked_subscriptions() {
    let gw = Gateway::start(&[]).await;
    let wide = Token::new("alice")
        .channels(&["news:*", "sports:*"])
        .hs256();
    let mut c = Client::connect(gw.addr(), &wide).await;
    c.subscribe("news:a").await;
    c.subscribe("sports:b").await;
    c.subscribe("room:lobby").await;
    let narrow = Token::new("alice").channels(&["news:*"]).hs256();
    c.request_ok("refresh", json!({"token": narrow})).await;
    let own_join = json!({"op": "join", "channel": "room:lobby", "user": "alice"});
    let unsubscribe = c
        .next_push_of("unsubscribe", secs(10))
        .await
        .expect("an unsubscribe push for the revoked channel");
    assert_eq!(
        unsubscribe,
        json!({"op": "unsubscribe", "channel": "sports:b", "code": "forbidden", "resubscribe": false})
    );
    // Nothing more arrives from the revoked channel; the others keep delivering.
    for ch in ["sports:b", "news:a", "room:lobby"] {
        let r = api_post(
            gw.addr(),
            "/api/publish",
            json!({"channel": ch, "data": ch}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Every push from here on is seen: the two messages, then 3 s in which a late message
    // from the revoked channel, or a second unsubscribe, would show. Only the connection's
    // own presence join on room:lobby may come beside them.
    let mut channels = Vec::new();
    let deadline = Instant::now() + secs(10);
    while channels.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = c.next_push(left).await else {
            panic!("messages on news:a and room:lobby within 10 s; got {channels:?}");
        };
        if p == own_join {
            continue;
        }
        assert_eq!(p["op"], "message", "{p}");
        channels.push(p["channel"].as_str().unwrap_or_default().to_string());
    }
    channels.sort();
    assert_eq!(channels, ["news:a", "room:lobby"]);
    let late: Vec<Value> = pushes_within(&mut c, secs(3))
        .await
        .into_iter()
        .filter(|p| p != &own_join)
        .collect();
    assert!(late.is_empty(), "pushes after the messages: {late:?}");
    // The connection can no longer subscribe to it either.
    let r = c.request("subscribe", json!({"channel": "sports:b"})).await;
    assert_eq!(error_code(&r), Some("forbidden"), "{r}");
}

fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("x"), |v, _| json!([v]))
}

#[tokio::test]
async fn payload_depth_has_one_limit_in_both_encodings() {
    let gw = Gateway::start(&[]).await;
    let mut reader = Client::connect(gw.addr(), &token("reader")).await;
    reader.subscribe("room:deep").await;
    let mut json_client = Client::connect(gw.addr(), &token("j")).await;
    let mut packed = Client::connect_msgpack(gw.addr(), &token("m")).await;
    for c in [&mut json_client, &mut packed] {
        let r = c
            .request(
                "publish",
                json!({"channel": "room:deep", "data": nested(65)}),
            )
            .await;
        assert_eq!(error_code(&r), Some("bad_request"), "65 levels: {r}");
        c.publish("room:deep", nested(64)).await;
    }
    // The JSON reader parses both, the MessagePack one converted.
    for _ in 0..2 {
        let m = reader.expect_message("room:deep", secs(5)).await;
        assert_eq!(m["data"], nested(64));
    }
    let r = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:deep", "data": nested(65)}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:deep", "data": nested(64)}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    reader.expect_message("room:deep", secs(5)).await;
    // A history reply nests the payload deeper still and stays parseable.
    let h = reader
        .request_ok("history", json!({"channel": "room:deep"}))
        .await;
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn no_log_level_shows_a_token_or_the_api_key() {
    // Everything at trace, and the WebSocket library asked for by name.
    for filter in ["trace", "info,tungstenite=trace,tokio_tungstenite=trace"] {
        secrets_stay_out_of_the_log(filter).await;
    }
}

async fn secrets_stay_out_of_the_log(filter: &str) {
    let mut gw = Gateway::start(&["--log", filter]).await;
    let query_token = token("alice");
    let bearer_token = token("bob");
    let refreshed = token("alice");
    let mut a = Client::connect(gw.addr(), &query_token).await;
    let mut b = Connect::new(gw.addr())
        .bearer(&bearer_token)
        .connect()
        .await;
    a.request_ok("refresh", json!({"token": refreshed})).await;
    a.subscribe("room:x").await;
    b.publish("room:x", json!("hi")).await;
    a.expect_message("room:x", secs(5)).await;
    let r = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:x", "data": 1}),
    )
    .await;
    assert_eq!(r.status, 200);
    a.close().await;
    b.close().await;
    // Everything it will ever log about these connections, to the last line.
    let logs = gw.stop_and_logs().await;
    assert!(
        logs.iter().any(|l| l.contains("\"DEBUG\"")),
        "the gateway logs verbosely at {filter}"
    );
    for (what, secret) in [
        ("query token", query_token.as_str()),
        ("bearer token", bearer_token.as_str()),
        ("refresh token", refreshed.as_str()),
        ("API key", API_KEY),
    ] {
        // A JWT's signature alone identifies it.
        let needle = secret.rsplit('.').next().unwrap_or(secret);
        if let Some(line) = logs.iter().find(|l| l.contains(needle)) {
            panic!("the {what} is in the log at {filter}: {line}");
        }
    }
}

#[tokio::test]
async fn browsers_from_foreign_origins_are_refused() {
    let gw = Gateway::start(&[]).await;
    let t = token("alice");
    let own = format!("http://{}", gw.addr());
    // No Origin (not a browser) and the node's own origin pass; any other is 403.
    Connect::new(gw.addr()).token(&t).connect().await;
    Connect::new(gw.addr())
        .token(&t)
        .header("Origin", &own)
        .connect()
        .await;
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let refusal = Connect::new(gw.addr())
            .token(&t)
            .header("Origin", origin)
            .expect_refusal()
            .await;
        assert_eq!(refusal.status, 403, "{origin}: {refusal:?}");
        assert!(refusal.body.contains("allowed-origins"), "{refusal:?}");
    }
    let listed = Gateway::start(&["--allowed-origins", "https://app.example"]).await;
    let status = |gw: &Gateway, origin: &str| {
        Connect::new(gw.addr())
            .token(&t)
            .header("Origin", origin)
            .expect_status()
    };
    assert_eq!(status(&listed, "https://app.example").await, 101);
    assert_eq!(status(&listed, "https://APP.example").await, 101);
    assert_eq!(status(&listed, "http://app.example").await, 403);
    assert_eq!(status(&listed, "http://evil.example").await, 403);
    let any = Gateway::start(&["--allowed-origins", "*"]).await;
    assert_eq!(status(&any, "http://evil.example").await, 101);
}

#[tokio::test]
async fn subscribe_churn_is_rate_limited() {
    let gw = Gateway::start(&[
        "--subscribe-rate",
        "1",
        "--subscribe-burst",
        "10",
        "--max-rate-limited-per-minute",
        "3",
    ])
    .await;
    let mut member = Client::connect(gw.addr(), &token("member")).await;
    member.subscribe("room:busy").await;
    let mut churner = Client::connect(gw.addr(), &token("churner")).await;
    // The burst holds 10 tokens: the 10 alternating calls all pass (refills only add).
    let mut accepted = Vec::new();
    for i in 0..10 {
        let op = if i % 2 == 0 {
            "subscribe"
        } else {
            "unsubscribe"
        };
        let r = churner.request(op, json!({"channel": "room:busy"})).await;
        assert_eq!(error_code(&r), None, "{op} {i} within the burst: {r}");
        accepted.push(op);
    }
    // Past the burst: refused, and the room hears nothing of it.
    let r = churner
        .request("subscribe", json!({"channel": "room:busy"}))
        .await;
    if error_code(&r).is_none() {
        // The bucket refilled one token meanwhile; the next is refused.
        accepted.push("subscribe");
        let r = churner
            .request("unsubscribe", json!({"channel": "room:busy"}))
            .await;
        assert_eq!(error_code(&r), Some("rate_limited"), "{r}");
    } else {
        assert_eq!(error_code(&r), Some("rate_limited"), "{r}");
    }
    // The member hears exactly one join or leave per accepted call, in order, and nothing
    // of the refused ones (3 s more, where one would show).
    let expected: Vec<Value> = accepted
        .iter()
        .map(|op| {
            let event = if *op == "subscribe" { "join" } else { "leave" };
            json!({"op": event, "channel": "room:busy", "user": "churner"})
        })
        .collect();
    // The member's own join (it subscribed first) is not the churner's.
    let own_join = json!({"op": "join", "channel": "room:busy", "user": "member"});
    let mut pushes = Vec::new();
    while pushes.len() < expected.len() {
        match member.next_push(secs(10)).await {
            Some(p) if p == own_join => {}
            Some(p) => pushes.push(p),
            None => panic!(
                "{} presence events expected, got {pushes:?}",
                expected.len()
            ),
        }
    }
    assert_eq!(pushes, expected);
    let late = pushes_within(&mut member, secs(3)).await;
    assert!(late.is_empty(), "events of refused calls: {late:?}");
    // Keeping at it ends the connection like a publish flood does.
    for _ in 0..10 {
        if churner
            .try_send("subscribe", json!({"channel": "room:busy"}))
            .await
            .is_err()
        {
            break;
        }
    }
    let (disconnect, code) = churner.expect_close(secs(5)).await;
    assert_eq!(code, 4003, "{disconnect:?}");
}

/// Opens a socket and sends the start of a request that never finishes.
async fn stalled(addr: &str, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

/// Reads a whole response (until the server closes), within `wait`; `None` if the socket
/// is still open then.
async fn response_within(s: &mut TcpStream, wait: Duration) -> Option<e2e::HttpResponse> {
    let raw = read_until_closed(s, wait).await?;
    Some(parse_response(&raw).unwrap_or_else(|e| panic!("{e}: {raw:?}")))
}

#[tokio::test]
async fn slow_request_bodies_cannot_hold_sockets() {
    let gw = Gateway::builder()
        .arg("--request-timeout-secs", 1)
        .flag("--dev")
        .start()
        .await;
    let head = |auth: &str| {
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 60000\r\n\r\n{{\"channel\":"
        )
    };
    // Without the key: refused on the headers, the body never read.
    let mut s = stalled(gw.addr(), &head("")).await;
    let r = response_within(&mut s, secs(3))
        .await
        .expect("an unauthenticated slow body is answered at once");
    assert_eq!(r.status, 401, "{}", r.body);
    // With the key: the body has --request-timeout-secs to arrive, then 408 and a close.
    let started = Instant::now();
    let mut s = stalled(
        gw.addr(),
        &head(&format!("Authorization: Bearer {API_KEY}\r\n")),
    )
    .await;
    let r = response_within(&mut s, secs(8))
        .await
        .expect("a stalled body is cut off");
    assert_eq!(r.status, 408, "{}", r.body);
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The dev token endpoint takes no key: its body has the same deadline.
    let mut s = stalled(
        gw.addr(),
        "POST /dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"user\"",
    )
    .await;
    let r = response_within(&mut s, secs(8)).await.expect("cut off");
    assert_eq!(r.status, 408, "{}", r.body);
    // An oversized body is 413 from its Content-Length.
    let big = "x".repeat(70_000);
    let r = http(
        gw.addr(),
        "POST",
        "/api/publish",
        &[API_AUTH],
        Some(&format!("{{\"channel\":\"room:a\",\"data\":\"{big}\"}}")),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);
}

#[tokio::test]
async fn http_sockets_are_bounded_and_websockets_are_not_starved_for_long() {
    let gw = Gateway::start(&[
        "--max-http-connections",
        "3",
        "--handshake-timeout-secs",
        "3",
    ])
    .await;
    // Three sockets that never finish their request fill the HTTP slots.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(stalled(gw.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fourth socket is answered 503 at once, without its request being read.
    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    let r = response_within(&mut s, secs(3)).await.expect("answered");
    assert_eq!(r.status, 503, "{}", r.body);
    let refusal = Connect::new(gw.addr())
        .token(&token("alice"))
        .expect_refusal()
        .await;
    assert_eq!(refusal.status, 503, "{refusal:?}");
    // The header deadline frees the slots; then WebSockets connect, and once upgraded they
    // no longer count as HTTP sockets.
    for s in &mut held {
        let raw = read_until_closed(s, secs(8)).await;
        assert!(raw.is_some(), "the header deadline closes a stalled socket");
    }
    let mut clients = Vec::new();
    for user in ["a", "b", "c", "d"] {
        clients.push(Client::connect(gw.addr(), &token(user)).await);
    }
    let r = api_get(gw.addr(), "/healthz").await;
    assert_eq!(r.status, 200);
    let refused = metric(gw.addr(), "gateway_http_refused_total").await;
    assert!(refused >= Some(2.0), "refusals are counted: {refused:?}");
}

/// A JSON string of `n` bytes.
fn blob(n: usize) -> Value {
    Value::String("z".repeat(n))
}

#[tokio::test]
async fn history_is_bounded_in_bytes() {
    // The node's own memory: embedded in both suite runs (in clustered mode history lives in
    // Redis), and without the archive, which would recover what memory let go.
    let gw = Gateway::builder()
        .embedded()
        .arg("--history-max-bytes", 200_000)
        .arg("--history-node-max-bytes", 450_000)
        .arg("--database-url", "off")
        .start()
        .await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    for i in 1..=10u64 {
        assert_eq!(c.publish("room:big", blob(60_000)).await, i);
    }
    let h = c
        .request_ok("history", json!({"channel": "room:big"}))
        .await;
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| as_u64(&m["offset"]))
        .collect();
    assert_eq!(offsets, [8, 9, 10], "the newest that fit in 200,000 bytes");
    // Recovery from before the kept window says so.
    let mut r = Client::connect(gw.addr(), &token("bob")).await;
    let epoch = h["epoch"].as_str().unwrap_or_default().to_string();
    let ok = r
        .request_ok(
            "subscribe",
            json!({"channel": "room:big", "since": 2, "epoch": epoch}),
        )
        .await;
    assert_eq!(ok["recovered"], false, "{ok}");
    // The node's bound holds across channels: three channels of 3 kept messages would be
    // 540,000 bytes.
    for ch in ["room:b2", "room:b3"] {
        for _ in 0..3 {
            c.publish(ch, blob(60_000)).await;
        }
    }
    let held = metric(gw.addr(), "gateway_history_bytes")
        .await
        .expect("gateway_history_bytes");
    assert!(
        held > 300_000.0 && held <= 450_000.0,
        "history holds {held} bytes"
    );
    // The newest message of the channel just written is always there.
    let h = c
        .request_ok("history", json!({"channel": "room:b3", "limit": 1}))
        .await;
    assert_eq!(h["messages"][0]["offset"], 3, "{h}");
}

#[tokio::test]
async fn history_too_big_for_one_frame_comes_in_pages() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let mut packed = Client::connect_msgpack(gw.addr(), &token("bob")).await;
    for _ in 0..30 {
        c.publish("room:pages", blob(60_000)).await;
    }
    for client in [&mut c, &mut packed] {
        // Newest first: the page keeps the newest messages that fit, says it is cut, and
        // the connection stays up.
        let h = client
            .request_ok("history", json!({"channel": "room:pages", "limit": 100}))
            .await;
        let messages = h["messages"].as_array().expect("messages");
        assert!(
            messages.len() >= 10 && messages.len() < 30,
            "{} messages",
            messages.len()
        );
        assert_eq!(h["truncated"], true);
        assert_eq!(messages.last().map(|m| as_u64(&m["offset"])), Some(30));
        // With `since`, pages continue from the last offset until everything came, in order.
        let mut since = 0;
        let mut pages = 0;
        loop {
            let h = client
                .request_ok(
                    "history",
                    json!({"channel": "room:pages", "since": since, "limit": 100}),
                )
                .await;
            pages += 1;
            for m in h["messages"].as_array().expect("messages") {
                assert_eq!(as_u64(&m["offset"]), since + 1);
                since += 1;
            }
            if h.get("truncated").is_none() {
                break;
            }
        }
        assert_eq!(since, 30);
        assert!(pages >= 2, "{pages} pages");
        client.request_ok("ping", json!({})).await;
    }
    // The HTTP API pages the same way.
    let r = api_get(gw.addr(), "/api/history/room:pages?limit=100").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["truncated"], true);
    assert!(r.body.len() <= 1 << 20, "{} bytes", r.body.len());
}

#[tokio::test]
async fn handshakes_are_checked_by_the_rfc_and_answered_exactly() {
    let gw = Gateway::start(&[]).await;
    let t = token("alice");
    let request = |method: &str, headers: &str| {
        format!("{method} /ws?token={t} HTTP/1.1\r\nHost: x\r\n{headers}\r\n")
    };
    const GOOD: &str = "Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    // RFC 6455 §1.3's own example: the accept key is the SHA-1 of the key and the GUID.
    let (r, mut after, mut s) = exchange_head(
        gw.addr(),
        &request("GET", &format!("{GOOD}Sec-WebSocket-Protocol: v1.json\r\n")),
    )
    .await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(r.header("sec-websocket-protocol"), Some("v1.json"));
    assert_eq!(
        r.header("upgrade").map(str::to_ascii_lowercase).as_deref(),
        Some("websocket")
    );
    // The welcome follows at once: an unmasked text frame (FIN + opcode 1).
    if after.is_empty() {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(secs(5), s.read(&mut byte))
            .await
            .expect("the welcome within 5 s")
            .expect("read");
        after.extend_from_slice(&byte[..n]);
    }
    assert_eq!(after.first(), Some(&0x81), "first frame byte");
    // No subprotocol offered: none chosen, JSON spoken.
    let (r, _, _) = exchange_head(gw.addr(), &request("GET", GOOD)).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-protocol"), None);

    let refused = [
        ("POST", GOOD.to_string(), 405),
        (
            "GET",
            GOOD.replace("keep-alive, Upgrade", "keep-alive"),
            400,
        ),
        ("GET", GOOD.replace("keep-alive, Upgrade", "upgraded"), 400),
        (
            "GET",
            GOOD.replace("Upgrade: WebSocket", "Upgrade: h2c"),
            400,
        ),
        (
            "GET",
            GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
        ),
        (
            "GET",
            GOOD.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            400,
        ),
    ];
    for (method, headers, status) in refused {
        let (r, after, _) = exchange_head(gw.addr(), &request(method, &headers)).await;
        assert_eq!(r.status, status, "{method} with {headers:?}: {r:?}");
        if status == 405 {
            // The router answers a method the route lacks, naming the ones it has.
            assert!(
                r.header("allow").is_some_and(|a| a.contains("GET")),
                "{r:?}"
            );
        } else {
            assert!(!r.body.is_empty(), "the refusal says why: {r:?}");
        }
        assert!(after.is_empty(), "nothing after a refusal: {after:?}");
    }
    let refused_total = metric(
        gw.addr(),
        "gateway_handshakes_total{result=\"not_websocket\"}",
    )
    .await;
    assert_eq!(
        refused_total,
        Some(5.0),
        "each request that is not a handshake, counted"
    );
    // The node serves on.
    let mut c = Client::connect(gw.addr(), &token("bob")).await;
    c.subscribe("room:after").await;
}
