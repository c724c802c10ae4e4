//! Centrifugo's bidirectional emulation (HTTP-streaming, SSE and `/emulation`) against what a
//! careless or hostile client does: a stream opened and never read, slow and endless POST
//! bodies, forged session ids. The SDK's own use of it is in
//! tests/browser/centrifuge-fallback.test.mjs.

use e2e::{Gateway, api_post, http, metric, secs, token};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Opens `POST /connection/http_stream` on a raw socket and reads until the connect reply;
/// returns the socket (not read any further) and the reply's `session` and `node`.
async fn open_stream(addr: &str, user: &str) -> (TcpStream, String, String) {
    let body = json!({"id": 1, "connect": {"token": token(user)}}).to_string();
    let request = format!(
        "POST /connection/http_stream HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + secs(10);
    let field = |raw: &[u8], name: &str| -> Option<String> {
        let text = String::from_utf8_lossy(raw);
        let at = text.find(&format!("\"{name}\":\""))? + name.len() + 4;
        let end = text[at..].find('"')?;
        Some(text[at..at + end].to_owned())
    };
    loop {
        if let (Some(session), Some(node)) = (field(&raw, "session"), field(&raw, "node")) {
            assert!(
                raw.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&raw)
            );
            return (s, session, node);
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("the connect reply within 10 s")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
}

/// POSTs `data` (JSON commands) for `session` on `node`; the status.
async fn emulate(addr: &str, session: &str, node: &str, data: &str) -> u16 {
    let body = json!({"session": session, "node": node, "data": data}).to_string();
    http(addr, "POST", "/emulation", &[], Some(&body))
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_is_dropped_as_a_slow_consumer() {
    let gw = Gateway::start(&[
        "--outbound-queue",
        "32",
        "--publish-rate",
        "100000",
        "--publish-burst",
        "100000",
    ])
    .await;
    let (_stalled, session, node) = open_stream(gw.addr(), "stalled").await;
    let subscribe = json!({"id": 2, "subscribe": {"channel": "room:firehose"}}).to_string();
    assert_eq!(emulate(gw.addr(), &session, &node, &subscribe).await, 204);
    // From here on the stream is never read. Publish far more than the socket, the pipe and
    // the outbound queue hold together.
    let blob = "x".repeat(32 * 1024);
    let deadline = Instant::now() + secs(60);
    let mut published = 0;
    while metric(gw.addr(), "gateway_outbound_queue_overflows_total").await < Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "not dropped after {published} messages"
        );
        let r = api_post(
            gw.addr(),
            "/api/publish",
            json!({"channel": "room:firehose", "data": {"blob": blob}}),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        published += 1;
    }
    // Dropped: its session id is no longer one.
    e2e::eventually("the session is gone", secs(10), async || {
        emulate(gw.addr(), &session, &node, "{}").await == 404
    })
    .await;
    assert!(published < 2000, "{published} messages before the drop");
}

#[tokio::test]
async fn slow_endless_and_forged_emulation_requests_are_refused() {
    let gw = Gateway::start(&["--request-timeout-secs", "2"]).await;
    let (_stream, session, node) = open_stream(gw.addr(), "alice").await;
    // A forged or guessed session id, and what is not a request at all.
    let forged = format!("{:032x}", 0xdead_beef_u128);
    assert_eq!(emulate(gw.addr(), &forged, &node, "{}").await, 404);
    // The node named is where to look first, not a credential: the session id is.
    assert_eq!(
        emulate(gw.addr(), &session, "node-elsewhere", "{}").await,
        204
    );
    let r = http(
        gw.addr(),
        "POST",
        "/emulation",
        &[],
        Some("{\"session\": 1}"),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = http(
        gw.addr(),
        "POST",
        "/emulation",
        &[("Content-Type", "application/octet-stream")],
        Some("\u{7}\u{7}\u{7}"),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    // The real one works.
    assert_eq!(emulate(gw.addr(), &session, &node, "{}").await, 204);

    // A body that never finishes: 408 after --request-timeout-secs.
    let mut slow = TcpStream::connect(gw.addr()).await.unwrap();
    slow.write_all(
        b"POST /emulation HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"session\":",
    )
    .await
    .unwrap();
    let answer = e2e::read_until_closed(&mut slow, secs(15))
        .await
        .expect("closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A body past --max-frame-size: 413, read no further.
    let big = json!({"session": session, "node": node, "data": "x".repeat(70_000)}).to_string();
    let r = http(gw.addr(), "POST", "/emulation", &[], Some(&big)).await;
    assert_eq!(r.status, 413, "{r:?}");
    // The session took no harm.
    assert_eq!(emulate(gw.addr(), &session, &node, "{}").await, 204);
}

#[tokio::test]
async fn sse_needs_its_connect_command() {
    let gw = Gateway::start(&[]).await;
    let r = http(gw.addr(), "GET", "/connection/sse", &[], None).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("cf_connect"), "{r:?}");
}

/// Reads the stream (chunked transfer encoding left in: the lines are found in it) until a
/// line `pick` accepts arrives; the line.
async fn read_line_until(
    s: &mut TcpStream,
    seen: &mut String,
    what: &str,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + secs(10);
    let mut buf = [0u8; 4096];
    loop {
        for line in seen.lines() {
            let line = line.strip_prefix("data: ").unwrap_or(line);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && pick(&v)
            {
                return v;
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {what} within 10 s: {seen}"))
            .unwrap();
        assert!(n > 0, "the stream ended before {what}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn commands_posted_to_other_nodes_reach_the_session_through_the_broker() {
    let redis = e2e::Redis::start().await;
    let gws = crate::cluster::nodes(&redis, 3).await;
    // The stream on the first node; each command POSTed to another one, as a load balancer
    // without stickiness would.
    let (mut stream, session, node) = open_stream(gws[0].addr(), "roamer").await;
    let mut seen = String::new();
    let subscribe = json!({"id": 2, "subscribe": {"channel": "room:roam"}}).to_string();
    assert_eq!(
        emulate(gws[1].addr(), &session, &node, &subscribe).await,
        204
    );
    read_line_until(&mut stream, &mut seen, "the subscribe reply", |v| {
        v["id"] == 2
    })
    .await;
    let publish =
        json!({"id": 3, "publish": {"channel": "room:roam", "data": {"n": 1}}}).to_string();
    assert_eq!(emulate(gws[2].addr(), &session, &node, &publish).await, 204);
    read_line_until(&mut stream, &mut seen, "the publish reply", |v| {
        v["id"] == 3
    })
    .await;
    let p = read_line_until(&mut stream, &mut seen, "the publication", |v| {
        v["push"]["pub"]["data"]["n"] == 1
    })
    .await;
    assert_eq!(p["push"]["channel"], "room:roam");
    let presence = json!({"id": 4, "presence": {"channel": "room:roam"}}).to_string();
    assert_eq!(
        emulate(gws[1].addr(), &session, &node, &presence).await,
        204
    );
    let reply = read_line_until(&mut stream, &mut seen, "the presence reply", |v| {
        v["id"] == 4
    })
    .await;
    assert!(
        reply["presence"]["presence"]["roamer"].is_object(),
        "{reply}"
    );
    // No node holds a forged id.
    let forged = format!("{:032x}", 42u128);
    assert_eq!(emulate(gws[2].addr(), &forged, &node, "{}").await, 404);
}

#[tokio::test]
async fn cross_origin_pages_need_to_be_allowed() {
    let gw = Gateway::start(&["--allowed-origins", "https://app.example"]).await;
    let preflight = |origin: &'static str| {
        let addr = gw.addr().to_string();
        async move {
            let headers = [
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ];
            http(&addr, "OPTIONS", "/emulation", &headers, None).await
        }
    };
    let allowed = preflight("https://app.example").await;
    assert_eq!(allowed.status, 204, "{allowed:?}");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        allowed.header("access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(preflight("https://evil.example").await.status, 403);
    // The POSTs and the streams themselves too.
    let body = json!({"session": "x", "node": "y", "data": "{}"}).to_string();
    let r = http(
        gw.addr(),
        "POST",
        "/emulation",
        &[("Origin", "https://evil.example")],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    let connect = json!({"id": 1, "connect": {"token": token("eve")}}).to_string();
    let r = http(
        gw.addr(),
        "POST",
        "/connection/http_stream",
        &[("Origin", "https://evil.example")],
        Some(&connect),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
}

/// Opens a listen-only stream: `POST path` with `body`, or `GET path?cf_connect=<body>`;
/// returns the socket after the response head.
async fn open_uni(addr: &str, method: &str, path: &str, body: &str) -> TcpStream {
    let request = if method == "GET" {
        let encoded: String = body
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("GET {path}?cf_connect={encoded} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
    } else {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn listen_only_clients_get_pushes_recover_and_are_kept_alive() {
    // Pings every second and an idle timeout of 3 s: the stream outlives it only because
    // the bridge answers the pings a listen-only client cannot.
    let gw = Gateway::start(&["--ping-interval-secs", "1", "--idle-timeout-secs", "3"]).await;
    let mut epoch = String::new();
    for n in 1..=3 {
        let r = api_post(
            gw.addr(),
            "/api/publish",
            json!({"channel": "room:uni", "data": {"n": n}}),
        )
        .await;
        epoch = r.json()["epoch"].as_str().unwrap().to_owned();
    }
    let body = json!({"token": token("lena"), "subs": {
        "room:uni": {"recover": true, "offset": 1, "epoch": epoch},
        "secret:x": {},
    }})
    .to_string();
    let mut s = open_uni(gw.addr(), "POST", "/connection/uni_http_stream", &body).await;
    let mut seen = String::new();
    let connect =
        read_line_until(&mut s, &mut seen, "connect", |v| v.get("connect").is_some()).await;
    assert!(connect["connect"]["client"].is_string(), "{connect}");
    assert!(
        connect["connect"].get("session").is_none(),
        "no session id for a listener"
    );
    let sub = read_line_until(&mut s, &mut seen, "subscribe", |v| {
        v["channel"] == "room:uni" && v.get("subscribe").is_some()
    })
    .await;
    assert_eq!(sub["subscribe"]["recovered"], true, "{sub}");
    let refused = read_line_until(&mut s, &mut seen, "the refused channel", |v| {
        v["channel"] == "secret:x"
    })
    .await;
    assert_eq!(refused["unsubscribe"]["code"], 2000, "{refused}");
    // The two it missed, then a live one, in order.
    for n in [2, 3] {
        read_line_until(&mut s, &mut seen, "a recovered publication", |v| {
            v["pub"]["data"]["n"] == n
        })
        .await;
    }
    api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:uni", "data": {"n": 4}}),
    )
    .await;
    let p = read_line_until(&mut s, &mut seen, "the live publication", |v| {
        v["pub"]["data"]["n"] == 4
    })
    .await;
    assert_eq!(
        (&p["channel"], &p["pub"]["offset"]),
        (&json!("room:uni"), &json!(4))
    );
    // Past the idle timeout, kept alive by the bridge's pongs.
    let deadline = Instant::now() + secs(20);
    while seen.lines().filter(|l| *l == "{}").count() < 5 {
        assert!(Instant::now() < deadline, "pings: {seen}");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("a ping")
            .unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(!seen.contains("disconnect"), "{seen}");
    api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:uni", "data": {"n": 5}}),
    )
    .await;
    read_line_until(&mut s, &mut seen, "a publication after the pings", |v| {
        v["pub"]["data"]["n"] == 5
    })
    .await;

    // The same as server-sent events, the request in the query.
    let body = json!({"token": token("mo"), "subs": {"room:uni": {}}}).to_string();
    let mut sse = open_uni(gw.addr(), "GET", "/connection/uni_sse", &body).await;
    let mut seen = String::new();
    read_line_until(&mut sse, &mut seen, "subscribe", |v| {
        v.get("subscribe").is_some()
    })
    .await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );
    api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:uni", "data": {"n": 6}}),
    )
    .await;
    read_line_until(&mut sse, &mut seen, "the event", |v| {
        v["pub"]["data"]["n"] == 6
    })
    .await;
    assert!(
        seen.contains("data: {\"channel\":\"room:uni\",\"pub\""),
        "{seen}"
    );

    // A bad token ends the stream with a disconnect push; a body that is not JSON is 400.
    let body = json!({"token": "nope", "subs": {}}).to_string();
    let mut bad = open_uni(gw.addr(), "POST", "/connection/uni_http_stream", &body).await;
    let mut seen = String::new();
    let d = read_line_until(&mut bad, &mut seen, "the disconnect", |v| {
        v.get("disconnect").is_some()
    })
    .await;
    assert_eq!(d["disconnect"]["code"], 3500, "{d}");
    let r = http(
        gw.addr(),
        "POST",
        "/connection/uni_http_stream",
        &[],
        Some("["),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn through_nginx_without_stickiness_the_session_gets_every_command() {
    let redis = e2e::Redis::start().await;
    let gws = crate::cluster::nodes(&redis, 3).await;
    let upstreams: Vec<String> = gws.iter().map(|g| g.addr().to_string()).collect();
    let upstreams: Vec<&str> = upstreams.iter().map(String::as_str).collect();
    let nginx = e2e::Nginx::start_round_robin(&upstreams).await;
    let (mut stream, session, node) = open_stream(&nginx.addr(), "rover").await;
    let mut seen = String::new();
    let subscribe = json!({"id": 2, "subscribe": {"channel": "room:rove"}}).to_string();
    assert_eq!(
        emulate(&nginx.addr(), &session, &node, &subscribe).await,
        204
    );
    read_line_until(&mut stream, &mut seen, "the subscribe reply", |v| {
        v["id"] == 2
    })
    .await;
    // Every command through nginx, each request to the next node in turn.
    for n in 0..6 {
        let publish = json!({"id": 10 + n, "publish": {"channel": "room:rove", "data": {"n": n}}})
            .to_string();
        assert_eq!(emulate(&nginx.addr(), &session, &node, &publish).await, 204);
    }
    for n in 0..6 {
        read_line_until(&mut stream, &mut seen, "a publication", |v| {
            v["push"]["pub"]["data"]["n"] == n
        })
        .await;
    }
    // Some went through other nodes than the stream's, and were relayed.
    let mut relayed = 0.0;
    for gw in &gws {
        relayed += metric(gw.addr(), "gateway_emulation_relayed_total")
            .await
            .unwrap_or(0.0);
    }
    assert!(relayed >= 1.0, "relayed {relayed}");
}

#[tokio::test]
async fn a_listeners_request_is_bounded_like_a_connection() {
    let gw = Gateway::start(&["--max-frame-size", "2048", "--max-subscriptions", "50"]).await;
    let subs = |n: usize| -> String {
        let subs: serde_json::Map<String, serde_json::Value> = (0..n)
            .map(|i| (format!("room:listener-{i:06}"), json!({})))
            .collect();
        json!({"token": token("many"), "subs": subs}).to_string()
    };
    // More channels than one connection may hold.
    let r = http(
        gw.addr(),
        "POST",
        "/connection/uni_http_stream",
        &[],
        Some(&subs(51)),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("--max-subscriptions"), "{r:?}");
    // A request under --max-frame-size that makes a first frame over it.
    let body = subs(40);
    assert!(body.len() < 2048, "{}", body.len());
    let r = http(
        gw.addr(),
        "POST",
        "/connection/uni_http_stream",
        &[],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");
}

#[tokio::test]
async fn a_listener_may_post_its_request_to_uni_sse() {
    let gw = Gateway::start(&[]).await;
    let body = json!({"token": token("poster"), "subs": {"room:uni-post": {}}}).to_string();
    let mut s = open_uni(gw.addr(), "POST", "/connection/uni_sse", &body).await;
    let mut seen = String::new();
    read_line_until(&mut s, &mut seen, "subscribe", |v| {
        v.get("subscribe").is_some()
    })
    .await;
    api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:uni-post", "data": {"n": 1}}),
    )
    .await;
    read_line_until(&mut s, &mut seen, "the event", |v| {
        v["pub"]["data"]["n"] == 1
    })
    .await;
    assert!(
        seen.contains("data: {\"channel\":\"room:uni-post\",\"pub\""),
        "{seen}"
    );
}
