//! The app's backend in the loop: the connect, refresh, subscribe, publish, sub_refresh and
//! rpc proxies, against a real backend process (`tests/backend/backend.mjs`, Node's `http`)
//! that answers as an app written for Centrifugo's proxies would, and that the tests make
//! slow, down and hostile. centrifuge-js drives the same backend in
//! tests/browser/centrifuge-proxy.test.mjs.

use e2e::{API_KEY, Backend, Client, Connect, Gateway, TempDir, eventually, metric, secs, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// `team:` subscribes are the backend's to decide; `chat:` is open, and its publishes are
/// the backend's to decide (and rewrite).
const NAMESPACES: &str = "[[namespaces]]\nprefix = \"team:\"\nproxy_subscribe = true\n\n\
    [[namespaces]]\nprefix = \"chat:\"\nopen = true\nclient_publish = true\nproxy_publish = true\n";

/// The proxy call timeout the tests run with.
const TIMEOUT_MS: u64 = 1000;

/// A gateway with every proxy on `backend`; `extra` flags added.
async fn gateway(backend: &Backend, extra: &[(&str, &str)]) -> (Gateway, TempDir) {
    let dir = TempDir::new("proxies");
    let config = dir.join("gateway.toml");
    std::fs::write(&config, NAMESPACES).unwrap();
    let mut builder = Gateway::builder()
        .arg("--config", config.display())
        .arg("--proxy-connect-url", backend.url("connect"))
        .arg("--proxy-refresh-url", backend.url("refresh"))
        .arg("--proxy-subscribe-url", backend.url("subscribe"))
        .arg("--proxy-publish-url", backend.url("publish"))
        .arg("--proxy-sub-refresh-url", backend.url("sub_refresh"))
        .arg("--proxy-rpc-url", backend.url("rpc"))
        .arg("--proxy-breaker-open-ms", 2000);
    let timeout = TIMEOUT_MS.to_string();
    for (name, value) in [
        ("--proxy-timeout-ms", timeout.as_str()),
        ("--proxy-breaker-failures", "3"),
    ] {
        if !extra.iter().any(|(n, _)| *n == name) {
            builder = builder.arg(name, value);
        }
    }
    for (name, value) in extra {
        builder = builder.arg(name, value);
    }
    (builder.start().await, dir)
}

/// A v1 client signed in by the backend's session cookie.
async fn by_cookie(gw: &Gateway, user: &str) -> Client {
    Connect::new(gw.addr())
        .header("Cookie", &format!("session={user}; theme=dark"))
        .connect()
        .await
}

fn backend_code(reply: &Value) -> &Value {
    &reply["error"]["backend_code"]
}

/// Nothing any client sent reached the backend under another client's name, and nothing of
/// the gateway's own (the API key) reached it at all.
async fn assert_nothing_leaked(backend: &Backend) {
    for r in backend.requests().await {
        let text = r.to_string();
        assert!(
            !text.contains(API_KEY),
            "the API key went to the backend: {r}"
        );
        assert!(
            r["headers"].get("authorization").is_none(),
            "an Authorization header went to the backend: {r}"
        );
        // Each request carries its own client's cookie, and the user the cookie names.
        if let (Some(cookie), Some(user)) =
            (r["headers"]["cookie"].as_str(), r["body"]["user"].as_str())
        {
            assert_eq!(
                cookie,
                format!("session={user}; theme=dark"),
                "a request for {user} carried another cookie: {r}"
            );
        }
    }
}

#[tokio::test]
async fn v1_clients_sign_in_by_cookie_and_the_backend_decides_what_they_do() {
    let backend = Backend::start().await;
    let (gw, _dir) = gateway(&backend, &[]).await;

    let mut alice = by_cookie(&gw, "alice").await;
    assert_eq!(alice.user(), "alice");
    let connect = &backend.requests_to("/connect").await[0];
    assert_eq!(connect["headers"]["cookie"], "session=alice; theme=dark");
    assert_eq!(connect["body"]["transport"], "websocket");
    assert_eq!(connect["body"]["protocol"], "v1");
    assert!(
        connect["body"]["client"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(connect["body"].get("user"), None, "nobody is known yet");

    // Subscribes in `team:` are the backend's: it allows one, refuses another.
    alice.subscribe("team:a").await;
    let asked = backend.requests_to("/subscribe").await;
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["body"]["channel"], "team:a");
    assert_eq!(asked[0]["body"]["user"], "alice");
    assert_eq!(
        asked[0]["body"]["meta"],
        json!({"session": "alice", "plan": "pro"}),
        "the connect proxy's meta comes back with every request"
    );
    backend.state(json!({"deny": ["team:b"]})).await;
    let refused = alice
        .request("subscribe", json!({"channel": "team:b"}))
        .await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    assert_eq!(backend_code(&refused), 103);
    assert_eq!(refused["error"]["message"], "permission denied");
    // A channel outside proxied namespaces never asks.
    alice.subscribe("room:lobby").await;
    assert_eq!(backend.requests_to("/subscribe").await.len(), 2);

    // Publishes in `chat:` are the backend's: refused, rewritten, or let through.
    let mut bob = by_cookie(&gw, "bob").await;
    bob.subscribe("chat:x").await;
    alice.subscribe("chat:x").await;
    let spam = alice
        .request(
            "publish",
            json!({"channel": "chat:x", "data": {"text": "buy spam"}}),
        )
        .await;
    assert_eq!(spam["error"]["code"], "rejected", "{spam}");
    assert_eq!(backend_code(&spam), 4000);
    assert_eq!(spam["error"]["message"], "no spam here");
    alice
        .publish("chat:x", json!({"text": "hello", "shout": true}))
        .await;
    alice.publish("chat:x", json!({"text": "plain"})).await;
    // Bob sees the rewritten one, then the plain one: the refused one never arrives (it would
    // come first).
    let first = bob.expect_message("chat:x", secs(10)).await;
    assert_eq!(
        first["data"],
        json!({"text": "HELLO", "shout": true, "moderated": true})
    );
    let second = bob.expect_message("chat:x", secs(10)).await;
    assert_eq!(second["data"], json!({"text": "plain"}));
    let published = backend.requests_to("/publish").await;
    assert_eq!(published.len(), 3);
    assert_eq!(published[0]["body"]["data"], json!({"text": "buy spam"}));
    assert_eq!(published[0]["body"]["channel"], "chat:x");

    // rpc: the backend's answer comes back; its error too.
    let echo = alice
        .request_ok("rpc", json!({"method": "echo", "data": {"n": 1}}))
        .await;
    assert_eq!(echo["data"], json!({"echo": {"n": 1}, "user": "alice"}));
    let whoami = bob.request_ok("rpc", json!({"method": "whoami"})).await;
    assert_eq!(
        whoami["data"],
        json!({"user": "bob", "meta": {"session": "bob", "plan": "pro"}})
    );
    let b64 = alice.request_ok("rpc", json!({"method": "b64"})).await;
    assert_eq!(b64["data"], json!({"b": 1}), "b64data is decoded");
    let unknown = alice.request("rpc", json!({"method": "nope"})).await;
    assert_eq!(unknown["error"]["code"], "rejected");
    assert_eq!(backend_code(&unknown), 4404);
    let bad = alice.request("rpc", json!({"data": 1})).await;
    assert_eq!(bad["error"]["code"], "bad_request", "{bad}");

    // A JWT still signs in, and never goes to the connect proxy.
    let before = backend.requests_to("/connect").await.len();
    let mut carol = Client::connect(gw.addr(), &token("carol")).await;
    assert_eq!(carol.user(), "carol");
    carol.request_ok("rpc", json!({"method": "echo"})).await;
    assert_eq!(backend.requests_to("/connect").await.len(), before);

    assert_nothing_leaked(&backend).await;
}

#[tokio::test]
async fn the_backend_refuses_connections_with_its_own_words() {
    let backend = Backend::start().await;
    let (gw, _dir) = gateway(&backend, &[]).await;
    let banned = Connect::new(gw.addr())
        .header("Cookie", "session=banned")
        .expect_refusal()
        .await;
    assert_eq!(banned.status, 403);
    assert!(banned.body.contains("banned user"), "{}", banned.body);
    let nobody = Connect::new(gw.addr()).expect_refusal().await;
    assert_eq!(nobody.status, 401, "{}", nobody.body);
    let kicked = Connect::new(gw.addr())
        .header("Cookie", "session=kicked")
        .expect_refusal()
        .await;
    assert_eq!(kicked.status, 403);
    assert!(kicked.body.contains("go away"), "{}", kicked.body);
    // Without a connect proxy, no token is no connection, as before.
    let plain = Gateway::start(&[]).await;
    let refused = Connect::new(plain.addr())
        .header("Cookie", "session=alice")
        .expect_refusal()
        .await;
    assert_eq!(refused.status, 401);
    assert!(backend.requests_to("/connect").await.len() == 3);
}

/// A raw Centrifugo-protocol JSON connection.
struct Cf {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    seen: Vec<Value>,
}

impl Cf {
    async fn open(addr: &str, cookie: Option<&str>) -> Cf {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{addr}/connection/websocket")
            .into_client_request()
            .unwrap();
        if let Some(cookie) = cookie {
            request
                .headers_mut()
                .insert("cookie", cookie.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Cf {
            ws,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The reply to `id`, or the close code if the connection ends first.
    async fn reply(&mut self, id: u64) -> Result<Value, u16> {
        let deadline = Instant::now() + secs(10);
        loop {
            if let Some(r) = self.seen.iter().find(|v| v["id"] == id) {
                return Ok(r.clone());
            }
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no reply to {id}; seen {:?}", self.seen),
                Ok(Some(Ok(Message::Text(t)))) => {
                    for line in t.split('\n') {
                        self.seen.push(serde_json::from_str(line).unwrap());
                    }
                }
                Ok(Some(Ok(Message::Close(f)))) => return Err(f.map_or(1005, |f| f.code.into())),
                Ok(Some(Ok(_))) => {}
                Ok(None | Some(Err(_))) => return Err(1006),
            }
        }
    }

    /// Reads until the close frame; its code.
    async fn closed(&mut self) -> u16 {
        match self.reply(u64::MAX).await {
            Err(code) => code,
            Ok(reply) => panic!("a reply to no command: {reply}"),
        }
    }
}

#[tokio::test]
async fn centrifugo_clients_connect_without_a_token_through_the_backend() {
    let backend = Backend::start().await;
    let (gw, _dir) = gateway(&backend, &[]).await;
    let mut cf = Cf::open(gw.addr(), Some("session=dana; theme=dark")).await;
    cf.send(json!({"id": 1, "connect": {"name": "test-sdk", "version": "9.9", "data": {"device": "phone"}}}))
        .await;
    let reply = cf.reply(1).await.expect("connected");
    let connect = &reply["connect"];
    assert!(connect["client"].as_str().is_some(), "{reply}");
    // The server refreshes this connection (the refresh proxy), not the client.
    assert_eq!(connect.get("expires"), None, "{reply}");
    assert_eq!(connect["subs"], json!({"user:dana": {}}));
    let asked = &backend.requests_to("/connect").await[0]["body"];
    assert_eq!(asked["data"], json!({"device": "phone"}));
    assert_eq!(
        (&asked["name"], &asked["version"], &asked["protocol"]),
        (&json!("test-sdk"), &json!("9.9"), &json!("json"))
    );
    cf.send(json!({"id": 2, "rpc": {"method": "echo", "data": {"q": "?"}}}))
        .await;
    let rpc = cf.reply(2).await.unwrap();
    assert_eq!(
        rpc["rpc"]["data"],
        json!({"echo": {"q": "?"}, "user": "dana"})
    );
    cf.send(json!({"id": 3, "rpc": {"method": "nope"}})).await;
    let unknown = cf.reply(3).await.unwrap();
    assert_eq!(unknown["error"]["code"], 4404, "{unknown}");
    assert_eq!(unknown["error"].get("temporary"), None, "{unknown}");
    cf.send(json!({"id": 5, "rpc": {"method": "flaky"}})).await;
    let flaky = cf.reply(5).await.unwrap();
    assert_eq!(
        (&flaky["error"]["code"], &flaky["error"]["temporary"]),
        (&json!(4503), &json!(true)),
        "the backend's `temporary` reaches the SDK: {flaky}"
    );
    cf.send(json!({"id": 4, "subscribe": {"channel": "team:z"}}))
        .await;
    assert!(cf.reply(4).await.unwrap().get("subscribe").is_some());

    // Refused: the backend's code in the reply, then a close that asks not to come back.
    let mut banned = Cf::open(gw.addr(), Some("session=banned")).await;
    banned.send(json!({"id": 1, "connect": {}})).await;
    let reply = banned.reply(1).await.expect("an error reply first");
    assert_eq!(reply["error"]["code"], 4403, "{reply}");
    assert_eq!(reply["error"]["message"], "banned user");
    assert_eq!(banned.closed().await, 3500);
    assert_nothing_leaked(&backend).await;
}

/// Waits until an `rpc` of `client` is answered by the backend again.
async fn rpc_eventually_ok(client: &mut Client, what: &str) {
    eventually(what, secs(20), async || {
        client
            .request("rpc", json!({"method": "echo"}))
            .await
            .get("ok")
            .is_some()
    })
    .await;
}

async fn breaker_state(gw: &Gateway, proxy: &str) -> Option<f64> {
    metric(
        gw.addr(),
        &format!("gateway_proxy_breaker_state{{proxy=\"{proxy}\"}}"),
    )
    .await
}

#[tokio::test]
async fn a_slow_or_down_backend_costs_clients_a_clear_error_and_opens_the_breaker() {
    let backend = Backend::start().await;
    let (gw, _dir) = gateway(&backend, &[]).await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;
    let mut bob = Client::connect(gw.addr(), &token("bob")).await;
    bob.subscribe("room:x").await;
    assert_eq!(breaker_state(&gw, "rpc").await, Some(0.0));

    // Slower than the timeout: `unavailable` once the timeout is up, each time.
    backend.mode("slow", 4 * TIMEOUT_MS).await;
    for _ in 0..3 {
        let started = Instant::now();
        let reply = alice.request("rpc", json!({"method": "echo"})).await;
        let took = started.elapsed();
        assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
        assert_eq!(reply["error"]["message"], "backend timeout");
        assert!(
            took >= Duration::from_millis(TIMEOUT_MS) && took < secs(3),
            "answered after {took:?}, the timeout is {TIMEOUT_MS} ms"
        );
    }
    // Three failures in a row: the breaker is open, and calls fail at once.
    assert_eq!(breaker_state(&gw, "rpc").await, Some(1.0));
    let reply = alice.request("rpc", json!({"method": "echo"})).await;
    assert_eq!(reply["error"]["message"], "backend unavailable", "{reply}");
    // Whatever needs no proxy goes on meanwhile.
    alice.publish("room:x", json!({"n": 1})).await;
    bob.expect_message("room:x", secs(10)).await;

    // The backend recovers: a probe after the open time closes the breaker.
    backend.mode("normal", 0).await;
    rpc_eventually_ok(&mut alice, "the breaker closes after the backend recovered").await;
    assert_eq!(breaker_state(&gw, "rpc").await, Some(0.0));

    // Down (connection refused): a failure, the same error; a sign-in by cookie gets 503.
    backend.down().await;
    let reply = alice.request("rpc", json!({"method": "echo"})).await;
    assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
    assert_eq!(reply["error"]["message"], "backend error");
    let refused = Connect::new(gw.addr())
        .header("Cookie", "session=erin")
        .expect_refusal()
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    backend.up().await;
    rpc_eventually_ok(&mut alice, "the backend serves again once it is back").await;
    by_cookie(&gw, "erin").await;
    let metrics = e2e::http(gw.addr(), "GET", "/metrics", &[], None)
        .await
        .body;
    for line in [
        "gateway_proxy_requests_total{proxy=\"rpc\",result=\"timeout\"} 3",
        "gateway_proxy_requests_total{proxy=\"rpc\",result=\"circuit_open\"}",
        "gateway_proxy_requests_total{proxy=\"connect\",result=\"ok\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
}

#[tokio::test]
async fn hostile_backends_fail_calls_without_harming_the_node() {
    let backend = Backend::start().await;
    let (gw, _dir) = gateway(&backend, &[("--proxy-breaker-failures", "100")]).await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;
    // 10 MB answers are read no further than --proxy-max-answer-bytes.
    backend.mode("huge", 0).await;
    let reply = alice.request("rpc", json!({"method": "echo"})).await;
    assert_eq!(reply["error"]["message"], "backend error", "{reply}");
    let health = e2e::api_get(gw.addr(), "/api/proxies").await.json();
    assert!(
        health.to_string().contains("answer over 1048576 bytes"),
        "{health}"
    );
    // An answer that never ends is a timeout.
    backend.mode("hang", 0).await;
    let reply = alice.request("rpc", json!({"method": "echo"})).await;
    assert_eq!(reply["error"]["message"], "backend timeout", "{reply}");
    // A redirect is not followed.
    backend.mode("redirect", 0).await;
    let reply = alice.request("rpc", json!({"method": "echo"})).await;
    assert_eq!(reply["error"]["message"], "backend error", "{reply}");
    backend.mode("normal", 0).await;
    let reply = alice
        .request_ok("rpc", json!({"method": "echo", "data": "ok"}))
        .await;
    assert_eq!(reply["data"]["echo"], "ok");
    backend.assert_no_redirect_followed().await;
    // The admin API says what happened.
    let health = e2e::api_get(gw.addr(), "/api/proxies").await.json();
    let rpc = health["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["proxy"] == "rpc")
        .cloned()
        .unwrap();
    assert_eq!(
        (&rpc["calls"], &rpc["failures"]),
        (&json!(4), &json!(3)),
        "{health}"
    );
    assert_eq!(rpc["breaker"], "closed");
    assert_eq!(health["proxies"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn the_backend_extends_or_ends_connections_and_subscriptions_at_their_expiry() {
    let backend = Backend::start().await;
    backend.state(json!({"connect_ttl": 2, "sub_ttl": 2})).await;
    let (gw, _dir) = gateway(&backend, &[("--jwt-leeway-secs", "0")]).await;
    let mut alice = by_cookie(&gw, "alice").await;
    alice.subscribe("team:a").await;
    // Both are extended, more than once, by the server asking the backend.
    eventually(
        "the connection and subscription are refreshed twice",
        secs(20),
        async || {
            backend.requests_to("/refresh").await.len() >= 2
                && backend.requests_to("/sub_refresh").await.len() >= 2
        },
    )
    .await;
    let refresh = &backend.requests_to("/refresh").await[0]["body"];
    assert_eq!(refresh["user"], "alice");
    let sub_refresh = &backend.requests_to("/sub_refresh").await[0]["body"];
    assert_eq!(sub_refresh["channel"], "team:a");
    alice.request_ok("ping", json!({})).await;

    // The backend changes its mind about the subscription: it ends, and subscribing again
    // is refused.
    backend.state(json!({"deny": ["team:a"]})).await;
    let push = alice
        .next_push_of("unsubscribe", secs(15))
        .await
        .expect("the subscription ends at its next refresh");
    assert_eq!(push["channel"], "team:a");
    let again = alice
        .request("subscribe", json!({"channel": "team:a"}))
        .await;
    assert_eq!(again["error"]["code"], "forbidden", "{again}");

    // And about the connection: it ends at its next refresh.
    backend.state(json!({"refresh_expired": true})).await;
    let (disconnect, code) = alice.expect_close(secs(15)).await;
    assert_eq!(code, 4001, "{disconnect:?}");
    assert_nothing_leaked(&backend).await;
}

#[tokio::test]
async fn calls_past_the_bound_in_flight_are_refused_at_once_as_busy() {
    let backend = Backend::start().await;
    let (gw, _dir) = gateway(
        &backend,
        &[
            ("--proxy-max-in-flight", "1"),
            ("--proxy-breaker-failures", "100"),
            ("--proxy-timeout-ms", "30000"),
        ],
    )
    .await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;
    let mut bob = Client::connect(gw.addr(), &token("bob")).await;
    // The first call takes 8 s: with one slot, a second call meanwhile is refused at once,
    // and the first one is served.
    backend.mode("slow", 8000).await;
    let first = alice
        .send("rpc", json!({"method": "echo", "data": "a"}))
        .await;
    eventually("the first call reached the backend", secs(10), async || {
        !backend.requests_to("/rpc").await.is_empty()
    })
    .await;
    let started = Instant::now();
    let second = bob
        .request("rpc", json!({"method": "echo", "data": "b"}))
        .await;
    assert_eq!(second["error"]["message"], "backend busy", "{second}");
    assert!(started.elapsed() < secs(5));
    let first = alice.wait_reply(first, secs(20)).await;
    assert_eq!(first["ok"]["data"]["echo"], "a", "{first}");
    assert_eq!(
        backend.requests_to("/rpc").await.len(),
        1,
        "the busy call never went out"
    );
}

#[tokio::test]
async fn an_http_streaming_client_connects_by_cookie_and_the_backend_sees_its_transport() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let (gw, _dir) = gateway(&backend, &[]).await;
    let addr = gw.addr();
    let body = json!({"id": 1, "connect": {"name": "stream"}}).to_string();
    let request = format!(
        "POST /connection/http_stream HTTP/1.1\r\nHost: {addr}\r\nCookie: session=gus; theme=dark\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + secs(10);
    while !raw.contains("\"client\"") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("the connect reply within 10 s")
            .unwrap();
        assert!(n > 0, "closed: {raw}");
        raw.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"user:gus\""), "the backend's user: {raw}");
    let asked = &backend.requests_to("/connect").await[0];
    assert_eq!(asked["body"]["transport"], "http_stream");
    assert_eq!(asked["headers"]["cookie"], "session=gus; theme=dark");
    assert_nothing_leaked(&backend).await;
}
