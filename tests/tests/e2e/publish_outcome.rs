//! A failed publish says whether the message may still be published: `maybe_published` on
//! the `unavailable` error (WebSocket and HTTP API), checked against what Redis really kept.

use e2e::{Client, Gateway, RedisServer, api_post, error_code, secs, token};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The `data` of every message in `channel`'s history, oldest first.
async fn history_data(c: &mut Client, channel: &str) -> Vec<Value> {
    let h = c
        .request_ok("history", json!({"channel": channel, "limit": 100}))
        .await;
    h["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages in {h}"))
        .iter()
        .map(|m| m["data"].clone())
        .collect()
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
    let channel = "room:outcome";
    c.publish(channel, json!("before")).await;

    // A frozen Redis: the publishes reach it and no answer comes in time.
    redis.pause();
    let r = c
        .request("publish", json!({"channel": channel, "data": "frozen-ws"}))
        .await;
    assert_eq!(error_code(&r), Some("unavailable"), "{r}");
    assert_eq!(r["error"]["maybe_published"], true, "{r}");
    let http = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": channel, "data": "frozen-http"}),
    )
    .await;
    assert_eq!(http.status, 503, "{}", http.body);
    assert_eq!(
        http.json()["error"]["maybe_published"],
        true,
        "{}",
        http.body
    );
    // And so they are, once Redis thaws.
    redis.resume();
    let expected = json!(["before", "frozen-ws", "frozen-http"]);
    let deadline = Instant::now() + secs(20);
    loop {
        let r = c
            .request("history", json!({"channel": channel, "limit": 100}))
            .await;
        if error_code(&r).is_none() {
            let data: Vec<Value> = r["ok"]["messages"]
                .as_array()
                .map(|m| m.iter().map(|m| m["data"].clone()).collect())
                .unwrap_or_default();
            if json!(data) == expected {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the frozen publishes never appeared: {r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Redis gone: a publish that answers `maybe_published: false` was not published. Those
    // answered `true` meanwhile (sent before the node noticed) may be in the log.
    redis.kill();
    let deadline = Instant::now() + secs(20);
    let mut refused = Vec::new();
    let mut maybe = Vec::new();
    while refused.len() < 3 {
        let n = refused.len() + maybe.len();
        let data = json!(format!("down-{n}"));
        let r = c
            .request("publish", json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(error_code(&r), Some("unavailable"), "{r}");
        match &r["error"]["maybe_published"] {
            Value::Bool(false) => refused.push(data),
            Value::Bool(true) => maybe.push(data),
            other => panic!("maybe_published {other} in {r}"),
        }
        assert!(
            Instant::now() < deadline,
            "never told that nothing was sent"
        );
    }
    let http = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": channel, "data": "down-http"}),
    )
    .await;
    assert_eq!(http.status, 503, "{}", http.body);
    assert_eq!(
        http.json()["error"]["maybe_published"],
        false,
        "{}",
        http.body
    );
    refused.push(json!("down-http"));
    redis.start_again().await;
    // Back on Redis: history holds what was acknowledged or maybe published, and none of the
    // refused ones.
    let deadline = Instant::now() + secs(20);
    let data = loop {
        let r = c
            .request("publish", json!({"channel": channel, "data": "after"}))
            .await;
        if error_code(&r).is_none() {
            break history_data(&mut c, channel).await;
        }
        assert!(Instant::now() < deadline, "Redis never came back: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for r in &refused {
        assert!(
            !data.contains(r),
            "{r} was refused, yet published: {data:?}"
        );
    }
    assert_eq!(&data[..3], expected.as_array().unwrap().as_slice());
    assert_eq!(data.last(), Some(&json!("after")));
}
