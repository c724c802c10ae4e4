//! Configured limits: subscriptions, connections, publish rate, bad frames, frame size,
//! handshake timeout.

use e2e::{Client, Connect, Gateway, error_code, millis, secs, token};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn subscription_limit() {
    let gw = Gateway::start(&["--max-subscriptions", "3"]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    for ch in ["room:a", "room:b", "room:c"] {
        c.subscribe(ch).await;
    }
    let r = c.request("subscribe", json!({"channel": "room:d"})).await;
    assert_eq!(error_code(&r), Some("forbidden"), "4th subscription: {r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains('3')),
        "the message names the limit: {r}"
    );
    // Re-subscribing a channel the connection already has is a re-sync, not a new subscription.
    c.subscribe("room:a").await;
    // Freeing a slot makes room.
    c.request_ok("unsubscribe", json!({"channel": "room:b"}))
        .await;
    c.subscribe("room:d").await;
    // The limit is per connection.
    let mut other = Client::connect(gw.addr(), &token("alice")).await;
    for ch in ["room:a", "room:b", "room:c"] {
        other.subscribe(ch).await;
    }
}

#[tokio::test]
async fn connections_per_user_limit_is_429() {
    let gw = Gateway::start(&["--max-connections-per-user", "2"]).await;
    let t = token("alice");
    let a1 = Client::connect(gw.addr(), &t).await;
    let _a2 = Client::connect(gw.addr(), &t).await;
    let refusal = Connect::new(gw.addr()).token(&t).expect_refusal().await;
    assert_eq!(refusal.status, 429, "{refusal:?}");
    let retry = refusal
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 needs Retry-After: {refusal:?}"));
    retry
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("Retry-After must be a number of seconds: {retry:?}"));
    // Other users are not affected.
    let _b = Client::connect(gw.addr(), &token("bob")).await;
    // Once one of alice's connections is gone, she may connect again.
    a1.close().await;
    let deadline = Instant::now() + secs(10);
    loop {
        match Connect::new(gw.addr()).token(&t).try_connect().await {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "alice still refused after closing a connection: {e}"
            ),
        }
        tokio::time::sleep(millis(100)).await;
    }
}

#[tokio::test]
async fn max_connections_is_503() {
    let gw = Gateway::start(&["--max-connections", "2"]).await;
    let _a = Client::connect(gw.addr(), &token("alice")).await;
    let _b = Client::connect(gw.addr(), &token("bob")).await;
    let refusal = Connect::new(gw.addr())
        .token(&token("carol"))
        .expect_refusal()
        .await;
    assert_eq!(refusal.status, 503, "{refusal:?}");
    assert!(
        refusal.headers.contains_key("retry-after"),
        "503 needs Retry-After: {refusal:?}"
    );
}

#[tokio::test]
async fn publish_rate_limit() {
    let gw = Gateway::start(&["--publish-rate", "1", "--publish-burst", "5"]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    // Pipelined: all 20 leave before the first reply is read.
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            c.send("publish", json!({"channel": "room:rl", "data": i}))
                .await,
        );
    }
    let (mut ok, mut limited) = (0, 0);
    for id in ids {
        let r = c.wait_reply(id, secs(10)).await;
        match error_code(&r) {
            None => ok += 1,
            Some("rate_limited") => limited += 1,
            Some(other) => panic!("unexpected error {other}: {r}"),
        }
    }
    // The burst, plus one per second the whole exchange took (refill at 1/s).
    let most = 5 + started.elapsed().as_secs() as usize + 1;
    assert!(ok >= 5, "the burst of 5 must pass, {ok} did");
    assert!(
        ok <= most,
        "at 1/s with a burst of 5, at most {most} of 20 pass: {ok} did"
    );
    assert_eq!(ok + limited, 20);
    // Other commands are not rate limited.
    c.request_ok("ping", json!({})).await;
}

#[tokio::test]
async fn sustained_rate_limiting_disconnects() {
    let gw = Gateway::start(&[
        "--publish-rate",
        "1",
        "--publish-burst",
        "1",
        "--max-rate-limited-per-minute",
        "10",
    ])
    .await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    for i in 0..16 {
        if c.try_send("publish", json!({"channel": "room:flood", "data": i}))
            .await
            .is_err()
        {
            break;
        }
    }
    let (disconnect, code) = c.expect_close(secs(10)).await;
    let d = disconnect.expect("a disconnect push precedes the close");
    assert_eq!(d["code"], "rate_limited", "{d}");
    assert_eq!(d["reconnect"], true, "{d}");
    assert_eq!(code, 4003);
}

#[tokio::test]
async fn too_many_bad_frames_disconnect_with_policy() {
    let gw = Gateway::start(&["--max-bad-frames-per-minute", "3"]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    for _ in 0..3 {
        c.send_raw_text("garbage").await;
        let r = c.wait_reply(0, secs(10)).await;
        assert_eq!(error_code(&r), Some("bad_request"));
    }
    c.request_ok("ping", json!({})).await;
    for _ in 0..3 {
        if c.send_raw(Message::text("garbage")).await.is_err() {
            break;
        }
    }
    let (disconnect, code) = c.expect_close(secs(10)).await;
    let d = disconnect.expect("a disconnect push precedes the close");
    assert_eq!(d["code"], "policy", "{d}");
    assert_eq!(d["reconnect"], false, "{d}");
    assert_eq!(code, 1008);
}

#[tokio::test]
async fn oversized_frame_disconnects_with_too_large() {
    let gw = Gateway::start(&["--max-frame-size", "1024"]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    // Under the limit: fine.
    c.publish("room:big", json!("x".repeat(500))).await;
    let big = json!({"id": 99, "op": "publish", "channel": "room:big", "data": "x".repeat(4096)});
    c.send_raw_text(&big.to_string()).await;
    let (disconnect, code) = c.expect_close(secs(10)).await;
    let d = disconnect.expect("a disconnect push precedes the close");
    assert_eq!(d["code"], "too_large", "{d}");
    assert_eq!(d["reconnect"], false, "{d}");
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn silent_tcp_connections_are_cut_off() {
    let gw = Gateway::start(&["--handshake-timeout-secs", "1"]).await;
    // Nothing at all.
    let mut silent = TcpStream::connect(gw.addr()).await.unwrap();
    // Half a request.
    let mut partial = TcpStream::connect(gw.addr()).await.unwrap();
    partial
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for (label, s) in [("silent", &mut silent), ("partial request", &mut partial)] {
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + secs(8);
        loop {
            let r = tokio::time::timeout_at(deadline, s.read(&mut buf)).await;
            match r {
                Err(_) => panic!("{label} connection still open after 8 s"),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                // A 408 or similar response before the close is fine.
                Ok(Ok(_)) => continue,
            }
        }
    }
    // The server still serves.
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let p = c.request_ok("ping", json!({})).await;
    assert_eq!(p, json!({}));
}
