//! A failed publish says whether the message may still be published: `maybe_published` on
//! the `unavailable` error (WebSocket and HTTP API), checked against what Redis really kept.

use e2e::{Client, Gateway, RedisServer, api_post, error_code, eventually, secs, token};
use serde_json::{Value, json};

const CHANNEL: &str = "room:outcome";

/// The `data` of every message in the channel's history, oldest first; `None` while the
/// node answers with an error (Redis coming back).
async fn history_data(c: &mut Client) -> Option<Vec<Value>> {
    let r = c
        .request("history", json!({"channel": CHANNEL, "limit": 100}))
        .await;
    let messages = r["ok"]["messages"].as_array()?;
    Some(messages.iter().map(|m| m["data"].clone()).collect())
}

/// Publishes `data` over WebSocket, which must fail with `unavailable`; returns its
/// `maybe_published`.
async fn refused_ws(c: &mut Client, data: &str) -> bool {
    let r = c
        .request("publish", json!({"channel": CHANNEL, "data": data}))
        .await;
    assert_eq!(error_code(&r), Some("unavailable"), "{r}");
    r["error"]["maybe_published"]
        .as_bool()
        .unwrap_or_else(|| panic!("maybe_published in {r}"))
}

/// Publishes `data` through the HTTP API, which must answer 503; returns its
/// `maybe_published`.
async fn refused_http(gw: &Gateway, data: &str) -> bool {
    let r = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": CHANNEL, "data": data}),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    r.json()["error"]["maybe_published"]
        .as_bool()
        .unwrap_or_else(|| panic!("maybe_published in {}", r.body))
}

#[tokio::test]
async fn a_failed_publish_says_whether_it_may_still_be_published() {
    // Durable, so that what Redis acknowledged survives the kill below.
    let mut redis = RedisServer::start_durable().await;
    let gw = Gateway::builder()
        .arg("--redis-url", redis.url())
        .start()
        .await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    c.publish(CHANNEL, json!("before")).await;

    // A frozen Redis: the publishes reach it and no answer comes in time.
    redis.pause();
    assert!(
        refused_ws(&mut c, "frozen-ws").await,
        "sent to a frozen Redis"
    );
    assert!(
        refused_http(&gw, "frozen-http").await,
        "sent to a frozen Redis"
    );
    // And so they are, once Redis thaws.
    redis.resume();
    let expected = vec![json!("before"), json!("frozen-ws"), json!("frozen-http")];
    eventually(
        "the frozen publishes appear in history",
        secs(20),
        async || history_data(&mut c).await.as_ref() == Some(&expected),
    )
    .await;

    // Redis gone: a publish that answers `maybe_published: false` was not published. Those
    // answered `true` meanwhile (sent before the node noticed) may be in the log.
    redis.kill();
    let mut refused = Vec::new();
    let mut sent = 0;
    eventually(
        "a publish refused before anything was sent",
        secs(20),
        async || {
            sent += 1;
            let data = format!("down-{sent}");
            if !refused_ws(&mut c, &data).await {
                refused.push(json!(data));
            }
            refused.len() >= 3
        },
    )
    .await;
    assert!(!refused_http(&gw, "down-http").await, "Redis is gone");
    refused.push(json!("down-http"));
    redis.start_again().await;
    // Back on Redis: history holds what was acknowledged or maybe published, and none of the
    // refused ones.
    eventually(
        "a publish accepted once Redis is back",
        secs(20),
        async || {
            let r = c
                .request("publish", json!({"channel": CHANNEL, "data": "after"}))
                .await;
            error_code(&r).is_none()
        },
    )
    .await;
    let data = history_data(&mut c)
        .await
        .expect("history once Redis is back");
    for r in &refused {
        assert!(
            !data.contains(r),
            "{r} was refused, yet published: {data:?}"
        );
    }
    assert_eq!(&data[..3], expected.as_slice());
    assert_eq!(data.last(), Some(&json!("after")));
}
