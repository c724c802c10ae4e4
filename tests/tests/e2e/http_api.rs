//! The HTTP side: `/api/*` for backends, `/v1/route`, health, metrics, the demo page and
//! `/dev/token`.

use e2e::{
    API_AUTH, Client, Gateway, Token, api_get, api_post, api_publish, as_str, as_u64,
    assert_api_error, http, metric_value, millis, secs, token,
};
use serde_json::{Value, json};
use tokio::time::Instant;

#[tokio::test]
async fn api_publish_reaches_subscribers_as_server() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    c.subscribe("room:api").await;
    let r = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:api", "data": {"x": 1}}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let ack = r.json();
    assert_eq!(ack["offset"], 1, "{ack}");
    let m = c.expect_message("room:api", secs(10)).await;
    // The ack names the message: offset and epoch.
    assert_eq!(ack["epoch"], m["epoch"], "{ack} {m}");
    assert_eq!(m["from"], "server", "{m}");
    assert_eq!(m["data"], json!({"x": 1}), "{m}");
    assert_eq!(as_u64(&m["offset"]), 1);

    // Idempotent through the API too.
    let body = json!({"channel": "room:api", "data": 2, "idem": "api-key-1"});
    let a = api_post(gw.addr(), "/api/publish", body.clone())
        .await
        .json();
    let b = api_post(gw.addr(), "/api/publish", body).await.json();
    assert_eq!(a, json!({"offset": 2, "epoch": m["epoch"]}));
    assert_eq!(b, a);
    // Delivered once: offset 2 and nothing after it on the channel.
    let m = c.expect_message("room:api", secs(10)).await;
    assert_eq!((as_u64(&m["offset"]), &m["data"]), (2, &json!(2)));
    // Direct messages from the server.
    let r = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "user:alice", "data": "hi"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The next message must be the direct one: a repeat of offset 2 would come first (and
    // `expect_message` panics on a message of another channel).
    let m = c.expect_message("user:alice", secs(10)).await;
    assert_eq!(m["from"], "server");
    let m = c.next_push(secs(3)).await;
    assert!(
        m.is_none(),
        "the repeated idem must not be delivered: {m:?}"
    );

    // Bad requests.
    let r = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:a b", "data": 1}),
    )
    .await;
    assert_api_error(&r, 400, "bad_request");
    let r = api_post(gw.addr(), "/api/publish", json!({"data": 1})).await;
    assert_eq!(r.status, 400, "missing channel: {r:?}");
}

#[tokio::test]
async fn api_key_is_required() {
    let gw = Gateway::start(&[]).await;
    let body = json!({"channel": "room:x", "data": 1}).to_string();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("missing", vec![]),
        ("wrong", vec![("Authorization", "Bearer wrong-key")]),
    ];
    for (label, headers) in &cases {
        let r = http(gw.addr(), "POST", "/api/publish", headers, Some(&body)).await;
        assert_api_error(&r, 401, "unauthorized");
        let r = http(gw.addr(), "GET", "/api/nodes", headers, None).await;
        assert_eq!(r.status, 401, "{label} key on /api/nodes: {r:?}");
        let r = http(gw.addr(), "GET", "/api/presence/room:x", headers, None).await;
        assert_eq!(r.status, 401, "{label} key on /api/presence: {r:?}");
        let r = http(gw.addr(), "GET", "/api/history/room:x", headers, None).await;
        assert_eq!(r.status, 401, "{label} key on /api/history: {r:?}");
        let r = http(
            gw.addr(),
            "POST",
            "/api/disconnect",
            headers,
            Some(r#"{"user":"x"}"#),
        )
        .await;
        assert_eq!(r.status, 401, "{label} key on /api/disconnect: {r:?}");
    }
    // A user JWT is not an API key.
    let jwt = format!("Bearer {}", token("alice"));
    let r = http(
        gw.addr(),
        "POST",
        "/api/publish",
        &[("Authorization", &jwt)],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test]
async fn api_is_closed_without_a_configured_key() {
    let gw = Gateway::builder().without("--api-key").start().await;
    let r = api_get(gw.addr(), "/api/nodes").await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = http(
        gw.addr(),
        "GET",
        "/api/nodes",
        &[("Authorization", "Bearer ")],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test]
async fn the_openapi_document_is_served_without_a_key_and_describes_the_api() {
    // Served by a node with the API closed too: it is a description, not the API.
    let gw = Gateway::builder().without("--api-key").start().await;
    let r = http(gw.addr(), "GET", "/api/openapi.json", &[], None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/api/publish", "post"),
        ("/api/history/{channel}", "get"),
        ("/api/nodes", "get"),
        ("/v1/route", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{path} {method}");
    }
}

#[tokio::test]
async fn history_bounds_at_the_ends_of_the_offset_range_read_nothing() {
    // Found by the OpenAPI fuzzer: `since` at u64::MAX overflowed (a panic in a debug build),
    // and `before=0` made Redis refuse the range (a 500).
    let gw = Gateway::start(&[]).await;
    api_publish(gw.addr(), "room:x", json!(1)).await;
    for query in [
        "since=18446744073709551615",
        "before=0",
        "before=1",
        "since=3&before=4",
        "since=18446744073709551615&before=0&limit=0",
    ] {
        let r = api_get(gw.addr(), &format!("/api/history/room:x?{query}")).await;
        assert_eq!(r.status, 200, "{query}: {r:?}");
        let page = r.json();
        assert_eq!(page["messages"], json!([]), "{query}");
        assert_eq!(page["offset"], 1, "{query}");
    }
    let r = api_get(gw.addr(), "/api/history/room:x?before=2").await;
    assert_eq!(r.json()["messages"][0]["data"], 1, "{r:?}");
    let mut c = Client::connect(gw.addr(), &token("xena")).await;
    let ok = c
        .request_ok("history", json!({"channel": "room:x", "since": u64::MAX}))
        .await;
    assert_eq!(ok["messages"], json!([]));
}

#[tokio::test]
async fn api_presence_and_history() {
    let gw = Gateway::start(&[]).await;
    let mut a = Client::connect(gw.addr(), &Token::new("alice").name("Alice").hs256()).await;
    a.subscribe("room:p").await;
    let r = api_get(gw.addr(), "/api/presence/room:p").await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let members = v["members"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(members.len(), 1, "{v}");
    assert_eq!(members[0]["user"], "alice");
    assert_eq!(members[0]["name"], "Alice");
    assert_eq!(as_u64(&members[0]["conns"]), 1);

    for i in 1..=5 {
        a.publish("room:p", json!(i)).await;
    }
    let offsets = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|m| as_u64(&m["offset"]))
            .collect()
    };
    let r = api_get(gw.addr(), "/api/history/room:p").await;
    assert_eq!(r.status, 200, "{r:?}");
    let all = r.json();
    assert_eq!(offsets(&all), vec![1, 2, 3, 4, 5], "{all}");
    assert_eq!(as_u64(&all["offset"]), 5);
    assert!(!as_str(&all["epoch"]).is_empty());
    assert_eq!(all["messages"][0]["from"], "alice");
    assert_eq!(all["messages"][0]["data"], 1);
    let part = api_get(gw.addr(), "/api/history/room:p?since=2&limit=2")
        .await
        .json();
    assert_eq!(offsets(&part), vec![3, 4], "{part}");
    let r = api_get(gw.addr(), "/api/history/room:p?limit=5000").await;
    assert_eq!(r.status, 400, "limit over 1000: {r:?}");
    let r = api_get(gw.addr(), "/api/history/room:a%20b").await;
    assert_eq!(r.status, 400, "bad channel name: {r:?}");
}

#[tokio::test]
async fn api_disconnect() {
    let gw = Gateway::start(&[]).await;
    let mut bob1 = Client::connect(gw.addr(), &token("bob")).await;
    let mut bob2 = Client::connect(gw.addr(), &token("bob")).await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;

    let r = api_post(gw.addr(), "/api/disconnect", json!({"user": "bob"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"disconnected": 2}));
    for c in [&mut bob1, &mut bob2] {
        let (d, code) = c.expect_close(secs(10)).await;
        let d = d.expect("a disconnect push precedes the close");
        assert_eq!(d["code"], "disconnected", "{d}");
        assert_eq!(d["reconnect"], false, "{d}");
        assert_eq!(code, 4005);
    }
    alice.request_ok("ping", json!({})).await;

    let mut bob3 = Client::connect(gw.addr(), &token("bob")).await;
    let r = api_post(
        gw.addr(),
        "/api/disconnect",
        json!({"user": "bob", "reconnect": true}),
    )
    .await;
    assert_eq!(r.json(), json!({"disconnected": 1}));
    let (d, code) = bob3.expect_close(secs(10)).await;
    let d = d.expect("a disconnect push precedes the close");
    assert_eq!(d["code"], "disconnected", "{d}");
    assert_eq!(d["reconnect"], true, "{d}");
    assert_eq!(code, 4005);

    let r = api_post(gw.addr(), "/api/disconnect", json!({"user": "nobody"})).await;
    assert_eq!(r.json(), json!({"disconnected": 0}));
    alice.request_ok("ping", json!({})).await;
}

#[tokio::test]
async fn nodes_and_route() {
    let url = "ws://public.example:9000/ws";
    let gw = Gateway::start(&["--node-id", "node-e2e", "--public-url", url]).await;
    let _a = Client::connect(gw.addr(), &token("alice")).await;
    let _b = Client::connect(gw.addr(), &token("bob")).await;
    let r = api_get(gw.addr(), "/api/nodes").await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let nodes = v["nodes"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["id"], "node-e2e", "{v}");
    assert_eq!(nodes[0]["url"], url, "{v}");
    assert_eq!(as_u64(&nodes[0]["connections"]), 2, "{v}");
    assert!(as_u64(&nodes[0]["capacity"]) >= 2, "{v}");

    let user = format!("Bearer {}", token("carol"));
    let r = http(
        gw.addr(),
        "GET",
        "/v1/route",
        &[("Authorization", &user)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"node": "node-e2e", "url": url}));
    let r = http(
        gw.addr(),
        "GET",
        &format!("/v1/route?token={}", token("carol")),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["node"], "node-e2e");
    let r = http(gw.addr(), "GET", "/v1/route", &[], None).await;
    assert_eq!(r.status, 401, "no token: {r:?}");
    let bad = format!("Bearer {}", Token::new("carol").bad_signature());
    let r = http(
        gw.addr(),
        "GET",
        "/v1/route",
        &[("Authorization", &bad)],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "bad token: {r:?}");
    let r = http(gw.addr(), "GET", "/v1/route", &[API_AUTH], None).await;
    assert_eq!(r.status, 401, "the API key is not a user token: {r:?}");
}

#[tokio::test]
async fn health_metrics_and_demo_page() {
    let gw = Gateway::start(&[]).await;
    let r = http(gw.addr(), "GET", "/healthz", &[], None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = http(gw.addr(), "GET", "/readyz", &[], None).await;
    assert_eq!(r.status, 200, "{r:?}");

    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    c.publish("room:m", json!(1)).await;
    // Gauges may be updated a moment after the event.
    let deadline = Instant::now() + secs(10);
    let text = loop {
        let r = http(gw.addr(), "GET", "/metrics", &[], None).await;
        assert_eq!(r.status, 200, "{r:?}");
        let ok = metric_value(&r.body, "gateway_connections") == Some(1.0)
            && metric_value(&r.body, "gateway_messages_published_total").is_some_and(|v| v >= 1.0);
        if ok || Instant::now() > deadline {
            break r.body;
        }
        tokio::time::sleep(millis(200)).await;
    };
    assert_eq!(
        metric_value(&text, "gateway_connections"),
        Some(1.0),
        "one client connected:\n{text}"
    );
    assert!(
        metric_value(&text, "gateway_messages_published_total").is_some_and(|v| v >= 1.0),
        "one publish:\n{text}"
    );

    let r = http(gw.addr(), "GET", "/", &[], None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    assert!(!r.body.is_empty());
}

#[tokio::test]
async fn dev_token_only_in_dev_mode() {
    let gw = Gateway::start(&[]).await;
    let r = http(
        gw.addr(),
        "POST",
        "/dev/token",
        &[],
        Some(r#"{"user":"zed"}"#),
    )
    .await;
    assert_eq!(r.status, 404, "no /dev/token without --dev: {r:?}");

    let gw = Gateway::builder().flag("--dev").start().await;
    let r = http(
        gw.addr(),
        "POST",
        "/dev/token",
        &[],
        Some(r#"{"user":"zed","name":"Zed"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["user"], "zed", "{v}");
    assert!(v["exp"].is_i64() || v["exp"].is_u64(), "{v}");
    let c = Client::connect(gw.addr(), as_str(&v["token"])).await;
    assert_eq!(c.welcome["user"], "zed");
}
